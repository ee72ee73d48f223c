"""Conversion of released BEVDet / BEVDet4D detectors, proven against the independent reference of the original.

`bevdet_checkpoint.py` writes random checkpoints in the original key layout; `bevdet_reference.py` runs the original
detector functionally on them (BEVDet's own geometry, `.long()` voxel indexing, a brute-force pooling sum). The
converted `GeoMIMForBEVDetection` must give the same raw head outputs.
"""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from bevdet_checkpoint import SIX_TASKS, DetectorSpec, random_batch, random_state_dict, save_checkpoint
from bevdet_reference import LSSSettings, bevdet_forward

from geomim_hf import GeoMIMForBEVDetection, GeoMIMImageProcessor
from geomim_hf.checkpoint_conversion import CheckpointConversionError, load_checkpoint_file
from geomim_hf.models.bevdet.conversion_bevdet import convert_detector_checkpoint

SCRIPT = Path(__file__).resolve().parent.parent / "conversion" / "convert_bevdet_to_hf.py"
SMALL = LSSSettings(x=(-51.2, 51.2, 3.2), y=(-51.2, 51.2, 3.2), input_size=(64, 192))
SMALL_PRESET = {"image_size": [64, 192], "feature_stride": 16, "grid_x": [-51.2, 51.2, 3.2],
                "grid_y": [-51.2, 51.2, 3.2], "grid_z": [-5.0, 3.0, 8.0], "depth_bins": [1.0, 60.0, 1.0],
                "legacy_voxel_truncation": True}


