"""Training pieces that the example scripts share: arguments, accelerator set-up, optimiser parameter groups with
layer-wise learning-rate decay, an exponential moving average of the weights, checkpoint and resume, metrics, model
cards and the Hub upload.

The scripts follow transformers' ``no_trainer`` examples (``examples/pytorch/*/run_*_no_trainer.py``): the same argument
names, an :class:`accelerate.Accelerator`, ``save_state`` into ``OUTPUT_DIR/step_N`` (or ``epoch_N``) and
``load_state`` from it, ``metrics.json`` at the end. What differs from those examples is said where it is done.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch import nn

from .hub import fill_template, upload_folder_to_hub, write_model_card

logger = get_logger(__name__)

CHECKPOINT_NAME = re.compile(r"^(step|epoch)_(\d+)$")
METRICS_FILE = "metrics.json"


def add_training_arguments(parser: argparse.ArgumentParser, defaults: Mapping[str, object] | None = None) -> None:
    """Adds the ``no_trainer`` training arguments to ``parser``; ``defaults`` overrides their default values."""
    group = parser.add_argument_group("training")
    group.add_argument("--output_dir", type=Path, required=True, help="where checkpoints, metrics and the model go")
    group.add_argument("--seed", type=int, default=0, help="seed of model initialisation, data order and augmentation")
    group.add_argument("--num_train_epochs", type=int, default=1, help="epochs over the training split")
    group.add_argument("--max_train_steps", type=int, default=None,
                       help="total optimiser steps; overrides --num_train_epochs when given")
    group.add_argument("--per_device_train_batch_size", type=int, default=1)
    group.add_argument("--per_device_eval_batch_size", type=int, default=1)
    group.add_argument("--learning_rate", type=float, default=2e-4, help="peak learning rate (after warm-up)")
    group.add_argument("--weight_decay", type=float, default=0.01)
    group.add_argument("--lr_scheduler_type", default="cosine",
                       choices=("linear", "cosine", "constant", "constant_with_warmup"))
    group.add_argument("--num_warmup_steps", type=int, default=0)
    group.add_argument("--gradient_accumulation_steps", type=int, default=1)
    group.add_argument("--max_grad_norm", type=float, default=None, help="gradient clipping (none by default)")
    group.add_argument("--checkpointing_steps", default=None,
                       help="save the training state every N optimiser steps, or 'epoch' at the end of every epoch")
    group.add_argument("--resume_from_checkpoint", default=None,
                       help="a step_N / epoch_N folder saved by this script, or 'latest' for the newest in --output_dir")
    group.add_argument("--dataloader_num_workers", type=int, default=0)
    group.add_argument("--logging_steps", type=int, default=10, help="log the loss every N optimiser steps")
    group.add_argument("--with_tracking", action="store_true", help="log metrics with the trackers of --report_to")
    group.add_argument("--report_to", default="tensorboard",
                       help="'tensorboard', 'wandb', 'all', ...; as accelerate's log_with (with --with_tracking)")
    group.add_argument("--push_to_hub", action="store_true", help="upload the final model folder to --hub_model_id")
    group.add_argument("--hub_model_id", default=None, help="Hub repository, e.g. 'user/geomim-bevdet-tiny'")
    group.add_argument("--hub_token", default=None, help="Hub token; by default the one `hf auth login` stored")
    group.add_argument("--overwrite_output_dir", action="store_true",
                       help="train into an --output_dir that already holds a finished run")
    if defaults:
        unknown = set(defaults) - {action.dest for action in parser._actions}
        if unknown:
            raise ValueError(f"defaults for unknown arguments: {sorted(unknown)}")
        parser.set_defaults(**defaults)


def check_training_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Errors for argument combinations that would fail late (after the data and the model have loaded)."""
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    if args.checkpointing_steps is not None and args.checkpointing_steps != "epoch":
        if not str(args.checkpointing_steps).isdigit() or int(args.checkpointing_steps) < 1:
            parser.error(f"--checkpointing_steps must be a positive integer or 'epoch', got {args.checkpointing_steps}")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        parser.error(f"--max_train_steps must be at least 1, got {args.max_train_steps}")


