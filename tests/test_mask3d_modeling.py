"""Mask3D RGB-D ViT: masking, loss, position embeddings, backbone, save / load round trips.

References are independent of the code under test: transformers' ViTMAE masking, timm's position-table resampling,
closed-form sin-cos tables, and losses computed by hand pixel by pixel.
"""

from __future__ import annotations

import math

import pytest
import torch
from timm.layers import resample_abs_pos_embed
from transformers import (
    AutoBackbone,
    AutoModel,
    UperNetConfig,
    UperNetForSemanticSegmentation,
    ViTMAEConfig,
)
from transformers.models.vit_mae.modeling_vit_mae import ViTMAEEmbeddings

from geomim_hf import Mask3DBackbone, Mask3DConfig, Mask3DForDepthPretraining, Mask3DModel
from geomim_hf.models.mask3d.modeling_mask3d import random_masking, resize_position_table

# 32 x 48 pixels in patches of 8: a 4 x 6 grid (the 4:3 family is covered by the tiny preset and the backbone test).
SMALL = dict(
    image_size=(32, 48), patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=64, depth_encoder_hidden_size=16, depth_encoder_num_hidden_layers=1,
    depth_encoder_num_attention_heads=2, depth_encoder_intermediate_size=32, decoder_hidden_size=32,
    decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64,
)
NUM_PATCHES = 24


def small_config(**overrides) -> Mask3DConfig:
    return Mask3DConfig(**{**SMALL, **overrides})


