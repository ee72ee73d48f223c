"""Writing a generated dataset without ever losing what was in the output folder.

A dataset is built in a hidden sibling folder and moved into place only when complete, so an interrupted run leaves
nothing half-written. An existing folder is replaced only when the user asked for it *and* it holds a dataset this
generator wrote (recognised by its marker file): a real nuScenes or ScanNet copy is never deleted by mistake.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

MARKER_FILE = "geomim_synthetic.json"


class OutputExistsError(FileExistsError):
    pass


@contextlib.contextmanager
def dataset_output_dir(out: Path, overwrite: bool, description: dict) -> Iterator[Path]:
    """Yield an empty staging folder; on success it becomes ``out`` (with a marker file holding ``description``)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / MARKER_FILE).is_file():
            raise OutputExistsError(
                f"{out} already exists and was not written by the geomim_hf synthetic generator; refusing to touch "
                "it. Choose a new output folder (--output_dir)."
            )
        if not overwrite:
            raise OutputExistsError(f"{out} already holds a synthetic dataset; pass overwrite=True "
                                    "(--overwrite_output_dir) to replace it.")
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        (staging / MARKER_FILE).write_text(json.dumps(description, indent=2))
        if out.exists():
            retired = out.parent / f".{out.name}.replaced-{os.getpid()}"
            out.rename(retired)
            staging.rename(out)
            shutil.rmtree(retired)
        else:
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
