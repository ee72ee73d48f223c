"""The ScanNet loader: both layouts, metric depth, intrinsics scaled to the stored images, bad frames."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from geomim_hf.data.errors import DataError
from geomim_hf.data.scannet import load_scannet
from geomim_hf.data.scannet_format import COLOR_SENSOR_SIZE, LABEL_FOLDERS, detect_layout, frame_name
from geomim_hf.data.synthetic.scannet_writer import COLOR_INTRINSICS, DEPTH_INTRINSICS


def test_frames_carry_metric_depth_scaled_intrinsics_pose_and_labels(scannet_root):
    layout = detect_layout(scannet_root / "scene0000_00")
    frames = list(load_scannet(scannet_root, split="train"))
    assert [(f["scene_id"], f["frame_index"]) for f in frames] == [("scene0000_00", i) for i in (0, 100, 200)]
    frame = frames[1]
    stem = frame_name(layout, 100)
    millimetres = np.asarray(Image.open(scannet_root / "scene0000_00" / "depth" / f"{stem}.png"))
    np.testing.assert_allclose(frame["depth"], millimetres / 1000.0, rtol=1e-6)
    width, height = frame["image"].size
    expected_color = COLOR_INTRINSICS * np.array([[width / COLOR_SENSOR_SIZE[0]], [height / COLOR_SENSOR_SIZE[1]], [1]])
    np.testing.assert_allclose(frame["color_intrinsics"], expected_color, rtol=1e-5)
    np.testing.assert_allclose(frame["depth_intrinsics"], DEPTH_INTRINSICS, rtol=1e-5)
    np.testing.assert_allclose(frame["camera_to_world"],
                               np.loadtxt(scannet_root / "scene0000_00" / "pose" / f"{stem}.txt"), atol=1e-6)
    assert frame["label_space"] == {"frames_25k": "nyu40", "exported": "scannet"}[layout]
    assert frame["semantic_label"].size == (width, height)


def test_split_errors_and_unlabelled_scans(scannet_root):
    with pytest.raises(ValueError, match="unknown split 'test'.*'train', 'val'"):
        load_scannet(scannet_root, split="test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_scannet(scannet_root / "missing")
    frame = next(iter(load_scannet(scannet_root, split="val", with_labels=False)))
    assert frame["semantic_label"] is None and frame["scene_id"] == "scene0001_00"


def test_bad_frames_are_named_or_left_out(scannet_root, tmp_path):
    root = tmp_path / "scannet"
    shutil.copytree(scannet_root, root)
    layout = detect_layout(root / "scene0000_00")
    np.savetxt(root / "scene0000_00" / "pose" / f"{frame_name(layout, 100)}.txt", np.full((4, 4), -np.inf))
    assert [f["frame_index"] for f in load_scannet(root)] == [0, 200]  # the invalid pose is dropped

    color = root / "scene0000_00" / "color" / f"{frame_name(layout, 200)}.jpg"
    color.write_bytes(color.read_bytes()[:-50])
    with pytest.raises(DataError, match=f"scene0000_00/{frame_name(layout, 200)}: .*truncated JPEG"):
        list(load_scannet(root))
    assert [f["frame_index"] for f in load_scannet(root, on_error="skip")] == [0]


def test_scans_without_label_folders_load_by_default(scannet_root, tmp_path):
    root = tmp_path / "scannet"
    shutil.copytree(scannet_root, root)
    layout = detect_layout(root / "scene0000_00")
    shutil.rmtree(root / "scene0000_00" / LABEL_FOLDERS[layout])  # an RGB-D-only export of the .sens file
    frames = list(load_scannet(root))
    assert len(frames) == 3 and all(f["semantic_label"] is None and f["label_space"] == "" for f in frames)
    assert next(iter(load_scannet(root, split="val")))["semantic_label"].size == (320, 240)  # labels where present
    with pytest.raises(DataError, match=f"scene0000_00/{frame_name(layout, 0)}: .*file not found"):
        list(load_scannet(root, with_labels=True))
