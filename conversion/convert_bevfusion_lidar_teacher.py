"""Convert the LiDAR encoder of a bevfusion checkpoint into a `GeoMIMLidarTeacher` folder, or write a randomly
initialised teacher (for data without a trained LiDAR detector, such as the synthetic sets).

    python conversion/convert_bevfusion_lidar_teacher.py --checkpoint lidar-only-det.pth --output_dir lidar-teacher
    python conversion/convert_bevfusion_lidar_teacher.py --random_init small_grid --seed 0 --output_dir teacher-small

Accepted checkpoints: bevfusion detectors and GeoMIM pretraining checkpoints (the SparseEncoder under
`encoders.lidar.backbone.`), or a bare SparseEncoder state dict; kernels in spconv 1.x or 2.x layout. The key mapping
lives in `geomim_hf.models.lidar_teacher.conversion_lidar_teacher`; this script loads the file (`weights_only=True`),
prints the conversion report, and writes `model.safetensors`, `config.json` and a model card (`model_cards/`
`geomim-lidar-teacher-bevfusion.md`, or `geomim-lidar-teacher-random.md`).
"""

import argparse
import sys
from pathlib import Path

from geomim_hf.checkpoint_conversion import CheckpointConversionError, load_checkpoint_file
from geomim_hf.hub import (
    add_conversion_output_arguments,
    check_conversion_arguments,
    conversion_record,
    fill_template,
    save_conversion,
)
from geomim_hf.models.lidar_teacher import GeoMIMLidarTeacherConfig, random_lidar_teacher
from geomim_hf.models.lidar_teacher.configuration_lidar_teacher import TEACHER_PRESETS
from geomim_hf.models.lidar_teacher.conversion_lidar_teacher import convert_lidar_teacher_checkpoint

MODEL_CARDS_DIR = Path(__file__).resolve().parent.parent / "model_cards"
CONVERTER = f"conversion/{Path(__file__).name}"
# The fields of the random teacher's card that are its config's.
RANDOM_CARD_CONFIG_FIELDS = ("voxel_size", "point_cloud_range", "max_num_points", "max_voxels", "base_channels",
                             "encoder_channels", "output_channels", "bev_shape")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="bevfusion checkpoint file (.pth, .pt, .bin or .safetensors)")
    source.add_argument("--random_init", choices=sorted(TEACHER_PRESETS),
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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = config_overrides(args)
    if args.checkpoint is not None:
        try:
            teacher, report = convert_lidar_teacher_checkpoint(load_checkpoint_file(args.checkpoint), **overrides)
        except CheckpointConversionError as error:
            sys.exit(f"error: cannot convert {args.checkpoint}: {error}")
        print(report.format())
        card = fill_template((MODEL_CARDS_DIR / "geomim-lidar-teacher-bevfusion.md").read_text(),
                             {"conversion_record": conversion_record(args.checkpoint, CONVERTER, report)})
    else:
        teacher = random_lidar_teacher(GeoMIMLidarTeacherConfig.from_preset(args.random_init, **overrides), args.seed)
        fields = {name: getattr(teacher.config, name) for name in RANDOM_CARD_CONFIG_FIELDS}
        card = fill_template((MODEL_CARDS_DIR / "geomim-lidar-teacher-random.md").read_text(),
                             {"preset": args.random_init, "seed": args.seed, **fields})
        print(f"Random teacher ({args.random_init}, seed {args.seed}): BEV map {teacher.config.bev_shape}")
    save_conversion(args.output_dir, teacher, card, push_to_hub=args.push_to_hub,
                    commit_message="Add GeoMIM LiDAR teacher")


if __name__ == "__main__":
    main()
