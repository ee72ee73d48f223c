"""Initialisation of GeoMIM pretraining from MixMIM (or ImageNet Swin) weights, as the original does it.

GeoMIM's pretraining encoder starts from MixMIM (Sense-X/MixMIM, `mixmim_base_600ep.pth`): a Swin trained with
windows (14, 14, 14, 7) and a fixed sin-cos absolute position embedding, stored as `{'model': ...}` in the official
Swin key layout. GeoMIM loads it through mmdet's `swin_converter` and `SwinTransformerBEV.init_weights`
(`geomim.md` section 1.2 and 8.4 of the project notes), which

- maps the encoder keys (the same table as an official Swin checkpoint: `conversion_geomim.KEY_RULES["swin"]`);
- reshapes `absolute_pos_embed` (1, L, C) to (1, C, 56, 56);
- resizes every relative-position table from its source window to the model's (16, 16, 16, 8), BEiT-style
  (:func:`resize_relative_position_bias_table`);
- leaves the final `norm` unused: GeoMIM builds fresh output norms for stages 3 and 4 (identity LayerNorms);
- loads `mask_token`, `decoder_pos_embed` (reshaped to (1, 512, 7, 7)), `decoder_blocks.0-7` and `decoder_norm` into
  its pretraining decoder, and nothing of `decoder_embed` or `decoder_pred` (other names or shapes there).

The encoder becomes a [`GeoMIMModel`]; the decoder tensors are returned under their MixMIM names, untouched, for the
pretraining model to take. The same path serves an ImageNet Swin checkpoint (official or timm layout): it gives the
GeoMIM architecture (no shift, windows 16/8) initialised from ImageNet, with the absolute position embedding at zero,
as GeoMIM's loader leaves a missing one.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.interpolate import RectBivariateSpline

from .conversion_geomim import (
    BACKBONE_PREFIXES,
    CheckpointConversionError,
    ConversionReport,
    check_against_model,
    detect_layout,
    infer_config,
    map_keys,
    move_timm_downsample_to_stage_end,
    unwrap_state_dict,
)
from .modeling_geomim import GeoMIMModel

GEOMIM_WINDOWS = (16, 16, 16, 8)
# MixMIM's pretraining decoder (models_mixmim.py): handed over under these names, not converted.
MIXMIM_DECODER_PREFIXES = ("mask_token", "decoder_embed.", "decoder_pos_embed", "decoder_blocks.", "decoder_norm.",
                           "decoder_pred.")
FINAL_NORM_KEYS = ("norm.weight", "norm.bias")
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


@dataclass
class MixMIMConversionReport(ConversionReport):
    """A [`ConversionReport`] that also lists the resized relative-position tables and the handed-over decoder."""

    resized: dict[str, str] = field(default_factory=dict)
    decoder: list[str] = field(default_factory=list)

    def format(self) -> str:
        lines = [super().format()]
        if self.resized:
            changes = sorted(set(self.resized.values()))
            lines.append(f"Relative-position tables resized (BEiT geometric interpolation): {len(self.resized)} "
                         f"[{', '.join(changes)}]")
        if self.decoder:
            lines.append(f"MixMIM decoder tensors handed over under their names: {len(self.decoder)}")
        return "\n".join(lines)


def resize_window_tables(state_dict: dict[str, torch.Tensor], window_size: Sequence[int],
                         report: MixMIMConversionReport) -> None:
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
            report.resized[key] = f"stage {stage + 1}: window {source_window} -> {window_size[stage]}"
            state_dict[key] = resized


def add_fresh_output_norms(state_dict: dict[str, torch.Tensor], report: ConversionReport) -> None:
    """Identity LayerNorms (weight 1, bias 0) on the outputs of the last two stages, the ones GeoMIM builds."""
    stages = sorted({int(key.split(".")[2]) for key in state_dict if key.startswith("encoder.layers.")})
    embed_dim = state_dict["embeddings.patch_embeddings.projection.weight"].shape[0]
    for stage in stages[-2:]:
        channels = embed_dim * 2**stage
        state_dict[f"hidden_states_norms.stage{stage + 1}.weight"] = torch.ones(channels)
        state_dict[f"hidden_states_norms.stage{stage + 1}.bias"] = torch.zeros(channels)
        report.initialised[f"hidden_states_norms.stage{stage + 1}"] = "identity LayerNorm, as GeoMIM builds it"


def convert_mixmim_state_dict(
    checkpoint: Mapping[str, object], window_size: Sequence[int] | None = GEOMIM_WINDOWS
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], MixMIMConversionReport]:
    """Splits a MixMIM (or ImageNet Swin) checkpoint into GeoMIMModel encoder weights and the MixMIM decoder.

    Args:
        checkpoint: the loaded checkpoint, `{'model': ...}` or any container `unwrap_state_dict` accepts.
        window_size: windows per stage of the GeoMIM encoder; the tables are resized to them. `None` keeps the
            source windows.

    Returns:
        The encoder state dict (GeoMIMModel names), the decoder state dict (MixMIM names, empty for ImageNet Swin),
        and the report.
    """
    state = unwrap_state_dict(checkpoint)
    if any(key.startswith(BACKBONE_PREFIXES) for key in state) or detect_layout(state) != "swin":
        raise CheckpointConversionError(
            "This checkpoint is in mmdet layout or under a detector prefix (a GeoMIM, BEVDet or mmdet checkpoint); "
            "convert it with conversion/convert_geomim_swin_to_hf.py. MixMIM and ImageNet Swin use the official Swin "
            "layout without prefix."
        )
    is_mixmim = any(key.startswith(MIXMIM_DECODER_PREFIXES) for key in state)
    report = MixMIMConversionReport(source_layout="mixmim" if is_mixmim else "swin", backbone_prefix="")
    decoder, encoder = {}, {}
    for key, value in state.items():
        if key.startswith(MIXMIM_DECODER_PREFIXES):
            decoder[key] = value
            report.decoder.append(key)
        elif key in FINAL_NORM_KEYS:
            report.drop("final norm (GeoMIM builds fresh output norms)", key)
        else:
            encoder[key] = value
    converted = map_keys(move_timm_downsample_to_stage_end(encoder), "swin", report)
    add_fresh_output_norms(converted, report)
    if "embeddings.position_embeddings" not in converted:
        embed_dim = converted["embeddings.patch_embeddings.projection.weight"].shape[0]
        converted["embeddings.position_embeddings"] = torch.zeros(1, embed_dim, 56, 56)
        report.initialised["embeddings.position_embeddings"] = "zeros, as GeoMIM's loader leaves a missing one"
    if window_size is not None:
        resize_window_tables(converted, window_size, report)
    return converted, decoder, report


def convert_mixmim_checkpoint(
    checkpoint: Mapping[str, object], window_size: Sequence[int] | None = GEOMIM_WINDOWS
) -> tuple[GeoMIMModel, dict[str, torch.Tensor], MixMIMConversionReport]:
    """Converts (see [`convert_mixmim_state_dict`]) and loads the encoder strictly into a new unshifted
    [`GeoMIMModel`]; returns it with the MixMIM decoder tensors and the report."""
    encoder, decoder, report = convert_mixmim_state_dict(checkpoint, window_size)
    model = GeoMIMModel(infer_config(encoder, shift_windows=False))
    check_against_model(encoder, model, report)
    model.load_state_dict(encoder, strict=True)
    return model.eval(), decoder, report


__all__ = [
    "GEOMIM_WINDOWS",
    "MixMIMConversionReport",
    "convert_mixmim_checkpoint",
    "convert_mixmim_state_dict",
    "geometric_source_positions",
    "resize_relative_position_bias_table",
]
