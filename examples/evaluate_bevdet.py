"""Evaluate a BEV 3D detector on a nuScenes split with the official devkit.

    python examples/evaluate_bevdet.py --model_name_or_path geomim/bevdet4d-swin-base --dataroot data/nuscenes \\
        --version v1.0-trainval --split val --output_dir eval_val

`--model_name_or_path` is a `GeoMIMForBEVDetection` folder or Hub id: one finetuned by `examples/finetune_bevdet.py`
or a released detector converted by `conversion/convert_bevdet_to_hf.py`, evaluated alike with the image processor
saved beside it. The batches go in without their training targets, so no loss is computed. Prints the metrics as one
JSON object and writes `OUTPUT_DIR/metrics.json` and `OUTPUT_DIR/results_nusc.json` (the submission). Runs on the GPU
when there is one; `accelerate launch` spreads the scenes over processes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from accelerate import Accelerator

from geomim_hf import GeoMIMForBEVDetection, GeoMIMImageProcessor, cli
from geomim_hf.evaluation import evaluate_detector, format_metrics
from geomim_hf.training import save_metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument(parser, "--model_name_or_path", deprecated=("--model",), required=True,
                     help="GeoMIMForBEVDetection folder or Hub id")
    parser.add_argument("--dataroot", type=Path, required=True, help="nuScenes dataroot (official v1.0 layout)")
    parser.add_argument("--version", default="v1.0-trainval")
    parser.add_argument("--split", default="val", help="devkit split or a key of <version>/splits.json")
    parser.add_argument("--output_dir", type=Path, required=True, help="where metrics.json and results_nusc.json go")
    cli.add_argument(parser, "--per_device_eval_batch_size", deprecated=("--batch_size",), type=int, default=1)
    cli.add_argument(parser, "--dataloader_num_workers", deprecated=("--num_workers",), type=int, default=2)
    args = parser.parse_args(argv)
    if not args.dataroot.is_dir():
        parser.error(f"--dataroot {args.dataroot} is not a folder")
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    accelerator = Accelerator()
    model = GeoMIMForBEVDetection.from_pretrained(args.model_name_or_path).to(accelerator.device).eval()
    processor = GeoMIMImageProcessor.from_pretrained(args.model_name_or_path)
    metrics = evaluate_detector(model, processor, args.dataroot, args.version, args.split, args.output_dir,
                                batch_size=args.per_device_eval_batch_size, num_workers=args.dataloader_num_workers,
                                accelerator=accelerator)
    if accelerator.is_main_process:
        save_metrics(args.output_dir, metrics)
        print(format_metrics(metrics), flush=True)
        print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main()
