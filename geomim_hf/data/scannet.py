"""ScanNet RGB-D frames as a HuggingFace ``datasets`` dataset, from either official layout (see ``scannet_format``).

One example is one frame: ``image`` (RGB), ``depth`` (H, W) float32 metres with 0 where the sensor measured nothing,
``color_intrinsics`` / ``depth_intrinsics`` (3, 3) scaled to the stored image sizes (the intrinsics files describe the
1296x968 colour and 640x480 depth sensors, while packages often store smaller images), ``camera_to_world`` (4, 4), and
optionally ``semantic_label`` (an image of NYU40 ids for ``frames_25k``, ScanNet ids for ``exported``, named by
``label_space``). Frames with non-finite poses (a known ScanNet defect) are left out. One shard is one scan.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from .errors import BadSampleCounter, DataError, OnError, check_file, check_jpeg
from .scannet_format import (
    COLOR_SENSOR_SIZE,
    DEPTH_SENSOR_SIZE,
    DEPTH_SHIFT,
    LABEL_FOLDERS,
    LABEL_SPACES,
    LAYOUTS,
    detect_layout,
    frame_name,
    intrinsics_path,
    scale_intrinsics,
)

logger = logging.getLogger("geomim_hf.data")


def scannet_features(depth_size: tuple[int, int]) -> datasets.Features:
    width, height = depth_size
    return datasets.Features({
        "scene_id": datasets.Value("string"),
        "frame_index": datasets.Value("int64"),
        "image": datasets.Image(),
        "depth": datasets.Array2D((height, width), "float32"),
        "color_intrinsics": datasets.Array2D((3, 3), "float32"),
        "depth_intrinsics": datasets.Array2D((3, 3), "float32"),
        "camera_to_world": datasets.Array2D((4, 4), "float32"),
        "semantic_label": datasets.Image(),
        "label_space": datasets.Value("string"),
    })


def scans_of_split(root: Path, split: str) -> list[str]:
    split_file = root / f"scannetv2_{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem.removeprefix("scannetv2_") for p in root.glob("scannetv2_*.txt"))
        raise ValueError(f"unknown split {split!r}: {split_file} does not exist (splits here: {available or 'none'})")
    scans = split_file.read_text().split()
    if not scans:
        raise ValueError(f"split file {split_file} lists no scans")
    return scans


def load_scannet(
    root: str | Path,
    split: str = "train",
    streaming: bool = True,
    layout: str | None = None,
    with_labels: bool | None = None,
    on_error: OnError = "raise",
    cache_dir: str | Path | None = None,
) -> datasets.IterableDataset | datasets.Dataset:
    """The frames of the scans listed in ``<root>/scannetv2_<split>.txt``.

    ``layout`` ("frames_25k" or "exported") is detected from the first scan when not given. ``with_labels``: by
    default (None) each scan gives labels if it has a label folder and none otherwise (test scans, and the bare RGB-D
    export of ``.sens`` files, which pretraining needs); True requires them (a missing label is an error naming the
    file); False leaves ``semantic_label`` empty everywhere.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"ScanNet root {root} does not exist")
    BadSampleCounter(on_error)  # validates on_error before any work
    scans = scans_of_split(root, split)
    if layout is None:
        layout = detect_layout(root / scans[0])
        if layout is None:
            raise FileNotFoundError(f"{root / scans[0]} is not a ScanNet scan in a known layout {LAYOUTS}")
    elif layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    depth_size = _first_depth_size(root, scans, layout)
    gen_kwargs = {"scans": scans, "root": str(root), "layout": layout, "depth_size": depth_size,
                  "with_labels": with_labels, "on_error": on_error}
    features = scannet_features(depth_size)
    if streaming:
        return datasets.IterableDataset.from_generator(generate_frames, features=features, gen_kwargs=gen_kwargs)
    return datasets.Dataset.from_generator(generate_frames, features=features, gen_kwargs=gen_kwargs,
                                           cache_dir=str(cache_dir) if cache_dir else None)


def _first_depth_size(root: Path, scans: list[str], layout: str) -> tuple[int, int]:
    """The depth image size of the dataset (one size for all of ScanNet), read from the first depth frame's header."""
    for scan in scans:
        depth_files = sorted((root / scan / "depth").glob("*.png"))
        if depth_files:
            with Image.open(depth_files[0]) as depth:
                return depth.size
    raise FileNotFoundError(f"no depth frames under {root}/<scan>/depth for the {len(scans)} scans of this split")


