"""GeoMIMForPretraining: masks that really separate the groups, cross-view attention, the (X, Y) layout, the loss
against hand computations, save/load, and learning on synthetic scenes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel

from geomim_hf import GeoMIMConfig, GeoMIMForPretraining, GeoMIMModel, GeoMIMPretrainingConfig
from geomim_hf.geometry import BEVPoolIndex, create_frustum, frustum_to_ego
from geomim_hf.models.geomim.modeling_geomim import expand_token_groups
from geomim_hf.models.geomim.modeling_geomim_pretraining import bev_cosine_similarity, normalize_bev_target
from test_geometry import nuscenes_rig

IMAGE_SIZE = (64, 160)  # (H, W): a 2 x 5 grid of stride-32 mask cells


def tiny_model(seed: int = 0, **overrides) -> GeoMIMForPretraining:
    torch.manual_seed(seed)
    return GeoMIMForPretraining(GeoMIMPretrainingConfig.from_preset("tiny", **overrides))


def rig_batch(batch_size: int = 2, image_size: tuple[int, int] = IMAGE_SIZE, seed: int = 0) -> dict:
    """Random images on the six-camera nuScenes rig, with a random teacher map and LiDAR depths."""
    generator = torch.Generator().manual_seed(seed)
    intrinsics, camera_to_ego = (t.float() for t in nuscenes_rig(image_size))
    height, width = image_size

    def expand(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.expand(batch_size, *tensor.shape).clone()

    return dict(
        pixel_values=torch.randn(batch_size, 6, 3, height, width, generator=generator),
        camera_intrinsics=expand(intrinsics),
        camera_to_lidar=expand(camera_to_ego),
        camera_vector=torch.randn(batch_size, 6, 22, generator=generator),
        post_rot=expand(torch.eye(3).expand(6, 3, 3)),
        post_tran=torch.zeros(batch_size, 6, 3),
        lidar_augmentation=expand(torch.eye(4)),
        teacher_features=torch.randn(batch_size, 128, 45, 45, generator=generator),
        depth_targets=torch.rand(batch_size, 6, height // 16, width // 16, generator=generator) * 70,
    )


def fixed_mask() -> torch.Tensor:
    """(2, 2, 5) complementary masks; mask[g] = 1 on the cells hidden from group g."""
    hidden_from_group_0 = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 1, 0, 1]], dtype=torch.float32)
    return torch.stack([hidden_from_group_0, 1 - hidden_from_group_0])


def decoder_outputs(model: GeoMIMForPretraining, pixel_values: torch.Tensor, camera_vector: torch.Tensor,
                    mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Semantic and depth decoder outputs `(2, B, N, hidden, h, w)` each, through the model's own steps."""
    batch, cameras, _, height, width = pixel_values.shape
    groups = model.token_groups_from_mask(mask, (height // 32, width // 32))
    stride16, stride32 = model.forward_encoder(pixel_values, groups)
    tokens = model.fill_mask_tokens(model.forward_neck(stride16, stride32, groups), groups)
    semantic, depth = model.forward_decoder(tokens, camera_vector.flatten(0, 1), cameras, height // 16, width // 16)
    return semantic.unflatten(0, (2, batch, cameras)), depth.unflatten(0, (2, batch, cameras))


# ---------------------------------------------------------------------------------------------------- configuration


def test_config_defaults_are_the_original_swin_base_pretraining():
    config = GeoMIMPretrainingConfig()
    encoder = config.encoder_config
    assert isinstance(encoder, GeoMIMConfig) and encoder.embed_dim == 128 and encoder.window_size == [16, 16, 16, 8]
    assert (config.decoder_hidden_size, config.decoder_num_heads, config.decoder_depth) == (512, 16, 8)
    assert (config.cross_view_blocks, config.depth_branch_block, config.depth_cross_view_blocks) == ([1, 5], 3, [1])
    assert config.bev_grid.num_x == config.bev_grid.num_y == 360 and config.bev_grid.num_depth_bins == 118
    assert config.bev_output_size == (180, 180) and config.target_patch_size == 18 and config.teacher_channels == 256
    assert (config.mask_stride, config.feature_stride, config.depth_loss_weight) == (32, 16, 0.01)
    assert GeoMIMPretrainingConfig.from_preset("large").encoder_config.num_heads == [6, 12, 24, 48]


def test_config_round_trips_with_its_encoder(tmp_path):
    GeoMIMPretrainingConfig.from_preset("tiny", bev_channels=8).save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, GeoMIMPretrainingConfig) and isinstance(reloaded.encoder_config, GeoMIMConfig)
    assert reloaded.bev_channels == 8 and reloaded.encoder_config.embed_dim == 16
    assert reloaded.bev_output_size == (45, 45) and reloaded.teacher_channels == 128


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"encoder_config": GeoMIMConfig(out_features=["stage2", "stage4"])}, "last two stages"),
        ({"cross_view_blocks": [1, 8]}, "cross_view_blocks"),
        ({"depth_cross_view_blocks": [4]}, "depth_cross_view_blocks"),
        ({"target_patch_size": 7}, "target_patch_size 7"),
        ({"bev_downsample": 4}, "bev_downsample"),
        ({"bev_x_bound": [-54.0, 54.0, 0.7]}, "whole number"),
    ],
)
def test_config_rejects_inconsistent_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        GeoMIMPretrainingConfig(**fields)
    with pytest.raises(ValueError, match="unknown GeoMIM pretraining preset"):
        GeoMIMPretrainingConfig.from_preset("huge")


