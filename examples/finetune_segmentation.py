"""Finetune transformers' `UperNetForSemanticSegmentation` with the Mask3D backbone on ScanNet 2D semantic labels.

    accelerate launch examples/finetune_segmentation.py --model_name_or_path MASK3D_MODEL --dataroot SCANNET_ROOT \\
        --train_split train --eval_split val --output_dir O

Labels are the 20-class ScanNet benchmark set, mapped from NYU40 ids (1-12, 14, 16, 24, 28, 33, 34, 36, 39 -> label
indices 0..19; every other id is ignored). Frames of the `scannet_frames_25k` layout carry NYU40 ids; those of the
official exporter's layout carry ScanNet ids and need `--label_map_file scannetv2-labels.combined.tsv`. The backbone
(`Mask3DBackbone`: the maps of `--out_indices` layers) is loaded from a Mask3D model folder or Hub id (a pretraining
run, or a converted ViT); `--config_name tiny|base` starts from random weights instead, as a baseline.

The encoder trains with layer-wise learning-rate decay (`--layer_decay`, BEiT / MAE practice). The mean IoU over the
20 classes and the per-class IoU table (as `evaluate`'s `mean_iou`: classes absent from both prediction and ground
truth do not count; `geomim_hf.evaluation.scannet`) are printed and written to `OUTPUT_DIR/metrics.json`, with the
finetuned model, its processor and a model card (`model_cards/mask3d-upernet-finetuned.md`). Other arguments are
those of transformers' `no_trainer` examples (`geomim_hf.training`, whose `train` is the loop).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import UperNetConfig, UperNetForSemanticSegmentation, ViTImageProcessor

from geomim_hf import Mask3DBackbone, Mask3DConfig, cli, training
from geomim_hf.data.scannet_rgbd import (
    IGNORE_INDEX,
    SCANNET20_CLASS_NAMES,
    ScanNetRGBDCollator,
    mask3d_image_processor,
    read_scannet_to_nyu40,
    scannet_rgbd_loader,
)
from geomim_hf.evaluation.scannet import evaluate_segmentation, format_iou_table
from geomim_hf.models.mask3d.configuration_mask3d import MASK3D_PRESETS

MODEL_CARD = Path(__file__).resolve().parent.parent / "model_cards" / "mask3d-upernet-finetuned.md"
# Training defaults per --config_name preset of the backbone, chosen by this project; a backbone from
# --model_name_or_path (or the tiny preset) trains with base's, and an argument given on the command line always wins.
TRAINING_PRESETS = {
    "base": {"learning_rate": 1e-4, "weight_decay": 0.05, "num_train_epochs": 50, "per_device_train_batch_size": 8,
             "per_device_eval_batch_size": 8, "num_warmup_steps": 500, "logging_steps": 50},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=None, help="Mask3D model folder or Hub id for the backbone")
    parser.add_argument("--config_name", choices=sorted(MASK3D_PRESETS), default=None,
                        help="start from a randomly initialised preset instead of --model_name_or_path")
    cli.add_argument(parser, "--dataroot", deprecated=("--root",), type=Path, required=True,
                     help="ScanNet root with scannetv2_<split>.txt")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--eval_split", default="val")
    parser.add_argument("--layout", choices=("frames_25k", "exported"), default=None,
                        help="ScanNet layout (default: detected from the first scan)")
    parser.add_argument("--label_map_file", type=Path, default=None,
                        help="scannetv2-labels.combined.tsv, needed for the exported layout's ScanNet-id labels")
    parser.add_argument("--out_indices", type=int, nargs="+", default=None,
                        help="encoder layers whose maps feed UperNet (default: the backbone config's)")
    parser.add_argument("--head_hidden_size", type=int, default=512, help="channels of the UperNet decode head")
    parser.add_argument("--auxiliary_channels", type=int, default=256, help="channels of the auxiliary FCN head")
    parser.add_argument("--layer_decay", type=float, default=0.65, help="layer-wise learning-rate decay of the ViT")
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument("--shuffle_buffer_size", type=int, default=256)
    parser.add_argument("--evaluate_before_training", action="store_true",
                        help="also measure the mean IoU of the untrained head (metrics.json: initial_mean_iou)")
    training.add_training_arguments(parser)
    args = training.parse_training_args(parser, argv, TRAINING_PRESETS, fallback="base")
    if (args.model_name_or_path is None) == (args.config_name is None):
        parser.error("give exactly one of --model_name_or_path (pretrained backbone) and --config_name (random)")
    return args


def load_backbone(args: argparse.Namespace) -> Mask3DBackbone:
    """The Mask3D backbone with the encoder weights of --model_name_or_path (all of them), or a random preset."""
    overrides = {"out_indices": args.out_indices} if args.out_indices else {}
    if args.config_name:
        return Mask3DBackbone(Mask3DConfig.from_preset(args.config_name, **overrides))
    backbone, info = Mask3DBackbone.from_pretrained(args.model_name_or_path, output_loading_info=True, **overrides)
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ValueError(f"{args.model_name_or_path} does not hold a whole Mask3D encoder: missing "
                         f"{sorted(info['missing_keys'])[:5]}, mismatched {sorted(info['mismatched_keys'])[:5]}")
    return backbone


def encoder_layer_id(num_layers: int):
    """Layer ids for layer decay (BEiT / mmseg): embeddings 0, encoder layer i -> i + 1, everything else (the final
    norm and the heads) num_layers + 1."""

    def layer_id(name: str) -> int:
        if name.startswith("backbone.vit.embeddings."):
            return 0
        if name.startswith("backbone.vit.layers."):
            return int(name.split(".")[3]) + 1
        return num_layers + 1

    return layer_id


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    accelerator = training.make_accelerator(args, project_name="mask3d_segmentation")
    output_dir = training.prepare_output_dir(args)
    backbone = load_backbone(args)
    config = UperNetConfig(
        backbone_config=backbone.config, num_labels=len(SCANNET20_CLASS_NAMES),
        id2label=dict(enumerate(SCANNET20_CLASS_NAMES)),
        label2id={name: index for index, name in enumerate(SCANNET20_CLASS_NAMES)},
        hidden_size=args.head_hidden_size, auxiliary_channels=args.auxiliary_channels, loss_ignore_index=IGNORE_INDEX)
    model = UperNetForSemanticSegmentation(config)
    model.backbone = backbone  # the loaded weights, not the random ones UperNet builds from the config
    if args.model_name_or_path and (Path(args.model_name_or_path) / "preprocessor_config.json").is_file():
        processor = ViTImageProcessor.from_pretrained(args.model_name_or_path)
    else:
        processor = mask3d_image_processor(backbone.config.image_size)
    label_map = read_scannet_to_nyu40(args.label_map_file) if args.label_map_file else None
    collator = ScanNetRGBDCollator(processor, depth=False, labels=True, scannet_to_nyu40=label_map)
    rank, world_size = accelerator.process_index, accelerator.num_processes

    def eval_metrics() -> dict:
        loader = scannet_rgbd_loader(args.dataroot, args.eval_split, collator, args.per_device_eval_batch_size,
                                     layout=args.layout, rank=rank, world_size=world_size,
                                     max_samples=args.max_eval_samples, num_workers=args.dataloader_num_workers)
        return evaluate_segmentation(accelerator.unwrap_model(model), loader, len(SCANNET20_CLASS_NAMES),
                                     IGNORE_INDEX, accelerator, SCANNET20_CLASS_NAMES)

    initial = eval_metrics() if args.evaluate_before_training else None
    frames = training.scannet_training_frames(args, collator, accelerator)
    batches_per_epoch = frames.batches_per_epoch()
    length = training.training_steps(args, batches_per_epoch)
    num_layers = backbone.config.num_hidden_layers + 2
    groups = training.parameter_groups(model, args.learning_rate, args.weight_decay,
                                       layer_id=encoder_layer_id(backbone.config.num_hidden_layers),
                                       num_layers=num_layers, layer_decay=args.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
    scheduler = training.make_scheduler(args, optimizer, length.max_train_steps, accelerator.num_processes)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.print(f"UperNet + Mask3D backbone: {frames.frames} frames, {batches_per_epoch} batches per process "
                      f"and epoch, {length.max_train_steps} steps")
    result = training.train(accelerator, args, model, optimizer, scheduler, frames.batches, batches_per_epoch,
                            description="segmentation finetuning")
    completed_steps = result.completed_steps

    metrics = eval_metrics()
    accelerator.print(format_iou_table(metrics))
    if initial is not None:
        metrics["initial_mean_iou"] = initial["mean_iou"]
    metrics |= {"train_steps": completed_steps, "train_runtime_s": round(result.train_runtime, 1)}
    if args.with_tracking:
        accelerator.log({"eval_mean_iou": metrics["mean_iou"]}, step=completed_steps)
        accelerator.end_training()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(output_dir, save_function=accelerator.save)
        processor.save_pretrained(output_dir)
        training.write_model_card(output_dir, MODEL_CARD, {
            "model_id": args.hub_model_id or output_dir.name,
            "backbone": args.model_name_or_path or f"random {args.config_name} preset",
            "eval_split": args.eval_split, "mean_iou": f"{metrics['mean_iou']:.4f}",
            "iou_table": format_iou_table(metrics), "training_command": training.command_line()})
        training.save_metrics(output_dir, metrics)
        training.push_output_dir(args, output_dir, commit_message=f"UperNet + Mask3D, {completed_steps} steps")
        print(json.dumps({name: metrics[name] for name in ("mean_iou", "mean_accuracy", "overall_accuracy")}))
    accelerator.wait_for_everyone()
    return metrics


if __name__ == "__main__":
    main()
