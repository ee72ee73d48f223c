"""A small driving world for the synthetic nuScenes set: a ground plane, box-shaped road users and a moving ego car.

Everything moves at constant velocity (the ego car on a circular arc), so a scene is a pure function of time and the
renderers below can image it at any sensor timestamp. Each class has its nuScenes mean size and a distinct colour and
stripe pattern, which makes class and depth learnable from pixels.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from pyquaternion import Quaternion

from .raycast import GROUND, NO_HIT, OrientedBoxes, RayHits, box_face_coordinates, cast_rays
from .rig import (
    CAMERA_MOUNTS,
    LIDAR_ELEVATIONS_DEG,
    LIDAR_ROTATION,
    LIDAR_TRANSLATION,
    camera_intrinsics,
    camera_rotation,
)

SUN_DIRECTION = np.array([0.4, 0.3, 0.87]) / np.linalg.norm([0.4, 0.3, 0.87])
LIDAR_MAX_RANGE = 70.0
EGO_RADIUS = 2.6  # clearance kept around the ego car's origin, metres


@dataclasses.dataclass(frozen=True)
class ObjectTemplate:
    category: str
    size: tuple[float, float, float]  # nuScenes (width, length, height), metres
    max_speed: float  # m/s; 0 for static objects
    color: tuple[float, float, float]  # linear RGB in [0, 1]
    stripe_period: float  # metres between texture stripes along the box's length axis
    intensity: float  # LiDAR return intensity, 0-255
    attributes: tuple[str, str] | None  # (moving, static) attribute names, None for classes without attributes


# One template per detection class (sizes are the nuScenes class means), plus non-detection categories that a
# detector must learn to ignore.
OBJECT_TEMPLATES: dict[str, ObjectTemplate] = {
    t.category: t
    for t in (
        ObjectTemplate("vehicle.car", (1.95, 4.62, 1.73), 7.0, (0.80, 0.08, 0.08), 1.2, 90.0,
                       ("vehicle.moving", "vehicle.parked")),
        ObjectTemplate("vehicle.truck", (2.52, 6.94, 2.84), 6.0, (0.10, 0.30, 0.85), 1.6, 110.0,
                       ("vehicle.moving", "vehicle.parked")),
        ObjectTemplate("vehicle.construction", (2.85, 6.37, 3.19), 2.0, (0.95, 0.75, 0.05), 0.8, 120.0,
                       ("vehicle.moving", "vehicle.parked")),
        ObjectTemplate("vehicle.bus.rigid", (2.94, 11.0, 3.47), 6.0, (0.05, 0.60, 0.25), 2.4, 100.0,
                       ("vehicle.moving", "vehicle.stopped")),
        ObjectTemplate("vehicle.trailer", (2.90, 12.29, 3.87), 4.0, (0.55, 0.33, 0.18), 3.0, 80.0,
                       ("vehicle.moving", "vehicle.parked")),
        ObjectTemplate("movable_object.barrier", (2.53, 0.50, 0.98), 0.0, (0.95, 0.95, 0.92), 0.5, 200.0, None),
        ObjectTemplate("vehicle.motorcycle", (0.77, 2.11, 1.47), 6.0, (0.60, 0.10, 0.70), 0.4, 70.0,
                       ("cycle.with_rider", "cycle.without_rider")),
        ObjectTemplate("vehicle.bicycle", (0.60, 1.70, 1.28), 4.0, (0.10, 0.80, 0.85), 0.3, 60.0,
                       ("cycle.with_rider", "cycle.without_rider")),
        ObjectTemplate("human.pedestrian.adult", (0.67, 0.73, 1.77), 1.5, (1.00, 0.55, 0.70), 0.25, 40.0,
                       ("pedestrian.moving", "pedestrian.standing")),
        ObjectTemplate("movable_object.trafficcone", (0.41, 0.41, 1.07), 0.0, (1.00, 0.45, 0.00), 0.2, 230.0, None),
        ObjectTemplate("animal", (0.35, 0.95, 0.55), 1.0, (0.35, 0.24, 0.14), 0.5, 30.0, None),
        ObjectTemplate("movable_object.debris", (0.60, 0.60, 0.30), 0.0, (0.42, 0.40, 0.36), 0.3, 50.0, None),
        ObjectTemplate("movable_object.pushable_pullable", (0.62, 0.72, 1.02), 0.0, (0.20, 0.50, 0.30), 0.4, 50.0,
                       None),
        ObjectTemplate("static_object.bicycle_rack", (1.50, 3.20, 1.00), 0.0, (0.32, 0.32, 0.34), 0.6, 150.0, None),
    )
}


@dataclasses.dataclass(frozen=True)
class StreetObject:
    """A box that moves at constant velocity: ``position(t) = anchor_position + velocity * (t - anchor_time)``."""

    template: ObjectTemplate
    anchor_time: float
    anchor_position: np.ndarray  # (3,) global centre at anchor_time
    velocity: np.ndarray  # (3,) global, z = 0
    yaw: float  # heading of the box's length axis in the global frame

    def center(self, time: float) -> np.ndarray:
        return self.anchor_position + self.velocity * (time - self.anchor_time)

    @property
    def rotation(self) -> Quaternion:
        return Quaternion(axis=(0.0, 0.0, 1.0), angle=self.yaw)

    @property
    def is_moving(self) -> bool:
        return float(np.linalg.norm(self.velocity)) > 0.2


@dataclasses.dataclass(frozen=True)
class EgoTrajectory:
    """The ego car drives a circular arc at constant speed and yaw rate, starting at ``start`` with ``heading``."""

    start: np.ndarray  # (2,) global x, y
    heading: float
    speed: float
    yaw_rate: float

    def pose(self, time: float) -> tuple[np.ndarray, Quaternion]:
        """Ego-to-global translation (3,) (z = 0, on the ground like nuScenes ego poses) and rotation at ``time``."""
        turn = self.yaw_rate * time
        chord = self.speed * time * np.sinc(turn / (2 * math.pi))  # 2 v / w * sin(w t / 2), finite as w -> 0
        direction = self.heading + turn / 2
        translation = np.array(
            [self.start[0] + chord * math.cos(direction), self.start[1] + chord * math.sin(direction), 0.0]
        )
        return translation, Quaternion(axis=(0.0, 0.0, 1.0), angle=self.heading + turn)


@dataclasses.dataclass(frozen=True)
class StreetScene:
    ego: EgoTrajectory
    objects: tuple[StreetObject, ...]
    duration: float

    def boxes(self, time: float) -> OrientedBoxes:
        """The objects as global boxes at ``time``."""
        centers = np.stack([obj.center(time) for obj in self.objects])
        rotations = np.stack([obj.rotation.rotation_matrix for obj in self.objects])
        half_sizes = np.array([[obj.template.size[1], obj.template.size[0], obj.template.size[2]]
                               for obj in self.objects]) / 2
        return OrientedBoxes(centers, rotations, half_sizes)


def sample_street_scene(
    rng: np.random.Generator,
    duration: float,
    objects_per_class: int = 2,
    class_ranges: dict[str, float] | None = None,
) -> StreetScene:
    """Draw an ego trajectory and non-overlapping objects around it, every detection class ``objects_per_class``
    times (and each non-detection category once), placed within ``class_ranges`` (metres, keyed by category) of the
    ego car so that the detection benchmark keeps them."""
    ego = EgoTrajectory(
        start=rng.uniform(400.0, 1200.0, size=2),
        heading=rng.uniform(-math.pi, math.pi),
        speed=rng.uniform(2.0, 5.0),
        yaw_rate=rng.uniform(-0.06, 0.06),
    )
    check_times = np.arange(0.0, duration + 0.25, 0.25)
    ego_positions = np.stack([ego.pose(t)[0][:2] for t in check_times])
    placed: list[StreetObject] = []
    for category, template in OBJECT_TEMPLATES.items():
        count = objects_per_class if template.attributes is not None or category.startswith("movable") else 1
        reach = 0.6 * (class_ranges or {}).get(category, 30.0)
        for _ in range(count):
            for _attempt in range(200):
                candidate = _sample_object(rng, template, ego, duration, reach)
                if _is_clear(candidate, placed, check_times, ego_positions):
                    placed.append(candidate)
                    break
    return StreetScene(ego=ego, objects=tuple(placed), duration=duration)


def _sample_object(
    rng: np.random.Generator, template: ObjectTemplate, ego: EgoTrajectory, duration: float, reach: float
) -> StreetObject:
    anchor_time = rng.uniform(0.0, duration)
    ego_translation, ego_rotation = ego.pose(anchor_time)
    longitudinal = rng.uniform(-reach, reach)
    lateral = rng.choice([-1.0, 1.0]) * rng.uniform(3.5, max(reach, 4.0))
    center = ego_translation + ego_rotation.rotate(np.array([longitudinal, lateral, 0.0]))
    center[2] = template.size[2] / 2
    ego_heading = ego_rotation.yaw_pitch_roll[0]
    if template.max_speed > 0 and rng.random() < 0.6:
        if template.category.startswith(("human", "animal")):
            yaw = rng.uniform(-math.pi, math.pi)
        else:  # traffic drives along the road, either way
            yaw = ego_heading + rng.choice([0.0, math.pi]) + rng.normal(0.0, 0.1)
        speed = rng.uniform(0.3 * template.max_speed, template.max_speed)
        velocity = speed * np.array([math.cos(yaw), math.sin(yaw), 0.0])
    else:
        yaw = ego_heading + rng.choice([0.0, math.pi / 2, math.pi]) + rng.normal(0.0, 0.3)
        velocity = np.zeros(3)
    return StreetObject(template, anchor_time, center, velocity, float(yaw))


def _is_clear(
    candidate: StreetObject, placed: list[StreetObject], times: np.ndarray, ego_positions: np.ndarray
) -> bool:
    """No overlap with the ego car or with placed objects at any of ``times`` (bounding circles in the xy plane)."""
    radius = 0.5 * math.hypot(candidate.template.size[0], candidate.template.size[1])
    path = np.stack([candidate.center(t)[:2] for t in times])
    if np.min(np.linalg.norm(path - ego_positions, axis=1)) < radius + EGO_RADIUS + 1.0:
        return False
    for other in placed:
        other_radius = 0.5 * math.hypot(other.template.size[0], other.template.size[1])
        other_path = np.stack([other.center(t)[:2] for t in times])
        if np.min(np.linalg.norm(path - other_path, axis=1)) < radius + other_radius + 0.3:
            return False
    return True


# ----------------------------------------------------------------------------------------------------------------
# Sensors
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CameraFrame:
    """One rendered camera image: ``image`` (H, W, 3) uint8, ``depth`` (H, W) camera-z in metres (inf for sky),
    ``instance`` (H, W) object index / GROUND / NO_HIT, and per object the pixel counts ``visible`` (unoccluded) and
    ``footprint`` (all pixels the object would cover if nothing occluded it)."""

    image: np.ndarray
    depth: np.ndarray
    instance: np.ndarray
    visible: np.ndarray
    footprint: np.ndarray


@dataclasses.dataclass
class LidarSweep:
    """One LiDAR sweep: ``points`` (P, 5) float32 (x, y, z, intensity, ring) in the LIDAR_TOP frame and ``instance``
    (P,) object index or GROUND per point."""

    points: np.ndarray
    instance: np.ndarray


def sensor_to_global(
    scene: StreetScene, time: float, translation: tuple[float, float, float], rotation: Quaternion
) -> tuple[np.ndarray, np.ndarray]:
    """Sensor-to-global rotation (3, 3) and translation (3,) of a sensor mounted at (translation, rotation) on the ego
    car, at ``time``."""
    ego_translation, ego_rotation = scene.ego.pose(time)
    rotation_matrix = ego_rotation.rotation_matrix @ rotation.rotation_matrix
    return rotation_matrix, ego_rotation.rotate(np.asarray(translation)) + ego_translation


def render_camera(scene: StreetScene, channel: str, time: float, image_size: tuple[int, int]) -> CameraFrame:
    """Render camera ``channel`` at ``time`` with a pinhole model, pixel (u, v) sampling its centre (u + 0.5, v + 0.5)."""
    mount = CAMERA_MOUNTS[channel]
    width, height = image_size
    intrinsics = camera_intrinsics(mount, image_size)
    rotation, origin = sensor_to_global(scene, time, mount.translation, camera_rotation(mount.yaw_deg))
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    # Rays with unit camera-z, so the hit parameter t is the pixel's depth along the optical axis.
    camera_rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(intrinsics).T
    directions = camera_rays @ rotation.T
    boxes = scene.boxes(time)
    windows = _pixel_windows(boxes, rotation, origin, intrinsics, image_size)
    hits = cast_rays(origin, directions, boxes, box_windows=windows)
    image = _shade(scene, boxes, origin, directions, hits)
    visible = np.bincount(hits.instance[hits.instance >= 0], minlength=len(boxes))
    return CameraFrame(image, hits.distance, hits.instance, visible, hits.box_area)


def _pixel_windows(
    boxes: OrientedBoxes, rotation: np.ndarray, origin: np.ndarray, intrinsics: np.ndarray, image_size: tuple[int, int]
) -> list[tuple[slice, slice] | None]:
    """Per box, the pixel rectangle its projection covers (an empty one when it is behind the camera); ``None``
    (all pixels) when the box straddles the image plane and its projection is unbounded."""
    width, height = image_size
    corners = (boxes.corners() - origin) @ rotation  # (M, 8, 3) in the camera frame
    windows: list[tuple[slice, slice] | None] = []
    for box_corners in corners:
        depth = box_corners[:, 2]
        if np.all(depth <= 0.05):
            windows.append((slice(0, 0), slice(0, 0)))
            continue
        if np.any(depth <= 0.05):
            windows.append(None)
            continue
        pixels = box_corners @ intrinsics.T
        pixels = pixels[:, :2] / pixels[:, 2:]
        u0, v0 = np.clip(np.floor(pixels.min(axis=0)).astype(int) - 1, 0, [width, height])
        u1, v1 = np.clip(np.ceil(pixels.max(axis=0)).astype(int) + 1, 0, [width, height])
        windows.append((slice(v0, v1), slice(u0, u1)))
    return windows


def _shade(
    scene: StreetScene, boxes: OrientedBoxes, origin: np.ndarray, directions: np.ndarray, hits: RayHits
) -> np.ndarray:
    """Lambert-shaded colours: striped class colours on objects, a 2 m checkerboard on the ground, a sky gradient."""
    image = np.empty(directions.shape, dtype=np.float64)
    elevation = directions[..., 2] / np.linalg.norm(directions, axis=-1)
    image[:] = (np.array([0.55, 0.70, 0.90]) + 0.3 * np.clip(elevation, 0, 1)[..., None] * np.array([-0.3, -0.2, 0.1]))

    ground = hits.instance == GROUND
    points = origin + hits.distance[ground][:, None] * directions[ground]
    checker = (np.floor(points[:, 0] / 2.0) + np.floor(points[:, 1] / 2.0)) % 2
    distance_fade = np.exp(-hits.distance[ground] / 150.0)[:, None]
    asphalt = (0.33 + 0.07 * checker)[:, None] * np.array([1.0, 1.0, 1.02])
    image[ground] = asphalt * (0.35 + 0.65 * SUN_DIRECTION[2]) * distance_fade + (1 - distance_fade) * 0.6

    for index in np.unique(hits.instance[hits.instance >= 0]):
        mask = hits.instance == index
        points = origin + hits.distance[mask][:, None] * directions[mask]
        normals, local = box_face_coordinates(boxes, index, points)
        template = scene.objects[index].template
        stripes = 0.7 + 0.3 * (np.floor(local[:, 0] / template.stripe_period) % 2)
        top = (normals[:, 2] > 0.5) * 0.15
        lambert = 0.45 + 0.55 * np.clip(normals @ SUN_DIRECTION, 0.0, 1.0)
        image[mask] = np.array(template.color) * (stripes * lambert + top)[:, None]
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def lidar_ray_directions(azimuth_steps: int) -> np.ndarray:
    """(32, azimuth_steps, 3) unit directions of the LiDAR beams in the LIDAR_TOP frame; row r is ring r."""
    elevation = np.radians(LIDAR_ELEVATIONS_DEG)[:, None]
    azimuth = np.linspace(-math.pi, math.pi, azimuth_steps, endpoint=False)[None, :]
    return np.stack(
        np.broadcast_arrays(np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                            np.sin(elevation)),
        axis=-1,
    )


def render_lidar(scene: StreetScene, time: float, lidar_directions: np.ndarray) -> LidarSweep:
    """Cast one LiDAR sweep at ``time`` (the whole revolution at one instant: ego motion during the 50 ms revolution
    is not simulated)."""
    rotation, origin = sensor_to_global(scene, time, LIDAR_TRANSLATION, LIDAR_ROTATION)
    boxes = scene.boxes(time)
    hits = cast_rays(origin, lidar_directions @ rotation.T, boxes, max_distance=LIDAR_MAX_RANGE)
    keep = hits.instance != NO_HIT
    xyz = lidar_directions[keep] * hits.distance[keep][:, None]  # unit rays from the sensor origin
    ring = np.broadcast_to(np.arange(lidar_directions.shape[0])[:, None], hits.instance.shape)[keep]
    instance = hits.instance[keep]
    intensity_per_object = np.array([obj.template.intensity for obj in scene.objects] + [12.0])
    intensity = intensity_per_object[instance]  # GROUND (-1) picks the last entry
    points = np.concatenate([xyz, intensity[:, None], ring[:, None]], axis=1).astype(np.float32)
    return LidarSweep(points=points, instance=instance)
