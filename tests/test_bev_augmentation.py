"""BEV augmentation: boxes, points and the ``bda`` matrix stay consistent with each other and with BEVDet."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import points_in_box
from pyquaternion import Quaternion

from geomim_hf.data.bev_augmentation import (
    augment_boxes,
    augment_points,
    bev_augmentation_matrix,
    sample_bev_augmentation,
)

BEVDET_RANGES = dict(rotation_range_deg=(-22.5, 22.5), scale_range=(0.95, 1.05), flip_x_probability=0.5,
                     flip_y_probability=0.5)


def random_boxes(count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 9) boxes with centres within 40 m, sizes 0.5-5 m, any yaw and velocities up to 10 m/s."""
    unit = torch.rand(count, 9, generator=generator, dtype=torch.float64)
    low = torch.tensor([-40.0, -40.0, -2.0, 0.5, 0.5, 0.5, -math.pi, -10.0, -10.0], dtype=torch.float64)
    high = torch.tensor([40.0, 40.0, 2.0, 5.0, 5.0, 5.0, math.pi, 10.0, 10.0], dtype=torch.float64)
    return (low + (high - low) * unit).float()


def points_at(boxes: torch.Tensor, local_fraction: torch.Tensor) -> torch.Tensor:
    """Ego points at ``local_fraction`` (K, 3) of each box's half-size (w along y, l along x), in the box's own axes.

    Returns (M * K, 3), box by box.
    """
    cos, sin = torch.cos(boxes[:, 6]), torch.sin(boxes[:, 6])
    half_size = torch.stack([boxes[:, 4], boxes[:, 3], boxes[:, 5]], dim=1) / 2  # (l, w, h) along box x, y, z
    local = local_fraction[None] * half_size[:, None]  # (M, K, 3)
    x = boxes[:, None, 0] + cos[:, None] * local[..., 0] - sin[:, None] * local[..., 1]
    y = boxes[:, None, 1] + sin[:, None] * local[..., 0] + cos[:, None] * local[..., 1]
    z = boxes[:, None, 2] + local[..., 2]
    return torch.stack([x, y, z], dim=-1).reshape(-1, 3)


def devkit_box(box: torch.Tensor) -> Box:
    return Box(box[:3].tolist(), box[3:6].tolist(), Quaternion(axis=(0.0, 0.0, 1.0), angle=box[6].item()))


