"""The sensor rig of the synthetic nuScenes world: six cameras and LIDAR_TOP, placed as on the nuScenes Renault Zoe.

Extrinsics and intrinsics are rounded from the real ``calibrated_sensor`` records (log n015, 1600x900 images), so the
synthetic set has the overlaps, fields of view and mounting heights that models trained on nuScenes expect.
Frames follow nuScenes: ego x forward, y left, z up; camera x right, y down, z forward.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from pyquaternion import Quaternion

from ..nuscenes_constants import CAMERA_CHANNELS, LIDAR_CHANNEL

NUSCENES_IMAGE_SIZE = (1600, 900)  # (width, height) of the real camera images

# Rotation taking camera axes (x right, y down, z forward) to ego axes for a camera looking along ego +x.
_CAMERA_AXES_TO_EGO = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclasses.dataclass(frozen=True)
class CameraMount:
    channel: str
    yaw_deg: float  # optical-axis direction in the ego frame, counter-clockwise from ego +x
    translation: tuple[float, float, float]  # camera centre in the ego frame, metres
    focal: float  # at 1600x900
    principal_point: tuple[float, float]  # (cx, cy) at 1600x900


CAMERA_MOUNTS: dict[str, CameraMount] = {
    mount.channel: mount
    for mount in (
        CameraMount("CAM_FRONT", 0.0, (1.70, 0.016, 1.51), 1266.4, (816.3, 491.5)),
        CameraMount("CAM_FRONT_RIGHT", -55.0, (1.55, -0.49, 1.50), 1260.8, (807.9, 495.3)),
        CameraMount("CAM_BACK_RIGHT", -110.0, (1.05, -0.48, 1.56), 1259.5, (807.3, 501.2)),
        CameraMount("CAM_BACK", 180.0, (0.03, 0.01, 1.57), 809.2, (829.2, 481.8)),
        CameraMount("CAM_BACK_LEFT", 110.0, (1.04, 0.48, 1.56), 1256.7, (817.8, 451.9)),
        CameraMount("CAM_FRONT_LEFT", 55.0, (1.52, 0.49, 1.51), 1272.6, (826.6, 479.8)),
    )
}
assert set(CAMERA_MOUNTS) == set(CAMERA_CHANNELS)

# LIDAR_TOP: mounted at -90 degrees yaw (its x axis points to the car's right), 32 beams like the HDL-32E.
LIDAR_TRANSLATION = (0.943713, 0.0, 1.84023)
LIDAR_ROTATION = Quaternion(axis=(0.0, 0.0, 1.0), angle=-math.pi / 2)
LIDAR_ELEVATIONS_DEG = np.linspace(-30.67, 10.67, 32)
LIDAR_PERIOD_S = 0.05  # 20 Hz


def camera_rotation(yaw_deg: float) -> Quaternion:
    """Camera-to-ego rotation of a level camera whose optical axis has yaw ``yaw_deg`` in the ego frame."""
    yaw = Quaternion(axis=(0.0, 0.0, 1.0), angle=math.radians(yaw_deg))
    return yaw * Quaternion(matrix=_CAMERA_AXES_TO_EGO)


def camera_intrinsics(mount: CameraMount, image_size: tuple[int, int]) -> np.ndarray:
    """3x3 intrinsics of ``mount`` for images of ``image_size = (width, height)``.

    The 1600x900 camera is scaled to the target width and anchored at the bottom row, the way BEVDet-style pipelines
    resize and then crop away the sky: a 704x256 image shows what a 704x396 resize of the real image shows below its
    top 140 rows.
    """
    width, height = image_size
    scale = width / NUSCENES_IMAGE_SIZE[0]
    cx, cy = mount.principal_point
    return np.array(
        [
            [mount.focal * scale, 0.0, cx * scale],
            [0.0, mount.focal * scale, height - (NUSCENES_IMAGE_SIZE[1] - cy) * scale],
            [0.0, 0.0, 1.0],
        ]
    )


def camera_trigger_offset_s(mount: CameraMount) -> float:
    """Capture time of a camera relative to the LIDAR_TOP key frame.

    nuScenes triggers each camera when the spinning LiDAR sweeps across the camera's field of view, so the six images
    of a sample are taken within one 50 ms LiDAR revolution; a loader must use each image's own ego pose.
    """
    turn = (-math.radians(mount.yaw_deg)) % (2 * math.pi) / (2 * math.pi)
    return LIDAR_PERIOD_S * (turn - 0.5)


__all__ = [
    "CAMERA_MOUNTS",
    "CameraMount",
    "LIDAR_CHANNEL",
    "LIDAR_ELEVATIONS_DEG",
    "LIDAR_PERIOD_S",
    "LIDAR_ROTATION",
    "LIDAR_TRANSLATION",
    "NUSCENES_IMAGE_SIZE",
    "camera_intrinsics",
    "camera_rotation",
    "camera_trigger_offset_s",
]
