"""MixMIM (and ImageNet Swin) -> the GeoMIM pretraining encoder: the BEiT-style table resize against values computed
by hand, the encoder against a plain MixMIM forward written here, the decoder hand-over, the script, and the decoder
of GeoMIMForPretraining started from MixMIM's."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from geomim_hf import GeoMIMModel
from geomim_hf.checkpoint_conversion import CheckpointConversionError
from geomim_hf.models.geomim.conversion_mixmim import (
    MIXMIM_DECODER_FILE,
    MIXMIM_DECODER_RULES,
    MIXMIM_DECODER_TARGETS,
    convert_mixmim_checkpoint,
    geometric_source_positions,
    load_mixmim_decoder,
    resize_relative_position_bias_table,
)
from test_modeling_geomim_pretraining import mixmim_decoder, tiny_model

SCRIPT = Path(__file__).resolve().parent.parent / "conversion" / "convert_mixmim_to_geomim.py"


def load_script():
    spec = importlib.util.spec_from_file_location("convert_mixmim_to_geomim", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cubic(u: torch.Tensor, v: torch.Tensor, head: int) -> torch.Tensor:
    """A cubic in the horizontal (u) and vertical (v) offsets, different per head: cubic splines reproduce it."""
    return 1 + 2 * u - v + 0.5 * u * v + 0.1 * u**3 - 0.05 * v**2 * u + 0.02 * v**3 + head * (0.3 * v - 0.01 * u**2)


def test_geometric_positions_of_a_window_4_to_5_resize_are_the_closed_form():
    # 7 offsets -> 9: three terms 1 + q + q^2 must reach 4, so q = (sqrt(13) - 1) / 2.
    q = (math.sqrt(13) - 1) / 2
    expected = [-4, -(1 + q), -1, 0, 1, 1 + q, 4]
    torch.testing.assert_close(torch.tensor(geometric_source_positions(7, 9)), torch.tensor(expected,
                               dtype=torch.float64), rtol=0, atol=1e-5)


def test_table_resize_reproduces_a_cubic_at_the_new_offsets():
    """Window 4 -> 5: the source table samples a cubic at the geometric positions; every entry of the resized table
    must be that cubic at its integer offset (dy, dx), row (dy + 4) * 9 + (dx + 4)."""
    positions = torch.tensor(geometric_source_positions(7, 9))
    v, u = torch.meshgrid(positions, positions, indexing="ij")  # rows: vertical offset, columns: horizontal
    table = torch.stack([cubic(u, v, head).flatten() for head in range(3)], dim=1).float()  # (49, 3)
    resized = resize_relative_position_bias_table(table, window_size=5)
    assert resized.shape == (81, 3) and resized.dtype == torch.float32
    for dy in range(-4, 5):
        for dx in range(-4, 5):
            for head in range(3):
                expected = cubic(torch.tensor(float(dx)), torch.tensor(float(dy)), head)
                assert resized[(dy + 4) * 9 + dx + 4, head].item() == pytest.approx(expected.item(), abs=1e-4)


@pytest.mark.parametrize("source_window, target_window", [(14, 16), (7, 8), (7, 16)])
def test_mixmim_and_imagenet_sizes_keep_the_centre_and_the_corners(source_window, target_window):
    """Offsets 0 and the extreme ones land on source samples, so those entries are copied (the spline interpolates);
    the resize is a no-op at equal windows."""
    torch.manual_seed(0)
    source_side, target_side = 2 * source_window - 1, 2 * target_window - 1
    table = torch.randn(source_side**2, 4)
    resized = resize_relative_position_bias_table(table, target_window)
    assert resized.shape == (target_side**2, 4)
    source, target = table.view(source_side, source_side, 4), resized.view(target_side, target_side, 4)
    torch.testing.assert_close(target[target_side // 2, target_side // 2], source[source_side // 2, source_side // 2])
    for corner_source, corner_target in (((0, 0), (0, 0)), ((-1, -1), (-1, -1)), ((0, -1), (0, -1))):
        torch.testing.assert_close(target[corner_target], source[corner_source], rtol=0, atol=2e-4)
    assert resize_relative_position_bias_table(table, source_window) is table


class MixMIMBlock(nn.Module):
    """MixMIM's block without masks: window attention (official Swin index, no shift), MLP, both pre-norm."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads, self.window = heads, window
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.attn.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.5)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.attn.register_buffer("relative_position_index", relative[..., 0] * (2 * window - 1) + relative[..., 1])
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        batch, height, width, channels = x.shape
        w, heads = self.window, self.heads
        windows = self.norm1(x).view(batch, height // w, w, width // w, w, channels).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(-1, w * w, channels)
        q, k, v = self.attn.qkv(windows).view(len(windows), w * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
        bias = self.attn.relative_position_bias_table[self.attn.relative_position_index.view(-1)]
        attention = (q * (channels // heads) ** -0.5) @ k.transpose(-2, -1) + bias.view(w * w, w * w, heads).permute(
            2, 0, 1)
        out = (attention.softmax(-1) @ v).transpose(1, 2).reshape(len(windows), w * w, channels)
        out = self.attn.proj(out).view(batch, height // w, width // w, w, w, channels).permute(0, 1, 3, 2, 4, 5)
        x = x + out.reshape(batch, height, width, channels)
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class MixMIMEncoder(nn.Module):
    """MixMIM's encoder, named as `models_mixmim.py` names it, with timm's (< 0.9) merging ending each stage."""

    def __init__(self, embed_dim=8, depths=(2, 2, 2, 2), heads=(1, 2, 2, 4), windows=(4, 4, 4, 2), grid=16):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj, self.patch_embed.norm = nn.Conv2d(3, embed_dim, 4, 4), nn.LayerNorm(embed_dim)
        self.absolute_pos_embed = nn.Parameter(torch.randn(1, grid * grid, embed_dim) * 0.5)
        self.layers = nn.ModuleList()
        for stage, (depth, num_heads, window) in enumerate(zip(depths, heads, windows)):
            dim = embed_dim * 2**stage
            layer = nn.Module()
            layer.blocks = nn.ModuleList([MixMIMBlock(dim, num_heads, window) for _ in range(depth)])
            layer.downsample = None
            if stage < len(depths) - 1:
                layer.downsample = nn.Module()
                layer.downsample.norm, layer.downsample.reduction = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim,
                                                                                                    bias=False)
            self.layers.append(layer)
        self.norm = nn.LayerNorm(embed_dim * 2 ** (len(depths) - 1))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed.proj(images).permute(0, 2, 3, 1)
        x = self.patch_embed.norm(x) + self.absolute_pos_embed.view(1, *x.shape[1:])
        stage_outputs = []
        for layer in self.layers:
            for block in layer.blocks:
                x = block(x)
            stage_outputs.append(x)
            if layer.downsample is not None:
                x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
                x = layer.downsample.reduction(layer.downsample.norm(x))
        return stage_outputs


def mixmim_checkpoint(encoder: MixMIMEncoder, decoder_dim: int = 16) -> dict:
    """The encoder's weights with MixMIM's decoder next to them, saved as MixMIM saves: {'model', 'epoch', ...}."""
    generator = torch.Generator().manual_seed(1)
    decoder = {"mask_token": torch.randn(1, 1, decoder_dim, generator=generator),
               "decoder_embed.weight": torch.randn(decoder_dim, 64, generator=generator),
               "decoder_embed.bias": torch.randn(decoder_dim, generator=generator),
               "decoder_pos_embed": torch.randn(1, 4, decoder_dim, generator=generator),
               "decoder_blocks.0.attn.qkv.weight": torch.randn(3 * decoder_dim, decoder_dim, generator=generator),
               "decoder_norm.weight": torch.randn(decoder_dim, generator=generator),
               "decoder_pred.weight": torch.randn(3072, decoder_dim, generator=generator)}
    return {"model": {**encoder.state_dict(), **decoder}, "epoch": 599, "args": None}


@pytest.fixture(scope="module")
def mixmim() -> MixMIMEncoder:
    torch.manual_seed(0)
    encoder = MixMIMEncoder().eval()
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)  # LayerNorms away from the identity
    return encoder


def test_encoder_with_the_source_windows_matches_a_mixmim_forward(mixmim):
    model, decoder, report = convert_mixmim_checkpoint(mixmim_checkpoint(mixmim), window_size=None)
    assert model.config.window_size == [4, 4, 4, 2] and not model.config.shift_windows
    assert model.embeddings.position_embeddings.shape == (1, 8, 16, 16)
    decoder_reason = f"MixMIM decoder, kept under its MixMIM names for {MIXMIM_DECODER_FILE}"
    assert report.dropped == {decoder_reason: list(decoder),
                              "final norm (GeoMIM builds fresh output norms)": ["norm.weight", "norm.bias"],
                              "derived buffer, rebuilt from the window size":
                                  [f"layers.{i}.blocks.{j}.attn.relative_position_index" for i in range(4)
                                   for j in range(2)]}
    assert set(decoder) == {key for key in mixmim_checkpoint(mixmim)["model"] if key.startswith(("mask", "decoder"))}
    assert decoder["mask_token"].shape == (1, 1, 16)
    assert report.initialised == {"identity LayerNorm, as GeoMIM builds it": [
        f"hidden_states_norms.stage{stage}.{param}" for stage in (3, 4) for param in ("weight", "bias")]}

    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = mixmim(images)
        outputs = model(images, output_hidden_states=True)
    for stage, expected in enumerate(reference, start=1):
        torch.testing.assert_close(outputs.hidden_states[stage], expected, rtol=0, atol=1e-5)
    # Fresh identity output norms on stages 3 and 4, as GeoMIM builds them.
    for feature_map, expected in zip(outputs.feature_maps, reference[2:]):
        normed = F.layer_norm(expected, expected.shape[-1:]).permute(0, 3, 1, 2)
        torch.testing.assert_close(feature_map, normed, rtol=0, atol=1e-5)


def test_geomim_windows_get_resized_tables(mixmim):
    model, _, report = convert_mixmim_checkpoint(mixmim_checkpoint(mixmim), window_size=(8, 8, 4, 2))
    assert model.config.window_size == [8, 8, 4, 2]
    resized = {how: keys for how, keys in report.transformed.items() if how.startswith("resized BEiT-style")}
    assert resized == {f"resized BEiT-style, stage {stage + 1}: window 4 -> 8": [
        f"encoder.layers.{stage}.blocks.{block}.attention.relative_position_bias.relative_position_bias_table"
        for block in range(2)] for stage in (0, 1)}
    source = mixmim.layers[1].blocks[1].attn.relative_position_bias_table
    converted = model.encoder.layers[1].blocks[1].attention.relative_position_bias.relative_position_bias_table
    torch.testing.assert_close(converted, resize_relative_position_bias_table(source.detach(), 8))
    kept = model.encoder.layers[2].blocks[0].attention.relative_position_bias.relative_position_bias_table
    assert torch.equal(kept, mixmim.layers[2].blocks[0].attn.relative_position_bias_table)


def test_script_writes_the_encoder_and_the_decoder_under_mixmim_names(mixmim, tmp_path):
    checkpoint = mixmim_checkpoint(mixmim)
    path = tmp_path / "mixmim_tiny.pth"
    torch.save(checkpoint, path)
    output = tmp_path / "init"
    load_script().main(["--checkpoint", str(path), "--output_dir", str(output), "--window_size", "8", "8", "4", "2"])
    model = GeoMIMModel.from_pretrained(output)  # a missing or unexpected key would be reported and fail below
    expected, _, _ = convert_mixmim_checkpoint(checkpoint, window_size=(8, 8, 4, 2))
    assert model.state_dict().keys() == expected.state_dict().keys()
    assert all(torch.equal(model.state_dict()[key], expected.state_dict()[key]) for key in model.state_dict())
    with safe_open(str(output / MIXMIM_DECODER_FILE), framework="pt") as handle:
        assert set(handle.keys()) == {key for key in checkpoint["model"] if key.startswith(("mask_token", "decoder"))}
        assert all(torch.equal(handle.get_tensor(key), checkpoint["model"][key]) for key in handle.keys())
    card = (output / "README.md").read_text()
    assert "starting point for GeoMIM pretraining" in card and "stage 1: window 4 -> 8" in card and "{{" not in card
    assert f"`{MIXMIM_DECODER_FILE}` holds MixMIM's decoder tensors" in card and "SHA-256" in card


def test_imagenet_swin_gets_the_geomim_architecture(tmp_path):
    """An ImageNet Swin (official layout, classifier head, no absolute embedding) -> unshifted windows 16/8 with a zero
    absolute position embedding, and no decoder file."""
    state = {key: value for key, value in MixMIMEncoder(windows=(7, 7, 7, 7)).state_dict().items()
             if key != "absolute_pos_embed"}
    state |= {"head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10)}
    path = tmp_path / "swin_imagenet.pth"
    torch.save({"model": state}, path)
    load_script().main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "init")])
    model = GeoMIMModel.from_pretrained(tmp_path / "init")
    assert model.config.window_size == [16, 16, 16, 8] and not model.config.shift_windows
    assert not model.embeddings.position_embeddings.any() and model.embeddings.position_embeddings.shape[-1] == 56
    assert not (tmp_path / "init" / MIXMIM_DECODER_FILE).exists()
    assert "An ImageNet Swin has no pretraining decoder" in (tmp_path / "init" / "README.md").read_text()


