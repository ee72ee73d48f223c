"""examples/finetune_bevdet.py, evaluate_bevdet.py and visualize_bevdet.py end to end on synthetic nuScenes: outputs
and their contracts, resume equality, a two-process launch, the Hub upload (mocked), and learning shown by the
devkit's mAP."""

import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

from geomim_hf import GeoMIMConfig, GeoMIMForBEVDetection, GeoMIMImageProcessor
from geomim_hf.data.nuscenes import split_sample_tokens
from geomim_hf.data.synthetic import generate_nuscenes
from geomim_hf.models.bevdet import GeoMIMBEVDetectionConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def micro_config(tmp_path_factory) -> Path:
    """A detector small enough for a training step in a fraction of a second (64 x 192 input, 3.2 m cells)."""
    encoder = GeoMIMConfig(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=[8, 8, 8, 4])
    config = GeoMIMBEVDetectionConfig.from_preset(
        "tiny", encoder, image_size=[64, 192], grid_x=[-51.2, 51.2, 3.2], grid_y=[-51.2, 51.2, 3.2],
        depth_bins=[1.0, 61.0, 4.0], image_neck_channels=16, context_channels=8, bev_encoder_channels=[8, 16, 32],
        bev_neck_channels=16, head_channels=8, task_head_channels=8)
    path = tmp_path_factory.mktemp("configs") / "micro.json"
    config.to_json_file(path)
    return path


def finetune_args(root, spec, output_dir, config, *extra) -> list[str]:
    return ["--dataroot", str(root), "--version", spec.version, "--train_split", "mini_train", "--eval_split",
            "mini_train", "--config_name", str(config), "--output_dir", str(output_dir), "--seed", "3",
            "--dataloader_num_workers", "0", *extra]


def test_finetune_writes_model_processor_metrics_submission_and_card(nuscenes_root, nuscenes_spec, micro_config,
                                                                     tmp_path):
    output_dir = tmp_path / "run"
    load_example("finetune_bevdet").main(finetune_args(nuscenes_root, nuscenes_spec, output_dir, micro_config,
                                                       "--max_train_steps", "2", "--augment", "--ema",
                                                       "--with_tracking", "--report_to", "tensorboard",
                                                       "--logging_steps", "1"))
    assert list(output_dir.glob("finetune_bevdet/**/events.out.tfevents*"))  # the tensorboard log
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert {"mAP", "NDS", "AP_car", "AP_traffic_cone", "mATE"} <= set(metrics) and metrics["steps"] == 2
    submission = json.loads((output_dir / "results_nusc.json").read_text())
    assert set(submission["results"]) == set(split_sample_tokens(nuscenes_root, nuscenes_spec.version, "mini_train"))
    model = GeoMIMForBEVDetection.from_pretrained(output_dir)
    assert model.config.bev_config.image_size == [64, 192]
    assert GeoMIMImageProcessor.from_pretrained(output_dir).size == {"height": 64, "width": 192}
    card = (output_dir / "README.md").read_text()
    assert f"| mAP | {metrics['mAP']:.4f} |" in card and "{{" not in card
    # A finished run is not overwritten by accident.
    with pytest.raises(FileExistsError, match="finished run"):
        load_example("finetune_bevdet").main(finetune_args(nuscenes_root, nuscenes_spec, output_dir, micro_config,
                                                           "--max_train_steps", "1"))


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(nuscenes_root, nuscenes_spec, micro_config,
                                                                   tmp_path):
    script = load_example("finetune_bevdet")
    common = ("--max_train_steps", "6", "--augment", "--eval_split", "none", "--checkpointing_steps", "3")
    script.main(finetune_args(nuscenes_root, nuscenes_spec, tmp_path / "straight", micro_config, *common))
    script.main(finetune_args(nuscenes_root, nuscenes_spec, tmp_path / "resumed", micro_config, *common))
    # Restart the second run from its step-3 state: the steps 4-6 must be the same computation.
    resumed = tmp_path / "resumed"
    (resumed / "metrics.json").unlink()
    script.main(finetune_args(nuscenes_root, nuscenes_spec, resumed, micro_config, *common,
                              "--resume_from_checkpoint", str(resumed / "step_3")))
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    again = load_file(resumed / "model.safetensors")
    assert straight.keys() == again.keys()
    for key in straight:
        torch.testing.assert_close(again[key], straight[key], rtol=0, atol=0, msg=key)
    # and the restart really restarted: a run from scratch with another seed ends elsewhere
    script.main(finetune_args(nuscenes_root, nuscenes_spec, tmp_path / "other", micro_config,
                              "--max_train_steps", "6", "--augment", "--eval_split", "none", "--seed", "4"))
    other = load_file(tmp_path / "other" / "model.safetensors")
    assert not torch.equal(other["head.task_heads.0.outputs.heatmap.1.bias"],
                           straight["head.task_heads.0.outputs.heatmap.1.bias"])


