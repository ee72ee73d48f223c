"""Conversion of GeoMIM (mmdet layout) and Swin (official / timm) checkpoints, proven against independent forwards.

The GeoMIM parity check uses `mmdet_swin_reference.MMDetGeoMIMSwin`, a plain re-implementation of the original
encoder (mmcv cannot be installed here), saved as a pretraining checkpoint with GeoMIM's prefixes and
pretraining-only keys and converted by the script. The Swin check uses timm itself.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import timm
import torch
from transformers import AutoImageProcessor
from mmdet_swin_reference import MMDetGeoMIMSwin, PatchMerging

from geomim_hf import GeoMIMConfig, GeoMIMImageProcessor, GeoMIMModel
from geomim_hf.checkpoint_conversion import CheckpointConversionError, ConversionReport, load_checkpoint_file
from geomim_hf.models.geomim.conversion_geomim import (
    convert_checkpoint,
    convert_state_dict,
    grouped_to_unfold_channels,
    released_swin_size,
    unfold_to_grouped_channels,
)
from geomim_hf.models.geomim.modeling_geomim import GeoMIMPatchMerging

SCRIPT = Path(__file__).resolve().parent.parent / "conversion" / "convert_geomim_swin_to_hf.py"
GEOMIM_PREFIX = "encoders.camera.backbone."


def load_script():
    spec = importlib.util.spec_from_file_location("convert_geomim_swin_to_hf", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def perturb_(module: torch.nn.Module, scale: float = 0.05) -> None:
    """Moves every weight away from its default so that LayerNorm and bias mix-ups cannot hide."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * scale)


# One key of each pretraining-only module of GeoMIM (geomim.md 8.3), then the parts outside the camera backbone.
PRETRAINING_ONLY_KEYS = (
    "mask_token", "decoder_pos_embed", "decoder_embed_new.weight", "up_p4_fc.weight", "up_smooth_p4.norm1.weight",
    "final_norm.bias", "decoder_blocks.7.attn.qkv.weight", "decoder_norm.weight", "decoder_blocks_pix.3.mlp.fc2.bias",
    "decoder_norm_pix.weight", "cam_pose.bn.running_mean", "decoder_cross_module.2.attn.proj.weight",
)
OUTSIDE_CAMERA_BACKBONE = ("encoders.camera.vtransform.frustum", "encoders.lidar.backbone.conv_input.0.weight",
                           "prediction_head.weight")


@pytest.fixture(scope="module")
def reference() -> MMDetGeoMIMSwin:
    torch.manual_seed(0)
    model = MMDetGeoMIMSwin(embed_dim=16, depths=(2, 2, 2, 2), heads=(1, 2, 2, 4)).eval()
    perturb_(model)
    return model


