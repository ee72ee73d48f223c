"""The BEV trunk under every BEV head: cameras (and previous frames) -> view transform -> temporal fusion -> BEV
encoder -> BEV features."""

from .configuration_bev import BEV_PRESETS, GeoMIMBEVConfig
from .modeling_bev import GeoMIMBEVModel, GeoMIMBEVModelOutput, GeoMIMBEVPreTrainedModel

__all__ = ["BEV_PRESETS", "GeoMIMBEVConfig", "GeoMIMBEVModel", "GeoMIMBEVModelOutput", "GeoMIMBEVPreTrainedModel"]
