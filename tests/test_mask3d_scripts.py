"""The Mask3D example scripts end to end on synthetic ScanNet: pretraining (it learns; it resumes exactly), depth
evaluation, and UperNet segmentation finetuning; plus the RGB-D batches and metrics they rely on.

The scripts run in this process through their `main(argv)`. The models are tiny, and tiny models gain nothing from a
second thread but lose much when the cores are shared, so these tests run single-threaded.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, UperNetForSemanticSegmentation

from geomim_hf import Mask3DConfig, Mask3DModel
from geomim_hf.data.scannet import load_scannet
from geomim_hf.data.scannet_format import LABEL_FOLDERS, detect_layout
from geomim_hf.data.scannet_rgbd import (
    IGNORE_INDEX,
    ScanNetRGBDCollator,
    fixed_length,
    mask3d_image_processor,
    nyu40_to_scannet20_table,
    read_scannet_to_nyu40,
)
from geomim_hf.data.synthetic import ScanNetSpec, generate_scannet
from geomim_hf.data.synthetic.scannet_writer import FURNITURE_CLASSES, ROOM_CLASSES
from geomim_hf.evaluation.scannet import SegmentationMetrics, frame_depth_metrics

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# Six rooms of six frames: five rooms (30 frames) to learn from, one held out (6 frames).
LEARNING_SET = ScanNetSpec(scenes=6, frames=6, seed=0, color_size=(160, 120))
SMALL_SET = ScanNetSpec(scenes=3, frames=3, seed=3, color_size=(160, 120), layout="exported")


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_label_map(path: Path) -> Path:
    """ScanNet's scannetv2-labels.combined.tsv (columns id, nyu40id) for the synthetic classes."""
    classes = [*ROOM_CLASSES.values(), *FURNITURE_CLASSES.values()]
    path.write_text("id\tcategory\tnyu40id\n" + "".join(f"{c.scannet_id}\t{c.name}\t{c.nyu40_id}\n" for c in classes))
    return path


@pytest.fixture(autouse=True, scope="module")  # module scope: in force before the module's other fixtures
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_scannet(tmp_path_factory):
    root = tmp_path_factory.mktemp("mask3d") / "small"
    return generate_scannet(root, progress=False, **dataclasses.asdict(SMALL_SET))


@pytest.fixture(scope="module")
def learning_scannet(tmp_path_factory):
    root = tmp_path_factory.mktemp("mask3d") / "learning"
    return generate_scannet(root, progress=False, **dataclasses.asdict(LEARNING_SET))


@pytest.fixture(scope="module")
def pretrained(learning_scannet, tmp_path_factory):
    """The tiny preset pretrained by the example script with its defaults (600 steps)."""
    output_dir = tmp_path_factory.mktemp("mask3d") / "pretrained"
    script("pretrain_mask3d").main(["--dataroot", str(learning_scannet), "--train_split", "train", "--eval_split",
                                    "val", "--config_name", "tiny", "--output_dir", str(output_dir)])
    return output_dir


def test_depth_metrics_by_hand():
    target = torch.tensor([[[2.0, 4.0, 0.0, 12.0]]])  # 0 and 12 m are outside (0, 10]
    predicted = torch.tensor([[[2.8, 4.0, 7.0, 1.0]]])
    abs_rel, rmse, delta1 = frame_depth_metrics(predicted, target)[0].tolist()
    assert abs_rel == pytest.approx((0.4 + 0.0) / 2)
    assert rmse == pytest.approx(((0.64 + 0.0) / 2) ** 0.5)
    assert delta1 == pytest.approx(0.5)  # 2.8 / 2 = 1.4 misses, 4 / 4 hits


def test_segmentation_metrics_follow_evaluate_mean_iou():
    metrics = SegmentationMetrics(num_classes=3, ignore_index=255)
    labels = torch.tensor([[0, 0, 1, 1, 255, 0]])
    predictions = torch.tensor([[0, 1, 1, 1, 2, 0]])
    metrics.update(predictions, labels)
    result = metrics.compute(class_names=["a", "b", "c"])
    # a: 2 right of 3 labelled, predicted 2 times -> IoU 2 / 3; b: 2 right, union 3 -> 2 / 3; c: in neither -> None
    assert result["per_category_iou"] == pytest.approx({"a": 2 / 3, "b": 2 / 3, "c": None})
    assert result["mean_iou"] == pytest.approx(2 / 3) and result["overall_accuracy"] == pytest.approx(4 / 5)
    assert result["per_category_accuracy"]["b"] == 1.0


