"""Write synthetic street scenes as a nuScenes v1.0 dataset: the 13 tables, ``maps/``, ``samples/``, ``sweeps/`` and
a ``splits.json``, so that the official devkit loads, renders and evaluates it like the real release.

Layout facts follow the devkit's ``docs/schema_nuscenes.md``: tokens are 32 hex characters, timestamps microseconds,
quaternions [w, x, y, z], annotations in the global frame with size (w, l, h), one ego pose per sample_data sharing its
token, prev/next chains per sensor channel, and a LIDAR_TOP key frame in every sample.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..nuscenes_constants import (
    ATTRIBUTES,
    CAMERA_CHANNELS,
    CATEGORIES,
    CATEGORY_TO_DETECTION_CLASS,
    LIDAR_CHANNEL,
    MAP_TOKENS,
    VISIBILITY_LEVELS,
)
from .rig import (
    CAMERA_MOUNTS,
    LIDAR_PERIOD_S,
    LIDAR_ROTATION,
    LIDAR_TRANSLATION,
    camera_intrinsics,
    camera_rotation,
    camera_trigger_offset_s,
)
from .street import StreetObject, StreetScene, lidar_ray_directions, render_camera, render_lidar, sample_street_scene

SAMPLE_PERIOD_S = 0.5  # key frames at 2 Hz
FIRST_TIMESTAMP_US = 1_533_151_603_547_590  # 2018-08-01, like the real logs
JPEG_QUALITY = 92

# The detection benchmark's class ranges (detection_cvpr_2019), keyed by category; used to place objects where the
# evaluation keeps them. Non-detection categories get the smallest range so they stay in view.
_DETECTION_RANGES = {
    "car": 50.0, "truck": 50.0, "bus": 50.0, "trailer": 50.0, "construction_vehicle": 50.0,
    "pedestrian": 40.0, "motorcycle": 40.0, "bicycle": 40.0, "traffic_cone": 30.0, "barrier": 30.0,
}
CATEGORY_RANGES = {category: _DETECTION_RANGES.get(CATEGORY_TO_DETECTION_CLASS.get(category, ""), 30.0)
                   for category in CATEGORIES}

_SENSOR_CHANNELS = (*CAMERA_CHANNELS, LIDAR_CHANNEL)


@dataclasses.dataclass(frozen=True)
class NuScenesSpec:
    """What to generate. ``sweeps`` LiDAR sweeps (at most 9, the real count) precede each key frame after the first."""

    scenes: int = 2
    samples_per_scene: int = 10
    sweeps: int = 9
    image_size: tuple[int, int] = (704, 256)
    seed: int = 0
    version: str = "v1.0-mini"
    lidar_azimuth_steps: int = 1084  # points per ring and revolution, as the real HDL-32E
    objects_per_class: int = 2

    def __post_init__(self) -> None:
        if self.scenes < 1 or self.samples_per_scene < 2:
            raise ValueError("need at least 1 scene and 2 samples per scene (velocities need two annotations)")
        if not 0 <= self.sweeps <= 9:
            raise ValueError(f"sweeps must be in [0, 9] (LiDAR at 20 Hz between 2 Hz key frames), got {self.sweeps}")
        if min(self.image_size) < 16:
            raise ValueError(f"image_size must be at least 16x16 pixels, got {self.image_size}")
        split_names(self)  # validates the version / scene count combination


def split_names(spec: NuScenesSpec) -> dict[str, list[str]]:
    """Scene names per split. Names are taken from the devkit's own split lists (mini_* for a ``-mini`` version,
    train/val for ``-trainval``) so that the predefined evaluation splits work on the synthetic set, about a fifth of
    the scenes (at least one) going to validation."""
    from nuscenes.utils.splits import create_splits_scenes

    predefined = create_splits_scenes()
    if spec.version.endswith("mini"):
        train_pool, val_pool, train_key, val_key = predefined["mini_train"], predefined["mini_val"], "mini_train", "mini_val"
    elif spec.version.endswith("trainval"):
        train_pool, val_pool, train_key, val_key = predefined["train"], predefined["val"], "train", "val"
    else:
        raise ValueError(f"version must end in 'mini' or 'trainval' (the devkit ties splits to it), got {spec.version!r}")
    num_val = min(max(1, round(spec.scenes / 5)), len(val_pool)) if spec.scenes > 1 else 0
    num_train = spec.scenes - num_val
    if num_train > len(train_pool):
        raise ValueError(
            f"{spec.scenes} scenes do not fit the {len(train_pool) + len(val_pool)} scene names of {spec.version}; "
            "use version v1.0-trainval for more scenes"
        )
    return {train_key: list(train_pool[:num_train]), val_key: list(val_pool[:num_val])}


def synthetic_token(seed: int, *key: object) -> str:
    """The deterministic 32-hex token of record ``key`` (e.g. ``("instance", scene_index, object_index)``)."""
    return hashlib.md5(f"geomim-synthetic/{seed}/{'/'.join(map(str, key))}".encode()).hexdigest()


def street_scene(spec: NuScenesSpec, scene_index: int) -> StreetScene:
    """The world of scene ``scene_index``: object ``i`` of it is the instance ``synthetic_token(seed, "instance",
    scene_index, i)``. Each scene has its own random stream, so it can be rebuilt alone."""
    rng = np.random.default_rng([spec.seed, scene_index])
    duration = (spec.samples_per_scene - 1) * SAMPLE_PERIOD_S
    return sample_street_scene(rng, duration, spec.objects_per_class, CATEGORY_RANGES)


class _Tables:
    """The 13 tables as lists of records, plus deterministic tokens."""

    NAMES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
             "sample_annotation", "sample_data", "scene", "sensor", "visibility")

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.records: dict[str, list[dict]] = {name: [] for name in self.NAMES}

    def token(self, *key: object) -> str:
        return synthetic_token(self.seed, *key)

    def add(self, table: str, record: dict) -> dict:
        self.records[table].append(record)
        return record

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        for name, records in self.records.items():
            (folder / f"{name}.json").write_text(json.dumps(records, indent=0))


def write_nuscenes(spec: NuScenesSpec, dataroot: Path, progress: bool = True) -> dict[str, int]:
    """Generate the dataset described by ``spec`` into the empty or new folder ``dataroot``; returns table sizes."""
    tables = _Tables(spec.seed)
    _write_static_tables(tables, dataroot)
    splits = split_names(spec)
    scene_names = [name for names in splits.values() for name in names]
    lidar_directions = lidar_ray_directions(spec.lidar_azimuth_steps)
    for folder in ("samples", "sweeps"):
        for channel in _SENSOR_CHANNELS:
            (dataroot / folder / channel).mkdir(parents=True, exist_ok=True)

    with tqdm(total=spec.scenes * spec.samples_per_scene, desc="synthetic nuScenes", unit="sample",
              disable=not progress) as bar:
        for scene_index, scene_name in enumerate(scene_names):
            _write_scene(tables, dataroot, spec, scene_index, scene_name, street_scene(spec, scene_index),
                         lidar_directions, bar)

    tables.write(dataroot / spec.version)
    (dataroot / spec.version / "splits.json").write_text(
        json.dumps({f"synthetic_{key.split('_')[-1]}": names for key, names in splits.items()}, indent=2)
    )
    return {name: len(records) for name, records in tables.records.items()}


def _write_static_tables(tables: _Tables, dataroot: Path) -> None:
    for name in CATEGORIES:
        tables.add("category", {"token": tables.token("category", name), "name": name,
                                "description": f"synthetic {name.split('.')[-1]}"})
    for name in ATTRIBUTES:
        tables.add("attribute", {"token": tables.token("attribute", name), "name": name, "description": ""})
    for index, level in enumerate(VISIBILITY_LEVELS, start=1):
        tables.add("visibility", {"token": str(index), "level": level,
                                  "description": f"visibility of whole object is between {level[1:]} %"})
    for channel in _SENSOR_CHANNELS:
        tables.add("sensor", {"token": tables.token("sensor", channel), "channel": channel,
                              "modality": "lidar" if channel == LIDAR_CHANNEL else "camera"})
    (dataroot / "maps").mkdir(parents=True)
    for map_token in MAP_TOKENS.values():
        # A plain drivable-everywhere prior; only the devkit's map underlay rendering reads it.
        Image.fromarray(np.full((200, 200), 255, dtype=np.uint8)).save(dataroot / "maps" / f"{map_token}.png")
        tables.add("map", {"token": map_token, "log_tokens": [], "category": "semantic_prior",
                           "filename": f"maps/{map_token}.png"})


def _write_scene(
    tables: _Tables,
    dataroot: Path,
    spec: NuScenesSpec,
    scene_index: int,
    scene_name: str,
    scene: StreetScene,
    lidar_directions: np.ndarray,
    bar: tqdm,
) -> None:
    start_us = FIRST_TIMESTAMP_US + scene_index * 3_600_000_000  # one log per hour
    start = datetime.datetime.fromtimestamp(start_us / 1e6, tz=datetime.timezone(datetime.timedelta(hours=8)))
    logfile = f"n015-{start:%Y-%m-%d-%H-%M-%S}+0800"
    location = list(MAP_TOKENS)[scene_index % len(MAP_TOKENS)]
    log = tables.add("log", {"token": tables.token("log", scene_index), "logfile": logfile, "vehicle": "n015",
                             "date_captured": f"{start:%Y-%m-%d}", "location": location})
    next(m for m in tables.records["map"] if m["token"] == MAP_TOKENS[location])["log_tokens"].append(log["token"])

    calibration = {channel: _add_calibrated_sensor(tables, scene_index, channel, spec.image_size)
                   for channel in _SENSOR_CHANNELS}
    sample_tokens = [tables.token("sample", scene_index, k) for k in range(spec.samples_per_scene)]
    last_frame: dict[str, dict | None] = {channel: None for channel in _SENSOR_CHANNELS}
    annotations: dict[int, list[dict]] = {index: [] for index in range(len(scene.objects))}

    def add_sample_data(channel: str, time: float, sample_index: int, is_key_frame: bool) -> dict:
        timestamp = start_us + round(time * 1e6)
        folder = "samples" if is_key_frame else "sweeps"
        extension = "pcd.bin" if channel == LIDAR_CHANNEL else "jpg"
        token = tables.token("sample_data", scene_index, channel, timestamp)
        ego_translation, ego_rotation = scene.ego.pose(time)
        tables.add("ego_pose", {"token": token, "timestamp": timestamp, "translation": ego_translation.tolist(),
                                "rotation": ego_rotation.elements.tolist()})
        width, height = (0, 0) if channel == LIDAR_CHANNEL else spec.image_size
        record = tables.add("sample_data", {
            "token": token, "sample_token": sample_tokens[sample_index], "ego_pose_token": token,
            "calibrated_sensor_token": calibration[channel], "timestamp": timestamp,
            "fileformat": "pcd" if channel == LIDAR_CHANNEL else "jpg", "is_key_frame": is_key_frame,
            "height": height, "width": width,
            "filename": f"{folder}/{channel}/{logfile}__{channel}__{timestamp}.{extension}", "prev": "", "next": "",
        })
        previous = last_frame[channel]
        if previous is not None:
            previous["next"], record["prev"] = token, previous["token"]
        last_frame[channel] = record
        return record

    for sample_index in range(spec.samples_per_scene):
        key_time = sample_index * SAMPLE_PERIOD_S
        if sample_index > 0:
            for sweep in range(spec.sweeps, 0, -1):  # sweeps belong to the following sample, oldest first
                time = key_time - sweep * LIDAR_PERIOD_S
                record = add_sample_data(LIDAR_CHANNEL, time, sample_index, is_key_frame=False)
                render_lidar(scene, time, lidar_directions).points.tofile(dataroot / record["filename"])

        lidar_record = add_sample_data(LIDAR_CHANNEL, key_time, sample_index, is_key_frame=True)
        sweep = render_lidar(scene, key_time, lidar_directions)
        sweep.points.tofile(dataroot / lidar_record["filename"])
        num_lidar_points = np.bincount(sweep.instance[sweep.instance >= 0], minlength=len(scene.objects))

        visible = np.zeros(len(scene.objects))
        footprint = np.zeros(len(scene.objects))
        for channel in CAMERA_CHANNELS:
            time = key_time + camera_trigger_offset_s(CAMERA_MOUNTS[channel])
            record = add_sample_data(channel, time, sample_index, is_key_frame=True)
            frame = render_camera(scene, channel, time, spec.image_size)
            Image.fromarray(frame.image).save(dataroot / record["filename"], quality=JPEG_QUALITY)
            visible += frame.visible
            footprint += frame.footprint

        tables.add("sample", {
            "token": sample_tokens[sample_index], "timestamp": lidar_record["timestamp"],
            "scene_token": tables.token("scene", scene_index),
            "prev": sample_tokens[sample_index - 1] if sample_index > 0 else "",
            "next": sample_tokens[sample_index + 1] if sample_index + 1 < spec.samples_per_scene else "",
        })
        for index, obj in enumerate(scene.objects):
            # Like nuScenes, an object is annotated where the LiDAR sees it; zero-point boxes would be dropped by
            # the benchmark anyway and turn correct predictions into false positives.
            if num_lidar_points[index] == 0:
                continue
            visibility = visible[index] / footprint[index] if footprint[index] else 0.0
            annotations[index].append(tables.add("sample_annotation", {
                "token": tables.token("sample_annotation", scene_index, index, sample_index),
                "sample_token": sample_tokens[sample_index],
                "instance_token": tables.token("instance", scene_index, index),
                "visibility_token": str(1 + int(np.searchsorted([0.4, 0.6, 0.8], visibility, side="right"))),
                "attribute_tokens": _attribute_tokens(tables, obj),
                "translation": obj.center(key_time).tolist(),
                "size": list(obj.template.size),
                "rotation": obj.rotation.elements.tolist(),
                "num_lidar_pts": int(num_lidar_points[index]),
                "num_radar_pts": 0,
                "prev": "", "next": "",
            }))
        bar.update()

    for index, chain in annotations.items():
        if not chain:
            continue
        for earlier, later in zip(chain, chain[1:]):
            earlier["next"], later["prev"] = later["token"], earlier["token"]
        tables.add("instance", {
            "token": tables.token("instance", scene_index, index),
            "category_token": tables.token("category", scene.objects[index].template.category),
            "nbr_annotations": len(chain),
            "first_annotation_token": chain[0]["token"], "last_annotation_token": chain[-1]["token"],
        })
    tables.add("scene", {
        "token": tables.token("scene", scene_index), "name": scene_name,
        "description": f"synthetic street, {len(scene.objects)} objects, ego at {scene.ego.speed:.1f} m/s",
        "log_token": log["token"], "nbr_samples": spec.samples_per_scene,
        "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1],
    })


def _add_calibrated_sensor(tables: _Tables, scene_index: int, channel: str, image_size: tuple[int, int]) -> str:
    if channel == LIDAR_CHANNEL:
        translation, rotation, intrinsic = LIDAR_TRANSLATION, LIDAR_ROTATION, []
    else:
        mount = CAMERA_MOUNTS[channel]
        translation, rotation = mount.translation, camera_rotation(mount.yaw_deg)
        intrinsic = camera_intrinsics(mount, image_size).tolist()
    token = tables.token("calibrated_sensor", scene_index, channel)
    tables.add("calibrated_sensor", {"token": token, "sensor_token": tables.token("sensor", channel),
                                     "translation": list(translation), "rotation": rotation.elements.tolist(),
                                     "camera_intrinsic": intrinsic})
    return token


def _attribute_tokens(tables: _Tables, obj: StreetObject) -> list[str]:
    if obj.template.attributes is None:
        return []
    moving, static = obj.template.attributes
    return [tables.token("attribute", moving if obj.is_moving else static)]
