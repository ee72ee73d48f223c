"""Conversion of bevfusion LiDAR checkpoints to [`GeoMIMLidarTeacher`] weights: the one place that knows their names.

A bevfusion checkpoint (`lidar-only-det.pth`, or a GeoMIM pretraining checkpoint, which carries the frozen teacher)
holds the whole detector. Only the SparseEncoder under `encoders.lidar.backbone.` is converted (`pretraining.md`
section 1 lists its keys); everything else is dropped and reported. A bare SparseEncoder state dict (keys starting
with `conv_input.`) is accepted too.

Sparse convolution kernels come in two layouts, detected from the shapes of all kernels together with the sizes of
their BatchNorms:
- spconv 1.x (bundled with bevfusion): `(kx, ky, kz, in, out)`;
- spconv 2.x (this package): `(out, kx, ky, kz, in)`; 1.x is converted with `permute(4, 0, 1, 2, 3)`.

The channel widths are read from the weights; the voxel grid is not stored in a checkpoint, so it is bevfusion's
unless overridden. The conversion is strict: an unknown key under the prefix, a missing key or a shape that does not
fit stops it with an error naming the keys. Only BatchNorm step counters may be missing (some exports leave them out):
eval mode never reads them, so they start at 0, reported.
"""

from __future__ import annotations

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
    unwrap_state_dict,
)
from .configuration_lidar_teacher import GeoMIMLidarTeacherConfig
from .modeling_lidar_teacher import GeoMIMLidarTeacher

LIDAR_BACKBONE_PREFIX = "encoders.lidar.backbone."
_BATCH_NORM = r"(?P<param>weight|bias|running_mean|running_var|num_batches_tracked)"
_BLOCK = r"encoder_layers\.encoder_layer(?P<stage>\d+)\.(?P<block>\d+)\."

# bevfusion key (relative to the prefix) -> GeoMIMLidarTeacher key. `stage` counts from 1 in bevfusion, from 0 here.
KEY_RULES = (
    KeyRule(r"conv_input\.0\.weight", ("conv_input.convolution.weight",)),
    KeyRule(r"conv_input\.1\." + _BATCH_NORM, ("conv_input.normalization.{param}",)),
    KeyRule(_BLOCK + r"conv(?P<layer>[12])\.weight",
            ("encoder.stages.{stage}.blocks.{block}.conv_layer{layer}.convolution.weight",)),
    KeyRule(_BLOCK + r"bn(?P<layer>[12])\." + _BATCH_NORM,
            ("encoder.stages.{stage}.blocks.{block}.conv_layer{layer}.normalization.{param}",)),
    KeyRule(_BLOCK + r"0\.weight", ("encoder.stages.{stage}.downsample.convolution.weight",)),
    KeyRule(_BLOCK + r"1\." + _BATCH_NORM, ("encoder.stages.{stage}.downsample.normalization.{param}",)),
    KeyRule(r"conv_out\.0\.weight", ("conv_out.convolution.weight",)),
    KeyRule(r"conv_out\.1\." + _BATCH_NORM, ("conv_out.normalization.{param}",)),
)

KERNEL_LAYOUTS = ("spconv1", "spconv2")
SPCONV1_TO_SPCONV2 = "permuted from spconv 1.x (kx, ky, kz, in, out) to spconv 2.x (out, kx, ky, kz, in)"
STEP_COUNTERS = "zeros (BatchNorm step counters, never read in eval mode)"


def select_lidar_backbone(state_dict: Mapping[str, torch.Tensor], report: ConversionReport) -> dict:
    """The SparseEncoder tensors without their prefix; everything else is dropped into ``report``."""
    backbone = select_prefix(state_dict, (LIDAR_BACKBONE_PREFIX,), report)
    if report.prefix or "conv_input.0.weight" in backbone:
        return backbone
    raise CheckpointConversionError(
        f"No LiDAR SparseEncoder found: no key starts with {LIDAR_BACKBONE_PREFIX!r} and there is no bare "
        f"'conv_input.0.weight'; first keys: {sorted(state_dict)[:8]}"
    )


def _stage_from_zero(groups: dict[str, str]) -> dict[str, object]:
    """The target fields of a match: bevfusion's `encoder_layer1` is our stage 0."""
    return {**groups, "stage": int(groups["stage"]) - 1} if "stage" in groups else groups


def _expected_kernel(target: str) -> tuple[int, int, int]:
    return (1, 1, 3) if target.startswith("conv_out.") else (3, 3, 3)


def detect_kernel_layout(converted: Mapping[str, torch.Tensor]) -> str:
    """``"spconv1"`` or ``"spconv2"``: the one layout in which every kernel has its expected spatial size and, as its
    output channels, the size of the BatchNorm that follows it."""
    consistent = set(KERNEL_LAYOUTS)
    for key, weight in converted.items():
        if not key.endswith("convolution.weight"):
            continue
        if weight.ndim != 5:
            raise CheckpointConversionError(f"{key}: a sparse 3D kernel has 5 dimensions, got shape "
                                            f"{tuple(weight.shape)}")
        norm = converted.get(key.replace("convolution.weight", "normalization.weight"))
        if norm is None:
            raise CheckpointConversionError(f"{key} has no BatchNorm weight after it")
        kernel, out_channels = _expected_kernel(key), norm.shape[0]
        fits = {"spconv1": tuple(weight.shape[:3]) == kernel and weight.shape[4] == out_channels,
                "spconv2": tuple(weight.shape[1:4]) == kernel and weight.shape[0] == out_channels}
        consistent &= {layout for layout, fit in fits.items() if fit}
        if not consistent:
            raise CheckpointConversionError(
                f"{key} of shape {tuple(weight.shape)} (kernel {kernel}, {out_channels} outputs by its BatchNorm) fits "
                "neither spconv 1.x (kx, ky, kz, in, out) nor spconv 2.x (out, kx, ky, kz, in) together with the "
                "kernels before it"
            )
    if len(consistent) != 1:
        raise CheckpointConversionError(f"Cannot tell the kernel layout from the shapes (fits {sorted(consistent)})")
    return consistent.pop()


