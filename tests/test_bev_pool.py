"""bev_pool against closed forms and a brute-force loop, gradients with gradcheck."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from geomim_hf.data.nuscenes_constants import CAMERA_CHANNELS
from geomim_hf.data.synthetic.rig import CAMERA_MOUNTS, camera_rotation
from geomim_hf.geometry import BEVGrid, BEVPoolIndex, bev_pool, create_frustum, frustum_to_ego
from test_geometry import BEVDET_GRID, IMAGE_AUGMENTATION, nuscenes_rig

STRIDE = 16
IMAGE_SIZE = IMAGE_AUGMENTATION.output_size
BEV_ROTATION_DEG, BEV_SCALE, BEV_TRANSLATION = 17.0, 1.04, (0.7, -1.3, 0.2)
SMALL_GRID = BEVGrid(x=(-2.0, 2.0, 1.0), y=(-1.5, 1.5, 1.0), z=(-1.0, 1.0, 1.0), depth=(1.0, 5.0, 1.0))


def bev_augmentation_matrix(size: int) -> torch.Tensor:
    """(1, size, size) BEVDet-style rotation, scale and x-flip; with a translation too when size is 4."""
    cos, sin = math.cos(math.radians(BEV_ROTATION_DEG)), math.sin(math.radians(BEV_ROTATION_DEG))
    matrix = torch.eye(size, dtype=torch.float64)
    matrix[:3, :3] = torch.tensor([[-cos, sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64) * BEV_SCALE
    if size == 4:
        matrix[:3, 3] = torch.tensor(BEV_TRANSLATION, dtype=torch.float64)
    return matrix[None]


def augment_bev_point(point: np.ndarray, size: int) -> np.ndarray:
    """The augmentation of ``bev_augmentation_matrix``, step by step: rotate about z, scale, flip x, translate."""
    cos, sin = math.cos(math.radians(BEV_ROTATION_DEG)), math.sin(math.radians(BEV_ROTATION_DEG))
    x, y, z = point
    x, y = cos * x - sin * y, sin * x + cos * y
    x, y, z = -BEV_SCALE * x, BEV_SCALE * y, BEV_SCALE * z
    if size == 4:
        return np.array([x, y, z]) + np.array(BEV_TRANSLATION)
    return np.array([x, y, z])


def brute_force_bev(geometry, depth, features, grid):
    """(B, C, Z, Y, X) by the definition: loop over every frustum point, add depth x feature to its cell if any."""
    batch, cameras, depth_bins, height, width, _ = geometry.shape
    num_z, num_y, num_x = grid.shape
    bev = torch.zeros(batch, features.shape[2], num_z, num_y, num_x, dtype=features.dtype)
    for b, n, d, i, j in np.ndindex(batch, cameras, depth_bins, height, width):
        x, y, z = geometry[b, n, d, i, j].tolist()
        cell_x = math.floor((x - grid.x[0]) / grid.x[2])
        cell_y = math.floor((y - grid.y[0]) / grid.y[2])
        cell_z = math.floor((z - grid.z[0]) / grid.z[2])
        if 0 <= cell_x < num_x and 0 <= cell_y < num_y and 0 <= cell_z < num_z:
            bev[b, :, cell_z, cell_y, cell_x] += depth[b, n, d, i, j] * features[b, n, :, i, j]
    return bev


def random_geometry(shape, generator):
    """Frustum-like geometry on SMALL_GRID: each pixel's depth bins step along a short ray, so neighbouring bins often
    share a cell, every cell is reached from several cameras, and about a third of the points fall outside."""
    batch, cameras, depth_bins, height, width = shape
    start = torch.rand(batch, cameras, 1, height, width, 3, generator=generator, dtype=torch.float64) - 0.5
    direction = torch.randn(batch, cameras, 1, height, width, 3, generator=generator, dtype=torch.float64)
    steps = torch.arange(depth_bins, dtype=torch.float64).view(1, 1, depth_bins, 1, 1, 1)
    return start * torch.tensor([4.8, 3.6, 2.0], dtype=torch.float64) + 0.25 * steps * direction


@pytest.mark.parametrize("image_augmentation", [False, True], ids=["no-image-aug", "image-aug"])
@pytest.mark.parametrize("bev_augmentation_size", [None, 3, 4], ids=["no-bda", "bda-3x3", "bda-4x4"])
def test_single_feature_lands_in_the_closed_form_cell_for_each_camera(image_augmentation, bev_augmentation_size):
    intrinsics, camera_to_ego = nuscenes_rig(IMAGE_SIZE)
    post_rot = post_tran = bev_augmentation = None
    if image_augmentation:
        rotation, translation = IMAGE_AUGMENTATION.matrices()
        post_rot, post_tran = rotation.expand(1, 6, 2, 2), translation.expand(1, 6, 2)
        # The augmentation maps the 1600x900 image onto the network input; the intrinsics are those of the original.
        intrinsics, _ = nuscenes_rig((900, 1600))
    if bev_augmentation_size is not None:
        bev_augmentation = bev_augmentation_matrix(bev_augmentation_size)
    frustum = create_frustum(IMAGE_SIZE, STRIDE, BEVDET_GRID, dtype=torch.float64)
    geometry = frustum_to_ego(frustum, intrinsics[None], camera_to_ego[None], post_rot, post_tran, bev_augmentation)
    index = BEVPoolIndex.from_geometry(geometry, BEVDET_GRID)

    _, height, width, _ = frustum.shape
    row, column, depth_bin = 5, 7, 9  # a pixel just below the horizon, 10 m away
    depth = torch.zeros(1, 6, BEVDET_GRID.num_depth_bins, height, width, dtype=torch.float64)
    depth[:, :, depth_bin] = 1.0
    feature = torch.tensor([1.5, -2.0, 0.25], dtype=torch.float64)
    for camera, channel in enumerate(CAMERA_CHANNELS):
        features = torch.zeros(1, 6, 3, height, width, dtype=torch.float64)
        features[0, camera, :, row, column] = feature

        u = column * (IMAGE_SIZE[1] - 1) / (width - 1)
        v = row * (IMAGE_SIZE[0] - 1) / (height - 1)
        if image_augmentation:
            u, v = IMAGE_AUGMENTATION.undo(u, v)
        fx, fy, cx, cy = (intrinsics[camera, 0, 0], intrinsics[camera, 1, 1], intrinsics[camera, 0, 2],
                          intrinsics[camera, 1, 2])
        distance = 1.0 + depth_bin
        ray = [(u - cx.item()) / fx.item() * distance, (v - cy.item()) / fy.item() * distance, distance]
        mount = CAMERA_MOUNTS[channel]
        point = camera_rotation(mount.yaw_deg).rotate(ray) + np.array(mount.translation)
        if bev_augmentation_size is not None:
            point = augment_bev_point(point, bev_augmentation_size)
        cell_x, cell_y = (point[0] + 51.2) / 0.8, (point[1] + 51.2) / 0.8
        assert -5.0 <= point[2] < 3.0 and 0 < cell_x < 128 and 0 < cell_y < 128
        assert min(cell_x % 1, 1 - cell_x % 1, cell_y % 1, 1 - cell_y % 1) > 1e-6, "closed form too near a cell edge"

        expected = torch.zeros(1, 3, 128, 128, dtype=torch.float64)
        expected[0, :, math.floor(cell_y), math.floor(cell_x)] = feature
        torch.testing.assert_close(bev_pool(depth, features, index), expected, rtol=0, atol=1e-12, msg=channel)


@pytest.mark.parametrize("collapse_z", [False, True])
def test_bev_pool_equals_the_brute_force_sum(collapse_z):
    generator = torch.Generator().manual_seed(0)
    shape = (2, 3, 4, 3, 5)  # (B, N, D, h, w)
    geometry = random_geometry(shape, generator)
    index = BEVPoolIndex.from_geometry(geometry, SMALL_GRID)

    # The setup exercises what it should: points outside the grid, and cells reached from several cameras.
    cells = (geometry - torch.tensor([-2.0, -1.5, -1.0], dtype=torch.float64)).floor().long()  # unit cells
    inside = ((cells >= 0) & (cells < torch.tensor([4, 3, 2]))).all(-1)
    assert 0.2 < 1 - inside.double().mean() < 0.6
    cell_id = (cells[..., 2] * 3 + cells[..., 1]) * 4 + cells[..., 0]
    cells_per_camera = [set(cell_id[0, n][inside[0, n]].tolist()) for n in range(3)]
    assert cells_per_camera[0] & cells_per_camera[1] & cells_per_camera[2], "no cell is reached from all cameras"

    for _ in range(2):  # the index is reused for new inputs
        depth = torch.rand(*shape, generator=generator, dtype=torch.float64)
        features = torch.randn(2, 3, 6, 3, 5, generator=generator, dtype=torch.float64)
        expected = brute_force_bev(geometry, depth, features, SMALL_GRID)  # (B, C, Z, Y, X)
        if collapse_z:
            expected = torch.cat(expected.unbind(dim=2), dim=1)
        torch.testing.assert_close(bev_pool(depth, features, index, collapse_z=collapse_z), expected,
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("collapse_z", [False, True])
def test_bev_pool_gradients(collapse_z):
    generator = torch.Generator().manual_seed(1)
    shape = (1, 2, 4, 2, 2)
    index = BEVPoolIndex.from_geometry(random_geometry(shape, generator), SMALL_GRID)
    assert index.num_entries < index.point_depth_index.numel(), "no two points of a pixel share a cell"
    depth = torch.rand(*shape, generator=generator, dtype=torch.float64, requires_grad=True)
    features = torch.randn(1, 2, 2, 2, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    # bev_pool is linear in each input, so finite differences are exact up to rounding: hold them to tight tolerances.
    assert torch.autograd.gradcheck(lambda d, f: bev_pool(d, f, index, collapse_z=collapse_z), (depth, features),
                                    atol=1e-9, rtol=1e-7)


def test_bev_pool_is_deterministic_on_cpu():
    generator = torch.Generator().manual_seed(2)
    shape = (2, 3, 4, 3, 5)
    index = BEVPoolIndex.from_geometry(random_geometry(shape, generator).float(), SMALL_GRID)
    depth = torch.rand(*shape, generator=generator, requires_grad=True)
    features = torch.randn(2, 3, 8, 3, 5, generator=generator, requires_grad=True)
    grad_bev = torch.randn(2, 16, 3, 4, generator=generator)
    runs = []
    for _ in range(2):
        bev = bev_pool(depth, features, index)
        depth_grad, features_grad = torch.autograd.grad(bev, (depth, features), grad_bev)
        runs.append((bev, depth_grad, features_grad))
    assert all(torch.equal(first, second) for first, second in zip(*runs))


def test_legacy_truncation_pools_points_just_below_the_grid():
    geometry = torch.tensor([-2.5, 0.2, 0.5], dtype=torch.float64).view(1, 1, 1, 1, 1, 3).repeat(1, 1, 4, 1, 1, 1)
    depth = torch.ones(1, 1, 4, 1, 1, dtype=torch.float64)
    features = torch.ones(1, 1, 2, 1, 1, dtype=torch.float64)
    legacy = dataclasses.replace(SMALL_GRID, legacy_truncation=True)
    assert bev_pool(depth, features, BEVPoolIndex.from_geometry(geometry, SMALL_GRID)).abs().sum() == 0
    bev = bev_pool(depth, features, BEVPoolIndex.from_geometry(geometry, legacy), collapse_z=False)
    assert bev[0, :, 1, 1, 0].tolist() == [4.0, 4.0] and bev.sum() == 8.0


def test_geometry_outside_the_grid_gives_zeros_and_zero_gradients():
    geometry = torch.full((1, 2, 4, 2, 3, 3), 100.0, dtype=torch.float64)
    index = BEVPoolIndex.from_geometry(geometry, SMALL_GRID)
    depth = torch.rand(1, 2, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    features = torch.randn(1, 2, 5, 2, 3, dtype=torch.float64, requires_grad=True)
    bev = bev_pool(depth, features, index)
    bev.sum().backward()
    assert bev.shape == (1, 10, 3, 4) and not bev.any()
    assert not depth.grad.any() and not features.grad.any()


def test_bev_pool_rejects_inputs_that_do_not_match_the_index():
    index = BEVPoolIndex.from_geometry(torch.zeros(1, 2, 4, 2, 3, 3), SMALL_GRID)
    depth, features = torch.rand(1, 2, 4, 2, 3), torch.rand(1, 2, 5, 2, 3)
    with pytest.raises(ValueError, match="depth must have shape"):
        bev_pool(depth[:, :, :3], features, index)
    with pytest.raises(ValueError, match=r"features must have shape \(B, N, C, h, w\)"):
        bev_pool(depth, features[:, :1], index)
    with pytest.raises(ValueError, match="must both be float32 or both float64"):
        bev_pool(depth, features.double(), index)
    with pytest.raises(ValueError, match="must both be float32 or both float64"):
        bev_pool(depth.bfloat16(), features.bfloat16(), index)
    with pytest.raises(ValueError, match="3 depth bins but the grid has 4"):
        BEVPoolIndex.from_geometry(torch.zeros(1, 2, 3, 2, 3, 3), SMALL_GRID)
