"""BEV data augmentation (BDA): one rotation about the ego z axis, an isotropic scale and mirror flips of the ego frame.

Whatever lives in the ego frame of the LIDAR_TOP key frame moves together: ground-truth boxes and LiDAR points are
transformed here, and the frustum geometry of the view transformer through the returned matrix ``bda``
(``p_bev = bda @ p_ego``, see ``geomim_hf.geometry.frustum_to_ego``), so image features land where the boxes went.

The matrix is BEVDet's ``flip @ scale @ rotation`` (``bev_transform`` in BEVDet's ``LoadAnnotationsBEVDepth``), in the
4x4 homogeneous form of bevfusion's ``lidar_aug_matrix``. BEVDet finetuning draws rotation U(-22.5, 22.5) degrees,
scale U(0.95, 1.05) and each flip with p 0.5; GeoMIM pretraining only flips (bevfusion's ``RandomFlip3D``).

Boxes are float (M, 9) ``[x, y, z, w, l, h, yaw, vx, vy]``; points float (P, C >= 3) with x, y, z first.
"""

from __future__ import annotations

import math

import torch


def bev_augmentation_matrix(
    rotation_deg: float = 0.0, scale: float = 1.0, flip_x: bool = False, flip_y: bool = False
) -> torch.Tensor:
    """The (4, 4) float32 ``bda``: rotate counter-clockwise about ego z, scale, then mirror x -> -x and/or y -> -y."""
    cos, sin = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    rotation = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    flip = torch.diag(torch.tensor([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0], dtype=torch.float64))
    bda = torch.eye(4, dtype=torch.float64)
    bda[:3, :3] = flip @ (scale * rotation)
    return bda.float()


def sample_bev_augmentation(
    rotation_range_deg: tuple[float, float] = (0.0, 0.0),
    scale_range: tuple[float, float] = (1.0, 1.0),
    flip_x_probability: float = 0.0,
    flip_y_probability: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random (4, 4) ``bda``: rotation and scale uniform in their ranges, each flip with its probability.

    The defaults draw the identity. Four numbers are drawn from ``generator`` whatever the ranges, so that the
    stream of random numbers does not depend on which augmentations are switched on.
    """
    draws = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
    rotation_draw, scale_draw, flip_x_draw, flip_y_draw = draws
    return bev_augmentation_matrix(
        rotation_deg=rotation_range_deg[0] + (rotation_range_deg[1] - rotation_range_deg[0]) * rotation_draw,
        scale=scale_range[0] + (scale_range[1] - scale_range[0]) * scale_draw,
        flip_x=flip_x_draw < flip_x_probability,
        flip_y=flip_y_draw < flip_y_probability,
    )


def augment_points(points: torch.Tensor, bda: torch.Tensor) -> torch.Tensor:
    """(P, C >= 3) points -> (P, C): x, y, z moved by ``bda`` (3, 3) or (4, 4); the other channels are kept."""
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must have shape (P, C >= 3) with x, y, z first, got {tuple(points.shape)}")
    linear, translation = _split_bev_augmentation(bda, points)
    return torch.cat([points[:, :3] @ linear.T + translation, points[:, 3:]], dim=1)


def augment_boxes(boxes: torch.Tensor, bda: torch.Tensor) -> torch.Tensor:
    """(M, 9) boxes ``[x, y, z, w, l, h, yaw, vx, vy]`` -> (M, 9) boxes in the augmented ego frame.

    - centre: moved like a point;
    - size: multiplied by the scale;
    - yaw: the heading of the length axis is carried by the matrix (a rotation adds its angle, an x-flip gives
      pi - yaw, a y-flip -yaw, as in BEVDet), returned in (-pi, pi];
    - velocity: the time derivative of the centre, so it takes the linear part of ``bda``: rotated, mirrored and also
      scaled, because a scaled world moves the box s times as far between two frames (BEVDet does the same).

    ``bda`` must be a similarity that keeps ego z up (rotation about z, isotropic scale, flips of x and y, any
    translation); anything else would shear the boxes, which (M, 9) cannot represent.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 9:
        raise ValueError(f"boxes must have shape (M, 9) = [x, y, z, w, l, h, yaw, vx, vy], got {tuple(boxes.shape)}")
    linear, translation = _split_bev_augmentation(bda, boxes)
    scale = linear[2, 2]
    # linear = scale * Q with Q orthogonal and Q[2, 2] = 1, which leaves Q no room for z-tilt or shear.
    similarity = torch.allclose(linear.T @ linear, scale**2 * torch.eye(3).to(linear), atol=1e-5 * scale.item() ** 2)
    if scale <= 0 or not similarity:
        raise ValueError(f"bda must rotate about ego z, scale isotropically and flip x/y only, got\n{bda}")
    yaw = boxes[:, 6]
    heading = torch.stack([torch.cos(yaw), torch.sin(yaw)], dim=1) @ linear[:2, :2].T
    return torch.cat(
        [
            boxes[:, :3] @ linear.T + translation,
            boxes[:, 3:6] * scale,
            torch.atan2(heading[:, 1], heading[:, 0])[:, None],
            boxes[:, 7:9] @ linear[:2, :2].T,
        ],
        dim=1,
    )


def _split_bev_augmentation(bda: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 3) linear part and (3,) translation of a (3, 3) or (4, 4) ``bda``, in the dtype and device of ``like``."""
    if bda.shape not in ((3, 3), (4, 4)):
        raise ValueError(f"bda must have shape (3, 3) or (4, 4), got {tuple(bda.shape)}")
    bda = bda.to(like)
    translation = bda[:3, 3] if bda.shape == (4, 4) else torch.zeros(3, dtype=like.dtype, device=like.device)
    return bda[:3, :3], translation


__all__ = ["augment_boxes", "augment_points", "bev_augmentation_matrix", "sample_bev_augmentation"]
