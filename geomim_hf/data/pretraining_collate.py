"""Batches for GeoMIM pretraining, in the LiDAR frame of the key frame.

bevfusion and GeoMIM pretraining put the points, the camera geometry (``camera2lidar``), the BEV grid and the flip
augmentation in the LIDAR_TOP frame, not the ego frame: the frozen LiDAR teacher was trained on points in that frame.
The loader (:func:`~geomim_hf.data.load_nuscenes`) delivers points in the key frame's ego frame with ``lidar_to_ego``;
this collator moves them back and chains the cameras into the same frame.

Frames: ``camera_to_lidar`` is time-chained (camera -> ego at the camera's time -> global -> ego at the key frame ->
LiDAR), like mmdet3d's ``sensor2lidar``; the 22-value ``camera_vector`` is built from the *static* camera -> ego
calibration, as GeoMIM's camera-aware depth branch (``get_mlp_input`` on bevfusion's ``camera2ego``) is.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..geometry import lidar_depth_targets
from .collate import batch_generator, camera_to_key_ego, pad_rows
from .image_processing_geomim import GeoMIMImageProcessor


def camera_vector(
    camera_intrinsics: torch.Tensor, camera_to_ego: torch.Tensor, post_rot: torch.Tensor, post_tran: torch.Tensor
) -> torch.Tensor:
    """The 22 values per camera that GeoMIM's camera-aware depth branch takes (``PoseSEModule``; bevfusion's
    ``get_mlp_input``):
    fx, fy, cx, cy; post_rot[0, 0], post_rot[0, 1], post_tran[0], post_rot[1, 0], post_rot[1, 1], post_tran[1]; then
    the top 3x4 of camera-to-ego, flattened row-major.

    Args:
        camera_intrinsics: (..., 3, 3) of the source images.
        camera_to_ego: (..., 4, 4).
        post_rot: (..., 2, 2) or (..., 3, 3).
        post_tran: (..., 2) or (..., 3).

    Returns:
        (..., 22).
    """
    fx, fy = camera_intrinsics[..., 0, 0], camera_intrinsics[..., 1, 1]
    cx, cy = camera_intrinsics[..., 0, 2], camera_intrinsics[..., 1, 2]
    intrinsics_and_augmentation = torch.stack([
        fx, fy, cx, cy,
        post_rot[..., 0, 0], post_rot[..., 0, 1], post_tran[..., 0],
        post_rot[..., 1, 0], post_rot[..., 1, 1], post_tran[..., 1],
    ], dim=-1)
    return torch.cat([intrinsics_and_augmentation, camera_to_ego[..., :3, :].flatten(-2)], dim=-1)


def camera_to_key_lidar(example: dict) -> np.ndarray:
    """(N, 4, 4) float32 camera -> LiDAR frame of the key frame (bevfusion's ``camera2lidar``)."""
    lidar_to_ego = np.asarray(example["lidar_to_ego"], dtype=np.float64)
    return (np.linalg.inv(lidar_to_ego) @ camera_to_key_ego(example).astype(np.float64)).astype(np.float32)


def points_in_lidar_frame(example: dict) -> np.ndarray:
    """(P, C) float32 points of an example (ego frame of the key frame) in the key frame's LiDAR frame; the columns
    after x, y, z (intensity, time lag) are kept."""
    points = np.asarray(example["points"], dtype=np.float64)
    ego_to_lidar = np.linalg.inv(np.asarray(example["lidar_to_ego"], dtype=np.float64))
    xyz = points[:, :3] @ ego_to_lidar[:3, :3].T + ego_to_lidar[:3, 3]
    return np.concatenate([xyz, points[:, 3:]], axis=1).astype(np.float32)


@dataclasses.dataclass
class PretrainingCollator:
    """Batches nuScenes examples (from :func:`~geomim_hf.data.load_nuscenes`, with the sweeps the teacher sees, 10 in
    the original) for GeoMIM pretraining. Every tensor is float32 unless said otherwise:

    - ``pixel_values`` (B, N, 3, H, W); ``camera_intrinsics`` (B, N, 3, 3) of the source images;
    - ``camera_to_lidar`` (B, N, 4, 4): camera -> LiDAR frame of the key frame, time-chained;
    - ``post_rot`` (B, N, 3, 3), ``post_tran`` (B, N, 3): the image augmentation, ``p_aug = post_rot @ p + post_tran``;
    - ``lidar_augmentation`` (B, 4, 4): the BEV augmentation in the LiDAR frame (bevfusion's ``lidar_aug_matrix``; the
      pretraining preset only flips), already applied to ``points``; apply it to the camera geometry too;
    - ``camera_vector`` (B, N, 22): static camera -> ego calibration, intrinsics and image augmentation;
    - ``points`` (B, P, 5): x, y, z in the augmented LiDAR frame, intensity, sweep time lag (s); ``points_mask``
      (B, P) bool, False for padding;
    - ``depth_targets`` (B, N, H / d, W / d): nearest depth of the points in every d x d patch of each augmented image,
      0 where none lands (``d = depth_downsample``);
    - ``sample_tokens``: list of B strings.

    Args:
        processor: image augmentation and normalisation; GeoMIM pretraining's preset by default.
        augment: draw the training augmentation (image augmentation and BEV flips).
        depth_downsample: patch size of the depth targets, the stride of the depth branch (16 in GeoMIM).
        generator: source of the augmentation draws.
        seed: instead of ``generator``, draw each batch's augmentation from
            :func:`~geomim_hf.data.collate.batch_generator` (this seed and the batch's sample tokens).
    """

    processor: GeoMIMImageProcessor = dataclasses.field(default_factory=GeoMIMImageProcessor.geomim_pretraining)
    augment: bool = False
    depth_downsample: int = 16
    generator: torch.Generator | None = None
    seed: int | None = None

    def __call__(self, examples: list[dict]) -> dict:
        for example in examples:
            if "lidar_to_ego" not in example:
                raise KeyError(f"example {example.get('sample_token', '?')} has no 'lidar_to_ego': pretraining batches "
                               "need the LiDAR calibration (load_nuscenes provides it)")
        batch = self.processor(
            [example["images"] for example in examples],
            camera_intrinsics=np.stack([example["camera_intrinsics"] for example in examples]),
            camera_to_ego=np.stack([camera_to_key_lidar(example) for example in examples]),
            points=[points_in_lidar_frame(example) for example in examples],
            augment=self.augment,
            generator=self.generator if self.seed is None else batch_generator(self.seed, examples),
        )
        points, points_mask = pad_rows(batch["points"])
        static_camera_to_ego = torch.as_tensor(np.stack([example["camera_to_ego"] for example in examples]),
                                               dtype=torch.float32)
        data = {
            "pixel_values": batch["pixel_values"],
            "camera_intrinsics": batch["camera_intrinsics"],
            # The processor works in whatever frame the extrinsics point to: here the LiDAR frame.
            "camera_to_lidar": batch["camera_to_ego"],
            "post_rot": batch["post_rot"],
            "post_tran": batch["post_tran"],
            "lidar_augmentation": batch["bev_augmentation"],
            "camera_vector": camera_vector(batch["camera_intrinsics"], static_camera_to_ego, batch["post_rot"],
                                           batch["post_tran"]),
            "points": points,
            "points_mask": points_mask,
        }
        data["depth_targets"] = lidar_depth_targets(
            points, data["camera_intrinsics"], data["camera_to_lidar"], tuple(data["pixel_values"].shape[-2:]),
            self.depth_downsample, data["post_rot"], data["post_tran"], data["lidar_augmentation"], points_mask,
        )
        data["sample_tokens"] = [example["sample_token"] for example in examples]
        return data


__all__ = ["PretrainingCollator", "camera_to_key_lidar", "camera_vector", "points_in_lidar_frame"]
