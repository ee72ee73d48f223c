"""Model-ready nuScenes batches: shapes, the key-frame camera geometry, depth targets against a per-point loop, boxes
without sensor points left out of the targets, and the lift-splat chain on real loader output. The frames themselves are
checked against the devkit's tables in test_frames_devkit.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomim_hf.data.bev_augmentation import augment_boxes
from geomim_hf.data.collate import NuScenesCollator, camera_to_key_ego
from geomim_hf.data.image_processing_geomim import GeoMIMImageProcessor
from geomim_hf.data.nuscenes import load_nuscenes
from geomim_hf.data.nuscenes_constants import DETECTION_CLASSES
from geomim_hf.geometry import (
    BEVGrid,
    BEVPoolIndex,
    bev_pool,
    create_frustum,
    depth_bin_targets,
    frustum_to_ego,
    voxel_indices,
)


@pytest.fixture(scope="module")
def examples(nuscenes_root, nuscenes_spec):
    return list(load_nuscenes(nuscenes_root, nuscenes_spec.version, "mini_train", num_sweeps=1))[:2]


def _processor() -> GeoMIMImageProcessor:
    return GeoMIMImageProcessor.bevdet_finetuning(size={"height": 128, "width": 352})


@pytest.mark.parametrize("augment", [False, True])
def test_depth_targets_match_a_per_point_projection(examples, augment):
    batch = NuScenesCollator(_processor(), augment=augment, depth_downsample=16,
                             generator=torch.Generator().manual_seed(3))(examples)
    targets = batch["depth_targets"].numpy()
    assert targets.shape == (2, 6, 128 // 16, 352 // 16)
    expected = np.zeros_like(targets)
    for b, example in enumerate(examples):
        ego_to_cameras = np.linalg.inv(camera_to_key_ego(example).astype(np.float64))
        for n, ego_to_camera in enumerate(ego_to_cameras):
            intrinsics = np.asarray(example["camera_intrinsics"][n], dtype=np.float64)
            post_rot = batch["post_rot"][b, n].double().numpy()
            post_tran = batch["post_tran"][b, n].double().numpy()
            for x, y, z in np.asarray(example["points"])[:, :3].astype(np.float64):  # the loader's, un-augmented
                camera = ego_to_camera[:3, :3] @ (x, y, z) + ego_to_camera[:3, 3]
                if camera[2] <= 0:
                    continue
                u, v, _ = post_rot @ (intrinsics @ camera / camera[2]) + post_tran
                if 0 <= u < 352 and 0 <= v < 128:
                    row, column = int(v // 16), int(u // 16)
                    depth = camera[2]
                    if expected[b, n, row, column] == 0 or depth < expected[b, n, row, column]:
                        expected[b, n, row, column] = depth
    assert (expected > 0).sum() > 100
    np.testing.assert_allclose(targets, expected, rtol=1e-4, atol=1e-4)


def test_batch_layout_and_augmented_boxes(examples):
    batch = NuScenesCollator(_processor(), augment=True, generator=torch.Generator().manual_seed(0))(examples)
    assert batch["pixel_values"].shape == (2, 6, 3, 128, 352)
    assert batch["camera_to_ego"].shape == (2, 6, 4, 4) and "camera_vector" not in batch
    assert batch["sample_tokens"] == [e["sample_token"] for e in examples]
    for b, example in enumerate(examples):
        count = len(example["gt_names"])
        assert batch["gt_labels"][b, :count].min() >= 0 and (batch["gt_labels"][b, count:] == -1).all()
        expected = augment_boxes(torch.as_tensor(np.asarray(example["gt_boxes"])), batch["bev_augmentation"][b])
        torch.testing.assert_close(batch["gt_boxes"][b, :count], expected)
        assert batch["points_mask"][b].sum() == len(example["points"])
    # The cameras fire at their own times: the key-frame extrinsics differ from the per-camera ones by ego motion.
    moved = np.abs(camera_to_key_ego(examples[1])[:, :3, 3] - np.asarray(examples[1]["camera_to_ego"])[:, :3, 3])
    assert moved.max() > 0.01


def test_boxes_that_no_lidar_or_radar_point_hits_are_dropped(examples):
    """BEVDet's ``valid_flag``: a box leaves the targets only when neither LiDAR nor radar points hit it."""
    example = dict(examples[1])
    lidar, radar = list(example["gt_num_lidar_pts"]), list(example["gt_num_radar_pts"])
    lidar[2], radar[2] = 0, 0  # nothing hits box 2
    lidar[4], radar[4] = 0, 3  # only radar hits box 4: kept
    example["gt_num_lidar_pts"], example["gt_num_radar_pts"] = lidar, radar
    boxes = np.asarray(example["gt_boxes"])
    keep = np.ones(len(boxes), dtype=bool)
    keep[2] = False

    for drop, kept in ((True, keep), (False, np.ones_like(keep))):
        batch = NuScenesCollator(_processor(), drop_boxes_without_points=drop, depth_downsample=None)([example])
        labels = batch["gt_labels"][0]
        real = labels >= 0
        assert int(real.sum()) == int(kept.sum())
        np.testing.assert_allclose(batch["gt_boxes"][0][real].numpy(), boxes[kept], rtol=0, atol=1e-6)
        assert [DETECTION_CLASSES[label] for label in labels[real]] == [
            name for name, k in zip(example["gt_names"], kept) if k]


