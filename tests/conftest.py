"""Shared fixtures: small synthetic datasets in the official layouts, generated once per test session, and a Hub that
records uploads instead of receiving them."""

from __future__ import annotations

import dataclasses
from fnmatch import fnmatch
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
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


@pytest.fixture
def hub_uploads(monkeypatch) -> list[dict]:
    """Hub uploads, recorded instead of sent: `HfApi.create_repo` and `HfApi.upload_folder` append their arguments
    (and the files that the upload's patterns select) to the returned list. Patched on the class, so every route to
    the Hub is covered however `HfApi` was imported; and the Hub is offline, so any other request raises
    (`OfflineModeIsEnabled`) instead of reaching the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    uploads: list[dict] = []

    def create_repo(self, repo_id: str, **kwargs) -> str:
        uploads.append({"create_repo": repo_id, **kwargs})
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id: str, folder_path: str, commit_message: str, allow_patterns=None,
                      ignore_patterns=None, **kwargs) -> str:
        files = sorted(path.name for path in Path(folder_path).iterdir()
                       if allow_patterns is None or any(fnmatch(path.name, pattern) for pattern in allow_patterns))
        uploads.append({"upload_folder": repo_id, "folder": Path(folder_path), "files": files,
                        "commit_message": commit_message, "ignore_patterns": ignore_patterns})
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return uploads
