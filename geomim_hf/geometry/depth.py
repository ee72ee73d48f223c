"""LiDAR depth supervision of the Lift-Splat depth distribution: targets per feature pixel, and the BCE loss.

Shared by GeoMIM pretraining (bevfusion's ``DepthLSSTransformGT``, loss weight 0.01) and BEVDepth-style finetuning
(weight 3.0): project the LiDAR points into every augmented image, keep the nearest depth in each stride x stride patch,
one-hot encode its depth bin, and score the predicted distribution with binary cross-entropy on the patches that have a
target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_shape
from .camera import apply_image_augmentation, ego_to_cameras, project
from .grid import BEVGrid


def patch_min_depth(
    points_camera: torch.Tensor,
    intrinsics: torch.Tensor,
    image_size: tuple[int, int],
    downsample: int,
    post_rot: torch.Tensor | None = None,
    post_tran: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    depth_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Nearest depth among the camera-frame points that land in each patch of the augmented image.

    A point lands in pixel (floor(u), floor(v)) of the augmented image when 0 <= u < W, 0 <= v < H and it is in front
    of the camera. bevfusion first writes the points into a full-resolution depth image, where the last point written
    to a pixel wins; here every point of a patch competes for its minimum.

    Args:
        points_camera: (B, N, P, 3) points in each camera's frame.
        intrinsics: (B, N, 3, 3) of the original images.
        image_size: (H, W) of the network input.
        downsample: patch size, the feature stride; H and W must be multiples of it.
        post_rot, post_tran: image augmentation (see :mod:`.camera`), both or neither.
        valid: (B, N, P) bool, False for points to ignore (padding), or None.
        depth_range: ``(min, max)``: only points at depths in ``[min, max)`` compete (BEVDet's
            ``PointToMultiViewDepth`` keeps [1, 60)), so a patch whose nearest point is too near still gets the
            nearest one in range; None: all points in front of the camera.

    Returns:
        (B, N, H / downsample, W / downsample) depth in metres, 0 where no point lands.
    """
    check_shape("points_camera", points_camera, (None, None, None, 3), "(B, N, P, 3)")
    batch, cameras, num_points, _ = points_camera.shape
    height, width = image_size
    if downsample < 1 or height % downsample or width % downsample:
        raise ValueError(f"image_size (H, W) = {image_size} must be a positive multiple of downsample {downsample}")
    if (post_rot is None) != (post_tran is None):
        raise ValueError("post_rot and post_tran describe one image augmentation: pass both or neither")

    pixels, depth = project(points_camera, intrinsics)  # (B, N, P, 2), (B, N, P)
    if post_rot is not None:
        pixels = apply_image_augmentation(pixels, post_rot, post_tran)
    u, v = pixels.unbind(dim=-1)
    lands = (depth > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)  # NaN pixels compare False
    if depth_range is not None:
        lands = lands & (depth >= depth_range[0]) & (depth < depth_range[1])
    if valid is not None:
        check_shape("valid", valid, (batch, cameras, num_points), "(B, N, P)")
        lands = lands & valid

    patches_high, patches_wide = height // downsample, width // downsample
    image = torch.arange(batch * cameras, device=depth.device).view(batch, cameras, 1).expand_as(depth)
    # u and v are non-negative where a point lands, so integer conversion is floor.
    patch = (image[lands] * patches_high + v[lands].long() // downsample) * patches_wide + u[lands].long() // downsample
    nearest = depth.new_full((batch * cameras * patches_high * patches_wide,), float("inf"))
    nearest.scatter_reduce_(0, patch, depth[lands], reduce="amin")
    return nearest.masked_fill_(nearest.isinf(), 0.0).view(batch, cameras, patches_high, patches_wide)


def lidar_depth_targets(
    points: torch.Tensor,
    intrinsics: torch.Tensor,
    camera_to_ego: torch.Tensor,
    image_size: tuple[int, int],
    downsample: int,
    post_rot: torch.Tensor | None = None,
    post_tran: torch.Tensor | None = None,
    bev_augmentation: torch.Tensor | None = None,
    points_mask: torch.Tensor | None = None,
    depth_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Nearest LiDAR depth per feature pixel of every camera: :func:`patch_min_depth` of ego-frame points.

    Args:
        points: (B, P, 3 + K) LiDAR points in the ego frame, extra columns (intensity, time lag, ...) ignored; in the
            augmented ego frame when ``bev_augmentation`` is given, which is undone first.
        intrinsics: (B, N, 3, 3).
        camera_to_ego: (B, N, 4, 4).
        image_size: (H, W) of the network input.
        downsample: patch size, the feature stride.
        post_rot, post_tran: image augmentation, both or neither.
        bev_augmentation: (B, 3, 3) or (B, 4, 4), or None.
        points_mask: (B, P) bool, False for padding points, or None.
        depth_range: see :func:`patch_min_depth`.

    Returns:
        (B, N, H / downsample, W / downsample) depth in metres, 0 where no point lands.
    """
    if points.ndim != 3 or points.shape[-1] < 3:
        raise ValueError(f"points must have shape (B, P, 3 + K), got {tuple(points.shape)}")
    points_camera = ego_to_cameras(points[..., :3], camera_to_ego, bev_augmentation)  # (B, N, P, 3)
    valid = None
    if points_mask is not None:
        check_shape("points_mask", points_mask, points.shape[:2], "(B, P)")
        valid = points_mask[:, None].expand(points_camera.shape[:3])
    return patch_min_depth(points_camera, intrinsics, image_size, downsample, post_rot, post_tran, valid, depth_range)


def depth_bin_targets(patch_depth: torch.Tensor, grid: BEVGrid) -> torch.Tensor:
    """One-hot depth bin of each patch depth; all zeros where there is no depth or it is out of range.

    Bin k takes depths in [start + k * step, start + (k + 1) * step): the class ``(d - (start - step)) / step`` of
    bevfusion and BEVDepth, whose class 0 (no depth, or nearer than ``start``) is dropped. The arithmetic is theirs, so
    a depth on a bin edge falls on the same side.

    Args:
        patch_depth: (B, N, h, w) from :func:`lidar_depth_targets`.
        grid: gives the depth bins.

    Returns:
        (B, N, D, h, w) in the dtype of ``patch_depth``, laid out like the predicted depth distribution.
    """
    check_shape("patch_depth", patch_depth, (None, None, None, None), "(B, N, h, w)")
    start, _, step = grid.depth
    num_bins = grid.num_depth_bins
    shifted = (patch_depth - (start - step)) / step
    in_range = (shifted >= 1) & (shifted < num_bins + 1)
    bins = torch.where(in_range, shifted.long() - 1, 0)  # (B, N, h, w)
    one_hot = F.one_hot(bins, num_bins).movedim(-1, 2).to(patch_depth.dtype)  # (B, N, D, h, w)
    return one_hot * in_range[:, :, None]


def depth_loss(depth_probabilities: torch.Tensor, depth_targets: torch.Tensor, *, weight: float) -> torch.Tensor:
    """Binary cross-entropy of the depth distribution on the pixels that have a LiDAR target.

    Summed over bins and pixels, divided by the number of such pixels, times ``weight`` (0.01 in GeoMIM pretraining,
    3.0 in BEVDepth-style finetuning: the models' configurations hold it). Zero when no pixel has a target.

    Args:
        depth_probabilities: (B, N, D, h, w) probabilities (softmax over D).
        depth_targets: (B, N, D, h, w) from :func:`depth_bin_targets`.
        weight: loss weight.

    Returns:
        Scalar loss, in at least float32.
    """
    check_shape("depth_probabilities", depth_probabilities, (None, None, None, None, None), "(B, N, D, h, w)")
    check_shape("depth_targets", depth_targets, depth_probabilities.shape, "(B, N, D, h, w) of depth_probabilities")
    foreground = depth_targets.amax(dim=2) > 0  # (B, N, h, w)
    loss_dtype = torch.promote_types(depth_probabilities.dtype, torch.float32)
    probs = depth_probabilities.movedim(2, -1)[foreground].to(loss_dtype)  # (F, D)
    targets = depth_targets.movedim(2, -1)[foreground].to(loss_dtype)
    # Autocast refuses BCE on probabilities (unsafe in half precision); the reference also scores in float32.
    with torch.autocast(device_type=depth_probabilities.device.type, enabled=False):
        summed = F.binary_cross_entropy(probs, targets, reduction="sum")
    return weight * summed / foreground.sum().clamp(min=1)


__all__ = [
    "depth_bin_targets",
    "depth_loss",
    "lidar_depth_targets",
    "patch_min_depth",
]
