"""Configuration of the BEV trunk that every BEV head of the package stands on (BEVDet's image-to-BEV side)."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

from ...geometry import BEVGrid

# The view transforms and BEV encoders a trunk can be built with (the modules are in `modeling_bev`).
VIEW_TRANSFORM_TYPES = ("lss",)
BEV_ENCODER_TYPES = ("resnet",)

# What a checkpoint's weights cannot tell about a trunk: its geometry and input size.
GEOMETRY_FIELDS = ("image_size", "feature_stride", "grid_x", "grid_y", "grid_z", "depth_bins",
                   "legacy_voxel_truncation")

BEV_PRESETS: dict[str, dict] = {
    # GeoMIM's headline detector (bevdet-swinb-4d-256x704-cbgs-geomim.py): BEVDet4D on GeoMIM Swin-B, 0.8 m grid,
    # 59 depth bins, BEVDet's .long() voxel indexing; stochastic depth 0.2 when finetuning.
    "bevdet4d-swinb-256x704": {
        "image_size": [256, 704], "feature_stride": 16, "grid_x": [-51.2, 51.2, 0.8], "grid_y": [-51.2, 51.2, 0.8],
        "grid_z": [-5.0, 3.0, 8.0], "depth_bins": [1.0, 60.0, 1.0], "legacy_voxel_truncation": True,
        "encoder_config": {"drop_path_rate": 0.2},
    },
    # A single-frame trunk with a small Swin that trains on a CPU in minutes: 128 x 352 images, a 1.6 m grid, 2 m
    # depth bins.
    "tiny": {
        "image_size": [128, 352], "feature_stride": 16, "grid_x": [-51.2, 51.2, 1.6], "grid_y": [-51.2, 51.2, 1.6],
        "grid_z": [-5.0, 3.0, 8.0], "depth_bins": [1.0, 61.0, 2.0], "legacy_voxel_truncation": False,
        "encoder_config": {"embed_dim": 32, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8],
                           "window_size": [8, 8, 8, 4]},
        "image_neck_channels": 64, "context_channels": 32, "num_previous_frames": 0, "bev_encoder_blocks": [1, 1, 1],
        "bev_encoder_channels": [32, 64, 128], "bev_neck_channels": 64,
    },
}
# Encoder settings that are training choices, not architecture: a preset applies them to a pretrained encoder too.
ENCODER_TRAINING_FIELDS = ("drop_path_rate",)


@strict
class GeoMIMBEVConfig(PreTrainedConfig):
    r"""
    Configuration of [`GeoMIMBEVModel`], the camera-to-BEV trunk of BEVDet / BEVDet4D as GeoMIM finetunes it
    (`bevdet-swinb-4d-256x704-cbgs-geomim.py`, whose values are the defaults):

    encoder (two feature maps, strides 16 and 32) -> FPN_LSS image neck -> view transform (`lss`: one 1x1 conv to
    depth logits and context, softmax over depth, BEV pooling, z collapsed) -> temporal fusion (BEVDet4D: a
    `pre_process` residual net on every frame, [key, previous] concatenated) -> BEV encoder (`resnet`: CustomResNet +
    FPN_LSS).

    Args:
        encoder_config (`PreTrainedConfig` or `dict`, *optional*):
            The image encoder, built with `AutoBackbone`: the GeoMIM Swin (`GeoMIMConfig`) by default, or any backbone
            whose two `out_features` maps are at strides `feature_stride` and `2 * feature_stride`.
        image_size (`list[int]`, *optional*, defaults to `[256, 704]`):
            Network input (height, width); fixes the frustum. Both must be multiples of `2 * feature_stride`.
        feature_stride (`int`, *optional*, defaults to 16):
            Stride of the image features that are lifted (BEVDet's `downsample`).
        image_neck_channels (`int`, *optional*, defaults to 256):
            Output channels of the FPN_LSS image neck.
        view_transform_type (`str`, *optional*, defaults to `"lss"`):
            The depth net of the view transform: `"lss"` is BEVDet's single 1x1 convolution.
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
            Residual blocks of BEVDet4D's per-frame `pre_process` net (stride 1, as wide as the lifted BEV).
        bev_encoder_type (`str`, *optional*, defaults to `"resnet"`):
            The BEV encoder: `"resnet"` is BEVDet's CustomResNet and FPN_LSS neck on the z-collapsed map.
        bev_encoder_blocks (`list[int]`, *optional*, defaults to `[2, 2, 2]`):
            Residual blocks per stage of the BEV encoder; each stage starts with a stride-2 block.
        bev_encoder_channels (`list[int]`, *optional*, defaults to `[160, 320, 640]`):
            Channels per BEV encoder stage.
        bev_neck_channels (`int`, *optional*, defaults to 256):
            Channels of the trunk's output, the BEV features (the FPN_LSS BEV neck fuses the first and last stage and
            upsamples back to the grid).
    """

    model_type = "geomim_bev"
    base_config_key = "bev_config"  # a head's config holds the trunk's there: its folders load as a trunk too
    sub_configs_defaults = {"encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="geomim")}

    encoder_config: dict | PreTrainedConfig | None = None
    image_size: list[int] | tuple[int, ...] = (256, 704)
    feature_stride: int = 16
    image_neck_channels: int = 256
    view_transform_type: str = "lss"
    grid_x: list[float] | tuple[float, ...] = (-51.2, 51.2, 0.8)
    grid_y: list[float] | tuple[float, ...] = (-51.2, 51.2, 0.8)
    grid_z: list[float] | tuple[float, ...] = (-5.0, 3.0, 8.0)
    depth_bins: list[float] | tuple[float, ...] = (1.0, 60.0, 1.0)
    legacy_voxel_truncation: bool = False
    context_channels: int = 80
    num_previous_frames: int = 1
    pre_process_blocks: int = 2
    bev_encoder_type: str = "resnet"
    bev_encoder_blocks: list[int] | tuple[int, ...] = (2, 2, 2)
    bev_encoder_channels: list[int] | tuple[int, ...] = (160, 320, 640)
    bev_neck_channels: int = 256
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in ("image_size", "grid_x", "grid_y", "grid_z", "depth_bins", "bev_encoder_blocks",
                     "bev_encoder_channels"):
            setattr(self, name, list(getattr(self, name)))
        self.validate_trunk_settings()

    @classmethod
    def from_preset(cls, name: str, encoder_config: PreTrainedConfig | None = None, **overrides) -> "GeoMIMBEVConfig":
        """The trunk of a named preset (`BEV_PRESETS`), with `overrides` of its fields. Given a (pretrained)
        `encoder_config`, the trunk keeps that encoder's architecture and takes only the preset's training settings
        for it (stochastic depth)."""
        if name not in BEV_PRESETS:
            raise ValueError(f"unknown BEV preset {name!r}; known: {sorted(BEV_PRESETS)}")
        settings = {**BEV_PRESETS[name], **overrides}
        encoder_settings = settings.pop("encoder_config")
        if encoder_config is not None:
            training = {key: value for key, value in encoder_settings.items() if key in ENCODER_TRAINING_FIELDS}
            encoder_settings = encoder_config.to_dict() | training
        return cls(encoder_config=encoder_settings, **settings)

    @property
    def grid(self) -> BEVGrid:
        return BEVGrid(x=tuple(self.grid_x), y=tuple(self.grid_y), z=tuple(self.grid_z),
                       depth=tuple(self.depth_bins), legacy_truncation=self.legacy_voxel_truncation)

    @property
    def lifted_channels(self) -> int:
        """Channels of one frame's BEV map after the view transform: the context of every z cell, stacked."""
        return self.context_channels * self.grid.num_z

    @property
    def bev_input_channels(self) -> int:
        """Channels entering the BEV encoder: the lifted maps of every frame, concatenated."""
        return self.lifted_channels * (1 + self.num_previous_frames)

    def validate_trunk_settings(self) -> None:
        grid = self.grid  # validates the axes
        height, width = self.image_size
        # The image neck upsamples the stride-2s map by 2 onto the stride-s map: both sizes must divide exactly.
        multiple = 2 * self.feature_stride
        if len(self.image_size) != 2 or height % multiple or width % multiple:
            raise ValueError(f"image_size {self.image_size} must be (height, width), multiples of 2 x feature_stride "
                             f"= {multiple}")
        out_features = getattr(self.encoder_config, "out_features", None)
        if out_features is None or len(out_features) != 2:
            raise ValueError(f"the image neck fuses two encoder maps (strides {self.feature_stride} and "
                             f"{2 * self.feature_stride}); encoder_config.out_features is {out_features}")
        if self.view_transform_type not in VIEW_TRANSFORM_TYPES:
            raise ValueError(f"view_transform_type must be one of {VIEW_TRANSFORM_TYPES}, got "
                             f"{self.view_transform_type!r}")
        if self.bev_encoder_type not in BEV_ENCODER_TYPES:
            raise ValueError(f"bev_encoder_type must be one of {BEV_ENCODER_TYPES}, got {self.bev_encoder_type!r}")
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


__all__ = ["BEV_ENCODER_TYPES", "BEV_PRESETS", "GEOMETRY_FIELDS", "GeoMIMBEVConfig", "VIEW_TRANSFORM_TYPES"]
