"""The training loop of the Mask3D example scripts (pretraining and segmentation finetuning) on streamed ScanNet.

It follows transformers' `no_trainer` examples and uses `geomim_hf.training` for everything shared; what is specific
is the streamed data: the loader is not prepared by accelerate (each process streams its own whole scans, see
`scannet_rgbd_loader`), so an epoch has a fixed number of batches per process, whole accumulation groups only.
TODO(training.py): the loop itself is generic and could move there once another script needs it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from ... import training
from ...data.scannet_rgbd import ScanNetRGBDCollator, fixed_length, scannet_frame_count, scannet_rgbd_loader


def batches_per_epoch(frames: int, batch_size: int, world_size: int, accumulation: int) -> int:
    """Full batches per process and epoch (training loaders drop the last partial one), rounded down to whole
    accumulation groups, at least one group."""
    batches = frames // (world_size * batch_size)
    return max(accumulation, batches - batches % accumulation)


@dataclass
class TrainingPlan:
    """This process's streamed training loader and the run's length."""

    loader: torch.utils.data.DataLoader
    frames: int
    batches_per_epoch: int
    max_train_steps: int
    num_train_epochs: int


def plan_training(args: argparse.Namespace, collator: ScanNetRGBDCollator, accelerator: Accelerator) -> TrainingPlan:
    """The shuffled training loader of `--train_split` for this process, and the run's length in steps and epochs
    (`--max_train_steps` or `--num_train_epochs`, see `geomim_hf.training.training_steps`)."""
    world_size = accelerator.num_processes
    loader = scannet_rgbd_loader(
        args.root, args.train_split, collator, args.per_device_train_batch_size, layout=args.layout,
        rank=accelerator.process_index, world_size=world_size, shuffle_seed=args.seed,
        shuffle_buffer=args.shuffle_buffer_size, max_samples=args.max_train_samples,
        num_workers=args.dataloader_num_workers, drop_last=True)
    frames = scannet_frame_count(args.root, args.train_split)
    frames = min(frames, args.max_train_samples or frames)
    num_batches = batches_per_epoch(frames, args.per_device_train_batch_size, world_size,
                                    args.gradient_accumulation_steps)
    _, max_train_steps, num_train_epochs = training.training_steps(args, num_batches)
    return TrainingPlan(loader, frames, num_batches, max_train_steps, num_train_epochs)


def make_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer, plan: TrainingPlan, world_size: int):
    """`--lr_scheduler_type` over the run. Counted in process steps: once prepared, accelerate steps the scheduler once
    per process for every optimiser step."""
    return get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.num_warmup_steps * world_size,
                         num_training_steps=plan.max_train_steps * world_size)


def train_streaming(
    accelerator: Accelerator, args: argparse.Namespace, model, optimizer, scheduler, plan: TrainingPlan
) -> tuple[int, float]:
    """Trains the prepared `model` on `plan.batches_per_epoch` batches of `plan.loader` per epoch (moved to the device,
    passed as keyword arguments; the output's `loss` is minimised) until `plan.max_train_steps`, resuming from
    `--resume_from_checkpoint` first. Logs and checkpoints as `geomim_hf.training` does. Returns the steps completed
    and the training time in seconds."""
    state = training.resume(accelerator, args, plan.batches_per_epoch)
    max_train_steps = plan.max_train_steps
    progress = tqdm(total=max_train_steps, initial=state.completed_steps, disable=not accelerator.is_local_main_process)
    completed_steps, running_loss, start = state.completed_steps, 0.0, time.perf_counter()
    for epoch in range(state.starting_epoch, plan.num_train_epochs):
        model.train()
        plan.loader.dataset.set_epoch(epoch)
        skip = state.batches_to_skip if epoch == state.starting_epoch else 0
        for batch in training.iterate_batches(fixed_length(plan.loader, plan.batches_per_epoch), skip):
            batch = {name: tensor.to(accelerator.device) for name, tensor in batch.items()}
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            running_loss += loss.detach().float().item() / args.gradient_accumulation_steps
            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            progress.update(1)
            if completed_steps % args.logging_steps == 0:
                mean_loss = running_loss / args.logging_steps
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                if args.with_tracking:
                    accelerator.log({"train_loss": mean_loss, "lr": scheduler.get_last_lr()[0]}, step=completed_steps)
                running_loss = 0.0
            training.maybe_save_checkpoint(accelerator, args, completed_steps, epoch, end_of_epoch=False)
            if completed_steps >= max_train_steps:
                break
        training.maybe_save_checkpoint(accelerator, args, completed_steps, epoch, end_of_epoch=True)
        if completed_steps >= max_train_steps:
            break
    progress.close()
    return completed_steps, time.perf_counter() - start
