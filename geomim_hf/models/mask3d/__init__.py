"""Mask3D RGB-D ViT: configuration, encoder, depth pretraining head and backbone."""

from .configuration_mask3d import MASK3D_PRESETS, Mask3DConfig
from .modeling_mask3d import (
    Mask3DBackbone,
    Mask3DForDepthPretraining,
    Mask3DForDepthPretrainingOutput,
    Mask3DModel,
    Mask3DModelOutput,
    Mask3DPreTrainedModel,
)

__all__ = [
    "MASK3D_PRESETS",
    "Mask3DBackbone",
    "Mask3DConfig",
    "Mask3DForDepthPretraining",
    "Mask3DForDepthPretrainingOutput",
    "Mask3DModel",
    "Mask3DModelOutput",
    "Mask3DPreTrainedModel",
]
