"""From CenterPoint head maps to boxes: top-K decoding and Scale-NMS with rotated-box IoU in BEV, in pure PyTorch.

Follows mmdet3d's `CenterPointBBoxCoder.decode` and BEVDet's `CenterHead.get_task_detections`: per task, the top K
(class, cell) scores, boxes decoded at those cells, a score threshold and a centre range, then NMS among the task's
boxes whatever their class, with each class's sizes scaled by its `nms_rescale_factors` entry for the overlap test only
(BEVDet's Scale-NMS), or circle NMS on centre distances. Every sample and task is processed at once: greedy NMS is
computed as the fixed point of "a box is kept unless a kept, higher-scoring box overlaps it", which batched matrix
products reach in as many rounds as the longest suppression chain, with no loop over boxes (the CUDA-only `nms_gpu`
and the Python `circle_nms` of the original are not needed).
"""

from __future__ import annotations

import torch

from .centerpoint import grid_geometry
from .configuration_bevdet import GeoMIMBEVDetectionConfig


def rectangle_corners(centres: torch.Tensor, sizes: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """(..., 4, 2) corners, counter-clockwise, of BEV rectangles with `centres` (..., 2), `sizes` (..., 2) = (length
    along the yaw direction, width) and `yaw` (...) counter-clockwise from +x."""
    half = sizes[..., None, :] / 2 * sizes.new_tensor([[1, 1], [-1, 1], [-1, -1], [1, -1]])  # (..., 4, 2)
    cos, sin = torch.cos(yaw)[..., None], torch.sin(yaw)[..., None]
    x = half[..., 0] * cos - half[..., 1] * sin
    y = half[..., 0] * sin + half[..., 1] * cos
    return torch.stack([x, y], dim=-1) + centres[..., None, :]


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(points: torch.Tensor, corners: torch.Tensor, tolerance: float) -> torch.Tensor:
    """(P, K) whether each of K points (P, K, 2) lies in the convex counter-clockwise quadrilateral (P, 4, 2)."""
    edges = corners.roll(-1, dims=1) - corners  # (P, 4, 2)
    offsets = points[:, :, None, :] - corners[:, None, :, :]  # (P, K, 4, 2)
    scale = edges.norm(dim=-1).amax(dim=1)[:, None, None]  # tolerance relative to the rectangle's size
    return (_cross(edges[:, None], offsets) >= -tolerance * scale**2).all(dim=-1)


def rotated_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU of pairs of rotated BEV rectangles `(x, y, length, width, yaw)`, each (P, 5) -> (P,).

    The intersection is a convex polygon whose vertices are the corners of each rectangle inside the other and the
    crossings of their edges; sorted by angle around their mean, they give the area by the shoelace formula.
    """
    corners_a = rectangle_corners(boxes_a[:, :2], boxes_a[:, 2:4], boxes_a[:, 4])  # (P, 4, 2)
    corners_b = rectangle_corners(boxes_b[:, :2], boxes_b[:, 2:4], boxes_b[:, 4])
    tolerance = 1e-6
    a_in_b = _inside(corners_a, corners_b, tolerance)  # (P, 4)
    b_in_a = _inside(corners_b, corners_a, tolerance)

    # Crossing of edge i of a (p + t r) with edge j of b (q + s u), t and s in [0, 1].
    p, r = corners_a[:, :, None], (corners_a.roll(-1, dims=1) - corners_a)[:, :, None]  # (P, 4, 1, 2)
    q, u = corners_b[:, None], (corners_b.roll(-1, dims=1) - corners_b)[:, None]  # (P, 1, 4, 2)
    denominator = _cross(r, u)  # (P, 4, 4)
    parallel = denominator.abs() < 1e-12
    safe = torch.where(parallel, torch.ones_like(denominator), denominator)
    t = _cross(q - p, u) / safe
    s = _cross(q - p, r) / safe
    crossing_valid = ~parallel & (t >= -tolerance) & (t <= 1 + tolerance) & (s >= -tolerance) & (s <= 1 + tolerance)
    crossings = (p + t[..., None] * r).flatten(1, 2)  # (P, 16, 2)

    points = torch.cat([corners_a, corners_b, crossings], dim=1)  # (P, 24, 2)
    valid = torch.cat([a_in_b, b_in_a, crossing_valid.flatten(1)], dim=1)  # (P, 24)
    count = valid.sum(dim=1)
    centre = (points * valid[..., None]).sum(dim=1) / count.clamp(min=1)[:, None]
    angle = torch.atan2(points[..., 1] - centre[:, None, 1], points[..., 0] - centre[:, None, 0])
    order = torch.where(valid, angle, torch.full_like(angle, 10.0)).argsort(dim=1)  # invalid points last
    polygon = points.gather(1, order[..., None].expand_as(points))
    # Invalid points become copies of the first vertex: they add zero-length edges to the shoelace sum.
    polygon = torch.where(valid.gather(1, order)[..., None], polygon, polygon[:, :1])
    intersection = 0.5 * _cross(polygon, polygon.roll(-1, dims=1)).sum(dim=1).abs()
    intersection = torch.where(count >= 3, intersection, torch.zeros_like(intersection))
    area_a = boxes_a[:, 2] * boxes_a[:, 3]
    area_b = boxes_b[:, 2] * boxes_b[:, 3]
    return intersection / (area_a + area_b - intersection).clamp(min=1e-12)


def greedy_suppression(overlaps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Greedy NMS over score-sorted candidates, for many groups at once.

    Args:
        overlaps: (G, K, K) bool, `overlaps[g, i, j]`: candidate i suppresses candidate j if i is kept (only i < j is
            read; candidates are sorted by descending score).
        valid: (G, K) bool, real candidates.

    Returns:
        (G, K) bool, the candidates greedy NMS keeps. The kept set is the unique fixed point of
        `keep[j] = valid[j] and not any(keep[i] and overlaps[i, j] for i < j)`; iterating from "all kept" makes the
        first t candidates exact after t rounds, and the iteration stops at the fixed point.
    """
    num = overlaps.shape[-1]
    earlier = torch.ones(num, num, dtype=torch.bool, device=overlaps.device).triu(diagonal=1)
    suppressors = (overlaps & earlier & valid[:, :, None]).float()  # (G, K, K)
    keep = valid.clone()
    for _ in range(num):
        suppressed = torch.bmm(keep.float()[:, None, :], suppressors)[:, 0] > 0  # (G, K)
        updated = valid & ~suppressed
        if torch.equal(updated, keep):
            break
        keep = updated
    return keep


def decode_boxes(outputs: dict[str, torch.Tensor], config: GeoMIMBEVDetectionConfig, top_k: int):
    """The top-K (class, cell) candidates of one task's maps, decoded.

    Returns boxes (B, K, 9) `(x, y, z, w, l, h, yaw, vx, vy)`, scores (B, K) and classes (B, K) within the task.
    """
    (x_start, x_step), (y_start, y_step), num_x, num_y = grid_geometry(config)
    heatmap = outputs["heatmap"].float().sigmoid()
    batch, num_classes = heatmap.shape[:2]
    scores, flat_index = heatmap.flatten(1).topk(min(top_k, heatmap[0].numel()), dim=1)  # over classes and cells
    classes, cells = flat_index // (num_y * num_x), flat_index % (num_y * num_x)

    def at_cells(name: str) -> torch.Tensor:  # (B, C, Y, X) -> (B, K, C)
        maps = outputs[name].float().flatten(2)
        return maps.gather(2, cells[:, None].expand(-1, maps.shape[1], -1)).transpose(1, 2)

    offset, height, log_size, rotation, velocity = (at_cells(name) for name in ("reg", "height", "dim", "rot", "vel"))
    x = ((cells % num_x).float() + offset[..., 0]) * x_step + x_start
    y = ((cells // num_x).float() + offset[..., 1]) * y_step + y_start
    length, width, box_height = log_size.exp().unbind(dim=-1)  # the head's (l, w, h)
    yaw = torch.atan2(rotation[..., 0], rotation[..., 1])
    boxes = torch.stack([x, y, height[..., 0], width, length, box_height, yaw, velocity[..., 0], velocity[..., 1]],
                        dim=-1)
    return boxes, scores, classes


def decode_detections(
    head_outputs: tuple[dict[str, torch.Tensor], ...],
    config: GeoMIMBEVDetectionConfig,
    score_threshold: float | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Boxes, scores and labels per sample; see `GeoMIMForBEVDetection.post_process`."""
    threshold = config.score_threshold if score_threshold is None else score_threshold
    centre_range = torch.tensor(config.post_center_range)
    rescale = torch.tensor(config.nms_rescale_factors)
    per_task = []
    first_label = 0
    for task, (task_classes, outputs) in enumerate(zip(config.tasks, head_outputs)):
        boxes, scores, classes = decode_boxes(outputs, config, config.max_detections_per_task)
        labels = classes + first_label
        first_label += len(task_classes)
        low, high = centre_range[:3].to(boxes), centre_range[3:].to(boxes)
        valid = (scores > threshold) & (boxes[..., :3] >= low).all(-1) & (boxes[..., :3] <= high).all(-1)
        # top-K is sorted by score; the NMS input is the pre_max_size best valid boxes
        valid &= valid.cumsum(dim=1) <= config.nms_pre_max_size
        if config.nms_types[task] == "circle":
            distance = torch.cdist(boxes[..., :2], boxes[..., :2]) ** 2  # (B, K, K)
            overlaps = distance <= config.nms_thresholds[task]
        else:
            overlaps = _rotated_overlaps(boxes, labels, valid, rescale.to(boxes), config.nms_thresholds[task])
        keep = greedy_suppression(overlaps, valid)
        keep &= keep.cumsum(dim=1) <= config.nms_post_max_size
        per_task.append((boxes, scores, labels, keep))

    detections = []
    for sample in range(head_outputs[0]["heatmap"].shape[0]):
        boxes = torch.cat([task_boxes[sample][keep[sample]] for task_boxes, _, _, keep in per_task])
        scores = torch.cat([task_scores[sample][keep[sample]] for _, task_scores, _, keep in per_task])
        labels = torch.cat([task_labels[sample][keep[sample]] for _, _, task_labels, keep in per_task])
        order = scores.argsort(descending=True)
        detections.append({"boxes": boxes[order], "scores": scores[order], "labels": labels[order]})
    return detections


def _rotated_overlaps(boxes: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, rescale: torch.Tensor,
                      threshold: float) -> torch.Tensor:
    """(B, K, K) bool: pairs of valid boxes whose Scale-NMS rectangles overlap with IoU above `threshold`.

    Only pairs whose circumscribed circles meet are measured; the others cannot overlap.
    """
    scale = rescale[labels]  # (B, K)
    # BEV rectangles (x, y, length, width, yaw), sizes scaled per class for the overlap test only.
    rectangles = torch.stack([boxes[..., 0], boxes[..., 1], boxes[..., 4] * scale, boxes[..., 3] * scale,
                              boxes[..., 6]], dim=-1)
    circumradius = rectangles[..., 2:4].norm(dim=-1) / 2
    distance = torch.cdist(rectangles[..., :2], rectangles[..., :2])
    candidates = (distance < circumradius[:, :, None] + circumradius[:, None, :]) & valid[:, :, None] & valid[:, None]
    candidates &= torch.ones_like(candidates[0]).triu(diagonal=1)
    sample, first, second = candidates.nonzero(as_tuple=True)
    overlaps = torch.zeros_like(candidates)
    overlaps[sample, first, second] = rotated_iou(rectangles[sample, first], rectangles[sample, second]) > threshold
    return overlaps


__all__ = ["decode_boxes", "decode_detections", "greedy_suppression", "rectangle_corners", "rotated_iou"]
