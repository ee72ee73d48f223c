"""The checkpoint conversion kernel that every converter of the package shares.

A converter turns a foreign checkpoint (GeoMIM / mmdet, official and timm Swin, MixMIM, BEVDet, bevfusion, timm ViT)
into the weights of one of our models. What differs between converters is their knowledge of the source: its key
table, its tensor transforms, how to detect its layout and how to read the architecture from its shapes. That stays in
each model's `conversion_*.py`. What does not differ lives here, once:

- reading a checkpoint file without executing code from it ([`load_checkpoint_file`]: `torch.load(weights_only=True)`
  or safetensors) and taking the tensors out of their container ([`unwrap_state_dict`], [`select_prefix`]);
- the key table itself: [`KeyRule`]s, each a full-match regex on the source key that either names the target tensors
  or says why the key is dropped, applied by [`apply_key_rules`], which refuses any key no rule covers;
- the [`ConversionReport`], which accounts for every source key (converted, transformed, dropped, by reason) and every
  target key (initialised without a source, missing, unexpected), printed in one format;
- the strict end of a conversion ([`check_against_model`], [`load_converted`]): a missing, unexpected or mis-shaped
  key is an error that names it, never a silently re-initialised weight.
"""

from __future__ import annotations

import pickle
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file

# A tensor transform of a key rule: the source tensor in, one tensor per target out (a single tensor for one target).
Transform = Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]]
ModelT = TypeVar("ModelT", bound=torch.nn.Module)


class CheckpointConversionError(ValueError):
    """A checkpoint that cannot be converted exactly: unreadable, unknown or missing keys, wrong shapes, unknown
    layout."""


@dataclass(frozen=True)
class KeyRule:
    """One line of a converter's key table.

    A source key that fully matches `pattern` either becomes the `targets`, each formatted with the named groups of
    the match (`str.format`), or, when `drop` gives a reason instead, is dropped and reported under that reason. A
    table is tried in order and the first matching rule wins, so a converter can put its own drops in front of a
    table it shares with another.

    Args:
        pattern: regex that the whole source key must match; its named groups fill the targets.
        targets: target key templates, e.g. `"encoder.layers.{stage}.blocks.{block}.attention.q_proj.{param}"`.
        transform: the tensor for each target, from the source tensor (e.g. a fused qkv split in three); by default
            the source tensor goes unchanged to the single target. Reported by its function name.
        drop: the reason for dropping the matched keys, instead of `targets`.
    """

    pattern: str
    targets: tuple[str, ...] = ()
    transform: Transform | None = None
    drop: str | None = None
    _regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if bool(self.targets) == (self.drop is not None):
            raise ValueError(f"KeyRule {self.pattern!r}: give either targets or a drop reason")
        if self.drop is not None and self.transform is not None:
            raise ValueError(f"KeyRule {self.pattern!r}: a dropped key has no transform")
        if self.transform is None and len(self.targets) > 1:
            raise ValueError(f"KeyRule {self.pattern!r}: {len(self.targets)} targets need a transform that splits")
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    def match(self, key: str) -> re.Match | None:
        return self._regex.fullmatch(key)


