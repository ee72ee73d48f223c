"""Finetune a BEV 3D detector (`GeoMIMForBEVDetection`) on nuScenes and evaluate it with the official devkit.

    accelerate launch examples/finetune_bevdet.py --dataroot data/nuscenes --version v1.0-trainval \\
        --train_split train --eval_split val --model_name_or_path geomim/swin-base \\
        --config_name bevdet4d-swinb-256x704 --output_dir bevdet4d-geomim

Follows transformers' `no_trainer` examples: one `Accelerator` (processes, devices and mixed precision come from
`accelerate launch`), a progress bar on the main process, `save_state` / `load_state` checkpoints in
`OUTPUT_DIR/step_N` or `epoch_N`, and at the end `OUTPUT_DIR/metrics.json`, `OUTPUT_DIR/results_nusc.json` (the
submission), the model (`save_pretrained`, safetensors), its image processor and a model card.

`--model_name_or_path` is a `GeoMIMModel` encoder (a pretrained GeoMIM or Swin: the detector is built around it from
`--config_name`), a `GeoMIMForBEVDetection` (finetuned further as it is), or nothing (random initialisation).
`--config_name` is a preset of `geomim_hf.models.bevdet.DETECTION_PRESETS` or a config.json. Every training argument
that is not given takes the preset's value (`TRAINING_PRESETS`): the headline preset trains with the original
schedule; `tiny` trains a few synthetic scenes on a CPU in minutes.

Data: each process streams its own scenes of the split, shuffled per epoch, with class-balanced repetition (CBGS) if
asked, and all take the same number of steps (`geomim_hf.data.training_scenes`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import sys
from pathlib import Path

import torch
import transformers
from torch.utils.data import DataLoader
from transformers.utils import ModelOutput

from geomim_hf import GeoMIMForBEVDetection, GeoMIMImageProcessor, GeoMIMModel, training
from geomim_hf.data.collate import NuScenesCollator
from geomim_hf.data.image_processing_geomim import nuscenes_resize
from geomim_hf.data.training_scenes import TrainingScenes
from geomim_hf.evaluation import evaluate_detector, format_metrics
from geomim_hf.hub import write_model_card
from geomim_hf.models.bev import GeoMIMBEVConfig
from geomim_hf.models.bevdet import DETECTION_PRESETS, GeoMIMBEVDetectionConfig
from geomim_hf.models.inputs import model_inputs

logger = logging.getLogger(__name__)
MODEL_CARD = Path(__file__).resolve().parent.parent / "model_cards" / "geomim-bevdet-finetuned.md"

# Training defaults per --config_name preset (a config file trains with tiny's); an argument given on the command line
# always wins.
TRAINING_PRESETS = {
    # bevdet-swinb-4d-256x704-cbgs-geomim.py: AdamW 2e-4, wd 0.05, layer decay 0.8, 200 warm-up steps, clip 5,
    # 20 epochs of CBGS at 4 samples per GPU, EMA, previous frame zeroed for the first 2 epochs.
    "bevdet4d-swinb-256x704": {
        "learning_rate": 2e-4, "weight_decay": 0.05, "layer_decay": 0.8, "lr_scheduler_type": "constant_with_warmup",
        "num_warmup_steps": 200, "max_grad_norm": 5.0, "num_train_epochs": 20, "per_device_train_batch_size": 4,
        "ema": True, "cbgs": True, "previous_frame_start_epoch": 2, "num_sweeps": 1, "augment": True,
        "dataloader_num_workers": 4, "eval_every_epochs": 2,
    },
    # Overfits a few synthetic scenes into a useful detector within minutes on 2 CPU cores.
    "tiny": {
        "learning_rate": 2e-3, "weight_decay": 0.01, "layer_decay": 1.0, "lr_scheduler_type": "cosine",
        "num_warmup_steps": 20, "max_grad_norm": 5.0, "num_train_epochs": 60, "per_device_train_batch_size": 2,
        "ema": False, "cbgs": False, "previous_frame_start_epoch": 0, "num_sweeps": 1, "augment": False,
        "dataloader_num_workers": 1, "eval_every_epochs": 0,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataroot", type=Path, required=True, help="nuScenes dataroot (official v1.0 layout)")
    data.add_argument("--version", default="v1.0-trainval")
    data.add_argument("--train_split", default="train", help="devkit split or a key of <version>/splits.json")
    data.add_argument("--eval_split", default="val", help="split evaluated with the devkit ('none' to skip)")
    data.add_argument("--num_sweeps", type=int, default=None, help="LiDAR sweeps loaded (for depth targets)")
    data.add_argument("--cbgs", action=argparse.BooleanOptionalAction, default=None,
                      help="class-balanced grouping and sampling")
    data.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                      help="image and BEV augmentation in training")
    data.add_argument("--shuffle_buffer_size", type=int, default=256)
    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", default=None,
                       help="a GeoMIMModel encoder or a GeoMIMForBEVDetection (folder or Hub id); none: random init")
    model.add_argument("--config_name", default="tiny",
                       help=f"a detection preset ({', '.join(DETECTION_PRESETS)}) or a config.json")
    model.add_argument("--image_size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), default=None,
                       help="network input size (multiples of 32); default: the preset's")
    model.add_argument("--layer_decay", type=float, default=None, help="layer-wise learning-rate decay of the encoder")
    model.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                       help="keep, evaluate and save an exponential moving average of the weights")
    model.add_argument("--previous_frame_start_epoch", type=int, default=None,
                       help="BEVDet4D: zero the previous frame's BEV before this epoch")
    model.add_argument("--eval_every_epochs", type=int, default=None, help="also evaluate every N epochs (0: end)")
    training.add_training_arguments(parser)
    args = training.parse_training_args(parser, argv, TRAINING_PRESETS, fallback="tiny")
    if not args.dataroot.is_dir():
        parser.error(f"--dataroot {args.dataroot} is not a folder")
    if args.config_name not in DETECTION_PRESETS and not Path(args.config_name).is_file():
        parser.error(f"--config_name {args.config_name!r} is neither a preset ({', '.join(DETECTION_PRESETS)}) nor a "
                     f"config file")
    return args


def with_image_size(config: GeoMIMBEVDetectionConfig, image_size: list[int] | None) -> GeoMIMBEVDetectionConfig:
    """`config` with its trunk built for `image_size` (re-validated), or as it is without one."""
    if image_size is not None:
        config.bev_config = GeoMIMBEVConfig.from_dict({**config.bev_config.to_dict(), "image_size": list(image_size)})
    return config


def load_model(args: argparse.Namespace) -> tuple[GeoMIMForBEVDetection, GeoMIMImageProcessor]:
    """The detector and its image processor, from `--model_name_or_path` and `--config_name`."""
    preset = args.config_name if args.config_name in DETECTION_PRESETS else None
    source_type = None
    if args.model_name_or_path:
        source_type = transformers.AutoConfig.from_pretrained(args.model_name_or_path).model_type
    if source_type == GeoMIMBEVDetectionConfig.model_type:
        config = with_image_size(GeoMIMBEVDetectionConfig.from_pretrained(args.model_name_or_path), args.image_size)
        model = GeoMIMForBEVDetection.from_pretrained(args.model_name_or_path, config=config)
    else:
        encoder = GeoMIMModel.from_pretrained(args.model_name_or_path) if source_type == "geomim" else None
        if source_type not in (None, "geomim"):
            raise ValueError(f"--model_name_or_path {args.model_name_or_path} is a {source_type!r} model, neither a "
                             f"GeoMIMModel encoder nor a GeoMIMForBEVDetection")
        if preset is not None:
            config = GeoMIMBEVDetectionConfig.from_preset(preset, None if encoder is None else encoder.config)
        else:
            config = GeoMIMBEVDetectionConfig.from_json_file(args.config_name)
        model = GeoMIMForBEVDetection(with_image_size(config, args.image_size))
        if encoder is not None:
            model.bev_model.encoder.geomim.load_state_dict(encoder.state_dict(), strict=True)
    image_size = model.config.bev_config.image_size
    processor = None
    if args.model_name_or_path:
        try:
            processor = GeoMIMImageProcessor.from_pretrained(args.model_name_or_path)
        except OSError:  # an encoder saved without preprocessor_config.json
            processor = None
    if processor is None:
        processor = detection_processor(preset or "tiny", image_size)
    processor.size = {"height": image_size[0], "width": image_size[1]}
    return model, processor


def detection_processor(preset: str, image_size: list[int]) -> GeoMIMImageProcessor:
    """The image pipeline of a preset: BEVDet's (with its BGR quirk) for the headline preset, a milder RGB one with
    a 1:1 resize of the full width for `tiny`."""
    size = {"height": image_size[0], "width": image_size[1]}
    if preset == "tiny":
        return GeoMIMImageProcessor(size=size, resize_range=(0.94, 1.06), test_resize=1.0, flip_probability=0.5,
                                    rotation_range_deg=(-5.4, 5.4), bev_rotation_range_deg=(-22.5, 22.5),
                                    bev_scale_range=(0.95, 1.05))
    return GeoMIMImageProcessor.bevdet_finetuning(size=size, test_resize=nuscenes_resize(0.44, image_size[1]))


def swin_layer_id(name: str, depths: list[int]) -> int:
    """BEVDet's `LayerDecayOptimizerConstructor` ids: patch embedding and position embedding 0, block j of stage i
    `sum(depths[:i]) + j + 1`, the merging after stage i the id of the next stage's first block, everything else
    (output norms, neck, view transform, BEV encoder, head) `sum(depths) + 1`."""
    parts = name.removeprefix("bev_model.encoder.").split(".")
    if parts[:2] == ["geomim", "embeddings"]:
        return 0
    if parts[:3] == ["geomim", "encoder", "layers"]:
        stage = int(parts[3])
        if parts[4] == "blocks":
            return sum(depths[:stage]) + int(parts[5]) + 1
        return sum(depths[: stage + 1]) + 1
    return sum(depths) + 1


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    accelerator = training.make_accelerator(args, project_name="finetune_bevdet")
    output_dir = training.prepare_output_dir(args)
    model, processor = load_model(args)
    config = model.config
    logger.info(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")

    trunk = config.bev_config
    depths = trunk.encoder_config.depths
    layer_id = (lambda name: swin_layer_id(name, depths)) if args.layer_decay != 1.0 else None
    groups = training.parameter_groups(model, args.learning_rate, args.weight_decay, layer_id=layer_id,
                                       num_layers=sum(depths) + 2, layer_decay=args.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)

    samples = TrainingScenes(args.dataroot, args.version, args.train_split, accelerator.process_index,
                             accelerator.num_processes, batch_size=args.per_device_train_batch_size,
                             gradient_accumulation_steps=args.gradient_accumulation_steps, cbgs=args.cbgs,
                             seed=args.seed, shuffle_buffer_size=args.shuffle_buffer_size)
    print_from_this_process(accelerator, f"training scenes: {json.dumps(samples.scenes)}")
    batches_per_epoch = samples.batches_per_epoch()
    length = training.training_steps(args, batches_per_epoch)
    scheduler = training.make_scheduler(args, optimizer, length.max_train_steps, accelerator.num_processes)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    # BEVDet's MEGVII EMA hook starts its counter at 10560 updates, i.e. at decay ~0.994.
    ema = training.ExponentialMovingAverage(accelerator.unwrap_model(model), decay=training.megvii_ema_decay,
                                            updates=10560) if args.ema else None

    collate = NuScenesCollator(processor, augment=args.augment, depth_downsample=trunk.feature_stride
                               if config.depth_loss_weight > 0 else None, depth_range=tuple(trunk.depth_bins[:2]),
                               previous_frames=trunk.num_previous_frames, class_names=config.class_names)

    def epoch_batches(epoch: int) -> DataLoader:
        collate.seed = args.seed * 1_000_003 + epoch  # augmentation: a function of the seed, epoch and samples
        dataset = samples.dataset(epoch, num_sweeps=args.num_sweeps, previous_frames=trunk.num_previous_frames,
                                  decode_images=False)
        # Its own generator: a loader draws a seed when it starts, which must not move the global random state that
        # a resumed run restores.
        return DataLoader(dataset, collate_fn=collate, batch_size=args.per_device_train_batch_size,
                          num_workers=args.dataloader_num_workers,
                          generator=torch.Generator().manual_seed(args.seed * 1_000_003 + epoch))

    def step(model: torch.nn.Module, batch: dict, epoch: int) -> ModelOutput:
        # BEVDet4D: the previous frame's BEV is zeroed for the first epochs.
        return model(**model_inputs(model, batch, accelerator.device),
                     zero_previous_frame=epoch < args.previous_frame_start_epoch)

    def evaluate_periodically(epoch: int, completed_steps: int, last_epoch: bool) -> None:
        # The final evaluation follows training; the periodic ones use the EMA weights when there are any.
        due = bool(args.eval_every_epochs) and (epoch + 1) % args.eval_every_epochs == 0
        if last_epoch or not due or args.eval_split == "none":
            return
        unwrapped = accelerator.unwrap_model(model)
        with ema.average_weights(unwrapped) if ema is not None else contextlib.nullcontext():
            metrics = evaluate(model, processor, args, accelerator, output_dir / f"eval_epoch_{epoch}")
        if args.with_tracking and accelerator.is_main_process:
            accelerator.log({f"eval/{key}": value for key, value in metrics.items()}, step=completed_steps)

    result = training.train(accelerator, args, model, optimizer, scheduler, epoch_batches, batches_per_epoch,
                            step=step, ema=ema, on_epoch_end=evaluate_periodically, description="finetuning")

    accelerator.wait_for_everyone()
    final = accelerator.unwrap_model(model)
    if ema is not None:
        ema.copy_to(final)
    # Every process holds the same parameters after the last synchronised step (BatchNorm statistics are per
    # process; the main process's are saved); digests make that checkable.
    print_from_this_process(accelerator, f"final parameters sha256 {weights_digest(final, buffers=False)}, "
                                         f"state sha256 {weights_digest(final)}")
    metrics = {}
    if args.eval_split != "none":
        metrics = evaluate(model, processor, args, accelerator, output_dir)
    if accelerator.is_main_process:
        final.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        metrics_record = {**metrics, "eval_split": args.eval_split, "train_split": args.train_split,
                          "steps": result.completed_steps}
        training.save_metrics(output_dir, metrics_record)
        write_model_card(output_dir, MODEL_CARD, card_fields(args, final, metrics, result.completed_steps))
        training.push_output_dir(args, output_dir, commit_message=f"Finetuned {args.config_name} detector")
    accelerator.end_training()


def evaluate(model, processor, args, accelerator, output_dir: Path) -> dict[str, float]:
    metrics = evaluate_detector(model, processor, args.dataroot, args.version, args.eval_split, output_dir,
                                batch_size=args.per_device_eval_batch_size, num_workers=args.dataloader_num_workers,
                                accelerator=accelerator)
    if metrics:
        print(format_metrics(metrics))
    return metrics


def print_from_this_process(accelerator, message: str) -> None:
    """Prints one line tagged with the process index in a single write: torchrun starts workers unbuffered
    (`python -u`), where `print` writes the text and the newline separately and concurrent lines run into each other."""
    sys.stdout.write(f"process {accelerator.process_index}: {message}\n")
    sys.stdout.flush()


def weights_digest(model: torch.nn.Module, buffers: bool = True) -> str:
    """SHA-256 of every tensor of the model's state dict (or of its parameters only), in key order."""
    digest = hashlib.sha256()
    tensors = model.state_dict() if buffers else dict(model.named_parameters())
    for key, value in sorted(tensors.items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def card_fields(args, model, metrics, steps) -> dict:
    per_class = "\n".join(f"| {key.removeprefix('AP_')} | {value:.4f} |" for key, value in metrics.items()
                          if key.startswith("AP_"))
    return {
        "model_id": args.hub_model_id or str(args.output_dir),
        "config_name": args.config_name,
        "initialisation": args.model_name_or_path or "random",
        "data": f"{args.version} `{args.train_split}` split of `{args.dataroot}`",
        "eval_split": args.eval_split,
        "mAP": f"{metrics['mAP']:.4f}" if metrics else "not evaluated",
        "NDS": f"{metrics['NDS']:.4f}" if metrics else "not evaluated",
        "per_class_ap": per_class or "| (not evaluated) | |",
        "steps": steps,
        "command": " ".join(["accelerate", "launch", *sys.argv]) if sys.argv else "",
        "parameters": f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M",
    }


if __name__ == "__main__":
    main()
