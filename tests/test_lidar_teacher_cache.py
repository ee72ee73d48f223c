"""examples/precompute_teacher_targets.py and TeacherTargetCache on the tiny synthetic nuScenes set: the cached targets
equal a live teacher run on pretraining batches, for every flip; clear errors; nothing is overwritten unasked."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geomim_hf import GeoMIMLidarTeacherConfig, TeacherTargetCache
from geomim_hf.data.image_processing_geomim import GeoMIMImageProcessor
from geomim_hf.data.nuscenes import load_nuscenes
from geomim_hf.data.pretraining_collate import PretrainingCollator
from geomim_hf.models.lidar_teacher import MissingTargetError, TeacherMismatchError, random_lidar_teacher

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "precompute_teacher_targets.py"
NUM_SWEEPS = 3


def load_script():
    spec = importlib.util.spec_from_file_location("precompute_teacher_targets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher")
    random_lidar_teacher(GeoMIMLidarTeacherConfig.from_preset("small_grid"), seed=0).save_pretrained(path)
    return path


def run_script(nuscenes_root, nuscenes_spec, teacher_dir, output_dir, *extra: str) -> None:
    load_script().main(["--dataroot", str(nuscenes_root), "--version", nuscenes_spec.version, "--split", "mini_train",
                        "--teacher", str(teacher_dir), "--output_dir", str(output_dir),
                        "--num_sweeps", str(NUM_SWEEPS), "--shard_size", "3", "--per_device_batch_size", "2", *extra])


@pytest.fixture(scope="module")
def cache_dir(nuscenes_root, nuscenes_spec, teacher_dir, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("targets") / "mini_train"
    run_script(nuscenes_root, nuscenes_spec, teacher_dir, output)
    return output


def fp16_spacing(values: torch.Tensor) -> torch.Tensor:
    """The gap from each of `values`, rounded to float16, to the next float16 away from zero (one unit in the last
    place)."""
    return torch.from_numpy(np.spacing(np.abs(values.half().numpy()))).float()


def test_cached_targets_equal_a_live_teacher_on_pretraining_batches(cache_dir, teacher_dir, nuscenes_root,
                                                                   nuscenes_spec):
    from transformers import AutoModel

    teacher = AutoModel.from_pretrained(teacher_dir)
    cache = TeacherTargetCache(cache_dir, teacher=teacher)
    examples = list(load_nuscenes(nuscenes_root, nuscenes_spec.version, "mini_train", num_sweeps=NUM_SWEEPS))
    assert len(cache) == len(examples) == nuscenes_spec.samples_per_scene and set(cache.tokens) == {
        example["sample_token"] for example in examples}
    collator = PretrainingCollator(GeoMIMImageProcessor.geomim_pretraining(size={"height": 128, "width": 352}),
                                   augment=True, generator=torch.Generator().manual_seed(0))
    flips_seen = set()
    for start in range(0, len(examples), 2):
        batch = collator(examples[start: start + 2])
        with torch.no_grad():
            live = teacher(batch["points"], batch["points_mask"]).bev_features
        cached = cache.targets(batch["sample_tokens"], batch["lidar_augmentation"])
        assert cached.dtype == torch.float32 and cached.shape == (2, 128, 45, 45)
        assert live.abs().sum() > 0
        # The cache ran the teacher on other batches than this one (another voxel set per batch), so the float32
        # sums come out in another order: at most a few float32 ulps of the map's largest value apart (a small
        # output is a sum of large terms), and a value near an fp16 rounding boundary may then round to its
        # neighbour, one fp16 ulp away.
        float32_rounding = 4 * torch.finfo(torch.float32).eps * live.abs().max()
        difference = (cached - live.half().float()).abs()
        assert (difference <= fp16_spacing(live) + float32_rounding).all(), difference.max()
        flips_seen |= {tuple((torch.diagonal(m)[:2] < 0).tolist()) for m in batch["lidar_augmentation"]}
    assert len(flips_seen) >= 2  # the batches drew flipped and unflipped samples
    unflipped = cache.get(examples[0]["sample_token"])
    assert unflipped.dtype == torch.float16 and not torch.equal(unflipped, cache.get(examples[0]["sample_token"], "x"))


def test_manifest_describes_the_cache(cache_dir, teacher_dir):
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["shape"] == [128, 45, 45] and manifest["dtype"] == "float16"
    assert manifest["flips"] == ["none", "x", "y", "xy"] and manifest["num_samples"] == 4
    assert manifest["dataset"]["split"] == "mini_train" and manifest["dataset"]["num_sweeps"] == NUM_SWEEPS
    assert manifest["teacher"]["name_or_path"] == str(teacher_dir)
    assert manifest["teacher"]["config"]["initializer_seed"] == 0
    assert sorted(set(manifest["tokens"].values())) == ["shard-00000.safetensors", "shard-00001.safetensors"]


def test_a_cache_refuses_another_teacher_and_names_missing_targets(cache_dir):
    other = random_lidar_teacher(GeoMIMLidarTeacherConfig.from_preset("small_grid"), seed=1)
    with pytest.raises(TeacherMismatchError, match="same settings, other weights"):
        TeacherTargetCache(cache_dir, teacher=other)
    with pytest.raises(TeacherMismatchError, match=r"max_voxels cache=160000 teacher=1000"):
        TeacherTargetCache(cache_dir, teacher=GeoMIMLidarTeacherConfig.from_preset("small_grid", max_voxels=1000))
    cache = TeacherTargetCache(cache_dir)
    with pytest.raises(MissingTargetError, match=r"sample 0123 is not in the teacher target cache .* 'mini_train'"):
        cache.get("0123")
    with pytest.raises(ValueError, match="only for BEV flips"):
        cache.targets(cache.tokens[:1], torch.diag(torch.tensor([0.0, 1.0, 1.0, 1.0]))[None] + torch.eye(4) * 0.5)
    with pytest.raises(FileNotFoundError, match="not a teacher target cache"):
        TeacherTargetCache(cache_dir.parent)


def test_unflipped_cache_refuses_a_flipped_batch(nuscenes_root, nuscenes_spec, teacher_dir, tmp_path):
    run_script(nuscenes_root, nuscenes_spec, teacher_dir, tmp_path / "cache", "--flips", "none")
    cache = TeacherTargetCache(tmp_path / "cache")
    flip_x = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(MissingTargetError, match=r"holds the flips \['none'\], not 'x'"):
        cache.targets(cache.tokens[:1], flip_x[None])


def test_existing_folders_are_replaced_only_when_asked(nuscenes_root, nuscenes_spec, teacher_dir, tmp_path):
    cache = tmp_path / "cache"
    run_script(nuscenes_root, nuscenes_spec, teacher_dir, cache, "--flips", "none")
    before = (cache / "manifest.json").read_text()
    with pytest.raises(SystemExit, match="already holds a teacher target cache; pass --overwrite"):
        run_script(nuscenes_root, nuscenes_spec, teacher_dir, cache)
    assert (cache / "manifest.json").read_text() == before
    run_script(nuscenes_root, nuscenes_spec, teacher_dir, cache, "--flips", "none", "--num_sweeps", "1", "--overwrite")
    assert json.loads((cache / "manifest.json").read_text())["dataset"]["num_sweeps"] == 1
    assert [path.name for path in tmp_path.iterdir()] == ["cache"]  # no staging folder left behind

    other = tmp_path / "user_folder"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="is not a teacher target cache; refusing to touch it"):
        run_script(nuscenes_root, nuscenes_spec, teacher_dir, other, "--overwrite")
    assert [path.name for path in other.iterdir()] == ["notes.txt"]
