"""The streaming nuScenes loader against the devkit, its errors, and exactly-once sharding across ranks and workers."""

from __future__ import annotations

import collections
import dataclasses
import logging
import shutil

import numpy as np
import pytest
import torch
from pyquaternion import Quaternion

from geomim_hf.data.errors import DataError
from geomim_hf.data.nuscenes import load_nuscenes, nuscenes_database, split_by_node
from geomim_hf.data.nuscenes_constants import CAMERA_CHANNELS, CATEGORY_TO_DETECTION_CLASS, LIDAR_CHANNEL
from geomim_hf.data.synthetic import generate_nuscenes


def _load(root, spec, **kwargs):
    return load_nuscenes(root, version=spec.version, **{"split": "mini_train", **kwargs})


def _matrix(record: dict) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = Quaternion(record["rotation"]).rotation_matrix
    matrix[:3, 3] = record["translation"]
    return matrix


def test_examples_match_the_devkit(nusc, nuscenes_root, nuscenes_spec):
    num_sweeps = 3
    examples = list(_load(nuscenes_root, nuscenes_spec, split="mini_train", num_sweeps=num_sweeps)) + list(
        _load(nuscenes_root, nuscenes_spec, split="mini_val", num_sweeps=num_sweeps))
    assert len(examples) == len(nusc.sample)
    for example in examples:
        sample = nusc.get("sample", example["sample_token"])
        for index, channel in enumerate(CAMERA_CHANNELS):
            record = nusc.get("sample_data", sample["data"][channel])
            calibration = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
            np.testing.assert_allclose(example["camera_intrinsics"][index], calibration["camera_intrinsic"], rtol=1e-6)
            np.testing.assert_allclose(example["camera_to_ego"][index], _matrix(calibration), atol=1e-6)
            np.testing.assert_allclose(example["camera_ego_to_global"][index],
                                       _matrix(nusc.get("ego_pose", record["ego_pose_token"])), atol=1e-9)
            assert example["images"][index].size == (record["width"], record["height"])

        # Boxes: the devkit's sensor-frame boxes moved to the ego frame by the LiDAR calibration (another path than
        # the loader's global -> ego), velocities from box_velocity rotated into the ego frame.
        lidar = nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
        _, sensor_boxes, _ = nusc.get_sample_data(lidar["token"])
        calibration = nusc.get("calibrated_sensor", lidar["calibrated_sensor_token"])
        ego_rotation = Quaternion(nusc.get("ego_pose", lidar["ego_pose_token"])["rotation"])
        expected = []
        for box in sensor_boxes:
            if box.name not in CATEGORY_TO_DETECTION_CLASS:
                continue
            box.rotate(Quaternion(calibration["rotation"]))
            box.translate(np.array(calibration["translation"]))
            velocity = ego_rotation.inverse.rotate(nusc.box_velocity(box.token))[:2]
            expected.append([*box.center, *box.wlh, box.orientation.yaw_pitch_roll[0], *np.nan_to_num(velocity)])
        np.testing.assert_allclose(example["gt_boxes"], np.array(expected, dtype=np.float32).reshape(-1, 9),
                                   atol=2e-4)
        assert example["gt_names"] == [CATEGORY_TO_DETECTION_CLASS[b.name] for b in sensor_boxes
                                       if b.name in CATEGORY_TO_DETECTION_CLASS]
        assert all(n > 0 for n in example["gt_num_lidar_pts"])

        # Points: one group per sweep (its time lag), each as many points as its file holds.
        per_lag = collections.Counter(np.round(example["points"][:, 4], 3))
        record, file_counts = lidar, []
        while record is not None and len(file_counts) < num_sweeps:
            file_counts.append((nuscenes_root / record["filename"]).stat().st_size // 20)
            record = nusc.get("sample_data", record["prev"]) if record["prev"] else None
        assert [per_lag[lag] for lag in sorted(per_lag)] == file_counts
        np.testing.assert_allclose(example["lidar_to_ego"], _matrix(calibration), atol=1e-6)


def test_points_are_in_the_ego_frame(nusc, nuscenes_root, nuscenes_spec):
    """Ground returns lie at ego z = 0 (the synthetic ground), which fails for points left in the sensor frame."""
    example = next(iter(_load(nuscenes_root, nuscenes_spec, num_sweeps=1)))
    heights = example["points"][:, 2]
    assert np.median(np.abs(heights[heights < 0.2])) < 1e-3


def test_previous_frames_reference_the_preceding_key_frames(nusc, nuscenes_root, nuscenes_spec):
    examples = list(_load(nuscenes_root, nuscenes_spec, num_sweeps=1, previous_frames=2))
    first, second, third = examples[:3]
    assert first["previous_valid"] == [False, False]
    assert first["previous_sample_tokens"] == [first["sample_token"]] * 2
    assert second["previous_valid"] == [True, False]
    assert second["previous_sample_tokens"] == [first["sample_token"]] * 2
    assert third["previous_sample_tokens"] == [second["sample_token"], first["sample_token"]]
    np.testing.assert_array_equal(third["previous_camera_ego_to_global"][1], first["camera_ego_to_global"])
    assert nusc.get("sample", third["sample_token"])["prev"] == second["sample_token"]


def test_map_style_dataset_has_the_same_examples(nuscenes_root, nuscenes_spec, tmp_path):
    streamed = [e["sample_token"] for e in _load(nuscenes_root, nuscenes_spec, num_sweeps=1)]
    table = _load(nuscenes_root, nuscenes_spec, num_sweeps=1, streaming=False, cache_dir=tmp_path / "cache")
    assert table["sample_token"] == streamed
    assert table.with_format("numpy")[0]["gt_boxes"].shape[1] == 9


def test_bad_arguments_name_the_problem(nuscenes_root, nuscenes_spec, tmp_path):
    with pytest.raises(ValueError, match="unknown split 'nope'.*synthetic_train"):
        _load(nuscenes_root, nuscenes_spec, split="nope")
    with pytest.raises(ValueError, match="belongs to nuScenes version v1.0-trainval"):
        _load(nuscenes_root, nuscenes_spec, split="train")
    with pytest.raises(FileNotFoundError, match="no folder 'v1.0-test'.*v1.0-mini"):
        load_nuscenes(nuscenes_root, version="v1.0-test", split="test")
    (tmp_path / "v1.0-mini").mkdir()
    (tmp_path / "v1.0-mini" / "scene.json").write_text("[]")
    with pytest.raises(FileNotFoundError, match="missing the nuScenes tables attribute.json"):
        load_nuscenes(tmp_path, version="v1.0-mini", split="mini_train")
    with pytest.raises(ValueError, match="num_sweeps"):
        _load(nuscenes_root, nuscenes_spec, num_sweeps=0)


@pytest.fixture
def damaged_copy(nuscenes_root, nuscenes_spec, tmp_path):
    """A copy of the synthetic set (the session fixture stays intact)."""
    root = tmp_path / "nuscenes"
    shutil.copytree(nuscenes_root, root)
    nuscenes_database.cache_clear()
    yield root
    nuscenes_database.cache_clear()


def test_broken_files_raise_naming_file_and_sample_or_are_skipped(damaged_copy, nuscenes_spec, caplog):
    examples = list(_load(damaged_copy, nuscenes_spec, num_sweeps=1))
    nusc = nuscenes_database(str(damaged_copy.resolve()), nuscenes_spec.version)
    victim = examples[1]["sample_token"]
    image = damaged_copy / nusc.get("sample_data", nusc.get("sample", victim)["data"]["CAM_BACK"])["filename"]
    original = image.read_bytes()
    image.write_bytes(original[:-100])
    with pytest.raises(DataError, match=f"sample {victim}: .*CAM_BACK.*truncated JPEG"):
        list(_load(damaged_copy, nuscenes_spec, num_sweeps=1))
    with caplog.at_level(logging.WARNING, logger="geomim_hf.data"):
        kept = [e["sample_token"] for e in _load(damaged_copy, nuscenes_spec, num_sweeps=1, on_error="skip")]
    assert kept == [e["sample_token"] for e in examples if e["sample_token"] != victim]
    assert "1 skipped so far" in caplog.text and victim in caplog.text
    image.write_bytes(original)

    victim = examples[2]["sample_token"]
    lidar = damaged_copy / nusc.get("sample_data", nusc.get("sample", victim)["data"][LIDAR_CHANNEL])["filename"]
    lidar.write_bytes(lidar.read_bytes()[:-6])
    with pytest.raises(DataError, match=f"sample {victim}: .*LIDAR_TOP.*not a multiple of the 20-byte"):
        list(_load(damaged_copy, nuscenes_spec, num_sweeps=1))
    lidar.unlink()
    with pytest.raises(DataError, match=f"sample {victim}: .*file not found"):
        list(_load(damaged_copy, nuscenes_spec, num_sweeps=1))


def test_loading_writes_nothing_into_the_dataroot(damaged_copy, nuscenes_spec, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in damaged_copy.rglob("*")}
    list(_load(damaged_copy, nuscenes_spec, num_sweeps=2, previous_frames=1))
    _load(damaged_copy, nuscenes_spec, num_sweeps=1, streaming=False, cache_dir=tmp_path / "cache")
    assert {p: p.stat().st_mtime_ns for p in damaged_copy.rglob("*")} == before


@pytest.fixture(scope="module")
def six_scene_root(tmp_path_factory, nuscenes_spec):
    """Six scenes: five in synthetic_train, a count that does not divide by two ranks."""
    spec = dataclasses.replace(nuscenes_spec, scenes=6, samples_per_scene=2, sweeps=0, image_size=(64, 32))
    return generate_nuscenes(tmp_path_factory.mktemp("six") / "nuscenes", progress=False, **dataclasses.asdict(spec))


@pytest.mark.parametrize("world_size", [2, 8])  # whole scenes per rank; more ranks than scenes
def test_every_sample_is_read_exactly_once_across_ranks_and_workers(six_scene_root, nuscenes_spec, world_size):
    def tokens(rank: int) -> list[str]:
        dataset = split_by_node(load_nuscenes(six_scene_root, nuscenes_spec.version, "synthetic_train",
                                              num_sweeps=1), rank, world_size)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2,
                                             collate_fn=lambda example: example["sample_token"])
        return list(loader)

    read = [token for rank in range(world_size) for token in tokens(rank)]
    everything = [e["sample_token"] for e in load_nuscenes(six_scene_root, nuscenes_spec.version,
                                                           "synthetic_train", num_sweeps=1)]
    assert len(everything) == 5 * 2
    assert sorted(read) == sorted(everything)  # nothing duplicated, nothing lost
