"""The data layer's coordinate frames against the nuScenes devkit itself.

Every expected value here is computed in the test straight from the devkit's tables (``sample_data``,
``calibrated_sensor``, ``ego_pose``) with pyquaternion, or with the devkit's own point cloud, box and projection code;
never with the package's transform helpers. The synthetic set fires each camera at its own time while the ego drives
on an arc, so a pose taken from the wrong sensor or a chain composed the wrong way round is off by centimetres to
metres, far above the tolerances used.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import view_points
from PIL import Image
from pyquaternion import Quaternion
from transformers import AutoImageProcessor

from geomim_hf.data.collate import NuScenesCollator
from geomim_hf.data.image_processing_geomim import GeoMIMImageProcessor
from geomim_hf.data.nuscenes import load_nuscenes
from geomim_hf.data.nuscenes_constants import CAMERA_CHANNELS
from mmdet_swin_reference import MMDetGeoMIMSwin
from test_convert_geomim_swin import load_script

LIDAR = "LIDAR_TOP"
# The loader's images are 352 x 128; at half size with no crop, output pixel = source pixel / 2.
HALF_SIZE = {"height": 64, "width": 176}


# ---------------------------------------------------------------------------------------------------------------------
# Devkit-side helpers: 4x4 matrices from table rows, nothing else.


def record_matrix(record: dict) -> np.ndarray:
    """(4, 4) float64 of a ``calibrated_sensor`` (sensor -> ego) or ``ego_pose`` (ego -> global) row."""
    matrix = np.eye(4)
    matrix[:3, :3] = Quaternion(record["rotation"]).rotation_matrix
    matrix[:3, 3] = record["translation"]
    return matrix


def sensor_rows(nusc, sample_data_token: str) -> tuple[dict, dict, dict]:
    """(sample_data, calibrated_sensor, ego_pose) rows of one sensor reading."""
    record = nusc.get("sample_data", sample_data_token)
    return (record, nusc.get("calibrated_sensor", record["calibrated_sensor_token"]),
            nusc.get("ego_pose", record["ego_pose_token"]))


def key_ego_pose(nusc, sample: dict) -> dict:
    """The ``ego_pose`` row of the sample's LIDAR_TOP key frame."""
    return sensor_rows(nusc, sample["data"][LIDAR])[2]


def camera_to_key_ego_from_tables(nusc, camera_sample: dict, key_sample: dict, channel: str) -> np.ndarray:
    """(4, 4) camera of ``camera_sample`` -> ego frame of ``key_sample``'s LiDAR key frame:
    inv(key LiDAR ego pose) @ camera ego pose @ camera calibration."""
    _, calibration, pose = sensor_rows(nusc, camera_sample["data"][channel])
    return np.linalg.inv(record_matrix(key_ego_pose(nusc, key_sample))) @ record_matrix(pose) @ \
        record_matrix(calibration)


def lidar_file_points(nusc, sample_data_token: str) -> LidarPointCloud:
    record = nusc.get("sample_data", sample_data_token)
    return LidarPointCloud.from_file(os.path.join(nusc.dataroot, record["filename"]))


def transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(3, P) points moved by a (4, 4) matrix, in float64."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return matrix[:3, :3] @ np.asarray(points, dtype=np.float64) + matrix[:3, 3:]


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def key_examples(nuscenes_root, nuscenes_spec):
    """The four samples of the mini_train scene, key sweep only."""
    return list(load_nuscenes(nuscenes_root, nuscenes_spec.version, "mini_train", num_sweeps=1))


@pytest.fixture(scope="module")
def temporal_examples(nuscenes_root, nuscenes_spec):
    return list(load_nuscenes(nuscenes_root, nuscenes_spec.version, "mini_train", num_sweeps=1, previous_frames=1))


def half_size_processor(**overrides) -> GeoMIMImageProcessor:
    return GeoMIMImageProcessor.bevdet_finetuning(size=HALF_SIZE, **overrides)


# ---------------------------------------------------------------------------------------------------------------------
# 1. LiDAR points in the key ego frame


