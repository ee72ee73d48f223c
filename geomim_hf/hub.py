"""Model cards and Hub uploads, shared by the conversion scripts and the example trainers."""

from __future__ import annotations

import argparse
import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

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
                         ignore_patterns: Sequence[str] = ()) -> str:
    """Creates the model repository if needed and uploads ``folder`` as one commit. Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                               ignore_patterns=list(ignore_patterns) or None)
    return str(commit)


def add_conversion_output_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """The output arguments every conversion script takes: `--output_dir`, `--push_to_hub REPO_ID`, `--overwrite`."""
    parser.add_argument("--output_dir", type=Path, required=True, help=f"folder to write {what} into")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="also upload the output folder to this Hub repo")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")


def check_conversion_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses a `--checkpoint` that is not a file and a non-empty `--output_dir` without `--overwrite`, before any
    work: nothing the user has is replaced by accident."""
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint is not None and not Path(checkpoint).is_file():
        parser.error(f"--checkpoint {checkpoint} is not a file")
    if args.output_dir.exists() and any(args.output_dir.iterdir()) and not args.overwrite:
        parser.error(f"--output_dir {args.output_dir} is not empty; pass --overwrite to write into it")


__all__ = ["add_conversion_output_arguments", "check_conversion_arguments", "file_sha256", "fill_template",
           "upload_folder_to_hub", "write_model_card"]
