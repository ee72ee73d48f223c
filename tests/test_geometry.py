"""Camera geometry and BEV grid of geomim_hf.geometry, checked against step-by-step closed forms.

``nuscenes_rig`` and ``IMAGE_AUGMENTATION`` are also used by test_bev_pool.py and test_depth_targets.py.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from geomim_hf.data.nuscenes_constants import CAMERA_CHANNELS
from geomim_hf.data.synthetic.rig import CAMERA_MOUNTS, camera_intrinsics, camera_rotation
from geomim_hf import GeoMIMBEVConfig, GeoMIMPretrainingConfig
from geomim_hf.geometry import (
    BEVGrid,
    apply_image_augmentation,
    create_frustum,
    ego_to_cameras,
    frustum_to_ego,
    project,
    transform_points,
    undo_image_augmentation,
    unproject,
    voxel_indices,
)


def nuscenes_rig(image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(6, 3, 3) intrinsics and (6, 4, 4) camera-to-ego of the six nuScenes-like cameras, in CAMERA_CHANNELS order.

    ``image_size`` is (H, W), as everywhere in geomim_hf.geometry; the rig takes (W, H).
    """
    height, width = image_size
    intrinsics, camera_to_ego = [], []
    for channel in CAMERA_CHANNELS:
        mount = CAMERA_MOUNTS[channel]
        intrinsics.append(camera_intrinsics(mount, (width, height)))
        extrinsics = np.eye(4)
        extrinsics[:3, :3] = camera_rotation(mount.yaw_deg).rotation_matrix
        extrinsics[:3, 3] = mount.translation
        camera_to_ego.append(extrinsics)
    return torch.tensor(np.stack(intrinsics)), torch.tensor(np.stack(camera_to_ego))


