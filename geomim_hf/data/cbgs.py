"""Class-balanced grouping and sampling (CBGS, Zhu et al. 2019) for streaming nuScenes training.

mmdet3d's `CBGSDataset` draws, for each class, as many samples (with replacement, among the samples that contain the
class) as make every class equally frequent: a sample is drawn `ratio_c = (1 / num_classes) / share_c` times in
expectation for each class c it contains, where `share_c` is class c's share of all (sample, class) pairs. A stream
cannot draw at random, so here each sample is repeated its expected number of times, `sum_c ratio_c`, rounded up or
down at random with the right probability (seeded by the run, the epoch and the sample): the same expectation, every
sample at most one copy away from it, and a count per epoch that every process can compute before reading anything.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from .nuscenes import nuscenes_database, split_sample_tokens
from .nuscenes_constants import CATEGORY_TO_DETECTION_CLASS, DETECTION_CLASSES


def sample_classes(dataroot: str | Path, version: str, split: str) -> dict[str, set[str]]:
    """The detection classes of each sample of the split, counting only boxes some LiDAR or radar point hits (the
    boxes that become targets)."""
    dataroot = str(Path(dataroot).resolve())
    nusc = nuscenes_database(dataroot, version)
    classes = {}
    for token in split_sample_tokens(dataroot, version, split):
        names = set()
        for annotation_token in nusc.get("sample", token)["anns"]:
            annotation = nusc.get("sample_annotation", annotation_token)
            name = CATEGORY_TO_DETECTION_CLASS.get(annotation["category_name"])
            if name is not None and annotation["num_lidar_pts"] + annotation["num_radar_pts"] > 0:
                names.add(name)
        classes[token] = names
    return classes


def expected_copies(classes: Mapping[str, set[str]]) -> dict[str, float]:
    """Each sample's expected number of draws in mmdet3d's CBGS."""
    counts = Counter(name for names in classes.values() for name in names)
    total = sum(counts.values())
    if not total:
        raise ValueError("CBGS needs annotated samples: no sample of the split has a detection box")
    ratio = {name: (1 / len(DETECTION_CLASSES)) / (count / total) for name, count in counts.items()}
    return {token: sum(ratio[name] for name in names) for token, names in classes.items()}


def copies_this_epoch(expected: float, seed: int, epoch: int, token: str) -> int:
    """`expected` rounded down or up, up with probability equal to its fraction, by a hash of (seed, epoch, token)."""
    digest = hashlib.sha256(f"{seed}/{epoch}/{token}".encode()).digest()
    uniform = int.from_bytes(digest[:8], "little") / 2**64
    return math.floor(expected) + (uniform < expected - math.floor(expected))


__all__ = ["copies_this_epoch", "expected_copies", "sample_classes"]
