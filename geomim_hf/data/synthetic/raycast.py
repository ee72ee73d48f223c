"""Exact ray casting against a ground plane and oriented boxes: the one renderer behind the synthetic cameras and LiDAR.

A camera image is a ray per pixel, a LiDAR sweep a ray per (beam, azimuth); both take the nearest hit, so occlusion
between objects, and of the ground by objects, is exact (a z-buffer evaluated analytically instead of rasterised).
"""

from __future__ import annotations

import dataclasses

import numpy as np

GROUND = -1  # instance id of a ground hit
NO_HIT = -2  # instance id of a ray that hits nothing within range


@dataclasses.dataclass(frozen=True)
class OrientedBoxes:
    """M boxes in one frame: ``centers`` (M, 3), ``rotations`` (M, 3, 3) box-to-frame, ``half_sizes`` (M, 3).

    Box axes: x along the length, y along the width, z up (the nuScenes ``Box`` convention).
    """

    centers: np.ndarray
    rotations: np.ndarray
    half_sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.centers)

    def corners(self) -> np.ndarray:
        """(M, 8, 3) corners in the frame of the boxes."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
        local = signs[None] * self.half_sizes[:, None, :]  # (M, 8, 3)
        return np.einsum("mij,mkj->mki", self.rotations, local) + self.centers[:, None, :]


@dataclasses.dataclass
class RayHits:
    """Nearest hit of each ray, in the leading shape S of the ray directions.

    ``distance``: ray parameter t of the hit (np.inf for a miss), so the hit point is ``origin + t * direction``;
    ``instance``: index of the box hit, ``GROUND`` or ``NO_HIT``;
    ``box_area``: per box, the number of rays that cross it whether or not something nearer occludes it (the
    denominator of a visibility fraction).
    """

    distance: np.ndarray
    instance: np.ndarray
    box_area: np.ndarray


def slab_intersection(
    origin: np.ndarray, directions: np.ndarray, half_size: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit parameters (t_near, t_far) of rays through an axis-aligned box centred at 0.

    origin (3,) and directions (..., 3) are in the box frame. The ray misses where t_far < t_near.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = 1.0 / directions
        t_low = (-half_size - origin) * inverse
        t_high = (half_size - origin) * inverse
    t_near = np.nanmax(np.minimum(t_low, t_high), axis=-1)
    t_far = np.nanmin(np.maximum(t_low, t_high), axis=-1)
    return t_near, t_far


def cast_rays(
    origin: np.ndarray,
    directions: np.ndarray,
    boxes: OrientedBoxes,
    max_distance: float = np.inf,
    box_windows: list[tuple[slice, ...] | None] | None = None,
    ground_plane: bool = True,
) -> RayHits:
    """Cast rays from one ``origin`` (3,) along ``directions`` (*S, 3) against the plane z = 0 (if ``ground_plane``)
    and the outside of ``boxes``.

    ``box_windows`` optionally restricts box m to the rays ``directions[box_windows[m]]`` (for a camera, the pixel
    rectangle the box projects into), which is where almost all of the rendering time would otherwise go; ``None``
    for a box means all rays.
    """
    with np.errstate(divide="ignore"):
        ground_t = np.where(ground_plane & (directions[..., 2] < 0), -origin[2] / directions[..., 2], np.inf)
    distance = np.where(ground_t <= max_distance, ground_t, np.inf)
    instance = np.where(np.isfinite(distance), GROUND, NO_HIT).astype(np.int32)
    box_area = np.zeros(len(boxes), dtype=np.int64)
    for index in range(len(boxes)):
        window = (box_windows[index] if box_windows is not None else None) or (...,)
        rotation = boxes.rotations[index]
        local_origin = (origin - boxes.centers[index]) @ rotation  # R^T (o - c) with row vectors
        local_directions = directions[window] @ rotation
        t_near, t_far = slab_intersection(local_origin, local_directions, boxes.half_sizes[index])
        t_box = np.where((t_far >= t_near) & (t_near > 1e-6) & (t_near <= max_distance), t_near, np.inf)
        box_area[index] = np.count_nonzero(np.isfinite(t_box))
        nearer = t_box < distance[window]
        distance[window] = np.where(nearer, t_box, distance[window])
        instance[window] = np.where(nearer, index, instance[window])
    return RayHits(distance=distance, instance=instance, box_area=box_area)


def box_face_coordinates(
    boxes: OrientedBoxes, index: int, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For points (P, 3) on the surface of box ``index``: the hit face's normal in the frame of the boxes (P, 3) and
    the points in the box frame (P, 3), used for shading and texturing."""
    local = (points - boxes.centers[index]) @ boxes.rotations[index]
    relative = np.abs(local) / boxes.half_sizes[index]
    axis = np.argmax(relative, axis=-1)
    normal_local = np.zeros_like(local)
    normal_local[np.arange(len(local)), axis] = np.sign(local[np.arange(len(local)), axis])
    return normal_local @ boxes.rotations[index].T, local
