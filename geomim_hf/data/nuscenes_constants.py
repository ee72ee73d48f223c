"""Names that the nuScenes devkit, the detection benchmark and the model code must agree on.

Everything here is fixed by the nuScenes v1.0 release and the ``detection_cvpr_2019`` benchmark; see the devkit's
``docs/schema_nuscenes.md`` and ``python-sdk/nuscenes/eval/detection/README.md``.
"""

from __future__ import annotations

# Camera order used everywhere in geomim_hf: the order of mmdet3d/BEVDet info files, so that camera index i of a
# batch ``(B, N_cams, 3, H, W)`` always means the same physical camera.
CAMERA_CHANNELS: tuple[str, ...] = (
    "CAM_FRONT_LEFT",
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_LEFT",
    "CAM_BACK",
    "CAM_BACK_RIGHT",
)
LIDAR_CHANNEL = "LIDAR_TOP"

DETECTION_CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)

# nuScenes category -> detection class; categories not listed are ignored by the detection benchmark.
CATEGORY_TO_DETECTION_CLASS: dict[str, str] = {
    "vehicle.car": "car",
    "vehicle.truck": "truck",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.trailer": "trailer",
    "vehicle.construction": "construction_vehicle",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "vehicle.motorcycle": "motorcycle",
    "vehicle.bicycle": "bicycle",
    "movable_object.trafficcone": "traffic_cone",
    "movable_object.barrier": "barrier",
}

# The 23 categories of nuScenes v1.0, in the order of the release's category.json.
CATEGORIES: tuple[str, ...] = (
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.wheelchair",
    "human.pedestrian.stroller",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.construction_worker",
    "animal",
    "vehicle.car",
    "vehicle.motorcycle",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.truck",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.trailer",
    "movable_object.barrier",
    "movable_object.trafficcone",
    "movable_object.pushable_pullable",
    "movable_object.debris",
    "static_object.bicycle_rack",
)

ATTRIBUTES: tuple[str, ...] = (
    "vehicle.moving",
    "vehicle.stopped",
    "vehicle.parked",
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.moving",
    "pedestrian.standing",
    "pedestrian.sitting_lying_down",
)

# Visibility tokens "1".."4": fraction of the object visible over all six images.
VISIBILITY_LEVELS: tuple[str, ...] = ("v0-40", "v40-60", "v60-80", "v80-100")

# Map masks of the four nuScenes locations: map token (also the PNG's file stem) per location.
MAP_TOKENS: dict[str, str] = {
    "singapore-onenorth": "53992ee3023e5494b90c316c183be829",
    "singapore-hollandvillage": "37819e65e09e5547b8a3ceaefba56bb2",
    "singapore-queenstown": "93406b464a165eaba6d9de76ca09f5da",
    "boston-seaport": "36092f0b03a857c6a3403e25b4b7aab3",
}