def test_rgbd_batches_keep_invalid_depth_and_map_labels_to_the_benchmark(scannet_root):
    frames = list(load_scannet(scannet_root, split="train"))[:2]
    tsv = synthetic_label_map(scannet_root.parent / f"labels_{scannet_root.name}.tsv")
    collator = ScanNetRGBDCollator(mask3d_image_processor((48, 64)), labels=True,
                                   scannet_to_nyu40=read_scannet_to_nyu40(tsv))
    batch = collator(frames)
    assert batch["pixel_values"].shape == (2, 3, 48, 64) and batch["depth_values"].shape == (2, 48, 64)
    # nearest neighbour: every depth value is one of the frame's own values (no blending with invalid zeros)
    assert set(batch["depth_values"][0].unique().tolist()) <= set(np.unique(frames[0]["depth"]).tolist())
    table = nyu40_to_scannet20_table()
    assert table[1] == 0 and table[39] == 19 and table[13] == IGNORE_INDEX and table[22] == IGNORE_INDEX
    ids = np.asarray(frames[0]["semantic_label"]).astype(np.int64)
    if frames[0]["label_space"] == "scannet":
        ids = read_scannet_to_nyu40(tsv)[ids]
    full = table[ids]
    assert set(batch["labels"][0].unique().tolist()) <= set(np.unique(full).tolist())
    assert (batch["labels"] < 20).any()
    if frames[0]["label_space"] == "scannet":
        with pytest.raises(ValueError, match="has ScanNet-id labels .*read_scannet_to_nyu40"):
            ScanNetRGBDCollator(mask3d_image_processor((48, 64)), labels=True)(frames)


def test_fixed_length_restarts_a_short_loader_and_stops_on_time():
    assert list(fixed_length([1, 2, 3], 7)) == [1, 2, 3, 1, 2, 3, 1]
    assert list(fixed_length([1, 2, 3], 2)) == [1, 2]
    with pytest.raises(ValueError, match="no batch on this process"):
        list(fixed_length([], 1))


def test_pretraining_runs_on_rgbd_only_scans_of_either_layout(scannet_root, tmp_path):
    root = tmp_path / "scannet"
    shutil.copytree(scannet_root, root)
    for scan in ("scene0000_00", "scene0001_00"):  # the bare RGB-D export of .sens files: no labels at all
        shutil.rmtree(root / scan / LABEL_FOLDERS[detect_layout(root / scan)])
    output_dir = tmp_path / "run"
    metrics = script("pretrain_mask3d").main([
        "--dataroot", str(root), "--config_name", "tiny", "--output_dir", str(output_dir), "--max_train_steps", "2",
        "--per_device_train_batch_size", "2", "--config_overrides", "depth_mask_ratio=0.5,fusion=add"])
    assert json.loads((output_dir / "metrics.json").read_text()) == pytest.approx(metrics)
    assert {"abs_rel", "rmse", "delta1"} <= set(metrics) and metrics["train_steps"] == 2
    assert (output_dir / "reconstructions.png").stat().st_size > 10_000
    encoder = AutoModel.from_pretrained(output_dir)
    assert type(encoder) is Mask3DModel and encoder.config.fusion == "add" and encoder.config.depth_mask_ratio == 0.5
    card = (output_dir / "README.md").read_text()
    assert "{{" not in card and f"| this model | {metrics['abs_rel']:.4f} |" in card
    with pytest.raises(FileExistsError, match="holds a finished run"):
        script("pretrain_mask3d").main(["--dataroot", str(root), "--config_name", "tiny", "--output_dir",
                                        str(output_dir)])


