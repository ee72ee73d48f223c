"""BEVDet / BEVDet4D 3D detection on the GeoMIM Swin encoder: configuration, model, CenterPoint targets and losses,
post-processing, and conversion of the released detectors."""

from .configuration_bevdet import DETECTION_PRESETS, SIX_TASKS, GeoMIMBEVDetectionConfig, detection_config
from .modeling_bevdet import GeoMIMBEVDetectionOutput, GeoMIMBEVDetectionPreTrainedModel, GeoMIMForBEVDetection

__all__ = [
    "DETECTION_PRESETS",
    "GeoMIMBEVDetectionConfig",
    "GeoMIMBEVDetectionOutput",
    "GeoMIMBEVDetectionPreTrainedModel",
    "GeoMIMForBEVDetection",
    "SIX_TASKS",
    "detection_config",
]
