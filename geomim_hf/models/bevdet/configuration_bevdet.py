"""Configuration of the BEVDet / BEVDet4D detector: the BEV trunk's configuration plus the CenterPoint head, its
targets, losses and decoding."""

import dataclasses

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

from ...data.nuscenes_constants import DETECTION_CLASSES
from ..bev.configuration_bev import GeoMIMBEVConfig

# The 6-task split of CenterPoint (BEVDet's stereo configs); its classes concatenate to DETECTION_CLASSES.
SIX_TASKS = (
    ("car",),
    ("truck", "construction_vehicle"),
    ("bus", "trailer"),
    ("barrier",),
    ("motorcycle", "bicycle"),
    ("pedestrian", "traffic_cone"),
)
# The trunk's fields, which a config.json written before the trunk existed (geomim_hf 0.1.0.dev0 at commit 73980e5)
# holds at its top level.
_TRUNK_FIELDS = frozenset(field.name for field in dataclasses.fields(GeoMIMBEVConfig)) - frozenset(
    field.name for field in dataclasses.fields(PreTrainedConfig))


@strict
class GeoMIMBEVDetectionConfig(PreTrainedConfig):
    r"""
    Configuration of [`GeoMIMForBEVDetection`]: BEVDet (single frame) or BEVDet4D (with the previous key frame) as in
    GeoMIM's `bevdet-swinb-4d-256x704-cbgs-geomim.py`, whose values are the defaults: the BEV trunk
    ([`GeoMIMBEVConfig`]) -> CenterPoint head.

    Args:
        bev_config (`GeoMIMBEVConfig` or `dict`, *optional*):
            The trunk: encoder, image neck, view transform, temporal fusion, BEV encoder. A config.json written before
            the trunk existed, with these fields at its top level, loads too.
        tasks (`list[list[str]]`, *optional*):
            Class names per CenterPoint task, concatenating to the label order of the model (one task of the ten
            nuScenes classes by default; `SIX_TASKS` is CenterPoint's split).
        head_channels (`int`, *optional*, defaults to 64):
            Channels of the head's shared conv (`share_conv_channel`).
        task_head_channels (`int`, *optional*, defaults to 64):
            Channels of every separate head's hidden conv (`head_conv`).
        head_final_kernel (`int`, *optional*, defaults to 3):
            Kernel of the separate heads' convolutions.
        heatmap_init_bias (`float`, *optional*, defaults to -2.19):
            Initial bias of the heatmap logits (a prior of about 0.1).
        gaussian_overlap (`float`, *optional*, defaults to 0.1), min_radius (`int`, *optional*, defaults to 2):
            Heatmap target radius: CenterNet's radius for this overlap, at least `min_radius` cells.
        max_objects (`int`, *optional*, defaults to 500):
            Boxes per sample and task that get regression targets.
        code_weights (`list[float]`, *optional*):
            Weights of the 10 regression channels (offset x, y, height, log l, w, h, sin, cos yaw, vx, vy).
        heatmap_loss_weight (`float`, *optional*, defaults to 1.0), bbox_loss_weight (`float`, *optional*,
        defaults to 0.25):
            Weights of the Gaussian focal loss and of the L1 box loss.
        depth_loss_weight (`float`, *optional*, defaults to 0.0):
            Weight of BEVDepth-style LiDAR supervision of the depth distribution (3.0 in BEVDepth); 0 turns it off.
        score_threshold (`float`, *optional*, defaults to 0.1):
            Decoding keeps boxes scoring above it.
        post_center_range (`list[float]`, *optional*, defaults to `[-61.2, -61.2, -10, 61.2, 61.2, 10]`):
            Decoding keeps box centres inside this (x, y, z) range.
        max_detections_per_task (`int`, *optional*, defaults to 500):
            Top-K of the decoder per task (`max_num`).
        nms_types (`list[str]`, *optional*):
            Per task, `"rotate"` (rotated-box IoU NMS in BEV) or `"circle"` (centre-distance NMS).
        nms_thresholds (`list[float]`, *optional*):
            Per task: IoU threshold of rotated NMS, or squared centre distance (m^2) of circle NMS.
        nms_pre_max_size (`int`, *optional*, defaults to 1000), nms_post_max_size (`int`, *optional*, defaults to
        500):
            Boxes entering and leaving NMS per task.
        nms_rescale_factors (`list[float]`, *optional*):
            Scale-NMS: per class (label order), box sizes are multiplied by this factor for NMS only.
    """

    model_type = "geomim_bevdet"
    sub_configs_defaults = {"bev_config": SubConfigSpec(config_class=GeoMIMBEVConfig)}

    bev_config: dict | GeoMIMBEVConfig | None = None
    tasks: list[list[str]] | tuple[tuple[str, ...], ...] = (DETECTION_CLASSES,)
    head_channels: int = 64
    task_head_channels: int = 64
    head_final_kernel: int = 3
    heatmap_init_bias: float = -2.19
    gaussian_overlap: float = 0.1
    min_radius: int = 2
    max_objects: int = 500
    code_weights: list[float] | tuple[float, ...] = (1.0,) * 10
    heatmap_loss_weight: float = 1.0
    bbox_loss_weight: float = 0.25
    depth_loss_weight: float = 0.0
    score_threshold: float = 0.1
    post_center_range: list[float] | tuple[float, ...] = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    max_detections_per_task: int = 500
    nms_types: list[str] | tuple[str, ...] | None = None
    nms_thresholds: list[float] | tuple[float, ...] | None = None
    nms_pre_max_size: int = 1000
    nms_post_max_size: int = 500
    nms_rescale_factors: list[float] | tuple[float, ...] = (1.0, 0.7, 0.7, 0.4, 0.55, 1.1, 1.0, 1.0, 1.5, 3.5)
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        flat_trunk = {name: kwargs.pop(name) for name in list(kwargs) if name in _TRUNK_FIELDS}
        if flat_trunk:
            if self.bev_config is not None:
                raise ValueError(f"the trunk's fields {sorted(flat_trunk)} belong in bev_config; give them there, not "
                                 f"next to it")
            self.bev_config = flat_trunk  # the layout of a config.json written before the trunk existed
        super().__post_init__(**kwargs)
        for name in ("code_weights", "post_center_range", "nms_rescale_factors"):
            setattr(self, name, list(getattr(self, name)))
        self.tasks = [list(task) for task in self.tasks]
        num_tasks = len(self.tasks)
        if self.nms_types is None:
            self.nms_types = ["rotate"] * num_tasks
        if self.nms_thresholds is None:
            self.nms_thresholds = [0.2] * num_tasks
        self.nms_types, self.nms_thresholds = list(self.nms_types), list(self.nms_thresholds)
        self.validate_detection_settings()

    @classmethod
    def from_preset(cls, name: str, encoder_config: PreTrainedConfig | None = None,
                    **overrides) -> "GeoMIMBEVDetectionConfig":
        """The detector of a named preset: `DETECTION_PRESETS[name]` on the trunk `BEV_PRESETS[name]`. `overrides`
        change fields of either (the trunk's go to `bev_config`); a (pretrained) `encoder_config` keeps its
        architecture and takes the preset's training settings (see [`GeoMIMBEVConfig.from_preset`])."""
        if name not in DETECTION_PRESETS:
            raise ValueError(f"unknown detection preset {name!r}; known: {sorted(DETECTION_PRESETS)}")
        trunk_overrides = {key: overrides.pop(key) for key in list(overrides) if key in _TRUNK_FIELDS}
        bev_config = GeoMIMBEVConfig.from_preset(name, encoder_config, **trunk_overrides)
        return cls(bev_config=bev_config, **{**DETECTION_PRESETS[name], **overrides})

    @property
    def class_names(self) -> list[str]:
        """Label order of the model: the tasks' classes, concatenated."""
        return [name for task in self.tasks for name in task]

    def validate_detection_settings(self) -> None:
        unknown = sorted(set(self.class_names) - set(DETECTION_CLASSES))
        if not self.tasks or any(not task for task in self.tasks) or unknown:
            raise ValueError(f"tasks must be non-empty lists of nuScenes detection classes {DETECTION_CLASSES}; "
                             f"got {self.tasks} (unknown: {unknown})")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"a class may belong to one task only: {self.tasks}")
        num_tasks = len(self.tasks)
        if len(self.nms_types) != num_tasks or len(self.nms_thresholds) != num_tasks:
            raise ValueError(f"nms_types {self.nms_types} and nms_thresholds {self.nms_thresholds} need one entry per "
                             f"task ({num_tasks})")
        if set(self.nms_types) - {"rotate", "circle"}:
            raise ValueError(f"nms_types must be 'rotate' or 'circle', got {self.nms_types}")
        if len(self.nms_rescale_factors) != len(self.class_names):
            raise ValueError(f"nms_rescale_factors needs one factor per class ({len(self.class_names)}), got "
                             f"{self.nms_rescale_factors}")
        if len(self.code_weights) != 10 or len(self.post_center_range) != 6:
            raise ValueError(f"code_weights needs 10 values and post_center_range 6, got {self.code_weights} and "
                             f"{self.post_center_range}")


# The head settings of each preset; its trunk is the BEV preset of the same name.
DETECTION_PRESETS: dict[str, dict] = {
    # GeoMIM's headline detector: BEVDet4D on GeoMIM Swin-B, one task of the ten classes.
    "bevdet4d-swinb-256x704": {},
    # A single-frame detector with a small Swin and BEVDepth-style depth supervision, for CPUs and tests.
    "tiny": {"head_channels": 32, "task_head_channels": 32, "depth_loss_weight": 3.0},
}

__all__ = ["DETECTION_PRESETS", "GeoMIMBEVDetectionConfig", "SIX_TASKS"]
