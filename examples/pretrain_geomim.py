"""GeoMIM pretraining with accelerate: teach the multi-camera Swin encoder to reconstruct a LiDAR teacher's BEV features.

Full scale, as the original (Swin-B, AdamW 2e-4, weight decay 0.01, 500 warm-up steps then cosine, clip 35, 2 samples
per device, 50 epochs, 256 x 704, class-balanced sampling), with the converted bevfusion teacher and a MixMIM start::

    accelerate launch examples/pretrain_geomim.py --dataroot data/nuscenes --version v1.0-trainval \\
        --train_split train --config_name base --model_name_or_path geomim-mixmim-base-init \\
        --teacher_name_or_path bevfusion-lidar-teacher --cbgs --output_dir geomim-pretrain-base --with_tracking

On a CPU, the synthetic set and the ``tiny`` preset (a seeded random teacher stands in for a trained LiDAR detector,
option (b) of the project's pretraining notes)::

    python -m geomim_hf.data.synthetic nuscenes --output_dir data/nuscenes
    accelerate launch --cpu examples/pretrain_geomim.py --dataroot data/nuscenes --version v1.0-mini \\
        --train_split mini_train --config_name tiny --random_teacher_seed 0 --output_dir geomim-pretrain-tiny

Teacher targets come from a cache written by ``examples/precompute_teacher_targets.py`` (``--teacher_cache``), or from
a teacher run live on every batch (``--teacher_name_or_path``, ``--random_teacher_seed``). The output folder holds
``encoder/`` (the pretrained encoder as a ``GeoMIMModel``, its image processor and a model card: what
``--push_to_hub`` uploads and what BEV detectors start from), ``pretraining/`` (the whole ``GeoMIMForPretraining``, to
continue pretraining), ``metrics.json``, the ``step_N`` / ``epoch_N`` training states and, with ``--with_tracking``,
the tensorboard logs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate.logging import get_logger
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers.utils import cached_file

from geomim_hf import GeoMIMForPretraining, GeoMIMModel, GeoMIMPretrainingConfig, training
from geomim_hf.data import GeoMIMImageProcessor
from geomim_hf.data.pretraining_collate import PretrainingCollator
from geomim_hf.data.training_scenes import TrainingScenes
from geomim_hf.models.geomim.conversion_mixmim import MIXMIM_DECODER_FILE, load_mixmim_decoder
from geomim_hf.models.geomim.modeling_geomim_pretraining import GeoMIMForPretrainingOutput, bev_cosine_similarity
from geomim_hf.models.inputs import model_inputs
from geomim_hf.models.lidar_teacher import (
    GeoMIMLidarTeacher,
    GeoMIMLidarTeacherConfig,
    TeacherTargetCache,
    random_lidar_teacher,
)
from geomim_hf.models.lidar_teacher.configuration_lidar_teacher import TEACHER_PRESETS

logger = get_logger(__name__)

CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "geomim-pretrained-encoder.md"
# The schedule of the original (pretrain/geomim_config/pretrain_base_50ep.yaml) for the Swin presets (and for a config
# folder), and one that learns the synthetic set in minutes for `tiny`; an argument given on the command line always
# wins.
ORIGINAL_SCHEDULE = {"learning_rate": 2e-4, "weight_decay": 0.01, "lr_scheduler_type": "cosine", "max_grad_norm": 35.0,
                     "num_warmup_steps": 500, "num_train_epochs": 50, "per_device_train_batch_size": 2,
                     "image_size": [256, 704]}
TRAINING_PRESETS = {
    "base": ORIGINAL_SCHEDULE,
    "large": ORIGINAL_SCHEDULE,
    "tiny": {**ORIGINAL_SCHEDULE, "learning_rate": 2e-3, "num_warmup_steps": 5, "num_train_epochs": 20,
             "image_size": [128, 352]},
}
# The original anneals to 1e-3 of the peak learning rate (mmcv's CosineAnnealing with min_lr_ratio 1e-3).
MIN_LR_RATE = 1e-3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataroot", type=Path, required=True, help="nuScenes dataroot (official layout)")
    data.add_argument("--version", default="v1.0-trainval")
    data.add_argument("--train_split", default="train", help="a devkit split or a key of <version>/splits.json")
    data.add_argument("--num_sweeps", type=int, default=10, help="LiDAR sweeps the teacher and the depth loss see")
    data.add_argument("--image_size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"), default=None,
                      help="network input; multiples of 32")
    data.add_argument("--cbgs", action="store_true",
                      help="class-balanced grouping and sampling (CBGS), as the original pretraining")
    data.add_argument("--no_augmentation", action="store_true",
                      help="no image augmentation and no BEV flip (the original augments both)")
    data.add_argument("--shuffle_buffer_size", type=int, default=256, help="streaming shuffle buffer, in samples")
    model = parser.add_argument_group("model")
    model.add_argument("--config_name", default="base",
                       help="a preset (base, large, tiny) or a GeoMIMPretrainingConfig folder / Hub id")
    model.add_argument("--model_name_or_path", default=None,
                       help="a GeoMIMForPretraining to start from (a MixMIM-initialised model, an earlier run)")
    model.add_argument("--encoder_name_or_path", default=None,
                       help="a GeoMIMModel whose weights (and architecture) start the encoder; with a MixMIM "
                            "conversion's decoder_init.safetensors next to it, MixMIM's decoder starts the decoder")
    teacher = parser.add_argument_group("teacher (exactly one)")
    teacher.add_argument("--teacher_cache", type=Path, default=None,
                         help="BEV targets precomputed by examples/precompute_teacher_targets.py")
    teacher.add_argument("--teacher_name_or_path", default=None, help="a GeoMIMLidarTeacher run live on every batch")
    teacher.add_argument("--random_teacher_seed", type=int, default=None,
                         help="a randomly initialised teacher (synthetic data, which has no trained LiDAR detector)")
    teacher.add_argument("--random_teacher_grid", choices=sorted(TEACHER_PRESETS), default=None,
                         help="the random teacher's configuration (default: small_grid for tiny, else bevfusion's)")
    training.add_training_arguments(parser)
    args = training.parse_training_args(parser, argv, TRAINING_PRESETS, fallback="base")
    if not args.dataroot.is_dir():
        parser.error(f"--dataroot {args.dataroot} is not a folder")
    sources = [args.teacher_cache, args.teacher_name_or_path, args.random_teacher_seed]
    if sum(source is not None for source in sources) != 1:
        parser.error("give exactly one teacher: --teacher_cache, --teacher_name_or_path or --random_teacher_seed")
    if args.random_teacher_grid is not None and args.random_teacher_seed is None:
        parser.error("--random_teacher_grid goes with --random_teacher_seed")
    if args.model_name_or_path and args.encoder_name_or_path:
        parser.error("--model_name_or_path already holds an encoder; drop --encoder_name_or_path")
    return args


def build_model(args: argparse.Namespace) -> GeoMIMForPretraining:
    """The model: from a GeoMIMForPretraining checkpoint, or a new one from the config, whose encoder may come from a
    GeoMIMModel checkpoint."""
    if args.model_name_or_path:
        return GeoMIMForPretraining.from_pretrained(args.model_name_or_path)
    if args.config_name in ("base", "large", "tiny"):
        config = GeoMIMPretrainingConfig.from_preset(args.config_name)
    else:
        config = GeoMIMPretrainingConfig.from_pretrained(args.config_name)
    if not args.encoder_name_or_path:
        return GeoMIMForPretraining(config)
    encoder = GeoMIMModel.from_pretrained(args.encoder_name_or_path)
    encoder.config.out_features = encoder.config.stage_names[-2:]  # the stages pretraining reads
    config.encoder_config = encoder.config
    model = GeoMIMForPretraining(config)
    model.geomim.load_state_dict(encoder.state_dict(), strict=True)
    # A MixMIM conversion (conversion/convert_mixmim_to_geomim.py) also hands over MixMIM's decoder, which starts ours.
    decoder_file = cached_file(args.encoder_name_or_path, MIXMIM_DECODER_FILE,
                               _raise_exceptions_for_missing_entries=False)
    if decoder_file is not None:
        report = load_mixmim_decoder(model, load_file(decoder_file))
        logger.info(f"decoder initialised from MixMIM's ({len(report.converted)} tensors of {decoder_file})")
    return model


def build_teacher_targets(
    args: argparse.Namespace, config: GeoMIMPretrainingConfig, device: torch.device
) -> tuple[Callable[[dict], torch.Tensor], str]:
    """A function from a batch to its `(B, C, X, Y)` teacher targets on `device`, and a description for the card."""
    if args.teacher_cache is not None:
        cache = TeacherTargetCache(args.teacher_cache)
        check_teacher_shape(cache.teacher_config, config)
        teacher_name = cache.manifest["teacher"]["name_or_path"]

        def cached(batch: dict) -> torch.Tensor:
            return cache.targets(batch["sample_tokens"], batch["lidar_augmentation"], device=device)

        return cached, f"cached targets of `{teacher_name}` ({args.teacher_cache})"

    if args.teacher_name_or_path:
        teacher = GeoMIMLidarTeacher.from_pretrained(args.teacher_name_or_path)
        description = f"`{args.teacher_name_or_path}`, run live"
    else:
        grid = args.random_teacher_grid or ("small_grid" if args.config_name == "tiny" else "bevfusion")
        teacher_config = GeoMIMLidarTeacherConfig.from_preset(grid)
        teacher = random_lidar_teacher(teacher_config, seed=args.random_teacher_seed)
        description = (f"a randomly initialised SparseEncoder ({grid} configuration, seed {args.random_teacher_seed}), "
                       "run live: untrained, its features still encode the occupied geometry")
    check_teacher_shape(teacher.config, config)
    teacher.requires_grad_(False)
    teacher.to(device).eval()

    def live(batch: dict) -> torch.Tensor:
        with torch.no_grad():
            return teacher(batch["points"].to(device), batch["points_mask"].to(device)).bev_features

    return live, description


def check_teacher_shape(teacher_config: GeoMIMLidarTeacherConfig, config: GeoMIMPretrainingConfig) -> None:
    expected = (config.teacher_channels, *config.bev_output_size)
    if tuple(teacher_config.bev_shape) != expected:
        raise ValueError(f"the teacher's BEV map is {tuple(teacher_config.bev_shape)} (C, X, Y) but the model "
                         f"reconstructs {expected}: pick a teacher and a --config_name that agree")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    accelerator = training.make_accelerator(args, project_name="geomim_pretraining")
    output_dir = training.prepare_output_dir(args)

    model = build_model(args)
    config = model.config
    height, width = args.image_size
    if height % config.mask_stride or width % config.mask_stride:
        raise ValueError(f"--image_size {height} {width} must be multiples of {config.mask_stride} (the mask grid)")
    processor = GeoMIMImageProcessor.geomim_pretraining(size={"height": height, "width": width})
    collate = PretrainingCollator(processor, augment=not args.no_augmentation, depth_downsample=config.feature_stride)
    teacher_targets, teacher_description = build_teacher_targets(args, config, accelerator.device)

    samples = TrainingScenes(args.dataroot, args.version, args.train_split, accelerator.process_index,
                             accelerator.num_processes, batch_size=args.per_device_train_batch_size,
                             gradient_accumulation_steps=args.gradient_accumulation_steps, cbgs=args.cbgs,
                             seed=args.seed, shuffle_buffer_size=args.shuffle_buffer_size)
    batches_per_epoch = samples.batches_per_epoch()
    length = training.training_steps(args, batches_per_epoch)
    samples_per_epoch = batches_per_epoch * args.per_device_train_batch_size * accelerator.num_processes

    optimizer = torch.optim.AdamW(
        training.parameter_groups(model, args.learning_rate, args.weight_decay), lr=args.learning_rate
    )
    cosine = args.lr_scheduler_type == "cosine"
    scheduler = training.make_scheduler(args, optimizer, length.max_train_steps, accelerator.num_processes,
                                        name="cosine_with_min_lr" if cosine else None,
                                        scheduler_specific_kwargs={"min_lr_rate": MIN_LR_RATE} if cosine else None)
    # The loader is not prepared: each process streams its own scenes (TrainingScenes).
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    logger.info(f"{samples_per_epoch} training samples per epoch, {length.steps_per_epoch} steps per epoch, "
                f"{length.max_train_steps} steps, {accelerator.num_processes} process(es) x "
                f"{args.per_device_train_batch_size} samples x {args.gradient_accumulation_steps} accumulation; "
                f"teacher: {teacher_description}")

    def epoch_batches(epoch: int) -> DataLoader:
        collate.seed = args.seed * 1_000_003 + epoch  # augmentation: a function of the seed, epoch and samples
        dataset = samples.dataset(epoch, num_sweeps=args.num_sweeps, decode_images=False)
        # Its own generator: a loader draws a seed when it starts, which must not move the global random state that
        # a resumed run restores (it draws the masks).
        return DataLoader(dataset, batch_size=args.per_device_train_batch_size, collate_fn=collate,
                          num_workers=args.dataloader_num_workers,
                          generator=torch.Generator().manual_seed(args.seed * 1_000_003 + epoch))

    def step(model: torch.nn.Module, batch: dict, epoch: int) -> GeoMIMForPretrainingOutput:
        return model(**model_inputs(model, batch, accelerator.device), teacher_features=teacher_targets(batch))

    def reconstruction_cosine(outputs: GeoMIMForPretrainingOutput) -> dict[str, torch.Tensor]:
        """How well the reconstruction points the teacher's way: the mean cosine over BEV cells, a loss-free view."""
        return {"reconstruction_cosine": bev_cosine_similarity(outputs.reconstruction.detach(),
                                                               outputs.normalized_target).mean()}

    result = training.train(accelerator, args, model, optimizer, scheduler, epoch_batches, batches_per_epoch,
                            step=step, batch_metrics=reconstruction_cosine, description="pretraining")
    completed_steps = result.completed_steps

    accelerator.wait_for_everyone()
    # The means over the last logging window (the last --logging_steps steps; see training.train).
    metrics = {**result.logs, "steps": completed_steps, "samples_per_epoch": samples_per_epoch}
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(output_dir / "pretraining")
        encoder_dir = output_dir / "encoder"
        unwrapped.save_encoder(encoder_dir)
        processor.save_pretrained(encoder_dir)
        write_card(args, encoder_dir, unwrapped.config, metrics, teacher_description, accelerator.num_processes)
        training.save_metrics(output_dir, metrics)
        training.push_output_dir(args, encoder_dir,
                                 commit_message=f"GeoMIM-pretrained encoder, {completed_steps} steps")
    accelerator.end_training()
    return metrics


