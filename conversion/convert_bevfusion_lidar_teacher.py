"""Convert the LiDAR encoder of a bevfusion checkpoint into a `GeoMIMLidarTeacher` folder, or write a randomly
initialised teacher (for data without a trained LiDAR detector, such as the synthetic sets).

    python conversion/convert_bevfusion_lidar_teacher.py --checkpoint lidar-only-det.pth --output_dir lidar-teacher
    python conversion/convert_bevfusion_lidar_teacher.py --random_init small_grid --seed 0 --output_dir teacher-small

Accepted checkpoints: bevfusion detectors and GeoMIM pretraining checkpoints (the SparseEncoder under
`encoders.lidar.backbone.`), or a bare SparseEncoder state dict; kernels in spconv 1.x or 2.x layout. The key mapping
lives in `geomim_hf.models.lidar_teacher.conversion_lidar_teacher`; this script loads the file (`weights_only=True`),
prints the conversion report, and writes `model.safetensors`, `config.json` and a model card.
"""

import argparse
import sys
from pathlib import Path


from geomim_hf.checkpoint_conversion import CheckpointConversionError, load_checkpoint_file
from geomim_hf.hub import (
    add_conversion_output_arguments,
    check_conversion_arguments,
    file_sha256,
    upload_folder_to_hub,
)
from geomim_hf.models.lidar_teacher import GeoMIMLidarTeacherConfig, random_lidar_teacher
from geomim_hf.models.lidar_teacher.conversion_lidar_teacher import convert_lidar_teacher_checkpoint

MODEL_CARD = Path(__file__).resolve().parent.parent / "model_cards" / "geomim-lidar-teacher-bevfusion.md"
CONVERSION_RECORD_MARKER = "<!-- conversion-record -->"
RANDOM_PRESETS = {"bevfusion": GeoMIMLidarTeacherConfig, "small_grid": GeoMIMLidarTeacherConfig.small_grid}

RANDOM_TEACHER_CARD = """---
library_name: geomim_hf
tags:
- geomim_hf
- lidar
- sparse-convolution
---

# Randomly initialised GeoMIM LiDAR teacher ({preset}, seed {seed})

A `GeoMIMLidarTeacher` (voxeliser and bevfusion's SparseEncoder) with **random** weights: He-initialised sparse
convolutions, identity BatchNorms, drawn with `torch.manual_seed({seed})`. It is option (b) of the project notes for
data without a trained LiDAR detector: untrained, its BEV features still encode the occupied geometry, which is what
GeoMIM pretraining on such data reconstructs. It detects nothing, and no result is claimed for it. Every experiment that
uses it should say so.

| | |
|---|---|
| Voxels | {voxel_size} m over {point_cloud_range} m (LiDAR frame); {max_num_points} points, {max_voxels} voxels max |
| Channels | base {base_channels}, encoder {encoder_channels}, output {output_channels} |
| BEV map | {bev_shape} (channels, X, Y) |

Written by `conversion/convert_bevfusion_lidar_teacher.py --random_init {preset} --seed {seed}` (geomim_hf).
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="bevfusion checkpoint file (.pth, .pt, .bin or .safetensors)")
    source.add_argument("--random_init", choices=sorted(RANDOM_PRESETS),
                        help="write a randomly initialised teacher with this preset instead of converting")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random_init (default 0)")
    add_conversion_output_arguments(parser, "the teacher")
    parser.add_argument("--point_cloud_range", type=float, nargs=6, metavar="M",
                        help="override the voxel grid's range (default: bevfusion's [-54, -54, -5, 54, 54, 3])")
    parser.add_argument("--voxel_size", type=float, nargs=3, metavar="M", help="override the voxel size")
    parser.add_argument("--max_voxels", type=int, help="override the voxel limit per sample")
    args = parser.parse_args(argv)
    check_conversion_arguments(parser, args)
    return args


def config_overrides(args: argparse.Namespace) -> dict:
    names = ("point_cloud_range", "voxel_size", "max_voxels")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def conversion_record(checkpoint: Path, report_text: str) -> str:
    digest = file_sha256(checkpoint)
    return "\n".join([
        "## Conversion record",
        "",
        f"- Source file: `{checkpoint.name}` (SHA-256 `{digest}`)",
        "- Converter: `conversion/convert_bevfusion_lidar_teacher.py` (geomim_hf), strict load, report below",
        "",
        "```text",
        report_text,
        "```",
    ])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = config_overrides(args)
    if args.checkpoint is not None:
        try:
            teacher, report = convert_lidar_teacher_checkpoint(load_checkpoint_file(args.checkpoint), **overrides)
        except CheckpointConversionError as error:
            sys.exit(f"error: cannot convert {args.checkpoint}: {error}")
        print(report.format())
        template = MODEL_CARD.read_text()
        if CONVERSION_RECORD_MARKER not in template:
            raise ValueError(f"{MODEL_CARD} has no {CONVERSION_RECORD_MARKER} marker")
        card = template.replace(CONVERSION_RECORD_MARKER, conversion_record(args.checkpoint, report.format()))
    else:
        teacher = random_lidar_teacher(RANDOM_PRESETS[args.random_init](**overrides), args.seed)
        config = teacher.config
        card = RANDOM_TEACHER_CARD.format(preset=args.random_init, seed=args.seed, bev_shape=config.bev_shape,
                                          **{key: getattr(config, key) for key in (
                                              "voxel_size", "point_cloud_range", "max_num_points", "max_voxels",
                                              "base_channels", "encoder_channels", "output_channels")})
        print(f"Random teacher ({args.random_init}, seed {args.seed}): BEV map {config.bev_shape}")

    args.output_dir.mkdir(parents=True, exist_ok=True)
    teacher.save_pretrained(args.output_dir)
    (args.output_dir / "README.md").write_text(card)
    print(f"Wrote {args.output_dir}: model.safetensors, config.json, README.md")

    if args.push_to_hub:
        upload_folder_to_hub(args.push_to_hub, args.output_dir, "Add GeoMIM LiDAR teacher")
        print(f"Pushed {args.output_dir} to https://huggingface.co/{args.push_to_hub}")


if __name__ == "__main__":
    main()
