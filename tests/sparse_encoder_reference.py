"""Independent references for the LiDAR teacher, written from the original code's semantics (bevfusion, mmcv):

- `voxelize_loop`: hard voxelisation as bevfusion's `hard_voxelize` kernels do it, one point at a time;
- `bevfusion_state_dict`: random SparseEncoder weights under bevfusion's key names, in spconv 1.x kernel layout;
- `DenseSparseEncoder`: the same sparse network computed with dense `F.conv3d` on the whole grid, where a
  submanifold convolution is a dense convolution masked to its input sites, and a strided sparse convolution a dense
  one whose output sites are those with any active input in their receptive field;
- `dense_reference_bev`: both together, from points to the BEV map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PREFIX = "encoders.lidar.backbone."


def voxelize_loop(points: np.ndarray, point_cloud_range, voxel_size, grid_size, max_points: int, max_voxels: int):
    """(features mean (V, C) float32, cells (V, 3) int (x, y, z), counts (V,)) in order of first appearance."""
    voxel_of_cell: dict[tuple[int, int, int], int] = {}
    sums, counts, cells = [], [], []
    for point in points.astype(np.float32):
        cell = []
        for axis in range(3):
            scaled = (np.float32(point[axis]) - np.float32(point_cloud_range[axis])) / np.float32(voxel_size[axis])
            index = np.floor(scaled)
            if not 0 <= index < grid_size[axis]:  # NaN fails the comparison, so it is outside too
                break
            cell.append(int(index))
        else:
            key = tuple(cell)
            if key not in voxel_of_cell:
                if len(cells) >= max_voxels:
                    continue
                voxel_of_cell[key] = len(cells)
                cells.append(cell)
                sums.append(np.zeros(points.shape[1], dtype=np.float64))
                counts.append(0)
            voxel = voxel_of_cell[key]
            if counts[voxel] < max_points:
                sums[voxel] += point
                counts[voxel] += 1
    counts = np.asarray(counts, dtype=np.int64)
    features = (np.asarray(sums).reshape(-1, points.shape[1]) / np.maximum(counts, 1)[:, None]).astype(np.float32)
    return features, np.asarray(cells, dtype=np.int64).reshape(-1, 3), counts


def _batch_norm(generator: torch.Generator, prefix: str, channels: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": 1 + 0.2 * torch.randn(channels, generator=generator),
        f"{prefix}.bias": 0.1 * torch.randn(channels, generator=generator),
        f"{prefix}.running_mean": 0.1 * torch.randn(channels, generator=generator),
        f"{prefix}.running_var": 0.5 + torch.rand(channels, generator=generator),
        f"{prefix}.num_batches_tracked": torch.tensor(1000),
    }


def _kernel(generator: torch.Generator, kernel, in_channels: int, out_channels: int) -> torch.Tensor:
    """spconv 1.x layout (kx, ky, kz, in, out)."""
    fan_in = in_channels * int(np.prod(kernel))
    return torch.randn(*kernel, in_channels, out_channels, generator=generator) * (2.0 / fan_in) ** 0.5


def bevfusion_state_dict(in_channels: int, base_channels: int, encoder_channels, output_channels: int,
                         seed: int = 0) -> dict[str, torch.Tensor]:
    """A SparseEncoder (basicblock) state dict with bevfusion's names (without prefix), spconv 1.x kernels."""
    generator = torch.Generator().manual_seed(seed)
    state = {"conv_input.0.weight": _kernel(generator, (3, 3, 3), in_channels, base_channels),
             **_batch_norm(generator, "conv_input.1", base_channels)}
    channels = base_channels
    for stage, stage_channels in enumerate(encoder_channels, start=1):
        for block, out_channels in enumerate(stage_channels):
            prefix = f"encoder_layers.encoder_layer{stage}.{block}"
            if block == len(stage_channels) - 1 and stage != len(encoder_channels):
                state[f"{prefix}.0.weight"] = _kernel(generator, (3, 3, 3), channels, out_channels)
                state |= _batch_norm(generator, f"{prefix}.1", out_channels)
            else:
                for layer in (1, 2):
                    state[f"{prefix}.conv{layer}.weight"] = _kernel(generator, (3, 3, 3), channels, out_channels)
                    state |= _batch_norm(generator, f"{prefix}.bn{layer}", out_channels)
            channels = out_channels
    state["conv_out.0.weight"] = _kernel(generator, (1, 1, 3), channels, output_channels)
    state |= _batch_norm(generator, "conv_out.1", output_channels)
    return state


