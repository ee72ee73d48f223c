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
fit stops it with an error naming the keys.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..geomim.conversion_geomim import CheckpointConversionError, unwrap_state_dict
from .configuration_lidar_teacher import GeoMIMLidarTeacherConfig
from .modeling_lidar_teacher import GeoMIMLidarTeacher

LIDAR_BACKBONE_PREFIX = "encoders.lidar.backbone."
_BATCH_NORM = r"(?P<param>weight|bias|running_mean|running_var|num_batches_tracked)"

# bevfusion key (relative to the prefix) -> GeoMIMLidarTeacher key. `stage` counts from 1 in bevfusion, from 0 here.
_RULES = (
    (re.compile(r"conv_input\.0\.weight"), "conv_input.convolution.weight"),
    (re.compile(r"conv_input\.1\." + _BATCH_NORM), "conv_input.normalization.{param}"),
    (re.compile(r"encoder_layers\.encoder_layer(?P<stage>\d+)\.(?P<block>\d+)\.conv(?P<layer>[12])\.weight"),
     "encoder.stages.{stage}.blocks.{block}.conv_layer{layer}.convolution.weight"),
    (re.compile(r"encoder_layers\.encoder_layer(?P<stage>\d+)\.(?P<block>\d+)\.bn(?P<layer>[12])\." + _BATCH_NORM),
     "encoder.stages.{stage}.blocks.{block}.conv_layer{layer}.normalization.{param}"),
    (re.compile(r"encoder_layers\.encoder_layer(?P<stage>\d+)\.(?P<block>\d+)\.0\.weight"),
     "encoder.stages.{stage}.downsample.convolution.weight"),
    (re.compile(r"encoder_layers\.encoder_layer(?P<stage>\d+)\.(?P<block>\d+)\.1\." + _BATCH_NORM),
     "encoder.stages.{stage}.downsample.normalization.{param}"),
    (re.compile(r"conv_out\.0\.weight"), "conv_out.convolution.weight"),
    (re.compile(r"conv_out\.1\." + _BATCH_NORM), "conv_out.normalization.{param}"),
)

KERNEL_LAYOUTS = ("spconv1", "spconv2")


@dataclass
class TeacherConversionReport:
    """What a conversion did with every key of the source checkpoint."""

    prefix: str = ""
    kernel_layout: str = ""
    converted: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)

    def format(self) -> str:
        groups = Counter(".".join(key.split(".")[:2]) for key in self.dropped)
        summary = ", ".join(f"{name} ({count})" for name, count in sorted(groups.items()))
        lines = [
            f"Source: bevfusion SparseEncoder under {self.prefix or '(no prefix)'}; kernels in {self.kernel_layout} "
            f"layout" + (" (permuted to spconv 2.x)" if self.kernel_layout == "spconv1" else ""),
            f"Converted: {len(self.converted)} tensors",
            f"Dropped, not the LiDAR encoder: {len(self.dropped)}" + (f" [{summary}]" if summary else ""),
        ]
        if self.initialised:
            lines.append(f"Initialised without a source (BatchNorm step counters, unused in eval): {self.initialised}")
        return "\n".join(lines)


def select_lidar_backbone(state_dict: Mapping[str, torch.Tensor], report: TeacherConversionReport) -> dict:
    """The SparseEncoder tensors without their prefix; everything else goes to ``report.dropped``."""
    if any(key.startswith(LIDAR_BACKBONE_PREFIX) for key in state_dict):
        report.prefix = LIDAR_BACKBONE_PREFIX
        report.dropped = sorted(key for key in state_dict if not key.startswith(LIDAR_BACKBONE_PREFIX))
        return {key.removeprefix(LIDAR_BACKBONE_PREFIX): value for key, value in state_dict.items()
                if key.startswith(LIDAR_BACKBONE_PREFIX)}
    if "conv_input.0.weight" in state_dict:
        return dict(state_dict)
    raise CheckpointConversionError(
        f"No LiDAR SparseEncoder found: no key starts with {LIDAR_BACKBONE_PREFIX!r} and there is no bare "
        f"'conv_input.0.weight'; first keys: {sorted(state_dict)[:8]}"
    )


