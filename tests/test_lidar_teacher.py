"""GeoMIMLidarTeacher: config and BEV layout, hard voxelisation against a per-point loop, the sparse network against a
dense F.conv3d evaluation, CPU threading, and the save/reload round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sparse_encoder_reference import bevfusion_state_dict, dense_reference_bev, voxelize_loop
from transformers import AutoConfig

from geomim_hf import GeoMIMLidarTeacher, GeoMIMLidarTeacherConfig
from geomim_hf.models.lidar_teacher.conversion_lidar_teacher import convert_lidar_teacher_checkpoint

# A 32 x 24 x 40 grid (x and y differ, so a transposed map cannot pass) with bevfusion's z range, strides and paddings:
# the encoder output is 4 x 3 cells with 2 z-slices.
TINY_GRID = dict(point_cloud_range=[-4.8, -3.6, -5.0, 4.8, 3.6, 3.0], voxel_size=[0.3, 0.3, 0.2])
TINY_CHANNELS = dict(in_channels=5, base_channels=4, encoder_channels=[[4, 4, 8], [8, 8, 12], [12, 12, 16], [16, 16]],
                     output_channels=6)


def random_points(generator: np.random.Generator, count: int, grid=TINY_GRID) -> np.ndarray:
    """Points filling the grid unevenly: spread out, in dense clusters (several points per voxel), some outside."""
    low, high = np.asarray(grid["point_cloud_range"][:3]), np.asarray(grid["point_cloud_range"][3:])
    spread = generator.uniform(low - 0.5, high + 0.5, size=(count // 2, 3))
    centres = generator.uniform(low, high, size=(8, 3))
    clusters = centres[generator.integers(0, 8, count - count // 2)] + generator.normal(0, 0.1, (count - count // 2, 3))
    xyz = np.concatenate([spread, clusters])
    extra = np.stack([generator.uniform(0, 255, count), generator.choice([0.0, 0.05, 0.1], count)], axis=1)
    return generator.permutation(np.concatenate([xyz, extra], axis=1)).astype(np.float32)


def test_default_config_is_bevfusion_transfusion_l():
    config = GeoMIMLidarTeacherConfig()
    assert config.grid_size == [1440, 1440, 40] and config.sparse_shape == [1440, 1440, 41]
    assert config.output_sparse_shape == [180, 180, 2] and config.bev_shape == (256, 180, 180)
    assert config.max_num_points == 10 and config.max_voxels == 160000 and config.batch_norm_eps == 1e-3
    assert config.encoder_paddings == [[0, 0, 1], [0, 0, 1], [0, 0, [1, 1, 0]], [0, 0]]
    assert GeoMIMLidarTeacherConfig.from_preset("small_grid").bev_shape == (128, 45, 45)


def test_config_rejects_bad_grids_and_channel_changes_inside_a_stage():
    with pytest.raises(ValueError, match="whole number"):
        GeoMIMLidarTeacherConfig(voxel_size=[0.07, 0.075, 0.2])
    with pytest.raises(ValueError, match="too small"):
        GeoMIMLidarTeacherConfig(point_cloud_range=[-54, -54, -1, 54, 54, 1])
    with pytest.raises(ValueError, match="residual block keeps its 16 input channels"):
        GeoMIMLidarTeacherConfig(encoder_channels=[[16, 24, 32], [32, 32, 64], [64, 64, 128], [128, 128]])


def test_config_round_trips_through_auto_config(tmp_path):
    GeoMIMLidarTeacherConfig.from_preset("small_grid", max_voxels=1234).save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, GeoMIMLidarTeacherConfig)
    expected = GeoMIMLidarTeacherConfig.from_preset("small_grid", max_voxels=1234).to_dict()
    assert {**reloaded.to_dict(), "_name_or_path": ""} == expected


@pytest.mark.parametrize("max_points, max_voxels", [(10, 100000), (3, 60)])
def test_hard_voxelization_matches_a_per_point_loop(max_points, max_voxels):
    generator = np.random.default_rng(0)
    config = GeoMIMLidarTeacherConfig(**TINY_GRID, **TINY_CHANNELS, max_num_points=max_points, max_voxels=max_voxels)
    samples = [random_points(generator, 3000), random_points(generator, 1800)]
    samples[0][5, 1] = np.nan  # a broken return is outside, not voxel floor(NaN)
    points = torch.zeros(2, 3000, 5)
    mask = torch.zeros(2, 3000, dtype=torch.bool)
    for index, sample in enumerate(samples):
        points[index, : len(sample)], mask[index, : len(sample)] = torch.from_numpy(sample), True
    points[1, 1800:] = 1.0  # padding inside the grid: only the mask keeps it out

    voxels = GeoMIMLidarTeacher(config).voxelize(points, mask)
    for index, sample in enumerate(samples):
        features, cells, counts = voxelize_loop(sample, config.point_cloud_range, config.voxel_size,
                                                config.grid_size, max_points, max_voxels)
        in_sample = voxels.coordinates[:, 0] == index
        np.testing.assert_array_equal(voxels.coordinates[in_sample, 1:].numpy(), cells)
        np.testing.assert_array_equal(voxels.num_points[in_sample].numpy(), counts)
        np.testing.assert_allclose(voxels.features[in_sample].numpy(), features, rtol=1e-6, atol=1e-5)
        assert counts.max() == max_points  # the clusters hit the per-voxel limit
        if max_voxels < 1000:
            assert len(cells) == max_voxels  # and the voxel limit cut the sample


def test_no_point_in_range_gives_an_empty_bev():
    config = GeoMIMLidarTeacherConfig(**TINY_GRID, **TINY_CHANNELS)
    outputs = GeoMIMLidarTeacher(config).eval()(torch.full((1, 4, 5), 100.0))
    assert outputs.bev_features.shape == (1, 12, 4, 3) and not outputs.bev_features.any()


@pytest.fixture(scope="module")
def tiny_checkpoint_state() -> dict[str, torch.Tensor]:
    return bevfusion_state_dict(**TINY_CHANNELS, seed=0)


def test_sparse_encoder_matches_a_dense_conv3d_evaluation(tiny_checkpoint_state):
    """The converted teacher and a dense evaluation of the original network, on two samples, with the caller running
    two torch threads (spconv's CPU kernels are only right with one: the teacher must switch and switch back)."""
    teacher, _ = convert_lidar_teacher_checkpoint(tiny_checkpoint_state, **TINY_GRID)
    generator = np.random.default_rng(1)
    points = torch.from_numpy(np.stack([random_points(generator, 2500), random_points(generator, 2500)]))

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            outputs = teacher(points)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)

    reference = dense_reference_bev(tiny_checkpoint_state, teacher.config, points)  # its own voxelisation too
    assert outputs.bev_features.shape == reference.shape == (2, 12, 4, 3)
    assert (reference != 0).float().mean() > 0.3  # ReLU leaves about half of the active outputs non-zero
    torch.testing.assert_close(outputs.bev_features.double(), reference, rtol=1e-4, atol=1e-5)


def test_random_initialisation_is_he_scaled_and_seeded():
    torch.manual_seed(0)
    first = GeoMIMLidarTeacher(GeoMIMLidarTeacherConfig.from_preset("small_grid"))
    torch.manual_seed(0)
    second = GeoMIMLidarTeacher(GeoMIMLidarTeacherConfig.from_preset("small_grid"))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    weight = first.encoder.stages[1].blocks[0].conv_layer1.convolution.weight  # (16, 3, 3, 3, 16)
    assert abs(weight.std().item() - (2 / (27 * 16)) ** 0.5) < 0.01