@dataclasses.dataclass(frozen=True)
class ImageAugmentation:
    """BEVDet-style image augmentation: resize, crop, horizontal flip, rotation about the centre of the output image."""

    resize: float
    crop: tuple[float, float]  # top-left corner of the crop in the resized image, (x, y)
    flip: bool
    rotate_deg: float
    output_size: tuple[int, int]  # (H, W)

    def apply(self, u: float, v: float) -> tuple[float, float]:
        height, width = self.output_size
        u, v = u * self.resize - self.crop[0], v * self.resize - self.crop[1]
        if self.flip:
            u = width - u
        cos, sin = math.cos(math.radians(self.rotate_deg)), math.sin(math.radians(self.rotate_deg))
        du, dv = u - width / 2, v - height / 2
        return width / 2 + cos * du - sin * dv, height / 2 + sin * du + cos * dv

    def undo(self, u: float, v: float) -> tuple[float, float]:
        height, width = self.output_size
        cos, sin = math.cos(math.radians(self.rotate_deg)), math.sin(math.radians(self.rotate_deg))
        du, dv = u - width / 2, v - height / 2
        u, v = width / 2 + cos * du + sin * dv, height / 2 - sin * du + cos * dv
        if self.flip:
            u = width - u
        return (u + self.crop[0]) / self.resize, (v + self.crop[1]) / self.resize

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(2, 2) post_rot and (2,) post_tran, read off ``apply`` (which is affine) at three points."""
        origin = np.array(self.apply(0.0, 0.0))
        columns = [np.array(self.apply(1.0, 0.0)) - origin, np.array(self.apply(0.0, 1.0)) - origin]
        return torch.tensor(np.stack(columns, axis=1)), torch.tensor(origin)


# BEVDet's grid (LSSViewTransformer): 59 bins over [1, 60) m, 128 x 128 cells of 0.8 m, one z bin.
BEVDET_GRID = BEVGrid(x=(-51.2, 51.2, 0.8), y=(-51.2, 51.2, 0.8), z=(-5.0, 3.0, 8.0), depth=(1.0, 60.0, 1.0))
# From the 1600x900 nuScenes images to a small network input, (H, W) = (128, 352).
IMAGE_AUGMENTATION = ImageAugmentation(
    resize=0.24, crop=(15.0, 80.0), flip=True, rotate_deg=-3.5, output_size=(128, 352)
)


def test_the_models_grids_have_the_documented_sizes():
    pretraining = GeoMIMPretrainingConfig().bev_grid
    assert pretraining.shape == (1, 360, 360) and pretraining.num_depth_bins == 118
    bevdet = GeoMIMBEVConfig.from_preset("bevdet4d-swinb-256x704").grid
    assert bevdet == dataclasses.replace(BEVDET_GRID, legacy_truncation=True)
    assert bevdet.shape == (1, 128, 128) and bevdet.num_depth_bins == 59
    depth = BEVDET_GRID.depth_values(dtype=torch.float64)
    assert depth[0].item() == 1.0 and depth[-1].item() == 59.0


@pytest.mark.parametrize(
    "axes, message",
    [
        (dict(x=(-1.0, 1.0, 0.3)), "not a whole number"),
        (dict(y=(1.0, -1.0, 0.5)), "start < stop"),
        (dict(depth=(0.0, 4.0, 1.0)), "in front of the camera"),
    ],
)
def test_grid_rejects_bad_axes(axes, message):
    fields = dict(x=(-1.0, 1.0, 0.5), y=(-1.0, 1.0, 0.5), z=(-1.0, 1.0, 2.0), depth=(1.0, 4.0, 1.0)) | axes
    with pytest.raises(ValueError, match=message):
        BEVGrid(**fields)


def test_voxel_indices_floor_and_legacy_truncation():
    points = torch.tensor(
        [
            [-51.2, 51.19, -5.0],  # first x cell, last y cell
            [0.79, -0.01, 2.99],
            [-51.5, 0.0, 0.0],  # less than a cell below the x bound
            [0.0, 0.0, -7.0],  # 2 m under BEVDet's z bound
            [0.0, 51.2, 0.0],  # on the y upper bound
            [float("nan"), 0.0, 0.0],
        ],
        dtype=torch.float64,
    )
    indices, inside = voxel_indices(points, BEVDET_GRID)
    assert inside.tolist() == [True, True, False, False, False, False]
    assert indices[0].tolist() == [0, 127, 0]
    assert indices[1].tolist() == [64, 63, 0]

    legacy = dataclasses.replace(BEVDET_GRID, legacy_truncation=True)
    indices, inside = voxel_indices(points, legacy)
    assert inside.tolist() == [True, True, True, True, False, False]
    assert indices[2].tolist() == [0, 64, 0] and indices[3].tolist() == [64, 64, 0]


def test_frustum_points_sit_on_linspace_pixels_and_depth_bins():
    frustum = create_frustum((256, 704), 16, BEVDET_GRID, dtype=torch.float64)
    assert frustum.shape == (59, 16, 44, 3)
    assert frustum[0, 0, 0].tolist() == [0.0, 0.0, 1.0]
    assert frustum[-1, -1, -1].tolist() == [703.0, 255.0, 59.0]
    assert frustum[3, 2, 5].tolist() == pytest.approx([5 * 703 / 43, 2 * 255 / 15, 4.0])
    with pytest.raises(ValueError, match="multiple of stride"):
        create_frustum((250, 704), 16, BEVDET_GRID)


def test_transform_points_linear_and_homogeneous():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(2, 3, 5, 3, generator=generator, dtype=torch.float64)
    rotation = torch.randn(2, 3, 3, 3, generator=generator, dtype=torch.float64)
    translation = torch.randn(2, 3, 3, generator=generator, dtype=torch.float64)
    homogeneous = torch.eye(4, dtype=torch.float64).repeat(2, 3, 1, 1)
    homogeneous[..., :3, :3], homogeneous[..., :3, 3] = rotation, translation
    expected = torch.einsum("bnij,bnpj->bnpi", rotation, points)
    torch.testing.assert_close(transform_points(points, rotation), expected)
    torch.testing.assert_close(transform_points(points, homogeneous), expected + translation[:, :, None])
    with pytest.raises(ValueError, match="leading dims"):
        transform_points(points, rotation[:, :2])
    with pytest.raises(ValueError, match=r"\(3, 3\) or \(4, 4\)"):
        transform_points(points, torch.eye(2, dtype=torch.float64).expand(2, 3, 2, 2))


def test_image_augmentation_matches_the_step_by_step_operations():
    post_rot, post_tran = IMAGE_AUGMENTATION.matrices()
    post_rot, post_tran = post_rot.expand(1, 2, 2, 2), post_tran.expand(1, 2, 2)
    pixels = torch.tensor([[[[100.0, 300.0], [1500.0, 880.0]]] * 2], dtype=torch.float64)  # (1, 2, 2, 2)
    expected = torch.tensor([IMAGE_AUGMENTATION.apply(*p) for p in pixels[0, 0].tolist()], dtype=torch.float64)
    augmented = apply_image_augmentation(pixels, post_rot, post_tran)
    torch.testing.assert_close(augmented, expected.expand(1, 2, 2, 2))
    torch.testing.assert_close(undo_image_augmentation(augmented, post_rot, post_tran), pixels)

    # bevfusion's 3x3 post_rot and 3-vector post_tran carry the same 2D augmentation.
    post_rot_3x3 = torch.eye(3, dtype=torch.float64).repeat(1, 2, 1, 1)
    post_rot_3x3[..., :2, :2] = post_rot
    post_tran_3 = torch.cat([post_tran, torch.zeros(1, 2, 1, dtype=torch.float64)], dim=-1)
    torch.testing.assert_close(apply_image_augmentation(pixels, post_rot_3x3, post_tran_3), augmented)
    with pytest.raises(ValueError, match="post_tran must have shape"):
        apply_image_augmentation(pixels, post_rot, post_tran[:, :1])


def test_project_inverts_unproject():
    intrinsics, _ = nuscenes_rig((256, 704))
    pixels = torch.tensor([[10.0, 20.0], [350.5, 128.0], [700.0, 250.0]], dtype=torch.float64).expand(1, 6, 3, 2)
    depth = torch.tensor([1.0, 7.5, 59.0], dtype=torch.float64).expand(1, 6, 3)
    points = unproject(pixels, depth, intrinsics[None])
    torch.testing.assert_close(points[..., 2], depth)
    reprojected, reprojected_depth = project(points, intrinsics[None])
    torch.testing.assert_close(reprojected, pixels)
    torch.testing.assert_close(reprojected_depth, depth)


def test_frustum_to_ego_follows_the_camera_rays():
    intrinsics, camera_to_ego = nuscenes_rig((256, 704))
    frustum = create_frustum((256, 704), 16, BEVDET_GRID, dtype=torch.float64)
    geometry = frustum_to_ego(frustum, intrinsics[None], camera_to_ego[None])
    assert geometry.shape == (1, 6, 59, 16, 44, 3)
    for camera, channel in enumerate(CAMERA_CHANNELS):
        mount = CAMERA_MOUNTS[channel]
        k = intrinsics[camera]
        u, v, depth = frustum[20, 9, 30].tolist()
        ray = [(u - k[0, 2].item()) / k[0, 0].item() * depth, (v - k[1, 2].item()) / k[1, 1].item() * depth, depth]
        expected = camera_rotation(mount.yaw_deg).rotate(ray) + np.array(mount.translation)
        np.testing.assert_allclose(geometry[0, camera, 20, 9, 30].numpy(), expected, rtol=0, atol=1e-9)


def test_frustum_to_ego_is_differentiable_in_the_cameras():
    intrinsics, camera_to_ego = nuscenes_rig((32, 64))
    frustum = create_frustum((32, 64), 16, BEVGrid(x=(-4.0, 4.0, 1.0), y=(-4.0, 4.0, 1.0), z=(-2.0, 2.0, 4.0),
                                                   depth=(1.0, 3.0, 1.0)), dtype=torch.float64)
    post_rot, post_tran = IMAGE_AUGMENTATION.matrices()
    inputs = (
        intrinsics[None, :2].clone().requires_grad_(),
        camera_to_ego[None, :2].clone().requires_grad_(),
        post_rot.expand(1, 2, 2, 2).clone().requires_grad_(),
        post_tran.expand(1, 2, 2).clone().requires_grad_(),
    )
    assert torch.autograd.gradcheck(lambda *cameras: frustum_to_ego(frustum, *cameras), inputs)


def test_ego_to_cameras_inverts_camera_to_ego_and_bev_augmentation():
    _, camera_to_ego = nuscenes_rig((256, 704))
    points_camera = torch.tensor([[1.0, -0.5, 12.0], [-3.0, 0.2, 30.0]], dtype=torch.float64).expand(1, 6, 2, 3)
    points_ego = transform_points(points_camera, camera_to_ego[None])  # (1, 6, 2, 3)
    bev_augmentation = torch.tensor([[[0.0, -1.05, 0.0, 2.0], [1.05, 0.0, 0.0, -1.0], [0.0, 0.0, 1.05, 0.5],
                                      [0.0, 0.0, 0.0, 1.0]]], dtype=torch.float64)
    for camera in range(6):
        augmented = transform_points(points_ego[:, camera], bev_augmentation)  # (1, 2, 3)
        recovered = ego_to_cameras(augmented, camera_to_ego[None], bev_augmentation)
        torch.testing.assert_close(recovered[:, camera], points_camera[:, camera])


def test_geometry_rejects_mismatched_cameras():
    intrinsics, camera_to_ego = nuscenes_rig((256, 704))
    frustum = create_frustum((256, 704), 16, BEVDET_GRID, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"camera_to_ego must have shape \(B, N, 4, 4\) = \(1, 6, 4, 4\)"):
        frustum_to_ego(frustum, intrinsics[None], camera_to_ego[None, :5])
    with pytest.raises(ValueError, match="pass both or neither"):
        frustum_to_ego(frustum, intrinsics[None], camera_to_ego[None], post_rot=torch.eye(2).expand(1, 6, 2, 2))
    with pytest.raises(ValueError, match="bev_augmentation must have shape"):
        frustum_to_ego(frustum, intrinsics[None], camera_to_ego[None], bev_augmentation=torch.eye(3)[None, None])
