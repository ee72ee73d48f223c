"""Configuration of the Mask3D RGB-D ViT (masked depth reconstruction pretraining)."""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers.backbone_utils import BackboneConfigMixin
from transformers.configuration_utils import PreTrainedConfig

# Named sizes for `--config_name`. "base" is ViT-B/16 at ScanNet's 4:3 aspect with ViTMAE's decoder; "tiny" is sized to
# learn a small synthetic ScanNet set in a few CPU minutes (tests, demo), not to be a useful encoder.
MASK3D_PRESETS: dict[str, dict] = {
    "base": {},
    "tiny": dict(
        image_size=(96, 128),
        patch_size=16,
        hidden_size=96,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=384,
        depth_encoder_hidden_size=64,
        depth_encoder_num_hidden_layers=1,
        depth_encoder_num_attention_heads=2,
        depth_encoder_intermediate_size=128,
        decoder_hidden_size=96,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=3,
        decoder_intermediate_size=192,
    ),
}


@strict
class Mask3DConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of [`Mask3DModel`], [`Mask3DForDepthPretraining`] and [`Mask3DBackbone`]: a ViT pretrained on single
    RGB-D frames by reconstructing dense depth from masked RGB and masked depth patches, after Mask3D (Hou et al.,
    "Mask3D: Pre-training 2D Vision Transformers by Learning Masked 3D Priors", CVPR 2023, arXiv 2302.14746).

    No code or weights of the paper were released and its implementation details are not public. **Every default
    below is a choice of this project, not taken from the paper** (see the model card `mask3d-rgbd-vit-base`); the
    encoder fields use ViTMAE's names so that ViT / ViTMAE weights convert one to one.

    Args:
        image_size (`list[int]`, *optional*, defaults to `[240, 320]`):
            Pretraining input `(height, width)`; an int means a square. With `patch_size` it fixes the `(h, w)` grid of
            the stored position embedding; other input sizes interpolate it.
        patch_size (`int`, *optional*, defaults to 16):
            Side of the square patches of both streams.
        num_channels (`int`, *optional*, defaults to 3):
            Channels of `pixel_values`.
        hidden_size (`int`, *optional*, defaults to 768), num_hidden_layers (`int`, *optional*, defaults to 12),
        num_attention_heads (`int`, *optional*, defaults to 12),
        intermediate_size (`int`, *optional*, defaults to 3072):
            Size of the RGB ViT encoder (ViT-B).
        hidden_act (`str`, *optional*, defaults to `"gelu"`), hidden_dropout_prob (`float`, *optional*, defaults to
        0.0), attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0), qkv_bias (`bool`, *optional*,
        defaults to `True`):
            As in ViT, for every transformer layer of the model.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of all layer norms (the MAE / timm value).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of linear layers and learned tokens.
        trainable_position_embeddings (`bool`, *optional*, defaults to `False`):
            Whether the encoder's position embedding (initialised to 2D sin-cos on the `(h, w)` grid) is trained.
        rgb_mask_ratio (`float`, *optional*, defaults to 0.75):
            Fraction of RGB patches removed before the encoder.
        depth_mask_ratio (`float`, *optional*, defaults to 0.75):
            Fraction of depth patches removed before the depth encoder.
        mask_mode (`str`, *optional*, defaults to `"independent"`):
            `"independent"`: the two masks are drawn independently. `"complementary"`: visible depth patches are
            drawn only among the RGB-masked ones (needs `1 - depth_mask_ratio <= rgb_mask_ratio`).
        depth_encoder_hidden_size (`int`, *optional*, defaults to 384), depth_encoder_num_hidden_layers (`int`,
        *optional*, defaults to 2), depth_encoder_num_attention_heads (`int`, *optional*, defaults to 6),
        depth_encoder_intermediate_size (`int`, *optional*, defaults to 1536):
            The light depth encoder: a patch embedding with a fixed 2D sin-cos position embedding, then this many
            transformer layers (0: the patch embedding alone) and a layer norm, on the visible depth patches.
        depth_validity_channel (`bool`, *optional*, defaults to `True`):
            Whether the depth stream gets a second input channel that is 1 at valid depth pixels. Invalid pixels carry 0
            in the depth channel either way, so without it "no measurement" looks like a depth value.
        fusion (`str`, *optional*, defaults to `"concat"`):
            How the bottleneck fuses the streams at the decoder input. `"concat"`: the full RGB grid (visible tokens
            and mask tokens) followed by the visible depth tokens, each with the decoder position embedding of its
            patch and a learned modality embedding. `"add"`: depth tokens (visible ones and a depth mask token
            elsewhere) are added to the RGB grid tokens at the same positions.
        decoder_hidden_size (`int`, *optional*, defaults to 512), decoder_num_hidden_layers (`int`, *optional*,
        defaults to 8), decoder_num_attention_heads (`int`, *optional*, defaults to 16), decoder_intermediate_size
        (`int`, *optional*, defaults to 2048):
            The decoder (ViTMAE's sizes). It predicts `patch_size**2` depth values per grid token.
        depth_representation (`str`, *optional*, defaults to `"log"`):
            What the depth stream reads and the decoder predicts: `"metric"` (metres), `"log"` (log metres; an L1 loss
            on it is a relative error, like the AbsRel / delta metrics) or `"inverse"` (1 / metres).
        depth_norm_per_patch (`bool`, *optional*, defaults to `False`):
            Whether the target is normalised per patch over its valid pixels (ViTMAE's `norm_pix_loss` for depth).
            The predicted depth in metres then uses the true patch statistics, so it measures shape, not scale.
        depth_cap (`float`, *optional*, defaults to 10.0):
            Largest depth in metres that the model reads or is trained on (ScanNet's sensor reaches about 10 m).
        depth_beyond_cap (`str`, *optional*, defaults to `"invalid"`):
            Pixels deeper than `depth_cap`: `"invalid"` (treated like missing depth) or `"clamp"` (set to the cap).
        loss_type (`str`, *optional*, defaults to `"l1"`):
            `"l1"` or `"l2"`, per valid pixel in the depth representation.
        loss_patches (`str`, *optional*, defaults to `"all"`):
            `"all"`: the dense depth map, every patch. `"masked"`: only patches whose depth was masked. Either way the
            loss is the mean over the valid pixels of those patches; invalid pixels (depth 0, or beyond the cap when
            `depth_beyond_cap="invalid"`) never contribute.
        out_features (`list[str]`, *optional*), out_indices (`list[int]`, *optional*):
            Layers whose outputs [`Mask3DBackbone`] returns as maps, among `"stem"` (the embeddings), `"stage1"`, ...,
            `"stage{num_hidden_layers}"`. Default: four evenly spaced layers (3, 6, 9 and 12 for ViT-B, as DPT).

    Example:

    ```python
    >>> from geomim_hf import Mask3DConfig, Mask3DForDepthPretraining

    >>> config = Mask3DConfig.from_preset("tiny")
    >>> model = Mask3DForDepthPretraining(config)

    ```
    """

    model_type = "mask3d_rgbd_vit"

    image_size: int | list[int] | tuple[int, ...] = (240, 320)
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    trainable_position_embeddings: bool = False
    rgb_mask_ratio: float | int = 0.75
    depth_mask_ratio: float | int = 0.75
    mask_mode: Literal["independent", "complementary"] = "independent"
    depth_encoder_hidden_size: int = 384
    depth_encoder_num_hidden_layers: int = 2
    depth_encoder_num_attention_heads: int = 6
    depth_encoder_intermediate_size: int = 1536
    depth_validity_channel: bool = True
    fusion: Literal["concat", "add"] = "concat"
    decoder_hidden_size: int = 512
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 16
    decoder_intermediate_size: int = 2048
    depth_representation: Literal["metric", "log", "inverse"] = "log"
    depth_norm_per_patch: bool = False
    depth_cap: float | int = 10.0
    depth_beyond_cap: Literal["invalid", "clamp"] = "invalid"
    loss_type: Literal["l1", "l2"] = "l1"
    loss_patches: Literal["all", "masked"] = "all"
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        self.image_size = [self.image_size] * 2 if isinstance(self.image_size, int) else list(self.image_size)
        if len(self.image_size) != 2 or any(side % self.patch_size for side in self.image_size):
            raise ValueError(
                f"image_size must be (height, width), both multiples of patch_size={self.patch_size}, "
                f"got {self.image_size}"
            )
        for name in ("rgb_mask_ratio", "depth_mask_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.mask_mode == "complementary" and 1.0 - self.depth_mask_ratio > self.rgb_mask_ratio:
            raise ValueError(
                "complementary masks draw the visible depth patches among the RGB-masked ones, so 1 - depth_mask_ratio "
                f"must not exceed rgb_mask_ratio (got depth_mask_ratio={self.depth_mask_ratio}, "
                f"rgb_mask_ratio={self.rgb_mask_ratio})"
            )
        for prefix, width, heads in (
            ("", self.hidden_size, self.num_attention_heads),
            ("depth_encoder_", self.depth_encoder_hidden_size, self.depth_encoder_num_attention_heads),
            ("decoder_", self.decoder_hidden_size, self.decoder_num_attention_heads),
        ):
            if width % heads or width % 4:
                raise ValueError(
                    f"{prefix}hidden_size={width} must be divisible by {prefix}num_attention_heads={heads} and by 4 "
                    "(for the 2D sin-cos position embedding)"
                )
        if self.depth_cap <= 0:
            raise ValueError(f"depth_cap must be positive, got {self.depth_cap}")

        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, self.num_hidden_layers + 1)]
        out_features = kwargs.pop("out_features", None)
        out_indices = kwargs.pop("out_indices", None)
        if out_features is None and out_indices is None:
            out_features, out_indices = self._out_features, self._out_indices
        if out_features is None and out_indices is None:
            layers = self.num_hidden_layers
            out_indices = sorted({max(1, round(layers * quarter / 4)) for quarter in range(1, 5)})
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        super().__post_init__(**kwargs)

    @property
    def grid_size(self) -> tuple[int, int]:
        """The `(h, w)` patch grid of `image_size`."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "Mask3DConfig":
        """A named size of [`MASK3D_PRESETS`] ("base" or "tiny"), with any field overridden."""
        if name not in MASK3D_PRESETS:
            raise ValueError(f"unknown Mask3D preset {name!r}; the presets are {sorted(MASK3D_PRESETS)}")
        return cls(**{**MASK3D_PRESETS[name], **overrides})


__all__ = ["MASK3D_PRESETS", "Mask3DConfig"]