# ------------------------------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize("grid", [(2, 5), (3, 3)])
def test_random_masks_split_one_ranking_into_two_disjoint_halves(grid):
    model = tiny_model()
    num_cells = grid[0] * grid[1]
    noise = torch.rand(num_cells, generator=torch.Generator().manual_seed(3))
    mask = model.random_masking(grid, noise, torch.device("cpu"))
    order = noise.argsort().tolist()  # cells from the lowest noise up
    half = num_cells // 2
    expected = torch.ones(2, num_cells)
    for cell in order[:half]:
        expected[0, cell] = 0
    for cell in order[half : 2 * half]:
        expected[1, cell] = 0
    torch.testing.assert_close(mask, expected.view(2, *grid), rtol=0, atol=0)
    groups = model.token_groups_from_mask(mask, grid)
    assert (groups == 0).sum() == (groups == 1).sum() == half and (groups == -1).sum() == num_cells % 2


def test_token_groups_expand_so_that_patch_merging_never_mixes_groups():
    groups = torch.tensor([[0, 1], [1, -1]])
    expanded = expand_token_groups(groups, 4, 7, 6)  # a grid whose last cells are cut
    assert expanded.shape == (7, 6)
    for i in range(7):
        for j in range(6):
            assert expanded[i, j] == groups[i // 4, j // 4]
    with pytest.raises(ValueError, match="do not cover"):
        expand_token_groups(groups, 4, 9, 6)


def test_masking_is_real_in_one_encoder_pass():
    """Pixels group 0 does not see cannot change group 0's encoder tokens or its BEV reconstruction, bit for bit, in
    fp32 and in training mode (the BEV batch norms run per group); a pixel it sees changes both."""
    model = tiny_model().train()
    batch = rig_batch()
    mask = fixed_mask()
    hidden = mask[0].repeat_interleave(32, 0).repeat_interleave(32, 1).bool()  # (H, W) pixels hidden from group 0
    groups = model.token_groups_from_mask(mask, (2, 5))

    def group0(pixel_values):
        with torch.no_grad():
            stride16, stride32 = model.forward_encoder(pixel_values, groups)
            outputs = model(**{**batch, "pixel_values": pixel_values}, mask=mask)
        sees16 = expand_token_groups(groups, 2, 4, 10) == 0
        return (stride16[:, sees16], stride32[:, groups == 0], outputs.reconstruction[:, 0],
                outputs.depth_probabilities[:, 0])

    reference = group0(batch["pixel_values"])
    elsewhere = batch["pixel_values"] + 10 * torch.randn_like(batch["pixel_values"]) * hidden
    for before, after in zip(reference, group0(elsewhere)):
        assert torch.equal(before, after)

    visible_rows, visible_columns = (~hidden).nonzero(as_tuple=True)
    seen = batch["pixel_values"].clone()
    seen[0, 3, :, visible_rows[5], visible_columns[5]] += 1.0  # one pixel of one camera that group 0 sees
    for before, after in zip(reference, group0(seen)):
        assert not torch.equal(before, after)


def test_masks_come_from_noise_or_explicitly_and_bad_masks_are_rejected():
    model = tiny_model().eval()
    batch = rig_batch(batch_size=1)
    with torch.no_grad():
        from_noise = model(**batch, noise=torch.arange(10.0))
        explicit = model(**batch, mask=from_noise.mask)
    torch.testing.assert_close(from_noise.reconstruction, explicit.reconstruction, rtol=0, atol=0)
    assert from_noise.mask[0].flatten().tolist() == [0.0] * 5 + [1.0] * 5  # the five lowest cells go to group 0
    with pytest.raises(ValueError, match="both groups"):
        model(**batch, mask=torch.zeros(2, 2, 5))
    with pytest.raises(ValueError, match="0 \\(visible"):
        model(**batch, mask=torch.full((2, 2, 5), 0.5))
    with pytest.raises(ValueError, match="mask must have shape"):
        model(**batch, mask=torch.ones(2, 5, 2))
    with pytest.raises(ValueError, match="noise must have shape"):
        model(**batch, noise=torch.rand(2, 5))


# --------------------------------------------------------------------------------------------- cross-view attention


def test_cross_view_attention_starts_as_the_identity_then_mixes_cameras_after_one_step():
    model = tiny_model().train()
    batch = rig_batch()
    tokens = torch.randn(2 * 6, 4 * 10, 32)
    for block in model.decoder_cross_module:
        assert torch.equal(block(tokens, 6, 4, 10), tokens)

    mask = fixed_mask()
    other_camera = batch["pixel_values"].clone()
    other_camera[:, 2] += torch.randn_like(other_camera[:, 2])

    def camera1_outputs(pixel_values):
        with torch.no_grad():
            semantic, depth = decoder_outputs(model, pixel_values, batch["camera_vector"], mask)
        return semantic[:, :, 1], depth[:, :, 1]

    # At initialisation the cameras are decoded independently: camera 2 cannot reach camera 1.
    for before, after in zip(camera1_outputs(batch["pixel_values"]), camera1_outputs(other_camera)):
        assert torch.equal(before, after)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(**batch, mask=mask).loss.backward()
    optimizer.step()
    for before, after in zip(camera1_outputs(batch["pixel_values"]), camera1_outputs(other_camera)):
        for group in range(2):
            assert (before[group] - after[group]).abs().max() > 1e-6


# ---------------------------------------------------------------------------------------------- BEV layout and loss


@pytest.mark.parametrize("yaw_deg, axis, sign", [(0, 0, 1), (90, 1, 1), (180, 0, -1), (-90, 1, -1)])
def test_reconstruction_is_in_the_teachers_x_y_layout(yaw_deg, axis, sign):
    """A peaked depth distribution splats a camera's features along its viewing direction: the front camera turned by
    `yaw_deg` about the LiDAR z axis (0: +x, 90: +y) fills cells on that side of the first (X) or second (Y) axis."""
    model = tiny_model().eval()
    transform = model.vtransform
    transform.downsample = nn.Identity()
    final = transform.depthnet[-1]
    with torch.no_grad():
        final.weight.zero_()
        final.bias.zero_()
        final.bias[40] = 30.0  # all depth mass in bin 40 (21 m)
        final.bias[transform.num_depth_bins] = 1.0  # context channel 0 = 1
    batch = rig_batch(batch_size=1)
    cos, sin = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    turn = torch.tensor([[cos, -sin, 0, 0], [sin, cos, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    front_camera = 1  # CAM_FRONT
    camera_to_lidar = turn @ batch["camera_to_lidar"][:, [front_camera]]
    grid = model.config.bev_grid
    geometry = frustum_to_ego(create_frustum(IMAGE_SIZE, 16, grid), batch["camera_intrinsics"][:, [front_camera]],
                              camera_to_lidar)
    features = torch.randn(1, 1, 32, 4, 10)
    with torch.no_grad():
        bev, _ = transform(features, features, BEVPoolIndex.from_geometry(geometry, grid))
    occupied = (bev[0, 0] > 0.5).nonzero().float() - (grid.num_x - 1) / 2  # (cells, 2) from the centre, (X, Y)
    along, across = sign * occupied[:, axis], occupied[:, 1 - axis]
    assert len(occupied) > 5 and (along > 10).all() and across.abs().max() < along.min()


def test_target_normalisation_against_a_hand_computation():
    target = torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    normalized = normalize_bev_target(target, patch_size=2)
    expected = torch.empty_like(target)
    for b in range(2):
        for px in range(2):
            for py in range(3):
                values = [target[b, c, x, y].item() for c in range(3) for x in (2 * px, 2 * px + 1)
                          for y in (2 * py, 2 * py + 1)]
                mean = sum(values) / len(values)
                variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
                for c in range(3):
                    for x in (2 * px, 2 * px + 1):
                        for y in (2 * py, 2 * py + 1):
                            expected[b, c, x, y] = (target[b, c, x, y] - mean) / math.sqrt(variance + 1e-6)
    torch.testing.assert_close(normalized, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="does not split"):
        normalize_bev_target(target, patch_size=4)


def test_losses_against_per_pixel_loops():
    model = tiny_model()
    generator = torch.Generator().manual_seed(1)
    batch, cameras, bins, height, width = 2, 2, model.config.bev_grid.num_depth_bins, 2, 3
    reconstruction = torch.randn(batch, 2, 128, 45, 45, generator=generator)
    teacher = torch.randn(batch, 128, 45, 45, generator=generator) * 3 + 1
    depth_probabilities = torch.randn(batch, 2, cameras, bins, height, width, generator=generator).softmax(dim=3)
    # Depths on bin edges, inside, below the first bin, beyond the last, and missing (0).
    depths = torch.tensor([0.0, 0.7, 1.0, 1.25, 17.5, 59.9, 60.0, 80.0, 33.3, 2.49, 0.0, 5.0])
    depth_targets = depths.repeat(2)[torch.randperm(24, generator=generator)].view(batch, cameras, height, width)

    target, reconstruction_loss, weighted_depth_loss = model.forward_loss(
        reconstruction, depth_probabilities, teacher, depth_targets
    )
    torch.testing.assert_close(target, normalize_bev_target(teacher, 9))
    expected_mse = sum(((reconstruction[:, g] - target) ** 2).mean() for g in range(2)) / 2
    torch.testing.assert_close(reconstruction_loss, expected_mse)

    per_group = []
    for g in range(2):
        total, foreground = 0.0, 0
        for b in range(batch):
            for n in range(cameras):
                for i in range(height):
                    for j in range(width):
                        d = depth_targets[b, n, i, j].item()
                        position = (d - 0.5) / 0.5  # bin k covers [1 + 0.5 k, 1.5 + 0.5 k): position k + 1
                        if not 1 <= position < bins + 1:
                            continue
                        foreground += 1
                        hot = int(position) - 1
                        for k in range(bins):
                            p = depth_probabilities[b, g, n, k, i, j].item()
                            total -= math.log(p) if k == hot else math.log(1 - p)
        per_group.append(0.01 * total / foreground)
    torch.testing.assert_close(weighted_depth_loss, torch.tensor(sum(per_group) / 2), rtol=1e-5, atol=1e-7)


def test_forward_returns_the_loss_and_its_parts():
    model = tiny_model().train()
    batch = rig_batch()
    outputs = model(**batch)
    assert outputs.reconstruction.shape == (2, 2, 128, 45, 45) and outputs.mask.shape == (2, 2, 5)
    assert outputs.depth_probabilities.shape == (2, 2, 6, 118, 4, 10)
    torch.testing.assert_close(outputs.depth_probabilities.sum(dim=3), torch.ones(2, 2, 6, 4, 10))
    torch.testing.assert_close(outputs.loss, outputs.reconstruction_loss + outputs.depth_loss)
    outputs.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert not model.decoder_pos_embed.requires_grad and "decoder_pos_embed" in model.state_dict()

    without_targets = model(**{k: v for k, v in batch.items() if k not in ("teacher_features", "depth_targets")})
    assert without_targets.loss is None and without_targets.reconstruction.shape == (2, 2, 128, 45, 45)
    only_teacher = model(**{k: v for k, v in batch.items() if k != "depth_targets"})
    assert only_teacher.depth_loss is None and only_teacher.loss == only_teacher.reconstruction_loss


# ---------------------------------------------------------------------------------------------------- save and load


def test_the_encoder_exports_as_a_geomim_model(tmp_path):
    model = tiny_model(seed=4).eval()
    batch = rig_batch(batch_size=1)
    model.save_encoder(tmp_path / "encoder")
    encoder, info = GeoMIMModel.from_pretrained(tmp_path / "encoder", output_loading_info=True)
    assert not any(info.values()), info
    assert isinstance(AutoModel.from_pretrained(tmp_path / "encoder"), GeoMIMModel)
    encoder_state = encoder.state_dict()
    assert encoder_state.keys() == model.geomim.state_dict().keys()
    for key, value in model.geomim.state_dict().items():
        assert torch.equal(value, encoder_state[key]), key
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(batch["pixel_values"]).feature_maps[1],
                                   model.geomim(batch["pixel_values"]).feature_maps[1], rtol=0, atol=0)


def mixmim_decoder(source: GeoMIMForPretraining) -> dict[str, torch.Tensor]:
    """A MixMIM checkpoint's decoder as MixMIM names and lays it out: the source model's decoder tensors, the position
    table as (1, 49, C) rows in row-major (row, column) order, plus the tensors GeoMIM does not use."""
    state = source.state_dict()
    decoder = {key: value.clone() for key, value in state.items() if key == "mask_token"
               or key.startswith(("decoder_blocks.", "decoder_norm."))}
    grid = state["decoder_pos_embed"]
    rows = [grid[0, :, row, column] for row in range(7) for column in range(7)]
    decoder["decoder_pos_embed"] = torch.stack(rows)[None]
    decoder["decoder_embed.weight"], decoder["decoder_pred.bias"] = torch.randn(32, 256), torch.randn(3072)
    return decoder


def test_cosine_similarity_is_per_sample_and_group():
    target = torch.randn(3, 4, 9, 9)
    reconstruction = torch.stack([2 * target, -target], dim=1)
    torch.testing.assert_close(bev_cosine_similarity(reconstruction, target), torch.tensor([[1.0, -1.0]] * 3))


# --------------------------------------------------------------------------------------------------------- learning


@pytest.fixture
def one_thread():
    """The learning test runs single-threaded: on a shared two-core machine two threads per op are slower, and one
    makes the numbers reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_tiny_preset_learns_to_reconstruct_the_teacher_on_synthetic_scenes(nuscenes_root, nuscenes_spec, one_thread):
    """Four synthetic key frames in the LiDAR frame, targets from a seeded random LiDAR teacher (untrained, its
    features still encode the occupied geometry): within 40 steps the loss falls and the reconstructions turn toward
    the targets (cosine similarity from about 0 to well above it), measured on the training samples with fixed masks."""
    from geomim_hf.data import GeoMIMImageProcessor, load_nuscenes
    from geomim_hf.data.pretraining_collate import PretrainingCollator
    from geomim_hf.models.lidar_teacher import GeoMIMLidarTeacherConfig, random_lidar_teacher

    width, height = nuscenes_spec.image_size
    collate = PretrainingCollator(GeoMIMImageProcessor.geomim_pretraining(size={"height": height, "width": width}))
    examples = list(load_nuscenes(nuscenes_root, nuscenes_spec.version, "mini_train", num_sweeps=2))
    teacher = random_lidar_teacher(GeoMIMLidarTeacherConfig.from_preset("small_grid"), seed=0)
    batches = []
    for start in range(0, len(examples), 2):
        batch = collate(examples[start : start + 2])
        with torch.no_grad():
            target = teacher(batch["points"], batch["points_mask"]).bev_features
        batches.append({**{key: batch[key] for key in ("pixel_values", "camera_intrinsics", "camera_to_lidar",
                                                        "camera_vector", "post_rot", "post_tran",
                                                        "lidar_augmentation", "depth_targets")},
                        "teacher_features": target})
    model = tiny_model()
    masks = torch.rand(len(batches), 4 * 11, generator=torch.Generator().manual_seed(1))

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            outputs = [model(**batch, noise=noise) for batch, noise in zip(batches, masks)]
        loss = sum(output.loss.item() for output in outputs) / len(outputs)
        cosine = torch.cat([bev_cosine_similarity(o.reconstruction, o.normalized_target) for o in outputs]).mean()
        return loss, cosine.item()

    initial_loss, initial_cosine = evaluate()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    for step in range(40):
        loss = model(**batches[step % len(batches)]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final_loss, final_cosine = evaluate()
    print(f"loss {initial_loss:.3f} -> {final_loss:.3f}, cosine {initial_cosine:.3f} -> {final_cosine:.3f}")
    assert final_loss < 0.75 * initial_loss
    assert abs(initial_cosine) < 0.1 and final_cosine > initial_cosine + 0.4
