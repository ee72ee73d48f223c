"""From ScanNet frames (:func:`~geomim_hf.data.load_scannet`) to RGB-D batches for Mask3D, and the 20-class ScanNet
benchmark label set for segmentation.

RGB goes through a transformers ``ViTImageProcessor`` (resize to the model's ``(height, width)``, ImageNet mean / std),
the processor that is saved with every Mask3D model, so downstream users get the same input with
``AutoImageProcessor.from_pretrained``. Depth and labels are resized with nearest-neighbour sampling, so that invalid
depth (0) and label ids are never blended with their neighbours. ScanNet's colour (1296x968) and depth (640x480)
cameras have nearly the same field of view; both are resized to the model size without re-projection.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from transformers import ViTImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

IGNORE_INDEX = 255
# The ScanNet 2D semantic segmentation benchmark: 20 NYU40 classes, benchmark ids 1..20 in this order. Models predict
# label index = benchmark id - 1 (0..19); every other NYU40 id (and 0, unlabelled) becomes IGNORE_INDEX.
SCANNET20_NYU40_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
SCANNET20_CLASS_NAMES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
    "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub", "otherfurniture",
)


def nyu40_to_scannet20_table() -> np.ndarray:
    """Lookup table (256,) from an NYU40 id to the benchmark label index (0..19) or IGNORE_INDEX."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    table[list(SCANNET20_NYU40_IDS)] = np.arange(len(SCANNET20_NYU40_IDS))
    return table


def read_scannet_to_nyu40(tsv_path: str | Path) -> np.ndarray:
    """Lookup table from ScanNet ids (the exported layout's ``label-filt`` images) to NYU40 ids, read from ScanNet's
    ``scannetv2-labels.combined.tsv`` (columns ``id`` and ``nyu40id``); unknown ids map to 0 (unlabelled)."""
    with open(tsv_path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows or not {"id", "nyu40id"} <= set(rows[0]):
        raise ValueError(f"{tsv_path} is not a ScanNet label map: it needs the columns 'id' and 'nyu40id'")
    pairs = [(int(row["id"]), int(row["nyu40id"] or 0)) for row in rows]
    table = np.zeros(max(scannet_id for scannet_id, _ in pairs) + 1, dtype=np.uint8)
    for scannet_id, nyu40_id in pairs:
        table[scannet_id] = nyu40_id
    return table


def mask3d_image_processor(image_size: tuple[int, int] | list[int]) -> ViTImageProcessor:
    """The RGB processor of Mask3D models: bilinear resize to ``(height, width)``, ImageNet mean / std."""
    height, width = image_size
    return ViTImageProcessor(size={"height": height, "width": width}, image_mean=list(IMAGENET_DEFAULT_MEAN),
                             image_std=list(IMAGENET_DEFAULT_STD))


def resize_nearest(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) array to an (height, width) tensor, nearest neighbour at pixel centres."""
    tensor = torch.as_tensor(np.asarray(image))[None, None]
    return F.interpolate(tensor.float(), size=tuple(size), mode="nearest-exact")[0, 0].to(tensor.dtype)


@dataclasses.dataclass
class ScanNetRGBDCollator:
    """Batches ScanNet frames into ``pixel_values`` (B, 3, H, W), ``depth_values`` (B, H, W) metres (0 = invalid)
    and, with ``labels=True``, ``labels`` (B, H, W): benchmark label indices 0..19, IGNORE_INDEX elsewhere.

    Frames of the exported layout carry ScanNet ids; their labels need ``scannet_to_nyu40`` (see
    :func:`read_scannet_to_nyu40`). A frame without labels in a labelled batch is an error naming it.
    """

    image_processor: ViTImageProcessor
    labels: bool = False
    scannet_to_nyu40: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.size = (self.image_processor.size["height"], self.image_processor.size["width"])
        self.nyu40_to_scannet20 = nyu40_to_scannet20_table()

    def benchmark_labels(self, example: dict) -> torch.Tensor:
        frame = f"{example['scene_id']}/{example['frame_index']}"
        if example["semantic_label"] is None:
            raise ValueError(f"frame {frame} has no semantic labels (its scan has no label folder)")
        ids = np.asarray(example["semantic_label"]).astype(np.int64)
        if example["label_space"] == "scannet":
            if self.scannet_to_nyu40 is None:
                raise ValueError(
                    f"frame {frame} has ScanNet-id labels (exported layout); pass scannet_to_nyu40 from "
                    "read_scannet_to_nyu40('scannetv2-labels.combined.tsv')"
                )
            ids = self.scannet_to_nyu40[np.clip(ids, 0, len(self.scannet_to_nyu40) - 1)].astype(np.int64)
        labels = self.nyu40_to_scannet20[np.clip(ids, 0, 255)]
        return resize_nearest(labels, self.size).long()

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = {
            "pixel_values": self.image_processor([example["image"] for example in examples],
                                                 return_tensors="pt")["pixel_values"],
            "depth_values": torch.stack([resize_nearest(np.asarray(example["depth"], dtype=np.float32), self.size)
                                         for example in examples]),
        }
        if self.labels:
            batch["labels"] = torch.stack([self.benchmark_labels(example) for example in examples])
        return batch
