"""Self-tests of the independent BEVDet reference (`bevdet_reference.py`) and its checkpoint builder
(`bevdet_checkpoint.py`): everything about them that can be proven without the package's detector.

Geometry and pooling are checked against hand calculations; the shifted-window Swin against transformers' `SwinLayer`;
the checkpoint layout against the shapes of the released Swin-B 4D detector (detection.md section 1).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from bevdet_checkpoint import (
    BASELINE_SWINB_4D,
    CAMERA_TO_EGO_AXES,
    GEOMIM_SWINB_4D,
    SIX_TASKS,
    DetectorSpec,
    checkpoint_shapes,
    load_checkpoint,
    random_batch,
    random_state_dict,
    save_checkpoint,
)
from bevdet_reference import (
    HEAD_NAMES,
    LSSSettings,
    StateReader,
    bevdet_forward,
    create_frustum,
    get_lidar_coor,
    swin_from_state_dict,
    view_transform,
    voxel_pooling,
)
from mmdet_swin_reference import SwinBlock
from transformers import SwinConfig
from transformers.models.swin.modeling_swin import SwinLayer

HEADLINE = LSSSettings()
# 64x192 images (stride 16: 4x12, stride 32: 2x6) on a 32x32 grid of 3.2 m cells: small, still the headline depth bins.
SMALL = LSSSettings(x=(-51.2, 51.2, 3.2), y=(-51.2, 51.2, 3.2), input_size=(64, 192))


def pool_points(points: list[tuple[int, tuple[float, float, float], float]], context: torch.Tensor,
                settings: LSSSettings) -> torch.Tensor:
    """Pools hand-placed points: (batch, (x, y, z), depth weight); point i of a batch carries `context[i]`."""
    batch = 1 + max(b for b, _, _ in points)
    per_batch = max(sum(b == index for b, _, _ in points) for index in range(batch))
    coor = torch.full((batch, 1, 1, 1, per_batch, 3), -1000.0)  # unused slots far outside the grid
    depth = torch.zeros(batch, 1, 1, 1, per_batch)
    slots = [0] * batch
    for b, xyz, weight in points:
        coor[b, 0, 0, 0, slots[b]] = torch.tensor(xyz)
        depth[b, 0, 0, 0, slots[b]] = weight
        slots[b] += 1
    features = context.T.reshape(1, 1, -1, 1, per_batch).expand(batch, 1, -1, 1, per_batch)
    return voxel_pooling(coor, depth, features, settings)


# ---------------------------------------------------------------------------------------------------------------
# Pooling


def test_voxel_pooling_puts_hand_placed_points_in_their_cells():
    context = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [-1.0, 0.5, 4.0], [7.0, 7.0, 7.0]])
    points = [
        (0, (0.5, -1.3, 0.0), 0.5),  # cell x (51.7 / 0.8 = 64.6) 64, y (49.9 / 0.8 = 62.4) 62, z (5 / 8) 0
        (0, (0.7, -1.0, 2.9), 0.25),  # the same cell: x 64.9 -> 64, y 62.75 -> 62, z 0.99 -> 0; sums
        (0, (-19.9, 30.0, -4.0), 2.0),  # x 39.1 -> 39, y 101.5 -> 101, z 0.125 -> 0
        (0, (51.25, 0.0, 0.0), 1.0),  # x 128.06 -> 128: outside, dropped
        (1, (0.5, -1.3, 0.0), 3.0),  # the first point again, in the second sample only
    ]
    pooled = pool_points(points, context, HEADLINE)
    expected = torch.zeros(2, 3, 128, 128)
    expected[0, :, 62, 64] = 0.5 * context[0] + 0.25 * context[1]
    expected[0, :, 101, 39] = 2.0 * context[2]
    expected[1, :, 62, 64] = 3.0 * context[0]
    torch.testing.assert_close(pooled, expected)


def test_cell_index_truncates_toward_zero_like_the_original_long():
    """`.long()` sends anything less than one cell below a lower bound into cell 0; a floor index would drop it."""
    context = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [9.0, 10.0]])
    points = [
        (0, (-51.2 - 0.3 * 0.8, 0.4, 0.0), 1.0),  # x index -0.3 -> 0 (floor: -1, dropped)
        (0, (-51.2 - 1.1 * 0.8, 0.4, 0.0), 1.0),  # x index -1.1 -> -1: dropped
        (0, (0.4, -51.2 - 0.9 * 0.8, 0.0), 1.0),  # y index -0.9 -> 0
        (0, (10.0, 10.0, -12.0), 1.0),  # z index (-12 + 5) / 8 = -0.875 -> 0: 7 m below the grid, still pooled
        (0, (20.0, 20.0, -13.5), 1.0),  # z index -1.06 -> -1: dropped
    ]
    assert math.floor(-0.3) == -1 and int(torch.tensor(-0.3).long()) == 0
    pooled = pool_points(points, context, HEADLINE)
    expected = torch.zeros(1, 2, 128, 128)
    expected[0, :, 64, 0] = context[0]
    expected[0, :, 0, 64] = context[2]
    expected[0, :, 76, 76] = context[3]  # (10 + 51.2) / 0.8 = 76.5 -> 76
    torch.testing.assert_close(pooled, expected)


def test_collapsed_z_bins_are_z_major_channel_blocks():
    settings = dataclasses.replace(HEADLINE, z=(-5.0, 3.0, 4.0))  # two z bins
    context = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    pooled = pool_points([(0, (0.1, 0.1, -3.0), 1.0), (0, (0.1, 0.1, 1.5), 1.0)], context, settings)
    assert pooled.shape == (1, 6, 128, 128)
    torch.testing.assert_close(pooled[0, :, 64, 64], torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    assert pooled.abs().sum() == pooled[0, :, 64, 64].abs().sum()


# ---------------------------------------------------------------------------------------------------------------
# Frustum and camera geometry


def pinhole(focal: float, cx: float, cy: float) -> torch.Tensor:
    return torch.tensor([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])


def lift(frustum, sensor2ego=None, intrinsics=None, post_rot=None, post_tran=None, bda=None) -> torch.Tensor:
    """One camera of one sample through `get_lidar_coor`; identity where not given."""
    sensor2ego = torch.eye(4) if sensor2ego is None else sensor2ego
    post_rot = torch.eye(3) if post_rot is None else post_rot
    post_tran = torch.zeros(3) if post_tran is None else post_tran
    bda = torch.eye(3) if bda is None else bda
    coor = get_lidar_coor(frustum, sensor2ego.view(1, 1, 4, 4), intrinsics.view(1, 1, 3, 3),
                          post_rot.view(1, 1, 3, 3), post_tran.view(1, 1, 3), bda.view(1, 3, 3))
    return coor[0, 0].double()


def test_frustum_spans_the_input_pixels_and_the_depth_bins():
    frustum = create_frustum(SMALL)
    assert frustum.shape == (59, 4, 12, 3)
    torch.testing.assert_close(frustum[0, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(frustum[-1, -1, -1], torch.tensor([191.0, 63.0, 59.0]))  # linspace(0, W - 1, W // 16)
    torch.testing.assert_close(frustum[3, 2, 1], torch.tensor([191.0 / 11.0, 2.0 * 63.0 / 3.0, 4.0]))


def hand_pixels() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """u, v, d of every frustum point of SMALL, (59, 4, 12) each, from the formula, in float64."""
    d = torch.arange(1.0, 60.0, dtype=torch.float64).view(-1, 1, 1).expand(59, 4, 12)
    u = (torch.arange(12, dtype=torch.float64) * 191.0 / 11.0).view(1, 1, -1).expand_as(d)
    v = (torch.arange(4, dtype=torch.float64) * 63.0 / 3.0).view(1, -1, 1).expand_as(d)
    return u, v, d


def test_identity_camera_lifts_pixels_along_pinhole_rays():
    focal, cx, cy = 100.0, 80.0, 30.0
    coor = lift(create_frustum(SMALL), intrinsics=pinhole(focal, cx, cy))
    u, v, d = hand_pixels()
    expected = torch.stack([(u - cx) * d / focal, (v - cy) * d / focal, d], dim=-1)
    torch.testing.assert_close(coor, expected, rtol=1e-5, atol=1e-4)


def test_image_augmentation_is_undone_before_the_ray():
    """Resize by 0.5, crop 10 px left and 4 px top: pixel u' of the input came from u = (u' + 10) / 0.5."""
    focal, cx, cy = 100.0, 80.0, 30.0
    resize = torch.diag(torch.tensor([0.5, 0.5, 1.0]))
    coor = lift(create_frustum(SMALL), intrinsics=pinhole(focal, cx, cy), post_rot=resize,
                post_tran=torch.tensor([-10.0, -4.0, 0.0]))
    u, v, d = hand_pixels()
    source_u, source_v = (u + 10.0) / 0.5, (v + 4.0) / 0.5
    expected = torch.stack([(source_u - cx) * d / focal, (source_v - cy) * d / focal, d], dim=-1)
    torch.testing.assert_close(coor, expected, rtol=1e-5, atol=1e-4)


def test_front_camera_extrinsics_and_bev_augmentation():
    """A front camera 1.5 m ahead and 1.6 m up: its optical axis is ego +x; BDA then rotates the ego points."""
    focal, cx, cy = 100.0, 5.0 * 191.0 / 11.0, 42.0  # the principal point is frustum pixel (w 5, h 2)
    sensor2ego = torch.eye(4)
    sensor2ego[:3, :3] = CAMERA_TO_EGO_AXES
    sensor2ego[:3, 3] = torch.tensor([1.5, 0.0, 1.6])
    frustum = create_frustum(SMALL)
    coor = lift(frustum, sensor2ego, pinhole(focal, cx, cy))
    d = torch.arange(1.0, 60.0, dtype=torch.float64)
    torch.testing.assert_close(coor[:, 2, 5], torch.stack([d + 1.5, 0 * d, 0 * d + 1.6], dim=-1), atol=1e-4, rtol=0)
    # Top-left pixel: camera (x, y) = (-cx d / f, -cy d / f) -> ego (d + 1.5, cx d / f, cy d / f + 1.6).
    top_left = torch.stack([d + 1.5, cx * d / focal, cy * d / focal + 1.6], dim=-1)
    torch.testing.assert_close(coor[:, 0, 0], top_left, rtol=1e-5, atol=1e-4)
    quarter_turn = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # (x, y, z) -> (-y, x, z)
    rotated = lift(frustum, sensor2ego, pinhole(focal, cx, cy), bda=quarter_turn)
    torch.testing.assert_close(rotated[:, 0, 0], top_left[:, [1, 0, 2]] * torch.tensor([-1.0, 1.0, 1.0],
                                                                                       dtype=torch.float64),
                               rtol=1e-5, atol=1e-4)


def test_view_transform_splats_a_one_hot_depth_where_the_rays_land():
    """depth_net with zero weights: depth logits one-hot at 10 m, context a constant vector. Every pixel then adds the
    vector once to the cell its 10 m point falls in: counted here pixel by pixel in plain Python."""
    bins, channels, focal, cx, cy, height = 59, 3, 50.0, 90.0, 30.0, 1.0
    bias = torch.zeros(bins + channels)
    bias[9] = 100.0  # d = 10 m
    context = torch.tensor([1.0, -2.0, 0.5])
    bias[bins:] = context
    reader = StateReader({"img_view_transformer.depth_net.weight": torch.zeros(bins + channels, 7, 1, 1),
                          "img_view_transformer.depth_net.bias": bias})
    sensor2ego = torch.eye(4)
    sensor2ego[:3, :3] = CAMERA_TO_EGO_AXES
    sensor2ego[2, 3] = height
    bev, depth = view_transform(reader, torch.randn(1, 1, 7, 4, 12), sensor2ego.view(1, 1, 4, 4),
                                pinhole(focal, cx, cy).view(1, 1, 3, 3), torch.eye(3).view(1, 1, 3, 3),
                                torch.zeros(1, 1, 3), torch.eye(3).view(1, 3, 3), SMALL)
    assert torch.allclose(depth[0, 0, 9], torch.ones(4, 12)) and depth.shape == (1, 1, 59, 4, 12)

    expected = torch.zeros(1, channels, 32, 32)
    truncated_rows = 0
    for row in range(4):
        for column in range(12):
            u, v, d = column * 191.0 / 11.0, row * 63.0 / 3.0, 10.0
            x, y, z = d, -(u - cx) * d / focal, -(v - cy) * d / focal + height  # optical axis = ego +x
            cell = [int((value - lower) / step) for value, lower, step in ((x, -51.2, 3.2), (y, -51.2, 3.2),
                                                                             (z, -5.0, 8.0))]
            if 0 <= cell[0] < 32 and 0 <= cell[1] < 32 and cell[2] == 0:
                expected[0, :, cell[1], cell[0]] += context
                truncated_rows += z < -5.0
    assert truncated_rows == 12  # the bottom row is 0.6 m below the grid: pooled only through `.long()` truncation
    torch.testing.assert_close(bev, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Shifted-window Swin (baseline) against transformers


def copy_into_transformers_layer(block: SwinBlock, layer: SwinLayer) -> None:
    mmdet = {key.removeprefix("attn.w_msa."): value for key, value in block.state_dict().items()}
    query, key, value = mmdet["qkv.weight"].chunk(3)
    query_bias, key_bias, value_bias = mmdet["qkv.bias"].chunk(3)
    layer.load_state_dict({
        "attention.q_proj.weight": query, "attention.q_proj.bias": query_bias,
        "attention.k_proj.weight": key, "attention.k_proj.bias": key_bias,
        "attention.v_proj.weight": value, "attention.v_proj.bias": value_bias,
        "attention.o_proj.weight": mmdet["proj.weight"], "attention.o_proj.bias": mmdet["proj.bias"],
        "attention.relative_position_bias.relative_position_bias_table": mmdet["relative_position_bias_table"],
        "layernorm_before.weight": mmdet["norm1.weight"], "layernorm_before.bias": mmdet["norm1.bias"],
        "layernorm_after.weight": mmdet["norm2.weight"], "layernorm_after.bias": mmdet["norm2.bias"],
        "mlp.fc1.weight": mmdet["ffn.layers.0.0.weight"], "mlp.fc1.bias": mmdet["ffn.layers.0.0.bias"],
        "mlp.fc2.weight": mmdet["ffn.layers.1.weight"], "mlp.fc2.bias": mmdet["ffn.layers.1.bias"],
    })


@pytest.mark.parametrize("grid", [(10, 13), (4, 5)], ids=["padded", "grid-not-larger-than-window"])
def test_shifted_block_matches_transformers_swin_layer(grid):
    """mmdet pads, then rolls by window // 2 with its region mask, like transformers; and never turns the shift off,
    like transformers only with `always_partition=True` (its default clamps the shift to 0 on grids <= window)."""
    torch.manual_seed(0)
    block = SwinBlock(dim=8, heads=2, window=4, shift=2).eval()
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    config = SwinConfig(embed_dim=8, window_size=4, num_heads=[2, 2, 2, 2], drop_path_rate=0.0)
    layer = SwinLayer(config, dim=8, input_resolution=grid, num_heads=2, shift_size=2).eval()
    copy_into_transformers_layer(block, layer)
    tokens = torch.randn(2, grid[0] * grid[1], 8)
    with torch.no_grad():
        actual = block(tokens, *grid)
        expected, _ = layer(tokens, grid, always_partition=True)
        unshifted = SwinBlock(dim=8, heads=2, window=4, shift=0).eval()
        unshifted.load_state_dict(block.state_dict())
        without_shift = unshifted(tokens, *grid)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert (actual - without_shift).abs().max() > 1e-2
    if grid == (4, 5):
        with torch.no_grad():
            clamped, _ = layer(tokens, grid)  # last: the clamp sets the layer's shift to 0 for good
        assert (clamped - expected).abs().max() > 1e-2  # transformers' default would not be the original


# ---------------------------------------------------------------------------------------------------------------
# Whole detector


@pytest.fixture(scope="module")
def temporal_state_dict():
    return random_state_dict(DetectorSpec(), seed=1)


@pytest.mark.parametrize("temporal", [False, True], ids=["bevdet", "bevdet4d"])
@pytest.mark.parametrize("tasks", [DetectorSpec().tasks, SIX_TASKS], ids=["1-task", "6-tasks"])
def test_output_shapes(temporal, tasks):
    spec = DetectorSpec(temporal=temporal, tasks=tasks)
    output = bevdet_forward(random_state_dict(spec), **random_batch(batch=2, temporal=temporal),
                            shifted_windows=spec.shifted_windows, settings=SMALL)
    assert len(output.tasks) == len(tasks)
    for names, task in zip(tasks, output.tasks, strict=True):
        assert list(task) == list(HEAD_NAMES)
        shapes = {name: tuple(value.shape) for name, value in task.items()}
        assert shapes == {"reg": (2, 2, 32, 32), "height": (2, 1, 32, 32), "dim": (2, 3, 32, 32),
                          "rot": (2, 2, 32, 32), "vel": (2, 2, 32, 32), "heatmap": (2, len(names), 32, 32)}
        for value in task.values():  # finite and far from constant: a parity test on them has something to compare
            assert torch.isfinite(value).all() and value.std() > 0.05
    assert output.bev_features.shape == (2, spec.bev_channels * spec.frames, 32, 32)
    assert output.depth.shape == (2, 6, 59, 4, 12)
    torch.testing.assert_close(output.depth.sum(dim=2), torch.ones(2, 6, 4, 12))


def test_key_frame_as_its_own_previous_frame(temporal_state_dict):
    inputs = random_batch(seed=3)
    previous = {"previous_images": inputs.pop("previous_images"),
                "previous_sensor2keyego": inputs.pop("previous_sensor2keyego")}
    channels = DetectorSpec().bev_channels

    default = bevdet_forward(temporal_state_dict, **inputs, shifted_windows=False, settings=SMALL)
    torch.testing.assert_close(default.bev_features[:, channels:], default.bev_features[:, :channels], rtol=0, atol=0)
    explicit = bevdet_forward(temporal_state_dict, **inputs, previous_images=inputs["images"],
                              previous_sensor2keyego=inputs["sensor2keyego"], shifted_windows=False, settings=SMALL)
    for default_task, explicit_task in zip(default.tasks, explicit.tasks, strict=True):
        for name in HEAD_NAMES:
            torch.testing.assert_close(explicit_task[name], default_task[name], rtol=0, atol=0)

    moved = bevdet_forward(temporal_state_dict, **inputs, previous_images=inputs["images"],
                           previous_sensor2keyego=previous["previous_sensor2keyego"], shifted_windows=False,
                           settings=SMALL)
    torch.testing.assert_close(moved.bev_features[:, :channels], default.bev_features[:, :channels], rtol=0, atol=0)
    assert (moved.bev_features[:, channels:] - default.bev_features[:, channels:]).abs().max() > 1e-2
    assert (moved.tasks[0]["heatmap"] - default.tasks[0]["heatmap"]).abs().max() > 1e-2


def test_samples_of_a_batch_are_independent(temporal_state_dict):
    inputs = random_batch(batch=2, seed=4)
    together = bevdet_forward(temporal_state_dict, **inputs, shifted_windows=False, settings=SMALL)
    for index in range(2):
        alone = bevdet_forward(temporal_state_dict, **{key: value[index:index + 1] for key, value in inputs.items()},
                               shifted_windows=False, settings=SMALL)
        for name in HEAD_NAMES:
            torch.testing.assert_close(alone.tasks[0][name], together.tasks[0][name][index:index + 1],
                                       rtol=1e-4, atol=1e-4)


def test_baseline_swin_shifts_windows():
    spec = dataclasses.replace(DetectorSpec(), absolute_position=False)
    state_dict, inputs = random_state_dict(spec), random_batch()
    shifted = bevdet_forward(state_dict, **inputs, shifted_windows=True, settings=SMALL)
    plain = bevdet_forward(state_dict, **inputs, shifted_windows=False, settings=SMALL)
    assert spec.shifted_windows and (shifted.tasks[0]["heatmap"] - plain.tasks[0]["heatmap"]).abs().max() > 1e-2
    swin = swin_from_state_dict(StateReader(state_dict), shifted_windows=True)
    assert swin.absolute_pos_embed is None
    assert [[block.attn.shift for block in stage.blocks] for stage in swin.stages] == [[0, 2], [0, 2], [0, 2], [0, 1]]


def test_reference_is_strict(temporal_state_dict):
    inputs = random_batch()
    with pytest.raises(KeyError, match="does not have"):
        bevdet_forward(temporal_state_dict | {"pts_bbox_head.task_heads.0.iou.1.weight": torch.zeros(1)}, **inputs,
                       shifted_windows=False, settings=SMALL)
    missing = {key: value for key, value in temporal_state_dict.items() if key != "img_neck.conv.4.running_var"}
    with pytest.raises(KeyError, match="img_neck.conv.4.running_var"):
        bevdet_forward(missing, **inputs, shifted_windows=False, settings=SMALL)
    with pytest.raises(ValueError, match="single-frame"):
        bevdet_forward(random_state_dict(DetectorSpec(temporal=False)), **inputs, shifted_windows=False,
                       settings=SMALL)
    with pytest.raises(ValueError, match="input size"):
        bevdet_forward(temporal_state_dict, **inputs, shifted_windows=False)  # headline 256x704, images 64x192
    with pytest.raises(ValueError, match="intrinsics"):
        bevdet_forward(temporal_state_dict, **inputs | {"intrinsics": inputs["intrinsics"][:, :5]},
                       shifted_windows=False, settings=SMALL)
    with pytest.raises(ValueError, match="previous frame"):
        bevdet_forward(temporal_state_dict, **inputs | {"previous_images": inputs["images"][:, :5]},
                       shifted_windows=False, settings=SMALL)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def test_headline_layout_has_the_released_shapes():
    """GeoMIM Swin-B BEVDet4D, 1 task of 10 classes: the shapes of detection.md section 1, without allocating."""
    shapes = checkpoint_shapes(GEOMIM_SWINB_4D)
    assert shapes["img_backbone.absolute_pos_embed"] == (1, 128, 56, 56)
    assert shapes["img_backbone.stages.2.blocks.17.attn.w_msa.relative_position_bias_table"] == (961, 16)
    assert shapes["img_backbone.stages.3.blocks.1.attn.w_msa.relative_position_index"] == (64, 64)
    assert shapes["img_backbone.norm2.weight"] == (512,) and shapes["img_backbone.norm3.weight"] == (1024,)
    assert "img_backbone.norm1.weight" not in shapes and "img_backbone.stages.3.downsample.norm.weight" not in shapes
    assert shapes["img_neck.conv.0.weight"] == (256, 1536, 3, 3)
    assert shapes["img_neck.conv.3.weight"] == (256, 256, 3, 3)
    assert not any(key.startswith("img_neck.up2") for key in shapes)
    assert shapes["img_view_transformer.depth_net.weight"] == (139, 256, 1, 1)
    assert shapes["pre_process_net.layers.0.0.downsample.weight"] == (80, 80, 3, 3)
    assert shapes["pre_process_net.layers.0.0.downsample.bias"] == (80,)
    assert "pre_process_net.layers.0.1.downsample.weight" not in shapes
    assert not any(key.startswith("pre_process_net.layers.1") for key in shapes)
    assert shapes["img_bev_encoder_backbone.layers.0.0.conv1.weight"] == (160, 160, 3, 3)
    assert shapes["img_bev_encoder_backbone.layers.2.0.downsample.weight"] == (640, 320, 3, 3)
    assert shapes["img_bev_encoder_neck.conv.0.weight"] == (512, 800, 3, 3)
    assert shapes["img_bev_encoder_neck.up2.1.weight"] == (256, 512, 3, 3)
    assert shapes["img_bev_encoder_neck.up2.4.weight"] == (256, 256, 1, 1)
    assert shapes["pts_bbox_head.shared_conv.conv.weight"] == (64, 256, 3, 3)
    assert shapes["pts_bbox_head.task_heads.0.heatmap.1.weight"] == (10, 64, 3, 3)
    assert shapes["pts_bbox_head.task_heads.0.dim.0.conv.weight"] == (64, 64, 3, 3)
    assert not any(key.startswith("pts_bbox_head.task_heads.1.") for key in shapes)
    assert {key.split(".")[0] for key in shapes} == {
        "img_backbone", "img_neck", "img_view_transformer", "pre_process_net", "img_bev_encoder_backbone",
        "img_bev_encoder_neck", "pts_bbox_head"}
    baseline = checkpoint_shapes(BASELINE_SWINB_4D)
    assert set(shapes) - set(baseline) == {"img_backbone.absolute_pos_embed"} and set(baseline) < set(shapes)


def test_single_frame_and_six_task_layouts():
    single = checkpoint_shapes(dataclasses.replace(GEOMIM_SWINB_4D, temporal=False, tasks=SIX_TASKS))
    assert not any(key.startswith("pre_process_net.") for key in single)
    assert single["img_bev_encoder_backbone.layers.0.0.conv1.weight"] == (160, 80, 3, 3)
    assert single["img_bev_encoder_backbone.layers.0.0.downsample.weight"] == (160, 80, 3, 3)
    heatmaps = [single[f"pts_bbox_head.task_heads.{task}.heatmap.1.weight"][0] for task in range(6)]
    assert heatmaps == [1, 2, 2, 1, 2, 2] and "pts_bbox_head.task_heads.6.reg.1.weight" not in single


def test_random_checkpoint_values_exercise_every_tensor(temporal_state_dict):
    spec = DetectorSpec()
    assert {key: tuple(value.shape) for key, value in temporal_state_dict.items()} == checkpoint_shapes(spec)
    for key, value in temporal_state_dict.items():
        if key.endswith(("relative_position_index", "num_batches_tracked")):
            assert value.dtype == torch.int64, key
        else:
            assert value.dtype == torch.float32, key
            assert (value.std() > 0.01) if value.numel() > 1 else (value.abs() > 0), key
    variances = [value for key, value in temporal_state_dict.items() if key.endswith("running_var")]
    assert all((value - 1).abs().max() > 0.1 and value.min() > 0 for value in variances)
    heatmap_bias = temporal_state_dict["pts_bbox_head.task_heads.0.heatmap.1.bias"]
    assert (heatmap_bias + 2.19).abs().max() < 1.0
    swin = swin_from_state_dict(StateReader(temporal_state_dict), shifted_windows=False)
    assert [len(stage.blocks) for stage in swin.stages] == list(spec.depths)
    assert [stage.blocks[0].attn.window for stage in swin.stages] == list(spec.windows)
    assert [stage.blocks[0].attn.w_msa.heads for stage in swin.stages] == list(spec.heads)


@pytest.mark.parametrize("layout,keys", [("released", {"state_dict"}), ("ema", {"epoch", "state_dict", "updates"})])
def test_checkpoint_files_load_with_weights_only(temporal_state_dict, tmp_path, layout, keys):
    path = save_checkpoint(temporal_state_dict, tmp_path / "detector.pth", layout=layout)
    assert set(torch.load(path, weights_only=True)) == keys
    loaded = load_checkpoint(path)
    assert loaded.keys() == temporal_state_dict.keys()
    assert all(torch.equal(loaded[key], value) for key, value in temporal_state_dict.items())
    with pytest.raises(FileExistsError):
        save_checkpoint(temporal_state_dict, path, layout=layout)