def make_accelerator(args: argparse.Namespace, project_name: str) -> Accelerator:
    """The run's :class:`Accelerator` (mixed precision and processes come from ``accelerate launch``), with logging
    set up, the seed set and, with ``--with_tracking``, the trackers started with the run's arguments."""
    tracking = {"log_with": args.report_to, "project_dir": str(args.output_dir)} if args.with_tracking else {}
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps, **tracking)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if accelerator.is_main_process else logging.ERROR)
    logger.info(accelerator.state, main_process_only=False)
    set_seed(args.seed)
    if args.with_tracking:
        # Trackers take scalars and strings only.
        config = {key: value if isinstance(value, (int, float, str, bool)) else str(value)
                  for key, value in vars(args).items()}
        accelerator.init_trackers(project_name, config=config)
    return accelerator


def prepare_output_dir(args: argparse.Namespace) -> Path:
    """Creates ``--output_dir``. A folder that holds a finished run (its ``metrics.json``) is refused unless
    ``--overwrite_output_dir`` or ``--resume_from_checkpoint`` is given, so a second run never silently replaces the
    first one's model and metrics."""
    output_dir = Path(args.output_dir)
    finished = (output_dir / METRICS_FILE).is_file()
    if finished and not (args.overwrite_output_dir or args.resume_from_checkpoint):
        raise FileExistsError(f"{output_dir} holds a finished run ({METRICS_FILE}); pass --overwrite_output_dir to "
                              f"replace it or choose another --output_dir")
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def training_steps(args: argparse.Namespace, batches_per_epoch: int) -> tuple[int, int, int]:
    """``(num_update_steps_per_epoch, max_train_steps, num_train_epochs)``: optimiser steps per epoch of
    ``batches_per_epoch`` batches (per process), and the run's total in steps and in epochs, from whichever of
    ``--max_train_steps`` and ``--num_train_epochs`` decides."""
    if batches_per_epoch < 1:
        raise ValueError("the training split gives no batch on this process: use a larger split or fewer processes")
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        return steps_per_epoch, steps_per_epoch * args.num_train_epochs, args.num_train_epochs
    return steps_per_epoch, args.max_train_steps, math.ceil(args.max_train_steps / steps_per_epoch)


def default_no_weight_decay(name: str, parameter: torch.Tensor) -> bool:
    """Biases and 1-D parameters (norm scales and shifts) get no weight decay, as in timm, mmcv and BEVDet."""
    return parameter.ndim <= 1 or name.endswith(".bias")


def parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    *,
    layer_id: Callable[[str], int] | None = None,
    num_layers: int | None = None,
    layer_decay: float = 1.0,
    no_weight_decay: Callable[[str, torch.Tensor], bool] = default_no_weight_decay,
) -> list[dict]:
    """Optimiser parameter groups with per-parameter weight decay and, optionally, layer-wise learning-rate decay.

    With ``layer_id`` (parameter name -> id in ``[0, num_layers)``), a parameter of layer ``i`` trains at
    ``learning_rate * layer_decay ** (num_layers - 1 - i)``: the last id at the full rate, earlier layers slower
    (BEiT / mmcv ``LayerDecayOptimizerConstructor``). Each group carries its ``lr`` and the ``lr_scale`` it came from;
    schedulers scale every group's initial ``lr`` alike. Frozen parameters are left out.
    """
    if layer_id is not None and (num_layers is None or num_layers < 1):
        raise ValueError("layer-wise decay needs num_layers, the number of distinct layer ids")
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        layer = 0 if layer_id is None else layer_id(name)
        if layer_id is not None and not 0 <= layer < num_layers:
            raise ValueError(f"layer_id({name!r}) = {layer} is outside [0, {num_layers})")
        decays = not no_weight_decay(name, parameter)
        if (layer, decays) not in groups:
            scale = 1.0 if layer_id is None else layer_decay ** (num_layers - 1 - layer)
            groups[layer, decays] = {"params": [], "names": [], "weight_decay": weight_decay if decays else 0.0,
                                     "lr": learning_rate * scale, "lr_scale": scale, "layer_id": layer}
        groups[layer, decays]["params"].append(parameter)
        groups[layer, decays]["names"].append(name)
    return [groups[key] for key in sorted(groups)]


