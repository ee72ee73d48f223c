"""GeoMIM's LiDAR teacher: hard voxelisation and bevfusion's SparseEncoder (spconv 2.x), its checkpoint conversion,
and the cache of precomputed BEV targets."""

from .configuration_lidar_teacher import GeoMIMLidarTeacherConfig
from .modeling_lidar_teacher import (
    GeoMIMLidarTeacher,
    GeoMIMLidarTeacherOutput,
    GeoMIMLidarTeacherPreTrainedModel,
    hard_voxelize,
    random_lidar_teacher,
)
from .target_cache import MissingTargetError, TeacherMismatchError, TeacherTargetCache

__all__ = [
    "GeoMIMLidarTeacher",
    "GeoMIMLidarTeacherConfig",
    "GeoMIMLidarTeacherOutput",
    "GeoMIMLidarTeacherPreTrainedModel",
    "MissingTargetError",
    "TeacherMismatchError",
    "TeacherTargetCache",
    "hard_voxelize",
    "random_lidar_teacher",
]
