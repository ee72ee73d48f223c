"""examples/pretrain_geomim.py: a tiny run on synthetic scenes exports an encoder that GeoMIMModel and the detector
trainer load, with its card and metrics; a resumed run ends with the same weights as an uninterrupted one; the Hub
upload sends the encoder folder; cached teacher targets are the live teacher's; a MixMIM conversion starts the model;
bad arguments fail early with a message."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForPreTraining

from geomim_hf import GeoMIMForPretraining, GeoMIMLidarTeacherConfig, GeoMIMModel
from geomim_hf.data import load_nuscenes
from geomim_hf.models.geomim.conversion_mixmim import MIXMIM_DECODER_FILE
from geomim_hf.models.lidar_teacher import random_lidar_teacher

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module("pretrain_geomim")
    finally:
        sys.path.remove(str(EXAMPLES))


def arguments(nuscenes_root, nuscenes_spec, output_dir, *extra: str,
              teacher: tuple[str, ...] = ("--random_teacher_seed", "0")) -> list[str]:
    return ["--dataroot", str(nuscenes_root), "--version", nuscenes_spec.version, "--train_split", "mini_train",
            "--config_name", "tiny", *teacher, "--num_sweeps", "1", "--output_dir", str(output_dir),
            "--max_train_steps", "2", "--logging_steps", "1", *extra]


def encoder_state(path: Path) -> dict[str, torch.Tensor]:
    return GeoMIMModel.from_pretrained(path).state_dict()


@pytest.fixture(scope="module")
def finished_run(script, nuscenes_root, nuscenes_spec, tmp_path_factory):
    """Two steps with a checkpoint after each and a (mocked) Hub upload; returns the output folder and the upload."""
    output_dir = tmp_path_factory.mktemp("pretrain") / "run"
    uploads = []

    def upload(repo_id, folder, commit_message, token=None, ignore_patterns=()):
        uploads.append({"repo_id": repo_id, "files": sorted(p.name for p in Path(folder).iterdir()),
                        "ignore": list(ignore_patterns)})
        return "https://huggingface.co/mock/commit"

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr("geomim_hf.training.upload_folder_to_hub", upload)
    try:
        metrics = script.main(arguments(nuscenes_root, nuscenes_spec, output_dir, "--checkpointing_steps", "1",
                                        "--push_to_hub", "--hub_model_id", "someone/geomim-tiny"))
    finally:
        monkeypatch.undo()
    return output_dir, metrics, uploads


def test_a_tiny_run_exports_an_encoder_with_its_card_and_metrics(finished_run):
    output_dir, metrics, _ = finished_run
    encoder, info = GeoMIMModel.from_pretrained(output_dir / "encoder", output_loading_info=True)
    assert not any(info.values()), info
    pretraining = AutoModelForPreTraining.from_pretrained(output_dir / "pretraining")
    assert isinstance(pretraining, GeoMIMForPretraining)
    for key, value in pretraining.geomim.state_dict().items():
        assert torch.equal(value, encoder.state_dict()[key]), key

    recorded = json.loads((output_dir / "metrics.json").read_text())
    assert recorded == pytest.approx(metrics)
    assert recorded["steps"] == 2 and recorded["samples_per_epoch"] == 4
    assert 0 < recorded["reconstruction_loss"] < 2 and -1 <= recorded["reconstruction_cosine"] <= 1
    card = (output_dir / "encoder" / "README.md").read_text()
    assert "someone/geomim-tiny" in card and f"| {recorded['loss']:.4f} |" in card and "{{" not in card
    assert "randomly initialised SparseEncoder" in card and "pretrain_geomim" in card
    assert (output_dir / "step_1").is_dir() and (output_dir / "step_2").is_dir()

    # The detector trainer starts from it like from any GeoMIMModel encoder (strict load).
    finetune = importlib.import_module("finetune_bevdet")
    detector, _ = finetune.load_model(argparse.Namespace(model_name_or_path=str(output_dir / "encoder"),
                                                         config_name="tiny", image_size=None))
    for key, value in encoder.state_dict().items():
        assert torch.equal(detector.bev_model.encoder.geomim.state_dict()[key], value), key


def test_push_to_hub_uploads_the_encoder_folder(finished_run):
    _, _, uploads = finished_run
    assert len(uploads) == 1 and uploads[0]["repo_id"] == "someone/geomim-tiny"
    assert uploads[0]["files"] == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]


def test_a_resumed_run_ends_where_the_uninterrupted_run_ends(script, finished_run, nuscenes_root, nuscenes_spec,
                                                             tmp_path):
    output_dir, _, _ = finished_run
    script.main(arguments(nuscenes_root, nuscenes_spec, tmp_path / "resumed", "--resume_from_checkpoint",
                          str(output_dir / "step_1")))
    uninterrupted, resumed = encoder_state(output_dir / "encoder"), encoder_state(tmp_path / "resumed" / "encoder")
    for key, value in uninterrupted.items():
        assert torch.equal(value, resumed[key]), key


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--teacher_name_or_path", "somewhere"], "exactly one teacher"),
        (["--random_teacher_grid", "small_grid", "--encoder_name_or_path", "x", "--model_name_or_path", "y"],
         "drop --encoder_name_or_path"),
    ],
)
def test_conflicting_arguments_are_refused(script, nuscenes_root, nuscenes_spec, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        script.parse_args(arguments(nuscenes_root, nuscenes_spec, tmp_path, *extra))
    assert message in capsys.readouterr().err


def test_a_teacher_that_does_not_fit_the_model_is_refused(script, nuscenes_root, nuscenes_spec, tmp_path):
    with pytest.raises(ValueError, match=r"teacher's BEV map is \(256, 180, 180\).*reconstructs \(128, 45, 45\)"):
        script.main(arguments(nuscenes_root, nuscenes_spec, tmp_path, "--random_teacher_grid", "bevfusion"))
    with pytest.raises(ValueError, match="multiples of 32"):
        script.main(arguments(nuscenes_root, nuscenes_spec, tmp_path, "--image_size", "120", "352"))


def test_the_encoder_and_a_mixmim_decoder_start_the_model(script, nuscenes_root, nuscenes_spec, tmp_path):
    from safetensors.torch import save_file
    from test_modeling_geomim_pretraining import mixmim_decoder, tiny_model

    source = tiny_model(seed=5)
    source.save_encoder(tmp_path / "init")
    save_file(mixmim_decoder(source), tmp_path / "init" / MIXMIM_DECODER_FILE)
    args = script.parse_args(arguments(nuscenes_root, nuscenes_spec, tmp_path / "run", "--encoder_name_or_path",
                                       str(tmp_path / "init")))
    model = script.build_model(args)
    for key, value in source.state_dict().items():
        if key.startswith(("geomim.", "mask_token", "decoder_pos_embed", "decoder_blocks.", "decoder_norm.")):
            assert torch.equal(model.state_dict()[key], value), key
    assert not torch.equal(model.prediction_head.weight, source.prediction_head.weight)


def test_cached_targets_are_the_live_teachers_for_every_flip(script, nuscenes_root, nuscenes_spec, tmp_path):
    """A cache written by examples/precompute_teacher_targets.py serves, for augmented (flipped) batches, what the same
    teacher computes live (to float16 precision), and a run trains from it."""
    teacher_dir, cache_dir = tmp_path / "teacher", tmp_path / "cache"
    random_lidar_teacher(GeoMIMLidarTeacherConfig.from_preset("small_grid"), seed=0).save_pretrained(teacher_dir)
    importlib.import_module("precompute_teacher_targets").main(
        ["--dataroot", str(nuscenes_root), "--version", nuscenes_spec.version, "--split", "mini_train",
         "--teacher_name_or_path", str(teacher_dir), "--output_dir", str(cache_dir), "--num_sweeps", "1"])

    live_args = script.parse_args(arguments(nuscenes_root, nuscenes_spec, tmp_path / "live",
                                            teacher=("--teacher_name_or_path", str(teacher_dir))))
    cached_args = script.parse_args(arguments(nuscenes_root, nuscenes_spec, tmp_path / "cached",
                                              teacher=("--teacher_cache", str(cache_dir))))
    config = script.build_model(live_args).config
    live, _ = script.build_teacher_targets(live_args, config, torch.device("cpu"))
    cached, description = script.build_teacher_targets(cached_args, config, torch.device("cpu"))
    examples = list(load_nuscenes(nuscenes_root, nuscenes_spec.version, "mini_train", num_sweeps=1))
    flips = set()
    for seed in range(3):
        batch = script.PretrainingCollator(augment=True, seed=seed)(examples)
        flips |= {tuple(matrix.diagonal()[:2].tolist()) for matrix in batch["lidar_augmentation"]}
        expected = live(batch)
        torch.testing.assert_close(cached(batch), expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())
    assert len(flips) >= 3  # the batches drew several of the four flips
    assert str(cache_dir) in description

    metrics = script.main(arguments(nuscenes_root, nuscenes_spec, tmp_path / "cached",
                                    teacher=("--teacher_cache", str(cache_dir))))
    assert metrics["steps"] == 2
