"""Training pieces that the example trainers share: arguments and their per-preset defaults, accelerator set-up,
optimiser parameter groups with layer-wise learning-rate decay, an exponential moving average of the weights, the
training loop itself ([`train`]), checkpoint and resume, metrics, model cards and the Hub upload.

The trainers follow transformers' ``no_trainer`` examples (``examples/pytorch/*/run_*_no_trainer.py``): the same
argument names, an :class:`accelerate.Accelerator`, a tqdm bar on the main process, ``save_state`` into
``OUTPUT_DIR/step_N`` (or ``epoch_N``) and ``load_state`` from it, ``metrics.json`` at the end. What differs from
those examples is said where it is done; the main difference is the data: every trainer streams its own part of a
split on each process (``geomim_hf.data.training_scenes``, ``geomim_hf.data.scannet_rgbd``), so the loaders are not
prepared by accelerate and an epoch is a fixed number of batches per process, the same on every process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from .data.scannet_rgbd import ScanNetRGBDCollator, ScanNetTrainingFrames
from .hub import fill_template, upload_folder_to_hub, write_model_card
from .models.inputs import model_inputs

logger = get_logger(__name__)

CHECKPOINT_NAME = re.compile(r"^(step|epoch)_(\d+)$")
METRICS_FILE = "metrics.json"


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``no_trainer`` training arguments to ``parser``. A trainer changes their defaults per preset only
    (its ``TRAINING_PRESETS``, applied by [`parse_training_args`]), so that one table says what each preset trains
    with."""
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


class _FromPreset:
    """The default of a preset-dependent argument while parsing: tells "not given" from any value a user can give."""

    def __repr__(self) -> str:
        return "<the preset's value>"


_FROM_PRESET = _FromPreset()


def parse_training_args(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    presets: Mapping[str, Mapping[str, object]],
    *,
    fallback: str,
    preset_argument: str = "config_name",
) -> argparse.Namespace:
    """Parses ``argv`` with a trainer's training presets, then checks the training arguments.

    ``presets`` is the trainer's ``TRAINING_PRESETS``: config preset name -> defaults of any of its arguments. An
    argument given on the command line always wins (in either spelling); one that is not takes the value of the
    preset named by ``--<preset_argument>`` (``fallback``'s for a config that is no preset, e.g. a file or a model
    folder), or else its own default. ``--help`` lists each preset's value beside the argument.
    """
    if fallback not in presets:
        raise ValueError(f"the fallback preset {fallback!r} is not one of the presets {sorted(presets)}")
    # The deprecated spellings of `geomim_hf.cli.add_argument` share the destination but default to SUPPRESS.
    actions = {action.dest: action for action in parser._actions if action.default is not argparse.SUPPRESS}
    names = sorted({name for preset in presets.values() for name in preset})
    unknown = [name for name in names if name not in actions]
    if unknown:
        raise ValueError(f"TRAINING_PRESETS set arguments that the parser does not have: {unknown}")
    defaults = {name: actions[name].default for name in names}
    for name in names:
        per_preset = ", ".join(f"{preset}: {values[name]}" for preset, values in presets.items() if name in values)
        help_text = actions[name].help
        if help_text is not argparse.SUPPRESS:
            suffix = f"default per --{preset_argument}: {per_preset}".replace("%", "%%")
            actions[name].help = f"{help_text} ({suffix})" if help_text else suffix
        actions[name].default = _FROM_PRESET
    try:
        args = parser.parse_args(argv)
    finally:
        for name, default in defaults.items():
            actions[name].default = default
    preset = presets.get(getattr(args, preset_argument), presets[fallback])
    for name in names:
        if getattr(args, name) is _FROM_PRESET:
            setattr(args, name, preset.get(name, defaults[name]))
    check_training_arguments(parser, args)
    return args


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


class TrainingLength(NamedTuple):
    """A run's length: optimiser steps per epoch, and the run's total in steps and in epochs."""

    steps_per_epoch: int
    max_train_steps: int
    num_train_epochs: int


