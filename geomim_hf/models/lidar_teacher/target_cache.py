"""Precomputed LiDAR-teacher BEV targets: fp16 safetensors shards keyed by sample token, with a JSON manifest.

Running the teacher once per split instead of at every pretraining step saves its time on every epoch. The teacher is
not flip-equivariant (its kernels are not symmetric), so a target depends on the BEV flip the batch drew: a cache holds
one map per sample and per flip it was written for (``none``, ``x``, ``y``, ``xy``; all four by default, which covers
GeoMIM's ``RandomFlip3D``). Other BEV augmentations (rotation, scale) cannot be cached; use the live teacher for them.

Layout of a cache folder, written by ``examples/precompute_teacher_targets.py`` through :class:`TeacherTargetWriter`:

- ``shard-00000.safetensors``, ...: tensors named ``"<sample token>/<flip>"``, each the teacher's (C, X, Y) BEV map in
  float16 (X, Y in the LiDAR frame, channel ``c * Z + z``);
- ``manifest.json``: format, the teacher (name, config, config and weight hashes), the dataset split, shape and dtype,
  the flips, and the shard of every token.

:class:`TeacherTargetCache` reads it back by token and refuses a cache written by another teacher.
"""

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .configuration_lidar_teacher import GeoMIMLidarTeacherConfig
from .modeling_lidar_teacher import GeoMIMLidarTeacher

MANIFEST = "manifest.json"
CACHE_FORMAT = "geomim_teacher_targets"
CACHE_FORMAT_VERSION = 1
# Flip name -> (mirror x, mirror y) in the LiDAR frame, bevfusion's RandomFlip3D (geomim_hf's BEV augmentation).
FLIPS = {"none": (False, False), "x": (True, False), "y": (False, True), "xy": (True, True)}
FLOAT16_MAX = torch.finfo(torch.float16).max


class TeacherMismatchError(ValueError):
    """The cache was written by a different teacher (config or weights) than the one pretraining uses."""


