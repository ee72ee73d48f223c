"""GeoMIMForBEVDetection: CenterPoint targets and decoding, rotated NMS, losses, the head on the trunk.

The trunk's own behaviour is in `test_bev_trunk.py`, save / reload and bad inputs in `test_models_common.py`, parity
with the original detector in `test_convert_bevdet.py`; learning is shown by the finetuning tests.
"""

import math

import pytest
import shapely.geometry
import shapely.affinity
import torch

from geomim_hf import GeoMIMBEVConfig, GeoMIMBEVDetectionConfig, GeoMIMConfig, GeoMIMForBEVDetection
from geomim_hf.models.bevdet.centerpoint import (
    box_cells,
    box_regression_targets,
    detection_loss,
    draw_heatmaps,
    gaussian_focal_loss,
    gaussian_radius,
)
from geomim_hf.models.bevdet.configuration_bevdet import SIX_TASKS
from geomim_hf.models.bevdet.post_processing import greedy_suppression, rotated_iou

TINY_ENCODER = GeoMIMConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=[4, 4, 4, 2])


def tiny_trunk(**overrides) -> GeoMIMBEVConfig:
    settings = dict(encoder_config=TINY_ENCODER, image_size=[64, 192], image_neck_channels=16, context_channels=8,
                    grid_x=[-25.6, 25.6, 0.8], grid_y=[-25.6, 25.6, 0.8], depth_bins=[1.0, 30.0, 1.0],
                    bev_encoder_channels=[16, 32, 64], bev_neck_channels=16)
    return GeoMIMBEVConfig(**(settings | overrides))


def tiny_config(trunk: GeoMIMBEVConfig | None = None, **overrides) -> GeoMIMBEVDetectionConfig:
    settings = dict(head_channels=8, task_head_channels=8)
    return GeoMIMBEVDetectionConfig(bev_config=trunk or tiny_trunk(), **(settings | overrides))


def rig(batch: int = 1, cameras: int = 6) -> dict[str, torch.Tensor]:
    """Six cameras around the ego at 1.5 m height, 60 degrees apart, looking horizontally outwards."""
    camera_to_ego = torch.eye(4).repeat(batch, cameras, 1, 1)
    for camera in range(cameras):
        yaw = 2 * math.pi * camera / cameras
        forward = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0])
        right = torch.tensor([math.sin(yaw), -math.cos(yaw), 0.0])
        down = torch.tensor([0.0, 0.0, -1.0])
        camera_to_ego[:, camera, :3, :3] = torch.stack([right, down, forward], dim=1)  # columns: camera axes in ego
        camera_to_ego[:, camera, :3, 3] = torch.tensor([0.5, 0.0, 1.5]) + forward
    intrinsics = torch.tensor([[100.0, 0.0, 96.0], [0.0, 100.0, 32.0], [0.0, 0.0, 1.0]]).repeat(batch, cameras, 1, 1)
    return {"camera_intrinsics": intrinsics, "camera_to_ego": camera_to_ego,
            "post_rot": torch.eye(3).repeat(batch, cameras, 1, 1), "post_tran": torch.zeros(batch, cameras, 3)}


def random_inputs(config, batch=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, 6, 3, *config.bev_config.image_size, generator=generator)
    return {"pixel_values": pixel_values, **rig(batch)}


# ---------------------------------------------------------------------------------------------------------- targets


def test_gaussian_radius_matches_a_hand_calculation():
    # CenterNet's three cases for a 4 x 2 cell box at overlap 0.1, with mmdet3d's (b + sqrt(d)) / 2 roots.
    h, w, o = 4.0, 2.0, 0.1
    r1 = ((h + w) + math.sqrt((h + w) ** 2 - 4 * w * h * (1 - o) / (1 + o))) / 2
    r2 = (2 * (h + w) + math.sqrt(4 * (h + w) ** 2 - 16 * (1 - o) * w * h)) / 2
    r3 = (-2 * o * (h + w) + math.sqrt(4 * o**2 * (h + w) ** 2 - 16 * o * (o - 1) * w * h)) / 2
    assert gaussian_radius(torch.tensor(h), torch.tensor(w), o).item() == pytest.approx(min(r1, r2, r3), rel=1e-6)


