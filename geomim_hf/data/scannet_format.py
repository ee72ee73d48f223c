"""ScanNet v2's on-disk formats, shared by the loader and the synthetic writer.

Two layouts hold the same RGB-D frames:
- ``frames_25k`` (the 2D benchmark package): ``<scan>/{color,depth,label,instance,pose}/<frame:06d>.*`` plus scan-level
  ``intrinsics_color.txt`` / ``intrinsics_depth.txt``; labels are NYU40 ids (8-bit PNG).
- ``exported`` (the official SensReader export of a ``.sens`` file): ``<scan>/{color,depth,pose}/<frame>.*`` (no zero
  padding), ``<scan>/intrinsic/{intrinsic,extrinsic}_{color,depth}.txt``, and the unzipped ``label-filt`` (16-bit
  ScanNet ids) and ``instance-filt`` folders.
Depth is uint16 millimetres (0 = no measurement); poses are camera-to-world 4x4 (camera x right, y down, z forward).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLOR_SENSOR_SIZE = (1296, 968)  # (width, height) the colour intrinsics refer to
DEPTH_SENSOR_SIZE = (640, 480)  # (width, height) the depth intrinsics refer to
DEPTH_SHIFT = 1000.0  # uint16 depth value per metre
LAYOUTS = ("frames_25k", "exported")
LABEL_FOLDERS = {"frames_25k": "label", "exported": "label-filt"}
LABEL_SPACES = {"frames_25k": "nyu40", "exported": "scannet"}


def detect_layout(scan_dir: Path) -> str | None:
    """The layout of one scan folder, or None if it is neither."""
    if (scan_dir / "intrinsics_color.txt").is_file():
        return "frames_25k"
    if (scan_dir / "intrinsic" / "intrinsic_color.txt").is_file():
        return "exported"
    return None


def intrinsics_path(scan_dir: Path, layout: str, camera: str) -> Path:
    """The 4x4 intrinsics file of ``camera`` ("color" or "depth") of a scan."""
    if layout == "frames_25k":
        return scan_dir / f"intrinsics_{camera}.txt"
    return scan_dir / "intrinsic" / f"intrinsic_{camera}.txt"


def frame_name(layout: str, frame_index: int) -> str:
    return f"{frame_index:06d}" if layout == "frames_25k" else str(frame_index)


def scale_intrinsics(intrinsics: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """3x3 intrinsics of a camera whose images are resized from ``from_size`` to ``to_size`` (width, height)."""
    scale = np.diag([to_size[0] / from_size[0], to_size[1] / from_size[1], 1.0])
    return scale @ intrinsics