@pytest.fixture(scope="module")
def pretraining_checkpoint(reference, tmp_path_factory) -> Path:
    """The reference saved as GeoMIM's pretraining runner saves: meta, prefixed state_dict, optimizer."""
    state_dict = {GEOMIM_PREFIX + key: value for key, value in reference.state_dict().items()}
    state_dict |= {GEOMIM_PREFIX + key: torch.zeros(2, 3) for key in PRETRAINING_ONLY_KEYS}
    state_dict |= {key: torch.zeros(2, 3) for key in OUTSIDE_CAMERA_BACKBONE}
    path = tmp_path_factory.mktemp("checkpoints") / "geomim_tiny.pth"
    torch.save({"meta": {"epoch": 50, "mmcv_version": "1.4.0"}, "state_dict": state_dict,
                "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4}]}}, path)
    return path


@pytest.fixture(scope="module")
def converted_dir(pretraining_checkpoint, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("converted") / "geomim-tiny"
    load_script().main(["--checkpoint", str(pretraining_checkpoint), "--output_dir", str(output_dir)])
    return output_dir


def test_unfold_reorder_is_invertible_and_matches_mmdet_patch_merging():
    weights = torch.randn(6, 12)
    torch.testing.assert_close(grouped_to_unfold_channels(unfold_to_grouped_channels(weights)), weights)
    assert not torch.equal(unfold_to_grouped_channels(weights), weights)

    torch.manual_seed(0)
    mmdet_merging = PatchMerging(3)
    perturb_(mmdet_merging)
    merging = GeoMIMPatchMerging(GeoMIMConfig(), dim=3)
    mmdet_weights = mmdet_merging.state_dict()
    merging.load_state_dict({key: unfold_to_grouped_channels(value) for key, value in mmdet_weights.items()})
    grid = torch.randn(2, 5, 7, 3)  # odd sizes: both pad
    expected, height, width = mmdet_merging(grid.flatten(1, 2), 5, 7)
    torch.testing.assert_close(merging(grid), expected.view(2, height, width, 6))


def test_script_writes_a_model_folder_with_the_conversion_report(converted_dir):
    assert sorted(path.name for path in converted_dir.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    processor = AutoImageProcessor.from_pretrained(converted_dir)  # a pretraining checkpoint: true RGB input
    assert isinstance(processor, GeoMIMImageProcessor) and processor.channel_order == "rgb"
    card = (converted_dir / "README.md").read_text()  # the generic card: tiny widths are no released GeoMIM size
    assert "## Conversion record" in card and "geomim_tiny.pth" in card and "{{" not in card
    assert "Missing: 0" in card and "Unexpected: 0" in card
    # Every source key accounted for: 122 converted + 12 + 3 + 8 dropped.
    assert "Source: mmdet layout, prefix encoders.camera.backbone., 145 tensors" in card
    assert "Converted: 122 source tensors -> 154 GeoMIMModel tensors" in card  # qkv splits in three
    assert "Transformed, split_fused_qkv: 48 [encoder.layers (48)]" in card
    assert f"Dropped, GeoMIM pretraining only: {len(PRETRAINING_ONLY_KEYS)}" in card
    outside = "Dropped, outside encoders.camera.backbone: 3 [encoders.camera (1), encoders.lidar (1), " \
              "prediction_head (1)]"
    assert outside in card
    assert "Dropped, derived buffer, rebuilt from the window size: 8 [stages (8)]" in card
    assert "Transformed, unfold_to_grouped_channels: 9 [encoder.layers (9)]" in card  # patch-merging channel order


def test_converted_geomim_matches_the_reference_on_six_cameras(reference, converted_dir):
    model, loading_info = GeoMIMModel.from_pretrained(converted_dir, output_loading_info=True)
    assert all(not keys for keys in loading_info.values())
    assert model.config.window_size == [16, 16, 16, 8] and not model.config.shift_windows
    torch.manual_seed(1)
    cameras = torch.randn(1, 6, 3, 256, 704)
    with torch.no_grad():
        expected = reference(cameras[0])  # normed stage 2 (16 x 44) and stage 3 (8 x 22) outputs
        actual = model.eval()(cameras).feature_maps
    assert [tuple(feature_map.shape) for feature_map in actual] == [(1, 6, 64, 16, 44), (1, 6, 128, 8, 22)]
    for expected_map, actual_map in zip(expected, actual, strict=True):
        torch.testing.assert_close(actual_map[0], expected_map, rtol=0, atol=1e-4)


def test_every_container_and_prefix_of_the_original_loader_converts_the_same(reference):
    encoder = reference.state_dict()
    _, expected, _ = convert_state_dict({"state_dict": {GEOMIM_PREFIX + key: value for key, value in encoder.items()}})
    bevdet_detector = {"img_backbone." + key: value for key, value in encoder.items()}
    bevdet_detector |= {"img_neck.conv.weight": torch.zeros(1), "pts_bbox_head.task_heads.0.reg.bias": torch.zeros(1)}
    forms = {
        "img_backbone.": {"state_dict": bevdet_detector, "meta": {}},  # a finetuned BEVDet detector
        "backbone.": {"model": {"backbone." + key: value for key, value in encoder.items()}},  # an mmdet detector
        GEOMIM_PREFIX: {"module." + GEOMIM_PREFIX + key: value for key, value in encoder.items()},  # DDP, no container
        "": dict(encoder),  # a bare backbone
    }
    for prefix, checkpoint in forms.items():
        _, converted, report = convert_state_dict(checkpoint)
        assert report.prefix == prefix
        assert converted.keys() == expected.keys(), prefix
        assert all(torch.equal(converted[key], expected[key]) for key in expected), prefix


def test_unknown_key_stops_the_conversion_naming_it(reference):
    state_dict = {GEOMIM_PREFIX + key: value for key, value in reference.state_dict().items()}
    state_dict[GEOMIM_PREFIX + "stages.1.blocks.0.attn.w_msa.gate.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointConversionError, match=re.escape("'stages.1.blocks.0.attn.w_msa.gate.weight'")):
        convert_state_dict(state_dict)


def test_missing_key_and_shape_mismatch_stop_the_conversion_naming_them(reference):
    encoder = dict(reference.state_dict())
    without_norm = {key: value for key, value in encoder.items() if key != "stages.1.blocks.0.norm2.weight"}
    with pytest.raises(CheckpointConversionError, match=r"missing keys \['encoder.layers.1.blocks.0.layernorm_after"):
        convert_checkpoint(without_norm)

    wrong_window = encoder | {"stages.0.blocks.1.attn.w_msa.relative_position_bias_table": torch.zeros(225, 1)}
    expected = "encoder.layers.0.blocks.1.attention.relative_position_bias.relative_position_bias_table: "
    with pytest.raises(CheckpointConversionError, match=re.escape(expected + "checkpoint (225, 1), model (961, 1)")):
        convert_checkpoint(wrong_window)


@pytest.mark.parametrize(
    "checkpoint, message",
    [
        ({"state_dict": {"encoders.lidar.backbone.conv_input.0.weight": torch.zeros(1)}}, "No Swin patch embedding"),
        ({"state_dict": {"patch_embed.projection.weight": "not a tensor"}}, "is a str, not a tensor"),
    ],
)
def test_checkpoints_without_a_swin_encoder_are_rejected(checkpoint, message):
    with pytest.raises(CheckpointConversionError, match=message):
        convert_state_dict(checkpoint)


def test_checkpoint_files_are_loaded_with_weights_only(tmp_path):
    path = tmp_path / "pickled_object.pth"
    torch.save({"state_dict": {}, "meta": ConversionReport("GeoMIMModel", "mmdet")}, path)
    with pytest.raises(CheckpointConversionError, match="weights_only=True"):
        load_checkpoint_file(path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint_file(tmp_path / "missing.pth")


def test_a_truncated_checkpoint_file_is_named(pretraining_checkpoint, tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(pretraining_checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointConversionError, match="truncated.pth is not a readable checkpoint"):
        load_checkpoint_file(truncated)


def test_script_refuses_a_non_empty_output_dir_a_missing_file_and_a_wrong_variant(
    pretraining_checkpoint, converted_dir, tmp_path, capsys
):
    script = load_script()
    with pytest.raises(SystemExit):
        script.main(["--checkpoint", str(pretraining_checkpoint), "--output_dir", str(converted_dir)])
    assert "is not empty; pass --overwrite_output_dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--checkpoint", str(tmp_path / "nope.pth"), "--output_dir", str(tmp_path / "out")])
    assert "nope.pth is not a file" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--variant base expects GeoMIM Swin-Base"):
        script.main(["--checkpoint", str(pretraining_checkpoint), "--output_dir", str(tmp_path / "out"),
                     "--variant", "base"])
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_script_reports_an_unknown_key_and_writes_nothing(reference, tmp_path):
    state_dict = {GEOMIM_PREFIX + key: value for key, value in reference.state_dict().items()}
    state_dict[GEOMIM_PREFIX + "norm.weight"] = torch.zeros(128)
    torch.save({"state_dict": state_dict}, tmp_path / "odd.pth")
    with pytest.raises(SystemExit, match="Unknown key 'norm.weight'"):
        load_script().main(["--checkpoint", str(tmp_path / "odd.pth"), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_script_overwrites_and_pushes_the_folder_when_asked(pretraining_checkpoint, tmp_path, hub_uploads):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "stale.txt").write_text("old")
    load_script().main(["--checkpoint", str(pretraining_checkpoint), "--output_dir", str(output_dir),
                        "--overwrite_output_dir", "--push_to_hub", "someone/geomim-tiny"])
    written = ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    assert hub_uploads == [
        {"create_repo": "someone/geomim-tiny", "exist_ok": True},
        {"upload_folder": "someone/geomim-tiny", "folder": output_dir, "files": written,
         "commit_message": "Add geomim_tiny.pth converted to GeoMIMModel", "ignore_patterns": None},
    ]  # the user's own file stays local
    assert sorted(path.name for path in output_dir.iterdir()) == sorted(written + ["stale.txt"])


def test_released_sizes_get_their_model_card():
    script = load_script()
    mmdet = ConversionReport("GeoMIMModel", source_layout="mmdet", prefix=GEOMIM_PREFIX)
    large = GeoMIMConfig(embed_dim=192, num_heads=[6, 12, 24, 48])
    assert script.geomim_variant(GeoMIMConfig(), mmdet) == "base"
    assert script.geomim_variant(large, mmdet) == "large"
    assert script.geomim_variant(GeoMIMConfig(shift_windows=True), mmdet) is None
    assert script.geomim_variant(GeoMIMConfig(), ConversionReport("GeoMIMModel", "swin")) is None

    card = script.render_model_card("base", "## Conversion record\n\nsource: geomim_base.pth")
    assert "| bevdet-swinb-4d-256x704-cbgs-geomim | GeoMIM Swin-B | 42.25 | 53.1 |" in card
    assert card.rstrip().endswith("source: geomim_base.pth") and "{{" not in card
    assert "| bevdet-occ-swinl-4d-stereo-2x-geomim | 46.27 |" in script.render_model_card("large", "record")


@pytest.fixture(scope="module")
def timm_swin() -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
        window_size=8, img_size=(256, 512), always_partition=True, num_classes=5,
    ).eval()
    perturb_(model)
    return model


def official_swin_layout(timm_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm >= 0.9 keys back in the official Microsoft layout: merging at the end of a stage, `head.*`."""
    def previous_stage(match: re.Match) -> str:
        return f"layers.{int(match.group(1)) - 1}.downsample."

    official = {re.sub(r"^layers\.(\d+)\.downsample\.", previous_stage, key).replace("head.fc.", "head."): value
                for key, value in timm_state_dict.items()}
    official["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(64, 64, dtype=torch.long)
    official["layers.0.blocks.1.attn_mask"] = torch.zeros(128, 64, 64)
    return official


def test_timm_swin_converts_with_shifted_windows_and_matches_timm(timm_swin):
    model, report = convert_checkpoint(timm_swin.state_dict())
    assert model.config.shift_windows and model.config.window_size == [8, 8, 8, 8]
    assert not model.config.use_absolute_embeddings
    assert report.dropped == {"ImageNet classifier": ["head.fc.weight", "head.fc.bias"]}
    assert report.initialised == {"identity LayerNorm: weight 1, bias 0": ["hidden_states_norms.stage3.weight",
                                                                           "hidden_states_norms.stage3.bias"]}

    # timm shifts before padding, transformers and mmdet pad before shifting: compare on sizes that need no padding.
    torch.manual_seed(1)
    cameras = torch.randn(1, 6, 3, 256, 512)
    with torch.no_grad():
        stage3, _ = timm_swin.forward_intermediates(cameras[0], indices=[2, 3], intermediates_only=True, norm=False)
        final = timm_swin.forward_features(cameras[0])  # last stage after timm's final norm, channel-last
        outputs = model(cameras, output_hidden_states=True)
    torch.testing.assert_close(outputs.feature_maps[1][0], final.permute(0, 3, 1, 2), rtol=0, atol=1e-4)
    # The stride-16 norm starts as the identity, so its LayerNorm-standardised map is what timm's stage 3 gives.
    torch.testing.assert_close(outputs.hidden_states[3].permute(0, 3, 1, 2), stage3, rtol=0, atol=1e-4)
    expected_stage3 = torch.nn.functional.layer_norm(stage3.permute(0, 2, 3, 1), (64,)).permute(0, 3, 1, 2)
    torch.testing.assert_close(outputs.feature_maps[0][0], expected_stage3, rtol=0, atol=1e-4)

    _, official, _ = convert_state_dict({"model": official_swin_layout(timm_swin.state_dict())})
    converted = model.state_dict()
    assert official.keys() == converted.keys()
    assert all(torch.equal(official[key], converted[key]) for key in converted)


def test_mmdet_encoder_without_position_embedding_is_the_shifted_window_baseline():
    """BEVDet's `SwinTransformerOri` (the ImageNet baseline of GeoMIM's table) has no absolute position embedding and
    shifts its windows; `auto` must infer the shift, or the outputs are off by ~1."""
    torch.manual_seed(1)
    baseline = MMDetGeoMIMSwin(embed_dim=16, depths=(2, 2, 2, 2), heads=(1, 2, 2, 4), windows=(4, 4, 4, 2),
                               absolute_position=False, shift_windows=True).eval()
    perturb_(baseline)
    model, _ = convert_checkpoint({"state_dict": {f"img_backbone.{k}": v for k, v in baseline.state_dict().items()}})
    assert model.config.shift_windows and not model.config.use_absolute_embeddings
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = baseline(images)
        outputs = model(images).feature_maps
    for ours, theirs in zip(outputs, expected):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_released_widths_with_other_depths_are_refused_unless_custom():
    assert released_swin_size(GeoMIMConfig()) == "base"
    assert released_swin_size(GeoMIMConfig(embed_dim=96, num_heads=[3, 6, 12, 24], depths=[2, 2, 6, 2])) == "tiny"
    damaged = GeoMIMConfig(depths=[2, 2, 17, 2])  # Swin-B's widths, one block short
    with pytest.raises(CheckpointConversionError, match=r"width of Swin base, but depths \[2, 2, 17, 2\]"):
        released_swin_size(damaged)
    assert released_swin_size(damaged, allow_custom=True) is None
    assert released_swin_size(GeoMIMConfig(embed_dim=32, num_heads=[1, 2, 4, 8])) is None  # a custom width


def test_a_gap_in_the_block_indices_is_named(reference):
    state_dict = {key: value for key, value in reference.state_dict().items() if not key.startswith("stages.1.blocks.0.")}
    with pytest.raises(CheckpointConversionError, match=r"Stage 1 of the checkpoint has blocks \[1\]: blocks \[0\]"):
        convert_state_dict(state_dict)