def training_steps(args: argparse.Namespace, batches_per_epoch: int) -> TrainingLength:
    """The run's length for epochs of ``batches_per_epoch`` batches per process, from whichever of
    ``--max_train_steps`` and ``--num_train_epochs`` decides.

    An epoch must be whole accumulation groups (``TrainingScenes.batches_per_epoch`` and
    ``ScanNetTrainingFrames.batches_per_epoch`` round to them): the loaders are not prepared by accelerate, which
    therefore cannot close a group at the end of an epoch, and an optimiser step straddling two epochs would make
    epochs and checkpoints disagree about which batches a step took.
    """
    if batches_per_epoch < 1:
        raise ValueError("the training split gives no batch on this process: use a larger split or fewer processes")
    steps_per_epoch, leftover = divmod(batches_per_epoch, args.gradient_accumulation_steps)
    if leftover or not steps_per_epoch:
        raise ValueError(f"an epoch of {batches_per_epoch} batches is not a whole number of accumulation groups of "
                         f"--gradient_accumulation_steps {args.gradient_accumulation_steps}")
    if args.max_train_steps is None:
        return TrainingLength(steps_per_epoch, steps_per_epoch * args.num_train_epochs, args.num_train_epochs)
    return TrainingLength(steps_per_epoch, args.max_train_steps, math.ceil(args.max_train_steps / steps_per_epoch))


