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
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from transformers import ViTImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .nuscenes import split_by_node
from .scannet import load_scannet, scans_of_split

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


def mask3d_image_processor(
    image_size: tuple[int, int] | list[int], image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD
) -> ViTImageProcessor:
    """The RGB processor of Mask3D models: bilinear resize to ``(height, width)``, ImageNet mean / std by default."""
    height, width = image_size
    return ViTImageProcessor(size={"height": height, "width": width}, image_mean=list(image_mean),
                             image_std=list(image_std))


def resize_nearest(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) array to an (height, width) tensor, nearest neighbour at pixel centres."""
    tensor = torch.as_tensor(np.asarray(image))[None, None]
    return F.interpolate(tensor.float(), size=tuple(size), mode="nearest-exact")[0, 0].to(tensor.dtype)


@dataclasses.dataclass
class ScanNetRGBDCollator:
    """Batches ScanNet frames into ``pixel_values`` (B, 3, H, W), with ``depth=True`` ``depth_values`` (B, H, W)
    metres (0 = invalid) and, with ``labels=True``, ``labels`` (B, H, W): benchmark label indices 0..19, IGNORE_INDEX
    elsewhere.

    Frames of the exported layout carry ScanNet ids; their labels need ``scannet_to_nyu40`` (see
    :func:`read_scannet_to_nyu40`). A frame without labels in a labelled batch is an error naming it.
    """

    image_processor: ViTImageProcessor
    depth: bool = True
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
        batch = {"pixel_values": self.image_processor([example["image"] for example in examples],
                                                      return_tensors="pt")["pixel_values"]}
        if self.depth:
            batch["depth_values"] = torch.stack([resize_nearest(np.asarray(example["depth"], dtype=np.float32),
                                                                self.size) for example in examples])
        if self.labels:
            batch["labels"] = torch.stack([self.benchmark_labels(example) for example in examples])
        return batch


def scannet_frame_count(root: str | Path, split: str) -> int:
    """Frames of a split, counted from the colour files of its scans (an upper bound: the loader leaves out frames
    with invalid poses). Streaming datasets have no length; this sets the length of a training epoch."""
    root = Path(root)
    return sum(len(list((root / scan / "color").glob("*.jpg"))) for scan in scans_of_split(root, split))


def scannet_rgbd_loader(
    root: str | Path,
    split: str,
    collator: ScanNetRGBDCollator,
    batch_size: int,
    *,
    layout: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    shuffle_seed: int | None = None,
    shuffle_buffer: int = 256,
    max_samples: int | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader streaming this process's part of a ScanNet split (whole scans per process, see
    ``split_by_node``), shuffled in a buffer when ``shuffle_seed`` is given (call ``loader.dataset.set_epoch`` every
    epoch), limited to the split's first ``max_samples`` frames; ``drop_last`` as in ``DataLoader`` (training: a
    batch of one frame breaks batch norms such as UperNet's)."""
    dataset = load_scannet(root, split=split, layout=layout)
    if max_samples is not None:
        dataset = dataset.take(max_samples)
    if world_size > 1:
        dataset = split_by_node(dataset, rank, world_size)
    if shuffle_seed is not None:
        dataset = dataset.shuffle(seed=shuffle_seed, buffer_size=shuffle_buffer)
    # Its own generator: every new iterator draws a worker seed, which must not come from the global RNG that the
    # masks use, or a run resumed mid-epoch would draw other masks than the uninterrupted run.
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collator, num_workers=num_workers,
                                       drop_last=drop_last, generator=torch.Generator().manual_seed(0))


def fixed_length(loader: Iterable, num_batches: int) -> Iterator:
    """Exactly ``num_batches`` batches of ``loader``, starting it again if it runs out first. Streamed splits give
    processes different numbers of frames; equal step counts keep distributed training in step."""
    produced = 0
    while produced < num_batches:
        empty = True
        for batch in loader:
            empty = False
            yield batch
            produced += 1
            if produced == num_batches:
                return
        if empty:
            raise ValueError("the data loader gives no batch on this process")


class ScanNetTrainingFrames:
    """The training frames of process ``rank`` among ``world_size``, streamed as shuffled batches of whole scans
    ([`scannet_rgbd_loader`]), and the number of batches every process takes per epoch: what
    [`~geomim_hf.data.training_scenes.TrainingScenes`] is for nuScenes.

    A streamed split has no length, and its scans hold different numbers of frames, so processes hold different
    numbers of them: an epoch is ``frames / (processes x batch size)`` full batches per process, whole accumulation
    groups, and a process that runs out first starts its part again ([`fixed_length`]).

    Args:
        root, split, collator: the training split and how its frames become batches.
        rank, world_size: this process and the number of processes.
        batch_size, gradient_accumulation_steps: batches per optimiser step, for the common batch count.
        layout: the ScanNet layout (default: detected).
        seed, shuffle_buffer_size: the streaming shuffle (re-seeded every epoch).
        max_samples: use only the split's first frames.
        num_workers: DataLoader worker processes.
    """

    def __init__(self, root: str | Path, split: str, collator: ScanNetRGBDCollator, rank: int, world_size: int, *,
                 batch_size: int, gradient_accumulation_steps: int = 1, layout: str | None = None, seed: int = 0,
                 shuffle_buffer_size: int = 256, max_samples: int | None = None, num_workers: int = 0):
        self.world_size, self.batch_size = world_size, batch_size
        self.gradient_accumulation_steps = gradient_accumulation_steps
        # Training drops the last partial batch: a batch of one frame breaks batch norms such as UperNet's.
        self.loader = scannet_rgbd_loader(root, split, collator, batch_size, layout=layout, rank=rank,
                                          world_size=world_size, shuffle_seed=seed, shuffle_buffer=shuffle_buffer_size,
                                          max_samples=max_samples, num_workers=num_workers, drop_last=True)
        frames = scannet_frame_count(root, split)
        self.frames = min(frames, max_samples or frames)

    def batches_per_epoch(self) -> int:
        """Full batches per process and epoch, rounded down to whole accumulation groups (so that no optimiser step
        straddles two epochs), at least one group."""
        accumulation = self.gradient_accumulation_steps
        batches = self.frames // (self.world_size * self.batch_size)
        return max(accumulation, batches - batches % accumulation)

    def batches(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """This process's batches of ``epoch``: the stream shuffled for the epoch, ``batches_per_epoch()`` of them."""
        self.loader.dataset.set_epoch(epoch)
        return fixed_length(self.loader, self.batches_per_epoch())


__all__ = [
    "IGNORE_INDEX",
    "SCANNET20_CLASS_NAMES",
    "SCANNET20_NYU40_IDS",
    "ScanNetRGBDCollator",
    "ScanNetTrainingFrames",
    "fixed_length",
    "mask3d_image_processor",
    "nyu40_to_scannet20_table",
    "read_scannet_to_nyu40",
    "resize_nearest",
    "scannet_frame_count",
    "scannet_rgbd_loader",
]