def write_card(args: argparse.Namespace, encoder_dir: Path, config: GeoMIMPretrainingConfig, metrics: dict,
               teacher_description: str, num_processes: int) -> None:
    encoder = config.encoder_config
    fields = {
        "repo_id": args.hub_model_id or str(encoder_dir),
        "architecture": (f"embed {encoder.embed_dim}, depths {tuple(encoder.depths)}, "
                         f"heads {tuple(encoder.num_heads)}, windows {tuple(encoder.window_size)}"),
        "preset": args.config_name if args.model_name_or_path is None else args.model_name_or_path,
        "data": f"`{args.train_split}` of nuScenes `{args.version}` ({metrics['samples_per_epoch']} samples per "
                f"epoch{', CBGS' if args.cbgs else ''}), {args.num_sweeps} LiDAR sweeps",
        "image_size": f"{args.image_size[0]} x {args.image_size[1]}",
        "teacher": teacher_description,
        "schedule": (f"{metrics['steps']} steps, {num_processes} process(es) x {args.per_device_train_batch_size} "
                     f"samples x {args.gradient_accumulation_steps} accumulation; AdamW lr {args.learning_rate}, "
                     f"weight decay {args.weight_decay}, {args.num_warmup_steps} warm-up steps, "
                     f"{args.lr_scheduler_type}, clip {args.max_grad_norm}"),
        "loss": f"{metrics['loss']:.4f}",
        "reconstruction_loss": f"{metrics['reconstruction_loss']:.4f}",
        "depth_loss": f"{metrics['depth_loss']:.4f}",
        "reconstruction_cosine": f"{metrics['reconstruction_cosine']:.3f}",
        "command": training.command_line(),
    }
    training.write_model_card(encoder_dir, CARD_TEMPLATE, fields)


if __name__ == "__main__":
    main()
