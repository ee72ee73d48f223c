"""GeoMIM's claim at small scale: does masked pretraining against a LiDAR teacher make a better detector than random
initialisation, for the same finetuning budget?

On a synthetic nuScenes set: a seeded random LiDAR teacher (small grid; the synthetic world has no trained LiDAR
detector, so this is option (b) of the project's pretraining notes: its features encode the occupied geometry) gives
BEV targets for the training scenes; the `tiny` GeoMIM encoder is pretrained on them; then the `tiny` detector is
finetuned from (a) that encoder and (b) random initialisation with the same steps, seed and data, and both are
evaluated with the nuScenes devkit on held-out scenes (`mini_val`). Prints

    map_geomim=... map_random=... nds_geomim=... nds_random=...

    python benchmarks/transfer_synthetic.py [--scenes 6] [--pretrain_steps 400] [--finetune_steps 300] \\
        [--output_dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from geomim_hf import cli

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE_CPU = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
                  "--mixed_precision", "no", "--dynamo_backend", "no"]


def run(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "TQDM_DISABLE": "1"})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=6, help="synthetic scenes (about a fifth are held out)")
    parser.add_argument("--samples_per_scene", type=int, default=10)
    parser.add_argument("--pretrain_steps", type=int, default=400)
    parser.add_argument("--finetune_steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    cli.add_argument(parser, "--output_dir", deprecated=("--out",), type=Path, default=None,
                     help="keep everything here (default: a temporary folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from geomim_hf.data.synthetic import generate_nuscenes

    with tempfile.TemporaryDirectory() as temporary:
        out = args.output_dir or Path(temporary)
        start = time.perf_counter()
        root = generate_nuscenes(out / "nuscenes", scenes=args.scenes, samples_per_scene=args.samples_per_scene,
                                 sweeps=0, image_size=(352, 128), seed=args.seed, progress=False, overwrite=True)
        data = ["--dataroot", str(root), "--version", "v1.0-mini"]
        run([sys.executable, str(ROOT / "conversion" / "convert_bevfusion_lidar_teacher.py"), "--random_init",
             "small_grid", "--seed", str(args.seed), "--output_dir", str(out / "teacher"),
             "--overwrite_output_dir"])
        run([sys.executable, str(ROOT / "examples" / "precompute_teacher_targets.py"), *data, "--split",
             "mini_train", "--teacher_name_or_path", str(out / "teacher"), "--num_sweeps", "1", "--output_dir",
             str(out / "targets"), "--overwrite_output_dir"])
        run([*ACCELERATE_CPU, str(ROOT / "examples" / "pretrain_geomim.py"), *data, "--train_split", "mini_train",
             "--config_name", "tiny", "--teacher_cache", str(out / "targets"), "--num_sweeps", "1",
             "--max_train_steps", str(args.pretrain_steps), "--seed", str(args.seed), "--output_dir",
             str(out / "pretrain"), "--overwrite_output_dir"])
        pretraining = json.loads((out / "pretrain" / "metrics.json").read_text())
        pretrain_seconds = time.perf_counter() - start

        metrics = {}
        for name, initialisation in (("geomim", ["--model_name_or_path", str(out / "pretrain" / "encoder")]),
                                     ("random", [])):
            run([*ACCELERATE_CPU, str(ROOT / "examples" / "finetune_bevdet.py"), *data, "--train_split",
                 "mini_train", "--eval_split", "mini_val", "--config_name", "tiny", *initialisation,
                 "--max_train_steps", str(args.finetune_steps), "--seed", str(args.seed), "--output_dir",
                 str(out / f"finetune_{name}"), "--overwrite_output_dir"])
            metrics[name] = json.loads((out / f"finetune_{name}" / "metrics.json").read_text())
        print(f"scenes={args.scenes} samples_per_scene={args.samples_per_scene} pretrain_steps={args.pretrain_steps} "
              f"finetune_steps={args.finetune_steps} pretrain_s={pretrain_seconds:.0f} "
              f"total_s={time.perf_counter() - start:.0f}")
        print("pretraining: " + ", ".join(f"{key}={value:.3f}" for key, value in pretraining.items()
                                          if isinstance(value, float)))
        print(f"map_geomim={metrics['geomim']['mAP']:.4f} map_random={metrics['random']['mAP']:.4f} "
              f"nds_geomim={metrics['geomim']['NDS']:.4f} nds_random={metrics['random']['NDS']:.4f}")
        for name in ("geomim", "random"):
            print(f"{name}: " + " ".join(f"{key}={value:.3f}" for key, value in sorted(metrics[name].items())
                                         if key.startswith("AP_")))


if __name__ == "__main__":
    main()
