"""Shared fixtures: small synthetic datasets in the official layouts, generated once per test session."""

from __future__ import annotations

import dataclasses

import pytest

from geomim_hf.data.synthetic import NuScenesSpec, ScanNetSpec, generate_nuscenes, generate_scannet

# Two scenes (one in mini_train, one in mini_val) of four samples: every detection class appears in both scenes.
TINY_NUSCENES = NuScenesSpec(scenes=2, samples_per_scene=4, sweeps=2, image_size=(352, 128), seed=7)
TINY_SCANNET = ScanNetSpec(scenes=2, frames=3, seed=7, color_size=(320, 240))


@pytest.fixture(scope="session")
def nuscenes_spec() -> NuScenesSpec:
    return TINY_NUSCENES


@pytest.fixture(scope="session")
def nuscenes_root(tmp_path_factory, nuscenes_spec):
    """A synthetic nuScenes dataroot, version ``nuscenes_spec.version``; treat it as read-only."""
    root = tmp_path_factory.mktemp("synthetic") / "nuscenes"
    return generate_nuscenes(root, progress=False, **dataclasses.asdict(nuscenes_spec))


@pytest.fixture(scope="session")
def nusc(nuscenes_root, nuscenes_spec):
    from nuscenes import NuScenes

    return NuScenes(version=nuscenes_spec.version, dataroot=str(nuscenes_root), verbose=False)


@pytest.fixture(scope="session", params=["frames_25k", "exported"])
def scannet_root(request, tmp_path_factory):
    """A synthetic ScanNet folder in each of the two official layouts; treat it as read-only."""
    root = tmp_path_factory.mktemp("synthetic") / f"scannet_{request.param}"
    spec = dataclasses.replace(TINY_SCANNET, layout=request.param)
    return generate_scannet(root, progress=False, **dataclasses.asdict(spec))
