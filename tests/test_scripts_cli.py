"""The command lines of every script (examples/, benchmarks/, `python -m geomim_hf.data.synthetic`): each answers
`--help`, all use one set of argument names (transformers' `no_trainer` ones, underscores), and the spellings of
earlier releases still work for one release, with a warning that names the new one."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import sys
import warnings
from pathlib import Path

import pytest

from geomim_hf import cli
from geomim_hf.data.synthetic import __main__ as synthetic_cli

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "examples").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
SYNTHETIC_COMMANDS = [[], ["nuscenes"], ["scannet"], ["preview"]]


def load_script(path: Path):
    """The script as a module (its `main` does not run); benchmarks import their neighbours by name."""
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"cli_test_{path.parent.name}_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def help_text(parse_args, argv: list[str]) -> str:
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit) as exit_info:
        parse_args([*argv, "--help"])
    assert exit_info.value.code == 0
    return output.getvalue()


def assert_one_naming_convention(text: str) -> None:
    """No hyphenated option (`--no-x`, argparse's negation of a `--x` switch, is the one exception)."""
    hyphenated = sorted(set(re.findall(r"--(?!no-)[a-z0-9]+-[a-z0-9-]+", text)))
    assert not hyphenated, hyphenated


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_script_answers_help(path):
    text = help_text(load_script(path).parse_args, [])
    assert text.startswith("usage:")
    assert_one_naming_convention(text)


@pytest.mark.parametrize("command", SYNTHETIC_COMMANDS, ids=lambda command: " ".join(command) or "(top)")
def test_the_synthetic_generator_answers_help(command):
    text = help_text(synthetic_cli.parse_args, command)
    assert text.startswith("usage: python -m geomim_hf.data.synthetic")
    assert_one_naming_convention(text)


def script_parser(relative_path: str):
    return load_script(ROOT / relative_path).parse_args


# (script, the arguments around the renamed one, its old and new spelling, the value given, the destination and the
# parsed value); "{tmp}" stands for the test's folder.
RENAMED = [
    ("examples/evaluate_bevdet.py", ["--dataroot", "{tmp}", "--output_dir", "{tmp}/eval"], "--model",
     "--model_name_or_path", "someone/detector", "model_name_or_path", "someone/detector"),
    ("examples/evaluate_bevdet.py", ["--model_name_or_path", "m", "--dataroot", "{tmp}", "--output_dir", "{tmp}/e"],
     "--batch_size", "--per_device_eval_batch_size", "4", "per_device_eval_batch_size", 4),
    ("examples/evaluate_bevdet.py", ["--model_name_or_path", "m", "--dataroot", "{tmp}", "--output_dir", "{tmp}/e"],
     "--num_workers", "--dataloader_num_workers", "3", "dataloader_num_workers", 3),
    ("examples/evaluate_mask3d.py", ["--dataroot", "{tmp}", "--output_dir", "{tmp}/eval"], "--model",
     "--model_name_or_path", "m", "model_name_or_path", "m"),
    ("examples/pretrain_mask3d.py", ["--output_dir", "{tmp}/run"], "--root", "--dataroot", "{tmp}", "dataroot",
     Path("{tmp}")),
    ("examples/finetune_segmentation.py", ["--config_name", "tiny", "--output_dir", "{tmp}/run"], "--root",
     "--dataroot", "{tmp}", "dataroot", Path("{tmp}")),
    ("examples/precompute_teacher_targets.py", ["--dataroot", "{tmp}", "--output_dir", "{tmp}/cache"], "--teacher",
     "--teacher_name_or_path", "teacher", "teacher_name_or_path", "teacher"),
    ("examples/precompute_teacher_targets.py",
     ["--dataroot", "{tmp}", "--teacher_name_or_path", "t", "--output_dir", "{tmp}/cache"],
     "--per_device_batch_size", "--per_device_eval_batch_size", "2", "per_device_eval_batch_size", 2),
    ("examples/demo.py", [], "--out", "--output_dir", "{tmp}/demo", "output_dir", Path("{tmp}/demo")),
    ("benchmarks/mask3d_step.py", [], "--batch_size", "--per_device_train_batch_size", "8",
     "per_device_train_batch_size", 8),
    ("benchmarks/transfer_synthetic.py", [], "--out", "--output_dir", "{tmp}/x", "output_dir", Path("{tmp}/x")),
    ("benchmarks/data_throughput.py", [], "--samples-per-scene", "--samples_per_scene", "3", "samples_per_scene", 3),
    ("synthetic", ["nuscenes", "--scenes", "1"], "--out", "--output_dir", "{tmp}/n", "output_dir", Path("{tmp}/n")),
    ("synthetic", ["nuscenes", "--output_dir", "{tmp}/n"], "--samples-per-scene", "--samples_per_scene", "2",
     "samples_per_scene", 2),
    ("synthetic", ["scannet", "--output_dir", "{tmp}/s"], "--color-size", "--color_size", ["80", "60"], "color_size",
     [80, 60]),
]


@contextlib.contextmanager
def warnings_as_errors():
    """The new spellings must not warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        yield


def fill(value, tmp_path: Path):
    if isinstance(value, list):
        return [fill(item, tmp_path) for item in value]
    if isinstance(value, Path):
        return Path(str(value).format(tmp=tmp_path))
    return value.format(tmp=tmp_path) if isinstance(value, str) else value


@pytest.mark.parametrize("script, around, old, new, given, destination, parsed", RENAMED,
                         ids=lambda value: value if isinstance(value, str) and value.startswith("--") else None)
def test_old_spellings_still_work_and_warn(script, around, old, new, given, destination, parsed, tmp_path):
    parse_args = synthetic_cli.parse_args if script == "synthetic" else script_parser(script)
    around, given, parsed = fill(around, tmp_path), fill(given, tmp_path), fill(parsed, tmp_path)
    given = given if isinstance(given, list) else [given]
    with pytest.warns(FutureWarning, match=f"{old} is deprecated .*; use {new}"):
        args = parse_args([*around, old, *given])
    assert getattr(args, destination) == parsed
    with warnings_as_errors():
        assert getattr(parse_args([*around, new, *given]), destination) == parsed


def test_a_required_argument_stays_required_in_either_spelling(tmp_path, capsys):
    parse_args = script_parser("examples/evaluate_bevdet.py")
    around = ["--dataroot", str(tmp_path), "--output_dir", str(tmp_path / "eval")]
    with pytest.raises(SystemExit):
        parse_args(around)
    assert "--model_name_or_path" in capsys.readouterr().err
    with pytest.raises(SystemExit), pytest.warns(FutureWarning):
        parse_args([*around, "--model", "a", "--model_name_or_path", "b"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_switches_keep_their_old_spelling(tmp_path):
    parse_args = script_parser("examples/precompute_teacher_targets.py")
    around = ["--dataroot", str(tmp_path), "--teacher_name_or_path", "t", "--output_dir", str(tmp_path / "cache")]
    assert not parse_args(around).overwrite_output_dir
    with pytest.warns(FutureWarning, match="--overwrite is deprecated .*; use --overwrite_output_dir"):
        assert parse_args([*around, "--overwrite"]).overwrite_output_dir
    with pytest.warns(FutureWarning, match="--overwrite is deprecated"):
        synthetic = synthetic_cli.parse_args(["scannet", "--output_dir", str(tmp_path), "--overwrite"])
    assert synthetic.overwrite_output_dir


@pytest.mark.parametrize("script, around, name", [
    ("examples/visualize_bevdet.py", ["--model_name_or_path", "m", "--dataroot", "d", "--sample_token", "t"],
     "detections.png"),
    ("synthetic", ["preview", "data/nuscenes"], "preview.png"),
])
def test_a_picture_goes_into_output_dir_and_the_old_out_file_still_works(script, around, name, tmp_path):
    parse_args = synthetic_cli.parse_args if script == "synthetic" else script_parser(script)
    with warnings_as_errors():
        args = parse_args([*around, "--output_dir", str(tmp_path)])
    assert cli.output_file(args, name) == tmp_path / name
    with pytest.warns(FutureWarning, match="--out is deprecated .*; use --output_dir"):
        args = parse_args([*around, "--out", str(tmp_path / "mine.png")])
    assert cli.output_file(args, name) == tmp_path / "mine.png"
    with pytest.raises(SystemExit):
        parse_args(around)  # one of them is required
