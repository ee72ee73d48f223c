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
notes for the layouts.
"""

import math
import pickle
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from .configuration_geomim import GeoMIMConfig
from .modeling_geomim import GeoMIMModel


# Prefixes under which the encoder sits, tried in this order: GeoMIM / BEVFusion pretraining, BEVDet detectors, mmdet.
BACKBONE_PREFIXES = ("encoders.camera.backbone.", "img_backbone.", "backbone.")

# GeoMIM pretraining modules that live next to the encoder under `encoders.camera.backbone.` (geomim.md 8.3): the
# mask token, the top-down neck, both decoders, the cross-view attention and the camera-aware depth branch.
GEOMIM_PRETRAINING_ONLY = (
    "mask_token",
    "decoder_pos_embed",
    "decoder_embed_new.",
    "up_p4_fc.",
    "up_smooth_p4.",
    "final_norm.",
    "decoder_blocks.",
    "decoder_norm.",
    "decoder_blocks_pix.",
    "decoder_norm_pix.",
    "cam_pose.",
    "decoder_cross_module.",
)
# Buffers that the model rebuilds from the window size.
DERIVED_BUFFERS = ("relative_position_index", "attn_mask")
# The ImageNet classifier of Swin checkpoints (`head.*` official, `head.fc.*` timm).
CLASSIFIER_HEAD = ("head.",)

# nn.Unfold enumerates the 2 x 2 kernel row-major, (0,0), (0,1), (1,0), (1,1); Swin concatenates the groups
# (0,0), (1,0), (0,1), (1,1). Group j sits in Unfold slot UNFOLD_SLOT_OF_GROUP[j] (the permutation is its own inverse).
UNFOLD_SLOT_OF_GROUP = (0, 2, 1, 3)


class CheckpointConversionError(ValueError):
    """A checkpoint that cannot be converted exactly: unknown or missing keys, wrong shapes, unknown layout."""


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


def _unchanged(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (tensor,)


def _split_qkv(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rows [0:C], [C:2C], [2C:3C] of a fused qkv weight or bias are the query, key and value."""
    return tuple(tensor.chunk(3, dim=0))


