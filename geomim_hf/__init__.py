"""GeoMIM and Mask3D pretraining for the HuggingFace ecosystem.

Importing the package registers its models and image processor with the transformers Auto classes, so that
`AutoModel.from_pretrained("geomim/swin-base")`, `AutoModelForPreTraining` (Mask3D), `AutoBackbone.from_config(...)` and
`AutoImageProcessor.from_pretrained(...)` resolve to them.
"""

from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel, AutoModelForPreTraining

from .data.image_processing_geomim import GeoMIMImageProcessor
from .models.bev import GeoMIMBEVConfig, GeoMIMBEVModel, GeoMIMBEVModelOutput
from .models.bevdet import GeoMIMBEVDetectionConfig, GeoMIMBEVDetectionOutput, GeoMIMForBEVDetection
from .models.geomim import (
    GeoMIMBackbone,
    GeoMIMConfig,
    GeoMIMForPretraining,
    GeoMIMModel,
    GeoMIMModelOutput,
    GeoMIMPreTrainedModel,
    GeoMIMPretrainingConfig,
)
from .models.lidar_teacher import (
    GeoMIMLidarTeacher,
    GeoMIMLidarTeacherConfig,
    GeoMIMLidarTeacherOutput,
    GeoMIMLidarTeacherPreTrainedModel,
    TeacherTargetCache,
)
from .models.mask3d import (
    Mask3DBackbone,
    Mask3DConfig,
    Mask3DForDepthPretraining,
    Mask3DForDepthPretrainingOutput,
    Mask3DModel,
    Mask3DModelOutput,
    Mask3DPreTrainedModel,
)

AutoConfig.register(GeoMIMConfig.model_type, GeoMIMConfig)
AutoModel.register(GeoMIMConfig, GeoMIMModel)
AutoBackbone.register(GeoMIMConfig, GeoMIMBackbone)
AutoImageProcessor.register(GeoMIMConfig, image_processor_classes={"pil": GeoMIMImageProcessor})
AutoConfig.register(GeoMIMBEVConfig.model_type, GeoMIMBEVConfig)
AutoModel.register(GeoMIMBEVConfig, GeoMIMBEVModel)
AutoImageProcessor.register(GeoMIMBEVConfig, image_processor_classes={"pil": GeoMIMImageProcessor})
AutoConfig.register(GeoMIMBEVDetectionConfig.model_type, GeoMIMBEVDetectionConfig)
AutoModel.register(GeoMIMBEVDetectionConfig, GeoMIMForBEVDetection)
AutoImageProcessor.register(GeoMIMBEVDetectionConfig, image_processor_classes={"pil": GeoMIMImageProcessor})
AutoConfig.register(GeoMIMLidarTeacherConfig.model_type, GeoMIMLidarTeacherConfig)
AutoModel.register(GeoMIMLidarTeacherConfig, GeoMIMLidarTeacher)
AutoConfig.register(Mask3DConfig.model_type, Mask3DConfig)
AutoModel.register(Mask3DConfig, Mask3DModel)
AutoModelForPreTraining.register(Mask3DConfig, Mask3DForDepthPretraining)
AutoBackbone.register(Mask3DConfig, Mask3DBackbone)
AutoConfig.register(GeoMIMPretrainingConfig.model_type, GeoMIMPretrainingConfig)
AutoModelForPreTraining.register(GeoMIMPretrainingConfig, GeoMIMForPretraining)

__all__ = [
    "GeoMIMBEVConfig",
    "GeoMIMBEVDetectionConfig",
    "GeoMIMBEVDetectionOutput",
    "GeoMIMBEVModel",
    "GeoMIMBEVModelOutput",
    "GeoMIMBackbone",
    "GeoMIMConfig",
    "GeoMIMForBEVDetection",
    "GeoMIMForPretraining",
    "GeoMIMImageProcessor",
    "GeoMIMLidarTeacher",
    "GeoMIMLidarTeacherConfig",
    "GeoMIMLidarTeacherOutput",
    "GeoMIMLidarTeacherPreTrainedModel",
    "GeoMIMModel",
    "GeoMIMModelOutput",
    "GeoMIMPreTrainedModel",
    "GeoMIMPretrainingConfig",
    "Mask3DBackbone",
    "Mask3DConfig",
    "Mask3DForDepthPretraining",
    "Mask3DForDepthPretrainingOutput",
    "Mask3DModel",
    "Mask3DModelOutput",
    "Mask3DPreTrainedModel",
    "TeacherTargetCache",
]
