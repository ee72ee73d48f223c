"""PyTorch GeoMIM Swin encoder.

GeoMIM ("Towards Better 3D Knowledge Transfer via Masked Image Modeling for Multi-view 3D Understanding", Liu et al.,
ICCV 2023, arXiv 2303.11325, github.com/Sense-X/GeoMIM) pretrains a Swin Transformer on the six nuScenes cameras with
a LiDAR BEV teacher. This module is the encoder that BEV detectors keep after pretraining, ported from
`SwinTransformerBEVFT` (`bevdet/mmdet3d/models/backbones/swin_bev.py`). It differs from stock Swin in four ways:

- no shifted windows, and a window size per stage (16, 16, 16, 8);
- a learnable absolute position embedding on a (1, C, 56, 56) grid, resized bicubically to every input;
- feature maps are zero-padded to whole windows and the padding is *not* masked out of the attention;
- LayerNorms on the stage outputs that a detector reads (strides 16 and 32), taken before patch merging.

`GeoMIMConfig(shift_windows=True, ...)` turns it back into a standard Swin (padding first, then the cyclic shift, as
mmdet and transformers do). Weight names follow transformers' Swin so the weights stay recognisable.
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import StochasticDepth
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from ..inputs import check_forward_kwargs
from .configuration_geomim import GeoMIMConfig


@dataclass
class GeoMIMModelOutput(ModelOutput):
    r"""
    Outputs of [`GeoMIMModel`]. For multi-camera input `(batch_size, num_cameras, ...)` the camera axis is kept in
    `last_hidden_state` and `feature_maps`.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, [num_cameras,] height * width, hidden_size)`):
            Tokens of the last stage, before its output norm.
        feature_maps (`tuple(torch.FloatTensor)`):
            One channel-first map `(batch_size, [num_cameras,] channels, height, width)` per entry of
            `config.out_features`, taken before patch merging and normed by that stage's output LayerNorm.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            The embedding output and the output of every stage before patch merging, channel-last
            `(batch_size * num_cameras, height, width, channels)`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    feature_maps: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


def window_partition(hidden_states: torch.Tensor, window_size: int) -> torch.Tensor:
    """Cuts `(batch, height, width, channels)` into `(batch * num_windows, window_size**2, channels)` windows.

    The windows of one image are consecutive, in row-major order.
    """
    batch_size, height, width, channels = hidden_states.shape
    hidden_states = hidden_states.view(
        batch_size, height // window_size, window_size, width // window_size, window_size, channels
    )
    return hidden_states.transpose(2, 3).reshape(-1, window_size * window_size, channels)


def window_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of [`window_partition`]: `(batch * num_windows, window_size**2, channels)` to `(batch, height, width,
    channels)`."""
    channels = windows.shape[-1]
    windows = windows.view(-1, height // window_size, width // window_size, window_size, window_size, channels)
    return windows.transpose(2, 3).reshape(-1, height, width, channels)


def shifted_window_attention_mask(
    height: int, width: int, window_size: int, shift_size: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """The additive mask of shifted-window attention, `(num_windows, window_size**2, window_size**2)`.

    After the cyclic shift, a window at the bottom or right edge holds tokens from up to four regions that are not
    neighbours in the image. Each axis splits into three bands, `[0, size - window)`, `[size - window, size - shift)`
    and `[size - shift, size)`; tokens of different bands get -100 (Swin's value) before the softmax.
    """
    rows = torch.arange(height, device=device)
    columns = torch.arange(width, device=device)
    row_band = (rows >= height - window_size).long() + (rows >= height - shift_size).long()
    column_band = (columns >= width - window_size).long() + (columns >= width - shift_size).long()
    region = row_band[:, None] * 3 + column_band[None, :]  # (height, width)
    region_windows = window_partition(region[None, :, :, None], window_size).squeeze(-1)  # (num_windows, L)
    crosses_regions = region_windows[:, :, None] != region_windows[:, None, :]  # (num_windows, L, L)
    mask = torch.zeros(crosses_regions.shape, device=device, dtype=dtype)
    return mask.masked_fill(crosses_regions, -100.0)


def expand_token_groups(token_groups: torch.Tensor, factor: int, height: int, width: int) -> torch.Tensor:
    """The group map of a coarse grid, `(coarse_height, coarse_width)`, on a `factor` times finer `(height, width)`
    grid: token `(i, j)` takes the group of cell `(i // factor, j // factor)`.

    Patch merging joins 2 x 2 tokens that lie in one coarse cell, so a map expanded this way never makes it mix groups.
    """
    expanded = token_groups.repeat_interleave(factor, dim=0).repeat_interleave(factor, dim=1)
    if expanded.shape[0] < height or expanded.shape[1] < width:
        raise ValueError(
            f"token_groups of shape {tuple(token_groups.shape)} do not cover a {height} x {width} grid at "
            f"{factor} tokens per cell"
        )
    return expanded[:height, :width]


def token_group_attention_mask(group_windows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive mask `(num_windows, L, L)` that keeps attention inside token groups: `-inf` between tokens of
    different groups, from the window-partitioned group map `group_windows` `(num_windows, L)`.

    Every token shares a group with itself, so no row is masked entirely and the softmax never sees a row of `-inf`.
    """
    crosses_groups = group_windows[:, :, None] != group_windows[:, None, :]  # (num_windows, L, L)
    mask = torch.zeros(crosses_groups.shape, device=group_windows.device, dtype=dtype)
    return mask.masked_fill(crosses_groups, float("-inf"))


class GeoMIMPatchEmbeddings(nn.Module):
    """Non-overlapping patch projection. Images whose size is not a multiple of the patch get zeros at the right and
    bottom first, like mmdet's `AdaptivePadding(padding="corner")`."""

    def __init__(self, config: GeoMIMConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.projection = nn.Conv2d(
            config.num_channels, config.embed_dim, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        _, _, height, width = pixel_values.shape
        pixel_values = F.pad(pixel_values, (0, -width % self.patch_size, 0, -height % self.patch_size))
        # (batch, channels, grid_height, grid_width) -> (batch, grid_height, grid_width, channels)
        return self.projection(pixel_values).permute(0, 2, 3, 1)


class GeoMIMEmbeddings(nn.Module):
    """Patch embedding, LayerNorm, then the absolute position embedding resized to the token grid, then dropout."""

    def __init__(self, config: GeoMIMConfig):
        super().__init__()
        self.patch_embeddings = GeoMIMPatchEmbeddings(config)
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        pretraining_grid = config.image_size // config.patch_size
        self.position_embeddings = (
            nn.Parameter(torch.zeros(1, config.embed_dim, pretraining_grid, pretraining_grid))
            if config.use_absolute_embeddings
            else None
        )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def interpolate_pos_encoding(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """The position embedding resized to a `height x width` token grid, as `(1, height, width, channels)`.

        GeoMIM resizes on every forward, even to the pretraining grid (where bicubic resampling is the identity), with
        `F.interpolate`'s defaults. The resize runs in float32 so that bf16 weights lose no precision in it.
        """
        position_embeddings = F.interpolate(
            self.position_embeddings.float(), size=(height, width), mode="bicubic", align_corners=False
        )
        return position_embeddings.to(dtype).permute(0, 2, 3, 1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        embeddings = self.norm(self.patch_embeddings(pixel_values))  # (batch, grid_height, grid_width, channels)
        if self.position_embeddings is not None:
            _, height, width, _ = embeddings.shape
            embeddings = embeddings + self.interpolate_pos_encoding(height, width, embeddings.dtype)
        return self.dropout(embeddings)


class GeoMIMRelativePositionBias(nn.Module):
    """Swin's learned bias for every (row, column) offset between two tokens of a window.

    The table has `(2 * window_size - 1)**2` rows, one per offset. The index that reads it is fully determined by the
    window size, so it is a non-persistent buffer.
    """

    def __init__(self, num_heads: int, window_size: int):
        super().__init__()
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", self.create_relative_position_index(), persistent=False)

    def create_relative_position_index(self) -> torch.Tensor:
        """`(window_size**2, window_size**2)` table rows: `(dy + window_size - 1) * (2 * window_size - 1) + dx +
        window_size - 1` for the offset `(dy, dx)` from the key token to the query token."""
        coordinates = torch.arange(self.window_size)
        grid = torch.stack(torch.meshgrid(coordinates, coordinates, indexing="ij")).flatten(1)  # (2, L)
        offsets = grid[:, :, None] - grid[:, None, :] + self.window_size - 1  # (2, L, L), each in [0, 2w - 2]
        return offsets[0] * (2 * self.window_size - 1) + offsets[1]

    def forward(self) -> torch.Tensor:
        window_area = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (L * L, num_heads)
        return bias.view(window_area, window_area, -1).permute(2, 0, 1)  # (num_heads, L, L)


class GeoMIMWindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with the relative position bias (plus, for shifted windows, the
    region mask and, for masked pretraining, the token-group mask) as the additive mask of
    `torch.nn.functional.scaled_dot_product_attention`."""

    def __init__(self, config: GeoMIMConfig, dim: int, num_heads: int, window_size: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attention_dropout = config.attention_probs_dropout_prob
        self.q_proj = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.relative_position_bias = GeoMIMRelativePositionBias(num_heads, window_size)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`hidden_states`: `(batch * num_windows, L, channels)`; `attention_mask`: additive `(num_windows, L, L)`, the
        same for every image, or `None`."""
        batch_windows, window_area, channels = hidden_states.shape
        head_shape = (batch_windows, window_area, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(head_shape).transpose(1, 2)  # (batch * num_windows, heads, L, d)
        key = self.k_proj(hidden_states).view(head_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(head_shape).transpose(1, 2)

        attention_bias = self.relative_position_bias().to(query.dtype).unsqueeze(0)  # (1, heads, L, L)
        if attention_mask is not None:
            num_windows = attention_mask.shape[0]
            # The windows of one image are consecutive, so the per-window masks tile over the batch.
            attention_bias = attention_bias + attention_mask.unsqueeze(1)
            attention_bias = attention_bias.repeat(batch_windows // num_windows, 1, 1, 1)

        attention_output = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_bias,
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        attention_output = attention_output.transpose(1, 2).reshape(batch_windows, window_area, channels)
        return self.dropout(self.o_proj(attention_output))


class GeoMIMMLP(nn.Module):
    def __init__(self, config: GeoMIMConfig, dim: int):
        super().__init__()
        hidden_dim = int(dim * config.mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.activation = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.activation(self.fc1(hidden_states)))
        return self.dropout(self.fc2(hidden_states))


class GeoMIMLayer(GradientCheckpointingLayer):
    """One Swin block on a channel-last map: windowed attention, then the MLP, each pre-norm and residual."""

    def __init__(
        self,
        config: GeoMIMConfig,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        drop_path_rate: float,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.layernorm_before = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attention = GeoMIMWindowAttention(config, dim, num_heads, window_size)
        self.layernorm_after = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = GeoMIMMLP(config, dim)
        self.drop_path = StochasticDepth(drop_path_rate, mode="row")

    def windowed_attention(
        self, hidden_states: torch.Tensor, token_groups: torch.Tensor | None = None
    ) -> torch.Tensor:
        _, height, width, _ = hidden_states.shape
        # Zeros at the right and bottom up to whole windows. As in the original, the padding is not masked: the zero
        # tokens take part as keys and values (with their projection biases).
        pad_right, pad_bottom = -width % self.window_size, -height % self.window_size
        hidden_states = F.pad(hidden_states, (0, 0, 0, pad_right, 0, pad_bottom))
        _, padded_height, padded_width, _ = hidden_states.shape

        attention_mask = None
        if self.shift_size > 0:
            hidden_states = torch.roll(hidden_states, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            attention_mask = shifted_window_attention_mask(
                padded_height,
                padded_width,
                self.window_size,
                self.shift_size,
                device=hidden_states.device,
                dtype=hidden_states.dtype,
            )
        if token_groups is not None:
            # Masked pretraining: the padding gets a group of its own (-1), so that no image token attends to it.
            groups = F.pad(token_groups, (0, pad_right, 0, pad_bottom), value=-1)
            if self.shift_size > 0:
                groups = torch.roll(groups, shifts=(-self.shift_size, -self.shift_size), dims=(0, 1))
            group_windows = window_partition(groups[None, :, :, None], self.window_size).squeeze(-1)  # (windows, L)
            group_mask = token_group_attention_mask(group_windows, hidden_states.dtype)
            attention_mask = group_mask if attention_mask is None else attention_mask + group_mask

        windows = window_partition(hidden_states, self.window_size)
        attention_windows = self.attention(windows, attention_mask)
        hidden_states = window_reverse(attention_windows, self.window_size, padded_height, padded_width)

        if self.shift_size > 0:
            hidden_states = torch.roll(hidden_states, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        return hidden_states[:, :height, :width, :]

    def forward(self, hidden_states: torch.Tensor, token_groups: torch.Tensor | None = None) -> torch.Tensor:
        """`hidden_states`: `(batch, height, width, channels)`; `token_groups`: `(height, width)` integer group of
        every token, shared by all images, or `None`. With groups, a token attends only to tokens of its group."""
        attention_output = self.windowed_attention(self.layernorm_before(hidden_states), token_groups)
        hidden_states = hidden_states + self.drop_path(attention_output)
        mlp_output = self.mlp(self.layernorm_after(hidden_states))
        return hidden_states + self.drop_path(mlp_output)


class GeoMIMPatchMerging(nn.Module):
    """Concatenates each 2 x 2 neighbourhood (odd sizes zero-padded at the right and bottom), then LayerNorm and a
    linear reduction from 4C to 2C channels.

    The four C-channel groups are ordered by (row, column) offset (0, 0), (1, 0), (0, 1), (1, 1), as in the original
    Swin, timm and transformers. mmdet's `nn.Unfold` interleaves them channel-major; the converter reorders such
    weights.
    """

    def __init__(self, config: GeoMIMConfig, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=config.layer_norm_eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        _, height, width, _ = hidden_states.shape
        hidden_states = F.pad(hidden_states, (0, 0, 0, width % 2, 0, height % 2))
        batch_size, height, width, channels = hidden_states.shape
        hidden_states = hidden_states.view(batch_size, height // 2, 2, width // 2, 2, channels)
        # (batch, H/2, row, W/2, column, C) -> (batch, H/2, W/2, column, row, C), flattened to 4C group-major.
        hidden_states = hidden_states.permute(0, 1, 3, 4, 2, 5).reshape(batch_size, height // 2, width // 2, -1)
        return self.reduction(self.norm(hidden_states))


class GeoMIMStage(nn.Module):
    """The blocks of one stage, then patch merging (all stages but the last).

    Returns the stage output before merging (what detectors read) and the merged input of the next stage.
    """

    def __init__(self, config: GeoMIMConfig, stage_index: int, drop_path_rates: list[float]):
        super().__init__()
        dim = config.embed_dim * 2**stage_index
        window_size = config.window_size[stage_index]
        shift_size = window_size // 2 if config.shift_windows else 0
        self.blocks = nn.ModuleList(
            [
                GeoMIMLayer(
                    config,
                    dim=dim,
                    num_heads=config.num_heads[stage_index],
                    window_size=window_size,
                    shift_size=shift_size if block_index % 2 == 1 else 0,
                    drop_path_rate=drop_path_rates[block_index],
                )
                for block_index in range(config.depths[stage_index])
            ]
        )
        is_last_stage = stage_index == len(config.depths) - 1
        self.downsample = None if is_last_stage else GeoMIMPatchMerging(config, dim)

    def forward(
        self, hidden_states: torch.Tensor, token_groups: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            hidden_states = block(hidden_states, token_groups)
        stage_output = hidden_states
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        return stage_output, hidden_states


class GeoMIMEncoder(nn.Module):
    def __init__(self, config: GeoMIMConfig):
        super().__init__()
        # Stochastic depth rises linearly from 0 over all blocks of all stages.
        num_blocks = sum(config.depths)
        drop_path_rates = [config.drop_path_rate * index / max(num_blocks - 1, 1) for index in range(num_blocks)]
        block_offsets = [sum(config.depths[:stage_index]) for stage_index in range(len(config.depths))]
        self.layers = nn.ModuleList(
            [
                GeoMIMStage(config, stage_index, drop_path_rates[offset : offset + config.depths[stage_index]])
                for stage_index, offset in enumerate(block_offsets)
            ]
        )

    def forward(self, embeddings: torch.Tensor, token_groups: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Returns the embeddings followed by every stage output before merging, one per `config.stage_names`.

        `token_groups` `(last_height, last_width)` gives a group to every cell of the last stage's grid; each stage
        expands it to its own grid (see [`expand_token_groups`]) and keeps attention inside the groups.
        """
        stage_outputs = [embeddings]
        hidden_states = embeddings
        num_stages = len(self.layers)
        for stage_index, stage in enumerate(self.layers):
            stage_groups = None
            if token_groups is not None:
                _, height, width, _ = hidden_states.shape
                stage_groups = expand_token_groups(token_groups, 2 ** (num_stages - 1 - stage_index), height, width)
            stage_output, hidden_states = stage(hidden_states, stage_groups)
            stage_outputs.append(stage_output)
        return stage_outputs


class GeoMIMPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading for the GeoMIM models."""

    config: GeoMIMConfig
    base_model_prefix = "geomim"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["GeoMIMStage"]
    # Attention always runs through torch's scaled_dot_product_attention; the additive bias rules out flash attention.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _can_record_outputs = {"hidden_states": OutputRecorder(GeoMIMStage, index=0)}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, GeoMIMEmbeddings) and module.position_embeddings is not None:
            init.trunc_normal_(module.position_embeddings, std=self.config.initializer_range)
        elif isinstance(module, GeoMIMRelativePositionBias):
            init.trunc_normal_(module.relative_position_bias_table, std=self.config.initializer_range)
            # Non-persistent, so it is rebuilt on every load rather than read from the checkpoint.
            init.copy_(module.relative_position_index, module.create_relative_position_index())


class GeoMIMModel(GeoMIMPreTrainedModel):
    """The GeoMIM Swin encoder. Takes single images `(batch_size, 3, height, width)` or camera rigs `(batch_size,
    num_cameras, 3, height, width)` of any size, and returns the normed feature maps of `config.out_features`."""

    def __init__(self, config: GeoMIMConfig):
        super().__init__(config)
        self.num_features = [config.embed_dim] + [config.embed_dim * 2**index for index in range(config.num_layers)]
        self.embeddings = GeoMIMEmbeddings(config)
        self.encoder = GeoMIMEncoder(config)
        self.hidden_states_norms = nn.ModuleDict(
            {
                stage: nn.LayerNorm(self.num_features[config.stage_names.index(stage)], eps=config.layer_norm_eps)
                for stage in config.out_features
            }
        )
        self.post_init()

    def get_input_embeddings(self) -> GeoMIMPatchEmbeddings:
        return self.embeddings.patch_embeddings

    def image_batch_shape(self, pixel_values: torch.Tensor) -> tuple[int, ...]:
        """The leading `(batch_size,)` or `(batch_size, num_cameras)` of `pixel_values`, after checking its shape."""
        if pixel_values.ndim not in (4, 5) or 0 in pixel_values.shape:
            raise ValueError(
                "pixel_values must be (batch_size, num_channels, height, width) or (batch_size, num_cameras, "
                f"num_channels, height, width), got shape {tuple(pixel_values.shape)}"
            )
        if pixel_values.shape[-3] != self.config.num_channels:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[-3]} channels at dimension -3 (shape "
                f"{tuple(pixel_values.shape)}), the model expects {self.config.num_channels}"
            )
        return tuple(pixel_values.shape[:-3])

    def last_stage_grid(self, height: int, width: int) -> tuple[int, int]:
        """The token grid of the last stage for `height x width` images: the patch grid, halved (rounding up) by every
        patch merging."""
        grid_height, grid_width = -(-height // self.config.patch_size), -(-width // self.config.patch_size)
        for _ in range(self.config.num_layers - 1):
            grid_height, grid_width = -(-grid_height // 2), -(-grid_width // 2)
        return grid_height, grid_width

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor,
        token_groups: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> GeoMIMModelOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, [num_cameras,] num_channels, height, width)`):
                Normalised images. Cameras are encoded independently; any height and width work.
            token_groups (`torch.LongTensor` of shape `(last_height, last_width)`, *optional*):
                A group for every cell of the last stage's grid (stride 32 for Swin), shared by all images. Every token
                then attends only to tokens in its group, in every window attention, so one pass encodes each group as
                if the others were not there (GeoMIM's complementary masks; padding joins no group). `None` (the
                default) is plain GeoMIM.

        Example:

        ```python
        >>> import torch
        >>> from geomim_hf import GeoMIMConfig, GeoMIMModel

        >>> model = GeoMIMModel(GeoMIMConfig(embed_dim=32, num_heads=[1, 2, 4, 8], depths=[1, 1, 2, 1]))
        >>> outputs = model(torch.randn(1, 6, 3, 256, 704))
        >>> [tuple(feature_map.shape) for feature_map in outputs.feature_maps]
        [(1, 6, 128, 16, 44), (1, 6, 256, 8, 22)]

        ```
        """
        check_forward_kwargs(self, kwargs)
        batch_shape = self.image_batch_shape(pixel_values)
        images = pixel_values.flatten(0, len(batch_shape) - 1)  # cameras folded into the batch
        if token_groups is not None:
            expected = self.last_stage_grid(*pixel_values.shape[-2:])
            if tuple(token_groups.shape) != expected or token_groups.dtype.is_floating_point:
                raise ValueError(
                    f"token_groups must be an integer tensor of shape {expected} (the last stage's grid for "
                    f"{tuple(pixel_values.shape[-2:])} images), got {token_groups.dtype} of shape "
                    f"{tuple(token_groups.shape)}"
                )

        # channel-last, one per config.stage_names
        stage_outputs = self.encoder(self.embeddings(images), token_groups)

        feature_maps = []
        for stage, stage_index in zip(self.config.out_features, self.config.out_indices):
            feature_map = self.hidden_states_norms[stage](stage_outputs[stage_index]).permute(0, 3, 1, 2).contiguous()
            feature_maps.append(feature_map.unflatten(0, batch_shape))
        last_hidden_state = stage_outputs[-1].flatten(1, 2).unflatten(0, batch_shape)
        return GeoMIMModelOutput(last_hidden_state=last_hidden_state, feature_maps=tuple(feature_maps))


class GeoMIMBackbone(BackboneMixin, GeoMIMPreTrainedModel):
    """The GeoMIM Swin encoder as a transformers backbone (`AutoBackbone`), for detection and segmentation heads."""

    def __init__(self, config: GeoMIMConfig):
        super().__init__(config)
        self.geomim = GeoMIMModel(config)
        self.num_features = self.geomim.num_features
        self.post_init()

    @can_return_tuple
    def forward(self, pixel_values: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BackboneOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, [num_cameras,] num_channels, height, width)`):
                Normalised images; see [`GeoMIMModel`].
        """
        check_forward_kwargs(self, kwargs)
        outputs = self.geomim(pixel_values, **kwargs)
        return BackboneOutput(feature_maps=outputs.feature_maps, hidden_states=outputs.hidden_states)


__all__ = ["GeoMIMBackbone", "GeoMIMModel", "GeoMIMModelOutput", "GeoMIMPreTrainedModel"]
