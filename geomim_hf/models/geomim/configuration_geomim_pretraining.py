"""Configuration of GeoMIM pretraining: the encoder's `GeoMIMConfig` plus the neck, decoders, LSS projection and loss."""

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

from ...geometry import BEVGrid
from .configuration_geomim import GeoMIMConfig

Bound = list[float] | tuple[float, ...]


@strict
class GeoMIMPretrainingConfig(PreTrainedConfig):
    r"""
    Configuration of [`GeoMIMForPretraining`]: GeoMIM's masked multi-view pretraining (Liu et al., ICCV 2023, arXiv
    2303.11325), which teaches the multi-camera Swin encoder to reconstruct a frozen LiDAR detector's bird's-eye-view
    features. The defaults are the original Swin-Base setup (`pretrain/geomim_config/pretrain_base_50ep.yaml` and the
    class defaults of `SwinTransformerBEV` / `DepthLSSTransformGT` in Sense-X/GeoMIM);
    [`~GeoMIMPretrainingConfig.preset`] also offers `"large"` and a `"tiny"` model that trains on a CPU.

    Args:
        encoder_config (`dict` or [`GeoMIMConfig`], *optional*):
            The Swin encoder, which is what pretraining is for. Its outputs must be the last two stages (strides 16
            and 32), the default.
        decoder_hidden_size (`int`, *optional*, defaults to 512):
            Width of the neck output, the mask token, both decoder branches and the depth net.
        decoder_num_heads (`int`, *optional*, defaults to 16):
            Attention heads of the decoder blocks and the cross-view attention.
        decoder_depth (`int`, *optional*, defaults to 8):
            ViT blocks of the semantic branch.
        depth_decoder_depth (`int`, *optional*, defaults to 4):
            ViT blocks of the depth (geometry) branch.
        decoder_mlp_ratio (`float`, *optional*, defaults to 4.0):
            MLP width of the decoder blocks, the cross-view attention and the neck block, relative to their width.
        cross_view_blocks (`list[int]`, *optional*, defaults to `[1, 5]`):
            Semantic blocks after which a cross-view attention mixes the cameras, by image row.
        depth_branch_block (`int`, *optional*, defaults to 3):
            Semantic block whose output (after any cross-view attention) feeds the depth branch.
        depth_cross_view_blocks (`list[int]`, *optional*, defaults to `[1]`):
            Depth-branch blocks after which a cross-view attention runs.
        decoder_position_grid (`int`, *optional*, defaults to 7):
            Side of the fixed sin-cos decoder position embedding, resized bicubically to the stride-16 grid (MixMIM's
            7 x 7 for 224-pixel images).
        neck_window_size (`int`, *optional*, defaults to 7):
            Window of the Swin block that smooths the merged stride-16 map (the original's `SwinBlock` default, not the
            encoder's 16).
        camera_vector_size (`int`, *optional*, defaults to 22):
            Length of the per-camera vector of the camera-aware depth gate: 4 intrinsics, 6 image-augmentation terms,
            the 3 x 4 camera -> ego matrix.
        bev_channels (`int`, *optional*, defaults to 80):
            Context channels that the LSS projection splats into the BEV grid.
        bev_x_bound, bev_y_bound, bev_z_bound (`list[float]`, *optional*):
            `(start, stop, step)` in metres of the LSS grid in the LiDAR frame; defaults 0.3 m cells over
            [-54, 54) m and one z cell over [-10, 10) m (bevfusion's `DepthLSSTransformGT`).
        depth_bound (`list[float]`, *optional*, defaults to `[1.0, 60.0, 0.5]`):
            Depth bins of the frustum, in metres.
        bev_downsample (`int`, *optional*, defaults to 2):
            Stride of the convolutions after pooling (1 or 2); the result must have the teacher's BEV size.
        teacher_channels (`int`, *optional*, defaults to 256):
            Channels of the teacher's BEV map (the SparseEncoder's 128 channels x 2 z-slices).
        target_patch_size (`int`, *optional*, defaults to 18):
            Side of the BEV patches in which the teacher's features are standardised (18 x 18 on the 180 x 180 map).
        depth_loss_weight (`float`, *optional*, defaults to 0.01):
            Weight of the LiDAR depth supervision of the LSS depth distribution.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the decoder-side layers.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the decoder-side layer norms.

    Example:

    ```python
    >>> from geomim_hf import GeoMIMForPretraining, GeoMIMPretrainingConfig

    >>> config = GeoMIMPretrainingConfig()  # GeoMIM Swin-Base pretraining
    >>> tiny = GeoMIMPretrainingConfig.from_preset("tiny")  # trains on a CPU
    >>> model = GeoMIMForPretraining(tiny)

    ```
    """

    model_type = "geomim_pretraining"
    sub_configs_defaults = {"encoder_config": GeoMIMConfig}

    encoder_config: dict | GeoMIMConfig | None = None
    decoder_hidden_size: int = 512
    decoder_num_heads: int = 16
    decoder_depth: int = 8
    depth_decoder_depth: int = 4
    decoder_mlp_ratio: float | int = 4.0
    cross_view_blocks: list[int] | tuple[int, ...] = (1, 5)
    depth_branch_block: int = 3
    depth_cross_view_blocks: list[int] | tuple[int, ...] = (1,)
    decoder_position_grid: int = 7
    neck_window_size: int = 7
    camera_vector_size: int = 22
    bev_channels: int = 80
    bev_x_bound: Bound = (-54.0, 54.0, 0.3)
    bev_y_bound: Bound = (-54.0, 54.0, 0.3)
    bev_z_bound: Bound = (-10.0, 10.0, 20.0)
    depth_bound: Bound = (1.0, 60.0, 0.5)
    bev_downsample: int = 2
    teacher_channels: int = 256
    target_patch_size: int = 18
    depth_loss_weight: float = 0.01
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.cross_view_blocks = list(self.cross_view_blocks)
        self.depth_cross_view_blocks = list(self.depth_cross_view_blocks)
        for name in ("bev_x_bound", "bev_y_bound", "bev_z_bound", "depth_bound"):
            setattr(self, name, [float(value) for value in getattr(self, name)])
        self.bev_grid  # validates the bounds  # noqa: B018

        encoder = self.encoder_config
        if encoder.num_layers < 2 or encoder.out_features != encoder.stage_names[-2:]:
            raise ValueError(
                f"GeoMIM pretraining reads the encoder's last two stages; encoder_config.out_features must be "
                f"{encoder.stage_names[-2:]}, got {encoder.out_features}"
            )
        if not set(self.cross_view_blocks) <= set(range(self.decoder_depth)):
            raise ValueError(f"cross_view_blocks {self.cross_view_blocks} must index the {self.decoder_depth} blocks")
        if not 0 <= self.depth_branch_block < self.decoder_depth:
            raise ValueError(f"depth_branch_block {self.depth_branch_block} must index the {self.decoder_depth} blocks")
        if not set(self.depth_cross_view_blocks) <= set(range(self.depth_decoder_depth)):
            raise ValueError(
                f"depth_cross_view_blocks {self.depth_cross_view_blocks} must index the {self.depth_decoder_depth} "
                f"depth-branch blocks"
            )
        if self.decoder_hidden_size % self.decoder_num_heads:
            raise ValueError(
                f"decoder_hidden_size {self.decoder_hidden_size} is not divisible by {self.decoder_num_heads} heads"
            )
        if self.bev_downsample not in (1, 2):
            raise ValueError(f"bev_downsample must be 1 or 2 (the original's choices), got {self.bev_downsample}")
        x_cells, y_cells = self.bev_output_size
        if x_cells % self.target_patch_size or y_cells % self.target_patch_size:
            raise ValueError(
                f"the {x_cells} x {y_cells} BEV output does not split into target_patch_size "
                f"{self.target_patch_size} patches"
            )

    @property
    def bev_grid(self) -> BEVGrid:
        """The LSS grid in the LiDAR frame, with the frustum's depth bins."""
        return BEVGrid(x=tuple(self.bev_x_bound), y=tuple(self.bev_y_bound), z=tuple(self.bev_z_bound),
                       depth=tuple(self.depth_bound))

    @property
    def bev_output_size(self) -> tuple[int, int]:
        """(X, Y) cells of the reconstruction, which the teacher's BEV map must match: the grid after the strided
        convolution (kernel 3, padding 1)."""
        grid = self.bev_grid
        return tuple((cells - 1) // self.bev_downsample + 1 for cells in (grid.num_x, grid.num_y))

    @property
    def mask_stride(self) -> int:
        """Pixel stride of the grid the masks are drawn on: the encoder's last stage (32 for Swin)."""
        return self.encoder_config.patch_size * 2 ** (self.encoder_config.num_layers - 1)

    @property
    def feature_stride(self) -> int:
        """Pixel stride of the decoder and of the LSS feature map: the encoder's second-to-last stage (16 for Swin)."""
        return self.mask_stride // 2

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GeoMIMPretrainingConfig":
        """A named configuration of `PRETRAINING_PRESETS`, with `overrides` of its fields."""
        if name not in PRETRAINING_PRESETS:
            raise ValueError(f"unknown GeoMIM pretraining preset {name!r}; known: {sorted(PRETRAINING_PRESETS)}")
        return cls(**{**PRETRAINING_PRESETS[name], **overrides})


PRETRAINING_PRESETS: dict[str, dict] = {
    # The original Swin-B and Swin-L pretraining (pretrain/geomim_config/pretrain_{base,large}_50ep.yaml).
    "base": {},
    "large": {"encoder_config": {"embed_dim": 192, "num_heads": [6, 12, 24, 48]}},
    # About 0.7 M parameters with GeoMIM's full structure on a coarse 1.2 m grid, to train on a CPU. Its output,
    # 128 x 45 x 45 normalised in 9 x 9 patches, is the BEV map of the teacher preset "small_grid".
    "tiny": {
        "encoder_config": {"embed_dim": 16, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4],
                           "window_size": [8, 8, 8, 4], "image_size": 128},
        "decoder_hidden_size": 32, "decoder_num_heads": 2, "bev_channels": 16, "bev_x_bound": (-54.0, 54.0, 1.2),
        "bev_y_bound": (-54.0, 54.0, 1.2), "teacher_channels": 128, "target_patch_size": 9,
    },
}

__all__ = ["GeoMIMPretrainingConfig", "PRETRAINING_PRESETS"]
