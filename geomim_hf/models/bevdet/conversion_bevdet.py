"""Conversion of released BEVDet / BEVDet4D detector checkpoints (GeoMIM's `bevdet/`, BEVDet dev2.x, mmdet3d key
layout) to [`GeoMIMForBEVDetection`]: the one place that knows the detector's foreign key names.

The encoder (`img_backbone.`) goes through the Swin converter of `..geomim.conversion_geomim`, whose report becomes a
part of the detector's; the rest through `KEY_RULES` below. Shapes give the widths, the temporal setting and the task
layout; what shapes cannot tell (BEV grid, depth bins, image size, index truncation) comes from a BEV preset (its
`GEOMETRY_FIELDS`), the decoding from the task layout. Loading is strict: an unknown, missing or mis-shaped key is an
error that names it.
"""

import re
from collections import Counter
from collections.abc import Callable, Mapping

import torch

from ...checkpoint_conversion import (
    CheckpointConversionError,
    ConversionReport,
    KeyRule,
    apply_key_rules,
    load_converted,
    unwrap_state_dict,
)
from ...data.nuscenes_constants import DETECTION_CLASSES
from ..bev.configuration_bev import BEV_PRESETS, GEOMETRY_FIELDS, GeoMIMBEVConfig
from ..geomim.conversion_geomim import convert_state_dict
from .configuration_bevdet import SIX_TASKS, GeoMIMBEVDetectionConfig
from .modeling_bevdet import GeoMIMForBEVDetection

ENCODER_PREFIX = "img_backbone."
HEAD_PREFIX = "pts_bbox_head."

_BN = r"(?P<param>weight|bias|running_mean|running_var|num_batches_tracked)"
_CONV = r"(?P<param>weight|bias)"


def _block(source: str, target: str) -> tuple[KeyRule, ...]:
    """Rules of mmdet's `BasicBlock` (conv1/bn1/conv2/bn2/downsample) under `source` -> ours under `target`."""
    return (
        KeyRule(source + r"\.conv(?P<n>[12])\.weight", (target + ".conv{n}.weight",)),
        KeyRule(source + r"\.bn(?P<n>[12])\." + _BN, (target + ".norm{n}.{param}",)),
        KeyRule(source + r"\.downsample\." + _CONV, (target + ".shortcut.{param}",)),
    )


def _fpn(source: str, target: str) -> tuple[KeyRule, ...]:
    """Rules of BEVDet's `FPN_LSS` (`conv` and `up2` Sequentials) -> ours."""
    return (
        KeyRule(source + r"\.conv\.0\.weight", (target + ".fuse1.conv.weight",)),
        KeyRule(source + r"\.conv\.1\." + _BN, (target + ".fuse1.norm.{param}",)),
        KeyRule(source + r"\.conv\.3\.weight", (target + ".fuse2.conv.weight",)),
        KeyRule(source + r"\.conv\.4\." + _BN, (target + ".fuse2.norm.{param}",)),
        KeyRule(source + r"\.up2\.1\.weight", (target + ".up_fuse.conv.weight",)),
        KeyRule(source + r"\.up2\.2\." + _BN, (target + ".up_fuse.norm.{param}",)),
        KeyRule(source + r"\.up2\.4\." + _CONV, (target + ".up_projection.{param}",)),
    )


_TASK_HEAD = r"pts_bbox_head\.task_heads\.(?P<task>\d+)\.(?P<name>reg|height|dim|rot|vel|heatmap)"

# Source key (full match) -> GeoMIMForBEVDetection key, formatted with the named groups of the match (keys outside the
# encoder `img_backbone.`, which the Swin converter maps).
KEY_RULES = (
    # The frustum that the original derives from its configuration and that the model rebuilds.
    KeyRule(r"img_view_transformer\.frustum", drop="derived from the configuration"),
    *_fpn(r"img_neck", "bev_model.image_neck"),
    KeyRule(r"img_view_transformer\.depth_net\." + _CONV, ("bev_model.view_transform.depth_net.{param}",)),
    *_block(r"pre_process_net\.layers\.0\.(?P<block>\d+)", "bev_model.pre_process.stages.0.{block}"),
    *_block(r"img_bev_encoder_backbone\.layers\.(?P<stage>\d+)\.(?P<block>\d+)",
            "bev_model.bev_encoder.backbone.stages.{stage}.{block}"),
    *_fpn(r"img_bev_encoder_neck", "bev_model.bev_encoder.neck"),
    KeyRule(r"pts_bbox_head\.shared_conv\.conv\.weight", ("head.shared_conv.conv.weight",)),
    KeyRule(r"pts_bbox_head\.shared_conv\.bn\." + _BN, ("head.shared_conv.norm.{param}",)),
    KeyRule(_TASK_HEAD + r"\.0\.conv\.weight", ("head.task_heads.{task}.outputs.{name}.0.conv.weight",)),
    KeyRule(_TASK_HEAD + r"\.0\.bn\." + _BN, ("head.task_heads.{task}.outputs.{name}.0.norm.{param}",)),
    KeyRule(_TASK_HEAD + r"\.1\." + _CONV, ("head.task_heads.{task}.outputs.{name}.1.{param}",)),
)