def map_key(key: str) -> str:
    """The GeoMIMLidarTeacher name of a SparseEncoder key (relative to the prefix); unknown keys raise."""
    for pattern, target in _RULES:
        match = pattern.fullmatch(key)
        if match is not None:
            fields = match.groupdict()
            if "stage" in fields:
                fields["stage"] = int(fields["stage"]) - 1
            return target.format(**fields)
    raise CheckpointConversionError(f"Unknown key {key!r} in the LiDAR SparseEncoder: not part of bevfusion's "
                                    "basicblock SparseEncoder")


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


def check_against_model(state_dict: dict[str, torch.Tensor], model: GeoMIMLidarTeacher,
                        report: TeacherConversionReport) -> None:
    """Raises, naming the keys, unless ``state_dict`` has the model's keys and shapes. Missing BatchNorm step counters
    (some exports leave them out; eval mode never reads them) are filled with 0 and reported."""
    expected = model.state_dict()
    for key in sorted(set(expected) - set(state_dict)):
        if key.endswith("num_batches_tracked"):
            state_dict[key] = torch.zeros_like(expected[key])
            report.initialised.append(key)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [f"{key}: checkpoint {tuple(state_dict[key].shape)}, model {tuple(expected[key].shape)}"
                  for key in sorted(set(expected) & set(state_dict)) if state_dict[key].shape != expected[key].shape]
    problems = [f"{name} {keys}" for name, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                                    ("shape mismatches", mismatched)) if keys]
    if problems:
        raise CheckpointConversionError("The converted weights do not fit GeoMIMLidarTeacher (check the config "
                                        "overrides): " + "; ".join(problems))


def convert_lidar_teacher_state_dict(
    checkpoint: Mapping[str, object], **config_overrides
) -> tuple[GeoMIMLidarTeacherConfig, dict[str, torch.Tensor], TeacherConversionReport]:
    """Converts a bevfusion checkpoint (any container `unwrap_state_dict` accepts) to GeoMIMLidarTeacher keys.

    Args:
        checkpoint: the loaded checkpoint.
        config_overrides: fields of [`GeoMIMLidarTeacherConfig`] that the weights cannot tell (the grid, the limits,
            `encoder_paddings`); by default bevfusion's.
    """
    report = TeacherConversionReport()
    backbone = select_lidar_backbone(unwrap_state_dict(checkpoint), report)
    converted = {}
    for key, tensor in backbone.items():
        target = map_key(key)
        converted[target] = tensor
        report.converted[key] = target
    report.kernel_layout = detect_kernel_layout(converted)
    if report.kernel_layout == "spconv1":
        converted = {key: tensor.permute(4, 0, 1, 2, 3) if key.endswith("convolution.weight") else tensor
                     for key, tensor in converted.items()}
    converted = {key: tensor.contiguous() for key, tensor in converted.items()}
    config = GeoMIMLidarTeacherConfig(**{**infer_channels(converted), **config_overrides})
    return config, converted, report


def convert_lidar_teacher_checkpoint(
    checkpoint: Mapping[str, object], **config_overrides
) -> tuple[GeoMIMLidarTeacher, TeacherConversionReport]:
    """Converts (see [`convert_lidar_teacher_state_dict`]) and loads strictly into a new teacher in eval mode."""
    config, state_dict, report = convert_lidar_teacher_state_dict(checkpoint, **config_overrides)
    model = GeoMIMLidarTeacher(config)
    check_against_model(state_dict, model, report)
    model.load_state_dict(state_dict, strict=True)
    return model.eval(), report


__all__ = [
    "LIDAR_BACKBONE_PREFIX",
    "TeacherConversionReport",
    "convert_lidar_teacher_checkpoint",
    "convert_lidar_teacher_state_dict",
    "detect_kernel_layout",
]