def load_script():
    spec = importlib.util.spec_from_file_location("convert_bevdet_to_hf", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_inputs(batch: dict[str, torch.Tensor], temporal: bool) -> dict[str, torch.Tensor]:
    """The reference's arguments as GeoMIMForBEVDetection's: BEVDet's 3x3 bda as a 4x4 BEV augmentation."""
    bev_augmentation = torch.eye(4).repeat(batch["bda"].shape[0], 1, 1)
    bev_augmentation[:, :3, :3] = batch["bda"]
    inputs = {"pixel_values": batch["images"], "camera_intrinsics": batch["intrinsics"],
              "camera_to_ego": batch["sensor2keyego"], "post_rot": batch["post_rots"],
              "post_tran": batch["post_trans"], "bev_augmentation": bev_augmentation}
    if temporal:
        inputs |= {"previous_pixel_values": batch["previous_images"],
                   "previous_camera_to_ego": batch["previous_sensor2keyego"]}
    return inputs


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


SPECS = {
    "geomim-4d-1task": DetectorSpec(),
    "geomim-single-frame-1task": DetectorSpec(temporal=False),
    "geomim-4d-6tasks": DetectorSpec(tasks=SIX_TASKS),
    "baseline-4d-1task": DetectorSpec(absolute_position=False),
    "geomim-single-frame-6tasks": DetectorSpec(temporal=False, tasks=SIX_TASKS),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_converted_detector_matches_the_original(name, tmp_path):
    spec = SPECS[name]
    state_dict = random_state_dict(spec, seed=3)
    path = save_checkpoint(state_dict, tmp_path / "detector.pth", layout="ema" if spec.temporal else "released")
    model, report = convert_detector_checkpoint(load_checkpoint_file(path), SMALL_PRESET)
    assert model.config.bev_config.encoder_config.shift_windows == spec.shifted_windows
    assert model.config.bev_config.num_previous_frames == int(spec.temporal)
    assert [tuple(task) for task in model.config.tasks] == [tuple(task) for task in spec.tasks]
    assert not report.missing and not report.unexpected

    batch = random_batch(batch=2, image_size=SMALL.input_size, seed=5, temporal=spec.temporal)
    with torch.no_grad():
        expected = bevdet_forward(state_dict, **batch, shifted_windows=spec.shifted_windows, settings=SMALL)
        outputs = model(**model_inputs(batch, spec.temporal))
    assert len(outputs.head_outputs) == len(expected.tasks)
    for task, (ours, theirs) in enumerate(zip(outputs.head_outputs, expected.tasks)):
        for output_name, reference in theirs.items():
            error = relative_error(ours[output_name], reference)
            assert error < 1e-4, f"task {task} {output_name}: relative error {error:.2e}"
    torch.testing.assert_close(outputs.depth_probabilities, expected.depth, atol=1e-5, rtol=1e-4)


def test_voxel_truncation_matters(tmp_path):
    spec = DetectorSpec()
    state_dict = random_state_dict(spec, seed=3)
    model, _ = convert_detector_checkpoint({"state_dict": state_dict}, SMALL_PRESET)
    floor_config = copy.deepcopy(model.config)
    floor_config.bev_config.legacy_voxel_truncation = False
    floor_model = GeoMIMForBEVDetection(floor_config).eval()
    floor_model.load_state_dict(model.state_dict())
    batch = random_batch(batch=1, image_size=SMALL.input_size, seed=5)
    with torch.no_grad():
        expected = bevdet_forward(state_dict, **batch, shifted_windows=False, settings=SMALL)
        floored = floor_model(**model_inputs(batch, temporal=True))
    assert relative_error(floored.head_outputs[0]["heatmap"], expected.tasks[0]["heatmap"]) > 1e-2


def test_script_writes_a_loadable_folder_with_the_bgr_processor_and_a_card(tmp_path):
    spec = DetectorSpec()
    path = save_checkpoint(random_state_dict(spec, seed=1), tmp_path / "bevdet-geomim.pth")
    output_dir = tmp_path / "converted"
    load_script().main(["--checkpoint", str(path), "--output_dir", str(output_dir)])
    model = GeoMIMForBEVDetection.from_pretrained(output_dir)
    assert model.config.bev_config.legacy_voxel_truncation and model.config.bev_config.image_size == [256, 704]
    assert GeoMIMImageProcessor.from_pretrained(output_dir).channel_order == "bgr"
    card = (output_dir / "README.md").read_text()
    assert "GeoMIM Swin-B BEVDet4D" in card and "Conversion record" in card and "{{" not in card
    direct, _ = convert_detector_checkpoint(load_checkpoint_file(path))
    for key, value in direct.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_baseline_and_geomim_are_told_apart_and_carded(tmp_path):
    baseline = save_checkpoint(random_state_dict(DetectorSpec(absolute_position=False)), tmp_path / "baseline.pth")
    model, report = convert_detector_checkpoint(load_checkpoint_file(baseline), SMALL_PRESET)
    encoder_config = model.config.bev_config.encoder_config
    assert encoder_config.shift_windows and not encoder_config.use_absolute_embeddings
    card = load_script().render_card(model.config, report, baseline, "bevdet4d-swinb-256x704", "someone/baseline")
    assert "ImageNet Swin-B BEVDet4D baseline" in card and "shifted windows" in card


def corrupt(name: str, state_dict: dict) -> dict:
    state_dict = dict(state_dict)
    if name == "unknown key":
        state_dict["pts_bbox_head.task_heads.0.heatmap.2.weight"] = torch.zeros(1)
    elif name == "missing key":
        del state_dict["img_bev_encoder_neck.up2.2.running_var"]
    elif name == "shape mismatch":
        state_dict["img_view_transformer.depth_net.bias"] = torch.zeros(5)
    elif name == "not a detector":
        state_dict = {key: value for key, value in state_dict.items() if key.startswith("img_backbone.")}
    elif name == "missing swin block":
        state_dict = {key: value for key, value in state_dict.items() if ".stages.2.blocks.0." not in key}
    return state_dict


@pytest.mark.parametrize("name, message", [
    ("unknown key", r"Unknown key 'pts_bbox_head.task_heads.0.heatmap.2.weight'"),
    ("missing key", r"missing keys \['bev_model.bev_encoder.neck.up_fuse.norm.running_var'\]"),
    ("shape mismatch", r"bev_model.view_transform.depth_net.bias: checkpoint \(5,\)"),
    ("not a detector", r"Not a BEVDet detector checkpoint"),
    ("missing swin block", r"Stage 2 of the checkpoint has blocks \[1\]: blocks \[0\] are missing"),
])
def test_conversion_errors_name_the_problem(name, message):
    with pytest.raises(CheckpointConversionError, match=message):
        convert_detector_checkpoint({"state_dict": corrupt(name, random_state_dict(DetectorSpec()))}, SMALL_PRESET)


def test_script_refuses_a_damaged_released_size(tmp_path, capsys):
    # Swin-B widths with one block missing from stage 3: a truncated file, not an architecture.
    spec = DetectorSpec(embed_dim=128, depths=(2, 2, 17, 2), heads=(4, 8, 16, 32), windows=(16, 16, 16, 8),
                        neck_channels=16, bev_channels=8, bev_neck_channels=16, share_conv_channels=8,
                        head_conv_channels=8)
    path = save_checkpoint(random_state_dict(spec), tmp_path / "damaged.pth")
    with pytest.raises(SystemExit, match=r"width of Swin base, but depths \[2, 2, 17, 2\]"):
        load_script().main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
