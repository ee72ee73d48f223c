"""PyTorch Mask3D RGB-D ViT.

Mask3D (Hou, Dai, He, Dai, Nießner: "Mask3D: Pre-training 2D Vision Transformers by Learning Masked 3D Priors", CVPR
2023, arXiv 2302.14746; not the point-cloud instance segmentation model of the same name) pretrains a 2D ViT on single
RGB-D frames: RGB patches and depth patches are masked, the visible RGB patches go through the ViT, the visible depth
patches through a light depth encoder, both are fused into a bottleneck, and a decoder reconstructs the dense depth
map. Only the RGB ViT is kept for downstream tasks. The paper's implementation details are not public: every open
choice is a field of [`Mask3DConfig`], with defaults chosen by this project.

Built on transformers' ViTMAE: the transformer layers (`ViTMAELayer`), the patch embedding (`ViTMAEPatchEmbeddings`,
which already handles (h, w) grids) and the 2D sin-cos table (`build_2d_sinusoidal_position_embedding`) are used as
they are, and the RGB encoder's weight names are ViT's and ViTMAE's, so their checkpoints convert one to one. What is
written here, and why:
- the embeddings: ViTMAE's position table and its interpolation assume a square grid (transformers #35280, #32410);
  here the table lives on the config's (h, w) grid and is resized bicubically to any other grid;
- the masking: `ViTMAEEmbeddings.random_masking` is bound to one `config.mask_ratio` and gathers tokens itself; Mask3D
  masks two streams at their own ratios and can derive the depth mask from the RGB one (`mask_mode="complementary"`);
- the decoder: ViTMAE's decodes one stream into pixels; this one fuses two streams and predicts one depth channel;
- patchify / unpatchify and the loss: ViTMAE's check for square images and have no notion of invalid pixels.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin, filter_output_hidden_states
from transformers.modeling_outputs import BackboneOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.models.vit_mae.modeling_vit_mae import (
    ViTMAEAttention,
    ViTMAELayer,
    ViTMAEPatchEmbeddings,
    build_2d_sinusoidal_position_embedding,
)
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from ..inputs import check_forward_kwargs
from .configuration_mask3d import Mask3DConfig

MIN_DEPTH = 1e-3  # metres; predicted depth is clamped to [MIN_DEPTH, config.depth_cap]


@dataclass
class Mask3DModelOutput(ModelOutput):
    r"""
    Outputs of [`Mask3DModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + num_tokens, hidden_size)`):
            The CLS token followed by the patch tokens (all of them, or those selected by `ids_keep`), after the final
            layer norm.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            The embeddings and the output of every layer (before the final layer norm).
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
            Attention weights of every layer (eager attention only).
    """

    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class Mask3DForDepthPretrainingOutput(ModelOutput):
    r"""
    Outputs of [`Mask3DForDepthPretraining`]. `num_patches` is `(height / patch_size) * (width / patch_size)`, in
    row-major order.

    Args:
        loss (`torch.FloatTensor` of shape `()`):
            Depth reconstruction loss (`config.loss_type` over the valid pixels of the patches `config.loss_patches`).
        logits (`torch.FloatTensor` of shape `(batch_size, num_patches, patch_size**2)`):
            Predicted depth per patch in `config.depth_representation`, per-patch normalised if
            `config.depth_norm_per_patch`.
        predicted_depth (`torch.FloatTensor` of shape `(batch_size, height, width)`):
            The predicted depth map in metres, clamped to `[MIN_DEPTH, config.depth_cap]`.
        rgb_mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`):
            1 where the RGB patch was removed, 0 where the encoder saw it.
        depth_mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`):
            1 where the depth patch was removed, 0 where the depth encoder saw it.
        rgb_ids_restore (`torch.LongTensor` of shape `(batch_size, num_patches)`), depth_ids_restore (same shape):
            For each patch, its position in the stream's shuffled order (kept patches first), as in ViTMAE.
        hidden_states, attentions (`tuple(torch.FloatTensor)`, *optional*):
            Those of the RGB encoder, see [`Mask3DModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    predicted_depth: torch.FloatTensor | None = None
    rgb_mask: torch.FloatTensor | None = None
    depth_mask: torch.FloatTensor | None = None
    rgb_ids_restore: torch.LongTensor | None = None
    depth_ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class LayerConfig:
    """A view of a [`Mask3DConfig`] with other layer sizes, for `ViTMAELayer`s of the depth encoder and the decoder.

    Every other attribute, `_attn_implementation` included, is read from the live model config, so switching the
    attention implementation reaches these layers too (ViTMAE's decoder deep-copies its config and misses it).
    """

    def __init__(self, config: Mask3DConfig, **sizes):
        self._config = config
        self.__dict__.update(sizes)

    def __getattr__(self, name: str):
        if name == "_config":  # copy and pickle build the object without __init__ and look attributes up first
            raise AttributeError(name)
        return getattr(self._config, name)


def depth_encoder_config(config: Mask3DConfig) -> LayerConfig:
    return LayerConfig(
        config,
        hidden_size=config.depth_encoder_hidden_size,
        num_attention_heads=config.depth_encoder_num_attention_heads,
        intermediate_size=config.depth_encoder_intermediate_size,
        num_channels=2 if config.depth_validity_channel else 1,
    )


def decoder_config(config: Mask3DConfig) -> LayerConfig:
    return LayerConfig(
        config,
        hidden_size=config.decoder_hidden_size,
        num_attention_heads=config.decoder_num_attention_heads,
        intermediate_size=config.decoder_intermediate_size,
    )


def sincos_position_table(grid_size: tuple[int, int], dim: int, cls_token: bool = False) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding of an `(h, w)` grid, `(1, [1 +] h * w, dim)` in row-major order, laid out
    `[sin_h | cos_h | sin_w | cos_w]`; the optional CLS row is zeros."""
    return build_2d_sinusoidal_position_embedding(*grid_size, embed_dim=dim, cls_token=cls_token).unsqueeze(0)


def resize_position_table(table: torch.Tensor, from_grid: tuple[int, int], to_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a `(1, h * w, dim)` position table from an `(h, w)` grid to another, as ViT does for square
    grids (`align_corners=False`). Runs in float32 so that bf16 tables lose nothing in it."""
    if tuple(from_grid) == tuple(to_grid):
        return table
    dim = table.shape[-1]
    grid_table = table.float().reshape(1, *from_grid, dim).permute(0, 3, 1, 2)  # (1, dim, h, w)
    resized = F.interpolate(grid_table, size=tuple(to_grid), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).reshape(1, -1, dim).to(table.dtype)


def patch_grid(height: int, width: int, patch_size: int, what: str) -> tuple[int, int]:
    """The `(h, w)` patch grid of a `height x width` input; an error unless both are multiples of the patch."""
    if height % patch_size or width % patch_size or height == 0 or width == 0:
        raise ValueError(
            f"{what} is {height}x{width} pixels; height and width must be positive multiples of patch_size={patch_size}"
        )
    return height // patch_size, width // patch_size


def random_masking(noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ViTMAE's per-sample random masking, as indices: the `int(L * (1 - mask_ratio))` patches with the smallest noise
    are kept.

    Args:
        noise (`torch.Tensor` of shape `(batch_size, L)`): one score per patch.
        mask_ratio (`float`): fraction of patches to remove.

    Returns:
        ids_keep `(batch_size, L_keep)` (kept patches, by increasing noise), mask `(batch_size, L)` (0 kept, 1
        removed) and ids_restore `(batch_size, L)` (each patch's position in the shuffled order).
    """
    batch_size, seq_length = noise.shape
    len_keep = int(seq_length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch_size, seq_length, device=noise.device)
    mask[:, :len_keep] = 0
    return ids_shuffle[:, :len_keep], torch.gather(mask, 1, ids_restore), ids_restore


def gather_tokens(tokens: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """`(batch, L, dim)` tokens at `ids_keep` `(batch, K)`: `(batch, K, dim)`."""
    return torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def restore_grid(visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """ViTMAE's un-shuffle: the visible tokens `(batch, K, dim)` and a mask token for every removed patch, back in
    patch order `(batch, L, dim)`."""
    batch_size, num_visible, dim = visible.shape
    mask_tokens = mask_token.to(visible.dtype).expand(batch_size, ids_restore.shape[1] - num_visible, dim)
    shuffled = torch.cat([visible, mask_tokens], dim=1)  # (batch, L, dim) in the shuffled order
    return gather_tokens(shuffled, ids_restore)


def linear_like_uniform_(weight: torch.Tensor) -> None:
    """Xavier-uniform for a patch projection seen as a linear layer on flattened patches (as MAE and ViTMAE do)."""
    fan_out, fan_in = weight.shape[0], weight[0].numel()
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    init.uniform_(weight, -bound, bound)


class Mask3DEmbeddings(nn.Module):
    """CLS token, patch embedding and the position embedding of the config's `(h, w)` grid, resized to the input's."""

    def __init__(self, config: Mask3DConfig):
        super().__init__()
        self.grid_size = config.grid_size
        self.patch_size = config.patch_size
        self.trainable_position_embeddings = config.trainable_position_embeddings
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.patch_embeddings = ViTMAEPatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, 1 + self.grid_size[0] * self.grid_size[1], config.hidden_size),
            requires_grad=config.trainable_position_embeddings,
        )

    def forward(self, pixel_values: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """`pixel_values` `(batch, num_channels, height, width)` to `(batch, 1 + K, hidden_size)`: the CLS token, then
        the patches at `ids_keep` `(batch, K)` (all patches if `None`)."""
        grid = patch_grid(*pixel_values.shape[-2:], self.patch_size, "pixel_values")
        # Detached unless trainable: transformers 5 loads every float parameter with requires_grad=True, so the flag
        # set in __init__ does not survive from_pretrained; without a gradient, optimizers leave the table alone.
        table = self.position_embeddings if self.trainable_position_embeddings else self.position_embeddings.detach()
        embeddings = self.patch_embeddings(pixel_values)  # (batch, h * w, hidden)
        embeddings = embeddings + resize_position_table(table[:, 1:], self.grid_size, grid).to(embeddings.dtype)
        if ids_keep is not None:
            embeddings = gather_tokens(embeddings, ids_keep)
        cls_tokens = (self.cls_token + table[:, :1]).expand(embeddings.shape[0], -1, -1)
        return torch.cat([cls_tokens.to(embeddings.dtype), embeddings], dim=1)


class Mask3DDepthEncoder(nn.Module):
    """The light depth encoder: patch embedding of the depth (and validity) channels, fixed 2D sin-cos position
    embedding, then `config.depth_encoder_num_hidden_layers` transformer layers and a layer norm on the visible
    patches."""

    def __init__(self, config: Mask3DConfig):
        super().__init__()
        layer_config = depth_encoder_config(config)
        self.grid_size = config.grid_size
        self.patch_embeddings = ViTMAEPatchEmbeddings(layer_config)
        # Derived from the config, so not saved (rebuilt in _init_weights on loading).
        self.register_buffer(
            "position_embeddings", sincos_position_table(self.grid_size, layer_config.hidden_size), persistent=False
        )
        self.layers = nn.ModuleList([ViTMAELayer(layer_config) for _ in range(config.depth_encoder_num_hidden_layers)])
        self.layernorm = nn.LayerNorm(layer_config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, depth_input: torch.Tensor, ids_keep: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """`depth_input` `(batch, 1 or 2, height, width)`, `ids_keep` `(batch, K)`: `(batch, K, depth hidden)`."""
        embeddings = self.patch_embeddings(depth_input)  # (batch, h * w, depth hidden)
        embeddings = embeddings + resize_position_table(self.position_embeddings, self.grid_size, grid).to(
            embeddings.dtype
        )
        hidden_states = gather_tokens(embeddings, ids_keep)
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return self.layernorm(hidden_states)


class Mask3DDecoder(nn.Module):
    """The bottleneck and decoder: both streams projected to the decoder width and fused (`config.fusion`), then
    transformer layers, a layer norm, and a linear prediction of `patch_size**2` depth values per grid token."""

    def __init__(self, config: Mask3DConfig):
        super().__init__()
        layer_config = decoder_config(config)
        width = layer_config.hidden_size
        self.fusion = config.fusion
        self.grid_size = config.grid_size
        self.rgb_embed = nn.Linear(config.hidden_size, width)
        self.depth_embed = nn.Linear(config.depth_encoder_hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        if self.fusion == "concat":
            self.rgb_modality_embedding = nn.Parameter(torch.zeros(1, 1, width))
            self.depth_modality_embedding = nn.Parameter(torch.zeros(1, 1, width))
        else:
            self.depth_mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("position_embeddings", sincos_position_table(self.grid_size, width), persistent=False)
        self.layers = nn.ModuleList([ViTMAELayer(layer_config) for _ in range(config.decoder_num_hidden_layers)])
        self.decoder_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(width, config.patch_size**2)

    def forward(
        self,
        rgb_latent: torch.Tensor,
        rgb_ids_restore: torch.Tensor,
        depth_latent: torch.Tensor,
        depth_ids_keep: torch.Tensor,
        depth_ids_restore: torch.Tensor,
        grid: tuple[int, int],
    ) -> torch.Tensor:
        """`rgb_latent` `(batch, 1 + K_rgb, hidden)` (CLS first) and `depth_latent` `(batch, K_depth, depth hidden)`,
        with each stream's indices `(batch, L)` / `(batch, K_depth)`: the logits `(batch, L, patch_size**2)`."""
        rgb_tokens = self.rgb_embed(rgb_latent)
        cls_token, rgb_visible = rgb_tokens[:, :1], rgb_tokens[:, 1:]
        positions = resize_position_table(self.position_embeddings, self.grid_size, grid).to(rgb_tokens.dtype)
        grid_tokens = restore_grid(rgb_visible, self.mask_token, rgb_ids_restore) + positions  # (batch, L, width)
        depth_tokens = self.depth_embed(depth_latent)  # (batch, K_depth, width)
        if self.fusion == "concat":
            depth_positions = gather_tokens(positions.expand(depth_tokens.shape[0], -1, -1), depth_ids_keep)
            depth_tokens = depth_tokens + depth_positions + self.depth_modality_embedding.to(depth_tokens.dtype)
            grid_tokens = grid_tokens + self.rgb_modality_embedding.to(grid_tokens.dtype)
            hidden_states = torch.cat([cls_token, grid_tokens, depth_tokens], dim=1)
        else:
            grid_tokens = grid_tokens + restore_grid(depth_tokens, self.depth_mask_token, depth_ids_restore)
            hidden_states = torch.cat([cls_token, grid_tokens], dim=1)
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        hidden_states = self.decoder_norm(hidden_states[:, 1 : 1 + grid_tokens.shape[1]])
        return self.decoder_pred(hidden_states)


class Mask3DPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading for the Mask3D models."""

    config: Mask3DConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["Mask3DEmbeddings", "ViTMAELayer", "Mask3DDecoder"]
    # The layers are ViTMAE's, so the same attention backends apply; no attention mask is ever used.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": ViTMAELayer, "attentions": ViTMAEAttention}
    _input_embed_layer = "patch_embeddings"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, Mask3DEmbeddings):
            init.copy_(module.position_embeddings, sincos_position_table(module.grid_size, module.cls_token.shape[-1],
                                                                         cls_token=True))
            init.normal_(module.cls_token, std=std)
            linear_like_uniform_(module.patch_embeddings.projection.weight)
        elif isinstance(module, Mask3DDepthEncoder):
            init.copy_(module.position_embeddings,
                       sincos_position_table(module.grid_size, module.position_embeddings.shape[-1]))
            linear_like_uniform_(module.patch_embeddings.projection.weight)
        elif isinstance(module, Mask3DDecoder):
            init.copy_(module.position_embeddings,
                       sincos_position_table(module.grid_size, module.position_embeddings.shape[-1]))
            init.normal_(module.mask_token, std=std)
            if module.fusion == "concat":
                init.normal_(module.rgb_modality_embedding, std=std)
                init.normal_(module.depth_modality_embedding, std=std)
            else:
                init.normal_(module.depth_mask_token, std=std)


class Mask3DModel(Mask3DPreTrainedModel):
    """The Mask3D RGB ViT encoder, the part kept for downstream tasks. Weight names are those of transformers'
    `ViTModel` / `ViTMAEModel`. Any input size that is a multiple of the patch works."""

    # Pretraining checkpoints also hold the depth stream and the decoder, which this encoder leaves out on purpose.
    _keys_to_ignore_on_load_unexpected = [r"^depth_encoder\.", r"^decoder\."]

    def __init__(self, config: Mask3DConfig):
        super().__init__(config)
        self.embeddings = Mask3DEmbeddings(config)
        self.layers = nn.ModuleList([ViTMAELayer(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> ViTMAEPatchEmbeddings:
        return self.embeddings.patch_embeddings

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        ids_keep: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Mask3DModelOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images; height and width multiples of `config.patch_size`.
            ids_keep (`torch.LongTensor` of shape `(batch_size, num_kept)`, *optional*):
                Indices (row-major) of the patches to encode; all patches if not given (downstream use).

        Example:

        ```python
        >>> import torch
        >>> from geomim_hf import Mask3DConfig, Mask3DModel

        >>> model = Mask3DModel(Mask3DConfig.from_preset("tiny"))
        >>> model(torch.randn(1, 3, 96, 128)).last_hidden_state.shape
        torch.Size([1, 49, 96])

        ```
        """
        check_forward_kwargs(self, kwargs)
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be (batch_size, num_channels, height, width), got shape {tuple(pixel_values.shape)}"
            )
        hidden_states = self.embeddings(pixel_values, ids_keep)
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
        return Mask3DModelOutput(last_hidden_state=self.layernorm(hidden_states))


class Mask3DForDepthPretraining(Mask3DPreTrainedModel):
    """Mask3D pretraining: masked RGB through the ViT, masked depth through the light depth encoder, fused into the
    decoder that reconstructs the dense depth map."""

    def __init__(self, config: Mask3DConfig):
        super().__init__(config)
        self.vit = Mask3DModel(config)
        self.depth_encoder = Mask3DDepthEncoder(config)
        self.decoder = Mask3DDecoder(config)
        self.post_init()

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """`(batch, height, width)` to `(batch, h * w, patch_size**2)`, patches in row-major order."""
        patch = self.config.patch_size
        batch_size, height, width = images.shape
        patches = images.reshape(batch_size, height // patch, patch, width // patch, patch)
        return patches.permute(0, 1, 3, 2, 4).reshape(batch_size, (height // patch) * (width // patch), patch * patch)

    def unpatchify(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Inverse of [`patchify`]: `(batch, h * w, patch_size**2)` to `(batch, h * patch_size, w * patch_size)`."""
        patch = self.config.patch_size
        batch_size = patches.shape[0]
        images = patches.reshape(batch_size, grid[0], grid[1], patch, patch).permute(0, 1, 3, 2, 4)
        return images.reshape(batch_size, grid[0] * patch, grid[1] * patch)

    def depth_to_representation(self, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Metric depth (0 = no measurement) to `(values, valid)`: `config.depth_representation` of the depth, 0 at
        invalid pixels, and the boolean validity (depth > 0, and within the cap unless `depth_beyond_cap="clamp"`)."""
        cap = self.config.depth_cap
        valid = torch.isfinite(depth) & (depth > 0)
        if self.config.depth_beyond_cap == "invalid":
            valid &= depth <= cap
        safe_depth = torch.where(valid, depth, torch.ones_like(depth)).clamp(max=cap)
        representation = self.config.depth_representation
        if representation == "log":
            safe_depth = safe_depth.log()
        elif representation == "inverse":
            safe_depth = safe_depth.reciprocal()
        return torch.where(valid, safe_depth, torch.zeros_like(safe_depth)), valid

    def representation_to_depth(self, values: torch.Tensor) -> torch.Tensor:
        """Inverse of [`depth_to_representation`] for predictions: metres in `[MIN_DEPTH, config.depth_cap]`."""
        cap = self.config.depth_cap
        representation = self.config.depth_representation
        if representation == "log":
            return values.clamp(max=math.log(cap)).exp().clamp(min=MIN_DEPTH)
        if representation == "inverse":
            return values.clamp(min=1.0 / cap, max=1.0 / MIN_DEPTH).reciprocal()
        return values.clamp(min=MIN_DEPTH, max=cap)

    def check_inputs(
        self, pixel_values: torch.Tensor, depth_values: torch.Tensor, *noises: torch.Tensor | None
    ) -> tuple[int, int]:
        """The patch grid of the batch, after checking every input's shape against the others."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must be (batch_size, {self.config.num_channels}, height, width), got shape "
                f"{tuple(pixel_values.shape)}"
            )
        batch_size, _, height, width = pixel_values.shape
        if tuple(depth_values.shape) != (batch_size, height, width):
            raise ValueError(
                f"depth_values must be (batch_size, height, width) = {(batch_size, height, width)} like pixel_values, "
                f"got shape {tuple(depth_values.shape)}"
            )
        grid = patch_grid(height, width, self.config.patch_size, "pixel_values")
        for name, noise in zip(("rgb_noise", "depth_noise"), noises):
            if noise is not None and tuple(noise.shape) != (batch_size, grid[0] * grid[1]):
                raise ValueError(
                    f"{name} must be (batch_size, num_patches) = {(batch_size, grid[0] * grid[1])}, got shape "
                    f"{tuple(noise.shape)}"
                )
        return grid

    def random_masks(
        self, batch_size: int, num_patches: int, rgb_noise: torch.Tensor | None, depth_noise: torch.Tensor | None,
        device: torch.device,
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """`(ids_keep, mask, ids_restore)` of the RGB stream and of the depth stream (see [`random_masking`])."""
        if rgb_noise is None:
            rgb_noise = torch.rand(batch_size, num_patches, device=device)
        if depth_noise is None:
            depth_noise = torch.rand(batch_size, num_patches, device=device)
        rgb_masking = random_masking(rgb_noise, self.config.rgb_mask_ratio)
        if self.config.mask_mode == "complementary":
            # Noise lies in [0, 1): adding 1 where RGB is visible sorts those patches after every RGB-masked one, and
            # the config guarantees the kept depth patches fit among the RGB-masked ones.
            depth_noise = depth_noise + (1.0 - rgb_masking[1])
        return rgb_masking, random_masking(depth_noise, self.config.depth_mask_ratio)

    def forward_loss(
        self, logits: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, depth_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss, and the predictions in metres per patch `(batch, L, patch_size**2)`.

        `values` / `valid` `(batch, height, width)` come from [`depth_to_representation`]. The target is `values` per
        patch; with `depth_norm_per_patch`, each patch is normalised by the mean and (biased) variance of its valid
        pixels, and the predictions are mapped back with the same statistics. The loss is the mean per-pixel L1 /
        squared error over the valid pixels of the patches `config.loss_patches` selects (0 if there are none).
        """
        target, valid = self.patchify(values), self.patchify(valid.to(values.dtype))  # (batch, L, p * p)
        predictions = logits.float()
        if self.config.depth_norm_per_patch:
            count = valid.sum(-1, keepdim=True).clamp(min=1)
            mean = (target * valid).sum(-1, keepdim=True) / count
            std = ((((target - mean) * valid) ** 2).sum(-1, keepdim=True) / count + 1e-6).sqrt()
            target = (target - mean) / std
            predictions_in_representation = predictions * std + mean
        else:
            predictions_in_representation = predictions
        error = (predictions - target).abs() if self.config.loss_type == "l1" else (predictions - target) ** 2
        patch_weight = depth_mask if self.config.loss_patches == "masked" else torch.ones_like(depth_mask)
        pixel_weight = valid * patch_weight.unsqueeze(-1)
        loss = (error * pixel_weight).sum() / pixel_weight.sum().clamp(min=1)
        return loss, self.representation_to_depth(predictions_in_representation)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        depth_values: torch.Tensor,
        rgb_noise: torch.Tensor | None = None,
        depth_noise: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Mask3DForDepthPretrainingOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised RGB; height and width multiples of `config.patch_size`.
            depth_values (`torch.FloatTensor` of shape `(batch_size, height, width)`):
                Metric depth aligned with `pixel_values`, 0 where the sensor measured nothing.
            rgb_noise, depth_noise (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*):
                Scores in [0, 1) that fix each stream's mask (lowest kept); uniform random if not given.

        Example:

        ```python
        >>> import torch
        >>> from geomim_hf import Mask3DConfig, Mask3DForDepthPretraining

        >>> model = Mask3DForDepthPretraining(Mask3DConfig.from_preset("tiny"))
        >>> outputs = model(torch.randn(2, 3, 96, 128), torch.rand(2, 96, 128) * 5)
        >>> outputs.predicted_depth.shape, outputs.rgb_mask.shape
        (torch.Size([2, 96, 128]), torch.Size([2, 48]))

        ```
        """
        check_forward_kwargs(self, kwargs)
        grid = self.check_inputs(pixel_values, depth_values, rgb_noise, depth_noise)
        batch_size = pixel_values.shape[0]
        (rgb_ids_keep, rgb_mask, rgb_ids_restore), (depth_ids_keep, depth_mask, depth_ids_restore) = self.random_masks(
            batch_size, grid[0] * grid[1], rgb_noise, depth_noise, pixel_values.device
        )

        encoder_outputs: Mask3DModelOutput = self.vit(pixel_values, ids_keep=rgb_ids_keep, **kwargs)

        values, valid = self.depth_to_representation(depth_values)
        depth_channels = [values, valid.to(values.dtype)] if self.config.depth_validity_channel else [values]
        depth_input = torch.stack(depth_channels, dim=1).to(pixel_values.dtype)  # (batch, 1 or 2, height, width)
        depth_latent = self.depth_encoder(depth_input, depth_ids_keep, grid)

        logits = self.decoder(
            encoder_outputs.last_hidden_state, rgb_ids_restore, depth_latent, depth_ids_keep, depth_ids_restore, grid
        )
        loss, predicted_depth = self.forward_loss(logits, values, valid, depth_mask)
        return Mask3DForDepthPretrainingOutput(
            loss=loss,
            logits=logits,
            predicted_depth=self.unpatchify(predicted_depth, grid),
            rgb_mask=rgb_mask,
            depth_mask=depth_mask,
            rgb_ids_restore=rgb_ids_restore,
            depth_ids_restore=depth_ids_restore,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )


class Mask3DBackbone(BackboneMixin, Mask3DPreTrainedModel):
    """The Mask3D RGB ViT as a transformers backbone (`AutoBackbone`): the outputs of the layers in
    `config.out_features`, normed by the encoder's final layer norm (as DINOv2's backbone does), without the CLS token,
    as `(batch, hidden_size, height / patch_size, width / patch_size)` maps."""

    _keys_to_ignore_on_load_unexpected = [r"^depth_encoder\.", r"^decoder\."]

    def __init__(self, config: Mask3DConfig):
        super().__init__(config)
        self.vit = Mask3DModel(config)
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        self.post_init()

    @can_return_tuple
    @filter_output_hidden_states
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BackboneOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images; height and width multiples of `config.patch_size`.
        """
        check_forward_kwargs(self, kwargs)
        outputs = self.vit(pixel_values, **kwargs)
        batch_size = pixel_values.shape[0]
        grid = patch_grid(*pixel_values.shape[-2:], self.config.patch_size, "pixel_values")
        feature_maps = []
        for stage_index in self.out_indices:
            tokens = self.vit.layernorm(outputs.hidden_states[stage_index])[:, 1:]  # (batch, h * w, hidden)
            feature_maps.append(tokens.reshape(batch_size, *grid, -1).permute(0, 3, 1, 2).contiguous())
        return BackboneOutput(
            feature_maps=tuple(feature_maps), hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "Mask3DBackbone",
    "Mask3DForDepthPretraining",
    "Mask3DForDepthPretrainingOutput",
    "Mask3DModel",
    "Mask3DModelOutput",
    "Mask3DPreTrainedModel",
]
