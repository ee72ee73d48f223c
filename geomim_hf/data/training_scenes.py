"""Which nuScenes training samples each process streams, and how many batches every process takes per epoch.

The training scripts do not let accelerate shard a stream (it would read everything on every process or dispatch
batches from one): each process streams whole scenes of its own, assigned round robin, shuffled per epoch, with
class-balanced repetition (CBGS) if asked. Every process knows every process's sample count from the devkit's
tables, so all of them take the same number of steps per epoch without talking to each other (DDP needs that).
"""

from __future__ import annotations

import math
from pathlib import Path

from .cbgs import copies_this_epoch, expected_copies, sample_classes
from .nuscenes import load_nuscenes, nuscenes_database, scenes_of_split


class TrainingScenes:
    """The training samples of process `rank` among `world_size`: its scenes, each sample's copies in an epoch, the
    common number of batches per epoch, and its stream.

    Args:
        dataroot, version, split: the training split.
        rank, world_size: this process and the number of processes.
        batch_size, gradient_accumulation_steps: batches per optimiser step, for the common batch count.
        cbgs: repeat samples class-balanced (`geomim_hf.data.cbgs`).
        seed: of the CBGS rounding and of the shuffling.
        shuffle_buffer_size: examples the stream's shuffle buffer holds.
    """

    def __init__(self, dataroot: str | Path, version: str, split: str, rank: int, world_size: int, *,
                 batch_size: int, gradient_accumulation_steps: int = 1, cbgs: bool = False, seed: int = 0,
                 shuffle_buffer_size: int = 256):
        self.dataroot, self.version, self.split = str(Path(dataroot).resolve()), version, split
        self.batch_size, self.gradient_accumulation_steps = batch_size, gradient_accumulation_steps
        self.seed, self.shuffle_buffer_size = seed, shuffle_buffer_size
        nusc = nuscenes_database(self.dataroot, version)
        scenes = scenes_of_split(self.dataroot, version, split)
        if len(scenes) < world_size:
            raise ValueError(f"split {split!r} has {len(scenes)} scenes for {world_size} processes: every process "
                             f"needs at least one")
        scene_by_name = {scene["name"]: scene for scene in nusc.scene}
        self.tokens_per_scene = {}
        for name in scenes:
            tokens, token = [], scene_by_name[name]["first_sample_token"]
            while token:
                tokens.append(token)
                token = nusc.get("sample", token)["next"]
            self.tokens_per_scene[name] = tokens
        self.assignment = [scenes[index::world_size] for index in range(world_size)]
        self.scenes = self.assignment[rank]
        self.expected = expected_copies(sample_classes(self.dataroot, version, split)) if cbgs else None

    def copies(self, token: str, epoch: int) -> int:
        return 1 if self.expected is None else copies_this_epoch(self.expected[token], self.seed, epoch, token)

    def batches_per_epoch(self) -> int:
        """The batches every process takes per epoch: what the process with the fewest samples surely has (with CBGS,
        the copies rounded down), so that no process runs out early and all take the same number of steps; a whole
        number of accumulation rounds, so that no optimiser step straddles two epochs."""
        def surely(token: str) -> int:
            return 1 if self.expected is None else math.floor(self.expected[token])
        counts = [sum(surely(token) for scene in scenes for token in self.tokens_per_scene[scene])
                  for scenes in self.assignment]
        accumulation = self.gradient_accumulation_steps
        batches = min(counts) // self.batch_size // accumulation * accumulation
        if not batches:
            raise ValueError(f"a process has {min(counts)} training samples, fewer than one optimiser step of "
                             f"{self.batch_size} x {accumulation}")
        return batches

    def dataset(self, epoch: int, **load_options):
        """This process's stream for `epoch`: its scenes (`load_nuscenes` with `load_options`), CBGS copies,
        shuffled by the seed and the epoch."""
        dataset = load_nuscenes(self.dataroot, self.version, self.split, scenes=self.scenes, **load_options)
        if self.expected is not None:
            def repeat(examples: dict) -> dict:
                copies = [self.copies(token, epoch) for token in examples["sample_token"]]
                return {key: [value for value, count in zip(values, copies) for _ in range(count)]
                        for key, values in examples.items()}
            dataset = dataset.map(repeat, batched=True, batch_size=1)
        dataset = dataset.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer_size)
        dataset.set_epoch(epoch)
        return dataset


__all__ = ["TrainingScenes"]