def _reorder_unfold(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (unfold_to_grouped_channels(tensor),)


def _token_grid_to_channel_first(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Swin stores an absolute position embedding as (1, L, C) tokens of a square grid; GeoMIM as (1, C, h, w)."""
    if tensor.ndim == 4:
        return (tensor,)
    _, num_tokens, channels = tensor.shape
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise CheckpointConversionError(f"absolute_pos_embed has {num_tokens} tokens, not a square grid")
    return (tensor.reshape(1, side, side, channels).permute(0, 3, 1, 2).contiguous(),)


@dataclass(frozen=True)
class KeyRule:
    """Source keys fully matching `pattern` become `targets` (formatted with the named groups of the match), with the
    tensors that `transform` returns, one per target."""

    pattern: str
    targets: tuple[str, ...]
    transform: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] = _unchanged


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
            rules.append(KeyRule(pattern + _PARAM, targets, _split_qkv))
        elif target_leaf == _RELATIVE_POSITION_BIAS_TABLE:
            rules.append(KeyRule(pattern, (_BLOCK + target_leaf,)))
        else:
            rules.append(KeyRule(pattern + _PARAM, (f"{_BLOCK}{target_leaf}.{{param}}",)))
    return tuple(rules)


# The key table: source key (relative to the backbone) -> GeoMIMModel key, for each layout.
KEY_RULES = {
    "mmdet": (
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
            _reorder_unfold,
        ),
        KeyRule(r"norm(?P<stage>\d+)" + _PARAM, ("hidden_states_norms.{output_stage}.{param}",)),
    ),
    "swin": (
        KeyRule(r"patch_embed\.proj" + _PARAM, ("embeddings.patch_embeddings.projection.{param}",)),
        KeyRule(r"patch_embed\.norm" + _PARAM, ("embeddings.norm.{param}",)),
        KeyRule(r"absolute_pos_embed", ("embeddings.position_embeddings",), _token_grid_to_channel_first),
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

# What each layout drops, by reason. Keys are matched by prefix, or by suffix for the derived buffers.
DROPPED_PREFIXES = {
    "mmdet": {"GeoMIM pretraining only": GEOMIM_PRETRAINING_ONLY},
    "swin": {"ImageNet classifier": CLASSIFIER_HEAD},
}


@dataclass
class ConversionReport:
    """What a conversion did with every key of the source checkpoint."""

    source_layout: str
    backbone_prefix: str
    converted: dict[str, tuple[str, ...]] = field(default_factory=dict)
    reordered: list[str] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)
    initialised: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def drop(self, reason: str, key: str) -> None:
        self.dropped.setdefault(reason, []).append(key)

    def format(self) -> str:
        num_targets = sum(len(targets) for targets in self.converted.values())
        prefix = self.backbone_prefix or "(none)"
        lines = [
            f"Source layout: {self.source_layout}; backbone prefix: {prefix}",
            f"Converted: {len(self.converted)} source tensors -> {num_targets} GeoMIMModel tensors",
            f"  patch-merging channels reordered from nn.Unfold order: {len(self.reordered)}",
        ]
        for reason, keys in self.dropped.items():
            groups = Counter(key.split(".")[0] for key in keys)
            summary = ", ".join(f"{name} ({count})" for name, count in sorted(groups.items()))
            lines.append(f"Dropped, {reason}: {len(keys)} [{summary}]")
        for key, how in self.initialised.items():
            lines.append(f"Initialised without a source: {key} ({how})")
        lines.append(f"Missing: {len(self.missing)}" + (f" {self.missing}" if self.missing else ""))
        lines.append(f"Unexpected: {len(self.unexpected)}" + (f" {self.unexpected}" if self.unexpected else ""))
        return "\n".join(lines)


def load_checkpoint_file(path: str | Path) -> Mapping[str, object]:
    """Reads a `.pth`/`.pt`/`.bin` file with `torch.load(weights_only=True)`, or a `.safetensors` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointConversionError(
            f"{path} holds objects that torch.load(weights_only=True) refuses to unpickle; re-save its tensors as a "
            f"plain dict (or safetensors) from a trusted environment. torch said: {error}"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:  # what torch raises for a truncated or corrupt archive
        raise CheckpointConversionError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): {error}"
        ) from error


def unwrap_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: its `state_dict`, else its `model`, else the checkpoint itself, without the DDP
    `module.` prefix."""
    for container_key in ("state_dict", "model"):
        if isinstance(checkpoint.get(container_key), Mapping):
            checkpoint = checkpoint[container_key]
            break
    state_dict = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointConversionError(f"Checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")
        state_dict[key.removeprefix("module.")] = value
    return state_dict


def select_backbone(state_dict: Mapping[str, torch.Tensor], report: ConversionReport) -> dict[str, torch.Tensor]:
    """The encoder's tensors with their prefix removed; everything outside the prefix is dropped into `report`."""
    for prefix in BACKBONE_PREFIXES:
        if any(key.startswith(prefix) for key in state_dict):
            report.backbone_prefix = prefix
            backbone = {}
            for key, value in state_dict.items():
                if key.startswith(prefix):
                    backbone[key.removeprefix(prefix)] = value
                else:
                    report.drop(f"outside {prefix.rstrip('.')}", key)
            return backbone
    return dict(state_dict)


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


def _dropped_reason(layout: str, key: str) -> str | None:
    if key.endswith(DERIVED_BUFFERS):
        return "derived buffer, rebuilt from the window size"
    for reason, prefixes in DROPPED_PREFIXES[layout].items():
        if key.startswith(prefixes):
            return reason
    return None


def _num_stages(backbone: Mapping[str, torch.Tensor], layout: str) -> int:
    stage_key = re.compile(r"(?:stages|layers)\.(\d+)\.")
    stages = {int(match.group(1)) for key in backbone if (match := stage_key.match(key))}
    if not stages:
        raise CheckpointConversionError(f"No transformer stage found in the {layout} checkpoint")
    return max(stages) + 1


def map_keys(backbone: Mapping[str, torch.Tensor], layout: str, report: ConversionReport) -> dict[str, torch.Tensor]:
    """Applies the layout's `KEY_RULES` to every key that is not dropped; an unknown key raises."""
    rules = [(re.compile(rule.pattern), rule) for rule in KEY_RULES[layout]]
    num_stages = _num_stages(backbone, layout)
    converted = {}
    for key, tensor in backbone.items():
        reason = _dropped_reason(layout, key)
        if reason is not None:
            report.drop(reason, key)
            continue
        for pattern, rule in rules:
            match = pattern.fullmatch(key)
            if match is not None:
                break
        else:
            raise CheckpointConversionError(
                f"Unknown key {key!r} in the {layout} checkpoint (after removing the prefix "
                f"{report.backbone_prefix or 'none'!r}): it is neither an encoder weight nor on a drop list"
            )
        fields = match.groupdict()
        # Output norms go by transformers' stage names, which count from 1 ("stem" is 0). Without a stage index, the
        # norm is Swin's final norm, after the last stage.
        stage = int(fields["stage"]) if "stage" in fields else num_stages - 1
        fields["output_stage"] = f"stage{stage + 1}"
        targets = tuple(target.format(**fields) for target in rule.targets)
        for target, value in zip(targets, rule.transform(tensor), strict=True):
            converted[target] = value.contiguous()
        report.converted[key] = targets
        if rule.transform is _reorder_unfold:
            report.reordered.append(key)
    return converted


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
    report.initialised[f"hidden_states_norms.{stage}"] = "identity LayerNorm: weight 1, bias 0"


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


def check_against_model(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module, report) -> None:
    """Raises, naming the keys, unless `state_dict` has exactly the model's keys and shapes; records the missing and
    unexpected keys in `report` (any report with those two lists)."""
    expected = model.state_dict()
    report.missing = sorted(set(expected) - set(state_dict))
    report.unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)}, model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if state_dict[key].shape != expected[key].shape
    ]
    problems = []
    if report.missing:
        problems.append(f"missing keys {report.missing}")
    if report.unexpected:
        problems.append(f"unexpected keys {report.unexpected}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched}")
    if problems:
        raise CheckpointConversionError(f"The converted weights do not fit {type(model).__name__}: " + "; ".join(problems))


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
    state_dict = unwrap_state_dict(checkpoint)
    report = ConversionReport(source_layout="", backbone_prefix="")
    backbone = select_backbone(state_dict, report)
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
    model = GeoMIMModel(config)
    check_against_model(state_dict, model, report)
    model.load_state_dict(state_dict, strict=True)
    return model.eval(), report


__all__ = [
    "CheckpointConversionError",
    "ConversionReport",
    "RELEASED_SWIN_SIZES",
    "check_against_model",
    "convert_checkpoint",
    "convert_state_dict",
    "grouped_to_unfold_channels",
    "load_checkpoint_file",
    "released_swin_size",
    "unfold_to_grouped_channels",
]