def rgbd_batch(batch_size: int = 2, height: int = 32, width: int = 48, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, height, width, generator=generator)
    depth = 0.5 + 4 * torch.rand(batch_size, height, width, generator=generator)
    depth[:, :3, :5] = 0.0  # a corner without measurements
    noise = [torch.rand(batch_size, (height // 8) * (width // 8), generator=generator) for _ in range(2)]
    return pixel_values, depth, *noise


def patch_pixels(patch_mask: torch.Tensor, grid: tuple[int, int], patch: int = 8) -> torch.Tensor:
    """(batch, L) patch mask to a (batch, 1, H, W) pixel mask."""
    return patch_mask.reshape(-1, 1, *grid).repeat_interleave(patch, 2).repeat_interleave(patch, 3).bool()


@pytest.fixture(scope="module")
def model() -> Mask3DForDepthPretraining:
    torch.manual_seed(0)
    return Mask3DForDepthPretraining(small_config()).eval()


def test_random_masking_is_vitmae_masking():
    sequence = torch.randn(3, NUM_PATCHES, 5)
    noise = torch.rand(3, NUM_PATCHES)
    reference = ViTMAEEmbeddings(ViTMAEConfig(hidden_size=8, mask_ratio=0.6, image_size=16, patch_size=8))
    expected_tokens, expected_mask, expected_restore = reference.random_masking(sequence, noise)
    ids_keep, mask, ids_restore = random_masking(noise, 0.6)
    torch.testing.assert_close(mask, expected_mask, rtol=0, atol=0)
    torch.testing.assert_close(ids_restore, expected_restore, rtol=0, atol=0)
    torch.testing.assert_close(torch.gather(sequence, 1, ids_keep[..., None].expand(-1, -1, 5)), expected_tokens)


def test_masked_rgb_patches_are_never_seen_and_visible_ones_are(model):
    pixel_values, depth, rgb_noise, depth_noise = rgbd_batch()
    outputs = model(pixel_values, depth, rgb_noise=rgb_noise, depth_noise=depth_noise, output_hidden_states=True)
    assert outputs.rgb_mask.sum(1).tolist() == [NUM_PATCHES - int(NUM_PATCHES * 0.25)] * 2
    masked_pixels = patch_pixels(outputs.rgb_mask, (4, 6))
    changed = torch.where(masked_pixels, torch.randn_like(pixel_values) * 10, pixel_values)
    again = model(changed, depth, rgb_noise=rgb_noise, depth_noise=depth_noise, output_hidden_states=True)
    torch.testing.assert_close(again.hidden_states[-1], outputs.hidden_states[-1], rtol=0, atol=0)
    torch.testing.assert_close(again.logits, outputs.logits, rtol=0, atol=0)

    visible_patch = int((outputs.rgb_mask[0] == 0).nonzero()[0])
    one_visible = patch_pixels(torch.nn.functional.one_hot(torch.tensor([visible_patch, 0]), NUM_PATCHES) *
                               torch.tensor([[1], [0]]), (4, 6))
    changed = torch.where(one_visible, pixel_values + 1.0, pixel_values)
    again = model(changed, depth, rgb_noise=rgb_noise, depth_noise=depth_noise, output_hidden_states=True)
    assert (again.hidden_states[-1][0] - outputs.hidden_states[-1][0]).abs().max() > 1e-3
    assert (again.logits[0] - outputs.logits[0]).abs().max() > 1e-3
    torch.testing.assert_close(again.logits[1], outputs.logits[1], rtol=0, atol=0)  # samples stay separate


def test_masked_depth_patches_are_never_seen_and_visible_ones_are(model):
    pixel_values, depth, rgb_noise, depth_noise = rgbd_batch()
    outputs = model(pixel_values, depth, rgb_noise=rgb_noise, depth_noise=depth_noise)
    masked_pixels = patch_pixels(outputs.depth_mask, (4, 6))[:, 0]
    changed = torch.where(masked_pixels, depth * 1.7 + 0.3, depth)
    again = model(pixel_values, changed, rgb_noise=rgb_noise, depth_noise=depth_noise)
    torch.testing.assert_close(again.logits, outputs.logits, rtol=0, atol=0)
    assert not torch.isclose(again.loss, outputs.loss)  # the target did change

    visible_pixels = patch_pixels(1 - outputs.depth_mask, (4, 6))[:, 0]
    changed = torch.where(visible_pixels, depth * 1.7 + 0.3, depth)
    again = model(pixel_values, changed, rgb_noise=rgb_noise, depth_noise=depth_noise)
    assert (again.logits - outputs.logits).abs().max() > 1e-5  # a small effect at initialisation, but not none


def test_the_same_noise_gives_the_same_masks_and_other_noise_other_masks(model):
    pixel_values, depth, rgb_noise, depth_noise = rgbd_batch()
    first = model(pixel_values, depth, rgb_noise=rgb_noise, depth_noise=depth_noise)
    second = model(pixel_values, depth, rgb_noise=rgb_noise, depth_noise=depth_noise)
    torch.testing.assert_close(second.logits, first.logits, rtol=0, atol=0)
    swapped = model(pixel_values, depth, rgb_noise=depth_noise, depth_noise=rgb_noise)
    torch.testing.assert_close(swapped.rgb_mask, first.depth_mask, rtol=0, atol=0)
    torch.testing.assert_close(swapped.depth_mask, first.rgb_mask, rtol=0, atol=0)


def test_complementary_masks_never_show_a_patch_in_both_streams():
    torch.manual_seed(0)
    model = Mask3DForDepthPretraining(small_config(mask_mode="complementary", rgb_mask_ratio=0.5,
                                                   depth_mask_ratio=0.75)).eval()
    pixel_values, depth, _, _ = rgbd_batch(batch_size=4)
    outputs = model(pixel_values, depth)
    assert ((1 - outputs.rgb_mask) * (1 - outputs.depth_mask)).sum() == 0
    assert (1 - outputs.rgb_mask).sum(1).tolist() == [12] * 4 and (1 - outputs.depth_mask).sum(1).tolist() == [6] * 4
    with pytest.raises(ValueError, match="1 - depth_mask_ratio must not exceed rgb_mask_ratio"):
        small_config(mask_mode="complementary", rgb_mask_ratio=0.5, depth_mask_ratio=0.25)


def test_fusion_by_addition_also_hides_masked_patches():
    torch.manual_seed(0)
    model = Mask3DForDepthPretraining(small_config(fusion="add")).eval()
    pixel_values, depth, rgb_noise, depth_noise = rgbd_batch()
    outputs = model(pixel_values, depth, rgb_noise=rgb_noise, depth_noise=depth_noise)
    changed_rgb = torch.where(patch_pixels(outputs.rgb_mask, (4, 6)), -pixel_values, pixel_values)
    changed_depth = torch.where(patch_pixels(outputs.depth_mask, (4, 6))[:, 0], depth + 1, depth)
    again = model(changed_rgb, changed_depth, rgb_noise=rgb_noise, depth_noise=depth_noise)
    torch.testing.assert_close(again.logits, outputs.logits, rtol=0, atol=0)
    changed_depth = torch.where(patch_pixels(1 - outputs.depth_mask, (4, 6))[:, 0], depth + 1, depth)
    assert (model(pixel_values, changed_depth, rgb_noise=rgb_noise, depth_noise=depth_noise).logits
            - outputs.logits).abs().max() > 1e-5


# Two patches of 2 x 2 pixels (image 2 x 4, patch 2). Depth 0 is invalid; 12 m lies beyond the 10 m cap.
HAND_DEPTH = torch.tensor([[[1.0, 2.0, 0.0, 4.0], [0.5, 0.0, 8.0, 12.0]]])
HAND_PATCHES = [[1.0, 2.0, 0.5, 0.0], [0.0, 4.0, 8.0, 12.0]]  # row-major pixels of each patch
HAND_LOGITS = torch.tensor([[[0.3, 0.9, -0.2, 5.0], [7.0, 1.5, 2.5, -1.0]]])
HAND_DEPTH_MASK = torch.tensor([[1.0, 0.0]])  # patch 0 masked, patch 1 visible


def hand_loss(representation, loss_type, patches, norm_per_patch=False, beyond_cap="invalid"):
    """The loss by hand: pixel by pixel over the valid pixels of the chosen patches."""
    errors = []
    for patch in patches:
        pixels = [(depth, logit) for depth, logit in zip(HAND_PATCHES[patch], HAND_LOGITS[0, patch].tolist())
                  if depth > 0 and (depth <= 10 or beyond_cap == "clamp")]
        targets = [{"metric": min(d, 10.0), "log": math.log(min(d, 10.0)), "inverse": 1 / min(d, 10.0)}[representation]
                   for d, _ in pixels]
        if norm_per_patch:
            mean = sum(targets) / len(targets)
            std = math.sqrt(sum((t - mean) ** 2 for t in targets) / len(targets) + 1e-6)
            targets = [(t - mean) / std for t in targets]
        for target, (_, logit) in zip(targets, pixels):
            errors.append(abs(logit - target) if loss_type == "l1" else (logit - target) ** 2)
    return sum(errors) / len(errors)


@pytest.mark.parametrize(
    "fields, patches",
    [
        (dict(depth_representation="metric", loss_type="l1", loss_patches="all"), [0, 1]),
        (dict(depth_representation="log", loss_type="l2", loss_patches="masked"), [0]),
        (dict(depth_representation="inverse", loss_type="l1", loss_patches="all"), [0, 1]),
        (dict(depth_representation="metric", loss_type="l1", loss_patches="all", depth_norm_per_patch=True), [0, 1]),
        (dict(depth_representation="log", loss_type="l2", loss_patches="all", depth_beyond_cap="clamp"), [0, 1]),
    ],
)
def test_loss_equals_a_hand_computation(fields, patches):
    model = Mask3DForDepthPretraining(small_config(image_size=(2, 4), patch_size=2, **fields))
    loss, _ = model.forward_loss(HAND_LOGITS, *model.depth_to_representation(HAND_DEPTH), HAND_DEPTH_MASK)
    expected = hand_loss(fields["depth_representation"], fields["loss_type"], patches,
                         fields.get("depth_norm_per_patch", False), fields.get("depth_beyond_cap", "invalid"))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_predictions_at_invalid_pixels_never_count():
    model = Mask3DForDepthPretraining(small_config(image_size=(2, 4), patch_size=2))
    values, valid = model.depth_to_representation(HAND_DEPTH)
    loss, _ = model.forward_loss(HAND_LOGITS, values, valid, torch.ones(1, 2))
    changed = HAND_LOGITS.clone()
    changed[0, 0, 3] += 100.0  # the 0 m pixel
    changed[0, 1, 0] -= 100.0  # the other 0 m pixel
    changed[0, 1, 3] += 100.0  # the 12 m pixel, beyond the cap
    torch.testing.assert_close(model.forward_loss(changed, values, valid, torch.ones(1, 2))[0], loss)
    changed[0, 1, 1] += 1.0  # a valid pixel
    assert model.forward_loss(changed, values, valid, torch.ones(1, 2))[0] > loss


def test_invalid_depth_values_change_nothing(model):
    pixel_values, depth, rgb_noise, depth_noise = rgbd_batch()
    depth[:, 10:14, 20:30] = 25.0  # beyond the 10 m cap: invalid
    outputs = model(pixel_values, depth, rgb_noise=rgb_noise, depth_noise=depth_noise)
    for replacement in (0.0, -3.0, float("nan"), 60.0):
        changed = depth.clone()
        changed[:, :3, :5] = replacement
        changed[:, 10:14, 20:30] = replacement
        again = model(pixel_values, changed, rgb_noise=rgb_noise, depth_noise=depth_noise)
        torch.testing.assert_close(again.logits, outputs.logits, rtol=0, atol=0)
        torch.testing.assert_close(again.loss, outputs.loss, rtol=0, atol=0)


def test_predicted_depth_is_the_logits_as_a_metric_image(model):
    pixel_values, depth, rgb_noise, depth_noise = rgbd_batch()
    outputs = model(pixel_values, depth, rgb_noise=rgb_noise, depth_noise=depth_noise)
    assert outputs.predicted_depth.shape == depth.shape
    # config: log depth; patch (row 1, column 2) of the 4 x 6 grid is patch 8; its pixel (3, 5) is at (11, 21).
    expected = outputs.logits[1, 8, 3 * 8 + 5].exp().clamp(1e-3, 10.0)
    torch.testing.assert_close(outputs.predicted_depth[1, 11, 21], expected)


def closed_form_sincos(height: int, width: int, dim: int) -> torch.Tensor:
    quarter = dim // 4
    omega = [1.0 / 10000 ** (k / quarter) for k in range(quarter)]
    rows = []
    for i in range(height):
        for j in range(width):
            rows.append([math.sin(i * w) for w in omega] + [math.cos(i * w) for w in omega]
                        + [math.sin(j * w) for w in omega] + [math.cos(j * w) for w in omega])
    return torch.tensor(rows)


def test_position_embeddings_are_2d_sincos_on_the_height_width_grid(model):
    table = model.vit.embeddings.position_embeddings[0]
    assert table.shape == (1 + 4 * 6, 32) and not model.vit.embeddings.position_embeddings.requires_grad
    torch.testing.assert_close(table[0], torch.zeros(32))
    torch.testing.assert_close(table[1:], closed_form_sincos(4, 6, 32), rtol=0, atol=0)
    torch.testing.assert_close(model.depth_encoder.position_embeddings[0], closed_form_sincos(4, 6, 16),
                               rtol=0, atol=0)
    torch.testing.assert_close(model.decoder.position_embeddings[0], closed_form_sincos(4, 6, 32), rtol=0, atol=0)


def test_other_input_sizes_interpolate_the_position_table_like_timm():
    torch.manual_seed(0)
    table = torch.randn(1, 1 + 4 * 6, 32)
    expected = resample_abs_pos_embed(table, new_size=[6, 9], old_size=[4, 6], num_prefix_tokens=1, antialias=False)
    torch.testing.assert_close(resize_position_table(table[:, 1:], (4, 6), (6, 9)), expected[:, 1:])

    encoder = Mask3DModel(small_config()).eval()  # 4 x 6 grid
    at_new_size = Mask3DModel(small_config(image_size=(48, 72))).eval()  # 6 x 9 grid
    state = encoder.state_dict()
    state["embeddings.position_embeddings"] = resample_abs_pos_embed(
        state["embeddings.position_embeddings"], new_size=[6, 9], old_size=[4, 6], num_prefix_tokens=1,
        antialias=False)
    at_new_size.load_state_dict(state)
    pixel_values = torch.randn(1, 3, 48, 72)
    torch.testing.assert_close(encoder(pixel_values).last_hidden_state, at_new_size(pixel_values).last_hidden_state)


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="image_size must be \\(height, width\\), both multiples of patch_size=16"):
        Mask3DConfig(image_size=(240, 330))
    with pytest.raises(ValueError, match="unknown Mask3D preset 'huge'"):
        Mask3DConfig.from_preset("huge")


def test_attention_implementations_agree_and_reach_every_stream(model):
    pixel_values, depth, rgb_noise, depth_noise = rgbd_batch()
    torch.manual_seed(0)
    eager = Mask3DForDepthPretraining(small_config()).eval()
    eager.load_state_dict(model.state_dict())
    eager.set_attn_implementation("eager")
    assert eager.decoder.layers[0].attention.config._attn_implementation == "eager"
    assert eager.depth_encoder.layers[0].attention.config._attn_implementation == "eager"
    reference = model(pixel_values, depth, rgb_noise=rgb_noise, depth_noise=depth_noise)
    outputs = eager(pixel_values, depth, rgb_noise=rgb_noise, depth_noise=depth_noise, output_attentions=True)
    torch.testing.assert_close(outputs.logits, reference.logits, rtol=1e-4, atol=1e-5)
    assert len(outputs.attentions) == 2 and outputs.attentions[0].shape == (2, 2, 1 + 6, 1 + 6)


def assert_same_weights(loaded: torch.nn.Module, reference: torch.nn.Module, prefix: str = "") -> None:
    expected = reference.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[prefix + name]), name
    for (name, buffer), (_, expected_buffer) in zip(loaded.named_buffers(), reference.named_buffers()):
        assert torch.equal(buffer, expected_buffer), name


@pytest.mark.parametrize("fusion", ["concat", "add"])
def test_the_fixed_position_table_stays_fixed_after_loading(fusion, tmp_path):
    torch.manual_seed(1)
    Mask3DForDepthPretraining(small_config(fusion=fusion)).save_pretrained(tmp_path)
    reloaded = Mask3DForDepthPretraining.from_pretrained(tmp_path)
    pixel_values, depth, _, _ = rgbd_batch()
    reloaded(pixel_values, depth).loss.backward()
    embeddings = reloaded.vit.embeddings
    assert embeddings.position_embeddings.grad is None and embeddings.cls_token.grad is not None


def test_encoder_and_backbone_load_from_a_pretraining_checkpoint(tmp_path):
    torch.manual_seed(2)
    pretraining = Mask3DForDepthPretraining(small_config()).eval()
    pretraining.save_pretrained(tmp_path)
    encoder, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(encoder) is Mask3DModel and all(not keys for keys in info.values()), info
    assert_same_weights(encoder, pretraining, prefix="vit.")
    backbone, info = Mask3DBackbone.from_pretrained(tmp_path, output_loading_info=True, out_features=["stage2"])
    assert all(not keys for keys in info.values()), info
    assert_same_weights(backbone, pretraining)
    pixel_values = torch.randn(1, 3, 32, 48)
    torch.testing.assert_close(backbone(pixel_values).feature_maps[0].flatten(2).transpose(1, 2),
                               encoder(pixel_values).last_hidden_state[:, 1:])


def test_backbone_returns_normed_layer_outputs_as_maps():
    torch.manual_seed(3)
    backbone = AutoBackbone.from_config(small_config(out_indices=[0, 1])).eval()
    assert type(backbone) is Mask3DBackbone and backbone.channels == [32, 32]
    pixel_values = torch.randn(2, 3, 40, 64)  # another size: a 5 x 8 grid
    outputs = backbone(pixel_values)
    assert outputs.hidden_states is None and [tuple(f.shape) for f in outputs.feature_maps] == [(2, 32, 5, 8)] * 2
    hidden = backbone.vit(pixel_values, output_hidden_states=True).hidden_states
    expected = backbone.vit.layernorm(hidden[1][:, 1:]).reshape(2, 5, 8, 32).permute(0, 3, 1, 2)
    torch.testing.assert_close(outputs.feature_maps[1], expected)
    assert outputs.feature_maps[1][0, :, 2, 7].tolist() == pytest.approx(
        backbone.vit.layernorm(hidden[1][0, 1 + 2 * 8 + 7]).tolist(), abs=1e-6)


def test_upernet_trains_through_the_backbone_on_a_4_by_3_input():
    torch.manual_seed(4)
    # Four layers give the four maps UperNet reads (its auxiliary head takes the third).
    config = UperNetConfig(backbone_config=small_config(image_size=(48, 64), num_hidden_layers=4), num_labels=5,
                           hidden_size=16, auxiliary_channels=8)
    model = UperNetForSemanticSegmentation(config)
    assert type(model.backbone) is Mask3DBackbone
    labels = torch.randint(0, 5, (2, 48, 64))
    labels[:, :8] = 255
    outputs = model(torch.randn(2, 3, 48, 64), labels=labels)
    assert outputs.logits.shape == (2, 5, 48, 64)
    outputs.loss.backward()
    assert model.backbone.vit.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
