"""GeoMIM Swin encoder: configuration, model, backbone and checkpoint conversion."""

from .configuration_geomim import GeoMIMConfig
from .modeling_geomim import GeoMIMBackbone, GeoMIMModel, GeoMIMModelOutput, GeoMIMPreTrainedModel

__all__ = ["GeoMIMBackbone", "GeoMIMConfig", "GeoMIMModel", "GeoMIMModelOutput", "GeoMIMPreTrainedModel"]
