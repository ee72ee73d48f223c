"""Conversion of GeoMIM and Swin checkpoints to [`GeoMIMModel`] weights: the one place that knows foreign key names.

Two source layouts are understood:

- **mmdet** (`stages.{i}.blocks.{j}.attn.w_msa.qkv`, Unfold-ordered patch merging, `norm{i}` output norms): the
  released GeoMIM pretraining checkpoints (prefix `encoders.camera.backbone.`), the backbone of finetuned BEVDet
  detectors (`img_backbone.`) and mmdet detectors (`backbone.`);
- **swin** (`layers.{i}.blocks.{j}.attn.qkv`, one final `norm`): the official Microsoft Swin checkpoints and timm's,
  with the patch merging at the end of a stage (official, timm < 0.9) or at the start of the next one (timm >= 0.9).

Containers and prefixes are accepted as the original GeoMIM loader accepts them (`state_dict`, then `model`, then the
raw dict; a leading `module.`). Everything that is not the encoder is dropped by an explicit list and reported; any
other key is an error. The architecture is read from the tensor shapes. See `geomim.md` section 8 of the project
notes for the layouts; the rule type, the report and the strict load are `geomim_hf.checkpoint_conversion`'s.
"""

import math
import re
from collections.abc import Mapping

import torch

from ...checkpoint_conversion import (
    CheckpointConversionError,
    ConversionReport,
    KeyRule,
    apply_key_rules,
    load_converted,
    select_prefix,
    split_fused_qkv,
    unwrap_state_dict,
)
from .configuration_geomim import GeoMIMConfig
from .modeling_geomim import GeoMIMModel

# Prefixes under which the encoder sits, tried in this order: GeoMIM / BEVFusion pretraining, BEVDet detectors, mmdet.
BACKBONE_PREFIXES = ("encoders.camera.backbone.", "img_backbone.", "backbone.")


# nn.Unfold enumerates the 2 x 2 kernel row-major, (0,0), (0,1), (1,0), (1,1); Swin concatenates the groups
# (0,0), (1,0), (0,1), (1,1). Group j sits in Unfold slot UNFOLD_SLOT_OF_GROUP[j] (the permutation is its own inverse).
UNFOLD_SLOT_OF_GROUP = (0, 2, 1, 3)


def unfold_to_grouped_channels(tensor: torch.Tensor) -> torch.Tensor:
    """Reorders the last (4C) axis of a patch-merging norm or reduction weight from mmdet's `nn.Unfold` layout,
    feature `4c + k` for kernel slot k, to Swin's group-major layout, feature `C j + c` for 2 x 2 group j.

    LayerNorm statistics do not depend on the channel order, so permuting the norm's weight and bias together with
    the reduction's input columns leaves the function unchanged.
    """
    *leading, merged_channels = tensor.shape
    channels = merged_channels // 4
    slots = tensor.reshape(*leading, channels, 4)  # [..., c, k] = feature 4c + k
    groups = slots[..., list(UNFOLD_SLOT_OF_GROUP)].transpose(-1, -2)  # [..., j, c]
    return groups.reshape(*leading, merged_channels)


def grouped_to_unfold_channels(tensor: torch.Tensor) -> torch.Tensor:
    """Inverse of [`unfold_to_grouped_channels`]: Swin's group-major 4C layout to mmdet's `nn.Unfold` layout."""
    *leading, merged_channels = tensor.shape
    channels = merged_channels // 4
    groups = tensor.reshape(*leading, 4, channels)  # [..., j, c]
    slots = groups[..., list(UNFOLD_SLOT_OF_GROUP), :].transpose(-1, -2)  # [..., c, k]
    return slots.reshape(*leading, merged_channels)