@dataclass
class ConversionReport:
    """What a conversion did with every key of the source checkpoint, and how the target model got each tensor.

    Attributes:
        target: the class converted to, e.g. `"GeoMIMModel"`.
        source_layout: the layout the converter detected, e.g. `"mmdet"` or `"spconv1"`.
        prefix: the prefix under which the converted module sat in the source ("" for a bare module).
        converted: source key -> the target keys it became.
        transformed: how tensors were changed on the way (a transform's name or description) -> target keys.
        dropped: why source keys were left out -> those keys.
        initialised: how target tensors without a source were filled -> those target keys.
        notes: anything else the reader of the report must know (an assumed setting, say).
        missing, unexpected: target keys the converted weights lack or the model does not have, from the strict
            check (empty after a successful conversion).
        parts: reports of parts converted on their own, e.g. the encoder of a detector.
    """

    target: str
    source_layout: str = ""
    prefix: str = ""
    converted: dict[str, tuple[str, ...]] = field(default_factory=dict)
    transformed: dict[str, list[str]] = field(default_factory=dict)
    dropped: dict[str, list[str]] = field(default_factory=dict)
    initialised: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    parts: dict[str, ConversionReport] = field(default_factory=dict)

    def add_dropped(self, reason: str, *keys: str) -> None:
        _extend(self.dropped, reason, keys)

    def add_transformed(self, how: str, *keys: str) -> None:
        _extend(self.transformed, how, keys)

    def add_initialised(self, how: str, *keys: str) -> None:
        _extend(self.initialised, how, keys)

    def format(self) -> str:
        """The report as text, one line per fact; the strict check's outcome last."""
        lines = self._lines()
        for name, keys in (("Missing", self.missing), ("Unexpected", self.unexpected)):
            lines.append(f"{name}: {len(keys)}" + (f" {keys}" if keys else ""))
        return "\n".join(lines)

    def num_source_keys(self) -> int:
        """How many source tensors the report accounts for, its parts' included: all of the checkpoint's."""
        own = len(self.converted) + sum(len(keys) for keys in self.dropped.values())
        return own + sum(part.num_source_keys() for part in self.parts.values())

    def _lines(self) -> list[str]:
        """Every line but the strict check's, which belongs to the whole model (a part's keys are checked there)."""
        where = f"prefix {self.prefix}" if self.prefix else "no prefix"
        lines = [f"Source: {self.source_layout} layout, {where}, {self.num_source_keys()} tensors"]
        for name, part in self.parts.items():
            lines.append(f"Part {name}:")
            lines += ["  " + line for line in part._lines()]
        num_targets = sum(len(targets) for targets in self.converted.values())
        lines.append(f"Converted: {len(self.converted)} source tensors -> {num_targets} {self.target} tensors")
        for label, table in (("Transformed", self.transformed), ("Dropped", self.dropped),
                             ("Initialised without a source", self.initialised)):
            lines += [f"{label}, {how}: {len(keys)} [{summarise_keys(keys)}]" for how, keys in table.items()]
        lines += [f"Note: {note}" for note in self.notes]
        return lines


def _extend(table: dict[str, list[str]], label: str, keys: Sequence[str]) -> None:
    """Adds `keys` under `label`; no keys add no (empty) line to the report."""
    if keys:
        table.setdefault(label, []).extend(keys)


def summarise_keys(keys: Sequence[str]) -> str:
    """`"module (count), ..."` for a list of keys, by module: the key's first two names before any index, without
    the tensor's own name (`decoder.backbone.blocks.0.0.weight` -> `decoder.backbone`, `head.weight` -> `head`)."""

    def module(key: str) -> str:
        names = []
        for name in key.split(".")[:-1][:2]:
            if name.isdigit():
                break
            names.append(name)
        return ".".join(names) or key

    counts = Counter(module(key) for key in keys)
    return ", ".join(f"{name} ({count})" for name, count in sorted(counts.items()))


def split_fused_qkv(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A [`KeyRule`] transform: rows [0:C], [C:2C], [2C:3C] of a fused qkv weight or bias (timm's Swin and ViT, mmdet's
    Swin) are the query, key and value."""
    return tuple(tensor.chunk(3, dim=0))


def load_checkpoint_file(path: str | Path) -> Mapping[str, object]:
    """Reads a `.pth`/`.pt`/`.bin` file with `torch.load(weights_only=True)`, or a `.safetensors` file: nothing in a
    checkpoint is ever executed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointConversionError(
            f"{path} holds objects that torch.load(weights_only=True) refuses to unpickle; re-save its tensors as a "
            f"plain dict (or safetensors) from a trusted environment. torch said: {error}"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:  # what torch raises for a truncated or corrupt archive
        raise CheckpointConversionError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): {error}"
        ) from error


