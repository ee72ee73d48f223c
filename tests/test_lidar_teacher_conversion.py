"""bevfusion LiDAR checkpoints -> GeoMIMLidarTeacher: checkpoints built here in the original key layout, both spconv
kernel layouts, strictness, the script and its random-teacher mode."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from sparse_encoder_reference import PREFIX, bevfusion_state_dict, dense_reference_bev, to_spconv2
from test_lidar_teacher import TINY_CHANNELS, TINY_GRID, random_points
from transformers import AutoModel

from geomim_hf import GeoMIMLidarTeacher
from geomim_hf.checkpoint_conversion import CheckpointConversionError
from geomim_hf.models.lidar_teacher.conversion_lidar_teacher import (
    SPCONV1_TO_SPCONV2,
    STEP_COUNTERS,
    convert_lidar_teacher_checkpoint,
    convert_lidar_teacher_state_dict,
)

SCRIPT = Path(__file__).resolve().parent.parent / "conversion" / "convert_bevfusion_lidar_teacher.py"
# Parts of a bevfusion detector that are not the teacher (one key each).
NOT_THE_TEACHER = ("encoders.camera.backbone.patch_embed.projection.weight", "decoder.backbone.blocks.0.0.weight",
                   "decoder.neck.deblocks.0.1.weight", "heads.object.heatmap_head.1.weight")


def load_script():
    spec = importlib.util.spec_from_file_location("convert_bevfusion_lidar_teacher", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def detector_checkpoint(encoder: dict[str, torch.Tensor]) -> dict:
    """A whole detector as bevfusion's runner saves it: meta, and the state dict with every branch."""
    state = {PREFIX + key: value for key, value in encoder.items()}
    state |= {key: torch.zeros(3, 2) for key in NOT_THE_TEACHER}
    return {"meta": {"epoch": 20}, "state_dict": state}


@pytest.fixture(scope="module")
def spconv1_encoder() -> dict[str, torch.Tensor]:
    return bevfusion_state_dict(**TINY_CHANNELS, seed=5)


@pytest.fixture(scope="module")
def points() -> torch.Tensor:
    generator = np.random.default_rng(4)
    return torch.from_numpy(np.stack([random_points(generator, 2000), random_points(generator, 2000)]))


def test_both_kernel_layouts_convert_to_the_same_teacher(spconv1_encoder, points):
    teacher1, report1 = convert_lidar_teacher_checkpoint(detector_checkpoint(spconv1_encoder), **TINY_GRID)
    teacher2, report2 = convert_lidar_teacher_checkpoint(detector_checkpoint(to_spconv2(spconv1_encoder)),
                                                         **TINY_GRID)
    assert (report1.source_layout, report2.source_layout) == ("spconv1", "spconv2")
    assert report1.dropped.keys() == {"outside encoders.lidar.backbone"} and report1.prefix == PREFIX
    assert sorted(report1.dropped["outside encoders.lidar.backbone"]) == sorted(NOT_THE_TEACHER)
    assert len(report1.converted) == len(spconv1_encoder)
    kernels = sorted(key for key in teacher1.state_dict() if key.endswith("convolution.weight"))
    assert sorted(report1.transformed[SPCONV1_TO_SPCONV2]) == kernels and not report2.transformed
    state1, state2 = teacher1.state_dict(), teacher2.state_dict()
    assert all(torch.equal(state1[key], state2[key]) for key in state1)
    assert teacher1.config.encoder_channels == TINY_CHANNELS["encoder_channels"]
    assert teacher1.config.base_channels == 4 and teacher1.config.output_channels == 6
    with torch.no_grad():
        bev1, bev2 = teacher1(points).bev_features, teacher2(points).bev_features
    assert bev1.abs().sum() > 0 and torch.equal(bev1, bev2)
    # Each layout against the network evaluated densely from the original (spconv 1.x) weights.
    reference = dense_reference_bev(spconv1_encoder, teacher2.config, points)
    torch.testing.assert_close(bev2.double(), reference, rtol=1e-4, atol=1e-5)


