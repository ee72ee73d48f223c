"""GeoMIMConfig, GeoMIMModel and GeoMIMBackbone: shapes, inputs, numerics, training features and save/load."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoBackbone, AutoConfig, AutoModel, SwinBackbone, SwinConfig

from geomim_hf import GeoMIMBackbone, GeoMIMConfig, GeoMIMModel, GeoMIMPreTrainedModel

# Tiny widths with GeoMIM's structure; windows (4, 4, 4, 2) make every stage pad at the sizes used below.
TINY = dict(embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=[4, 4, 4, 2], image_size=32)


def tiny_model(**overrides) -> GeoMIMModel:
    torch.manual_seed(0)
    return GeoMIMModel(GeoMIMConfig(**{**TINY, **overrides})).eval()


def test_config_defaults_are_geomim_swin_base():
    config = GeoMIMConfig()
    assert (config.embed_dim, config.depths, config.num_heads) == (128, [2, 2, 18, 2], [4, 8, 16, 32])
    assert config.window_size == [16, 16, 16, 8] and not config.shift_windows and config.use_absolute_embeddings
    assert config.out_features == ["stage3", "stage4"] and config.out_indices == [3, 4]
    assert config.model_type == "geomim" and config.hidden_size == 1024


def test_config_expands_one_window_and_rejects_inconsistent_stages():
    assert GeoMIMConfig(window_size=7).window_size == [7, 7, 7, 7]
    with pytest.raises(ValueError, match="one entry per stage"):
        GeoMIMConfig(window_size=[16, 16, 8])
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        GeoMIMConfig(num_heads=[3, 8, 16, 32])


def test_config_round_trips_out_features(tmp_path):
    GeoMIMConfig(out_features=["stage2", "stage4"]).save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, GeoMIMConfig)
    assert reloaded.out_features == ["stage2", "stage4"] and reloaded.out_indices == [2, 4]


def test_multi_camera_input_keeps_the_camera_axis_and_encodes_cameras_independently():
    model = tiny_model()
    cameras = torch.randn(2, 3, 3, 40, 72)
    with torch.no_grad():
        rig = model(cameras)
        single = model(cameras[1, 2:3])
    stride16, stride32 = rig.feature_maps
    assert stride16.shape == (2, 3, 32, 3, 5) and stride32.shape == (2, 3, 64, 2, 3)
    assert rig.last_hidden_state.shape == (2, 3, 2 * 3, 64)
    torch.testing.assert_close(stride32[1, 2], single.feature_maps[1][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("height, width", [(37, 61), (4, 4), (64, 32)])
def test_any_image_size_gives_ceil_divided_grids(height, width):
    model = tiny_model(out_features=["stem", "stage1", "stage2", "stage3", "stage4"])
    with torch.no_grad():
        feature_maps = model(torch.randn(1, 3, height, width)).feature_maps
    grid = (-(-height // 4), -(-width // 4))
    for stage_index, feature_map in enumerate(feature_maps):
        stride_grid = grid if stage_index == 0 else tuple(-(-size // 2 ** (stage_index - 1)) for size in grid)
        assert feature_map.shape[-2:] == stride_grid
        assert torch.isfinite(feature_map).all()


def test_hidden_states_and_tuple_output():
    model = tiny_model()
    pixel_values = torch.randn(1, 2, 3, 32, 48)
    with torch.no_grad():
        outputs = model(pixel_values, output_hidden_states=True)
        as_tuple = model(pixel_values, return_dict=False)
    assert [tuple(state.shape) for state in outputs.hidden_states] == [
        (2, 8, 12, 8), (2, 8, 12, 8), (2, 4, 6, 16), (2, 2, 3, 32), (2, 1, 2, 64)
    ]
    # The last stage output, before its norm, is last_hidden_state.
    torch.testing.assert_close(outputs.hidden_states[-1].flatten(1, 2), outputs.last_hidden_state[0])
    assert model(pixel_values).hidden_states is None
    torch.testing.assert_close(as_tuple[0], outputs.last_hidden_state)


def test_shifted_windows_with_padding_match_transformers_swin_backbone():
    """Padding first, then the cyclic shift and the region mask, as transformers (and mmdet) do."""
    torch.manual_seed(0)
    swin_config = SwinConfig(
        embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=4, drop_path_rate=0.0,
        out_features=["stage3", "stage4"],
    )
    swin = SwinBackbone(swin_config).eval()
    with torch.no_grad():
        for parameter in swin.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    model = GeoMIMModel(
        GeoMIMConfig(embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=4, shift_windows=True,
                     use_absolute_embeddings=False)
    ).eval()
    # Same weight names, but transformers keeps the encoder under `swin.` and has a final norm GeoMIM does not use.
    weights = {key.removeprefix("swin."): value for key, value in swin.state_dict().items() if "layernorm." not in key}
    model.load_state_dict(weights, strict=True)

    pixel_values = torch.randn(2, 3, 100, 148)  # grids 25x37, 13x19, 7x10, 4x5: every stage pads
    with torch.no_grad():
        expected = swin(pixel_values).feature_maps
        actual = model(pixel_values).feature_maps
    for expected_map, actual_map in zip(expected, actual, strict=True):
        torch.testing.assert_close(actual_map, expected_map, rtol=1e-4, atol=1e-4)


def test_padding_takes_part_in_attention_as_zero_tokens():
    """GeoMIM pads each stage to whole windows with zeros and does not mask the padding out of the attention."""
    model = tiny_model(depths=[1, 1, 1, 1], use_absolute_embeddings=False)
    block = model.encoder.layers[0].blocks[0]  # window 4, no shift
    hidden_states = torch.randn(1, 3, 3, 8)
    zero_padded = torch.nn.functional.pad(hidden_states, (0, 0, 0, 1, 0, 1))
    padding_keys = torch.zeros(4, 4, dtype=torch.bool)
    padding_keys[3, :] = padding_keys[:, 3] = True
    mask_out_padding = torch.zeros(1, 16, 16).masked_fill(padding_keys.flatten(), float("-inf"))
    with torch.no_grad():
        output = block.windowed_attention(hidden_states)
        with_explicit_zeros = block.windowed_attention(zero_padded)[:, :3, :3]
        masked = block.attention(zero_padded.reshape(1, 16, 8), mask_out_padding).reshape(1, 4, 4, 8)[:, :3, :3]
    torch.testing.assert_close(output, with_explicit_zeros)
    assert (output - masked).abs().max() > 0.1 * masked.abs().max()


def test_gradient_checkpointing_gives_the_same_gradients():
    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = tiny_model().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        loss = sum(feature_map.square().mean() for feature_map in model(pixel_values).feature_maps)
        loss.backward()
        return {name: parameter.grad for name, parameter in model.named_parameters()}

    pixel_values = torch.randn(2, 3, 36, 52)
    plain, checkpointed = gradients(False), gradients(True)
    for name, gradient in plain.items():
        torch.testing.assert_close(checkpointed[name], gradient, msg=name)


def test_gradient_checkpointing_flag_reaches_every_block():
    model = tiny_model().train()
    model.activation_checkpointing_enable()
    blocks = [block for stage in model.encoder.layers for block in stage.blocks]
    assert len(blocks) == 8 and all(block.gradient_checkpointing for block in blocks)


def test_bfloat16_weights_and_autocast_stay_close_to_float32():
    model = tiny_model()
    pixel_values = torch.randn(1, 2, 3, 40, 56)
    with torch.no_grad():
        reference = model(pixel_values).feature_maps
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(pixel_values).feature_maps
        bf16 = model.to(torch.bfloat16)(pixel_values.bfloat16()).feature_maps
    for expected, under_autocast, in_bf16 in zip(reference, autocast, bf16, strict=True):
        assert in_bf16.dtype == torch.bfloat16
        torch.testing.assert_close(under_autocast.float(), expected, rtol=0.1, atol=0.1)
        torch.testing.assert_close(in_bf16.float(), expected, rtol=0.1, atol=0.1)


def test_dropouts_and_drop_path_only_act_in_training():
    model = tiny_model(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3, drop_path_rate=0.5)
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(pixel_values).last_hidden_state, model(pixel_values).last_hidden_state)
        model.train()
        assert not torch.equal(model(pixel_values).last_hidden_state, model(pixel_values).last_hidden_state)
    last_block = model.encoder.layers[-1].blocks[-1]
    assert last_block.drop_path.p == pytest.approx(0.5)  # linear rise over all 8 blocks, ending at the rate


def test_backbone_returns_out_features_and_channels():
    config = GeoMIMConfig(**TINY, out_features=["stage1", "stage3"])
    backbone = AutoBackbone.from_config(config).eval()
    assert isinstance(backbone, GeoMIMBackbone)
    assert backbone.channels == [8, 32] and backbone.out_feature_channels["stage4"] == 64
    with torch.no_grad():
        outputs = backbone(torch.randn(2, 3, 32, 32), output_hidden_states=True)
    assert [tuple(feature_map.shape) for feature_map in outputs.feature_maps] == [(2, 8, 8, 8), (2, 32, 2, 2)]
    assert len(outputs.hidden_states) == 5
    with torch.no_grad():
        assert backbone(torch.randn(2, 3, 32, 32)).hidden_states is None


def test_auto_classes_resolve_to_geomim():
    config = AutoConfig.for_model("geomim", **TINY)
    assert isinstance(config, GeoMIMConfig)
    assert isinstance(AutoModel.from_config(config), GeoMIMModel)


def assert_same_tensors(expected: nn.Module, actual: nn.Module, prefix: str = "") -> None:
    """Bitwise equality of every parameter and buffer (persistent or not) of `expected` in `actual`."""
    actual_tensors = dict(actual.named_parameters()) | dict(actual.named_buffers())
    expected_tensors = dict(expected.named_parameters()) | dict(expected.named_buffers())
    assert len(expected_tensors) > 0
    for name, tensor in expected_tensors.items():
        assert torch.equal(actual_tensors[prefix + name], tensor), name


def test_partial_load_initialises_the_missing_raw_parameters(tmp_path):
    """Tensors absent from the checkpoint (here the raw position embedding and relative-position tables) are
    initialised by `_init_weights` (normal, std 0.02, truncated at +-2 as in timm and mmcv), never left as
    uninitialised memory, and every loaded tensor is untouched."""
    from safetensors.torch import load_file, save_file

    model = tiny_model()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = {key for key in weights if key.endswith(("position_embeddings", "relative_position_bias_table"))}
    assert len(dropped) == 9  # 1 position embedding + 8 blocks
    save_file({key: value for key, value in weights.items() if key not in dropped}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})

    reloaded, loading_info = GeoMIMModel.from_pretrained(tmp_path, output_loading_info=True)
    assert loading_info["missing_keys"] == dropped and not loading_info["unexpected_keys"]
    reloaded_tensors = reloaded.state_dict()
    for key, value in weights.items():
        if key in dropped:
            initialised = reloaded_tensors[key]
            assert torch.isfinite(initialised).all() and 0.01 < initialised.std() < 0.03
            assert not torch.equal(initialised, value)
        else:
            assert torch.equal(reloaded_tensors[key], value), key
    for name, index in reloaded.named_buffers():
        module = reloaded.get_submodule(name.rsplit(".", 1)[0])
        assert torch.equal(index, module.create_relative_position_index()), name


class GeoMIMWithLinearHead(GeoMIMPreTrainedModel):
    """A model with a head on the encoder, as downstream tasks build them."""

    def __init__(self, config: GeoMIMConfig):
        super().__init__(config)
        self.geomim = GeoMIMModel(config)
        self.head = nn.Linear(config.hidden_size, 3)
        self.post_init()


def test_encoder_checkpoint_loads_into_a_model_with_a_head_without_reinitialising_it(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    with_head, loading_info = GeoMIMWithLinearHead.from_pretrained(tmp_path, output_loading_info=True)
    assert loading_info["missing_keys"] == {"head.weight", "head.bias"}
    assert not loading_info["unexpected_keys"] and not loading_info["mismatched_keys"]
    assert_same_tensors(model, with_head.geomim)
    # ...and the head's own checkpoint loads back into the bare encoder, dropping the head.
    with_head.save_pretrained(tmp_path / "with_head")
    encoder, loading_info = GeoMIMModel.from_pretrained(tmp_path / "with_head", output_loading_info=True)
    assert loading_info["unexpected_keys"] == {"head.weight", "head.bias"} and not loading_info["missing_keys"]
    assert_same_tensors(model, encoder)