def token_grid_to_channel_first(tensor: torch.Tensor) -> torch.Tensor:
    """A position table stored as (1, L, C) tokens of a square grid (Swin's absolute embedding, MixMIM's decoder
    table), as GeoMIM stores it: (1, C, side, side). A table already channel-first is returned as it is."""
    if tensor.ndim == 4:
        return tensor
    _, num_tokens, channels = tensor.shape
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise CheckpointConversionError(f"a (1, L, C) position table has {num_tokens} tokens, not a square grid")
    return tensor.reshape(1, side, side, channels).permute(0, 3, 1, 2)


_PARAM = r"\.(?P<param>weight|bias)"
_BLOCK = "encoder.layers.{stage}.blocks.{block}."
_RELATIVE_POSITION_BIAS_TABLE = "attention.relative_position_bias.relative_position_bias_table"


def _block_rules(source_block: str, leaves: Mapping[str, str]) -> tuple[KeyRule, ...]:
    """Rules for the leaves of one transformer block, `source leaf -> target leaf`; `qkv` splits in three."""
    rules = []
    for source_leaf, target_leaf in leaves.items():
        pattern = source_block + re.escape(source_leaf)
        if target_leaf == "qkv":
            targets = tuple(f"{_BLOCK}attention.{name}_proj.{{param}}" for name in ("q", "k", "v"))
            rules.append(KeyRule(pattern + _PARAM, targets, split_fused_qkv))
        elif target_leaf == _RELATIVE_POSITION_BIAS_TABLE:
            rules.append(KeyRule(pattern, (_BLOCK + target_leaf,)))
        else:
            rules.append(KeyRule(pattern + _PARAM, (f"{_BLOCK}{target_leaf}.{{param}}",)))
    return tuple(rules)


# Buffers that the model rebuilds from the window size, dropped in both layouts.
DERIVED_BUFFERS = KeyRule(r".+\.(?:relative_position_index|attn_mask)",
                          drop="derived buffer, rebuilt from the window size")

# The key table: source key (relative to the backbone) -> GeoMIMModel key, for each layout, drops first.
KEY_RULES = {
    "mmdet": (
        # GeoMIM pretraining modules that live next to the encoder under `encoders.camera.backbone.` (geomim.md 8.3):
        # the mask token, the top-down neck, both decoders, the cross-view attention and the camera-aware depth branch.
        KeyRule(r"mask_token|decoder_pos_embed", drop="GeoMIM pretraining only"),
        KeyRule(r"(?:decoder_embed_new|up_p4_fc|up_smooth_p4|final_norm|decoder_blocks|decoder_norm|decoder_blocks_pix"
                r"|decoder_norm_pix|cam_pose|decoder_cross_module)\..+", drop="GeoMIM pretraining only"),
        DERIVED_BUFFERS,
        KeyRule(r"patch_embed\.projection" + _PARAM, ("embeddings.patch_embeddings.projection.{param}",)),
        KeyRule(r"patch_embed\.norm" + _PARAM, ("embeddings.norm.{param}",)),
        KeyRule(r"absolute_pos_embed", ("embeddings.position_embeddings",)),
        *_block_rules(
            r"stages\.(?P<stage>\d+)\.blocks\.(?P<block>\d+)\.",
            {
                "norm1": "layernorm_before",
                "attn.w_msa.qkv": "qkv",
                "attn.w_msa.proj": "attention.o_proj",
                "attn.w_msa.relative_position_bias_table": _RELATIVE_POSITION_BIAS_TABLE,
                "norm2": "layernorm_after",
                "ffn.layers.0.0": "mlp.fc1",
                "ffn.layers.1": "mlp.fc2",
            },
        ),
        KeyRule(
            r"stages\.(?P<stage>\d+)\.downsample\.(?P<name>norm\.weight|norm\.bias|reduction\.weight)",
            ("encoder.layers.{stage}.downsample.{name}",),
            unfold_to_grouped_channels,
        ),
        KeyRule(r"norm(?P<stage>\d+)" + _PARAM, ("hidden_states_norms.{output_stage}.{param}",)),
    ),
    "swin": (
        # The ImageNet classifier of Swin checkpoints (`head.*` official, `head.fc.*` timm).
        KeyRule(r"head\..+", drop="ImageNet classifier"),
        DERIVED_BUFFERS,
        KeyRule(r"patch_embed\.proj" + _PARAM, ("embeddings.patch_embeddings.projection.{param}",)),
        KeyRule(r"patch_embed\.norm" + _PARAM, ("embeddings.norm.{param}",)),
        KeyRule(r"absolute_pos_embed", ("embeddings.position_embeddings",), token_grid_to_channel_first),
        *_block_rules(
            r"layers\.(?P<stage>\d+)\.blocks\.(?P<block>\d+)\.",
            {
                "norm1": "layernorm_before",
                "attn.qkv": "qkv",
                "attn.proj": "attention.o_proj",
                "attn.relative_position_bias_table": _RELATIVE_POSITION_BIAS_TABLE,
                "norm2": "layernorm_after",
                "mlp.fc1": "mlp.fc1",
                "mlp.fc2": "mlp.fc2",
            },
        ),
        KeyRule(
            r"layers\.(?P<stage>\d+)\.downsample\.(?P<name>norm\.weight|norm\.bias|reduction\.weight)",
            ("encoder.layers.{stage}.downsample.{name}",),
        ),
        # The final norm follows the last stage, which makes it that stage's output norm.
        KeyRule(r"norm" + _PARAM, ("hidden_states_norms.{output_stage}.{param}",)),
    ),
}


