"""CenterPoint training targets and losses for the BEV detector, vectorised over boxes.

Follows mmdet3d's `CenterHead.get_targets_single` and `CenterHead.loss` as BEVDet runs them: per task, a class heatmap
with a Gaussian peak at each box centre's cell (CenterNet radius for the configured overlap, at least `min_radius`),
Gaussian focal loss over the heatmap normalised by the number of peaks, and an L1 loss on the 10 regression channels
at the boxes' cells, weighted by `code_weights` and normalised by the number of boxes.

The head's grid is the BEV grid itself (BEVDet's `voxel_size * out_size_factor` = 0.1 m x 8 = its 0.8 m cells); map
index `y * X + x`, maps `(B, C, Y, X)`.

Regression channels: cell offset (x, y) of the centre, centre z, log (l, w, h), sin and cos of the yaw, (vx, vy).
The size order (l, w, h) is that of BEVDet's boxes and of the released heads; boxes here are (w, l, h), swapped in
:func:`box_regression_targets` and back in `post_processing.decode_boxes`.
"""

from __future__ import annotations

import torch

from .configuration_bevdet import GeoMIMBEVDetectionConfig

# Channels of every task head but the heatmap, in the order of the released checkpoints.
HEAD_OUTPUTS = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}
HEATMAP_CLAMP = 1e-4  # mmdet3d's clip_sigmoid
FOCAL_EPS = 1e-12  # mmdet's gaussian_focal_loss


