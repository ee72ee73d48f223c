"""Mask3D pretraining of an RGB ViT on ScanNet RGB-D frames, with `accelerate`.

    accelerate launch examples/pretrain_mask3d.py --dataroot SCANNET_ROOT --train_split train --eval_split val \\
        --config_name tiny --output_dir O

The model masks RGB patches and depth patches of single frames and reconstructs the dense depth map
(`Mask3DForDepthPretraining`); the RGB encoder it trains is what downstream tasks keep (`Mask3DModel`,
`Mask3DBackbone`). Frames stream from either ScanNet layout through `load_scannet` (the layout is detected; labels are
not needed). After training, the depth reconstruction of `--eval_split` is measured (AbsRel, RMSE, delta < 1.25 over
valid pixels in (0, 10] m, per frame then over frames, with fixed masks; see `geomim_hf.evaluation.scannet`) and
written with the model, its image processor and model card to `OUTPUT_DIR`: `metrics.json`, `reconstructions.png`.

`--config_name` is a preset ("tiny": CPU-sized, learns a small synthetic set in minutes; "base": ViT-B/16 at 240x320)
or a config file / folder; `--config_overrides "depth_mask_ratio=0.9,fusion=add"` changes fields of it. Training
defaults (learning rate, epochs, batch size) depend on the preset (`TRAINING_PRESETS`; base's for a config file or
`--model_name_or_path`). `--model_name_or_path` starts from a Mask3D model folder instead, e.g. a ViT converted by
`conversion/convert_vit_to_mask3d.py` (the depth stream and decoder are then initialised afresh). Other arguments are
those of transformers' `no_trainer` examples (`geomim_hf.training`).

An epoch is `frames / (processes x batch size)` full batches per process (rounded down to whole accumulation
groups): streamed scans are split between processes whole, so a process that runs out of frames starts its part
again, and all processes take the same number of steps (`geomim_hf.data.scannet_rgbd.ScanNetTrainingFrames`). The
loop is `geomim_hf.training.train`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from transformers import ViTImageProcessor

from geomim_hf import Mask3DConfig, Mask3DForDepthPretraining, cli, training
from geomim_hf.data.scannet_rgbd import ScanNetRGBDCollator, mask3d_image_processor, scannet_rgbd_loader
from geomim_hf.evaluation.scannet import evaluate_depth
from geomim_hf.models.mask3d.configuration_mask3d import MASK3D_PRESETS

MODEL_CARD = Path(__file__).resolve().parent.parent / "model_cards" / "mask3d-rgbd-vit-base.md"
# Training defaults per --config_name preset, chosen by this project (the paper's schedule is not public); a config
# file or --model_name_or_path trains with base's, and an argument given on the command line always wins.
TRAINING_PRESETS = {
    "tiny": {"learning_rate": 1e-3, "max_train_steps": 600, "per_device_train_batch_size": 4,
             "per_device_eval_batch_size": 8, "weight_decay": 0.05, "num_warmup_steps": 20, "logging_steps": 50},
    "base": {"learning_rate": 1.5e-4, "num_train_epochs": 100, "per_device_train_batch_size": 32,
             "per_device_eval_batch_size": 32, "weight_decay": 0.05, "num_warmup_steps": 2000, "logging_steps": 50},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument(parser, "--dataroot", deprecated=("--root",), type=Path, required=True,
                     help="ScanNet root with scannetv2_<split>.txt")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--eval_split", default="val")
    parser.add_argument("--layout", choices=("frames_25k", "exported"), default=None,
                        help="ScanNet layout (default: detected from the first scan)")
    parser.add_argument("--config_name", default=None,
                        help=f"preset {sorted(MASK3D_PRESETS)} or config file / folder (default: base, or the "
                             "config of --model_name_or_path)")
    parser.add_argument("--config_overrides", default=None,
                        help="comma-separated field=value changes to the config, values as JSON, e.g. "
                             "'depth_mask_ratio=0.9,fusion=\"add\"' (strings may also go unquoted)")
    parser.add_argument("--model_name_or_path", default=None,
                        help="Mask3D model folder or Hub id to start from (a converted ViT, or a pretraining run)")
    parser.add_argument("--max_train_samples", type=int, default=None, help="use only the first N training frames")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="evaluate only the first N frames")
    parser.add_argument("--shuffle_buffer_size", type=int, default=256, help="frames in the streaming shuffle buffer")
    parser.add_argument("--eval_seed", type=int, default=0, help="seed of the evaluation masks")
    parser.add_argument("--num_figure_frames", type=int, default=4, help="validation frames drawn in the PNG")
    training.add_training_arguments(parser)
    args = training.parse_training_args(parser, argv, TRAINING_PRESETS, fallback="base")
    if args.model_name_or_path and args.config_name:
        parser.error("give --config_name or --model_name_or_path (whose config is used), not both")
    return args


def parse_overrides(text: str | None) -> dict:
    """`field=value,...` to a dict; values are JSON (numbers, booleans, lists) or plain strings."""
    overrides = {}
    for item in filter(None, (text or "").split(",")):
        name, separator, value = item.partition("=")
        if not separator:
            raise ValueError(f"--config_overrides: {item!r} is not field=value")
        try:
            overrides[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name.strip()] = value.strip()
    return overrides


def build_config(args: argparse.Namespace) -> Mask3DConfig:
    if args.model_name_or_path:
        config = Mask3DConfig.from_pretrained(args.model_name_or_path)
    elif args.config_name is None or args.config_name in MASK3D_PRESETS:
        config = Mask3DConfig.from_preset(args.config_name or "base")
    else:
        config = Mask3DConfig.from_pretrained(args.config_name)
    overrides = parse_overrides(args.config_overrides)
    unknown = set(overrides) - {field.name for field in dataclasses.fields(config)}
    if unknown:
        raise ValueError(f"--config_overrides: Mask3DConfig has no field {sorted(unknown)}")
    return dataclasses.replace(config, **overrides) if overrides else config


def image_processor_for(args: argparse.Namespace, config: Mask3DConfig) -> ViTImageProcessor:
    """The processor saved with the starting model (its normalisation), at the config's size; ImageNet otherwise."""
    size = {"height": config.image_size[0], "width": config.image_size[1]}
    if args.model_name_or_path and (Path(args.model_name_or_path) / "preprocessor_config.json").is_file():
        return ViTImageProcessor.from_pretrained(args.model_name_or_path, size=size)
    return mask3d_image_processor(config.image_size)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    accelerator = training.make_accelerator(args, project_name="mask3d_pretraining")
    output_dir = training.prepare_output_dir(args)
    config = build_config(args)
    if args.model_name_or_path:
        model = Mask3DForDepthPretraining.from_pretrained(args.model_name_or_path, config=config)
    else:
        model = Mask3DForDepthPretraining(config)
    processor = image_processor_for(args, config)
    collator = ScanNetRGBDCollator(processor)
    rank, world_size = accelerator.process_index, accelerator.num_processes

    frames = training.scannet_training_frames(args, collator, accelerator)
    batches_per_epoch = frames.batches_per_epoch()
    length = training.training_steps(args, batches_per_epoch)
    groups = training.parameter_groups(model, args.learning_rate, args.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.95))
    scheduler = training.make_scheduler(args, optimizer, length.max_train_steps, world_size)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.print(f"Mask3D pretraining: {frames.frames} frames, {batches_per_epoch} batches of "
                      f"{args.per_device_train_batch_size} per process and epoch, {length.max_train_steps} steps, "
                      f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    result = training.train(accelerator, args, model, optimizer, scheduler, frames.batches, batches_per_epoch,
                            description="Mask3D pretraining")
    completed_steps = result.completed_steps

    eval_loader = scannet_rgbd_loader(args.dataroot, args.eval_split, collator, args.per_device_eval_batch_size,
                                      layout=args.layout, rank=rank, world_size=world_size,
                                      max_samples=args.max_eval_samples, num_workers=args.dataloader_num_workers)
    unwrapped = accelerator.unwrap_model(model)
    metrics = evaluate_depth(unwrapped, eval_loader, accelerator, seed=args.eval_seed,
                             figure_path=output_dir / "reconstructions.png", image_mean=processor.image_mean,
                             image_std=processor.image_std, figure_frames=args.num_figure_frames)
    metrics |= {"train_steps": completed_steps, "train_runtime_s": round(result.train_runtime, 1)}
    accelerator.print(json.dumps(metrics, indent=2))
    if args.with_tracking:
        accelerator.log({f"eval_{name}": value for name, value in metrics.items()}, step=completed_steps)
        accelerator.end_training()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped.save_pretrained(output_dir, save_function=accelerator.save)
        processor.save_pretrained(output_dir)
        training.write_model_card(output_dir, MODEL_CARD, model_card_fields(args, config, metrics, frames.frames))
        training.save_metrics(output_dir, metrics)
        training.push_output_dir(args, output_dir, commit_message=f"Mask3D pretraining, {completed_steps} steps")
    accelerator.wait_for_everyone()
    return metrics


def model_card_fields(args: argparse.Namespace, config: Mask3DConfig, metrics: dict, frames: int) -> dict:
    return {
        "model_id": args.hub_model_id or Path(args.output_dir).name,
        "encoder": f"{config.num_hidden_layers} layers, width {config.hidden_size}, {config.num_attention_heads} "
                   f"heads, patch {config.patch_size}, input {config.image_size[0]}x{config.image_size[1]}",
        "training_data": f"{frames} frames of the `{args.train_split}` split of `{args.dataroot.name}`",
        "training_command": training.command_line(),
        "abs_rel": f"{metrics['abs_rel']:.4f}",
        "rmse": f"{metrics['rmse']:.4f}",
        "delta1": f"{metrics['delta1']:.4f}",
        "baseline_abs_rel": f"{metrics['baseline_abs_rel']:.4f}",
        "baseline_rmse": f"{metrics['baseline_rmse']:.4f}",
        "baseline_delta1": f"{metrics['baseline_delta1']:.4f}",
        "eval_frames": metrics["num_frames"],
        "eval_split": args.eval_split,
    }


if __name__ == "__main__":
    main()
