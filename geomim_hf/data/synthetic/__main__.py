"""Command line: ``python -m geomim_hf.data.synthetic {nuscenes,scannet,preview} ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...visualization import render_preview
from . import NuScenesSpec, OutputExistsError, ScanNetSpec, generate_nuscenes, generate_scannet
from ..scannet_format import LAYOUTS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m geomim_hf.data.synthetic", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    nuscenes = commands.add_parser("nuscenes", help="write a synthetic nuScenes v1.0 dataroot")
    nuscenes.add_argument("--out", type=Path, required=True, help="dataroot to create")
    nuscenes.add_argument("--scenes", type=int, default=NuScenesSpec.scenes)
    nuscenes.add_argument("--samples-per-scene", type=int, default=NuScenesSpec.samples_per_scene)
    nuscenes.add_argument("--sweeps", type=int, default=NuScenesSpec.sweeps,
                          help="LiDAR sweeps before each key frame (0-9)")
    nuscenes.add_argument("--image-size", type=int, nargs=2, metavar=("W", "H"), default=NuScenesSpec.image_size)
    nuscenes.add_argument("--version", default=NuScenesSpec.version, help="v1.0-mini or v1.0-trainval")
    nuscenes.add_argument("--seed", type=int, default=NuScenesSpec.seed)
    nuscenes.add_argument("--overwrite", action="store_true", help="replace a synthetic dataset already at --out")

    scannet = commands.add_parser("scannet", help="write a synthetic ScanNet RGB-D set")
    scannet.add_argument("--out", type=Path, required=True, help="folder to create (one sub-folder per scan)")
    scannet.add_argument("--scenes", type=int, default=ScanNetSpec.scenes)
    scannet.add_argument("--frames", type=int, default=ScanNetSpec.frames, help="frames per scene")
    scannet.add_argument("--layout", choices=LAYOUTS, default=ScanNetSpec.layout)
    scannet.add_argument("--color-size", type=int, nargs=2, metavar=("W", "H"), default=ScanNetSpec.color_size)
    scannet.add_argument("--seed", type=int, default=ScanNetSpec.seed)
    scannet.add_argument("--overwrite", action="store_true", help="replace a synthetic dataset already at --out")

    preview = commands.add_parser("preview", help="draw one sample of a nuScenes dataroot or ScanNet folder")
    preview.add_argument("dataset", type=Path)
    preview.add_argument("--out", type=Path, required=True, help="PNG to write")
    preview.add_argument("--index", type=int, default=0, help="sample (nuScenes) or frame (ScanNet) index")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "nuscenes":
            generate_nuscenes(args.out, overwrite=args.overwrite, scenes=args.scenes,
                              samples_per_scene=args.samples_per_scene, sweeps=args.sweeps,
                              image_size=tuple(args.image_size), version=args.version, seed=args.seed)
            print(f"wrote synthetic nuScenes {args.version} to {args.out}")
        elif args.command == "scannet":
            generate_scannet(args.out, overwrite=args.overwrite, scenes=args.scenes, frames=args.frames,
                             layout=args.layout, color_size=tuple(args.color_size), seed=args.seed)
            print(f"wrote synthetic ScanNet ({args.layout}) to {args.out}")
        else:
            print(f"wrote {render_preview(args.dataset, args.out, args.index)}")
    except (OutputExistsError, FileNotFoundError, IndexError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
