"""Run the GeoMIM LiDAR teacher once over a nuScenes split and store its BEV targets for pretraining.

    python examples/precompute_teacher_targets.py --dataroot data/nuscenes --version v1.0-trainval --split train \\
        --teacher_name_or_path lidar-teacher --output_dir teacher_targets/train

The points are read as GeoMIM pretraining reads them (10 sweeps, LiDAR frame of the key frame; see
`geomim_hf.data.pretraining_collate`), once per BEV flip the cache should serve (`--flips all`, the default, covers
GeoMIM's random x/y flips). The output folder holds float16 safetensors shards keyed by sample token and a
`manifest.json` (shapes, dtype, teacher name and config/weight hashes, split, token -> shard);
`geomim_hf.models.lidar_teacher.TeacherTargetCache` reads it. An existing cache is replaced only with
`--overwrite_output_dir`, and only once the new one is complete. The teacher runs in one process, on the GPU when
there is one.

For data without a trained LiDAR detector (the synthetic sets), write a seeded random teacher first:
`python conversion/convert_bevfusion_lidar_teacher.py --random_init small_grid --seed 0 --output_dir teacher`.
"""

import argparse
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from geomim_hf import cli
from geomim_hf.data.bev_augmentation import augment_points, bev_augmentation_matrix
from geomim_hf.data.collate import pad_rows
from geomim_hf.data.nuscenes import load_nuscenes, nuscenes_database, scenes_of_split
from geomim_hf.data.pretraining_collate import points_in_lidar_frame
from geomim_hf.models.lidar_teacher import GeoMIMLidarTeacher
from geomim_hf.models.lidar_teacher.target_cache import FLIPS, TeacherTargetWriter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataroot", type=Path, required=True, help="nuScenes dataroot (official layout)")
    parser.add_argument("--version", default="v1.0-trainval", help="nuScenes version folder (default v1.0-trainval)")
    parser.add_argument("--split", default="train", help="devkit split or a key of <version>/splits.json")
    cli.add_argument(parser, "--teacher_name_or_path", deprecated=("--teacher",), required=True,
                     help="GeoMIMLidarTeacher folder or Hub id")
    parser.add_argument("--output_dir", type=Path, required=True, help="folder for the cache")
    parser.add_argument("--num_sweeps", type=int, default=10, help="LiDAR sweeps per sample, key frame included "
                        "(10 in GeoMIM)")
    parser.add_argument("--flips", choices=("all", "none"), default="all",
                        help="'all': one target per BEV flip (none, x, y, xy), as pretraining with RandomFlip3D needs; "
                             "'none': unflipped targets only (pretraining must then not flip)")
    cli.add_argument(parser, "--per_device_eval_batch_size", deprecated=("--per_device_batch_size",), type=int,
                     default=1, help="samples per teacher forward")
    parser.add_argument("--shard_size", type=int, default=64, help="samples per safetensors shard")
    parser.add_argument("--dataloader_num_workers", type=int, default=0, help="processes reading the point files")
    cli.add_argument(parser, "--overwrite_output_dir", deprecated=("--overwrite",), action="store_true",
                     help="replace an existing cache in --output_dir")
    return parser.parse_args(argv)


def collate_points(examples: list[dict]) -> dict:
    """Points of a batch in the LiDAR frame, padded: (B, P, 5) with a (B, P) mask, and the sample tokens."""
    points, mask = pad_rows([torch.from_numpy(points_in_lidar_frame(example)) for example in examples])
    return {"points": points, "points_mask": mask, "sample_tokens": [example["sample_token"] for example in examples]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    accelerator = Accelerator()
    if accelerator.num_processes > 1:
        sys.exit("error: run precompute_teacher_targets.py in a single process (it writes one cache folder)")
    teacher = GeoMIMLidarTeacher.from_pretrained(args.teacher_name_or_path).to(accelerator.device).eval()
    flips = list(FLIPS) if args.flips == "all" else ["none"]
    try:
        writer = TeacherTargetWriter(
            args.output_dir, teacher, flips=flips, shard_size=args.shard_size, overwrite=args.overwrite_output_dir,
            dataset={"dataroot": str(args.dataroot), "version": args.version, "split": args.split,
                     "num_sweeps": args.num_sweeps},
        )
    except FileExistsError as error:
        sys.exit(f"error: {error}")

    dataroot = str(args.dataroot.resolve())  # one devkit database per process, keyed by this string
    dataset = load_nuscenes(dataroot, args.version, args.split, num_sweeps=args.num_sweeps)
    dataset = dataset.select_columns(["sample_token", "points", "lidar_to_ego"])
    loader = DataLoader(dataset, batch_size=args.per_device_eval_batch_size, collate_fn=collate_points,
                        num_workers=args.dataloader_num_workers)
    scenes = set(scenes_of_split(dataroot, args.version, args.split))
    total = sum(scene["nbr_samples"] for scene in nuscenes_database(dataroot, args.version).scene
                if scene["name"] in scenes)
    flip_matrices = {name: bev_augmentation_matrix(flip_x=mirror_x, flip_y=mirror_y)
                     for name, (mirror_x, mirror_y) in FLIPS.items() if name in flips}

    progress = tqdm(total=total, desc=f"teacher targets ({args.split})", disable=not accelerator.is_main_process)
    try:
        with torch.no_grad():
            for batch in loader:
                mask = batch["points_mask"].to(accelerator.device)
                per_flip = {}
                for name, matrix in flip_matrices.items():
                    # The flip the pretraining collator applies to the points (and the cameras), done the same way.
                    points = torch.stack([augment_points(cloud, matrix) for cloud in batch["points"]])
                    per_flip[name] = teacher(points.to(accelerator.device), mask).bev_features
                for index, token in enumerate(batch["sample_tokens"]):
                    writer.add(token, {name: bev[index] for name, bev in per_flip.items()})
                progress.update(len(batch["sample_tokens"]))
        cache = writer.finish()
    except BaseException:
        writer.abort()
        raise
    progress.close()
    print(f"Wrote {len(writer.token_shards)} samples x {len(flips)} flips of shape {tuple(writer.shape)} (float16) "
          f"in {writer.num_shards} shard(s) to {cache}")


if __name__ == "__main__":
    main()
