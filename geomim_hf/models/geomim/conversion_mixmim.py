"""Initialisation of GeoMIM pretraining from MixMIM (or ImageNet Swin) weights, as the original does it.

GeoMIM's pretraining encoder starts from MixMIM (Sense-X/MixMIM, `mixmim_base_600ep.pth`): a Swin trained with
windows (14, 14, 14, 7) and a fixed sin-cos absolute position embedding, stored as `{'model': ...}` in the official
Swin key layout. GeoMIM loads it through mmdet's `swin_converter` and `SwinTransformerBEV.init_weights`
(`geomim.md` section 1.2 and 8.4 of the project notes), which

- maps the encoder keys (the table of an official Swin checkpoint, `conversion_geomim.KEY_RULES["swin"]`);
- reshapes `absolute_pos_embed` (1, L, C) to (1, C, 56, 56);
- resizes every relative-position table from its source window to the model's (16, 16, 16, 8), BEiT-style
  (:func:`resize_relative_position_bias_table`);
- leaves the final `norm` unused: GeoMIM builds fresh output norms for stages 3 and 4 (identity LayerNorms);
- loads `mask_token`, `decoder_pos_embed` (reshaped to (1, 512, 7, 7)), `decoder_blocks.0-7` and `decoder_norm` into
  its pretraining decoder, and nothing of `decoder_embed` or `decoder_pred` (`MIXMIM_DECODER_RULES`).

The encoder becomes a [`GeoMIMModel`]. The decoder tensors are returned under their MixMIM names, untouched: the
conversion script stores them so (`MIXMIM_DECODER_FILE`), and [`load_mixmim_decoder`] converts them into a
[`GeoMIMForPretraining`] when pretraining starts. The same path serves an ImageNet Swin checkpoint (official or timm
layout): it gives the GeoMIM architecture (no shift, windows 16/8) initialised from ImageNet, with the absolute
position embedding at zero, as GeoMIM's loader leaves a missing one.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy.interpolate import RectBivariateSpline

from ...checkpoint_conversion import (
    CheckpointConversionError,
    ConversionReport,
    KeyRule,
    apply_key_rules,
    check_against_model,
    load_converted,
    unwrap_state_dict,
)
from .conversion_geomim import (
    BACKBONE_PREFIXES,
    KEY_RULES,
    detect_layout,
    infer_config,
    map_keys,
    move_timm_downsample_to_stage_end,
    token_grid_to_channel_first,
)
from .modeling_geomim import GeoMIMModel
from .modeling_geomim_pretraining import GeoMIMForPretraining

GEOMIM_WINDOWS = (16, 16, 16, 8)
# Where the conversion script stores MixMIM's decoder, under its MixMIM names, next to the converted encoder.
MIXMIM_DECODER_FILE = "decoder_init.safetensors"

# MixMIM's pretraining decoder (models_mixmim.py) -> GeoMIMForPretraining, as GeoMIM's `init_weights` takes it.
MIXMIM_DECODER_RULES = (
    KeyRule(r"mask_token", ("mask_token",)),
    KeyRule(r"decoder_pos_embed", ("decoder_pos_embed",), token_grid_to_channel_first),  # (1, 49, C) -> (1, C, 7, 7)
    KeyRule(r"(?P<name>decoder_(?:blocks|norm)\..+)", ("{name}",)),  # the same timm blocks
    KeyRule(r"decoder_(?:embed|pred)\..+",
            drop="not used by GeoMIM (its projection from the stride-16 neck is decoder_embed_new; it reconstructs "
                 "BEV features, not pixels)"),
)
# The tensors of GeoMIMForPretraining that a MixMIM decoder initialises, all of them.
MIXMIM_DECODER_TARGETS = ("mask_token", "decoder_pos_embed", "decoder_blocks.", "decoder_norm.")
# The encoder's table: the official Swin one, but GeoMIM builds fresh output norms instead of the final norm.
ENCODER_RULES = (KeyRule(r"norm\.(?:weight|bias)", drop="final norm (GeoMIM builds fresh output norms)"),
                 *KEY_RULES["swin"])
_TABLE_SUFFIX = "attention.relative_position_bias.relative_position_bias_table"


def geometric_source_positions(source_side: int, target_side: int) -> np.ndarray:
    """Positions of the ``source_side`` offsets of a relative-position table on the target's integer offset axis.

    BEiT's scheme, as GeoMIM runs it: bisect a ratio q in (1.01, 1.5) until the geometric series
    ``1 + q + ... + q**(n - 1)`` of ``n = source_side // 2`` terms reaches ``target_side // 2``; the source offsets
    1, 2, ..., n then sit at the partial sums of that series (and mirrored), so the centre keeps unit spacing and the
    table stretches towards its edges.
    """
    half_source, half_target = source_side // 2, target_side // 2
    low, high = 1.01, 1.5
    ratio = (low + high) / 2
    while high - low > 1e-6:
        ratio = (low + high) / 2
        if (1.0 - ratio**half_source) / (1.0 - ratio) > half_target:
            high = ratio
        else:
            low = ratio
    distances = np.cumsum([ratio**index for index in range(half_source)])  # 1, 1 + q, 1 + q + q^2, ...
    return np.concatenate([-distances[::-1], [0.0], distances])


def resize_relative_position_bias_table(table: torch.Tensor, window_size: int) -> torch.Tensor:
    """A ((2s - 1)**2, heads) Swin relative-position table resized to ``window_size``, BEiT-style.

    Each head's (2s - 1) x (2s - 1) grid of offsets (rows: vertical offset, columns: horizontal) is placed at
    :func:`geometric_source_positions` and read at the integer offsets of the new window with a bicubic interpolating
    spline: what the original's `scipy.interpolate.interp2d(kind='cubic')` computes on a grid (FITPACK's `regrid` with
    no smoothing, clamped outside); `interp2d` is gone from SciPy, `RectBivariateSpline` remains. Computed in float32
    input precision like the original; the table keeps its dtype.
    """
    rows, num_heads = table.shape
    source_side, target_side = math.isqrt(rows), 2 * window_size - 1
    if source_side * source_side != rows or source_side % 2 == 0:
        raise CheckpointConversionError(f"a relative-position table has (2 * window - 1)**2 rows, got {rows}")
    if source_side == target_side:
        return table
    if source_side < 5:
        raise CheckpointConversionError(f"a window-{(source_side + 1) // 2} table has too few offsets for a bicubic "
                                        "resize (the original's interpolation needs windows of 3 or more)")
    positions = geometric_source_positions(source_side, target_side)
    targets = np.arange(-(target_side // 2), target_side // 2 + 1, dtype=np.float64)
    grids = table.detach().float().cpu().numpy().T.reshape(num_heads, source_side, source_side)
    resized = [RectBivariateSpline(positions, positions, grid, kx=3, ky=3, s=0)(targets, targets) for grid in grids]
    return torch.from_numpy(np.stack(resized).reshape(num_heads, -1).T.astype(np.float32)).to(table.dtype)


def is_mixmim_decoder_key(key: str) -> bool:
    return any(rule.match(key) for rule in MIXMIM_DECODER_RULES)


def resize_window_tables(state_dict: dict[str, torch.Tensor], window_size: Sequence[int],
                         report: ConversionReport) -> None:
    """Resizes, in place, the relative-position table of every block of stage i to ``window_size[i]``."""
    for key in sorted(state_dict):
        if not key.endswith(_TABLE_SUFFIX):
            continue
        stage = int(key.split(".")[2])  # encoder.layers.{stage}.blocks...
        if stage >= len(window_size):
            raise CheckpointConversionError(f"{key}: the checkpoint has more stages than window_size {window_size}")
        table = state_dict[key]
        resized = resize_relative_position_bias_table(table, window_size[stage])
        if resized is not table:
            source_window = (math.isqrt(table.shape[0]) + 1) // 2
            report.add_transformed(f"resized BEiT-style, stage {stage + 1}: window {source_window} -> "
                                   f"{window_size[stage]}", key)
            state_dict[key] = resized


def add_fresh_output_norms(state_dict: dict[str, torch.Tensor], report: ConversionReport) -> None:
    """Identity LayerNorms (weight 1, bias 0) on the outputs of the last two stages, the ones GeoMIM builds."""
    stages = sorted({int(key.split(".")[2]) for key in state_dict if key.startswith("encoder.layers.")})
    embed_dim = state_dict["embeddings.patch_embeddings.projection.weight"].shape[0]
    for stage in stages[-2:]:
        channels = embed_dim * 2**stage
        weight, bias = f"hidden_states_norms.stage{stage + 1}.weight", f"hidden_states_norms.stage{stage + 1}.bias"
        state_dict[weight], state_dict[bias] = torch.ones(channels), torch.zeros(channels)
        report.add_initialised("identity LayerNorm, as GeoMIM builds it", weight, bias)


def convert_mixmim_state_dict(
    checkpoint: Mapping[str, object], window_size: Sequence[int] | None = GEOMIM_WINDOWS
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], ConversionReport]:
    """Splits a MixMIM (or ImageNet Swin) checkpoint into GeoMIMModel encoder weights and the MixMIM decoder.

    Args:
        checkpoint: the loaded checkpoint, `{'model': ...}` or any container `unwrap_state_dict` accepts.
        window_size: windows per stage of the GeoMIM encoder; the tables are resized to them. `None` keeps the
            source windows.

    Returns:
        The encoder state dict (GeoMIMModel names), the decoder state dict (MixMIM names, empty for ImageNet Swin),
        and the report, in which the decoder counts as dropped from the encoder.
    """
    state = unwrap_state_dict(checkpoint)
    if any(key.startswith(BACKBONE_PREFIXES) for key in state) or detect_layout(state) != "swin":
        raise CheckpointConversionError(
            "This checkpoint is in mmdet layout or under a detector prefix (a GeoMIM, BEVDet or mmdet checkpoint); "
            "convert it with conversion/convert_geomim_swin_to_hf.py. MixMIM and ImageNet Swin use the official Swin "
            "layout without prefix."
        )
    decoder = {key: value for key, value in state.items() if is_mixmim_decoder_key(key)}
    report = ConversionReport(target=GeoMIMModel.__name__, source_layout="mixmim" if decoder else "swin")
    report.add_dropped(f"MixMIM decoder, kept under its MixMIM names for {MIXMIM_DECODER_FILE}", *decoder)
    encoder = {key: value for key, value in state.items() if key not in decoder}
    converted = map_keys(move_timm_downsample_to_stage_end(encoder), "swin", report, ENCODER_RULES)
    add_fresh_output_norms(converted, report)
    if "embeddings.position_embeddings" not in converted:
        embed_dim = converted["embeddings.patch_embeddings.projection.weight"].shape[0]
        converted["embeddings.position_embeddings"] = torch.zeros(1, embed_dim, 56, 56)
        report.add_initialised("zeros, as GeoMIM's loader leaves a missing one", "embeddings.position_embeddings")
    if window_size is not None:
        resize_window_tables(converted, window_size, report)
    return converted, decoder, report


def convert_mixmim_checkpoint(
    checkpoint: Mapping[str, object], window_size: Sequence[int] | None = GEOMIM_WINDOWS
) -> tuple[GeoMIMModel, dict[str, torch.Tensor], ConversionReport]:
    """Converts (see [`convert_mixmim_state_dict`]) and loads the encoder strictly into a new unshifted
    [`GeoMIMModel`]; returns it with the MixMIM decoder tensors and the report."""
    encoder, decoder, report = convert_mixmim_state_dict(checkpoint, window_size)
    return load_converted(GeoMIMModel(infer_config(encoder, shift_windows=False)), encoder, report), decoder, report


def load_mixmim_decoder(model: GeoMIMForPretraining, decoder: Mapping[str, torch.Tensor]) -> ConversionReport:
    """Starts `model`'s decoder from MixMIM's, as GeoMIM does: `decoder` (MixMIM names and shapes, as the conversion
    script stores them in `MIXMIM_DECODER_FILE`) goes through `MIXMIM_DECODER_RULES` and is loaded into the tensors
    `MIXMIM_DECODER_TARGETS` name; the rest of the model keeps its weights.

    Strict: an unknown key, a missing tensor or a shape that differs raises, naming it.
    """
    report = ConversionReport(target=type(model).__name__, source_layout="mixmim")
    converted = apply_key_rules(decoder, MIXMIM_DECODER_RULES, report, source="the MixMIM decoder")
    check_against_model(converted, model, report, prefixes=MIXMIM_DECODER_TARGETS)
    model.load_state_dict(converted, strict=False)  # exactly the decoder's keys, as just checked
    return report


__all__ = [
    "GEOMIM_WINDOWS",
    "MIXMIM_DECODER_FILE",
    "MIXMIM_DECODER_RULES",
    "MIXMIM_DECODER_TARGETS",
    "convert_mixmim_checkpoint",
    "convert_mixmim_state_dict",
    "geometric_source_positions",
    "load_mixmim_decoder",
    "resize_relative_position_bias_table",
]
