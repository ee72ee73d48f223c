"""Configuration of the BEVDet / BEVDet4D detector on the GeoMIM Swin encoder."""

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

from ...data.nuscenes_constants import DETECTION_CLASSES
from ...geometry import BEVGrid
from ..geomim.configuration_geomim import GeoMIMConfig

# The 6-task split of CenterPoint (BEVDet's stereo configs); its classes concatenate to DETECTION_CLASSES.
SIX_TASKS = (
    ("car",),
    ("truck", "construction_vehicle"),
    ("bus", "trailer"),
    ("barrier",),
    ("motorcycle", "bicycle"),
    ("pedestrian", "traffic_cone"),
)


@strict
class GeoMIMBEVDetectionConfig(PreTrainedConfig):
    r"""
    Configuration of [`GeoMIMForBEVDetection`]: BEVDet (single frame) or BEVDet4D (with the previous key frame) on a
    GeoMIM Swin encoder, as in GeoMIM's `bevdet-swinb-4d-256x704-cbgs-geomim.py`, whose values are the defaults:

    encoder (stride-16 and stride-32 maps) -> FPN_LSS image neck -> LSS view transform (one 1x1 conv to depth logits
    and context, softmax over depth, BEV pooling, z collapsed) -> [BEVDet4D: `pre_process` residual layer on each
    frame, [key, previous] concatenated] -> CustomResNet + FPN_LSS BEV encoder -> CenterPoint head.

    Args:
        encoder_config (`GeoMIMConfig` or `dict`, *optional*):
            The Swin encoder; its `out_features` must be the two maps the image neck fuses (strides 16 and 32).
        image_size (`list[int]`, *optional*, defaults to `[256, 704]`):
            Network input (height, width); fixes the frustum. Both must be multiples of `2 * feature_stride`.
        feature_stride (`int`, *optional*, defaults to 16):
            Stride of the image features that are lifted (BEVDet's `downsample`).
        image_neck_channels (`int`, *optional*, defaults to 256):
            Output channels of the FPN_LSS image neck.
        grid_x, grid_y, grid_z, depth_bins (`list[float]`, *optional*):
            `(start, stop, step)` in metres of the BEV grid and of the depth bins (BEVDet: 0.8 m cells over
            [-51.2, 51.2), one z cell over [-5, 3), 59 depth bins over [1, 60)).
        legacy_voxel_truncation (`bool`, *optional*, defaults to `False`):
            Index BEV cells with BEVDet's `.long()`, which truncates toward zero and so also pools frustum points up to
            one cell below each lower bound (with BEVDet's z range: from 13 m below the ego). The released detectors
            were trained this way and need it; new models should leave it off.
        context_channels (`int`, *optional*, defaults to 80):
            Context channels lifted into the BEV (`numC_Trans`).
        num_previous_frames (`int`, *optional*, defaults to 1):
            0 for single-frame BEVDet; 1 for BEVDet4D with the previous key frame aligned in the view transform.
        pre_process_blocks (`int`, *optional*, defaults to 2):
            Residual blocks of BEVDet4D's per-frame `pre_process` net (stride 1, `context_channels` wide).
        bev_encoder_blocks (`list[int]`, *optional*, defaults to `[2, 2, 2]`):
            Residual blocks per stage of the CustomResNet BEV encoder; each stage starts with a stride-2 block.
        bev_encoder_channels (`list[int]`, *optional*, defaults to `[160, 320, 640]`):
            Channels per BEV encoder stage.
        bev_neck_channels (`int`, *optional*, defaults to 256):
            Output channels of the FPN_LSS BEV neck (which fuses the first and last stage and upsamples back to the
            grid).
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
    sub_configs_defaults = {"encoder_config": SubConfigSpec(config_class=GeoMIMConfig)}

    encoder_config: dict | GeoMIMConfig | None = None
    image_size: list[int] | tuple[int, ...] = (256, 704)
    feature_stride: int = 16
    image_neck_channels: int = 256
    grid_x: list[float] | tuple[float, ...] = (-51.2, 51.2, 0.8)
    grid_y: list[float] | tuple[float, ...] = (-51.2, 51.2, 0.8)
    grid_z: list[float] | tuple[float, ...] = (-5.0, 3.0, 8.0)
    depth_bins: list[float] | tuple[float, ...] = (1.0, 60.0, 1.0)
    legacy_voxel_truncation: bool = False
    context_channels: int = 80
    num_previous_frames: int = 1
    pre_process_blocks: int = 2
    bev_encoder_blocks: list[int] | tuple[int, ...] = (2, 2, 2)
    bev_encoder_channels: list[int] | tuple[int, ...] = (160, 320, 640)
    bev_neck_channels: int = 256
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
        super().__post_init__(**kwargs)
        for name in ("image_size", "grid_x", "grid_y", "grid_z", "depth_bins", "bev_encoder_blocks",
                     "bev_encoder_channels", "code_weights", "post_center_range", "nms_rescale_factors"):
            setattr(self, name, list(getattr(self, name)))
        self.tasks = [list(task) for task in self.tasks]
        num_tasks = len(self.tasks)
        if self.nms_types is None:
            self.nms_types = ["rotate"] * num_tasks
        if self.nms_thresholds is None:
            self.nms_thresholds = [0.2] * num_tasks
        self.nms_types, self.nms_thresholds = list(self.nms_types), list(self.nms_thresholds)
        self.validate_detection_settings()

    @property
    def class_names(self) -> list[str]:
        """Label order of the model: the tasks' classes, concatenated."""
        return [name for task in self.tasks for name in task]

    @property
    def grid(self) -> BEVGrid:
        return BEVGrid(x=tuple(self.grid_x), y=tuple(self.grid_y), z=tuple(self.grid_z),
                       depth=tuple(self.depth_bins), legacy_truncation=self.legacy_voxel_truncation)

    @property
    def bev_input_channels(self) -> int:
        """Channels entering the BEV encoder: the lifted context of every frame, concatenated."""
        return self.context_channels * self.grid.num_z * (1 + self.num_previous_frames)

    def validate_detection_settings(self) -> None:
        grid = self.grid  # validates the axes
        height, width = self.image_size
        # The image neck upsamples the stride-2s map by 2 onto the stride-s map: both sizes must divide exactly.
        multiple = 2 * self.feature_stride
        if len(self.image_size) != 2 or height % multiple or width % multiple:
            raise ValueError(f"image_size {self.image_size} must be (height, width), multiples of 2 x feature_stride "
                             f"= {multiple}")
        if len(self.encoder_config.out_features) != 2:
            raise ValueError(f"the image neck fuses two encoder maps (strides 16 and 32); encoder_config.out_features "
                             f"is {self.encoder_config.out_features}")
        if self.num_previous_frames not in (0, 1):
            raise ValueError(f"num_previous_frames must be 0 (BEVDet) or 1 (BEVDet4D), got {self.num_previous_frames}")
        if len(self.bev_encoder_blocks) != len(self.bev_encoder_channels) or len(self.bev_encoder_blocks) < 2:
            raise ValueError(f"bev_encoder_blocks {self.bev_encoder_blocks} and bev_encoder_channels "
                             f"{self.bev_encoder_channels} need one entry per stage, at least two stages")
        # The BEV neck upsamples the last stage to the first (2 ** (stages - 1)) and then by 2 back to the grid.
        reduction = 2 ** len(self.bev_encoder_blocks)
        if grid.num_x % reduction or grid.num_y % reduction:
            raise ValueError(f"the BEV grid ({grid.num_y} x {grid.num_x}) must be divisible by {reduction} for a "
                             f"{len(self.bev_encoder_blocks)}-stage BEV encoder")
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


