"""What every script of `conversion/` shares: its output arguments, the output folder written whole or not at all, the
conversion record of its card, and the Hub push (recorded by the `hub_uploads` fixture, never sent)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import OfflineModeIsEnabled

from geomim_hf import GeoMIMConfig, GeoMIMImageProcessor, GeoMIMModel
from geomim_hf.checkpoint_conversion import ConversionReport
from geomim_hf.hub import conversion_record, file_sha256, save_conversion, upload_folder_to_hub

SCRIPTS = sorted((Path(__file__).resolve().parent.parent / "conversion").glob("*.py"))
# The argument naming what to convert; `--checkpoint` unless listed.
SOURCE_ARGUMENT = {"convert_vit_to_mask3d.py": "--source"}
MODEL_FILES = ["README.md", "config.json", "model.safetensors"]


def load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_model() -> GeoMIMModel:
    torch.manual_seed(0)
    return GeoMIMModel(GeoMIMConfig(embed_dim=8, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])).eval()


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: path.name)
def test_every_script_shows_its_help_with_the_unified_argument_names(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script(path).main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--output_dir", "--push_to_hub", "--overwrite_output_dir"):
        assert option in help_text
    assert "--overwrite " not in help_text and "--overwrite]" not in help_text  # the old spelling is hidden


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: path.name)
def test_the_old_overwrite_spelling_still_works_with_a_deprecation_warning(path, tmp_path):
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({}, checkpoint)
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "mine.txt").write_text("keep me")
    arguments = [SOURCE_ARGUMENT.get(path.name, "--checkpoint"), str(checkpoint), "--output_dir", str(output_dir)]
    script = load_script(path)
    with pytest.warns(FutureWarning, match="--overwrite is deprecated .* use --overwrite_output_dir"):
        args = script.parse_args([*arguments, "--overwrite"])
    assert args.overwrite_output_dir
    assert script.parse_args([*arguments, "--overwrite_output_dir"]).overwrite_output_dir
    with pytest.raises(SystemExit):
        script.parse_args(arguments)  # a non-empty folder without either spelling


def test_the_output_folder_is_written_whole_and_only_the_written_files_are_pushed(tmp_path, hub_uploads, capsys):
    output_dir = tmp_path / "converted"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("the user's")
    written = save_conversion(output_dir, tiny_model(), "# card\n", commit_message="Add a tiny model",
                              image_processor=GeoMIMImageProcessor.geomim_pretraining(),
                              extra_files={"extra.txt": lambda path: path.write_text("extra")},
                              push_to_hub="someone/tiny")
    assert written == ["README.md", "config.json", "extra.txt", "model.safetensors", "preprocessor_config.json"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["converted"]  # no staging folder left
    assert sorted(path.name for path in output_dir.iterdir()) == sorted(written + ["notes.txt"])
    assert (output_dir / "README.md").read_text() == "# card\n"
    assert hub_uploads[1] == {"upload_folder": "someone/tiny", "folder": output_dir, "files": written,
                              "commit_message": "Add a tiny model", "ignore_patterns": None}
    out = capsys.readouterr().out
    assert f"Wrote {output_dir}: {', '.join(written)}" in out and "Pushed" in out


@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_while_writing_leaves_the_output_folder_as_it_was(existing, tmp_path, hub_uploads):
    output_dir = tmp_path / "converted"
    if existing:
        output_dir.mkdir()
        (output_dir / "README.md").write_text("the previous card")

    def fail(path: Path) -> None:
        raise OSError(f"disk full writing {path.name}")

    with pytest.raises(OSError, match="disk full writing extra.bin"):
        save_conversion(output_dir, tiny_model(), "# card\n", commit_message="never", push_to_hub="someone/tiny",
                        extra_files={"extra.bin": fail})
    assert sorted(path.name for path in tmp_path.iterdir()) == (["converted"] if existing else [])
    if existing:
        assert [path.name for path in output_dir.iterdir()] == ["README.md"]
        assert (output_dir / "README.md").read_text() == "the previous card"
    assert hub_uploads == []


def test_offline_the_real_hub_client_raises_instead_of_reaching_the_network(tmp_path, monkeypatch):
    """What `hub_uploads` relies on when a request gets past its two recorders."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineModeIsEnabled):
        upload_folder_to_hub("someone/tiny", tmp_path, "never")


def test_the_conversion_record_names_the_source_the_converter_and_the_report(tmp_path):
    checkpoint = tmp_path / "weights.pth"
    torch.save({"weight": torch.zeros(2)}, checkpoint)
    report = ConversionReport("GeoMIMModel", source_layout="mmdet", converted={"weight": ("weight",)})
    record = conversion_record(checkpoint, "conversion/convert_x.py", report, details=["Preset: `p`"])
    assert record.splitlines() == [
        "## Conversion record", "",
        f"- Source file: `weights.pth` (SHA-256 `{file_sha256(checkpoint)}`)",
        "- Preset: `p`",
        "- Converter: `conversion/convert_x.py` (geomim_hf), strict load, report below", "",
        "```text", *report.format().splitlines(), "```",
    ]
    assert conversion_record("facebook/vit-mae-base", "c.py", report).splitlines()[2] == (
        "- Source: `facebook/vit-mae-base`")
