"""Lift-Splat geometry in pure PyTorch: frustum, camera transforms, BEV pooling and LiDAR depth supervision.

Typical use, for a view transform with fixed cameras::

    grid = BEVGrid(x=(-51.2, 51.2, 0.8), y=(-51.2, 51.2, 0.8), z=(-5.0, 3.0, 8.0), depth=(1.0, 60.0, 1.0))  # BEVDet
    frustum = create_frustum((256, 704), stride=16, grid=grid)                  # (D, h, w, 3)
    geometry = frustum_to_ego(frustum, intrinsics, camera_to_ego, post_rot, post_tran, bda)  # (B, N, D, h, w, 3)
    index = BEVPoolIndex.from_geometry(geometry, grid)                           # once per geometry
    bev = bev_pool(depth.softmax(dim=2), context, index)                         # (B, C, Y, X)
"""

from .bev_pool import BEVPoolIndex, bev_pool
from .camera import (
    apply_image_augmentation,
    create_frustum,
    ego_to_cameras,
    frustum_to_ego,
    image_augmentation_matrix,
    project,
    transform_points,
    undo_image_augmentation,
    unproject,
)
from .depth import (
    depth_bin_targets,
    depth_loss,
    lidar_depth_targets,
    patch_min_depth,
)
from .grid import BEVGrid, voxel_indices

__all__ = [
    "BEVGrid",
    "BEVPoolIndex",
    "apply_image_augmentation",
    "bev_pool",
    "create_frustum",
    "depth_bin_targets",
    "depth_loss",
    "ego_to_cameras",
    "frustum_to_ego",
    "image_augmentation_matrix",
    "lidar_depth_targets",
    "patch_min_depth",
    "project",
    "transform_points",
    "undo_image_augmentation",
    "unproject",
    "voxel_indices",
]
