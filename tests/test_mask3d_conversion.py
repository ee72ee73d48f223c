"""ViT -> Mask3D encoder conversion, proven against the source models' own forwards (timm, transformers ViT, ViTMAE)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from transformers import ViTConfig, ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel, ViTModel

from geomim_hf import Mask3DForDepthPretraining, Mask3DModel
from geomim_hf.checkpoint_conversion import CheckpointConversionError
from geomim_hf.models.mask3d.conversion_mask3d import build_encoder, convert_timm_state_dict

SCRIPT = Path(__file__).resolve().parent.parent / "conversion" / "convert_vit_to_mask3d.py"
MAE_DECODER_KEYS = {"mask_token": (1, 1, 32), "decoder_embed.weight": (32, 64), "decoder_pos_embed": (1, 17, 32),
                    "decoder_blocks.0.attn.qkv.weight": (96, 32), "decoder_norm.weight": (32,),
                    "decoder_pred.weight": (192, 32)}


def load_script():
    spec = importlib.util.spec_from_file_location("convert_vit_to_mask3d", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def perturb_(module: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Moves every weight away from its default so that norm, bias and q/k/v mix-ups cannot hide."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * scale)
    return module.eval()


@pytest.fixture(scope="module")
def timm_vit() -> VisionTransformer:
    return perturb_(VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=7))


def test_timm_vit_converts_exactly(timm_vit, tmp_path, hub_uploads):
    torch.save(timm_vit.state_dict(), tmp_path / "vit.pth")
    load_script().main(["--source", str(tmp_path / "vit.pth"), "--output_dir", str(tmp_path / "out"),
                        "--num_attention_heads", "2", "--push_to_hub", "someone/vit-mask3d"])
    assert [upload.get("upload_folder") for upload in hub_uploads] == [None, "someone/vit-mask3d"]
    assert hub_uploads[1]["files"] == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    encoder = Mask3DModel.from_pretrained(tmp_path / "out").eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = timm_vit.forward_features(pixel_values)
        torch.testing.assert_close(encoder(pixel_values).last_hidden_state, expected, rtol=0, atol=1e-5)
    assert encoder.config.layer_norm_eps == 1e-6 and encoder.config.image_size == [32, 32]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Dropped, classifier head: 2 [head (2)]" in card and "not Mask3D-pretrained" in card
    assert "Transformed, split_fused_qkv: 12 [layers (12)]" in card and "vit.pth` (SHA-256" in card  # 2 x (w, b) x 3
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 32, "width": 32} and processor["image_processor_type"] == "ViTImageProcessor"


def test_original_mae_checkpoint_drops_the_decoder_and_reports_it(timm_vit, capsys, tmp_path):
    state_dict = {k: v for k, v in timm_vit.state_dict().items() if not k.startswith("head.")}
    state_dict |= {key: torch.zeros(shape) for key, shape in MAE_DECODER_KEYS.items()}
    torch.save({"model": state_dict, "epoch": 799}, tmp_path / "mae_pretrain.pth")
    load_script().main(["--source", str(tmp_path / "mae_pretrain.pth"), "--output_dir", str(tmp_path / "out"),
                        "--num_attention_heads", "2", "--image_size", "24", "40"])
    report = capsys.readouterr().out
    assert "Dropped, MAE decoder (pretraining only): 6" in report
    assert "Transformed, resized bicubically from the 4x4 patch grid to 3x5" in report
    encoder = Mask3DModel.from_pretrained(tmp_path / "out")
    assert encoder.config.image_size == [24, 40]
    pretraining, info = Mask3DForDepthPretraining.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["unexpected_keys"]
    assert all(key.startswith(("depth_encoder.", "decoder.")) for key in info["missing_keys"])
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(pretraining.vit.state_dict()[name], tensor), name


def test_transformers_vit_converts_exactly_also_at_4_by_3(tmp_path):
    source = perturb_(ViTModel(ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                         intermediate_size=96, image_size=32, patch_size=8)))
    source.save_pretrained(tmp_path / "vit")
    load_script().main(["--source", str(tmp_path / "vit"), "--output_dir", str(tmp_path / "out"),
                        "--image_size", "24", "32"])
    encoder = Mask3DModel.from_pretrained(tmp_path / "out").eval()
    assert encoder.config.layer_norm_eps == source.config.layer_norm_eps
    assert encoder.config.trainable_position_embeddings  # ViT's table is learned
    pixel_values = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        expected = source(pixel_values, interpolate_pos_encoding=True).last_hidden_state
        torch.testing.assert_close(encoder(pixel_values).last_hidden_state, expected, rtol=0, atol=1e-5)


def test_vitmae_pretraining_checkpoint_converts_exactly(tmp_path):
    config = ViTMAEConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
                          image_size=32, patch_size=8, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                          decoder_num_attention_heads=2, decoder_intermediate_size=32)
    perturb_(ViTMAEForPreTraining(config)).save_pretrained(tmp_path / "mae")
    load_script().main(["--source", str(tmp_path / "mae"), "--output_dir", str(tmp_path / "out")])
    encoder = Mask3DModel.from_pretrained(tmp_path / "out").eval()
    assert not encoder.config.trainable_position_embeddings  # ViTMAE's table is fixed sin-cos
    source = ViTMAEModel.from_pretrained(tmp_path / "mae", mask_ratio=0.0).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    in_order = torch.arange(16.0).expand(2, -1)  # noise that keeps every patch in its place
    with torch.no_grad():
        expected = source(pixel_values, noise=in_order).last_hidden_state
        torch.testing.assert_close(encoder(pixel_values).last_hidden_state, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.update({"blocks.0.attn.extra": torch.zeros(1)}), "Unknown key 'blocks.0.attn.extra'"),
        (lambda sd: sd.update({"blocks.1.ls1.gamma": torch.ones(64)}), r"blocks.1.ls1.gamma: unsupported.*layer scale"),
        (lambda sd: sd.update({"fc_norm.weight": torch.ones(64)}), "fc_norm.weight: unsupported"),
        (lambda sd: sd.pop("blocks.1.mlp.fc2.bias"), r"missing keys \['layers.1.mlp.fc2.bias'\]"),
        (lambda sd: sd.update({"norm.bias": torch.zeros(65)}), r"layernorm.bias: checkpoint \(65,\), model \(64,\)"),
        (lambda sd: sd.update({"pos_embed": torch.zeros(1, 16, 64)}), "pos_embed has 16 rows, not 1 \\(CLS\\)"),
    ],
)
def test_conversion_errors_name_the_key(timm_vit, edit, message):
    state_dict = dict(timm_vit.state_dict())
    edit(state_dict)
    with pytest.raises(CheckpointConversionError, match=message):
        config, converted, report = convert_timm_state_dict(state_dict, num_attention_heads=2)
        build_encoder(config, converted, report)


def test_script_refuses_a_non_empty_output_dir_and_bad_sources(timm_vit, tmp_path):
    script = load_script()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        script.main(["--source", "x.pth", "--output_dir", str(tmp_path / "out")])
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(SystemExit, match="No timm ViT patch embedding|Unknown key 'something'"):
        script.main(["--source", str(tmp_path / "other.pth"), "--output_dir", str(tmp_path / "new")])
    torch.save(timm_vit.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(SystemExit, match="image_size must be \\(height, width\\), both multiples of patch_size=8"):
        script.main(["--source", str(tmp_path / "vit.pth"), "--output_dir", str(tmp_path / "new"),
                     "--num_attention_heads", "2", "--image_size", "30", "40"])
    assert not (tmp_path / "new").exists()
