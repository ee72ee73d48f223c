"""Command line: ``python -m geomim_hf.data.synthetic {nuscenes,scannet,preview} ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ... import cli
from ...visualization import render_preview
from ..scannet_format import LAYOUTS
from . import NuScenesSpec, OutputExistsError, ScanNetSpec, generate_nuscenes, generate_scannet

PREVIEW_NAME = "preview.png"


def add_output_arguments(command: argparse.ArgumentParser, what: str) -> None:
    """The output folder of a generator command, and the switch that lets it replace an earlier synthetic dataset."""
    cli.add_argument(command, "--output_dir", deprecated=("--out",), type=Path, required=True, help=what)
    cli.add_argument(command, "--overwrite_output_dir", deprecated=("--overwrite",), action="store_true",
                     help="replace a synthetic dataset already in --output_dir (never anything else)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m geomim_hf.data.synthetic", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    nuscenes = commands.add_parser("nuscenes", help="write a synthetic nuScenes v1.0 dataroot")
    add_output_arguments(nuscenes, "dataroot to create")
    nuscenes.add_argument("--scenes", type=int, default=NuScenesSpec.scenes)
    cli.add_argument(nuscenes, "--samples_per_scene", deprecated=("--samples-per-scene",), type=int,
                     default=NuScenesSpec.samples_per_scene)
    nuscenes.add_argument("--sweeps", type=int, default=NuScenesSpec.sweeps,
                          help="LiDAR sweeps before each key frame (0-9)")
    cli.add_argument(nuscenes, "--image_size", deprecated=("--image-size",), type=int, nargs=2, metavar=("W", "H"),
                     default=NuScenesSpec.image_size)
    nuscenes.add_argument("--version", default=NuScenesSpec.version, help="v1.0-mini or v1.0-trainval")
    nuscenes.add_argument("--seed", type=int, default=NuScenesSpec.seed)

    scannet = commands.add_parser("scannet", help="write a synthetic ScanNet RGB-D set")
    add_output_arguments(scannet, "folder to create (one sub-folder per scan)")
    scannet.add_argument("--scenes", type=int, default=ScanNetSpec.scenes)
    scannet.add_argument("--frames", type=int, default=ScanNetSpec.frames, help="frames per scene")
    scannet.add_argument("--layout", choices=LAYOUTS, default=ScanNetSpec.layout)
    cli.add_argument(scannet, "--color_size", deprecated=("--color-size",), type=int, nargs=2, metavar=("W", "H"),
                     default=ScanNetSpec.color_size)
    scannet.add_argument("--seed", type=int, default=ScanNetSpec.seed)

    preview = commands.add_parser("preview", help="draw one sample of a nuScenes dataroot or ScanNet folder")
    preview.add_argument("dataset", type=Path)
    cli.add_output_file_arguments(preview, PREVIEW_NAME, "the picture")
    preview.add_argument("--index", type=int, default=0, help="sample (nuScenes) or frame (ScanNet) index")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "nuscenes":
            generate_nuscenes(args.output_dir, overwrite=args.overwrite_output_dir, scenes=args.scenes,
                              samples_per_scene=args.samples_per_scene, sweeps=args.sweeps,
                              image_size=tuple(args.image_size), version=args.version, seed=args.seed)
            print(f"wrote synthetic nuScenes {args.version} to {args.output_dir}")
        elif args.command == "scannet":
            generate_scannet(args.output_dir, overwrite=args.overwrite_output_dir, scenes=args.scenes,
                             frames=args.frames, layout=args.layout, color_size=tuple(args.color_size),
                             seed=args.seed)
            print(f"wrote synthetic ScanNet ({args.layout}) to {args.output_dir}")
        else:
            print(f"wrote {render_preview(args.dataset, cli.output_file(args, PREVIEW_NAME), args.index)}")
    except (OutputExistsError, FileNotFoundError, IndexError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