# Fine enough that a lifted patch lies within one cell of its LiDAR point: 4-pixel patches, 0.25 m depth bins.
FINE_GRID = BEVGrid(x=(-51.2, 51.2, 0.4), y=(-51.2, 51.2, 0.4), z=(-5.0, 3.0, 8.0), depth=(1.0, 60.0, 0.25))


@pytest.mark.parametrize("augment", [False, True])
def test_lifted_depth_targets_land_on_the_lidar_points_in_bev(examples, augment):
    """The whole chain on the synthetic set: loader -> augmentation -> depth targets -> one-hot depth -> frustum ->
    bev_pool. Lifting the LiDAR depth targets must put the mass on the BEV cells of the LiDAR points themselves."""
    batch = NuScenesCollator(_processor(), augment=augment, depth_downsample=4,
                             generator=torch.Generator().manual_seed(5))(examples)
    one_hot = depth_bin_targets(batch["depth_targets"], FINE_GRID)  # (B, N, D, h, w)
    frustum = create_frustum((128, 352), stride=4, grid=FINE_GRID)
    features = torch.ones(*one_hot.shape[:2], 1, *one_hot.shape[-2:])

    def lift(camera_to_ego: torch.Tensor) -> torch.Tensor:  # (B, Y, X) lifted mass
        geometry = frustum_to_ego(frustum, batch["camera_intrinsics"], camera_to_ego, batch["post_rot"],
                                  batch["post_tran"], batch["bev_augmentation"])
        return bev_pool(one_hot, features, BEVPoolIndex.from_geometry(geometry, FINE_GRID))[:, 0]

    lifted = lift(batch["camera_to_ego"])
    misplaced = batch["camera_to_ego"].clone()
    misplaced[..., 0, 3] += 2.0  # cameras 2 m off: the check must notice
    lifted_wrong = lift(misplaced)
    for b in range(len(examples)):
        points = batch["points"][b, batch["points_mask"][b], :3]  # already in the augmented ego frame
        cells, inside = voxel_indices(points, FINE_GRID)
        occupied = torch.zeros(FINE_GRID.num_y, FINE_GRID.num_x)
        occupied[cells[inside, 1], cells[inside, 0]] = 1.0
        near_points = torch.nn.functional.max_pool2d(occupied[None, None], 3, stride=1, padding=1)[0, 0]
        assert lifted[b].sum() > 1000
        assert (lifted[b] * near_points).sum() / lifted[b].sum() > 0.95
        # Ground returns form rings that a sideways error partly stays on, so the control drops to ~0.77, not to 0.
        assert (lifted_wrong[b] * near_points).sum() / lifted_wrong[b].sum() < 0.85