def test_push_to_hub_uploads_model_processor_and_card(nuscenes_root, nuscenes_spec, micro_config, tmp_path):
    output_dir = tmp_path / "run"
    with mock.patch("huggingface_hub.HfApi") as api_class:
        load_example("finetune_bevdet").main(finetune_args(
            nuscenes_root, nuscenes_spec, output_dir, micro_config, "--max_train_steps", "1", "--push_to_hub",
            "--hub_model_id", "someone/bevdet-micro", "--checkpointing_steps", "1"))
    api = api_class.return_value
    api.create_repo.assert_called_once_with("someone/bevdet-micro", exist_ok=True)
    upload = api.upload_folder.call_args.kwargs
    assert upload["repo_id"] == "someone/bevdet-micro" and Path(upload["folder_path"]) == output_dir
    assert "step_*" in upload["ignore_patterns"]
    uploaded = {path.name for path in output_dir.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "metrics.json"} <= uploaded
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert f"| NDS | {metrics['NDS']:.4f} |" in (output_dir / "README.md").read_text()


def spy_on_forward(calls: list):
    """Patches `GeoMIMForBEVDetection.forward` to record the keywords and the loss of every call (the signature stays
    visible, which `model_inputs` reads)."""
    forward = GeoMIMForBEVDetection.forward

    @functools.wraps(forward)
    def recorded(self, *args, **kwargs):
        outputs = forward(self, *args, **kwargs)
        calls.append((set(kwargs), outputs.loss))
        return outputs

    return mock.patch.object(GeoMIMForBEVDetection, "forward", recorded)