def test_heatmap_of_one_box_is_the_truncated_gaussian_at_its_cell():
    heatmap = draw_heatmaps(torch.tensor([[[5, 3]]]), torch.tensor([[2]]), torch.tensor([[1]]),
                            torch.tensor([[True]]), num_classes=2, num_x=10, num_y=8)
    sigma = 5 / 6  # (2 r + 1) / 6
    expected = torch.zeros(2, 8, 10)
    for y in range(8):
        for x in range(10):
            if abs(x - 5) <= 2 and abs(y - 3) <= 2:
                expected[1, y, x] = math.exp(-((x - 5) ** 2 + (y - 3) ** 2) / (2 * sigma**2))
    torch.testing.assert_close(heatmap[0], expected)


def test_gaussian_focal_loss_matches_a_hand_calculation():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, -3.0]]]])
    target = torch.tensor([[[[1.0, 0.5], [0.0, 0.25]]]])
    p = torch.sigmoid(logits)[0, 0]
    expected = (-math.log(p[0, 0]) * (1 - p[0, 0]) ** 2  # the one peak
                - math.log(1 - p[0, 1]) * p[0, 1] ** 2 * 0.5**4
                - math.log(1 - p[1, 0]) * p[1, 0] ** 2
                - math.log(1 - p[1, 1]) * p[1, 1] ** 2 * 0.75**4)
    assert gaussian_focal_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def perfect_head_outputs(config, gt_boxes, gt_labels):
    """Head maps that the targets say are right: heatmap logits of the target heatmaps, regression at box cells."""
    valid, centre, cell, radius = box_cells(gt_boxes, gt_labels, config)
    targets = box_regression_targets(gt_boxes, centre, cell)
    grid = config.bev_config.grid
    outputs, first = [], 0
    for task in config.tasks:
        class_index = gt_labels - first
        in_task = valid & (class_index >= 0) & (class_index < len(task))
        first += len(task)
        heatmap = draw_heatmaps(cell, radius, class_index, in_task, len(task), grid.num_x, grid.num_y)
        maps = torch.zeros(gt_boxes.shape[0], 10, grid.num_y, grid.num_x)
        batch_index, box_index = in_task.nonzero(as_tuple=True)
        maps[batch_index, :, cell[batch_index, box_index, 1], cell[batch_index, box_index, 0]] = targets[in_task]
        outputs.append({"reg": maps[:, 0:2], "height": maps[:, 2:3], "dim": maps[:, 3:6], "rot": maps[:, 6:8],
                        "vel": maps[:, 8:10], "heatmap": torch.logit(heatmap.clamp(1e-6, 1 - 1e-6))})
    return tuple(outputs)


@pytest.mark.parametrize("tasks", [[list(SIX_TASKS[0] + SIX_TASKS[1] + SIX_TASKS[2] + SIX_TASKS[3] + SIX_TASKS[4]
                                         + SIX_TASKS[5])], [list(task) for task in SIX_TASKS]])
