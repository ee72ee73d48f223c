"""Command-line conventions shared by every script of the package (examples, conversion, benchmarks, the synthetic
data generator).

Every script uses one set of argument names, those of transformers' `no_trainer` examples: `--model_name_or_path`,
`--output_dir`, `--overwrite_output_dir`, `--per_device_train_batch_size`, `--per_device_eval_batch_size`,
`--dataloader_num_workers`, and `--dataroot` for the root of a dataset (nuScenes or ScanNet). A spelling that an
earlier release showed keeps working for one release ([`add_argument`] with `deprecated=`), with a warning that names
the new one.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path


class _DeprecatedAlias(argparse.Action):
    """Stores into the new argument's destination, warning that the spelling is deprecated."""

    def __init__(self, option_strings, dest, new_option: str, **kwargs):
        self.new_option = new_option
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        warnings.warn(f"{option_string} is deprecated and will be removed in the next release; use "
                      f"{self.new_option}", FutureWarning, stacklevel=2)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def add_argument(container, option: str, *, deprecated: tuple[str, ...] = (), **kwargs) -> argparse.Action:
    """`container.add_argument(option, **kwargs)` (a parser or an argument group), plus the old spellings in
    `deprecated`, which set the same destination, warn when used and are hidden from `--help`. A required argument
    stays required: either spelling satisfies it, not both."""
    if not deprecated:
        return container.add_argument(option, **kwargs)
    group = container.add_mutually_exclusive_group(required=kwargs.pop("required", False))
    action = group.add_argument(option, **kwargs)
    flag = action.nargs == 0
    for old_option in deprecated:
        group.add_argument(old_option, dest=action.dest, action=_DeprecatedAlias, new_option=option,
                           nargs=0 if flag else action.nargs, type=None if flag else action.type,
                           choices=None if flag else action.choices, default=argparse.SUPPRESS,
                           help=argparse.SUPPRESS)
    return action


def add_output_file_arguments(container, file_name: str, what: str) -> None:
    """The output of a script that writes one file: `--output_dir`, the folder that gets `file_name`, or the earlier
    releases' `--out FILE`, that file itself (deprecated: it warns, and is hidden from `--help`). One of them is
    required; [`output_file`] says where to write."""
    group = container.add_mutually_exclusive_group(required=True)
    group.add_argument("--output_dir", type=Path, help=f"folder to write {file_name} ({what}) into")
    group.add_argument("--out", type=Path, dest="out", action=_DeprecatedAlias, new_option="--output_dir",
                       default=None, help=argparse.SUPPRESS)


def output_file(args: argparse.Namespace, file_name: str) -> Path:
    """The file to write, from the arguments of [`add_output_file_arguments`]."""
    return args.out if args.out is not None else args.output_dir / file_name


__all__ = ["add_argument", "add_output_file_arguments", "output_file"]
