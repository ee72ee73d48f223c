"""Pretraining batches in the LiDAR frame, checked against values computed straight from the devkit's tables and the
raw point files (never with the package's own transforms), and against the teacher's voxel grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pyquaternion import Quaternion

from geomim_hf import GeoMIMLidarTeacher, GeoMIMLidarTeacherConfig
from geomim_hf.data.image_processing_geomim import GeoMIMImageProcessor
from geomim_hf.data.nuscenes import load_nuscenes
from geomim_hf.data.nuscenes_constants import CAMERA_CHANNELS
from geomim_hf.data.pretraining_collate import PretrainingCollator, camera_vector
from geomim_hf.geometry import BEVGrid, BEVPoolIndex, bev_pool, create_frustum, depth_bin_targets, frustum_to_ego

BATCH_KEYS = {"pixel_values", "camera_intrinsics", "camera_to_lidar", "post_rot", "post_tran", "lidar_augmentation",
              "camera_vector", "points", "points_mask", "depth_targets", "sample_tokens"}


def collator(**kwargs) -> PretrainingCollator:
    return PretrainingCollator(GeoMIMImageProcessor.geomim_pretraining(size={"height": 128, "width": 352}), **kwargs)


@pytest.fixture(scope="module")
def examples(nuscenes_root, nuscenes_spec):
    return list(load_nuscenes(nuscenes_root, nuscenes_spec.version, "mini_train", num_sweeps=1))[:2]


@pytest.fixture(scope="module")
def multisweep_example(nuscenes_root, nuscenes_spec):
    """The second sample of a scene, the first with sweeps before it."""
    return list(load_nuscenes(nuscenes_root, nuscenes_spec.version, "mini_train", num_sweeps=3))[1]


def table_transform(record: dict) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = Quaternion(record["rotation"]).rotation_matrix
    matrix[:3, 3] = record["translation"]
    return matrix


def sensor_to_global(nusc, sample_data_token: str) -> np.ndarray:
    record = nusc.get("sample_data", sample_data_token)
    calibration = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
    return table_transform(nusc.get("ego_pose", record["ego_pose_token"])) @ table_transform(calibration)


def raw_points(nusc, sample_data_token: str) -> np.ndarray:
    """(P, 5) x, y, z, intensity, ring as stored in the .pcd.bin file, in the sensor frame."""
    path = Path(nusc.dataroot) / nusc.get("sample_data", sample_data_token)["filename"]
    return np.fromfile(path, dtype=np.float32).reshape(-1, 5)


def test_batch_has_exactly_the_pretraining_keys(examples):
    batch = collator(augment=True, generator=torch.Generator().manual_seed(0))(examples)
    assert set(batch) == BATCH_KEYS
    assert batch["pixel_values"].shape == (2, 6, 3, 128, 352) and batch["camera_vector"].shape == (2, 6, 22)
    assert batch["depth_targets"].shape == (2, 6, 8, 22) and batch["points"].shape[-1] == 5
    assert batch["sample_tokens"] == [example["sample_token"] for example in examples]


@pytest.mark.parametrize("augment", [False, True])
def test_cameras_and_points_are_in_the_lidar_frame_of_the_devkit_tables(nusc, examples, augment):
    batch = collator(augment=augment, generator=torch.Generator().manual_seed(1))(examples)
    for b, example in enumerate(examples):
        sample = nusc.get("sample", example["sample_token"])
        lidar_token = sample["data"]["LIDAR_TOP"]
        global_to_lidar = np.linalg.inv(sensor_to_global(nusc, lidar_token))
        for n, channel in enumerate(CAMERA_CHANNELS):
            expected = global_to_lidar @ sensor_to_global(nusc, sample["data"][channel])
            np.testing.assert_allclose(batch["camera_to_lidar"][b, n].numpy(), expected, atol=2e-5)

        flip = batch["lidar_augmentation"][b].numpy()
        assert np.allclose(np.abs(np.diag(flip)), 1.0) and np.allclose(flip, np.diag(np.diag(flip)))  # flips only
        raw = raw_points(nusc, lidar_token)
        count = int(batch["points_mask"][b].sum())
        assert count == len(raw)
        points = batch["points"][b, :count].numpy()
        np.testing.assert_allclose(points[:, :3], raw[:, :3] @ flip[:3, :3].T, atol=1e-4)
        np.testing.assert_array_equal(points[:, 3], raw[:, 3])  # intensity; the ring index is dropped
        assert not points[:, 4].any()  # the key frame's time lag
    if augment:  # the seed draws at least one flip, or the check above proves nothing about it
        assert (torch.diagonal(batch["lidar_augmentation"], dim1=1, dim2=2) < 0).any()


def test_sweeps_carry_their_time_lag_and_land_in_the_key_lidar_frame(nusc, multisweep_example):
    batch = collator()([multisweep_example])
    points = batch["points"][0, batch["points_mask"][0]].numpy()
    sample = nusc.get("sample", multisweep_example["sample_token"])
    key = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    global_to_lidar = np.linalg.inv(sensor_to_global(nusc, key["token"]))
    sweep, lags = key, []
    while len(lags) < 3:
        lag = (key["timestamp"] - sweep["timestamp"]) * 1e-6
        raw = raw_points(nusc, sweep["token"])
        raw = raw[~((np.abs(raw[:, 0]) < 1.0) & (np.abs(raw[:, 1]) < 1.0))]  # the devkit drops returns within 1 m
        transform = global_to_lidar @ sensor_to_global(nusc, sweep["token"])
        in_sweep = np.abs(points[:, 4] - lag) < 1e-6
        np.testing.assert_allclose(points[in_sweep, :3], raw[:, :3] @ transform[:3, :3].T + transform[:3, 3],
                                   atol=2e-4)
        np.testing.assert_array_equal(points[in_sweep, 3], raw[:, 3])
        lags.append(lag)
        sweep = nusc.get("sample_data", sweep["prev"])
    assert lags[0] == 0 and lags[1] == pytest.approx(0.05) and lags[2] == pytest.approx(0.1)
    assert sum((np.abs(points[:, 4] - lag) < 1e-6).sum() for lag in lags) == len(points)


def test_camera_vector_uses_the_static_calibration(nusc, examples):
    batch = collator(augment=True, generator=torch.Generator().manual_seed(2))(examples)
    for b, example in enumerate(examples):
        sample = nusc.get("sample", example["sample_token"])
        for n, channel in enumerate(CAMERA_CHANNELS):
            record = nusc.get("sample_data", sample["data"][channel])
            calibration = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
            (fx, _, cx), (_, fy, cy), _ = calibration["camera_intrinsic"]
            rot, tran = batch["post_rot"][b, n].numpy(), batch["post_tran"][b, n].numpy()
            expected = [fx, fy, cx, cy, rot[0, 0], rot[0, 1], tran[0], rot[1, 0], rot[1, 1], tran[1],
                        *table_transform(calibration)[:3].ravel()]
            np.testing.assert_allclose(batch["camera_vector"][b, n].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_depth_targets_match_a_per_point_projection_in_the_lidar_frame(nusc, examples):
    batch = collator(augment=True, generator=torch.Generator().manual_seed(3))(examples)
    targets = batch["depth_targets"].numpy()
    expected = np.zeros_like(targets)
    for b, example in enumerate(examples):
        sample = nusc.get("sample", example["sample_token"])
        lidar_to_global = sensor_to_global(nusc, sample["data"]["LIDAR_TOP"])
        for n, channel in enumerate(CAMERA_CHANNELS):
            lidar_to_camera = np.linalg.inv(sensor_to_global(nusc, sample["data"][channel])) @ lidar_to_global
            intrinsics = np.asarray(example["camera_intrinsics"][n], dtype=np.float64)
            rot, tran = batch["post_rot"][b, n].double().numpy(), batch["post_tran"][b, n].double().numpy()
            for point in raw_points(nusc, sample["data"]["LIDAR_TOP"])[:, :3].astype(np.float64):
                camera = lidar_to_camera[:3, :3] @ point + lidar_to_camera[:3, 3]
                if camera[2] <= 0:
                    continue
                u, v, _ = rot @ (intrinsics @ camera / camera[2]) + tran
                if 0 <= u < 352 and 0 <= v < 128:
                    cell = (b, n, int(v // 16), int(u // 16))
                    expected[cell] = camera[2] if expected[cell] == 0 else min(expected[cell], camera[2])
    assert (expected > 0).sum() > 100
    np.testing.assert_allclose(targets, expected, rtol=1e-4, atol=1e-4)


def test_lifted_camera_depth_lands_on_the_teachers_voxels_in_its_xy_layout(examples):
    """Cameras and points share one frame, flips included: lifting each camera's depth targets with the batch's
    geometry puts the mass on the (X, Y) columns where the teacher's voxeliser found points. Only what stands above
    the road counts: the ground's rings look alike under any mirror or transposition."""
    batch = collator(augment=True, depth_downsample=4, generator=torch.Generator().manual_seed(4))(examples)
    config = GeoMIMLidarTeacherConfig.from_preset("small_grid")
    above_road = -1.4  # metres in the LiDAR frame, whose origin is 1.84 m above the road
    voxels = GeoMIMLidarTeacher(config).voxelize(batch["points"], batch["points_mask"])
    batch_index, x_index, y_index, z_index = voxels.coordinates.long().unbind(1)
    raised = config.point_cloud_range[2] + z_index * config.voxel_size[2] >= above_road
    occupied = torch.zeros(2, *config.grid_size[:2])
    occupied[batch_index[raised], x_index[raised], y_index[raised]] = 1.0
    near_points = torch.nn.functional.max_pool2d(occupied[:, None], 3, stride=1, padding=1)[:, 0]

    (x_min, y_min, _, x_max, y_max, z_max), (x_step, y_step, _) = config.point_cloud_range, config.voxel_size
    grid = BEVGrid(x=(x_min, x_max, x_step), y=(y_min, y_max, y_step), z=(above_road, z_max, z_max - above_road),
                   depth=(1.0, 60.0, 0.25))
    one_hot = depth_bin_targets(batch["depth_targets"], grid)
    geometry = frustum_to_ego(create_frustum((128, 352), stride=4, grid=grid), batch["camera_intrinsics"],
                              batch["camera_to_lidar"], batch["post_rot"], batch["post_tran"],
                              batch["lidar_augmentation"])
    features = torch.ones(*one_hot.shape[:2], 1, *one_hot.shape[-2:])
    lifted = bev_pool(one_hot, features, BEVPoolIndex.from_geometry(geometry, grid))[:, 0]  # (B, Y, X)
    lifted_xy = lifted.transpose(1, 2)  # bev_pool's (Y, X) -> the teacher's (X, Y)
    for b in range(2):
        assert lifted_xy[b].sum() > 300
        assert (lifted_xy[b] * near_points[b]).sum() / lifted_xy[b].sum() > 0.95  # measured 0.995
        assert (lifted[b] * near_points[b]).sum() / lifted[b].sum() < 0.3  # left in (Y, X) it misses (0.15)