def test_pretraining_resumes_exactly_where_it_stopped(small_scannet, tmp_path):
    common = ["--dataroot", str(small_scannet), "--config_name", "tiny", "--per_device_train_batch_size", "2",
              "--max_eval_samples", "2"]
    script("pretrain_mask3d").main([*common, "--output_dir", str(tmp_path / "straight"), "--max_train_steps", "5"])
    # Six training frames in batches of two: step 2 stops in the middle of the first epoch.
    script("pretrain_mask3d").main([*common, "--output_dir", str(tmp_path / "resumed"), "--max_train_steps", "2",
                                    "--checkpointing_steps", "2"])
    assert (tmp_path / "resumed" / "step_2").is_dir()
    metrics = script("pretrain_mask3d").main([*common, "--output_dir", str(tmp_path / "resumed"),
                                              "--max_train_steps", "5", "--resume_from_checkpoint", "latest"])
    assert metrics["train_steps"] == 5
    straight = AutoModel.from_pretrained(tmp_path / "straight").state_dict()
    resumed = AutoModel.from_pretrained(tmp_path / "resumed").state_dict()
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_evaluation_refuses_encoder_only_checkpoints_and_existing_metrics(small_scannet, tmp_path):
    Mask3DModel(Mask3DConfig.from_preset("tiny")).save_pretrained(tmp_path / "encoder")
    with pytest.raises(SystemExit, match="holds no Mask3D depth decoder .*encoder-only checkpoint"):
        script("evaluate_mask3d").main(["--model_name_or_path", str(tmp_path / "encoder"), "--dataroot",
                                        str(small_scannet), "--output_dir", str(tmp_path / "eval")])
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text("{}")
    with pytest.raises(SystemExit):
        script("evaluate_mask3d").main(["--model_name_or_path", str(tmp_path / "encoder"), "--dataroot",
                                        str(small_scannet), "--output_dir", str(tmp_path / "eval")])
    assert (tmp_path / "eval" / "metrics.json").read_text() == "{}"


def test_segmentation_finetuning_script_runs_and_reloads(scannet_root, tmp_path):
    tsv = synthetic_label_map(tmp_path / "scannetv2-labels.combined.tsv")
    output_dir = tmp_path / "seg"
    metrics = script("finetune_segmentation").main([
        "--config_name", "tiny", "--dataroot", str(scannet_root), "--output_dir", str(output_dir), "--max_train_steps",
        "2", "--per_device_train_batch_size", "2", "--head_hidden_size", "16", "--auxiliary_channels", "8",
        "--label_map_file", str(tsv)])
    assert len(metrics["per_category_iou"]) == 20 and metrics["per_category_iou"]["wall"] is not None
    model = UperNetForSemanticSegmentation.from_pretrained(output_dir)
    assert model.config.id2label[19] == "otherfurniture" and type(model.backbone).__name__ == "Mask3DBackbone"


@pytest.mark.slow
def test_pretraining_learns_depth_on_held_out_rooms(pretrained):
    """The learning test: AbsRel on the held-out room at most half that of the per-frame mean-depth baseline."""
    metrics = json.loads((pretrained / "metrics.json").read_text())
    assert metrics["num_frames"] == LEARNING_SET.frames and metrics["train_steps"] == 600
    assert metrics["abs_rel"] <= 0.5 * metrics["baseline_abs_rel"], metrics
    assert metrics["delta1"] > metrics["baseline_delta1"]


@pytest.mark.slow
def test_evaluation_script_reproduces_the_pretraining_metrics(pretrained, learning_scannet, tmp_path, capsys):
    capsys.readouterr()
    script("evaluate_mask3d").main(["--model_name_or_path", str(pretrained), "--dataroot", str(learning_scannet),
                                    "--split", "val", "--output_dir", str(tmp_path / "eval")])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = json.loads((pretrained / "metrics.json").read_text())
    for name in ("abs_rel", "rmse", "delta1", "baseline_abs_rel", "num_frames"):
        assert printed[name] == pytest.approx(expected[name], rel=1e-6), name
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["abs_rel"] == printed["abs_rel"]


@pytest.mark.slow
def test_finetuning_the_pretrained_backbone_raises_miou(pretrained, learning_scannet, tmp_path):
    metrics = script("finetune_segmentation").main([
        "--model_name_or_path", str(pretrained), "--dataroot", str(learning_scannet), "--output_dir", str(tmp_path),
        "--max_train_steps", "60", "--learning_rate", "1e-3", "--per_device_train_batch_size", "4",
        "--num_warmup_steps", "5", "--head_hidden_size", "32", "--auxiliary_channels", "16",
        "--evaluate_before_training"])
    assert metrics["mean_iou"] > metrics["initial_mean_iou"] + 0.1, metrics