def infer_channels(converted: Mapping[str, torch.Tensor]) -> dict:
    """``in_channels``, ``base_channels``, ``encoder_channels`` and ``output_channels`` from spconv 2.x kernels."""
    def out_in(key: str) -> tuple[int, int]:
        if key not in converted:
            raise CheckpointConversionError(f"Missing key: no source for {key!r}")
        weight = converted[key]
        return weight.shape[0], weight.shape[-1]

    base_channels, in_channels = out_in("conv_input.convolution.weight")
    stage_key = re.compile(r"encoder\.stages\.(\d+)\.(blocks\.(\d+)|downsample)\.")
    stages: dict[int, dict] = {}
    for key in converted:
        if key.endswith("convolution.weight") and (match := stage_key.match(key)):
            stage = stages.setdefault(int(match.group(1)), {"blocks": set(), "downsample": False})
            if match.group(3) is not None:
                stage["blocks"].add(int(match.group(3)))
            else:
                stage["downsample"] = True
    if sorted(stages) != list(range(len(stages))) or not stages:
        found = sorted(stage + 1 for stage in stages)
        raise CheckpointConversionError(f"The encoder stages are not numbered 1..n: found {found}")
    encoder_channels = []
    for index in range(len(stages)):
        blocks = sorted(stages[index]["blocks"])
        if blocks != list(range(len(blocks))):
            raise CheckpointConversionError(f"encoder_layer{index + 1} has residual blocks {blocks}, not 0..n")
        channels = [out_in(f"encoder.stages.{index}.blocks.{block}.conv_layer1.convolution.weight")[0]
                    for block in blocks]
        if stages[index]["downsample"]:
            channels.append(out_in(f"encoder.stages.{index}.downsample.convolution.weight")[0])
        encoder_channels.append(channels)
    output_channels, _ = out_in("conv_out.convolution.weight")
    return dict(in_channels=in_channels, base_channels=base_channels, encoder_channels=encoder_channels,
                output_channels=output_channels)


def fill_step_counters(state_dict: dict[str, torch.Tensor], model: GeoMIMLidarTeacher,
                       report: ConversionReport) -> None:
    """Fills, in place and reported, the BatchNorm step counters of `model` that `state_dict` lacks."""
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.zeros_like(value)
            report.add_initialised(STEP_COUNTERS, key)


def convert_lidar_teacher_state_dict(
    checkpoint: Mapping[str, object], **config_overrides
) -> tuple[GeoMIMLidarTeacherConfig, dict[str, torch.Tensor], ConversionReport]:
    """Converts a bevfusion checkpoint (any container `unwrap_state_dict` accepts) to GeoMIMLidarTeacher keys.

    Args:
        checkpoint: the loaded checkpoint.
        config_overrides: fields of [`GeoMIMLidarTeacherConfig`] that the weights cannot tell (the grid, the limits,
            `encoder_paddings`); by default bevfusion's.
    """
    report = ConversionReport(target=GeoMIMLidarTeacher.__name__)
    backbone = select_lidar_backbone(unwrap_state_dict(checkpoint), report)
    converted = apply_key_rules(backbone, KEY_RULES, report, source="the LiDAR SparseEncoder (bevfusion's basicblock "
                                "SparseEncoder)", fields=_stage_from_zero)
    report.source_layout = detect_kernel_layout(converted)
    if report.source_layout == "spconv1":
        kernels = [key for key in converted if key.endswith("convolution.weight")]
        for key in kernels:
            converted[key] = converted[key].permute(4, 0, 1, 2, 3).contiguous()
        report.add_transformed(SPCONV1_TO_SPCONV2, *kernels)
    config = GeoMIMLidarTeacherConfig(**{**infer_channels(converted), **config_overrides})
    return config, converted, report


def convert_lidar_teacher_checkpoint(
    checkpoint: Mapping[str, object], **config_overrides
) -> tuple[GeoMIMLidarTeacher, ConversionReport]:
    """Converts (see [`convert_lidar_teacher_state_dict`]) and loads strictly into a new teacher in eval mode."""
    config, state_dict, report = convert_lidar_teacher_state_dict(checkpoint, **config_overrides)
    model = GeoMIMLidarTeacher(config)
    fill_step_counters(state_dict, model, report)
    return load_converted(model, state_dict, report), report


__all__ = [
    "KEY_RULES",
    "LIDAR_BACKBONE_PREFIX",
    "convert_lidar_teacher_checkpoint",
    "convert_lidar_teacher_state_dict",
    "detect_kernel_layout",
]