def test_a_bare_encoder_state_dict_and_missing_step_counters_are_accepted(spconv1_encoder):
    bare = {key: value for key, value in spconv1_encoder.items() if not key.endswith("num_batches_tracked")}
    teacher, report = convert_lidar_teacher_checkpoint(bare, **TINY_GRID)
    assert report.prefix == "" and report.initialised.keys() == {STEP_COUNTERS}
    assert len(report.initialised[STEP_COUNTERS]) == 2 + 3 + 8 * 2  # in, out, 3 downsamples, 8 blocks
    assert all(key.endswith("num_batches_tracked") for key in report.initialised[STEP_COUNTERS])
    assert not any(teacher.state_dict()[key] for key in report.initialised[STEP_COUNTERS])


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update({PREFIX + "encoder_layers.encoder_layer1.0.conv3.weight": torch.zeros(1)}),
     "Unknown key 'encoder_layers.encoder_layer1.0.conv3.weight'"),
    (lambda s: s.pop(PREFIX + "encoder_layers.encoder_layer2.1.bn2.running_var"),
     r"missing keys \['encoder.stages.1.blocks.1.conv_layer2.normalization.running_var'\]"),
    (lambda s: s.update({PREFIX + "conv_out.1.running_mean": torch.zeros(7)}),
     r"conv_out.normalization.running_mean: checkpoint \(7,\), model \(6,\)"),
    (lambda s: s.update({PREFIX + "conv_out.0.weight": s[PREFIX + "conv_out.0.weight"].permute(4, 0, 1, 2, 3)}),
     "conv_out.convolution.weight of shape .* fits neither spconv 1.x"),
])
def test_bad_checkpoints_stop_the_conversion_naming_the_key(spconv1_encoder, edit, message):
    checkpoint = detector_checkpoint(spconv1_encoder)
    edit(checkpoint["state_dict"])
    with pytest.raises(CheckpointConversionError, match=message):
        convert_lidar_teacher_checkpoint(checkpoint, **TINY_GRID)


def test_a_checkpoint_without_a_lidar_encoder_is_rejected():
    with pytest.raises(CheckpointConversionError, match="No LiDAR SparseEncoder found"):
        convert_lidar_teacher_state_dict({"model": {"patch_embed.proj.weight": torch.zeros(1)}})


def test_script_writes_a_teacher_folder_with_the_report(spconv1_encoder, points, tmp_path):
    checkpoint = tmp_path / "lidar-only-det.pth"
    torch.save(detector_checkpoint(spconv1_encoder), checkpoint)
    output = tmp_path / "teacher"
    load_script().main(["--checkpoint", str(checkpoint), "--output_dir", str(output),
                        "--point_cloud_range", *map(str, TINY_GRID["point_cloud_range"]),
                        "--voxel_size", *map(str, TINY_GRID["voxel_size"])])
    teacher = AutoModel.from_pretrained(output)
    assert isinstance(teacher, GeoMIMLidarTeacher) and teacher.config.point_cloud_range == TINY_GRID[
        "point_cloud_range"]
    card = (output / "README.md").read_text()
    assert "Source: spconv1 layout, prefix encoders.lidar.backbone." in card
    kernels = sum(tensor.ndim == 5 for tensor in spconv1_encoder.values())
    assert f"Transformed, {SPCONV1_TO_SPCONV2}: {kernels} [conv_input.convolution (1)" in card
    assert "Dropped, outside encoders.lidar.backbone: 4 [decoder.backbone (1), decoder.neck (1), encoders.camera " \
           "(1), heads.object (1)]" in card
    assert "SHA-256" in card and "{{" not in card
    expected, _ = convert_lidar_teacher_checkpoint(detector_checkpoint(spconv1_encoder), **TINY_GRID)
    with torch.no_grad():
        assert torch.equal(teacher(points).bev_features, expected(points).bev_features)


def test_script_refuses_to_overwrite_and_writes_nothing_on_a_bad_checkpoint(spconv1_encoder, tmp_path):
    script = load_script()
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("user data")
    with pytest.raises(SystemExit):
        script.main(["--random_init", "small_grid", "--output_dir", str(occupied)])
    assert [path.name for path in occupied.iterdir()] == ["keep.txt"]

    checkpoint = detector_checkpoint(spconv1_encoder)
    checkpoint["state_dict"][PREFIX + "conv_input.2.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(checkpoint, path)
    with pytest.raises(SystemExit, match="Unknown key 'conv_input.2.weight'"):
        script.main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_script_writes_a_seeded_random_teacher(tmp_path):
    script = load_script()
    for name in ("a", "b"):
        script.main(["--random_init", "small_grid", "--seed", "7", "--output_dir", str(tmp_path / name)])
    first, second = (AutoModel.from_pretrained(tmp_path / name) for name in ("a", "b"))
    assert first.config.initializer_seed == 7 and first.config.bev_shape == (128, 45, 45)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    card = (tmp_path / "a" / "README.md").read_text()
    assert "**random** weights" in card and "torch.manual_seed(7)" in card and "| BEV map | (128, 45, 45)" in card
