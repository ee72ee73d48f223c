"""BEVDet / BEVDet4D 3D detection on the BEV trunk: configuration, model, CenterPoint targets and losses,
post-processing, and conversion of the released detectors."""

from .configuration_bevdet import DETECTION_PRESETS, SIX_TASKS, GeoMIMBEVDetectionConfig
from .modeling_bevdet import GeoMIMBEVDetectionOutput, GeoMIMBEVDetectionPreTrainedModel, GeoMIMForBEVDetection

__all__ = [
    "DETECTION_PRESETS",
    "GeoMIMBEVDetectionConfig",
    "GeoMIMBEVDetectionOutput",
    "GeoMIMBEVDetectionPreTrainedModel",
    "GeoMIMForBEVDetection",
    "SIX_TASKS",
]
