"""BEVDet / BEVDet4D 3D detection on the GeoMIM Swin encoder: configuration, model, CenterPoint targets and losses,
post-processing, and conversion of the released detectors."""

from .configuration_bevdet import SIX_TASKS, GeoMIMBEVDetectionConfig
from .modeling_bevdet import GeoMIMBEVDetectionOutput, GeoMIMBEVDetectionPreTrainedModel, GeoMIMForBEVDetection

__all__ = [
    "GeoMIMBEVDetectionConfig",
    "GeoMIMBEVDetectionOutput",
    "GeoMIMBEVDetectionPreTrainedModel",
    "GeoMIMForBEVDetection",
    "SIX_TASKS",
]
