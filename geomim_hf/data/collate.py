"""From loader examples to model-ready batches."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from ..geometry import lidar_depth_targets
from .image_processing_geomim import GeoMIMImageProcessor
from .nuscenes_constants import DETECTION_CLASSES


def chain_to_key_ego(camera_to_ego: np.ndarray, camera_ego_to_global: np.ndarray,
                     key_ego_to_global: np.ndarray) -> np.ndarray:
    """(N, 4, 4) camera -> ego frame of the LiDAR key frame (BEVDet's ``sensor2keyego``).

    Each camera fires at its own time, when the car is elsewhere: chain camera -> ego at the camera's time -> global
    -> ego at the key frame, the frame of the boxes and points. The same chain takes a previous frame's cameras to the
    current key frame (BEVDet4D's alignment in the view transform).
    """
    global_to_key_ego = np.linalg.inv(np.asarray(key_ego_to_global, dtype=np.float64))
    chain = global_to_key_ego @ np.asarray(camera_ego_to_global, dtype=np.float64)
    return (chain @ np.asarray(camera_to_ego, dtype=np.float64)).astype(np.float32)


def camera_to_key_ego(example: dict) -> np.ndarray:
    """(N, 4, 4) camera -> key-frame ego of an example's own cameras."""
    return chain_to_key_ego(example["camera_to_ego"], example["camera_ego_to_global"], example["ego_to_global"])


def previous_camera_to_key_ego(example: dict, frame: int = 0) -> np.ndarray:
    """(N, 4, 4) cameras of previous key frame ``frame`` (0: the most recent) -> the example's key-frame ego.

    A scene keeps its calibration, so the previous frame's camera -> ego extrinsics are the key frame's.
    """
    return chain_to_key_ego(example["camera_to_ego"], example["previous_camera_ego_to_global"][frame],
                              example["ego_to_global"])


def batch_generator(seed: int, examples: list[dict]) -> torch.Generator:
    """A generator seeded by ``seed`` and the batch's sample tokens: augmentation that is a function of the run's seed
    and the samples only, whatever process or DataLoader worker collates the batch (workers get copies of a collator,
    so a shared generator would repeat the same draws in each of them) and whatever came before (a resumed run
    augments as the uninterrupted one did)."""
    digest = hashlib.sha256(f"{seed}/{[example['sample_token'] for example in examples]}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


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
    ``camera_to_ego`` into the key-frame ego frame, ``post_rot``, ``post_tran``, ``bev_augmentation``),
    ``ego_to_global`` (B, 4, 4) float64 (the key frame's pose, for evaluation), ``points`` (B, P, 5) with
    ``points_mask``, ``gt_boxes`` (B, M, 9) with ``gt_labels`` (B, M) (index in ``class_names``, -1 for padding), all
    in the augmented ego frame, ``sample_tokens`` and ``class_names`` (the label order, which
    :func:`~geomim_hf.models.inputs.model_inputs` checks against the model's).

    Args:
        processor: the image processor (augmentation, normalisation).
        augment: draw training augmentation; otherwise the fixed evaluation one.
        depth_downsample: with a value, ``depth_targets`` (B, N, H / d, W / d): the nearest LiDAR depth per feature
            patch (0: none).
        depth_from_all_sweeps: project every sweep of ``points`` for the depth targets; by default only the key
            sweep (time lag 0), as BEVDet's ``PointToMultiViewDepth``.
        depth_range: ``(min, max)`` metres: only points at camera depths in ``[min, max)`` compete for a patch
            (BEVDet keeps [1, 60)); None keeps all.
        previous_frames: 1 adds BEVDet4D's previous key frame: ``previous_pixel_values`` (B, N, 3, H, W) with the key
            frame's image and BEV augmentation, ``previous_camera_to_ego`` (B, N, 4, 4) into the *current* key ego,
            and ``previous_valid`` (B,), False at the start of a scene, where the key frame stands in for it. The
            examples must come from ``load_nuscenes(..., previous_frames=1)``.
        drop_boxes_without_points: leave boxes that no LiDAR or radar point hits out of the targets, as BEVDet's
            info files do (``valid_flag``).
        class_names: the label order of the model the batches are for (``model.config.class_names``); boxes of other
            classes are no targets. The nuScenes detection classes in the devkit's order by default.
        generator: source of the random augmentation.
        seed: instead of ``generator``, draw each batch's augmentation from :func:`batch_generator` (this seed and
            the batch's sample tokens).
    """

    processor: GeoMIMImageProcessor
    augment: bool = False
    depth_downsample: int | None = 16
    depth_from_all_sweeps: bool = False
    depth_range: tuple[float, float] | None = None
    previous_frames: int = 0
    drop_boxes_without_points: bool = True
    class_names: Sequence[str] = DETECTION_CLASSES
    generator: torch.Generator | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.previous_frames not in (0, 1):
            raise ValueError(f"previous_frames must be 0 or 1 (BEVDet4D), got {self.previous_frames}")
        self.class_names = list(self.class_names)
        unknown = sorted(set(self.class_names) - set(DETECTION_CLASSES))
        if unknown or len(set(self.class_names)) != len(self.class_names) or not self.class_names:
            raise ValueError(f"class_names must be distinct nuScenes detection classes {DETECTION_CLASSES}, got "
                             f"{self.class_names} (unknown: {unknown})")

    def __call__(self, examples: list[dict]) -> dict:
        if self.previous_frames and "previous_images" not in examples[0]:
            raise ValueError("previous_frames=1 needs examples from load_nuscenes(..., previous_frames=1)")
        intrinsics = np.stack([example["camera_intrinsics"] for example in examples])
        generator = self.generator if self.seed is None else batch_generator(self.seed, examples)
        augmentations = self.processor.sample_augmentations(len(examples), intrinsics.shape[1], self.augment,
                                                            generator)
        boxes, labels = zip(*(self.targets(example) for example in examples))
        batch = self.processor(
            [example["images"] for example in examples],
            camera_intrinsics=intrinsics,
            camera_to_ego=np.stack([camera_to_key_ego(example) for example in examples]),
            gt_boxes=list(boxes),
            points=[np.asarray(example["points"], dtype=np.float32) for example in examples],
            augmentations=augmentations,
        )
        data = dict(batch)
        data["ego_to_global"] = torch.tensor(np.stack([example["ego_to_global"] for example in examples]),
                                             dtype=torch.float64)
        data["points"], data["points_mask"] = pad_rows(batch["points"])
        data["gt_boxes"], _ = pad_rows(batch["gt_boxes"])
        data["gt_labels"] = pad_rows([label[:, None] for label in labels], fill=-1)[0][..., 0]
        if self.previous_frames:
            previous = self.processor(
                [example["previous_images"][0] for example in examples],
                camera_intrinsics=intrinsics,
                camera_to_ego=np.stack([previous_camera_to_key_ego(example) for example in examples]),
                augmentations=augmentations,
            )
            data["previous_pixel_values"] = previous["pixel_values"]
            data["previous_camera_to_ego"] = previous["camera_to_ego"]
            data["previous_valid"] = torch.tensor([example["previous_valid"][0] for example in examples])
        if self.depth_downsample:
            data["depth_targets"] = self.depth_targets(data)
        data["sample_tokens"] = [example["sample_token"] for example in examples]
        data["class_names"] = list(self.class_names)
        return data

    def targets(self, example: dict) -> tuple[np.ndarray, torch.Tensor]:
        """One example's boxes (M, 9) and labels (M,) indexing ``class_names``: the boxes of those classes, without
        the boxes no sensor point hits."""
        boxes = np.asarray(example["gt_boxes"], dtype=np.float32).reshape(-1, 9)
        keep = np.isin(np.asarray(example["gt_names"], dtype=object), self.class_names).astype(bool)
        if self.drop_boxes_without_points:
            keep &= (np.asarray(example["gt_num_lidar_pts"]) + np.asarray(example["gt_num_radar_pts"])) > 0
        labels = [self.class_names.index(name) for name, kept in zip(example["gt_names"], keep) if kept]
        return boxes[keep], torch.tensor(labels, dtype=torch.long)

    def depth_targets(self, data: dict) -> torch.Tensor:
        points_mask = data["points_mask"]
        if not self.depth_from_all_sweeps:
            points_mask = points_mask & (data["points"][..., 4] == 0)  # time lag 0: the key sweep
        return lidar_depth_targets(
            data["points"], data["camera_intrinsics"], data["camera_to_ego"], tuple(data["pixel_values"].shape[-2:]),
            self.depth_downsample, data["post_rot"], data["post_tran"], data["bev_augmentation"], points_mask,
            depth_range=self.depth_range,
        )