def test_key_sweep_is_the_lidar_file_moved_by_the_lidar_calibration(nusc, key_examples):
    for example in key_examples:
        sample = nusc.get("sample", example["sample_token"])
        _, calibration, _ = sensor_rows(nusc, sample["data"][LIDAR])
        rotation = Quaternion(calibration["rotation"]).rotation_matrix
        # The LiDAR is mounted at -90 degrees yaw: its rotation and the transpose disagree by metres at range.
        assert np.abs(rotation - rotation.T).max() > 1.0
        cloud = lidar_file_points(nusc, sample["data"][LIDAR])
        cloud.rotate(rotation)
        cloud.translate(np.array(calibration["translation"]))

        points = np.asarray(example["points"])
        assert points.shape == (cloud.nbr_points(), 5)
        np.testing.assert_allclose(points[:, :3], cloud.points[:3].T, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(points[:, 3], cloud.points[3])  # intensity
        assert not points[:, 4].any()  # time lag: all key sweep


def test_earlier_sweeps_are_motion_compensated_into_the_key_ego_frame(nusc, nuscenes_root, nuscenes_spec):
    """With two sweeps: the key sweep as above, the sweep before it moved by its own calibration and ego pose to the
    global frame and back with the key frame's pose, with its time lag in seconds."""
    examples = list(load_nuscenes(nuscenes_root, nuscenes_spec.version, "mini_train", num_sweeps=2))
    example = examples[1]  # the first sample of a scene has no sweeps before it
    sample = nusc.get("sample", example["sample_token"])
    key_record, key_calibration, key_pose = sensor_rows(nusc, sample["data"][LIDAR])
    sweep_record, sweep_calibration, sweep_pose = sensor_rows(nusc, key_record["prev"])
    assert not sweep_record["is_key_frame"]

    points = np.asarray(example["points"])
    key_sweep = points[:, 4] == 0
    # The devkit subtracts timestamps in seconds since 1970, in float64: about 2e-7 s of rounding.
    expected_lag = (key_record["timestamp"] - sweep_record["timestamp"]) * 1e-6
    np.testing.assert_allclose(points[~key_sweep, 4], expected_lag, rtol=0, atol=1e-6)
    sweep_to_key_ego = (np.linalg.inv(record_matrix(key_pose)) @ record_matrix(sweep_pose)
                        @ record_matrix(sweep_calibration))
    for selected, record, to_key_ego in ((key_sweep, key_record, record_matrix(key_calibration)),
                                         (~key_sweep, sweep_record, sweep_to_key_ego)):
        cloud = lidar_file_points(nusc, record["token"])
        near_sensor = (np.abs(cloud.points[0]) < 1.0) & (np.abs(cloud.points[1]) < 1.0)  # the devkit drops these
        expected = transform(to_key_ego, cloud.points[:3, ~near_sensor]).T
        np.testing.assert_allclose(points[selected, :3], expected, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# 2. ego_to_global


def test_ego_to_global_is_the_lidar_key_frame_pose_per_example_and_in_the_batch(nusc, key_examples):
    expected = []
    for example in key_examples:
        sample = nusc.get("sample", example["sample_token"])
        lidar_pose = record_matrix(key_ego_pose(nusc, sample))
        camera_poses = [record_matrix(sensor_rows(nusc, sample["data"][channel])[2]) for channel in CAMERA_CHANNELS]
        # Cameras fire at other times than the LiDAR, so a camera's pose would be off by centimetres.
        assert max(np.abs(pose - lidar_pose).max() for pose in camera_poses) > 0.02
        np.testing.assert_allclose(example["ego_to_global"], lidar_pose, rtol=0, atol=1e-9)
        expected.append(lidar_pose)

    batch = NuScenesCollator(half_size_processor(), depth_downsample=None)(key_examples)
    assert batch["ego_to_global"].dtype == torch.float64
    np.testing.assert_allclose(batch["ego_to_global"].numpy(), np.stack(expected), rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------------------------------
# 3. Cameras -> key ego


def test_camera_to_key_ego_is_the_devkit_chain_and_moves_devkit_camera_boxes_onto_key_ego_boxes(nusc, key_examples):
    batch = NuScenesCollator(half_size_processor(), depth_downsample=None)(key_examples)
    boxes_checked = 0
    for b, example in enumerate(key_examples):
        sample = nusc.get("sample", example["sample_token"])
        key_pose = key_ego_pose(nusc, sample)
        for n, channel in enumerate(CAMERA_CHANNELS):
            expected = camera_to_key_ego_from_tables(nusc, sample, sample, channel)
            actual = batch["camera_to_ego"][b, n].double().numpy()
            np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)

            # The devkit's boxes in this camera's frame (at the camera's own time), moved by the batch's transform,
            # must be the annotation boxes in the key ego frame.
            _, camera_boxes, _ = nusc.get_sample_data(sample["data"][channel])
            for camera_box in camera_boxes:
                key_box = nusc.get_box(camera_box.token)
                key_box.translate(-np.array(key_pose["translation"]))
                key_box.rotate(Quaternion(key_pose["rotation"]).inverse)
                np.testing.assert_allclose(transform(actual, camera_box.corners()), key_box.corners(),
                                           rtol=0, atol=1e-4)
                boxes_checked += 1
    assert boxes_checked >= 20


# ---------------------------------------------------------------------------------------------------------------------
# 4. The previous frame of BEVDet4D


def test_previous_camera_to_ego_goes_from_the_previous_samples_cameras_to_the_current_key_ego(nusc, temporal_examples):
    batch = NuScenesCollator(half_size_processor(), previous_frames=1, depth_downsample=None)(temporal_examples)
    assert batch["previous_valid"].tolist() == [False, True, True, True]
    for b, example in enumerate(temporal_examples):
        sample = nusc.get("sample", example["sample_token"])
        previous = nusc.get("sample", sample["prev"]) if sample["prev"] else sample
        for n, channel in enumerate(CAMERA_CHANNELS):
            expected = camera_to_key_ego_from_tables(nusc, previous, sample, channel)
            actual = batch["previous_camera_to_ego"][b, n].double().numpy()
            np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)
            if sample["prev"]:  # half a second of driving apart
                assert np.abs(actual - batch["camera_to_ego"][b, n].double().numpy()).max() > 0.5
        if b == 0:  # the first sample of the scene is its own previous frame
            assert not sample["prev"]
            assert torch.equal(batch["previous_pixel_values"][b], batch["pixel_values"][b])
        else:  # the images of the sample before, which is the example before (evaluation: the same augmentation)
            assert sample["prev"] == temporal_examples[b - 1]["sample_token"]
            assert torch.equal(batch["previous_pixel_values"][b], batch["pixel_values"][b - 1])


def test_previous_frame_shares_the_key_frames_random_augmentation(temporal_examples):
    processor = half_size_processor()
    calls = []
    preprocess = processor.preprocess

    def recording_preprocess(*args, **kwargs):
        calls.append(preprocess(*args, **kwargs))
        return calls[-1]

    processor.preprocess = recording_preprocess
    collator = NuScenesCollator(processor, augment=True, previous_frames=1, depth_downsample=None,
                                generator=torch.Generator().manual_seed(11))
    batch = collator(temporal_examples[:2])
    key, previous = calls
    # Random draws: the six cameras got different augmentations, and the BEV augmentation is not the identity.
    assert len({tuple(row.tolist()) for row in key["post_tran"].flatten(0, 1)}) == 12
    assert not torch.allclose(key["bev_augmentation"], torch.eye(4).expand(2, 4, 4))
    for name in ("post_rot", "post_tran", "bev_augmentation"):
        torch.testing.assert_close(previous[name], key[name], rtol=0, atol=0)
    torch.testing.assert_close(batch["bev_augmentation"], key["bev_augmentation"], rtol=0, atol=0)
    # At the start of the scene the previous frame is the key frame, augmented the same way: identical pixels.
    assert not batch["previous_valid"][0]
    assert torch.equal(batch["previous_pixel_values"][0], batch["pixel_values"][0])
    assert not torch.equal(batch["previous_pixel_values"][1], batch["pixel_values"][1])


# ---------------------------------------------------------------------------------------------------------------------
# 5. Depth targets: the key sweep, in the depth range


def test_depth_targets_take_the_key_sweep_in_the_depth_range(nusc, key_examples):
    """Points placed on two pixel rays of CAM_FRONT at chosen depths, in the key ego frame (from the tables):
    ray 1: 10 m key sweep, 5 m earlier sweep, 0.5 m key sweep (too near); ray 2: 20 m earlier sweep, 70 m key sweep
    (too far)."""
    camera = CAMERA_CHANNELS.index("CAM_FRONT")
    example = dict(key_examples[0])
    sample = nusc.get("sample", example["sample_token"])
    _, calibration, _ = sensor_rows(nusc, sample["data"]["CAM_FRONT"])
    to_key_ego = camera_to_key_ego_from_tables(nusc, sample, sample, "CAM_FRONT")
    rays = np.linalg.inv(np.array(calibration["camera_intrinsic"])) @ np.array([[100.0, 250.0], [80.0, 80.0],
                                                                                [1.0, 1.0]])
    placed = [(0, 10.0, 0.0), (0, 5.0, 0.05), (0, 0.5, 0.0), (1, 20.0, 0.05), (1, 70.0, 0.0)]  # ray, depth, lag
    points = [[*transform(to_key_ego, rays[:, ray:ray + 1] * depth)[:, 0], 1.0, lag] for ray, depth, lag in placed]
    example["points"] = np.asarray(points, dtype=np.float32)
    # Half size, no crop: source pixels (100, 80) and (250, 80) land at (50, 40) and (125, 40), 16-pixel patches
    # (row 2, column 3) and (row 2, column 7).
    patches = [(2, 3), (2, 7)]

    for all_sweeps, depth_range, depths in ((False, None, (0.5, 70.0)), (False, (1.0, 60.0), (10.0, 0.0)),
                                            (True, None, (0.5, 20.0)), (True, (1.0, 60.0), (5.0, 20.0))):
        batch = NuScenesCollator(half_size_processor(), depth_downsample=16, depth_from_all_sweeps=all_sweeps,
                                 depth_range=depth_range)([example])
        torch.testing.assert_close(batch["post_rot"][0, camera], torch.diag(torch.tensor([0.5, 0.5, 1.0])))
        assert not batch["post_tran"][0, camera].any()
        expected = np.zeros((64 // 16, 176 // 16))
        for (row, column), depth in zip(patches, depths):
            expected[row, column] = depth
        np.testing.assert_allclose(batch["depth_targets"][0, camera].numpy(), expected, rtol=0, atol=1e-4,
                                   err_msg=f"depth_from_all_sweeps={all_sweeps}, depth_range={depth_range}")


# ---------------------------------------------------------------------------------------------------------------------
# 6. The converter's processor


@pytest.mark.parametrize("prefix, channel_order", [("img_backbone.", "bgr"), ("encoders.camera.backbone.", "rgb")])
def test_converter_saves_bevdets_bgr_processor_for_a_bevdet_backbone_and_rgb_for_pretraining(
    prefix, channel_order, tmp_path
):
    torch.manual_seed(0)
    encoder = MMDetGeoMIMSwin(embed_dim=16, depths=(2, 2, 2, 2), heads=(1, 2, 2, 4)).state_dict()
    state_dict = {prefix + key: value for key, value in encoder.items()}
    if prefix == "img_backbone.":  # the rest of a finetuned BEVDet detector
        state_dict |= {"img_neck.conv.weight": torch.zeros(1), "pts_bbox_head.task_heads.0.reg.bias": torch.zeros(1)}
    torch.save({"state_dict": state_dict, "meta": {}}, tmp_path / "checkpoint.pth")
    load_script().main(["--checkpoint", str(tmp_path / "checkpoint.pth"), "--output_dir", str(tmp_path / "out")])

    processor = AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert isinstance(processor, GeoMIMImageProcessor)
    assert processor.channel_order == channel_order
    # BEVDet finetuning's BDA (rotation +-22.5 degrees, detection.md 1) against GeoMIM pretraining's (none).
    assert tuple(processor.bev_rotation_range_deg) == ((-22.5, 22.5) if channel_order == "bgr" else (0.0, 0.0))


# ---------------------------------------------------------------------------------------------------------------------
# 7. A bottom crop in evaluation


def test_evaluation_bottom_crop_puts_devkit_projections_where_the_hand_computed_crop_says(nusc, key_examples):
    # Source 352 x 128 -> resize 1.25 x 176 / 352 = 0.625 -> 220 x 80; crop 176 x 48 centred horizontally,
    # 10 % of the rows cut at the bottom: left = int(44 / 2) = 22, top = int(0.9 * 80) - 48 = 24.
    scale, crop_left, crop_top = 0.625, 22, 24
    processor = GeoMIMImageProcessor(size={"height": 48, "width": 176}, test_resize=1.25,
                                     bottom_crop_range=(0.1, 0.1))
    camera = CAMERA_CHANNELS.index("CAM_FRONT")
    example = dict(key_examples[1])
    sample = nusc.get("sample", example["sample_token"])

    # The devkit's projection of the key sweep into CAM_FRONT (map_pointcloud_to_image's chain), then the crop.
    _, lidar_calibration, lidar_pose = sensor_rows(nusc, sample["data"][LIDAR])
    camera_record, camera_calibration, camera_pose = sensor_rows(nusc, sample["data"]["CAM_FRONT"])
    cloud = lidar_file_points(nusc, sample["data"][LIDAR])
    for step in (lidar_calibration, lidar_pose):
        cloud.rotate(Quaternion(step["rotation"]).rotation_matrix)
        cloud.translate(np.array(step["translation"]))
    for step in (camera_pose, camera_calibration):
        cloud.translate(-np.array(step["translation"]))
        cloud.rotate(Quaternion(step["rotation"]).rotation_matrix.T)
    depth = cloud.points[2]
    source_pixels = view_points(cloud.points[:3], np.array(camera_calibration["camera_intrinsic"]), normalize=True)
    u, v = scale * source_pixels[0] - crop_left, scale * source_pixels[1] - crop_top
    # Points well inside pixels (so float32 rounding cannot move them), one per pixel.
    inside = (depth > 1.0) & (u >= 0) & (u < 176) & (v >= 0) & (v < 48)
    inside &= (np.abs(u - np.floor(u) - 0.5) < 0.4) & (np.abs(v - np.floor(v) - 0.5) < 0.4)
    chosen = {}
    for index in np.flatnonzero(inside):
        chosen.setdefault((int(v[index]), int(u[index])), index)
    assert len(chosen) > 50
    expected = np.zeros((48, 176))
    for (row, column), index in chosen.items():
        expected[row, column] = depth[index]
    example["points"] = np.asarray(example["points"])[list(chosen.values())]  # same order as the file (test 1)

    batch = NuScenesCollator(processor, depth_downsample=1)([example])
    post_rot = batch["post_rot"][0].numpy()
    np.testing.assert_allclose(post_rot, np.broadcast_to(np.diag([scale, scale, 1.0]), post_rot.shape), atol=1e-6)
    np.testing.assert_allclose(batch["post_tran"][0].numpy(),
                               np.broadcast_to([-crop_left, -crop_top, 0.0], (6, 3)), atol=1e-5)
    np.testing.assert_allclose(batch["depth_targets"][0, camera].numpy(), expected, rtol=0, atol=1e-4)

    # The pixels are those of the resized image cropped by hand (PIL: resize, then crop). The processor resamples
    # only the cropped box, which moves PIL's 8-bit rounding between its two passes (1-2 levels on ~0.4 % of the
    # pixels here; in float mode the two agree to 0.002 levels); a crop one pixel off differs on most pixels.
    with Image.open(os.path.join(nusc.dataroot, camera_record["filename"])) as image:
        resized = image.convert("RGB").resize((220, 80), Image.Resampling.BICUBIC)
    cropped = np.asarray(resized.crop((crop_left, crop_top, crop_left + 176, crop_top + 48)), dtype=np.float64)
    mean, std = np.array(processor.image_mean), np.array(processor.image_std)
    pixels = (batch["pixel_values"][0, camera].permute(1, 2, 0).double().numpy() * std + mean) * 255.0
    difference = np.abs(pixels - cropped)
    assert difference.max() < 2.01 and (difference > 0.01).mean() < 0.01
