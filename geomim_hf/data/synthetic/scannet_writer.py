"""Synthetic ScanNet: box rooms with furniture, filmed as RGB-D along a camera path, written in the
``scannet_frames_25k`` layout or in the layout of ScanNet's official ``.sens`` exporter (SensReader).

Conventions follow ScanNet: world z up, camera-to-world poses with camera axes x right, y down, z forward, depth as
uint16 millimetres (0 = invalid) at 640x480, colour intrinsics given for the 1296x968 sensor even when the colour
images are stored smaller (loaders must scale them to the image size), frames taken every 100th frame of a 30 Hz
stream. Semantic labels: NYU40 ids (8-bit) in the 25k package; ScanNet ids (16-bit ``label-filt``) in the export.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..scannet_format import (
    COLOR_SENSOR_SIZE,
    DEPTH_SENSOR_SIZE,
    DEPTH_SHIFT,
    LABEL_FOLDERS,
    LAYOUTS,
    frame_name,
    intrinsics_path,
    scale_intrinsics,
)
from .raycast import NO_HIT, OrientedBoxes, box_face_coordinates, cast_rays, slab_intersection

COLOR_INTRINSICS = np.array([[1169.6, 0.0, 646.3], [0.0, 1167.1, 489.9], [0.0, 0.0, 1.0]])  # at 1296x968
DEPTH_INTRINSICS = np.array([[577.6, 0.0, 318.9], [0.0, 578.7, 242.7], [0.0, 0.0, 1.0]])
FRAME_STRIDE = 100  # the 25k package keeps every 100th frame of the 30 Hz stream
STREAM_FPS = 30.0


@dataclasses.dataclass(frozen=True)
class SemanticClass:
    name: str
    scannet_id: int  # id in scannetv2-labels.combined.tsv (label-filt images)
    nyu40_id: int  # NYUv2 40-class id (the 25k package's label images)
    size: tuple[float, float, float]  # furniture (length, width, height) in metres; unused for room surfaces
    color: tuple[float, float, float]


ROOM_CLASSES = {
    "wall": SemanticClass("wall", 1, 1, (0, 0, 0), (0.78, 0.74, 0.66)),
    "floor": SemanticClass("floor", 3, 2, (0, 0, 0), (0.55, 0.38, 0.22)),
    "ceiling": SemanticClass("ceiling", 41, 22, (0, 0, 0), (0.93, 0.93, 0.92)),
}
FURNITURE_CLASSES = {
    c.name: c
    for c in (
        SemanticClass("chair", 2, 5, (0.50, 0.50, 0.90), (0.70, 0.20, 0.15)),
        SemanticClass("table", 4, 7, (1.20, 0.80, 0.75), (0.45, 0.30, 0.15)),
        SemanticClass("door", 5, 8, (0.90, 0.06, 2.05), (0.35, 0.22, 0.12)),
        SemanticClass("couch", 6, 6, (2.00, 0.90, 0.85), (0.20, 0.35, 0.65)),
        SemanticClass("cabinet", 7, 3, (0.80, 0.50, 1.80), (0.85, 0.80, 0.60)),
        SemanticClass("desk", 9, 14, (1.40, 0.70, 0.75), (0.25, 0.25, 0.28)),
        SemanticClass("bed", 11, 4, (2.00, 1.50, 0.60), (0.85, 0.85, 0.95)),
    )
}


@dataclasses.dataclass(frozen=True)
class ScanNetSpec:
    scenes: int = 2
    frames: int = 10
    layout: str = "frames_25k"
    seed: int = 0
    color_size: tuple[int, int] = (640, 480)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.scenes < 1 or self.frames < 2:
            raise ValueError("need at least 1 scene and 2 frames per scene")


@dataclasses.dataclass(frozen=True)
class Room:
    size: np.ndarray  # (3,) extent along world x, y, z; the room spans [0, size]
    furniture: OrientedBoxes
    furniture_classes: tuple[SemanticClass, ...]
    orbit_radius: float
    orbit_phase: float
    orbit_rate: float  # rad/s

    def camera_to_world(self, time: float) -> np.ndarray:
        """4x4 pose of the camera at ``time``: circling the room centre at 1.5 m, looking across the room, 15 deg
        down, panning left and right like a hand-held scan."""
        angle = self.orbit_phase + self.orbit_rate * time
        position = np.array([self.size[0] / 2 + self.orbit_radius * math.cos(angle),
                             self.size[1] / 2 + self.orbit_radius * math.sin(angle), 1.5])
        yaw, pitch = angle + math.pi + 0.5 * math.sin(0.4 * time), math.radians(-15.0)
        forward = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        pose = np.eye(4)
        pose[:3, :3] = np.stack([right, down, forward], axis=1)
        pose[:3, 3] = position
        return pose


def sample_room(rng: np.random.Generator) -> Room:
    size = np.array([rng.uniform(4.5, 7.0), rng.uniform(4.0, 6.0), rng.uniform(2.5, 3.0)])
    orbit_radius = 0.3 * min(size[:2])
    centers, rotations, half_sizes, classes = [], [], [], []
    names = list(FURNITURE_CLASSES)
    for name in rng.permutation(names).tolist() + rng.choice(names, size=3).tolist():
        semantic = FURNITURE_CLASSES[name]
        half = np.array(semantic.size) / 2
        for _attempt in range(100):
            if name == "door":  # flush against one of the four walls
                wall = int(rng.integers(4))  # 0: y = 0, 1: y = max, 2: x = 0, 3: x = max
                along_x = wall < 2
                yaw = 0.0 if along_x else math.pi / 2
                along = rng.uniform(1.0, size[0 if along_x else 1] - 1.0)
                across = half[1] if wall % 2 == 0 else size[1 if along_x else 0] - half[1]
                xy = np.array([along, across] if along_x else [across, along])
            else:
                yaw = rng.choice([0.0, math.pi / 2]) + rng.normal(0.0, 0.15)
                xy = rng.uniform(half[0] + 0.05, size[:2] - half[0] - 0.05)
            radius = float(np.hypot(half[0], half[1]))
            if abs(np.linalg.norm(xy - size[:2] / 2) - orbit_radius) < radius + 0.5:
                continue  # keep the camera path free
            if any(np.linalg.norm(xy - c[:2]) < radius + np.hypot(*h[:2]) + 0.1 for c, h in zip(centers, half_sizes)):
                continue
            cos, sin = math.cos(yaw), math.sin(yaw)
            centers.append(np.array([xy[0], xy[1], half[2]]))
            rotations.append(np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]]))
            half_sizes.append(half)
            classes.append(semantic)
            break
    furniture = OrientedBoxes(np.stack(centers), np.stack(rotations), np.stack(half_sizes))
    return Room(size, furniture, tuple(classes), orbit_radius, rng.uniform(0, 2 * math.pi), rng.uniform(0.08, 0.15))


@dataclasses.dataclass
class RGBDFrame:
    """``depth`` (H, W) metres along the optical axis; ``scannet_label``, ``nyu40_label`` and ``instance`` (1-based
    object ids; the floor, ceiling and each wall are objects too) are at the colour resolution."""

    color: np.ndarray
    depth: np.ndarray
    scannet_label: np.ndarray
    nyu40_label: np.ndarray
    instance: np.ndarray


def _cast(room: Room, pose: np.ndarray, intrinsics: np.ndarray, image_size: tuple[int, int]):
    """Per pixel: hit distance (camera z), the hit surface's instance id (0-5 room faces, 6+ furniture), and the
    hit points and rays, for the camera ``pose`` with ``intrinsics`` at ``image_size``."""
    width, height = image_size
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    camera_rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(intrinsics).T  # unit camera z
    directions = camera_rays @ pose[:3, :3].T
    origin = pose[:3, 3]
    hits = cast_rays(origin, directions, room.furniture, ground_plane=False)
    # From inside the room every ray leaves it through one face: that face is the room surface it sees.
    _, room_exit = slab_intersection(origin - room.size / 2, directions, room.size / 2)
    exit_points = origin - room.size / 2 + room_exit[..., None] * directions
    face_axis = np.argmax(np.abs(exit_points) / (room.size / 2), axis=-1)
    face = 2 * face_axis + (exit_points[np.arange(height)[:, None], np.arange(width)[None, :], face_axis] > 0)
    surface = np.where(hits.instance == NO_HIT, face, hits.instance + 6)
    distance = np.where(hits.instance == NO_HIT, room_exit, hits.distance)
    return distance, surface, origin, directions


def render_frame(room: Room, time: float, color_size: tuple[int, int]) -> RGBDFrame:
    pose = room.camera_to_world(time)
    depth, _, _, _ = _cast(room, pose, DEPTH_INTRINSICS, DEPTH_SENSOR_SIZE)
    color_intrinsics = scale_intrinsics(COLOR_INTRINSICS, COLOR_SENSOR_SIZE, color_size)
    distance, surface, origin, directions = _cast(room, pose, color_intrinsics, color_size)
    points = origin + distance[..., None] * directions

    classes = [ROOM_CLASSES["wall"]] * 4 + [ROOM_CLASSES["floor"], ROOM_CLASSES["ceiling"]]
    classes += list(room.furniture_classes)
    scannet_ids = np.array([c.scannet_id for c in classes], dtype=np.uint16)
    nyu40_ids = np.array([c.nyu40_id for c in classes], dtype=np.uint8)
    colors = np.array([c.color for c in classes])

    normals = np.zeros_like(points)
    texture = np.ones(surface.shape)
    room_face = surface < 6
    face_axis = surface[room_face] // 2
    normals[room_face, face_axis] = np.where(surface[room_face] % 2 == 1, -1.0, 1.0)  # pointing into the room
    floor = surface == 4
    plank = np.floor(points[floor][:, 0] / 0.2)
    texture[floor] = 0.8 + 0.2 * np.sin(plank * 12.9898) ** 2  # planks of varying brightness
    wall = surface < 4
    texture[wall] = 0.85 + 0.15 * (np.floor((points[wall][:, 0] + points[wall][:, 1]) / 0.5) % 2)
    for index in range(len(room.furniture)):
        mask = surface == index + 6
        if mask.any():
            normals[mask], local = box_face_coordinates(room.furniture, index, points[mask])
            texture[mask] = 0.75 + 0.25 * (np.floor(local[:, 0] / 0.15) % 2)
    light = np.array([room.size[0] / 2, room.size[1] / 2, room.size[2] - 0.1]) - points
    light /= np.linalg.norm(light, axis=-1, keepdims=True)
    lambert = 0.35 + 0.65 * np.clip(np.sum(normals * light, axis=-1), 0.0, 1.0)
    color = colors[surface] * (texture * lambert)[..., None]
    return RGBDFrame(
        color=(np.clip(color, 0.0, 1.0) * 255 + 0.5).astype(np.uint8),
        depth=depth,
        scannet_label=scannet_ids[surface],
        nyu40_label=nyu40_ids[surface],
        instance=(surface + 1).astype(np.uint16),
    )


def depth_to_millimetres(depth: np.ndarray) -> np.ndarray:
    """Metric depth to ScanNet's uint16 millimetres; 0 marks no measurement (beyond the sensor's range)."""
    valid = np.isfinite(depth) & (depth > 0) & (depth < 65.0)
    return np.where(valid, np.round(depth * DEPTH_SHIFT), 0).astype(np.uint16)


def scene_names(spec: ScanNetSpec) -> dict[str, list[str]]:
    """ScanNet-style scan ids per split, a fifth (at least one) in validation."""
    names = [f"scene{index:04d}_00" for index in range(spec.scenes)]
    num_val = max(1, round(spec.scenes / 5)) if spec.scenes > 1 else 0
    return {"train": names[: spec.scenes - num_val], "val": names[spec.scenes - num_val:]}


def write_scannet(spec: ScanNetSpec, root: Path, progress: bool = True) -> dict[str, int]:
    """Write the scenes of ``spec`` under ``root`` (one folder per scan) plus ``scannetv2_{train,val}.txt``."""
    splits = scene_names(spec)
    for split, names in splits.items():
        (root / f"scannetv2_{split}.txt").write_text("".join(f"{name}\n" for name in names))
    with tqdm(total=spec.scenes * spec.frames, desc="synthetic ScanNet", unit="frame", disable=not progress) as bar:
        for scene_index, name in enumerate(splits["train"] + splits["val"]):
            room = sample_room(np.random.default_rng([spec.seed, scene_index]))
            _write_intrinsics(root / name, spec.layout)
            for frame_index in range(0, spec.frames * FRAME_STRIDE, FRAME_STRIDE):
                frame = render_frame(room, frame_index / STREAM_FPS, spec.color_size)
                pose = room.camera_to_world(frame_index / STREAM_FPS)
                _write_frame(root / name, spec.layout, frame_index, frame, pose)
                bar.update()
    return {"scenes": spec.scenes, "frames": spec.scenes * spec.frames}


def _write_intrinsics(scene_dir: Path, layout: str) -> None:
    def as_4x4(matrix: np.ndarray) -> np.ndarray:
        full = np.eye(4)
        full[:3, :3] = matrix
        return full

    for camera, intrinsics in (("color", COLOR_INTRINSICS), ("depth", DEPTH_INTRINSICS)):
        path = intrinsics_path(scene_dir, layout, camera)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(path, as_4x4(intrinsics), fmt="%f")
        if layout == "exported":  # the exporter also writes the (identity) colour and depth extrinsics
            np.savetxt(path.parent / f"extrinsic_{camera}.txt", np.eye(4), fmt="%f")


def _save(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def _write_frame(scene_dir: Path, layout: str, frame_index: int, frame: RGBDFrame, pose: np.ndarray) -> None:
    stem = frame_name(layout, frame_index)
    _save(scene_dir / "color" / f"{stem}.jpg", frame.color, quality=92)
    _save(scene_dir / "depth" / f"{stem}.png", depth_to_millimetres(frame.depth))
    if layout == "frames_25k":
        _save(scene_dir / LABEL_FOLDERS[layout] / f"{stem}.png", frame.nyu40_label)
        _save(scene_dir / "instance" / f"{stem}.png", frame.nyu40_label.astype(np.uint16) * 1000 + frame.instance)
    else:
        _save(scene_dir / LABEL_FOLDERS[layout] / f"{stem}.png", frame.scannet_label)
        _save(scene_dir / "instance-filt" / f"{stem}.png", frame.instance.astype(np.uint8))
    (scene_dir / "pose").mkdir(exist_ok=True)
    np.savetxt(scene_dir / "pose" / f"{stem}.txt", pose, fmt="%f")