# CenterPoint's 6-task test settings (BEVDet's stereo configs): circle NMS for barriers, per-class Scale-NMS.
SIX_TASK_DECODING = {
    "nms_types": ["rotate", "rotate", "rotate", "circle", "rotate", "rotate"],
    "nms_thresholds": [0.125, 0.125, 0.125, 1.0, 0.125, 0.125],
    "nms_post_max_size": 83,
    "nms_rescale_factors": [0.7, 0.4, 0.6, 0.3, 0.4, 0.9, 1.0, 1.0, 1.5, 2.5],
}


def _shape(state_dict: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise CheckpointConversionError(f"Missing key {key!r}: cannot infer the detector's architecture")
    return tuple(state_dict[key].shape)


def _blocks_per_stage(state_dict: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"\.stages\.(\d+)\.(\d+)\.conv1\.weight")
    blocks = Counter(int(match.group(1)) for key in state_dict if (match := pattern.fullmatch(key)))
    return [blocks[stage] for stage in range(max(blocks) + 1)] if blocks else []


def infer_detector_config(
    state_dict: Mapping[str, torch.Tensor], encoder_config, geometry: Mapping[str, object]
) -> GeoMIMBEVDetectionConfig:
    """The detector's architecture from the shapes of converted (GeoMIMForBEVDetection-named) tensors, completed by
    the trunk's `geometry` (the `GEOMETRY_FIELDS` of a preset)."""
    trunk = "bev_model."
    depth_and_context = _shape(state_dict, trunk + "view_transform.depth_net.weight")[0]
    bins = geometry["depth_bins"]
    num_bins = round((bins[1] - bins[0]) / bins[2])
    context_channels = depth_and_context - num_bins
    if context_channels <= 0:
        raise CheckpointConversionError(f"depth_net has {depth_and_context} outputs, not more than the preset's "
                                        f"{num_bins} depth bins: the preset does not fit this checkpoint")
    pre_process_blocks = _blocks_per_stage(state_dict, trunk + "pre_process")
    bev_encoder_blocks = _blocks_per_stage(state_dict, trunk + "bev_encoder.backbone")
    bev_encoder_channels = [_shape(state_dict, f"{trunk}bev_encoder.backbone.stages.{stage}.0.conv1.weight")[0]
                            for stage in range(len(bev_encoder_blocks))]
    bev_config = GeoMIMBEVConfig(
        encoder_config=encoder_config,
        image_neck_channels=_shape(state_dict, trunk + "image_neck.fuse1.conv.weight")[0],
        context_channels=context_channels,
        num_previous_frames=1 if pre_process_blocks else 0,
        pre_process_blocks=pre_process_blocks[0] if pre_process_blocks else 2,
        bev_encoder_blocks=bev_encoder_blocks,
        bev_encoder_channels=bev_encoder_channels,
        bev_neck_channels=_shape(state_dict, trunk + "bev_encoder.neck.up_projection.weight")[0],
        **geometry,
    )
    task_classes = []
    while f"head.task_heads.{len(task_classes)}.outputs.heatmap.1.weight" in state_dict:
        task_classes.append(_shape(state_dict, f"head.task_heads.{len(task_classes)}.outputs.heatmap.1.weight")[0])
    if task_classes == [len(DETECTION_CLASSES)]:
        tasks, decoding = [list(DETECTION_CLASSES)], {}
    elif task_classes == [len(task) for task in SIX_TASKS]:
        tasks, decoding = [list(task) for task in SIX_TASKS], SIX_TASK_DECODING
    else:
        raise CheckpointConversionError(f"Heads with {task_classes} classes per task are neither the single 10-class "
                                        f"task nor CenterPoint's 6-task split: the class names cannot be inferred")
    head_weight = _shape(state_dict, "head.task_heads.0.outputs.reg.1.weight")
    return GeoMIMBEVDetectionConfig(
        bev_config=bev_config,
        tasks=tasks,
        head_channels=_shape(state_dict, "head.shared_conv.conv.weight")[0],
        task_head_channels=head_weight[1],
        head_final_kernel=head_weight[-1],
        **decoding,
    )


def preset_geometry(preset: str | Mapping[str, object]) -> dict[str, object]:
    """The geometry a detector's weights cannot tell (`GEOMETRY_FIELDS`): of the named BEV preset, or as given."""
    if isinstance(preset, str):
        if preset not in BEV_PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {sorted(BEV_PRESETS)}")
        preset = BEV_PRESETS[preset]
    missing = [name for name in GEOMETRY_FIELDS if name not in preset]
    if missing:
        raise ValueError(f"the preset gives no {missing}: a detector's geometry needs {list(GEOMETRY_FIELDS)}")
    return {name: preset[name] for name in GEOMETRY_FIELDS}


def convert_detector_state_dict(
    checkpoint: Mapping[str, object], preset: str | Mapping[str, object] = "bevdet4d-swinb-256x704",
    check_encoder: Callable | None = None,
) -> tuple[GeoMIMBEVDetectionConfig, dict[str, torch.Tensor], ConversionReport]:
    """Converts a released BEVDet / BEVDet4D checkpoint (any container: `state_dict`, EMA files, raw) to the keys and
    config of [`GeoMIMForBEVDetection`]. `preset` names a BEV preset (`BEV_PRESETS`), whose geometry the weights
    cannot tell, or gives that geometry (`GEOMETRY_FIELDS`) directly.

    The encoder's window shift follows the encoder converter's rule: GeoMIM's encoder (with an absolute position
    embedding) never shifts, the ImageNet baseline's `SwinTransformerOri` (without one) does. `check_encoder` is
    called with the encoder's config before anything else is converted (the script checks the Swin size there).
    """
    geometry = preset_geometry(preset)
    state_dict = unwrap_state_dict(checkpoint)
    if not any(key.startswith(HEAD_PREFIX) for key in state_dict) or not any(
            key.startswith(ENCODER_PREFIX) for key in state_dict):
        found = sorted({key.split(".")[0] for key in state_dict})
        raise CheckpointConversionError(f"Not a BEVDet detector checkpoint: it needs {ENCODER_PREFIX}* and "
                                        f"{HEAD_PREFIX}* keys, found the top-level names {found}")
    report = ConversionReport(target=GeoMIMForBEVDetection.__name__, source_layout="BEVDet (mmdet3d)")
    encoder_part = {key: value for key, value in state_dict.items() if key.startswith(ENCODER_PREFIX)}
    encoder_config, encoder_state, encoder_report = convert_state_dict(encoder_part)
    report.parts[f"encoder ({ENCODER_PREFIX} -> bev_model.encoder.geomim.)"] = encoder_report
    if check_encoder is not None:
        check_encoder(encoder_config)
    detector_state = apply_key_rules(
        {key: value for key, value in state_dict.items() if not key.startswith(ENCODER_PREFIX)}, KEY_RULES, report,
        source="the detector checkpoint")
    converted = {f"bev_model.encoder.geomim.{key}": value for key, value in encoder_state.items()} | detector_state
    config = infer_detector_config(converted, encoder_config, geometry)
    return config, converted, report


def convert_detector_checkpoint(
    checkpoint: Mapping[str, object], preset: str | Mapping[str, object] = "bevdet4d-swinb-256x704",
    check_encoder: Callable | None = None,
) -> tuple[GeoMIMForBEVDetection, ConversionReport]:
    """Converts a detector checkpoint (see [`convert_detector_state_dict`]) and loads it strictly."""
    config, state_dict, report = convert_detector_state_dict(checkpoint, preset, check_encoder)
    return load_converted(GeoMIMForBEVDetection(config), state_dict, report), report


__all__ = ["KEY_RULES", "convert_detector_checkpoint", "convert_detector_state_dict", "infer_detector_config",
           "preset_geometry"]
