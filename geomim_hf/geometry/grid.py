"""The bird's-eye-view voxel grid and the depth bins of a Lift-Splat view transform."""

from __future__ import annotations

import dataclasses

import torch

Axis = tuple[float, float, float]  # (start, stop, step) in metres, half-open [start, stop)


def _axis_size(name: str, axis: Axis) -> int:
    start, stop, step = axis
    if step <= 0 or stop <= start:
        raise ValueError(f"BEVGrid.{name}={axis}: need start < stop and step > 0")
    steps = (stop - start) / step
    size = round(steps)
    # (54 - -54) / 0.3 is 360.00000000000006: tolerate float noise, refuse ranges that are not whole steps.
    if abs(steps - size) > 1e-6 * size:
        raise ValueError(f"BEVGrid.{name}={axis}: the range {stop - start} is not a whole number of {step} steps")
    return size


@dataclasses.dataclass(frozen=True)
class BEVGrid:
    """Voxel grid of the BEV feature map and depth bins of the camera frustum (LSS's ``grid_conf``).

    Each axis is ``(start, stop, step)`` in metres over ``[start, stop)``. Cell ``i`` of an axis covers
    ``[start + i * step, start + (i + 1) * step)``; depth bin ``k`` sits at ``depth_start + k * depth_step``, the
    ``torch.arange(*dbound)`` of LSS, bevfusion and BEVDet.

    ``legacy_truncation`` reproduces bevfusion's and BEVDet's ``.long()`` cell indexing, which truncates toward zero and
    therefore also pools points lying up to one cell *below* each lower bound into cell 0; with BEVDet's z bound
    ``(-5, 3, 8)`` that admits frustum points from 13 m below the ego origin. Leave it off for new models; turn it on to
    reproduce checkpoints trained with those codebases exactly.
    """

    x: Axis
    y: Axis
    z: Axis
    depth: Axis
    legacy_truncation: bool = False
    num_x: int = dataclasses.field(init=False)
    num_y: int = dataclasses.field(init=False)
    num_z: int = dataclasses.field(init=False)
    num_depth_bins: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        for axis, size in (("x", "num_x"), ("y", "num_y"), ("z", "num_z"), ("depth", "num_depth_bins")):
            object.__setattr__(self, size, _axis_size(axis, getattr(self, axis)))  # frozen: derived once, here
        if self.depth[0] <= 0:
            raise ValueError(f"BEVGrid.depth={self.depth}: depth bins must start in front of the camera (> 0)")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``: the layout of the pooled BEV map."""
        return self.num_z, self.num_y, self.num_x

    def depth_values(
        self, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """(D,) depth of each bin in metres."""
        start, _, step = self.depth
        return start + step * torch.arange(self.num_depth_bins, device=device, dtype=dtype)


def voxel_indices(points: torch.Tensor, grid: BEVGrid) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid cell of each point.

    Args:
        points: (..., 3) x, y, z in the frame of the grid (the ego frame, after BEV augmentation).
        grid: the grid.

    Returns:
        indices: (..., 3) int64 cell indices in (x, y, z) order; meaningless where ``inside`` is False.
        inside: (...) bool, True where the point lies in the grid.
    """
    if points.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., 3), got {tuple(points.shape)}")
    axes = (grid.x, grid.y, grid.z)
    start = points.new_tensor([axis[0] for axis in axes])
    step = points.new_tensor([axis[2] for axis in axes])
    size = torch.tensor([grid.num_x, grid.num_y, grid.num_z], device=points.device)
    scaled = (points - start) / step  # (..., 3) position in cells
    # Decided on the floats, so that NaN and huge coordinates are outside whatever their integer conversion gives.
    if grid.legacy_truncation:
        indices, above_start = scaled.trunc().long(), scaled > -1
    else:
        indices, above_start = scaled.floor().long(), scaled >= 0
    inside = (above_start & (scaled < size)).all(dim=-1)
    return indices, inside


__all__ = ["BEVGrid", "voxel_indices"]