def test_matrix_matches_hand_computed_rotation_scale_and_flip():
    bda = bev_augmentation_matrix(rotation_deg=90.0, scale=2.0, flip_x=True)
    # (1, 0, 0) turns to (0, 1, 0), scales to (0, 2, 0), and the x-flip leaves it; (0, 1, 0) -> (-2, 0, 0) -> (2, 0, 0).
    points = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    expected = torch.tensor([[0.0, 2.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    torch.testing.assert_close(augment_points(points, bda), expected, atol=1e-6, rtol=0)
    assert bda.shape == (4, 4) and bda.dtype == torch.float32
    torch.testing.assert_close(bda[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_zero_ranges_are_the_identity():
    generator = torch.Generator().manual_seed(0)
    bda = sample_bev_augmentation(generator=generator)
    torch.testing.assert_close(bda, torch.eye(4))
    boxes = random_boxes(8, generator)
    points = torch.randn(20, 5, generator=generator)
    torch.testing.assert_close(augment_boxes(boxes, bda), boxes)
    torch.testing.assert_close(augment_points(points, bda), points)


@pytest.mark.parametrize("seed", range(6))
def test_points_stay_inside_their_boxes(seed):
    generator = torch.Generator().manual_seed(seed)
    bda = sample_bev_augmentation(**BEVDET_RANGES, generator=generator)
    boxes = random_boxes(5, generator)
    corners = torch.tensor([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=torch.float32)
    inside = points_at(boxes, torch.cat([0.9 * corners, torch.zeros(1, 3)]))  # 9 per box
    outside = points_at(boxes, 1.1 * torch.cat([torch.eye(3), -torch.eye(3)]))  # 6 per box, just past each face
    moved_boxes = augment_boxes(boxes, bda)
    moved_inside = augment_points(inside, bda).view(5, 9, 3)
    moved_outside = augment_points(outside, bda).view(5, 6, 3)
    for box, box_inside, box_outside in zip(moved_boxes, moved_inside, moved_outside):
        assert points_in_box(devkit_box(box), box_inside.T.numpy().astype(np.float64)).all()
        assert not points_in_box(devkit_box(box), box_outside.T.numpy().astype(np.float64)).any()


@pytest.mark.parametrize("flip_x, flip_y", [(False, False), (True, False), (False, True), (True, True)])
def test_yaw_follows_bevdet(flip_x, flip_y):
    boxes = torch.tensor([[10.0, -3.0, 0.5, 2.0, 4.5, 1.6, 0.3, 1.0, 2.0]])
    rotation_deg = 15.0
    moved = augment_boxes(boxes, bev_augmentation_matrix(rotation_deg, 1.02, flip_x, flip_y))
    # BEVDet's bev_transform: add the rotation, then yaw -> pi - yaw for an x-flip and yaw -> -yaw for a y-flip.
    yaw = 0.3 + math.radians(rotation_deg)
    yaw = math.pi - yaw if flip_x else yaw
    yaw = -yaw if flip_y else yaw
    assert math.cos(moved[0, 6] - yaw) == pytest.approx(1.0, abs=1e-6)
    assert -math.pi < moved[0, 6] <= math.pi
    torch.testing.assert_close(moved[0, 3:6], boxes[0, 3:6] * 1.02)


def test_velocity_is_the_rate_of_the_moved_centre():
    generator = torch.Generator().manual_seed(1)
    bda = bev_augmentation_matrix(rotation_deg=-17.0, scale=1.04, flip_x=True, flip_y=False)
    boxes = random_boxes(6, generator)
    later = boxes.clone()
    later[:, :2] += 0.5 * boxes[:, 7:9]  # the same boxes half a second later
    moved, moved_later = augment_boxes(boxes, bda), augment_boxes(later, bda)
    torch.testing.assert_close((moved_later[:, :2] - moved[:, :2]) / 0.5, moved[:, 7:9], atol=1e-4, rtol=0)


def test_inverse_undoes_the_augmentation():
    generator = torch.Generator().manual_seed(2)
    bda = sample_bev_augmentation(**BEVDET_RANGES, generator=generator)
    inverse = torch.linalg.inv(bda)
    torch.testing.assert_close(bda @ inverse, torch.eye(4), atol=1e-6, rtol=0)
    boxes = random_boxes(10, generator)
    restored = augment_boxes(augment_boxes(boxes, bda), inverse)
    torch.testing.assert_close(restored[:, [0, 1, 2, 3, 4, 5, 7, 8]], boxes[:, [0, 1, 2, 3, 4, 5, 7, 8]],
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cos(restored[:, 6] - boxes[:, 6]), torch.ones(10), atol=1e-6, rtol=0)


def test_translation_of_a_homogeneous_bda_moves_centres_not_velocities():
    bda = torch.eye(4)
    bda[:3, 3] = torch.tensor([1.0, -2.0, 0.5])
    boxes = torch.tensor([[1.0, 2.0, 3.0, 1.0, 2.0, 1.5, 0.2, 4.0, -1.0]])
    moved = augment_boxes(boxes, bda)
    torch.testing.assert_close(moved[0, :3], torch.tensor([2.0, 0.0, 3.5]))
    torch.testing.assert_close(moved[0, 3:], boxes[0, 3:])
    torch.testing.assert_close(augment_boxes(boxes, bda[:3, :3]), boxes)  # the (3, 3) form has no translation


def test_rejects_what_boxes_cannot_follow():
    boxes = torch.zeros(2, 9)
    shear = torch.eye(3)
    shear[0, 1] = 0.3
    with pytest.raises(ValueError, match="rotate about ego z"):
        augment_boxes(boxes, shear)
    with pytest.raises(ValueError, match="rotate about ego z"):
        augment_boxes(boxes, torch.diag(torch.tensor([1.0, 1.0, -1.0])))  # turns the world upside down
    with pytest.raises(ValueError, match=r"boxes must have shape \(M, 9\)"):
        augment_boxes(torch.zeros(2, 7), torch.eye(4))
    with pytest.raises(ValueError, match=r"points must have shape \(P, C >= 3\)"):
        augment_points(torch.zeros(5, 2), torch.eye(4))
    with pytest.raises(ValueError, match=r"bda must have shape \(3, 3\) or \(4, 4\)"):
        augment_points(torch.zeros(5, 3), torch.eye(2))