def test_camera_vector_layout_hand_computed():
    intrinsics = torch.tensor([[1266.4, 0.0, 816.3], [0.0, 1265.0, 491.5], [0.0, 0.0, 1.0]])
    camera_to_ego = torch.tensor([[0.0, 0.0, 1.0, 1.7], [-1.0, 0.0, 0.0, 0.016], [0.0, -1.0, 0.0, 1.51],
                                  [0.0, 0.0, 0.0, 1.0]])
    post_rot = torch.tensor([[0.43, 0.02, 0.0], [-0.03, 0.44, 0.0], [0.0, 0.0, 1.0]])
    post_tran = torch.tensor([-12.0, -140.0, 0.0])
    expected = torch.tensor([1266.4, 1265.0, 816.3, 491.5, 0.43, 0.02, -12.0, -0.03, 0.44, -140.0,
                             0.0, 0.0, 1.0, 1.7, -1.0, 0.0, 0.0, 0.016, 0.0, -1.0, 0.0, 1.51])
    torch.testing.assert_close(camera_vector(intrinsics, camera_to_ego, post_rot, post_tran), expected)
    batched = camera_vector(*(tensor.expand(2, 6, *tensor.shape) for tensor in
                              (intrinsics, camera_to_ego, post_rot, post_tran)))
    assert batched.shape == (2, 6, 22)
