"""The batch contract between the collators and the models: which entries of a batch a model's `forward` takes, and
the one policy for a keyword a `forward` does not know.

A collated batch holds more than a model's inputs: sample tokens, poses for the evaluation, points for a teacher.
As transformers' `Trainer` removes the columns a model does not use, [`model_inputs`] keeps the entries named by the
model's `forward` signature, and leaves out its training targets where no loss should be computed (evaluation,
inference). Called with anything else, every model raises a `TypeError` that names the keyword: a misspelt input must
never change nothing silently.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping

import torch
from transformers.utils import TransformersKwargs, find_labels

TRANSFORMERS_KWARGS = frozenset(TransformersKwargs.__annotations__)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP / DataParallel wrapper or a `torch.compile` module."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def forward_parameters(model: torch.nn.Module) -> tuple[str, ...]:
    """The named parameters of the model's `forward`, in signature order (no `*args` / `**kwargs`)."""
    return _forward_parameters(type(unwrap(model)))


@functools.cache
def _forward_parameters(model_class: type) -> tuple[str, ...]:
    # Read once per class: the contract is applied to every training batch.
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = inspect.signature(model_class.forward).parameters
    return tuple(name for name, parameter in list(parameters.items())[1:] if parameter.kind in named)  # not self


def target_parameters(model: torch.nn.Module) -> tuple[str, ...]:
    """The `forward` parameters that carry training targets: the model class's `target_input_names`, or for other
    transformers models the label arguments that `Trainer` finds (`labels`, ...)."""
    model = unwrap(model)
    names = getattr(model, "target_input_names", None)
    return tuple(names) if names is not None else tuple(find_labels(type(model)))


def model_inputs(model: torch.nn.Module, batch: Mapping[str, object], device: torch.device | str | None = None, *,
                 targets: bool = True) -> dict[str, object]:
    """The entries of `batch` that `model.forward` takes, tensors moved to `device`; without `targets`, the training
    targets are left out (no loss is computed at evaluation).

    A batch whose labels index another class order than the model's (`batch["class_names"]` against
    `model.config.class_names`) is refused: the labels would train the wrong heads.
    """
    config = getattr(unwrap(model), "config", None)
    batch_classes, model_classes = batch.get("class_names"), getattr(config, "class_names", None)
    if batch_classes is not None and model_classes is not None and list(batch_classes) != list(model_classes):
        raise ValueError(f"the batch's labels index the classes {list(batch_classes)} but the model's labels are "
                         f"{list(model_classes)}: build the collator with class_names=model.config.class_names")
    taken = set(forward_parameters(model))
    if not targets:
        taken -= set(target_parameters(model))
    inputs = {}
    for name, value in batch.items():
        if name in taken:
            inputs[name] = value.to(device) if device is not None and torch.is_tensor(value) else value
    return inputs


def check_forward_kwargs(model: torch.nn.Module, kwargs: Mapping[str, object]) -> None:
    """The policy for a `forward` that takes `**kwargs` for transformers' own options (`output_hidden_states`, ...):
    any other keyword is a `TypeError` naming it, as Python raises for a `forward` without `**kwargs`."""
    unknown = sorted(set(kwargs) - TRANSFORMERS_KWARGS)
    if unknown:
        raise TypeError(f"{type(model).__name__}.forward() got unexpected keyword arguments {unknown}; it takes "
                        f"{list(forward_parameters(model))} and transformers' options {sorted(TRANSFORMERS_KWARGS)}. "
                        f"Pass a collated batch through geomim_hf.models.inputs.model_inputs(model, batch).")


__all__ = ["check_forward_kwargs", "forward_parameters", "model_inputs", "target_parameters", "unwrap"]
