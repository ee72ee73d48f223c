"""The training loop of the Mask3D example scripts (pretraining and segmentation finetuning) on streamed ScanNet.

It follows transformers' `no_trainer` examples and uses `geomim_hf.training` for everything shared; what is specific
is the streamed data: the loader is not prepared by accelerate (each process streams its own whole scans, see
`scannet_rgbd_loader`), so an epoch has a fixed number of batches per process, whole accumulation groups only.
TODO(training.py): the loop itself is generic and could move there once another script needs it.
"""

from __future__ import annotations

import argparse
import time

from accelerate import Accelerator
from tqdm.auto import tqdm

from ... import training
from ...data.scannet_rgbd import fixed_length


def batches_per_epoch(frames: int, batch_size: int, world_size: int, accumulation: int) -> int:
    """Full batches per process and epoch (training loaders drop the last partial one), rounded down to whole
    accumulation groups, at least one group."""
    batches = frames // (world_size * batch_size)
    return max(accumulation, batches - batches % accumulation)


def train_streaming(
    accelerator: Accelerator,
    args: argparse.Namespace,
    model,
    optimizer,
    scheduler,
    loader,
    num_batches: int,
    max_train_steps: int,
    num_train_epochs: int,
    state: training.ResumeState,
) -> tuple[int, float]:
    """Trains the prepared `model` on `num_batches` batches of `loader` per epoch (moved to the device, passed as
    keyword arguments; the output's `loss` is minimised) until `max_train_steps`. Logs, checkpoints and resumes as
    `geomim_hf.training` does. Returns the steps completed and the training time in seconds."""
    progress = tqdm(total=max_train_steps, initial=state.completed_steps, disable=not accelerator.is_local_main_process)
    completed_steps, running_loss, start = state.completed_steps, 0.0, time.perf_counter()
    for epoch in range(state.starting_epoch, num_train_epochs):
        model.train()
        loader.dataset.set_epoch(epoch)
        skip = state.batches_to_skip if epoch == state.starting_epoch else 0
        for batch in training.iterate_batches(fixed_length(loader, num_batches), skip):
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