def detect_layout(backbone: Mapping[str, torch.Tensor]) -> str:
    if "patch_embed.projection.weight" in backbone:
        return "mmdet"
    if "patch_embed.proj.weight" in backbone:
        return "swin"
    sample = sorted(backbone)[:8]
    raise CheckpointConversionError(
        "No Swin patch embedding (patch_embed.projection.weight or patch_embed.proj.weight) found after removing "
        f"the prefixes {BACKBONE_PREFIXES}; first keys: {sample}"
    )


def move_timm_downsample_to_stage_end(backbone: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm >= 0.9 starts stage i + 1 with the merging that official Swin (and GeoMIM) ends stage i with."""
    if "layers.0.downsample.reduction.weight" in backbone:
        return dict(backbone)

    def previous_stage(match: re.Match) -> str:
        return f"layers.{int(match.group(1)) - 1}.downsample."

    return {re.sub(r"^layers\.(\d+)\.downsample\.", previous_stage, key): value for key, value in backbone.items()}


def _num_stages(backbone: Mapping[str, torch.Tensor], layout: str) -> int:
    stage_key = re.compile(r"(?:stages|layers)\.(\d+)\.")
    stages = {int(match.group(1)) for key in backbone if (match := stage_key.match(key))}
    if not stages:
        raise CheckpointConversionError(f"No transformer stage found in the {layout} checkpoint")
    return max(stages) + 1


def map_keys(backbone: Mapping[str, torch.Tensor], layout: str, report: ConversionReport,
             rules: tuple[KeyRule, ...] | None = None) -> dict[str, torch.Tensor]:
    """Applies the layout's `KEY_RULES` (or `rules`, a table built on them) to the encoder's keys; an unknown key
    raises, naming it."""
    num_stages = _num_stages(backbone, layout)

    def fields(groups: dict[str, str]) -> dict[str, str]:
        # Output norms go by transformers' stage names, which count from 1 ("stem" is 0). Without a stage index, the
        # norm is Swin's final norm, after the last stage.
        stage = int(groups["stage"]) if "stage" in groups else num_stages - 1
        return {**groups, "output_stage": f"stage{stage + 1}"}

    source = f"the {layout} checkpoint (after removing the prefix {report.prefix or 'none'!r})"
    return apply_key_rules(backbone, KEY_RULES[layout] if rules is None else rules, report, source=source,
                           fields=fields)


def infer_config(state_dict: Mapping[str, torch.Tensor], shift_windows: bool) -> GeoMIMConfig:
    """Reads the architecture from the shapes of converted (GeoMIMModel-named) tensors."""
    projection = state_dict["embeddings.patch_embeddings.projection.weight"]  # (C, num_channels, patch, patch)
    embed_dim, num_channels, patch_size, _ = projection.shape

    block_key = re.compile(r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.")
    blocks_per_stage: dict[int, set[int]] = {}
    for key in state_dict:
        if key.endswith("layernorm_before.weight") and (match := block_key.match(key)):
            blocks_per_stage.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    depths = []
    for stage in range(max(blocks_per_stage) + 1):
        blocks = blocks_per_stage.get(stage, set())
        missing_blocks = sorted(set(range(max(blocks, default=-1) + 1)) - blocks)
        if not blocks or missing_blocks:
            raise CheckpointConversionError(
                f"Stage {stage} of the checkpoint has blocks {sorted(blocks)}: blocks {missing_blocks or [0]} are "
                f"missing (a truncated or edited checkpoint?)"
            )
        depths.append(len(blocks))

    num_heads, window_size = [], []
    for stage in range(len(depths)):
        table_key = f"encoder.layers.{stage}.blocks.0.attention.relative_position_bias.relative_position_bias_table"
        if table_key not in state_dict:
            raise CheckpointConversionError(f"Missing key {table_key!r}: cannot infer stage {stage + 1}")
        table_rows, heads = state_dict[table_key].shape
        side = math.isqrt(table_rows)
        if side * side != table_rows or side % 2 == 0:
            raise CheckpointConversionError(f"{table_key} has {table_rows} rows, not (2 * window - 1)**2")
        num_heads.append(heads)
        window_size.append((side + 1) // 2)

    position_embeddings = state_dict.get("embeddings.position_embeddings")
    image_size = 224 if position_embeddings is None else position_embeddings.shape[-1] * patch_size
    mlp_ratio = state_dict["encoder.layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
    out_features = sorted(
        {key.split(".")[1] for key in state_dict if key.startswith("hidden_states_norms.")},
        key=lambda stage: int(stage.removeprefix("stage")),
    )
    return GeoMIMConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=num_channels,
        embed_dim=embed_dim,
        depths=depths,
        num_heads=num_heads,
        window_size=window_size,
        shift_windows=shift_windows,
        use_absolute_embeddings=position_embeddings is not None,
        mlp_ratio=int(mlp_ratio) if mlp_ratio.is_integer() else mlp_ratio,
        qkv_bias="encoder.layers.0.blocks.0.attention.q_proj.bias" in state_dict,
        out_features=out_features,
    )


def add_identity_output_norm(state_dict: dict[str, torch.Tensor], report: ConversionReport) -> None:
    """A Swin classifier checkpoint normalises only its last stage. GeoMIM's detectors also read the stage before;
    its output norm starts as the identity LayerNorm, which is what mmdet builds for a stage without a source."""
    output_norms = [key for key in state_dict if key.startswith("hidden_states_norms.") and key.endswith(".weight")]
    if len(output_norms) != 1:
        raise CheckpointConversionError(f"A Swin checkpoint has one final norm (norm.weight), found {output_norms}")
    last_norm = output_norms[0]
    last_stage_index = int(last_norm.split(".")[1].removeprefix("stage"))
    channels = state_dict[last_norm].shape[0] // 2
    stage = f"stage{last_stage_index - 1}"
    state_dict[f"hidden_states_norms.{stage}.weight"] = torch.ones(channels)
    state_dict[f"hidden_states_norms.{stage}.bias"] = torch.zeros(channels)
    report.add_initialised("identity LayerNorm: weight 1, bias 0", f"hidden_states_norms.{stage}.weight",
                           f"hidden_states_norms.{stage}.bias")


# The Swin sizes that released checkpoints come in: embed_dim -> (depths, heads) of each size of that width.
RELEASED_SWIN_SIZES = {
    "tiny": (96, [2, 2, 6, 2], [3, 6, 12, 24]),
    "small": (96, [2, 2, 18, 2], [3, 6, 12, 24]),
    "base": (128, [2, 2, 18, 2], [4, 8, 16, 32]),
    "large": (192, [2, 2, 18, 2], [6, 12, 24, 48]),
}


def released_swin_size(config: GeoMIMConfig, allow_custom: bool = False) -> str | None:
    """The released Swin size (`tiny`, `small`, `base`, `large`) of a converted architecture, or None for a custom
    one.

    A checkpoint with the width of a released size but other depths or heads is almost always a damaged file (a
    missing block, a stage cut short), so it is refused unless `allow_custom` says the architecture is intended.
    """
    same_width = {name: size for name, size in RELEASED_SWIN_SIZES.items() if size[0] == config.embed_dim}
    for name, (_, depths, heads) in same_width.items():
        if config.depths == depths and config.num_heads == heads:
            return name
    if same_width and not allow_custom:
        expected = "; ".join(f"{name}: depths {depths}, heads {heads}" for name, (_, depths, heads) in same_width.items())
        raise CheckpointConversionError(
            f"The checkpoint has embed_dim {config.embed_dim}, the width of Swin {'/'.join(same_width)}, but depths "
            f"{config.depths} and heads {config.num_heads} ({expected}). If this architecture is intended, convert "
            f"it as a custom architecture explicitly."
        )
    return None


def convert_state_dict(
    checkpoint: Mapping[str, object], shift_windows: bool | None = None
) -> tuple[GeoMIMConfig, dict[str, torch.Tensor], ConversionReport]:
    """Converts a GeoMIM (mmdet layout) or Swin (official / timm) checkpoint to GeoMIMModel's keys and config.

    Args:
        checkpoint: a loaded checkpoint, in any container form the original GeoMIM loader accepts.
        shift_windows: whether the source model shifts windows in odd blocks. Weights cannot tell it directly; by
            default the swin layout (ImageNet Swin) shifts, and so does an mmdet-layout encoder without an absolute
            position embedding (BEVDet's `SwinTransformerOri`, the ImageNet baseline of GeoMIM's detectors), while an
            mmdet-layout encoder with one is GeoMIM's `SwinTransformerBEVFT`, which never shifts.
    """
    report = ConversionReport(target=GeoMIMModel.__name__)
    backbone = select_prefix(unwrap_state_dict(checkpoint), BACKBONE_PREFIXES, report)
    layout = detect_layout(backbone)
    report.source_layout = layout
    if layout == "swin":
        backbone = move_timm_downsample_to_stage_end(backbone)
    converted = map_keys(backbone, layout, report)
    if layout == "swin":
        add_identity_output_norm(converted, report)
    if shift_windows is None:
        shift_windows = layout == "swin" or "absolute_pos_embed" not in backbone
    return infer_config(converted, shift_windows=shift_windows), converted, report


def convert_checkpoint(
    checkpoint: Mapping[str, object], shift_windows: bool | None = None
) -> tuple[GeoMIMModel, ConversionReport]:
    """Converts a checkpoint (see [`convert_state_dict`]) and loads it strictly into a new [`GeoMIMModel`]."""
    config, state_dict, report = convert_state_dict(checkpoint, shift_windows=shift_windows)
    return load_converted(GeoMIMModel(config), state_dict, report), report


__all__ = [
    "BACKBONE_PREFIXES",
    "KEY_RULES",
    "RELEASED_SWIN_SIZES",
    "convert_checkpoint",
    "convert_state_dict",
    "detect_layout",
    "grouped_to_unfold_channels",
    "infer_config",
    "map_keys",
    "move_timm_downsample_to_stage_end",
    "released_swin_size",
    "token_grid_to_channel_first",
    "unfold_to_grouped_channels",
]
