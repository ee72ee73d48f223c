"""Camera geometry of Lift-Splat: the frustum of (pixel, depth-bin) points and its way to the ego frame, and back.

Conventions, shared with nuScenes, BEVDet and bevfusion:
- camera frame x right, y down, z forward; ego frame x forward, y left, z up. "Ego" is whatever frame the
  camera-to-ego extrinsics point to (GeoMIM pretraining uses the LiDAR frame);
- pixel coordinates (u, v): u along the width, v along the height, from the top-left corner;
- 2D image augmentation (resize, crop, flip, rotate) sends pixel p of the original image to
  ``p_aug = post_rot @ p + post_tran``; ``post_rot`` may be BEVDet's 2x2 or bevfusion's 3x3 (whose depth row and column
  are the identity: the augmentation never changes depth), ``post_tran`` 2 or 3 long;
- BEV augmentation (BEVDet's 3x3 ``bda``, bevfusion's 4x4 ``lidar_aug_matrix``) sends ego points into the augmented
  ego frame in which the BEV grid and the boxes live.

Batched tensors lead with (B, N): batch, cameras.
"""

from __future__ import annotations

import torch

from ._checks import check_shape
from .grid import BEVGrid


def create_frustum(
    image_size: tuple[int, int],
    stride: int,
    grid: BEVGrid,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Frustum points (u, v, depth) of one camera's feature map, in augmented-image pixels.

    Feature column j sits at u = j * (W - 1) / (w - 1), i.e. ``linspace(0, W - 1, w)``, not at the centre of its
    stride x stride patch: that is the convention of LSS, bevfusion and BEVDet, which their checkpoints expect.

    Args:
        image_size: (H, W) of the network input.
        stride: feature stride; H and W must be multiples of it.
        grid: gives the depth bins.

    Returns:
        (D, h, w, 3) with h = H / stride, w = W / stride.
    """
    height, width = image_size
    if stride < 1 or height % stride or width % stride:
        raise ValueError(f"image_size (H, W) = {image_size} must be a positive multiple of stride {stride}")
    depth = grid.depth_values(device=device, dtype=dtype)
    # On depth's device, which is the default device (meta, while transformers builds a model to load) when None.
    v = torch.linspace(0, height - 1, height // stride, device=depth.device, dtype=dtype)
    u = torch.linspace(0, width - 1, width // stride, device=depth.device, dtype=dtype)
    depth_grid, v_grid, u_grid = torch.meshgrid(depth, v, u, indexing="ij")  # each (D, h, w)
    return torch.stack([u_grid, v_grid, depth_grid], dim=-1)


def transform_points(points: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """Apply linear (k x k) or affine homogeneous ((k+1) x (k+1)) transforms to k-dimensional points.

    Args:
        points: (*T, *P, k), where *T are the leading dims of ``transform`` (e.g. (B, N) for per-camera matrices).
        transform: (*T, k, k) or (*T, k + 1, k + 1); the last row of a homogeneous matrix is taken to be (0, ..., 0, 1).

    Returns:
        (*T, *P, k).
    """
    leading = tuple(transform.shape[:-2])
    size = points.shape[-1]
    if transform.shape[-1] != transform.shape[-2] or transform.shape[-1] not in (size, size + 1):
        raise ValueError(f"transform must be ({size}, {size}) or ({size + 1}, {size + 1}) for {size}-d points, "
                         f"got {tuple(transform.shape[-2:])}")
    if tuple(points.shape[: len(leading)]) != leading:
        raise ValueError(f"points {tuple(points.shape)} and transform {tuple(transform.shape)} disagree on the "
                         f"leading dims {leading}")
    flat = points.reshape(*leading, -1, size)  # (*T, P, k)
    moved = flat @ transform[..., :size, :size].transpose(-1, -2)
    if transform.shape[-1] == size + 1:
        moved = moved + transform[..., None, :size, size]
    return moved.reshape(points.shape)


def image_augmentation_matrix(post_rot: torch.Tensor, post_tran: torch.Tensor) -> torch.Tensor:
    """The 2D augmentation ``p_aug = post_rot @ p + post_tran`` as one homogeneous matrix.

    Args:
        post_rot: (B, N, 2, 2) or (B, N, 3, 3).
        post_tran: (B, N, 2) or (B, N, 3).

    Returns:
        (B, N, 3, 3) acting on homogeneous pixels (u, v, 1).
    """
    if post_rot.ndim != 4 or post_rot.shape[-2:] not in ((2, 2), (3, 3)):
        raise ValueError(f"post_rot must have shape (B, N, 2, 2) or (B, N, 3, 3), got {tuple(post_rot.shape)}")
    if post_tran.shape[:2] != post_rot.shape[:2] or post_tran.ndim != 3 or post_tran.shape[-1] not in (2, 3):
        raise ValueError(f"post_tran must have shape (B, N, 2) or (B, N, 3) matching post_rot "
                         f"{tuple(post_rot.shape)}, got {tuple(post_tran.shape)}")
    matrix = torch.zeros(*post_rot.shape[:2], 3, 3, device=post_rot.device, dtype=post_rot.dtype)
    matrix[..., :2, :2] = post_rot[..., :2, :2]
    matrix[..., :2, 2] = post_tran[..., :2]
    matrix[..., 2, 2] = 1.0
    return matrix


def apply_image_augmentation(pixels: torch.Tensor, post_rot: torch.Tensor, post_tran: torch.Tensor) -> torch.Tensor:
    """(B, N, *P, 2) original-image pixels -> (B, N, *P, 2) augmented-image pixels."""
    return transform_points(pixels, image_augmentation_matrix(post_rot, post_tran))


def undo_image_augmentation(pixels: torch.Tensor, post_rot: torch.Tensor, post_tran: torch.Tensor) -> torch.Tensor:
    """(B, N, *P, 2) augmented-image pixels -> (B, N, *P, 2) original-image pixels."""
    return transform_points(pixels, torch.linalg.inv(image_augmentation_matrix(post_rot, post_tran)))


def unproject(pixels: torch.Tensor, depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Camera-frame points at ``depth`` (the camera z) along the rays of ``pixels``.

    Args:
        pixels: (B, N, *P, 2) original-image pixels (u, v).
        depth: (B, N, *P).
        intrinsics: (B, N, 3, 3).

    Returns:
        (B, N, *P, 3) x, y, z in the camera frame.
    """
    check_shape("intrinsics", intrinsics, (*pixels.shape[:2], 3, 3), "(B, N, 3, 3)")
    scaled_pixels = torch.cat([pixels * depth[..., None], depth[..., None]], dim=-1)  # depth * (u, v, 1)
    return transform_points(scaled_pixels, torch.linalg.inv(intrinsics))


def project(points_camera: torch.Tensor, intrinsics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels and depths of camera-frame points; the inverse of :func:`unproject`.

    Args:
        points_camera: (B, N, *P, 3).
        intrinsics: (B, N, 3, 3).

    Returns:
        pixels: (B, N, *P, 2) (u, v); infinite or NaN where the depth is 0.
        depth: (B, N, *P) camera z; a point is in front of the camera where it is positive.
    """
    check_shape("intrinsics", intrinsics, (*points_camera.shape[:2], 3, 3), "(B, N, 3, 3)")
    scaled_pixels = transform_points(points_camera, intrinsics)  # depth * (u, v, 1)
    depth = points_camera[..., 2]
    return scaled_pixels[..., :2] / depth[..., None], depth


def _check_bev_augmentation(bev_augmentation: torch.Tensor, batch: int) -> None:
    if bev_augmentation.ndim != 3 or bev_augmentation.shape[0] != batch or bev_augmentation.shape[1:] not in (
        (3, 3),
        (4, 4),
    ):
        raise ValueError(f"bev_augmentation must have shape (B, 3, 3) or (B, 4, 4) with B = {batch}, "
                         f"got {tuple(bev_augmentation.shape)}")


def frustum_to_ego(
    frustum: torch.Tensor,
    intrinsics: torch.Tensor,
    camera_to_ego: torch.Tensor,
    post_rot: torch.Tensor | None = None,
    post_tran: torch.Tensor | None = None,
    bev_augmentation: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ego-frame position of every frustum point of every camera: the geometry that :mod:`.bev_pool` splats with.

    Undoes the image augmentation, unprojects with the intrinsics, moves to the ego frame, then applies the BEV
    augmentation. Differentiable with respect to all matrices.

    Args:
        frustum: (D, h, w, 3) from :func:`create_frustum`.
        intrinsics: (B, N, 3, 3) of the original (unaugmented) images.
        camera_to_ego: (B, N, 4, 4).
        post_rot, post_tran: image augmentation, both or neither (see the module docstring).
        bev_augmentation: (B, 3, 3) or (B, 4, 4), or None.

    Returns:
        (B, N, D, h, w, 3) x, y, z in the (augmented) ego frame.
    """
    check_shape("frustum", frustum, (None, None, None, 3), "(D, h, w, 3)")
    check_shape("intrinsics", intrinsics, (None, None, 3, 3), "(B, N, 3, 3)")
    batch, cameras = intrinsics.shape[:2]
    check_shape("camera_to_ego", camera_to_ego, (batch, cameras, 4, 4), "(B, N, 4, 4)")
    if (post_rot is None) != (post_tran is None):
        raise ValueError("post_rot and post_tran describe one image augmentation: pass both or neither")
    pixels = frustum[..., :2].expand(batch, cameras, *frustum.shape[:-1], 2)  # (B, N, D, h, w, 2)
    depth = frustum[..., 2].expand(batch, cameras, *frustum.shape[:-1])  # (B, N, D, h, w)
    if post_rot is not None:
        pixels = undo_image_augmentation(pixels, post_rot, post_tran)
    points = transform_points(unproject(pixels, depth, intrinsics), camera_to_ego)
    if bev_augmentation is not None:
        _check_bev_augmentation(bev_augmentation, batch)
        points = transform_points(points, bev_augmentation)
    return points


def ego_to_cameras(
    points: torch.Tensor, camera_to_ego: torch.Tensor, bev_augmentation: torch.Tensor | None = None
) -> torch.Tensor:
    """Camera-frame coordinates of ego-frame points, for every camera.

    Args:
        points: (B, P, 3) in the ego frame; in the augmented ego frame when ``bev_augmentation`` is given, which is then
            undone first.
        camera_to_ego: (B, N, 4, 4).
        bev_augmentation: (B, 3, 3) or (B, 4, 4), or None.

    Returns:
        (B, N, P, 3).
    """
    check_shape("points", points, (None, None, 3), "(B, P, 3)")
    check_shape("camera_to_ego", camera_to_ego, (points.shape[0], None, 4, 4), "(B, N, 4, 4)")
    if bev_augmentation is not None:
        _check_bev_augmentation(bev_augmentation, points.shape[0])
        points = transform_points(points, torch.linalg.inv(bev_augmentation))
    batch, cameras = camera_to_ego.shape[:2]
    per_camera = points[:, None].expand(batch, cameras, *points.shape[1:])  # (B, N, P, 3)
    return transform_points(per_camera, torch.linalg.inv(camera_to_ego))


__all__ = [
    "apply_image_augmentation",
    "create_frustum",
    "ego_to_cameras",
    "frustum_to_ego",
    "image_augmentation_matrix",
    "project",
    "transform_points",
    "undo_image_augmentation",
    "unproject",
]