# What a detector's weights cannot tell: geometry and image size (the converter's presets).
PRESET_GEOMETRY: dict[str, dict] = {
    # bevdet-swinb-4d-256x704-cbgs(-geomim).py: 0.8 m grid, 59 depth bins, BEVDet's .long() voxel indexing.
    "bevdet4d-swinb-256x704": {"image_size": [256, 704], "feature_stride": 16, "grid_x": [-51.2, 51.2, 0.8],
                               "grid_y": [-51.2, 51.2, 0.8], "grid_z": [-5.0, 3.0, 8.0],
                               "depth_bins": [1.0, 60.0, 1.0], "legacy_voxel_truncation": True},
    # Small enough to train on a CPU in minutes: 128 x 352 images, a 1.6 m grid, 2 m depth bins.
    "tiny": {"image_size": [128, 352], "feature_stride": 16, "grid_x": [-51.2, 51.2, 1.6],
             "grid_y": [-51.2, 51.2, 1.6], "grid_z": [-5.0, 3.0, 8.0], "depth_bins": [1.0, 61.0, 2.0],
             "legacy_voxel_truncation": False},
}

DETECTION_PRESETS: dict[str, dict] = {
    # GeoMIM's headline detector: BEVDet4D on GeoMIM Swin-B (stochastic depth 0.2 when finetuning).
    "bevdet4d-swinb-256x704": {**PRESET_GEOMETRY["bevdet4d-swinb-256x704"], "encoder_config": {"drop_path_rate": 0.2}},
    # A single-frame detector with a small Swin and BEVDepth-style depth supervision, for CPUs and tests.
    "tiny": {
        **PRESET_GEOMETRY["tiny"],
        "encoder_config": {"embed_dim": 32, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8],
                           "window_size": [8, 8, 8, 4]},
        "image_neck_channels": 64, "context_channels": 32, "num_previous_frames": 0,
        "bev_encoder_blocks": [1, 1, 1], "bev_encoder_channels": [32, 64, 128], "bev_neck_channels": 64,
        "head_channels": 32, "task_head_channels": 32, "depth_loss_weight": 3.0,
    },
}


def detection_config(preset: str, encoder_config: GeoMIMConfig | None = None, **overrides) -> GeoMIMBEVDetectionConfig:
    """The configuration of a named preset (`DETECTION_PRESETS`), optionally on a given (pretrained) encoder's
    configuration, which keeps its architecture and takes the preset's training settings (stochastic depth)."""
    if preset not in DETECTION_PRESETS:
        raise ValueError(f"unknown detection preset {preset!r}; known: {sorted(DETECTION_PRESETS)}")
    settings = dict(DETECTION_PRESETS[preset])
    encoder_settings = settings.pop("encoder_config")
    if encoder_config is not None:
        training_settings = {key: value for key, value in encoder_settings.items() if key == "drop_path_rate"}
        encoder_settings = encoder_config.to_dict() | training_settings
    return GeoMIMBEVDetectionConfig(encoder_config=GeoMIMConfig(**encoder_settings), **(settings | overrides))


__all__ = ["DETECTION_PRESETS", "GeoMIMBEVDetectionConfig", "PRESET_GEOMETRY", "SIX_TASKS", "detection_config"]