class MissingTargetError(KeyError):
    """A sample token (or a flip of it) that the cache does not hold."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


def teacher_config_fields(config: GeoMIMLidarTeacherConfig) -> dict:
    """The fields that define the teacher, without bookkeeping (paths, library versions)."""
    return {name: getattr(config, name) for name in GeoMIMLidarTeacherConfig.__annotations__}


def teacher_settings(config: GeoMIMLidarTeacherConfig) -> dict:
    """The fields that change what the teacher computes from given weights (its seed only names the weights)."""
    return {name: value for name, value in teacher_config_fields(config).items() if name != "initializer_seed"}


def teacher_fingerprint(teacher: GeoMIMLidarTeacher | GeoMIMLidarTeacherConfig) -> dict:
    """``config_hash`` of the teacher's settings and, for a model, ``weights_hash`` of its state dict (SHA-256)."""
    config = teacher if isinstance(teacher, GeoMIMLidarTeacherConfig) else teacher.config
    settings = json.dumps(teacher_settings(config), sort_keys=True)
    fingerprint = {"config_hash": hashlib.sha256(settings.encode()).hexdigest()}
    if isinstance(teacher, GeoMIMLidarTeacher):
        digest = hashlib.sha256()
        for name, tensor in sorted(teacher.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        fingerprint["weights_hash"] = digest.hexdigest()
    return fingerprint


def flip_of(lidar_augmentation: torch.Tensor) -> str:
    """The flip name of a (3, 3) or (4, 4) BEV augmentation that only mirrors x and/or y; anything else raises."""
    matrix = lidar_augmentation.detach().double().cpu()
    linear = matrix[:3, :3]
    translation = matrix[:3, 3] if matrix.shape == (4, 4) else torch.zeros(3, dtype=torch.float64)
    signs = torch.diagonal(linear)
    ones, zeros = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    if not (torch.allclose(linear, torch.diag(signs)) and torch.allclose(signs.abs(), ones) and signs[2] > 0
            and torch.allclose(translation, zeros)):
        raise ValueError(f"cached teacher targets exist only for BEV flips (diag(+-1, +-1, 1)); this batch's "
                         f"lidar_augmentation is\n{matrix}\nrun the live teacher for other augmentations")
    flip = (bool(signs[0] < 0), bool(signs[1] < 0))
    return next(name for name, mirrors in FLIPS.items() if mirrors == flip)


@dataclasses.dataclass
class TeacherTargetWriter:
    """Writes a cache folder (see the module docstring) shard by shard, into a staging folder that replaces
    ``output_dir`` only when :meth:`finish` runs.

    ``output_dir`` must be missing or empty, or hold a teacher target cache and ``overwrite`` be set: any other folder
    is refused, so nothing else is ever replaced.
    """

    output_dir: Path
    teacher: GeoMIMLidarTeacher
    dataset: dict
    flips: Sequence[str] = tuple(FLIPS)
    shard_size: int = 64
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if unknown := set(self.flips) - set(FLIPS):
            raise ValueError(f"unknown flips {sorted(unknown)}; choose among {list(FLIPS)}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        check_replaceable(self.output_dir, self.overwrite)
        self.staging = self.output_dir.parent / f".{self.output_dir.name}.partial-{os.getpid()}"
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)
        self.shape = list(self.teacher.config.bev_shape)
        self.token_shards: dict[str, str] = {}
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_tokens: list[str] = []
        self.num_shards = 0

    def add(self, token: str, targets: dict[str, torch.Tensor]) -> None:
        """Stores one sample: ``targets`` maps each of the writer's flips to the (C, X, Y) BEV map."""
        if token in self.token_shards or token in self.pending_tokens:
            raise ValueError(f"sample token {token} was already written")
        if set(targets) != set(self.flips):
            raise ValueError(f"sample {token}: need the flips {list(self.flips)}, got {sorted(targets)}")
        for flip, bev in targets.items():
            if list(bev.shape) != self.shape:
                raise ValueError(f"sample {token} flip {flip}: BEV map of shape {tuple(bev.shape)}, expected "
                                 f"{tuple(self.shape)}")
            if not torch.isfinite(bev).all() or bev.abs().max() > FLOAT16_MAX:
                raise ValueError(f"sample {token} flip {flip}: the teacher's output is not finite or exceeds the "
                                 f"float16 range ({bev.abs().max().item():.3g}); it cannot be cached in float16")
            self.pending[f"{token}/{flip}"] = bev.detach().to("cpu", torch.float16).contiguous()
        self.pending_tokens.append(token)
        if len(self.pending_tokens) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self.pending_tokens:
            return
        name = f"shard-{self.num_shards:05d}.safetensors"
        save_file(self.pending, self.staging / name, metadata={"format": CACHE_FORMAT})
        self.token_shards.update({token: name for token in self.pending_tokens})
        self.pending, self.pending_tokens = {}, []
        self.num_shards += 1

    def finish(self) -> Path:
        """Writes the last shard and the manifest, then moves the cache into ``output_dir``."""
        self._flush()
        manifest = {
            "format": CACHE_FORMAT,
            "format_version": CACHE_FORMAT_VERSION,
            "teacher": {"name_or_path": self.teacher.config.name_or_path,
                        "config": teacher_config_fields(self.teacher.config), **teacher_fingerprint(self.teacher)},
            "dataset": self.dataset,
            "shape": self.shape,
            "layout": "(channels, X, Y) in the LiDAR frame; channel c * z_slices + z",
            "dtype": "float16",
            "flips": list(self.flips),
            "num_samples": len(self.token_shards),
            "tokens": self.token_shards,
        }
        (self.staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if self.output_dir.exists():
            retired = self.output_dir.parent / f".{self.output_dir.name}.replaced-{os.getpid()}"
            self.output_dir.rename(retired)
            self.staging.rename(self.output_dir)
            shutil.rmtree(retired)
        else:
            self.staging.rename(self.output_dir)
        return self.output_dir

    def abort(self) -> None:
        """Drops the staging folder; ``output_dir`` stays as it was."""
        shutil.rmtree(self.staging, ignore_errors=True)


def _read_manifest(cache_dir: Path) -> dict | None:
    try:
        manifest = json.loads((cache_dir / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == CACHE_FORMAT else None


def check_replaceable(output_dir: Path, overwrite: bool) -> None:
    """Raises ``FileExistsError`` unless ``output_dir`` is missing or empty, or is a cache and ``overwrite`` is set."""
    if not output_dir.exists() or (output_dir.is_dir() and not any(output_dir.iterdir())):
        return
    if _read_manifest(output_dir) is None:
        raise FileExistsError(f"{output_dir} exists and is not a teacher target cache; refusing to touch it. Choose "
                              "another --output_dir.")
    if not overwrite:
        raise FileExistsError(f"{output_dir} already holds a teacher target cache; pass --overwrite_output_dir to "
                              f"replace it.")


class TeacherTargetCache:
    """Reads the BEV targets of a cache folder by sample token.

    Args:
        cache_dir: the folder ``examples/precompute_teacher_targets.py`` wrote.
        teacher: the teacher (or its config) pretraining would otherwise run; when given, a cache written by a teacher
            with other settings or other weights raises :class:`TeacherMismatchError`.

    Example::

        cache = TeacherTargetCache("targets/train", teacher=teacher)
        target = cache.targets(batch["sample_tokens"], batch["lidar_augmentation"])  # (B, C, X, Y) float32
    """

    def __init__(self, cache_dir: str | Path,
                 teacher: GeoMIMLidarTeacher | GeoMIMLidarTeacherConfig | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        if not (self.cache_dir / MANIFEST).is_file():
            raise FileNotFoundError(f"{self.cache_dir} is not a teacher target cache (no {MANIFEST}); write one with "
                                    "examples/precompute_teacher_targets.py")
        manifest = _read_manifest(self.cache_dir)
        if manifest is None:
            raise ValueError(f"{self.cache_dir / MANIFEST} is not a {CACHE_FORMAT} manifest")
        if manifest["format_version"] != CACHE_FORMAT_VERSION:
            raise ValueError(f"{self.cache_dir} has cache format version {manifest['format_version']}; this "
                             f"geomim_hf reads version {CACHE_FORMAT_VERSION}. Recompute the targets.")
        self.manifest = manifest
        self.shape = tuple(manifest["shape"])
        self.flips = tuple(manifest["flips"])
        self.token_shards: dict[str, str] = manifest["tokens"]
        self._handles: dict[str, object] = {}
        if teacher is not None:
            self.check_teacher(teacher)

    def __len__(self) -> int:
        return len(self.token_shards)

    def __contains__(self, token: str) -> bool:
        return token in self.token_shards

    @property
    def tokens(self) -> list[str]:
        return list(self.token_shards)

    @property
    def teacher_config(self) -> GeoMIMLidarTeacherConfig:
        """The config of the teacher that wrote the cache."""
        return GeoMIMLidarTeacherConfig(**self.manifest["teacher"]["config"])

    def check_teacher(self, teacher: GeoMIMLidarTeacher | GeoMIMLidarTeacherConfig) -> None:
        """Raises :class:`TeacherMismatchError`, naming what differs, unless ``teacher`` wrote this cache."""
        recorded = self.manifest["teacher"]
        fingerprint = teacher_fingerprint(teacher)
        config = teacher if isinstance(teacher, GeoMIMLidarTeacherConfig) else teacher.config
        if fingerprint["config_hash"] != recorded["config_hash"]:
            ours = teacher_settings(config)
            differences = {name: (recorded["config"].get(name), value) for name, value in ours.items()
                           if json.dumps(recorded["config"].get(name)) != json.dumps(value)}
            raise TeacherMismatchError(
                f"{self.cache_dir} was written by teacher {recorded['name_or_path']!r} with other settings: "
                + ", ".join(f"{name} cache={cached} teacher={value}" for name, (cached, value) in differences.items())
            )
        if "weights_hash" in fingerprint and fingerprint["weights_hash"] != recorded["weights_hash"]:
            raise TeacherMismatchError(
                f"{self.cache_dir} was written by teacher {recorded['name_or_path']!r}: same settings, other weights "
                f"(another checkpoint or seed; cache weights {recorded['weights_hash'][:12]}, teacher "
                f"{fingerprint['weights_hash'][:12]})"
            )

    def get(self, token: str, flip: str = "none") -> torch.Tensor:
        """The (C, X, Y) float16 target of ``token`` for the BEV flip ``flip``."""
        if token not in self.token_shards:
            dataset = self.manifest["dataset"]
            raise MissingTargetError(
                f"sample {token} is not in the teacher target cache {self.cache_dir} ({len(self)} samples of split "
                f"{dataset.get('split')!r} of {dataset.get('version')!r}); precompute targets for the split you "
                "train on"
            )
        if flip not in self.flips:
            raise MissingTargetError(
                f"the teacher target cache {self.cache_dir} holds the flips {list(self.flips)}, not {flip!r}: "
                "precompute with --flips all, or train without the BEV flip"
            )
        shard = self.token_shards[token]
        if shard not in self._handles:
            path = self.cache_dir / shard
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing from the teacher target cache (listed in {MANIFEST})")
            self._handles[shard] = safe_open(str(path), framework="pt")
        return self._handles[shard].get_tensor(f"{token}/{flip}")

    def targets(self, tokens: Sequence[str], lidar_augmentation: torch.Tensor | None = None,
                dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """(B, C, X, Y) targets of a batch, each for the flip its (B, 4, 4) ``lidar_augmentation`` drew (none if
        not given)."""
        flips = ["none"] * len(tokens) if lidar_augmentation is None else [flip_of(m) for m in lidar_augmentation]
        return torch.stack([self.get(token, flip) for token, flip in zip(tokens, flips)]).to(device=device,
                                                                                            dtype=dtype)

    def __getstate__(self) -> dict:  # open shard handles do not pickle into DataLoader workers; they reopen lazily
        return {**self.__dict__, "_handles": {}}


__all__ = [
    "FLIPS",
    "MissingTargetError",
    "TeacherMismatchError",
    "TeacherTargetCache",
    "TeacherTargetWriter",
    "flip_of",
    "teacher_fingerprint",
]
