"""GeoMIM Swin encoder: configuration, model, backbone, checkpoint conversion, and GeoMIM pretraining."""

from .configuration_geomim import GeoMIMConfig
from .configuration_geomim_pretraining import GeoMIMPretrainingConfig
from .modeling_geomim import GeoMIMBackbone, GeoMIMModel, GeoMIMModelOutput, GeoMIMPreTrainedModel
from .modeling_geomim_pretraining import (
    GeoMIMForPretraining,
    GeoMIMForPretrainingOutput,
    bev_cosine_similarity,
    normalize_bev_target,
)

__all__ = [
    "GeoMIMBackbone",
    "GeoMIMConfig",
    "GeoMIMForPretraining",
    "GeoMIMForPretrainingOutput",
    "GeoMIMModel",
    "GeoMIMModelOutput",
    "GeoMIMPreTrainedModel",
    "GeoMIMPretrainingConfig",
    "bev_cosine_similarity",
    "normalize_bev_target",
]
