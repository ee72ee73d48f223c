"""LiDAR depth targets against a per-point projection loop; depth bins and the BCE depth loss against their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geomim_hf.data.nuscenes_constants import CAMERA_CHANNELS
from geomim_hf.data.synthetic.rig import CAMERA_MOUNTS, camera_rotation
from geomim_hf import GeoMIMPretrainingConfig
from geomim_hf.geometry import (
    depth_bin_targets,
    depth_loss,
    lidar_depth_targets,
    transform_points,
)
from test_geometry import IMAGE_AUGMENTATION, nuscenes_rig

DOWNSAMPLE = 16
IMAGE_SIZE = IMAGE_AUGMENTATION.output_size
BEV_AUGMENTATION = torch.tensor([[[0.0, -1.05, 0.0, 2.0], [-1.05, 0.0, 0.0, -1.0], [0.0, 0.0, 1.05, 0.5],
                                  [0.0, 0.0, 0.0, 1.0]]], dtype=torch.float64)


def lidar_sweep(generator: torch.Generator, num_points: int) -> torch.Tensor:
    """(num_points, 4) points around the car, 0.5 to 70 m away, with an intensity column."""
    azimuth = torch.rand(num_points, generator=generator, dtype=torch.float64) * 2 * math.pi
    distance = 0.5 + 69.5 * torch.rand(num_points, generator=generator, dtype=torch.float64) ** 2
    height = torch.rand(num_points, generator=generator, dtype=torch.float64) * 6.0 - 2.0
    intensity = torch.rand(num_points, generator=generator, dtype=torch.float64)
    return torch.stack([distance * azimuth.cos(), distance * azimuth.sin(), height, intensity], dim=-1)


def brute_force_patch_depth(points, points_mask, intrinsics, image_augmentation):
    """(B, 6, h, w) nearest depth per patch, one point and one camera at a time."""
    height, width = IMAGE_SIZE
    nearest = np.zeros((points.shape[0], 6, height // DOWNSAMPLE, width // DOWNSAMPLE))
    for camera, channel in enumerate(CAMERA_CHANNELS):
        mount = CAMERA_MOUNTS[channel]
        ego_to_camera = camera_rotation(mount.yaw_deg).inverse.rotation_matrix
        fx, fy, cx, cy = (intrinsics[camera, 0, 0].item(), intrinsics[camera, 1, 1].item(),
                          intrinsics[camera, 0, 2].item(), intrinsics[camera, 1, 2].item())
        for b, p in np.ndindex(*points.shape[:2]):
            if not points_mask[b, p]:
                continue
            x, y, z = ego_to_camera @ (points[b, p, :3].numpy() - np.array(mount.translation))
            if z <= 0:
                continue
            u, v = fx * x / z + cx, fy * y / z + cy
            if image_augmentation is not None:
                u, v = image_augmentation.apply(u, v)
            if not (0 <= u < width and 0 <= v < height):
                continue
            row, column = math.floor(v) // DOWNSAMPLE, math.floor(u) // DOWNSAMPLE
            if nearest[b, camera, row, column] == 0 or z < nearest[b, camera, row, column]:
                nearest[b, camera, row, column] = z
    return torch.tensor(nearest)


@pytest.mark.parametrize("image_augmentation", [False, True], ids=["no-image-aug", "image-aug"])
@pytest.mark.parametrize("bev_augmentation", [False, True], ids=["no-bda", "bda"])
def test_lidar_depth_targets_match_a_per_point_projection(image_augmentation, bev_augmentation):
    generator = torch.Generator().manual_seed(0)
    points = torch.stack([lidar_sweep(generator, 1500), lidar_sweep(generator, 1500)])  # (2, 1500, 4)
    points_mask = torch.ones(2, 1500, dtype=torch.bool)
    # Padding points, 3 m in front of CAM_FRONT: they would win many patches if the mask were ignored.
    points[1, -300:, :3] = torch.tensor([4.7, 0.0, 1.5], dtype=torch.float64) + 0.5 * torch.randn(
        300, 3, generator=generator, dtype=torch.float64)
    points_mask[1, -300:] = False

    intrinsics, camera_to_ego = nuscenes_rig((900, 1600) if image_augmentation else IMAGE_SIZE)
    augmentation = IMAGE_AUGMENTATION if image_augmentation else None
    expected = brute_force_patch_depth(points, points_mask, intrinsics, augmentation)
    post_rot = post_tran = bda = None
    if image_augmentation:
        rotation, translation = IMAGE_AUGMENTATION.matrices()
        post_rot, post_tran = rotation.expand(2, 6, 2, 2), translation.expand(2, 6, 2)
    if bev_augmentation:
        bda = BEV_AUGMENTATION.expand(2, 4, 4)
        points = torch.cat([transform_points(points[..., :3], bda), points[..., 3:]], dim=-1)

    targets = lidar_depth_targets(points, intrinsics.expand(2, 6, 3, 3), camera_to_ego.expand(2, 6, 4, 4),
                                  IMAGE_SIZE, DOWNSAMPLE, post_rot, post_tran, bda, points_mask)
    assert (expected > 0).sum() > 100, "too few patches have a depth for the comparison to mean much"
    torch.testing.assert_close(targets, expected, rtol=1e-12, atol=1e-12)


def test_lidar_depth_targets_reject_bad_shapes():
    intrinsics, camera_to_ego = nuscenes_rig(IMAGE_SIZE)
    points = torch.zeros(1, 10, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="multiple of downsample"):
        lidar_depth_targets(points, intrinsics[None], camera_to_ego[None], (120, 352), DOWNSAMPLE)
    with pytest.raises(ValueError, match=r"points_mask must have shape \(B, P\)"):
        lidar_depth_targets(points, intrinsics[None], camera_to_ego[None], IMAGE_SIZE, DOWNSAMPLE,
                            points_mask=torch.ones(1, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"intrinsics must have shape \(B, N, 3, 3\)"):
        lidar_depth_targets(points, intrinsics[None, :5], camera_to_ego[None], IMAGE_SIZE, DOWNSAMPLE)


def test_depth_bins_follow_the_reference_formula_and_drop_out_of_range_depths():
    depths = [0.0, 0.7, 0.999, 1.0, 1.49, 1.5, 30.26, 59.99, 60.0, 75.0]
    expected_bins = [None, None, None, 0, 0, 1, 58, 117, None, None]
    grid = GeoMIMPretrainingConfig().bev_grid
    targets = depth_bin_targets(torch.tensor(depths, dtype=torch.float64).view(1, 1, 1, -1), grid)
    assert targets.shape == (1, 1, 118, 1, len(depths))
    for column, expected_bin in enumerate(expected_bins):
        one_hot = targets[0, 0, :, 0, column]
        assert one_hot.sum() == (expected_bin is not None)
        if expected_bin is not None:
            assert one_hot[expected_bin] == 1


def test_depth_loss_is_the_mean_bce_over_foreground_pixels():
    generator = torch.Generator().manual_seed(0)
    probs = torch.randn(1, 2, 4, 2, 3, generator=generator, dtype=torch.float64).softmax(dim=2)
    targets = torch.zeros(1, 2, 4, 2, 3, dtype=torch.float64)
    foreground = [(0, 0, 1, 1, 0), (0, 1, 3, 1, 1), (0, 1, 0, 0, 2)]  # (b, n, bin, i, j)
    for b, n, depth_bin, i, j in foreground:
        targets[b, n, depth_bin, i, j] = 1.0
    expected = 0.0
    for b, n, depth_bin, i, j in foreground:
        for d in range(4):
            p = probs[b, n, d, i, j].item()
            expected -= math.log(p) if d == depth_bin else math.log(1 - p)
    weight = 0.01  # GeoMIM pretraining's
    expected *= weight / len(foreground)
    loss = depth_loss(probs, targets, weight=weight)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_depth_loss_without_foreground_is_zero():
    probs = torch.full((1, 2, 4, 2, 3), 0.25, requires_grad=True)
    loss = depth_loss(probs, torch.zeros(1, 2, 4, 2, 3), weight=3.0)
    loss.backward()
    assert loss.item() == 0.0 and not probs.grad.any()
    with pytest.raises(ValueError, match="depth_targets must have shape"):
        depth_loss(probs, torch.zeros(1, 2, 4, 2, 2), weight=3.0)