def test_targets_then_perfect_outputs_decode_to_the_ground_truth(tasks):
    num_tasks = len(tasks)
    config = tiny_config(tasks=tasks, nms_types=["rotate"] * num_tasks, nms_thresholds=[0.2] * num_tasks)
    # Ten boxes, one per class, far apart (no NMS interaction), any yaw, sizes in (w, l, h).
    xs = torch.tensor([-20.0, -12.3, -4.1, 3.3, 11.9, 19.7, -16.2, -3.7, 7.5, 16.6])
    ys = torch.tensor([-18.1, -9.4, 14.2, -15.6, 6.6, -2.2, 9.9, 0.7, 19.1, -20.3])
    sizes = torch.tensor([[1.9, 4.6, 1.7], [2.5, 6.9, 2.8], [2.8, 6.4, 3.2], [2.9, 11.0, 3.5], [2.9, 12.3, 3.9],
                          [2.5, 0.5, 1.0], [0.8, 2.1, 1.5], [0.6, 1.7, 1.3], [0.7, 0.7, 1.8], [0.4, 0.4, 1.1]])
    yaw = torch.linspace(-3.0, 3.0, 10)
    boxes = torch.cat([torch.stack([xs, ys, torch.linspace(-1, 1, 10)], 1), sizes, yaw[:, None],
                       torch.stack([torch.linspace(-5, 5, 10), torch.linspace(3, -3, 10)], 1)], dim=1)
    gt_boxes = torch.cat([boxes, torch.zeros(2, 9)])[None]  # two padding rows
    gt_labels = torch.cat([torch.arange(10), torch.tensor([-1, -1])])[None]
    model = GeoMIMForBEVDetection(config)
    outputs = type("Outputs", (), {"head_outputs": perfect_head_outputs(config, gt_boxes, gt_labels)})
    (detections,) = model.post_process(outputs, score_threshold=0.5)
    assert sorted(detections["labels"].tolist()) == list(range(10))
    order = detections["labels"].argsort()
    torch.testing.assert_close(detections["boxes"][order], boxes, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(detections["scores"], torch.full((10,), 1 - 1e-6), atol=1e-5, rtol=0)


def test_loss_is_zero_for_perfect_regression_and_counts_only_box_cells():
    config = tiny_config()
    gt_boxes = torch.tensor([[[3.0, 4.0, 0.5, 1.9, 4.6, 1.7, 0.3, 1.0, 0.0], [0, 0, 0, 0, 0, 0, 0, 0, 0]]])
    gt_labels = torch.tensor([[0, -1]])
    outputs = perfect_head_outputs(config, gt_boxes, gt_labels)
    assert detection_loss(outputs, gt_boxes, gt_labels, config)["bbox"].item() == pytest.approx(0.0, abs=1e-6)
    # A height error of 2 at the box's cell: 0.25 * 2 / (1 box + 1e-4); errors elsewhere cost nothing.
    outputs[0]["height"] = outputs[0]["height"] + 2.0 * (outputs[0]["height"] == outputs[0]["height"].max())
    outputs[0]["vel"][:, :, 0, 0] += 50.0
    loss = detection_loss(outputs, gt_boxes, gt_labels, config)["bbox"].item()
    assert loss == pytest.approx(0.25 * 2.0 / (1 + 1e-4), rel=1e-5)


def test_boxes_outside_the_grid_get_no_target():
    config = tiny_config()
    gt_boxes = torch.tensor([[[25.7, 0.0, 0.0, 1.9, 4.6, 1.7, 0.0, 0.0, 0.0]]])  # x beyond 25.6
    valid, *_ = box_cells(gt_boxes, torch.tensor([[0]]), config)
    assert not valid.any()


# -------------------------------------------------------------------------------------------------------------- NMS


def shapely_rectangle(x, y, length, width, yaw):
    rectangle = shapely.geometry.box(-length / 2, -width / 2, length / 2, width / 2)
    return shapely.affinity.translate(shapely.affinity.rotate(rectangle, yaw, use_radians=True), x, y)


def shapely_iou(a, b) -> float:
    pa, pb = shapely_rectangle(*a), shapely_rectangle(*b)
    return pa.intersection(pb).area / pa.union(pb).area


def random_rectangles(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 6
    sizes = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 3 + 0.2
    yaw = (torch.rand(count, generator=generator, dtype=torch.float64) - 0.5) * 2 * math.pi
    return torch.cat([centres, sizes, yaw[:, None]], dim=1)


def test_rotated_iou_matches_shapely():
    rectangles = random_rectangles(60, seed=1)
    first, second = torch.triu_indices(60, 60, offset=1)
    iou = rotated_iou(rectangles[first], rectangles[second])
    expected = torch.tensor([shapely_iou(rectangles[i].tolist(), rectangles[j].tolist())
                             for i, j in zip(first.tolist(), second.tolist())], dtype=torch.float64)
    assert (expected > 0.05).sum() > 100  # plenty of real overlaps among the pairs
    torch.testing.assert_close(iou, expected, atol=1e-6, rtol=1e-6)
    # Identical, contained and edge-sharing rectangles: the degenerate cases of the vertex search.
    same = torch.tensor([[1.0, 1.0, 2.0, 1.0, 0.3]], dtype=torch.float64)
    inner = torch.tensor([[1.0, 1.0, 1.0, 0.5, 0.3]], dtype=torch.float64)
    touching = torch.tensor([[3.0, 1.0, 2.0, 1.0, 0.0]], dtype=torch.float64)
    assert rotated_iou(same, same).item() == pytest.approx(1.0)
    assert rotated_iou(same, inner).item() == pytest.approx(0.25)
    assert rotated_iou(torch.tensor([[1.0, 1.0, 2.0, 1.0, 0.0]], dtype=torch.float64), touching).item() == \
        pytest.approx(0.0, abs=1e-9)


def test_greedy_suppression_matches_a_sequential_shapely_nms():
    for seed in range(3):
        rectangles = random_rectangles(80, seed=10 + seed)  # sorted by descending score: index order
        iou = torch.zeros(80, 80, dtype=torch.bool)
        first, second = torch.triu_indices(80, 80, offset=1)
        iou[first, second] = rotated_iou(rectangles[first], rectangles[second]) > 0.2
        keep = greedy_suppression(iou[None], torch.ones(1, 80, dtype=torch.bool))[0]
        expected = []
        for index in range(80):
            if all(shapely_iou(rectangles[index].tolist(), rectangles[kept].tolist()) <= 0.2 for kept in expected):
                expected.append(index)
        assert keep.nonzero().squeeze(1).tolist() == expected


# ------------------------------------------------------------------------------------------------------- the model


def test_forward_shapes_loss_and_backward():
    config = tiny_config(depth_loss_weight=3.0)
    model = GeoMIMForBEVDetection(config)
    inputs = random_inputs(config, batch=2)
    gt_boxes = torch.tensor([[[3.0, 4.0, 0.5, 1.9, 4.6, 1.7, 0.3, 1.0, 0.0]]]).repeat(2, 1, 1)
    depth_targets = torch.zeros(2, 6, 4, 12)
    depth_targets[:, :, 2, 5] = 7.5
    outputs = model(**inputs, gt_boxes=gt_boxes, gt_labels=torch.zeros(2, 1, dtype=torch.long),
                    depth_targets=depth_targets)
    grid = config.bev_config.grid
    assert outputs.bev_features.shape == (2, 16, grid.num_y, grid.num_x)
    assert outputs.head_outputs[0]["heatmap"].shape == (2, 10, grid.num_y, grid.num_x)
    assert outputs.depth_probabilities.shape == (2, 6, grid.num_depth_bins, 4, 12)
    torch.testing.assert_close(outputs.loss, outputs.heatmap_loss + outputs.bbox_loss + outputs.depth_loss)
    outputs.loss.backward()
    assert model.bev_model.encoder.geomim.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert model.head.task_heads[0].outputs["heatmap"][-1].bias.detach().eq(-2.19).all()


def test_the_head_reads_the_trunks_bev_features():
    config = tiny_config()
    model = GeoMIMForBEVDetection(config).eval()
    inputs = random_inputs(config)
    with torch.no_grad():
        outputs = model(**inputs)
        trunk = model.bev_model(**inputs)
        head = model.head(trunk.bev_features)
    torch.testing.assert_close(outputs.bev_features, trunk.bev_features, rtol=0, atol=0)
    for ours, expected in zip(outputs.head_outputs, head):
        for name in expected:
            torch.testing.assert_close(ours[name], expected[name], rtol=0, atol=0)


@pytest.mark.parametrize("change, message", [
    (lambda targets: targets.pop("gt_labels"), "pass both or neither"),
    (lambda targets: targets.update(gt_labels=torch.full((1, 1), 10)), r"gt_labels index the model's 10 classes"),
    (lambda targets: targets.update(gt_boxes=torch.zeros(1, 1, 7)), r"gt_boxes must be \(batch_size, max_boxes, 9\)"),
])
def test_bad_targets_are_named(change, message):
    config = tiny_config()
    model = GeoMIMForBEVDetection(config)
    targets = {"gt_boxes": torch.zeros(1, 1, 9), "gt_labels": torch.zeros(1, 1, dtype=torch.long)}
    change(targets)
    with pytest.raises(ValueError, match=message):
        model(**random_inputs(config), **targets)


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="unknown"):
        tiny_config(tasks=[["car", "tram"]])
    with pytest.raises(ValueError, match="nms_rescale_factors"):
        tiny_config(nms_rescale_factors=[1.0])
    with pytest.raises(ValueError, match="belong in bev_config"):
        GeoMIMBEVDetectionConfig(bev_config=tiny_trunk(), image_size=[64, 192])


def test_a_collated_4d_batch_goes_into_the_model_through_the_batch_contract(nuscenes_root, nuscenes_spec):
    from geomim_hf.data import GeoMIMImageProcessor, NuScenesCollator, load_nuscenes
    from geomim_hf.models.inputs import model_inputs

    config = tiny_config(tiny_trunk(image_size=[128, 352]))
    model = GeoMIMForBEVDetection(config).eval()
    examples = list(load_nuscenes(nuscenes_root, nuscenes_spec.version, "mini_train", num_sweeps=1,
                                  previous_frames=1))[:2]
    collate = NuScenesCollator(GeoMIMImageProcessor(size={"height": 128, "width": 352}, test_resize=1.0),
                               previous_frames=1, class_names=config.class_names)
    batch = collate(examples)
    with torch.no_grad():
        outputs = model(**model_inputs(model, batch))
        evaluation = model(**model_inputs(model, batch, targets=False))
    assert outputs.loss is not None and torch.isfinite(outputs.loss)
    assert evaluation.loss is None  # no targets at evaluation: no loss computed
    torch.testing.assert_close(evaluation.head_outputs[0]["heatmap"], outputs.head_outputs[0]["heatmap"])
    assert len(model.post_process(outputs)) == 2
