"""From loader examples to model-ready batches."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..geometry import lidar_depth_targets
from .image_processing_geomim import GeoMIMImageProcessor
from .nuscenes_constants import DETECTION_CLASSES

_CLASS_INDEX = {name: index for index, name in enumerate(DETECTION_CLASSES)}


def camera_to_key_ego(example: dict) -> np.ndarray:
    """(N, 4, 4) camera -> ego frame of the LiDAR key frame (BEVDet's ``sensor2keyego``).

    Each camera fires at its own time, when the car is elsewhere: chain camera -> ego at the camera's time -> global
    -> ego at the key frame, the frame of the boxes and points.
    """
    global_to_key_ego = np.linalg.inv(np.asarray(example["ego_to_global"], dtype=np.float64))
    camera_to_ego = np.asarray(example["camera_to_ego"], dtype=np.float64)
    camera_ego_to_global = np.asarray(example["camera_ego_to_global"], dtype=np.float64)
    return (global_to_key_ego @ camera_ego_to_global @ camera_to_ego).astype(np.float32)


def pad_rows(arrays: list[torch.Tensor], fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack B tensors (R_b, C) into (B, max R_b, C) and a (B, max R_b) mask of real rows."""
    rows = max((len(a) for a in arrays), default=0)
    padded = arrays[0].new_full((len(arrays), rows, arrays[0].shape[1]), fill)
    mask = torch.zeros(len(arrays), rows, dtype=torch.bool)
    for index, array in enumerate(arrays):
        padded[index, : len(array)] = array
        mask[index, : len(array)] = True
    return padded, mask


@dataclasses.dataclass
class NuScenesCollator:
    """Batches nuScenes examples (from :func:`~geomim_hf.data.load_nuscenes`) for GeoMIM and BEVDet models.

    The batch holds the processor's outputs (``pixel_values`` (B, N, 3, H, W), ``camera_intrinsics``,
    ``camera_to_ego`` into the key-frame ego frame, ``post_rot``, ``post_tran``, ``camera_vector``,
    ``bev_augmentation``), plus ``points`` (B, P, 5) with ``points_mask``, ``gt_boxes`` (B, M, 9) with
    ``gt_labels`` (B, M) (index in ``DETECTION_CLASSES``, -1 for padding), all in the augmented ego frame, and, when
    ``depth_downsample`` is set, ``depth_targets`` (B, N, H / d, W / d): the nearest LiDAR depth per feature patch.
    """

    processor: GeoMIMImageProcessor
    augment: bool = False
    depth_downsample: int | None = 16
    generator: torch.Generator | None = None

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.processor(
            [example["images"] for example in examples],
            camera_intrinsics=np.stack([example["camera_intrinsics"] for example in examples]),
            camera_to_ego=np.stack([camera_to_key_ego(example) for example in examples]),
            gt_boxes=[np.asarray(example["gt_boxes"], dtype=np.float32).reshape(-1, 9) for example in examples],
            points=[np.asarray(example["points"], dtype=np.float32) for example in examples],
            augment=self.augment,
            generator=self.generator,
        )
        data = dict(batch)
        data["points"], data["points_mask"] = pad_rows(batch["points"])
        data["gt_boxes"], _ = pad_rows(batch["gt_boxes"])
        labels = [torch.tensor([_CLASS_INDEX[name] for name in example["gt_names"]], dtype=torch.long)
                  for example in examples]
        data["gt_labels"] = pad_rows([label[:, None] for label in labels], fill=-1)[0][..., 0]
        if self.depth_downsample:
            data["depth_targets"] = lidar_depth_targets(
                data["points"], data["camera_intrinsics"], data["camera_to_ego"],
                tuple(data["pixel_values"].shape[-2:]), self.depth_downsample, data["post_rot"], data["post_tran"],
                data["bev_augmentation"], data["points_mask"],
            )
        data["sample_tokens"] = [example["sample_token"] for example in examples]
        return data
