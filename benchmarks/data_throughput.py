"""Throughput of the nuScenes input pipeline: samples per second, six images decoded and augmented plus 10-sweep
LiDAR and depth targets, through ``load_nuscenes`` + ``NuScenesCollator`` with 0 and 2 DataLoader workers.

Baseline, run in the same process on the same data: the naive loop that calls the devkit per sample without caching
its tables (a new ``NuScenes`` per sample), then does the same decoding and processing.

Then the training step rate (samples/s at batch 1) of the detection presets it feeds, measured in fresh processes of
the same run: the loader must outrun the step.

    python benchmarks/data_throughput.py [--image_size 800 450] [--samples_per_scene 5] [--step_presets tiny]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

# The step-rate measurement runs in spawned processes that must import it by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_step  # noqa: E402
from geomim_hf import cli
from geomim_hf.data.collate import NuScenesCollator
from geomim_hf.data.image_processing_geomim import GeoMIMImageProcessor
from geomim_hf.data.nuscenes import load_nuscenes, nuscenes_database, sample_example
from geomim_hf.data.synthetic import generate_nuscenes

VERSION = "v1.0-mini"
NUM_SWEEPS = 10


def pipeline_rate(root: Path, collate: NuScenesCollator, num_workers: int) -> float:
    dataset = load_nuscenes(root, VERSION, "mini_train", num_sweeps=NUM_SWEEPS)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=num_workers, collate_fn=collate)
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch["sample_tokens"])
    return count / (time.perf_counter() - start)


def naive_rate(root: Path, collate: NuScenesCollator, samples: int) -> float:
    from nuscenes import NuScenes

    start = time.perf_counter()
    for index in range(samples):
        nusc = NuScenes(VERSION, str(root), verbose=False)  # tables re-read for every sample
        example = sample_example(nusc, nusc.sample[index], NUM_SWEEPS)
        collate([example])
    return samples / (time.perf_counter() - start)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument(parser, "--image_size", deprecated=("--image-size",), type=int, nargs=2, default=(800, 450),
                     metavar=("W", "H"), help="size of the synthetic camera images")
    cli.add_argument(parser, "--samples_per_scene", deprecated=("--samples-per-scene",), type=int, default=5)
    cli.add_argument(parser, "--step_presets", deprecated=("--step-presets",), nargs="*",
                     default=["tiny", "bevdet4d-swinb-256x704"],
                     help="detection presets whose training step rate to print beside the loader's")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    collate = NuScenesCollator(GeoMIMImageProcessor.bevdet_finetuning(), augment=True,
                               generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        # Three scenes: two in mini_train, one shard per DataLoader worker.
        root = generate_nuscenes(Path(folder) / "nuscenes", scenes=3, samples_per_scene=args.samples_per_scene,
                                 image_size=tuple(args.image_size), progress=False)
        baseline = naive_rate(root, collate, 2 * args.samples_per_scene)
        for num_workers in (0, 2):
            nuscenes_database.cache_clear()
            rate = pipeline_rate(root, collate, num_workers)
            print(f"config=workers{num_workers}_images{args.image_size[0]}x{args.image_size[1]}_sweeps{NUM_SWEEPS} "
                  f"samples_per_s={rate:.2f} baseline={baseline:.2f} ratio={rate / baseline:.2f}")
    # What the loader must keep up with: training steps of the detection presets at batch 1 (fp32, this device).
    for preset in args.step_presets:
        step_s = finetune_step.train_step_seconds(preset)["results"]["train_step"]["seconds"]
        print(f"preset={preset} train_samples_per_s={1 / step_s:.2f} (batch 1; the loader above must be faster)")


if __name__ == "__main__":
    main()
