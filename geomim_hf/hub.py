"""Model cards and Hub uploads, shared by the conversion scripts and the example trainers.

A conversion script is its arguments ([`add_conversion_output_arguments`], [`check_conversion_arguments`]), its
converter, its card fields and one call to [`save_conversion`], which writes the output folder as a whole or not at
all and pushes it when asked. Every upload goes through [`upload_folder_to_hub`].
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint_conversion import ConversionReport
from .cli import add_argument

if TYPE_CHECKING:
    from transformers import PreTrainedModel
    from transformers.image_processing_utils import ImageProcessingMixin

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def fill_template(template: str, fields: Mapping[str, object]) -> str:
    """Replaces every ``{{ name }}`` in ``template`` with ``fields[name]``; a placeholder without a value, or a value
    without a placeholder, is an error (a card must never ship with a hole or silently drop a measured number)."""
    wanted = set(PLACEHOLDER.findall(template))
    missing, unused = wanted - set(fields), set(fields) - wanted
    if missing or unused:
        raise ValueError(f"model card template: no value for {sorted(missing)}; no placeholder for {sorted(unused)}")
    return PLACEHOLDER.sub(lambda match: str(fields[match.group(1)]), template)


def write_model_card(output_dir: Path, template: str | Path, fields: Mapping[str, object]) -> Path:
    """Writes ``OUTPUT_DIR/README.md`` from a template (text, or a file such as one of ``model_cards/``)."""
    text = Path(template).read_text() if isinstance(template, Path) else template
    path = Path(output_dir) / "README.md"
    path.write_text(fill_template(text, fields))
    return path


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, for the provenance line of a converted model's card."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def upload_folder_to_hub(repo_id: str, folder: Path, commit_message: str, token: str | None = None,
                         ignore_patterns: Sequence[str] = (), allow_patterns: Sequence[str] = ()) -> str:
    """Creates the model repository if needed and uploads ``folder`` (only the files matching ``allow_patterns``, if
    given) as one commit. Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                               ignore_patterns=list(ignore_patterns) or None,
                               allow_patterns=list(allow_patterns) or None)
    return str(commit)


def conversion_record(source: str | Path, converter: str, report: ConversionReport, details: Sequence[str] = ()) -> str:
    """The `## Conversion record` section of a converted model's card, filled into its `{{ conversion_record }}`:
    where the weights come from (a file by name and SHA-256, else the model id or folder), the converter, the
    converter's `details` lines, and the full conversion report."""
    path = Path(source)
    origin = f"Source file: `{path.name}` (SHA-256 `{file_sha256(path)}`)" if path.is_file() else f"Source: `{source}`"
    return "\n".join([
        "## Conversion record",
        "",
        f"- {origin}",
        *(f"- {detail}" for detail in details),
        f"- Converter: `{converter}` (geomim_hf), strict load, report below",
        "",
        "```text",
        report.format(),
        "```",
    ])


def save_conversion(
    output_dir: Path,
    model: PreTrainedModel,
    model_card: str,
    *,
    commit_message: str,
    push_to_hub: str | None = None,
    image_processor: ImageProcessingMixin | None = None,
    extra_files: Mapping[str, Callable[[Path], object]] | None = None,
) -> list[str]:
    """Writes a converted model to `output_dir` and, with `push_to_hub` (a repo id), uploads what was written.

    The folder gets the model (`save_pretrained`: `config.json`, `model.safetensors`), the image processor if any,
    `README.md` from `model_card`, and each of `extra_files` (file name -> function that writes that path). All is
    first written to a staging folder next to `output_dir` and moved in only when every file is complete, so a
    failure leaves `output_dir` as it was; what the user already had there (after `--overwrite_output_dir`) is kept,
    and not uploaded.

    Returns:
        The names of the files written, which are printed.
    """
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        model.save_pretrained(staging)
        if image_processor is not None:
            image_processor.save_pretrained(staging)
        (staging / "README.md").write_text(model_card)
        for name, write in (extra_files or {}).items():
            write(staging / name)
        written = sorted(path.name for path in staging.iterdir())
        output_dir.mkdir(exist_ok=True)
        for name in written:
            os.replace(staging / name, output_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"Wrote {output_dir}: {', '.join(written)}")
    if push_to_hub:
        upload_folder_to_hub(push_to_hub, output_dir, commit_message, allow_patterns=written)
        print(f"Pushed {output_dir} to https://huggingface.co/{push_to_hub}")
    return written


def add_conversion_output_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """The output arguments every conversion script takes: `--output_dir`, `--push_to_hub REPO_ID` and
    `--overwrite_output_dir` (`--overwrite` until the next release)."""
    parser.add_argument("--output_dir", type=Path, required=True, help=f"folder to write {what} into")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="also upload the written files to this Hub repo")
    add_argument(parser, "--overwrite_output_dir", action="store_true", deprecated=("--overwrite",),
                 help="write into a non-empty output folder (its other files are kept)")


def check_conversion_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses a `--checkpoint` that is not a file and a non-empty `--output_dir` without `--overwrite_output_dir`,
    before any work: nothing the user has is replaced by accident."""
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint is not None and not Path(checkpoint).is_file():
        parser.error(f"--checkpoint {checkpoint} is not a file")
    if args.output_dir.exists() and any(args.output_dir.iterdir()) and not args.overwrite_output_dir:
        parser.error(f"--output_dir {args.output_dir} is not empty; pass --overwrite_output_dir to write into it")


__all__ = ["add_conversion_output_arguments", "check_conversion_arguments", "conversion_record", "file_sha256",
           "fill_template", "save_conversion", "upload_folder_to_hub", "write_model_card"]