def unwrap_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: its `state_dict`, else its `model`, else the checkpoint itself (the containers
    mmcv runners, EMA hooks and MAE-style trainers save), without the DDP `module.` prefix. A non-tensor entry is an
    error naming it: it would otherwise vanish from the conversion unreported."""
    for container_key in ("state_dict", "model"):
        if isinstance(checkpoint.get(container_key), Mapping):
            checkpoint = checkpoint[container_key]
            break
    state_dict = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointConversionError(f"Checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")
        state_dict[key.removeprefix("module.")] = value
    return state_dict


def select_prefix(
    state_dict: Mapping[str, torch.Tensor], prefixes: Sequence[str], report: ConversionReport
) -> dict[str, torch.Tensor]:
    """The tensors under the first of `prefixes` that some key starts with, without it; it goes to `report.prefix`
    and every key outside it is dropped, reported as `outside PREFIX`. Without any of the prefixes the state dict is
    returned as it is (a bare module, `report.prefix` "")."""
    for prefix in prefixes:
        if any(key.startswith(prefix) for key in state_dict):
            report.prefix = prefix
            selected = {}
            for key, value in state_dict.items():
                if key.startswith(prefix):
                    selected[key.removeprefix(prefix)] = value
                else:
                    report.add_dropped(f"outside {prefix.rstrip('.')}", key)
            return selected
    return dict(state_dict)


def _first_match(rules: Sequence[KeyRule], key: str) -> tuple[KeyRule | None, re.Match | None]:
    for rule in rules:
        if (match := rule.match(key)) is not None:
            return rule, match
    return None, None


def apply_key_rules(
    state_dict: Mapping[str, torch.Tensor],
    rules: Sequence[KeyRule],
    report: ConversionReport,
    *,
    source: str,
    fields: Callable[[dict[str, str]], Mapping[str, object]] | None = None,
) -> dict[str, torch.Tensor]:
    """Converts every key of `state_dict` by the first rule of `rules` that matches it, recording each conversion,
    transform and drop in `report`.

    Args:
        source: what `state_dict` is, for the errors (e.g. `"the mmdet-layout checkpoint"`).
        fields: the values the targets are formatted with, from the named groups of the match, for a converter whose
            target names are not the groups themselves (a stage counted from 1 in the source, say). By default the
            groups.

    Raises:
        CheckpointConversionError: a key that no rule matches, or two source keys that would become the same target.
    """
    converted, origin = {}, {}
    for key, tensor in state_dict.items():
        rule, match = _first_match(rules, key)
        if rule is None:
            raise CheckpointConversionError(
                f"Unknown key {key!r} in {source}: no rule of the key table converts it and no drop list has it"
            )
        if rule.drop is not None:
            report.add_dropped(rule.drop, key)
            continue
        groups = match.groupdict()
        values = groups if fields is None else fields(groups)
        targets = tuple(target.format(**values) for target in rule.targets)
        outputs = (tensor,) if rule.transform is None else rule.transform(tensor)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        for target, value in zip(targets, outputs, strict=True):
            if target in origin:
                raise CheckpointConversionError(f"{origin[target]!r} and {key!r} in {source} both convert to "
                                                f"{target!r}")
            origin[target] = key
            converted[target] = value.contiguous()
        report.converted[key] = targets
        if rule.transform is not None:
            report.add_transformed(rule.transform.__name__, *targets)
    return converted


def check_against_model(
    state_dict: Mapping[str, torch.Tensor],
    model: torch.nn.Module,
    report: ConversionReport,
    prefixes: tuple[str, ...] = (),
) -> None:
    """Raises, naming the keys, unless `state_dict` has exactly the model's keys and shapes; records the missing and
    unexpected keys in `report`.

    `prefixes` restricts the check to the model's keys under them: for weights that initialise a part of a model
    (its decoder, say), which then loads them with `load_state_dict(strict=False)`, knowing the key set is exact.
    """
    expected = {key: value for key, value in model.state_dict().items() if not prefixes or key.startswith(prefixes)}
    report.missing = sorted(expected.keys() - state_dict.keys())
    report.unexpected = sorted(state_dict.keys() - expected.keys())
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)}, model {tuple(expected[key].shape)}"
        for key in sorted(expected.keys() & state_dict.keys())
        if state_dict[key].shape != expected[key].shape
    ]
    problems = [f"{name} {keys}" for name, keys in (("missing keys", report.missing),
                                                    ("unexpected keys", report.unexpected),
                                                    ("shape mismatches", mismatched)) if keys]
    if problems:
        part = f" (its tensors under {', '.join(prefixes)})" if prefixes else ""
        raise CheckpointConversionError(f"The converted weights do not fit {type(model).__name__}{part}: "
                                        + "; ".join(problems))


def load_converted(model: ModelT, state_dict: Mapping[str, torch.Tensor], report: ConversionReport) -> ModelT:
    """The strict end of every conversion: [`check_against_model`], `load_state_dict(strict=True)`, eval mode."""
    check_against_model(state_dict, model, report)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


__all__ = [
    "CheckpointConversionError",
    "ConversionReport",
    "KeyRule",
    "apply_key_rules",
    "check_against_model",
    "load_checkpoint_file",
    "load_converted",
    "select_prefix",
    "split_fused_qkv",
    "summarise_keys",
    "unwrap_state_dict",
]
