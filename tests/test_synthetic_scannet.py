"""The synthetic ScanNet set: official file layouts, and depth + poses that agree across frames."""

from __future__ import annotations

import numpy as np
from PIL import Image

from geomim_hf.data.scannet_format import LABEL_FOLDERS, detect_layout, intrinsics_path
from geomim_hf.data.synthetic.__main__ import main as synthetic_cli
from geomim_hf.data.synthetic.scannet_writer import (
    COLOR_INTRINSICS,
    DEPTH_INTRINSICS,
    FURNITURE_CLASSES,
    ROOM_CLASSES,
)


def _frame_files(scene_dir, layout: str) -> dict[str, list]:
    """Per modality, the frame files of one scan, ordered by frame index."""
    instance_folder = {"frames_25k": "instance", "exported": "instance-filt"}[layout]
    folders = ("color", "depth", LABEL_FOLDERS[layout], instance_folder, "pose")
    return {folder: sorted((scene_dir / folder).iterdir(), key=lambda p: int(p.name.split(".")[0]))
            for folder in folders}


def _layout(root) -> str:
    return detect_layout(root / "scene0000_00")


def _intrinsics(scene_dir, layout: str, kind: str) -> np.ndarray:
    matrix = np.loadtxt(intrinsics_path(scene_dir, layout, kind))
    assert matrix.shape == (4, 4)
    return matrix[:3, :3]


def test_official_layout_and_encodings(scannet_root):
    layout = _layout(scannet_root)
    train = (scannet_root / "scannetv2_train.txt").read_text().split()
    val = (scannet_root / "scannetv2_val.txt").read_text().split()
    assert train == ["scene0000_00"] and val == ["scene0001_00"]
    for scene in train + val:
        files = _frame_files(scannet_root / scene, layout)
        stems = [[p.name.split(".")[0] for p in paths] for paths in files.values()]
        expected = ["000000", "000100", "000200"] if layout == "frames_25k" else ["0", "100", "200"]
        assert all(s == expected for s in stems)
        with Image.open(files["depth"][0]) as depth:
            assert depth.mode == "I;16" and depth.size == (640, 480)
            millimetres = np.asarray(depth)
        assert 500 < np.median(millimetres) < 8000  # a room seen from inside: metres, stored as mm
        labels = np.asarray(Image.open(files[LABEL_FOLDERS[layout]][0]))
        ids = {c.nyu40_id if layout == "frames_25k" else c.scannet_id
               for c in (*ROOM_CLASSES.values(), *FURNITURE_CLASSES.values())}
        assert set(np.unique(labels)) <= ids and len(np.unique(labels)) >= 3
        assert labels.dtype == (np.uint8 if layout == "frames_25k" else np.uint16)
        with Image.open(files["color"][0]) as color:
            assert color.mode == "RGB" and color.size == labels.shape[::-1]
        pose = np.loadtxt(files["pose"][0])
        np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-5)
        np.testing.assert_allclose(_intrinsics(scannet_root / scene, layout, "color"), COLOR_INTRINSICS, atol=1e-5)
        np.testing.assert_allclose(_intrinsics(scannet_root / scene, layout, "depth"), DEPTH_INTRINSICS, atol=1e-5)


def _backproject(depth_mm: np.ndarray, intrinsics: np.ndarray, camera_to_world: np.ndarray) -> np.ndarray:
    """(P, 3) world points of the valid depth pixels (pixel centres)."""
    v, u = np.nonzero(depth_mm)
    depth = depth_mm[v, u] / 1000.0
    rays = np.stack([u + 0.5, v + 0.5, np.ones_like(depth)], axis=-1) @ np.linalg.inv(intrinsics).T
    camera_points = rays * depth[:, None]
    return camera_points @ camera_to_world[:3, :3].T + camera_to_world[:3, 3]


def test_depth_and_poses_agree_across_frames_on_shared_surfaces(scannet_root):
    """Back-project frame A, project into frame B, compare with B's own depth (bilinear on smooth patches); where B
    does not see A's point it must be because something nearer hides it."""
    layout = _layout(scannet_root)
    scene_dir = scannet_root / "scene0000_00"
    files = _frame_files(scene_dir, layout)
    intrinsics = _intrinsics(scene_dir, layout, "depth")
    depth_a, depth_b = (np.asarray(Image.open(p)).astype(np.float64) for p in files["depth"][:2])
    pose_a, pose_b = (np.loadtxt(p) for p in files["pose"][:2])

    world = _backproject(depth_a, intrinsics, pose_a)
    in_b = (world - pose_b[:3, 3]) @ pose_b[:3, :3]  # world -> camera B
    pixels = in_b @ intrinsics.T
    u, v = pixels[:, 0] / pixels[:, 2] - 0.5, pixels[:, 1] / pixels[:, 2] - 0.5  # continuous pixel indices
    height, width = depth_b.shape
    inside = (in_b[:, 2] > 0.1) & (u >= 0) & (v >= 0) & (u < width - 1) & (v < height - 1)
    u0, v0 = np.floor(u[inside]).astype(int), np.floor(v[inside]).astype(int)
    du, dv = u[inside] - u0, v[inside] - v0
    neighbours = np.stack([depth_b[v0, u0], depth_b[v0, u0 + 1], depth_b[v0 + 1, u0], depth_b[v0 + 1, u0 + 1]])
    smooth = (neighbours.min(0) > 0) & (neighbours.max(0) - neighbours.min(0) < 30)  # one surface, no edge
    sampled = ((1 - du) * (1 - dv) * neighbours[0] + du * (1 - dv) * neighbours[1]
               + (1 - du) * dv * neighbours[2] + du * dv * neighbours[3]) / 1000.0
    difference = (sampled - in_b[inside, 2])[smooth]  # < 0 where B sees something in front of A's point
    shared = np.abs(difference) < 0.005
    assert shared.sum() > 0.2 * depth_a.size, "the two frames should share a large part of the room"
    assert np.median(np.abs(difference[shared])) < 0.001
    # A's points never float in what B sees as free space (that would be a pose or intrinsics error).
    assert np.percentile(difference, 99.5) < 0.005


def test_preview_shows_rgb_depth_and_labels(scannet_root, tmp_path):
    out = tmp_path / "preview.png"
    assert synthetic_cli(["preview", str(scannet_root), "--output_dir", str(tmp_path), "--index", "1"]) == 0
    with Image.open(out) as image:
        assert image.width > 3 * image.height / 2
