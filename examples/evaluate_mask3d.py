"""Depth reconstruction metrics of a Mask3D pretraining checkpoint on a ScanNet split.

    python examples/evaluate_mask3d.py --model_name_or_path DIR_OR_ID --dataroot SCANNET_ROOT --split val --output_dir O
    accelerate launch examples/evaluate_mask3d.py ...   # several processes / mixed precision

Prints the metrics as one JSON object and writes `O/metrics.json` and `O/reconstructions.png`: AbsRel, RMSE and
delta < 1.25 over the pixels with true depth in (0, 10] m, per frame then over frames, with the pretraining masks drawn
from `--seed` (the same numbers as `examples/pretrain_mask3d.py` reports for the same split and seed), next to the
baseline that fills each frame with its own mean depth (see `geomim_hf.evaluation.scannet`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from accelerate import Accelerator
from transformers import ViTImageProcessor

from geomim_hf import Mask3DForDepthPretraining, cli, training
from geomim_hf.data.scannet_rgbd import ScanNetRGBDCollator, mask3d_image_processor, scannet_rgbd_loader
from geomim_hf.evaluation.scannet import evaluate_depth


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument(parser, "--model_name_or_path", deprecated=("--model",), required=True,
                     help="Mask3D pretraining folder or Hub id (with its depth decoder)")
    cli.add_argument(parser, "--dataroot", deprecated=("--root",), type=Path, required=True,
                     help="ScanNet root with scannetv2_<split>.txt")
    parser.add_argument("--split", default="val")
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--layout", choices=("frames_25k", "exported"), default=None,
                        help="ScanNet layout (default: detected from the first scan)")
    parser.add_argument("--per_device_eval_batch_size", type=int, default=8)
    parser.add_argument("--max_eval_samples", type=int, default=None, help="evaluate only the first N frames")
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation masks")
    parser.add_argument("--num_figure_frames", type=int, default=4)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--overwrite_output_dir", action="store_true", help="replace an earlier metrics.json")
    args = parser.parse_args(argv)
    if (args.output_dir / training.METRICS_FILE).is_file() and not args.overwrite_output_dir:
        parser.error(f"{args.output_dir} already holds {training.METRICS_FILE}; pass --overwrite_output_dir")
    return args


def load_pretraining_model(name_or_path: str) -> Mask3DForDepthPretraining:
    """The checkpoint with its depth stream and decoder; an encoder-only checkpoint cannot reconstruct depth."""
    model, info = Mask3DForDepthPretraining.from_pretrained(name_or_path, output_loading_info=True)
    missing = sorted(key for key in info["missing_keys"] if key.startswith(("depth_encoder.", "decoder.")))
    if missing:
        raise ValueError(f"{name_or_path} holds no Mask3D depth decoder ({len(missing)} missing weights, e.g. "
                         f"{missing[0]}): it is an encoder-only checkpoint, not a pretraining one")
    return model


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    accelerator = Accelerator()
    try:
        model = load_pretraining_model(args.model_name_or_path)
    except ValueError as error:
        sys.exit(f"error: {error}")
    try:
        processor = ViTImageProcessor.from_pretrained(args.model_name_or_path)
    except OSError:  # no preprocessor_config.json: the default Mask3D input at the model's size
        processor = mask3d_image_processor(model.config.image_size)
    model = accelerator.prepare(model)
    loader = scannet_rgbd_loader(args.dataroot, args.split, ScanNetRGBDCollator(processor),
                                 args.per_device_eval_batch_size, layout=args.layout, rank=accelerator.process_index,
                                 world_size=accelerator.num_processes, max_samples=args.max_eval_samples,
                                 num_workers=args.dataloader_num_workers)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_depth(accelerator.unwrap_model(model), loader, accelerator, seed=args.seed,
                             figure_path=args.output_dir / "reconstructions.png", image_mean=processor.image_mean,
                             image_std=processor.image_std, figure_frames=args.num_figure_frames)
    metrics |= {"model": args.model_name_or_path, "split": args.split, "seed": args.seed}
    training.save_metrics(args.output_dir, metrics, accelerator)
    if accelerator.is_main_process:
        print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main()