def test_mmdet_layout_unknown_keys_and_tiny_windows_are_refused(mixmim):
    with pytest.raises(CheckpointConversionError, match="mmdet layout .*conversion/convert_geomim_swin_to_hf.py"):
        convert_mixmim_checkpoint({"state_dict": {"backbone.patch_embed.projection.weight": torch.zeros(1)}})
    checkpoint = mixmim_checkpoint(mixmim)
    checkpoint["model"]["layers.0.blocks.0.attn.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointConversionError, match="Unknown key 'layers.0.blocks.0.attn.extra.weight'"):
        convert_mixmim_checkpoint(checkpoint)
    with pytest.raises(CheckpointConversionError, match="window-2 table has too few offsets"):
        convert_mixmim_checkpoint(mixmim_checkpoint(mixmim), window_size=(4, 4, 4, 4))


def test_the_decoder_starts_from_mixmim_names_and_layout():
    source = tiny_model(seed=1)
    with torch.no_grad():
        source.decoder_pos_embed.normal_()
    decoder = mixmim_decoder(source)
    model = tiny_model(seed=2)
    untouched = {key: value.clone() for key, value in model.state_dict().items()
                 if not key.startswith(MIXMIM_DECODER_TARGETS)}
    report = load_mixmim_decoder(model, decoder)
    loaded = [target for targets in report.converted.values() for target in targets]
    assert "decoder_pos_embed" in loaded and len(loaded) == len(decoder) - 2
    assert report.dropped.keys() == {MIXMIM_DECODER_RULES[-1].drop}
    assert sorted(next(iter(report.dropped.values()))) == ["decoder_embed.weight", "decoder_pred.bias"]
    assert sorted(loaded) == sorted(key for key in model.state_dict() if key.startswith(MIXMIM_DECODER_TARGETS))
    for key in loaded:  # the (1, 49, C) rows, row-major, are the (1, C, 7, 7) grid again
        assert torch.equal(model.state_dict()[key], source.state_dict()[key]), key
    for key, value in untouched.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not torch.equal(model.decoder_embed_new.weight, source.decoder_embed_new.weight)

    with pytest.raises(CheckpointConversionError, match="Unknown key 'decoder_head.weight' in the MixMIM decoder"):
        load_mixmim_decoder(model, {**decoder, "decoder_head.weight": torch.zeros(1)})
    with pytest.raises(CheckpointConversionError, match=r"missing keys \['mask_token'\]"):
        load_mixmim_decoder(model, {k: v for k, v in decoder.items() if k != "mask_token"})
    with pytest.raises(CheckpointConversionError, match=r"decoder_pos_embed: checkpoint \(1, 32, 6, 6\), model "
                                                        r"\(1, 32, 7, 7\)"):
        load_mixmim_decoder(model, {**decoder, "decoder_pos_embed": torch.zeros(1, 36, 32)})
    with pytest.raises(CheckpointConversionError, match="a \\(1, L, C\\) position table has 48 tokens, not a square"):
        load_mixmim_decoder(model, {**decoder, "decoder_pos_embed": torch.zeros(1, 48, 32)})
    with pytest.raises(CheckpointConversionError, match=r"decoder_norm.weight: checkpoint \(16,\), model \(32,\)"):
        load_mixmim_decoder(model, {**decoder, "decoder_norm.weight": torch.zeros(16)})