def to_spconv2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights with kernels in spconv 2.x layout (out, kx, ky, kz, in)."""
    return {key: value.permute(4, 0, 1, 2, 3).contiguous() if value.ndim == 5 else value
            for key, value in state.items()}


class DenseSparseEncoder:
    """bevfusion's SparseEncoder evaluated densely from a spconv 1.x state dict (bevfusion names, no prefix)."""

    def __init__(self, state: dict[str, torch.Tensor], encoder_paddings, eps: float = 1e-3):
        self.state = {key: value.double() if value.is_floating_point() else value for key, value in state.items()}
        self.encoder_paddings = encoder_paddings
        self.eps = eps

    def _layer(self, x, active, conv, norm, stride=1, padding=1, submanifold=True, relu=True):
        weight = self.state[f"{conv}.weight"].permute(4, 3, 0, 1, 2)  # (kx, ky, kz, in, out) -> (out, in, kx, ky, kz)
        output = F.conv3d(x, weight, stride=stride, padding=padding)
        if not submanifold:
            window = torch.ones(1, 1, *weight.shape[2:], dtype=x.dtype)
            active = F.conv3d(active, window, stride=stride, padding=padding) > 0.5
            active = active.to(x.dtype)
        shape = (1, -1, 1, 1, 1)
        output = (output - self.state[f"{norm}.running_mean"].view(shape)) / torch.sqrt(
            self.state[f"{norm}.running_var"].view(shape) + self.eps)
        output = output * self.state[f"{norm}.weight"].view(shape) + self.state[f"{norm}.bias"].view(shape)
        if relu:
            output = F.relu(output)
        return output * active, active

    def __call__(self, features: torch.Tensor, coordinates: torch.Tensor, sparse_shape, batch_size: int):
        """features (V, C), coordinates (V, 4) (batch, x, y, z) -> BEV (B, C_out * Z, X, Y) in float64."""
        x = torch.zeros(batch_size, features.shape[1], *sparse_shape, dtype=torch.float64)
        b, i, j, k = coordinates.long().unbind(1)
        x[b, :, i, j, k] = features.double()
        active = torch.zeros(batch_size, 1, *sparse_shape, dtype=torch.float64)
        active[b, 0, i, j, k] = 1.0
        x, active = self._layer(x, active, "conv_input.0", "conv_input.1")
        stages = sorted({int(key.split(".")[1].removeprefix("encoder_layer")) for key in self.state
                         if key.startswith("encoder_layers.")})
        for stage in stages:
            block = 0
            while f"encoder_layers.encoder_layer{stage}.{block}.conv1.weight" in self.state:
                prefix = f"encoder_layers.encoder_layer{stage}.{block}"
                hidden, _ = self._layer(x, active, f"{prefix}.conv1", f"{prefix}.bn1")
                hidden, _ = self._layer(hidden, active, f"{prefix}.conv2", f"{prefix}.bn2", relu=False)
                x = F.relu(hidden + x) * active
                block += 1
            prefix = f"encoder_layers.encoder_layer{stage}.{block}"
            if f"{prefix}.0.weight" in self.state:
                padding = self.encoder_paddings[stage - 1][block]
                padding = tuple(padding) if isinstance(padding, (list, tuple)) else (padding,) * 3
                x, active = self._layer(x, active, f"{prefix}.0", f"{prefix}.1", stride=2, padding=padding,
                                        submanifold=False)
        x, active = self._layer(x, active, "conv_out.0", "conv_out.1", stride=(1, 1, 2), padding=0, submanifold=False)
        batch, channels, x_cells, y_cells, z_slices = x.shape
        return x.permute(0, 1, 4, 2, 3).reshape(batch, channels * z_slices, x_cells, y_cells)


def dense_reference_bev(state: dict[str, torch.Tensor], config, points: torch.Tensor) -> torch.Tensor:
    """(B, P, C) points -> (B, C_out * Z, X, Y) float64 BEV map by `voxelize_loop` and `DenseSparseEncoder`, with the
    grid and limits of ``config`` and the weights of ``state`` (bevfusion names, spconv 1.x kernels)."""
    features, coordinates = [], []
    for index, sample in enumerate(points):
        sample_features, cells, _ = voxelize_loop(sample.numpy(), config.point_cloud_range, config.voxel_size,
                                                  config.grid_size, config.max_num_points, config.max_voxels)
        features.append(torch.from_numpy(sample_features))
        coordinates.append(torch.cat([torch.full((len(cells), 1), index), torch.from_numpy(cells)], dim=1))
    encoder = DenseSparseEncoder(state, config.encoder_paddings, eps=config.batch_norm_eps)
    return encoder(torch.cat(features), torch.cat(coordinates), config.sparse_shape, batch_size=len(points))