def make_scheduler(
    args: argparse.Namespace,
    optimizer: torch.optim.Optimizer,
    max_train_steps: int,
    num_processes: int,
    name: str | None = None,
    scheduler_specific_kwargs: Mapping[str, object] | None = None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """``--lr_scheduler_type`` (or ``name``) with ``--num_warmup_steps`` over ``max_train_steps``. Counted in process
    steps: once prepared, accelerate steps the scheduler once per process for every optimiser step (as in the
    ``no_trainer`` examples), hence the factors."""
    return transformers.get_scheduler(name or args.lr_scheduler_type, optimizer,
                                      num_warmup_steps=args.num_warmup_steps * num_processes,
                                      num_training_steps=max_train_steps * num_processes,
                                      scheduler_specific_kwargs=dict(scheduler_specific_kwargs or {}))


def scannet_training_frames(args: argparse.Namespace, collator: ScanNetRGBDCollator,
                            accelerator: Accelerator) -> ScanNetTrainingFrames:
    """This process's streamed ScanNet training frames, from the ScanNet trainers' arguments (``--dataroot``,
    ``--train_split``, ``--layout``, ``--max_train_samples``, ``--shuffle_buffer_size`` and the training ones)."""
    return ScanNetTrainingFrames(args.dataroot, args.train_split, collator, accelerator.process_index,
                                 accelerator.num_processes, batch_size=args.per_device_train_batch_size,
                                 gradient_accumulation_steps=args.gradient_accumulation_steps, layout=args.layout,
                                 seed=args.seed, shuffle_buffer_size=args.shuffle_buffer_size,
                                 max_samples=args.max_train_samples, num_workers=args.dataloader_num_workers)


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
        """Loads the averaged weights into ``model`` (for saving the final model)."""
        model.load_state_dict(self.shadow, strict=True)

    @contextlib.contextmanager
    def average_weights(self, model: nn.Module) -> Iterator[nn.Module]:
        """Runs the block with the averaged weights in ``model`` (an evaluation during training), then puts the
        training weights back."""
        training_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            model.load_state_dict(training_state, strict=True)

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
    """Loads the state named by ``--resume_from_checkpoint`` (model, optimiser, scheduler, scaler, RNG states, the
    accelerator's accumulation counter and everything registered for checkpointing) and says where training
    continues; a fresh start without it."""
    if not args.resume_from_checkpoint:
        return ResumeState()
    steps_per_epoch = training_steps(args, batches_per_epoch).steps_per_epoch
    path = find_checkpoint(args.output_dir, args.resume_from_checkpoint, steps_per_epoch)
    accelerator.print(f"Resuming from {path}")
    accelerator.load_state(str(path))
    completed_steps = checkpoint_steps(path, steps_per_epoch)
    # Epochs are whole accumulation groups (see training_steps): every step of an epoch took as many batches.
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


def iterate_batches(loader: Iterable, skip: int) -> Iterator:
    """``loader`` without its first ``skip`` batches (a resumed epoch). Works for streaming datasets, whose loaders
    have no ``skip_first_batches`` shortcut: the skipped batches are read and discarded."""
    for index, batch in enumerate(loader):
        if index >= skip:
            yield batch


class TrainingStep(Protocol):
    """One training batch through the prepared model; returns the model output, whose ``loss`` is minimised."""

    def __call__(self, model: nn.Module, batch: Mapping[str, Any], epoch: int) -> Mapping[str, Any]: ...


class EpochEndHook(Protocol):
    """Runs after every whole epoch, after its checkpoint; ``last_epoch`` says whether training stops there."""

    def __call__(self, epoch: int, completed_steps: int, last_epoch: bool) -> None: ...


@dataclass
class TrainingResult:
    """What [`train`] did: the optimiser steps done (resumed ones included), the values of the last logging window
    (see [`train`] for their meaning) and the seconds the loop ran in this process."""

    completed_steps: int
    logs: dict[str, float] = field(default_factory=dict)
    train_runtime: float = 0.0


def named_losses(outputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The losses a model output names, as its fields call them: ``loss`` and every scalar ``*_loss`` that is set
    (the detector's ``heatmap_loss``, GeoMIM pretraining's ``reconstruction_loss``, ...)."""
    return {name: value for name, value in outputs.items()
            if (name == "loss" or name.endswith("_loss")) and torch.is_tensor(value) and value.ndim == 0}


class _LoggingWindow:
    """The per-batch values since the last log, summed where they were computed: logging costs one all-reduce per
    log, not a host synchronisation per batch."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: Mapping[str, torch.Tensor]) -> None:
        for name, value in values.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + 1

    def means(self, accelerator: Accelerator) -> dict[str, float]:
        """The mean of every value over the window's batches on all processes; starts a new window."""
        names = sorted(self.sums)
        if not names:
            return {}
        sums = torch.stack([self.sums[name] for name in names])
        counts = torch.tensor([self.counts[name] for name in names], dtype=sums.dtype, device=sums.device)
        totals = accelerator.reduce(torch.cat([sums, counts]), reduction="sum").tolist()
        self.sums, self.counts = {}, {}
        return {name: totals[index] / totals[len(names) + index] for index, name in enumerate(names)}


def _forward_batch(device: torch.device) -> TrainingStep:
    """The default training step: the batch's model inputs, targets included ([`model_inputs`]), on ``device``."""

    def step(model: nn.Module, batch: Mapping[str, Any], epoch: int) -> Mapping[str, Any]:
        return model(**model_inputs(model, batch, device))

    return step


def train(
    accelerator: Accelerator,
    args: argparse.Namespace,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch_batches: Callable[[int], Iterable[Mapping[str, Any]]],
    batches_per_epoch: int,
    *,
    step: TrainingStep | None = None,
    batch_metrics: Callable[[Mapping[str, Any]], Mapping[str, torch.Tensor]] | None = None,
    ema: ExponentialMovingAverage | None = None,
    on_epoch_end: EpochEndHook | None = None,
    description: str = "training",
) -> TrainingResult:
    """The training loop of every trainer, as in transformers' ``no_trainer`` examples.

    It resumes from ``--resume_from_checkpoint`` ([`resume`]: the exact epoch, and the batches of it already taken,
    which are read again and discarded), then runs epochs of ``batches_per_epoch`` batches of ``epoch_batches(epoch)``
    until ``--max_train_steps`` (or ``--num_train_epochs``). Every batch goes through ``step`` and backward under
    ``accelerator.accumulate(model)``, the one accumulation rule: an optimiser step every
    ``--gradient_accumulation_steps`` batches, gradients synchronised between processes only then, clipped to
    ``--max_grad_norm`` first. Epochs are whole accumulation groups ([`training_steps`] refuses others), so no step
    straddles two epochs and the accumulation counter restarts with every epoch by itself. After every optimiser
    step: the ``ema`` update, the progress bar (main process of each machine), the log every ``--logging_steps`` and
    the ``step_N`` checkpoint ([`maybe_save_checkpoint`]); after every whole epoch, the ``epoch_N`` checkpoint and
    ``on_epoch_end``. All processes take the same steps (each streams its own part of the split, but
    ``batches_per_epoch`` is common), which is what DDP, and the all-reduce of the logs, need: a process whose
    batches run out before the end of an epoch is an error, not a hang.

    The logged values: for every named loss of the model output ([`named_losses`]) and every value of
    ``batch_metrics(output)``, the mean over the batches of the logging window (those since the previous log) and
    over all processes of the per-batch value as the model returns it, i.e. before accelerate divides the loss by the
    accumulation steps for the backward pass; processes weigh alike, as they take batches of the same size. Their
    names must be the same on every process (they are: which losses a model returns depends on its config and the
    batch contract). Plus ``learning_rate``, that of the first parameter group (the lowest layer's under layer-wise
    decay). They are logged at ``--logging_steps`` and at the last step, to the trackers with ``--with_tracking``
    (``train/<name>``), and the last window's are returned.

    Args:
        accelerator, args: the run's accelerator (``make_accelerator``) and training arguments.
        model, optimizer, scheduler: prepared by ``accelerator``; the loaders are not (see the module docstring).
        epoch_batches: epoch -> this process's batches of that epoch, at least ``batches_per_epoch`` of them (no
            more are read); called once per epoch, after the resume, so that its random state is the restored one.
        batches_per_epoch: the batches every process takes per epoch, whole accumulation groups.
        step: ``(model, batch, epoch) -> model output``; by default the batch's model inputs through the model.
        batch_metrics: further per-batch scalars to log from the model output, averaged like the losses.
        ema: updated after every optimiser step and registered for checkpointing (before the resume).
        on_epoch_end: the trainer's hook after every whole epoch (e.g. a periodic evaluation).
        description: the progress bar's label.
    """
    length = training_steps(args, batches_per_epoch)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    state = resume(accelerator, args, batches_per_epoch)
    step = step or _forward_batch(accelerator.device)
    progress = tqdm(total=length.max_train_steps, initial=state.completed_steps, desc=description,
                    disable=not accelerator.is_local_main_process)
    completed_steps, window, logs = state.completed_steps, _LoggingWindow(), {}
    start = time.perf_counter()
    for epoch in range(state.starting_epoch, length.num_train_epochs):
        if completed_steps >= length.max_train_steps:
            break  # resumed from the last step
        model.train()
        taken = state.batches_to_skip if epoch == state.starting_epoch else 0
        for batch in iterate_batches(epoch_batches(epoch), taken):
            with accelerator.accumulate(model):
                outputs = step(model, batch, epoch)
                if outputs.get("loss") is None:
                    raise ValueError("the training step's model output has no loss: pass the training targets")
                accelerator.backward(outputs["loss"])
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            taken += 1
            window.add(named_losses(outputs) | dict(batch_metrics(outputs) if batch_metrics else {}))
            if accelerator.sync_gradients:
                completed_steps += 1
                progress.update(1)
                if ema is not None:
                    ema.update(accelerator.unwrap_model(model))
                if completed_steps % args.logging_steps == 0 or completed_steps == length.max_train_steps:
                    logs = window.means(accelerator) | {"learning_rate": scheduler.get_last_lr()[0]}
                    progress.set_postfix(loss=f"{logs['loss']:.4g}")
                    logger.info(f"step {completed_steps}: " + ", ".join(f"{k} {v:.4g}" for k, v in logs.items()))
                    if args.with_tracking:
                        accelerator.log({f"train/{name}": value for name, value in logs.items()}, step=completed_steps)
                maybe_save_checkpoint(accelerator, args, completed_steps, epoch, end_of_epoch=False)
            if taken == batches_per_epoch or completed_steps >= length.max_train_steps:
                break
        if taken < batches_per_epoch:
            if completed_steps >= length.max_train_steps:
                break  # the run ends inside this epoch: no epoch checkpoint
            raise RuntimeError(f"epoch {epoch} gave {taken} batches on process {accelerator.process_index}, fewer "
                               f"than the {batches_per_epoch} that every process takes")
        maybe_save_checkpoint(accelerator, args, completed_steps, epoch, end_of_epoch=True)
        last_epoch = epoch == length.num_train_epochs - 1 or completed_steps >= length.max_train_steps
        if on_epoch_end is not None:
            on_epoch_end(epoch, completed_steps, last_epoch)
        if last_epoch:
            break
    progress.close()
    return TrainingResult(completed_steps, logs, time.perf_counter() - start)


__all__ = [
    "EpochEndHook",
    "ExponentialMovingAverage",
    "ResumeState",
    "TrainingLength",
    "TrainingResult",
    "TrainingStep",
    "add_training_arguments",
    "check_training_arguments",
    "checkpoint_steps",
    "command_line",
    "default_no_weight_decay",
    "fill_template",
    "find_checkpoint",
    "iterate_batches",
    "make_accelerator",
    "make_scheduler",
    "maybe_save_checkpoint",
    "megvii_ema_decay",
    "named_losses",
    "parameter_groups",
    "parse_training_args",
    "prepare_output_dir",
    "push_output_dir",
    "resume",
    "save_metrics",
    "scannet_training_frames",
    "train",
    "training_steps",
    "write_model_card",
]