def megvii_ema_decay(updates: int, base: float = 0.999, ramp: float = 2000.0) -> float:
    """The EMA decay of BEVDepth's ``ModelEMA`` (BEVDet's ``MEGVIIEMAHook``): ``base * (1 - exp(-updates / ramp))``,
    small for the first updates so that the average forgets its random start quickly."""
    return base * (1.0 - math.exp(-updates / ramp))


class ExponentialMovingAverage:
    """An exponential moving average of every floating-point entry of a model's ``state_dict`` (parameters and
    BatchNorm statistics alike, as BEVDepth's ``ModelEMA``); integer buffers are copied.

    ``decay`` is a constant or a function of the number of updates so far (:func:`megvii_ema_decay`); ``updates``
    starts the counter elsewhere than 0, as BEVDet's ``init_updates``. Register it with
    ``accelerator.register_for_checkpointing`` so that ``save_state`` / ``load_state`` carry it.
    """

    def __init__(self, model: nn.Module, decay: float | Callable[[int], float] = megvii_ema_decay, updates: int = 0):
        self.decay = decay
        self.updates = updates
        self.shadow = {name: value.detach().clone() for name, value in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.decay(self.updates) if callable(self.decay) else self.decay
        for name, value in model.state_dict().items():
            average = self.shadow[name]
            if average.is_floating_point():
                average.lerp_(value.detach().to(average.dtype), 1.0 - decay)
            else:
                average.copy_(value)

    def copy_to(self, model: nn.Module) -> None:
        """Loads the averaged weights into ``model`` (for evaluation and saving)."""
        model.load_state_dict(self.shadow, strict=True)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: Mapping) -> None:
        self.updates = int(state["updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)


@dataclass
class ResumeState:
    """Where a resumed run picks up: optimiser steps done, the epoch to continue, and the batches of that epoch that
    the checkpoint had already consumed."""

    completed_steps: int = 0
    starting_epoch: int = 0
    batches_to_skip: int = 0


def checkpoint_steps(path: Path, steps_per_epoch: int) -> int:
    """Optimiser steps done when the ``step_N`` / ``epoch_N`` folder ``path`` was saved."""
    kind, number = CHECKPOINT_NAME.match(path.name).groups()
    return int(number) if kind == "step" else (int(number) + 1) * steps_per_epoch


def find_checkpoint(output_dir: Path, resume_from_checkpoint: str, steps_per_epoch: int) -> Path:
    """The checkpoint folder named by ``--resume_from_checkpoint``: a path, or ``latest`` (the one furthest into
    training among the ``step_N`` / ``epoch_N`` folders of ``output_dir``)."""
    if resume_from_checkpoint != "latest":
        path = Path(resume_from_checkpoint)
        if not path.is_dir() or not CHECKPOINT_NAME.match(path.name):
            raise FileNotFoundError(f"--resume_from_checkpoint {path} is not a step_N or epoch_N folder of this script")
        return path
    candidates = [path for path in Path(output_dir).glob("*_*") if path.is_dir() and CHECKPOINT_NAME.match(path.name)]
    if not candidates:
        raise FileNotFoundError(f"--resume_from_checkpoint latest: no step_N or epoch_N folder in {output_dir}")
    return max(candidates, key=lambda path: checkpoint_steps(path, steps_per_epoch))


def resume(accelerator: Accelerator, args: argparse.Namespace, batches_per_epoch: int) -> ResumeState:
    """Loads the state named by ``--resume_from_checkpoint`` (model, optimiser, scheduler, scaler, RNG states and
    everything registered for checkpointing) and says where training continues; a fresh start without it."""
    if not args.resume_from_checkpoint:
        return ResumeState()
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    path = find_checkpoint(args.output_dir, args.resume_from_checkpoint, steps_per_epoch)
    accelerator.print(f"Resuming from {path}")
    accelerator.load_state(str(path))
    completed_steps = checkpoint_steps(path, steps_per_epoch)
    # Accumulation restarts with every epoch (accelerate syncs gradients at the end of the dataloader), so an epoch's
    # last step may have taken fewer batches: count whole epochs in steps, then batches within the epoch.
    epoch, steps_into_epoch = divmod(completed_steps, steps_per_epoch)
    return ResumeState(completed_steps, epoch, steps_into_epoch * args.gradient_accumulation_steps)


def maybe_save_checkpoint(
    accelerator: Accelerator, args: argparse.Namespace, completed_steps: int, epoch: int, end_of_epoch: bool
) -> Path | None:
    """``save_state`` into ``OUTPUT_DIR/step_N`` every ``--checkpointing_steps`` steps, or into ``epoch_N`` at the end
    of each epoch with ``--checkpointing_steps epoch``. Returns the folder written, if any."""
    every = args.checkpointing_steps
    if every is None:
        return None
    if every == "epoch":
        if not end_of_epoch:
            return None
        path = Path(args.output_dir) / f"epoch_{epoch}"
    elif end_of_epoch or completed_steps % int(every):
        return None
    else:
        path = Path(args.output_dir) / f"step_{completed_steps}"
    accelerator.save_state(str(path))
    return path


def save_metrics(output_dir: Path, metrics: Mapping[str, object], accelerator: Accelerator | None = None) -> Path:
    """Writes ``OUTPUT_DIR/metrics.json`` (on the main process only when an accelerator is given)."""
    path = Path(output_dir) / METRICS_FILE
    if accelerator is None or accelerator.is_main_process:
        path.write_text(json.dumps(dict(metrics), indent=2, sort_keys=True) + "\n")
    return path


def command_line() -> str:
    """The command that started this process, as a user would type it again."""
    return " ".join(shlex.quote(part) for part in [Path(sys.executable).name, *sys.argv])


# Run by-products that stay local: resumable states, tracker logs (accelerate writes them under the project's name),
# intermediate evaluations and the devkit's own summaries. fnmatch's `*` also matches `/`.
UPLOAD_IGNORE_PATTERNS = ["step_*", "epoch_*", "eval_epoch_*", "devkit/*", "*events.out.tfevents*", "*hparams.yml",
                          "*.tmp"]


def push_output_dir(args: argparse.Namespace, output_dir: Path, commit_message: str) -> str | None:
    """Uploads the final model folder to ``--hub_model_id`` with ``--push_to_hub``: weights, configs, processor and
    card, never the intermediate ``step_N`` / ``epoch_N`` states or tracker logs. Returns the commit URL."""
    if not args.push_to_hub:
        return None
    return upload_folder_to_hub(args.hub_model_id, output_dir, commit_message, token=args.hub_token,
                                ignore_patterns=UPLOAD_IGNORE_PATTERNS)


def iterate_batches(loader: Iterable, skip: int) -> Iterable:
    """``loader`` without its first ``skip`` batches (a resumed epoch). Works for streaming datasets, whose loaders
    have no ``skip_first_batches`` shortcut: the skipped batches are read and discarded."""
    for index, batch in enumerate(loader):
        if index >= skip:
            yield batch


__all__ = [
    "ExponentialMovingAverage",
    "ResumeState",
    "add_training_arguments",
    "check_training_arguments",
    "command_line",
    "default_no_weight_decay",
    "fill_template",
    "checkpoint_steps",
    "find_checkpoint",
    "iterate_batches",
    "make_accelerator",
    "maybe_save_checkpoint",
    "megvii_ema_decay",
    "parameter_groups",
    "prepare_output_dir",
    "push_output_dir",
    "resume",
    "save_metrics",
    "training_steps",
    "write_model_card",
]