def test_evaluate_and_visualize_a_saved_detector(nuscenes_root, nuscenes_spec, micro_config, tmp_path, capsys):
    config = GeoMIMBEVDetectionConfig.from_json_file(micro_config)
    model = GeoMIMForBEVDetection(config)
    model.save_pretrained(tmp_path / "model")
    GeoMIMImageProcessor(size={"height": 64, "width": 192}).save_pretrained(tmp_path / "model")
    calls = []
    with spy_on_forward(calls):
        metrics = load_example("evaluate_bevdet").main([
            "--model_name_or_path", str(tmp_path / "model"), "--dataroot", str(nuscenes_root), "--version",
            nuscenes_spec.version, "--split", "mini_val", "--output_dir", str(tmp_path / "eval"),
            "--dataloader_num_workers", "0"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads((tmp_path / "eval" / "metrics.json").read_text()) == metrics
    assert (tmp_path / "eval" / "results_nusc.json").is_file()
    token = split_sample_tokens(nuscenes_root, nuscenes_spec.version, "mini_val")[0]
    with spy_on_forward(calls):
        picture = load_example("visualize_bevdet").main([
            "--model_name_or_path", str(tmp_path / "model"), "--dataroot", str(nuscenes_root), "--version",
            nuscenes_spec.version, "--sample_token", token, "--output_dir", str(tmp_path / "pictures")])
    assert picture == tmp_path / "pictures" / "detections.png" and picture.stat().st_size > 10_000
    # Neither computes a loss: the batches go in without their training targets (the images and cameras do).
    assert len(calls) == 4 + 1
    for keywords, loss in calls:
        assert loss is None and "gt_labels" not in keywords and {"pixel_values", "camera_to_ego"} <= keywords


def test_two_processes_train_on_different_scenes_and_save_rank_zero(tmp_path, micro_config):
    root = generate_nuscenes(tmp_path / "nuscenes", scenes=4, samples_per_scene=2, sweeps=0, image_size=(192, 64),
                             seed=11, progress=False)
    output_dir = tmp_path / "run"
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(EXAMPLES / "finetune_bevdet.py"), *finetune_args(root, type("S", (), {"version": "v1.0-mini"}),
                                                                     output_dir, micro_config),
               "--max_train_steps", "2", "--eval_split", "none", "--checkpointing_steps", "2"]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # every process printed the scenes it trains on: disjoint, together the whole split (lines may share a terminal
    # line with a progress bar, hence the search)
    scenes = {int(match[0]): json.loads(match[1])
              for match in re.findall(r"process (\d+): training scenes: (\[[^\]]*\])", result.stdout)}
    assert sorted(scenes) == [0, 1] and not set(scenes[0]) & set(scenes[1]), result.stdout[-3000:]
    assert sorted(scenes[0] + scenes[1]) == sorted(split_scenes(root, "mini_train"))
    # both processes end with the same parameters, and the saved model is the main process's state
    digests = {int(match[0]): match[1:] for match in re.findall(
        r"process (\d+): final parameters sha256 ([0-9a-f]{64}), state sha256 ([0-9a-f]{64})\n", result.stdout)}
    assert sorted(digests) == [0, 1] and digests[0][0] == digests[1][0], result.stdout[-3000:]
    finetune = load_example("finetune_bevdet")
    saved = GeoMIMForBEVDetection.from_pretrained(output_dir)
    assert finetune.weights_digest(saved) == digests[0][1]


def split_scenes(root, split):
    from geomim_hf.data.nuscenes import scenes_of_split

    return scenes_of_split(str(root.resolve()), "v1.0-mini", split)


@pytest.mark.slow
def test_tiny_preset_learns_the_scenes_it_trained_on(nuscenes_root, nuscenes_spec, tmp_path):
    """Learning shown by the official metric, not a falling loss: a detector with boxes in a wrong frame, a wrong yaw
    convention or swapped sizes trains happily and scores zero. The `tiny` preset, trained by the example script
    with `accelerate launch` for 100 steps on the 4 samples of mini_train, must reach devkit mAP >= 0.5 on them."""
    output_dir = tmp_path / "tiny"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(EXAMPLES / "finetune_bevdet.py"),
               "--dataroot", str(nuscenes_root), "--version", nuscenes_spec.version, "--train_split", "mini_train",
               "--eval_split", "mini_train", "--config_name", "tiny", "--max_train_steps", "100",
               "--num_warmup_steps", "10", "--output_dir", str(output_dir),
               # An epoch here is 2 steps: a worker process started for every epoch's loader would double the run.
               "--dataloader_num_workers", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((output_dir / "metrics.json").read_text())
    print({key: round(value, 3) for key, value in metrics.items() if isinstance(value, float)})
    assert metrics["mAP"] >= 0.5, metrics


def test_layer_decay_ids_are_bevdets_on_the_detectors_parameter_names():
    """BEVDet's LayerDecayOptimizerConstructor: embeddings 0, block j of stage i sum(depths[:i]) + j + 1, the merging
    after stage i the id of stage i + 1's first block, the rest sum(depths) + 1 (here depths [1, 1, 2, 1]: 6)."""
    script = load_example("finetune_bevdet")
    model = GeoMIMForBEVDetection(GeoMIMBEVDetectionConfig.from_preset("tiny"))
    names = {name for name, _ in model.named_parameters()}
    encoder = "bev_model.encoder.geomim."
    expected = {
        encoder + "embeddings.patch_embeddings.projection.weight": 0,
        encoder + "embeddings.position_embeddings": 0,
        encoder + "encoder.layers.0.blocks.0.mlp.fc1.weight": 1,
        encoder + "encoder.layers.2.blocks.1.attention.q_proj.weight": 1 + 1 + 1 + 1,
        encoder + "encoder.layers.1.downsample.reduction.weight": 1 + 1 + 1,
        encoder + "hidden_states_norms.stage4.weight": 6,
        "bev_model.image_neck.fuse1.conv.weight": 6,
        "head.task_heads.0.outputs.heatmap.1.bias": 6,
    }
    assert set(expected) <= names
    depths = model.config.bev_config.encoder_config.depths
    assert {name: script.swin_layer_id(name, depths) for name in expected} == expected
