"""Synthetic nuScenes and ScanNet sets, rendered with exact geometry and written in the official on-disk layouts.

They let every part of geomim_hf run and be tested end to end on a laptop, with the real nuScenes devkit reading and
evaluating the data. Command line: ``python -m geomim_hf.data.synthetic {nuscenes,scannet,preview} --help``
(``preview`` draws one sample with :func:`geomim_hf.visualization.render_preview`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .nuscenes_writer import NuScenesSpec, write_nuscenes
from .output import MARKER_FILE, OutputExistsError, dataset_output_dir
from .scannet_writer import ScanNetSpec, write_scannet


def generate_nuscenes(out: str | Path, *, overwrite: bool = False, progress: bool = True, **spec_fields) -> Path:
    """Write a synthetic nuScenes dataroot to ``out``; ``spec_fields`` are the fields of :class:`NuScenesSpec`."""
    spec = NuScenesSpec(**spec_fields)
    with dataset_output_dir(Path(out), overwrite, {"dataset": "nuscenes", **dataclasses.asdict(spec)}) as staging:
        write_nuscenes(spec, staging, progress=progress)
    return Path(out)


def generate_scannet(out: str | Path, *, overwrite: bool = False, progress: bool = True, **spec_fields) -> Path:
    """Write a synthetic ScanNet folder to ``out``; ``spec_fields`` are the fields of :class:`ScanNetSpec`."""
    spec = ScanNetSpec(**spec_fields)
    with dataset_output_dir(Path(out), overwrite, {"dataset": "scannet", **dataclasses.asdict(spec)}) as staging:
        write_scannet(spec, staging, progress=progress)
    return Path(out)


__all__ = [
    "MARKER_FILE",
    "NuScenesSpec",
    "OutputExistsError",
    "ScanNetSpec",
    "generate_nuscenes",
    "generate_scannet",
]