def gaussian_radius(length: torch.Tensor, width: torch.Tensor, min_overlap: float) -> torch.Tensor:
    """CenterNet's radius (in cells) within which a shifted box keeps IoU >= `min_overlap` with the true one.

    The three cases of CornerNet's derivation, exactly as mmdet3d computes them, including its `(b + sqrt(..)) / 2`
    for the quadratic roots, which every CenterPoint checkpoint was trained with.
    """
    b1 = length + width
    c1 = width * length * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (length + width)
    c2 = (1 - min_overlap) * width * length
    r2 = (b2 + torch.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (length + width)
    c3 = (min_overlap - 1) * width * length
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def grid_geometry(config: GeoMIMBEVDetectionConfig) -> tuple[tuple[float, float], tuple[float, float], int, int]:
    """`(x_start, x_step), (y_start, y_step), X, Y` of the head's map."""
    grid = config.bev_config.grid
    return (grid.x[0], grid.x[2]), (grid.y[0], grid.y[2]), grid.num_x, grid.num_y


def box_cells(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, config: GeoMIMBEVDetectionConfig):
    """Which boxes get targets and where.

    Args:
        gt_boxes: (B, M, 9) `(x, y, z, w, l, h, yaw, vx, vy)` in the grid's frame.
        gt_labels: (B, M) index in `config.class_names`, -1 for padding.

    Returns:
        valid: (B, M) bool, boxes inside the grid (ObjectRangeFilter's strict BEV range) with a positive footprint.
        centre: (B, M, 2) centre in cells (x, y), continuous.
        cell: (B, M, 2) long, the cell the centre falls in.
        radius: (B, M) long, heatmap radius in cells.
    """
    (x_start, x_step), (y_start, y_step), num_x, num_y = grid_geometry(config)
    x, y = gt_boxes[..., 0], gt_boxes[..., 1]
    width, length = gt_boxes[..., 3], gt_boxes[..., 4]
    inside = (x > x_start) & (x < x_start + num_x * x_step) & (y > y_start) & (y < y_start + num_y * y_step)
    valid = (gt_labels >= 0) & inside & (width > 0) & (length > 0)
    centre = torch.stack([(x - x_start) / x_step, (y - y_start) / y_step], dim=-1)
    cell = centre.floor().long().clamp(min=0)
    cell = torch.minimum(cell, cell.new_tensor([num_x - 1, num_y - 1]))  # a centre on the far edge, within float noise
    radius = gaussian_radius(length / y_step, width / x_step, config.gaussian_overlap)
    radius = torch.nan_to_num(radius, nan=0.0).floor().long().clamp(min=config.min_radius)
    return valid, centre, cell, radius


def draw_heatmaps(
    cell: torch.Tensor, radius: torch.Tensor, class_index: torch.Tensor, keep: torch.Tensor, num_classes: int,
    num_x: int, num_y: int,
) -> torch.Tensor:
    """(B, num_classes, Y, X) heatmaps: the maximum over boxes of `exp(-(dx^2 + dy^2) / (2 sigma^2))` with
    `sigma = (2 r + 1) / 6` within `r` cells (Chebyshev) of each box's cell, per class (`draw_heatmap_gaussian`).

    Args:
        cell: (B, M, 2) long, radius: (B, M) long, class_index: (B, M) long in [0, num_classes), keep: (B, M) bool.
    """
    batch = keep.shape[0]
    xs = torch.arange(num_x, device=cell.device)
    ys = torch.arange(num_y, device=cell.device)
    dx = (xs.view(1, 1, 1, num_x) - cell[..., 0, None, None]).abs()  # (B, M, 1, X)
    dy = (ys.view(1, 1, num_y, 1) - cell[..., 1, None, None]).abs()  # (B, M, Y, 1)
    sigma = (2 * radius + 1).float() / 6
    gaussian = torch.exp(-(dx.float() ** 2 + dy.float() ** 2) / (2 * sigma[..., None, None] ** 2))  # (B, M, Y, X)
    within = (dx <= radius[..., None, None]) & (dy <= radius[..., None, None]) & keep[..., None, None]
    gaussian = (gaussian * within).flatten(2)  # (B, M, Y * X)
    heatmaps = gaussian.new_zeros(batch * num_classes, num_y * num_x)
    # Boxes that are not kept add zeros to the first class's map, which cannot raise its maximum.
    target_row = torch.arange(batch, device=cell.device)[:, None] * num_classes + torch.where(keep, class_index, 0)
    heatmaps.scatter_reduce_(0, target_row.reshape(-1, 1).expand(-1, num_y * num_x),
                             gaussian.reshape(-1, num_y * num_x), reduce="amax")
    return heatmaps.view(batch, num_classes, num_y, num_x)


def box_regression_targets(gt_boxes: torch.Tensor, centre: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """(B, M, 10) regression targets: cell offset, z, log (l, w, h), sin / cos yaw, velocity."""
    yaw = gt_boxes[..., 6]
    length_width_height = gt_boxes[..., [4, 3, 5]]  # (w, l, h) -> (l, w, h), the head's order
    return torch.cat([
        centre - cell.to(centre.dtype),
        gt_boxes[..., 2:3],
        length_width_height.clamp(min=1e-6).log(),
        torch.sin(yaw)[..., None],
        torch.cos(yaw)[..., None],
        gt_boxes[..., 7:9],
    ], dim=-1)


def gaussian_focal_loss(logits: torch.Tensor, heatmap: torch.Tensor) -> torch.Tensor:
    """CornerNet's focal loss for Gaussian heatmaps (alpha 2, gamma 4), summed and divided by the number of peaks
    (cells where the target is exactly 1), at least 1."""
    probability = logits.float().sigmoid().clamp(HEATMAP_CLAMP, 1 - HEATMAP_CLAMP)
    positive = heatmap.eq(1).float()
    negative_weight = (1 - heatmap).pow(4)
    positive_loss = -(probability + FOCAL_EPS).log() * (1 - probability).pow(2) * positive
    negative_loss = -(1 - probability + FOCAL_EPS).log() * probability.pow(2) * negative_weight
    return (positive_loss + negative_loss).sum() / positive.sum().clamp(min=1)


def detection_loss(
    head_outputs: tuple[dict[str, torch.Tensor], ...],
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    config: GeoMIMBEVDetectionConfig,
) -> dict[str, torch.Tensor]:
    """The heatmap and box losses, summed over tasks (mmdet3d `CenterHead.loss`), in float32.

    Args:
        head_outputs: per task, the raw maps of the head (see `GeoMIMBEVDetectionOutput`).
        gt_boxes: (B, M, 9), gt_labels: (B, M) with -1 for padding.
    """
    if gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 9 or gt_labels.shape != gt_boxes.shape[:2]:
        raise ValueError(f"gt_boxes must be (batch_size, max_boxes, 9) and gt_labels (batch_size, max_boxes), got "
                         f"{tuple(gt_boxes.shape)} and {tuple(gt_labels.shape)}")
    if gt_labels.numel() and gt_labels.max() >= len(config.class_names):
        raise ValueError(f"gt_labels index config.class_names ({len(config.class_names)} classes), got label "
                         f"{gt_labels.max().item()}")
    gt_boxes = gt_boxes.float()
    valid, centre, cell, radius = box_cells(gt_boxes, gt_labels, config)
    targets = box_regression_targets(gt_boxes, centre, cell)  # (B, M, 10)
    _, _, num_x, num_y = grid_geometry(config)
    code_weights = gt_boxes.new_tensor(config.code_weights)
    batch_index = torch.arange(gt_boxes.shape[0], device=gt_boxes.device)[:, None].expand_as(gt_labels)

    loss_heatmap = loss_bbox = gt_boxes.new_zeros(())
    first_label = 0
    for task_classes, outputs in zip(config.tasks, head_outputs):
        class_index = gt_labels - first_label
        in_task = valid & (class_index >= 0) & (class_index < len(task_classes))
        first_label += len(task_classes)
        # At most max_objects boxes per sample and task, taken class by class as mmdet3d orders them.
        order = torch.where(in_task, class_index, len(task_classes)) * gt_labels.shape[1] + torch.arange(
            gt_labels.shape[1], device=gt_labels.device)
        rank = order.argsort(dim=1).argsort(dim=1)
        in_task &= rank < config.max_objects

        heatmap = draw_heatmaps(cell, radius, class_index, in_task, len(task_classes), num_x, num_y)
        loss_heatmap = loss_heatmap + gaussian_focal_loss(outputs["heatmap"], heatmap)

        prediction = torch.cat([outputs[name] for name in HEAD_OUTPUTS], dim=1).float()  # (B, 10, Y, X)
        box_batch, box_index = batch_index[in_task], in_task.nonzero()[:, 1]
        predicted = prediction[box_batch, :, cell[box_batch, box_index, 1], cell[box_batch, box_index, 0]]  # (K, 10)
        target = targets[box_batch, box_index]
        weights = code_weights * (~target.isnan())
        error = (predicted - torch.nan_to_num(target)).abs() * weights
        loss_bbox = loss_bbox + config.bbox_loss_weight * error.sum() / (in_task.sum() + 1e-4)
    return {"heatmap": config.heatmap_loss_weight * loss_heatmap, "bbox": loss_bbox}


__all__ = ["HEAD_OUTPUTS", "box_cells", "detection_loss", "draw_heatmaps", "gaussian_focal_loss", "gaussian_radius"]