def _frame_indices(scan_dir: Path) -> list[int]:
    return sorted(int(path.stem) for path in (scan_dir / "color").glob("*.jpg"))


def generate_frames(
    scans: list[str], root: str, layout: str, depth_size: tuple[int, int], with_labels: bool | None, on_error: OnError
) -> Iterator[dict]:
    """The frames of ``scans`` in frame order (the generator behind :func:`load_scannet`)."""
    counter = BadSampleCounter(on_error)
    for scan in scans:
        scan_dir = Path(root) / scan
        try:
            color_intrinsics = _read_intrinsics(scan, scan_dir, layout, "color")
            depth_intrinsics = _read_intrinsics(scan, scan_dir, layout, "depth")
        except DataError as error:
            counter.handle(error)
            continue
        scan_has_labels = with_labels if with_labels is not None else (scan_dir / LABEL_FOLDERS[layout]).is_dir()
        for frame_index in _frame_indices(scan_dir):
            try:
                example = _frame_example(scan, scan_dir, layout, frame_index, color_intrinsics, depth_intrinsics,
                                         depth_size, scan_has_labels)
            except DataError as error:
                counter.handle(error)
                continue
            if example is not None:
                yield example


def _read_intrinsics(scan: str, scan_dir: Path, layout: str, camera: str) -> np.ndarray:
    path = intrinsics_path(scan_dir, layout, camera)
    check_file(scan, path)
    matrix = np.loadtxt(path)
    if matrix.shape != (4, 4):
        raise DataError(scan, str(path), f"expected a 4x4 matrix, found shape {matrix.shape}")
    return matrix[:3, :3]


def _frame_example(
    scan: str,
    scan_dir: Path,
    layout: str,
    frame_index: int,
    color_intrinsics: np.ndarray,
    depth_intrinsics: np.ndarray,
    depth_size: tuple[int, int],
    with_labels: bool,
) -> dict | None:
    stem = frame_name(layout, frame_index)
    frame = f"{scan}/{stem}"
    color_path = scan_dir / "color" / f"{stem}.jpg"
    depth_path = scan_dir / "depth" / f"{stem}.png"
    pose_path = scan_dir / "pose" / f"{stem}.txt"
    check_jpeg(frame, color_path)
    check_file(frame, pose_path)
    pose = np.loadtxt(pose_path)
    if pose.shape != (4, 4):
        raise DataError(frame, str(pose_path), f"expected a 4x4 camera-to-world matrix, found shape {pose.shape}")
    if not np.all(np.isfinite(pose)):
        logger.debug("leaving out %s: non-finite camera pose", frame)
        return None
    check_file(frame, depth_path)
    try:
        with Image.open(depth_path) as depth_image:
            depth_image.load()
            if depth_image.mode not in ("I;16", "I"):
                raise DataError(frame, str(depth_path), f"depth must be a 16-bit PNG, found mode {depth_image.mode}")
            if depth_image.size != tuple(depth_size):
                raise DataError(frame, str(depth_path), f"depth is {depth_image.size}, the dataset's is {depth_size}")
            depth = np.asarray(depth_image, dtype=np.float32) / DEPTH_SHIFT
    except (OSError, SyntaxError) as error:  # PIL's errors for truncated or corrupt files
        raise DataError(frame, str(depth_path), f"unreadable depth image ({error})") from None
    with Image.open(color_path) as color_image:
        color_size = color_image.size
    label_path = scan_dir / LABEL_FOLDERS[layout] / f"{stem}.png"
    if with_labels:
        check_file(frame, label_path)
    return {
        "scene_id": scan,
        "frame_index": frame_index,
        "image": str(color_path),
        "depth": depth,
        "color_intrinsics": scale_intrinsics(color_intrinsics, COLOR_SENSOR_SIZE, color_size).astype(np.float32),
        "depth_intrinsics": scale_intrinsics(depth_intrinsics, DEPTH_SENSOR_SIZE,
                                             depth.shape[::-1]).astype(np.float32),
        "camera_to_world": pose.astype(np.float32),
        "semantic_label": str(label_path) if with_labels else None,
        "label_space": LABEL_SPACES[layout] if with_labels else "",
    }
