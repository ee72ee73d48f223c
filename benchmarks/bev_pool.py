"""Speed and peak memory of ``geomim_hf.geometry.bev_pool`` against two pure-PyTorch baselines, on CPU.

    python benchmarks/bev_pool.py [--batch 1 2] [--repeats 5] [--threads 2]

Configurations: six nuScenes-like cameras (``geomim_hf.data.synthetic.rig``), 256x704 input, 16x44 features, 80
channels; "finetune" is BEVDet's 59 depth bins on a 128x128 grid of 0.8 m, "pretrain" GeoMIM's 118 bins on 360x360 of
0.3 m. Methods, fed the same inputs and returning the same (B, C, Y, X) map:

- ours: :class:`BEVPoolIndex` + :func:`bev_pool` (a sparse CSR product);
- naive: the outer product depth x features over every frustum point, (B, N, D, h, w, C), then ``index_add_`` of the
  kept points into their cells;
- cumsum: lift-splat-shoot's trick: the outer product gathered in cell order, a cumulative sum over points, and
  differences at the ends of each cell's run; its backward hands every point the gradient of its cell.

Two scenarios:
- forward ("fwd"): inference with fixed cameras; each method's geometry-only preparation (kept points, cells, sort
  order) is done once, outside the timing;
- training step ("train"): the cameras or the augmentation change every step, so each method's preparation, its forward
  and its backward are timed together.

``speedup_vs_*`` and ``mem_ratio_vs_naive`` are those of the training step; ``fwd_speedup_vs_*`` of inference.

Peak memory. torch's CPU allocator keeps no statistics and tracemalloc does not see it, so each (configuration, method)
runs in a fresh subprocess that reads the kernel's resident-set high-water mark (VmHWM): it runs the workload once to
warm up, resets the mark (``/proc/self/clear_refs``), records the resident set, runs the workload again, and reports the
rise of the mark. glibc's dynamic mmap threshold is pinned (``MALLOC_MMAP_THRESHOLD_``) so that freed buffers leave the
resident set instead of hiding the next run's allocations. Linux only.

Times are medians over ``--repeats`` runs after a warm-up, all methods in the same process. The default is one thread:
on a machine shared with other jobs, OpenMP threads stall whenever another process holds one of their cores, and the
many short parallel regions of a training step then measure the scheduler rather than the code. Pass ``--threads`` to
use more on a quiet machine.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from geomim_hf.data.nuscenes_constants import CAMERA_CHANNELS
from geomim_hf.data.synthetic.rig import CAMERA_MOUNTS, camera_intrinsics, camera_rotation
from geomim_hf import GeoMIMBEVConfig, GeoMIMPretrainingConfig
from geomim_hf.geometry import (
    BEVGrid,
    BEVPoolIndex,
    bev_pool,
    create_frustum,
    frustum_to_ego,
    voxel_indices,
)

CONFIGS = {"finetune": GeoMIMBEVConfig.from_preset("bevdet4d-swinb-256x704").grid,
           "pretrain": GeoMIMPretrainingConfig().bev_grid}
IMAGE_SIZE, STRIDE, CHANNELS = (256, 704), 16, 80
METHODS = ("ours", "naive", "cumsum")


# ----------------------------------------------------------------------------------------------------------------------
# Baselines. Both start from the flat cell of every frustum point.


class KeptPoints(NamedTuple):
    point: torch.Tensor  # (P,) flat index of each kept frustum point into (B, N, D, h, w)
    cell: torch.Tensor  # (P,) its flat cell index into (B, Z, Y, X)


def kept_points(geometry: torch.Tensor, grid: BEVGrid) -> KeptPoints:
    voxel, inside = voxel_indices(geometry, grid)  # (B, N, D, h, w, 3), (B, N, D, h, w)
    num_z, num_y, num_x = grid.shape
    batch = torch.arange(geometry.shape[0]).view(-1, 1, 1, 1, 1)
    cell = ((batch * num_z + voxel[..., 2]) * num_y + voxel[..., 1]) * num_x + voxel[..., 0]
    point = inside.reshape(-1).nonzero().squeeze(1)
    return KeptPoints(point, cell.reshape(-1)[point])


def outer_product_rows(depth: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(B*N*D*h*w, C): depth x feature of every frustum point, the tensor that ``bev_pool`` never builds."""
    pixel_features = features.permute(0, 1, 3, 4, 2).unsqueeze(2)  # (B, N, 1, h, w, C)
    return (depth.unsqueeze(-1) * pixel_features).reshape(-1, features.shape[2])


def as_bev(cells: torch.Tensor, batch: int, grid: BEVGrid) -> torch.Tensor:
    """(B*Z*Y*X, C) -> (B, Z*C, Y, X), the layout ``bev_pool`` returns (channels-last, no copy when Z = 1)."""
    num_z, num_y, num_x = grid.shape
    cells = cells.view(batch, num_z, num_y, num_x, -1)
    return cells.permute(0, 2, 3, 1, 4).reshape(batch, num_y, num_x, -1).permute(0, 3, 1, 2)


def naive_pool(depth: torch.Tensor, features: torch.Tensor, plan: KeptPoints, grid: BEVGrid) -> torch.Tensor:
    rows = outer_product_rows(depth, features)[plan.point]  # (P, C)
    num_cells = depth.shape[0] * grid.num_z * grid.num_y * grid.num_x
    cells = rows.new_zeros(num_cells, rows.shape[1]).index_add_(0, plan.cell, rows)
    return as_bev(cells, depth.shape[0], grid)


class SortedRuns(NamedTuple):
    point: torch.Tensor  # (P,) kept frustum points, sorted by cell
    run_end: torch.Tensor  # (P,) bool, True at the last point of each cell's run
    run_cell: torch.Tensor  # (M,) the cell of each run


def sorted_runs(geometry: torch.Tensor, grid: BEVGrid) -> SortedRuns:
    plan = kept_points(geometry, grid)
    cell, order = torch.sort(plan.cell)
    run_end = torch.ones_like(cell, dtype=torch.bool)
    run_end[:-1] = cell[1:] != cell[:-1]
    return SortedRuns(plan.point[order], run_end, cell[run_end])


class RunSums(torch.autograd.Function):
    """Sum of each run of consecutive rows, via one cumulative sum and differences at the run ends."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, run_end: torch.Tensor) -> torch.Tensor:
        totals = rows.cumsum(dim=0)[run_end]  # (M, C) running total at the end of each run
        ctx.save_for_backward(run_end)
        return torch.cat([totals[:1], totals[1:] - totals[:-1]])

    @staticmethod
    def backward(ctx, grad_runs: torch.Tensor) -> tuple[torch.Tensor, None]:
        (run_end,) = ctx.saved_tensors
        run_of_row = run_end.cumsum(dim=0) - run_end.long()  # runs ended before each row = the row's run
        return grad_runs[run_of_row], None


def cumsum_pool(depth: torch.Tensor, features: torch.Tensor, plan: SortedRuns, grid: BEVGrid) -> torch.Tensor:
    rows = outer_product_rows(depth, features)[plan.point]  # (P, C), sorted by cell
    sums = RunSums.apply(rows, plan.run_end)  # (M, C)
    num_cells = depth.shape[0] * grid.num_z * grid.num_y * grid.num_x
    cells = sums.new_zeros(num_cells, sums.shape[1]).index_copy(0, plan.run_cell, sums)
    return as_bev(cells, depth.shape[0], grid)


PREPARE: dict[str, Callable] = {"ours": BEVPoolIndex.from_geometry, "naive": kept_points, "cumsum": sorted_runs}
POOL: dict[str, Callable] = {
    "ours": lambda depth, features, plan, grid: bev_pool(depth, features, plan),
    "naive": naive_pool,
    "cumsum": cumsum_pool,
}


# ----------------------------------------------------------------------------------------------------------------------
# Workloads.


class Inputs(NamedTuple):
    grid: BEVGrid
    geometry: torch.Tensor  # (B, 6, D, 16, 44, 3)
    depth: torch.Tensor  # (B, 6, D, 16, 44), softmax over D
    features: torch.Tensor  # (B, 6, 80, 16, 44)
    grad_bev: torch.Tensor  # (B, 80, Y, X), channels-last like the pooled maps


def make_inputs(config: str, batch: int) -> Inputs:
    grid = CONFIGS[config]
    intrinsics, camera_to_ego = [], []
    for channel in CAMERA_CHANNELS:
        mount = CAMERA_MOUNTS[channel]
        intrinsics.append(camera_intrinsics(mount, (IMAGE_SIZE[1], IMAGE_SIZE[0])))
        extrinsics = np.eye(4)
        extrinsics[:3, :3], extrinsics[:3, 3] = camera_rotation(mount.yaw_deg).rotation_matrix, mount.translation
        camera_to_ego.append(extrinsics)
    intrinsics = torch.tensor(np.stack(intrinsics), dtype=torch.float32).expand(batch, -1, -1, -1)
    camera_to_ego = torch.tensor(np.stack(camera_to_ego), dtype=torch.float32).expand(batch, -1, -1, -1)
    frustum = create_frustum(IMAGE_SIZE, STRIDE, grid)
    geometry = frustum_to_ego(frustum, intrinsics, camera_to_ego)

    generator = torch.Generator().manual_seed(0)
    _, height, width, _ = frustum.shape
    depth = torch.randn(batch, 6, grid.num_depth_bins, height, width, generator=generator).softmax(dim=2)
    features = torch.randn(batch, 6, CHANNELS, height, width, generator=generator)
    grad_bev = torch.rand(batch, CHANNELS, grid.num_y, grid.num_x, generator=generator) - 0.5
    return Inputs(grid, geometry, depth, features, grad_bev.contiguous(memory_format=torch.channels_last))


def forward_workload(method: str, inputs: Inputs) -> Callable[[], None]:
    plan = PREPARE[method](inputs.geometry, inputs.grid)

    def run() -> None:
        with torch.no_grad():
            POOL[method](inputs.depth, inputs.features, plan, inputs.grid)

    return run


def training_workload(method: str, inputs: Inputs) -> Callable[[], None]:
    depth, features = inputs.depth.clone().requires_grad_(), inputs.features.clone().requires_grad_()

    def run() -> None:
        plan = PREPARE[method](inputs.geometry, inputs.grid)
        POOL[method](depth, features, plan, inputs.grid).backward(inputs.grad_bev)
        depth.grad = features.grad = None

    return run


def median_ms(run: Callable[[], None], repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


# ----------------------------------------------------------------------------------------------------------------------
# Peak memory, one fresh process per measurement.


def _resident_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def peak_rise_mib(run: Callable[[], None]) -> float:
    run()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current resident set
    before = _resident_kib("VmRSS")
    run()
    return (_resident_kib("VmHWM") - before) / 1024


def measure_memory_here(config: str, method: str, batch: int) -> None:
    inputs = make_inputs(config, batch)
    forward = peak_rise_mib(forward_workload(method, inputs))
    training = peak_rise_mib(training_workload(method, inputs))
    print(f"{forward:.1f} {training:.1f}")


def measure_memory(config: str, method: str, batch: int, threads: int) -> tuple[float, float]:
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [sys.executable, __file__, "--memory_of", config, method, str(batch), "--threads", str(threads)]
    output = subprocess.run(command, env=environment, capture_output=True, text=True, check=True).stdout
    forward, training = output.split()[-2:]
    return float(forward), float(training)


# ----------------------------------------------------------------------------------------------------------------------


def check_agreement(inputs: Inputs) -> dict[str, float]:
    """Largest difference of each baseline from ours, relative to the largest BEV value: they must compute one thing."""
    bevs = {method: forward_result(method, inputs) for method in METHODS}
    scale = bevs["ours"].abs().max().item()
    differences = {method: (bevs[method] - bevs["ours"]).abs().max().item() / scale for method in METHODS[1:]}
    if max(differences.values()) > 1e-4:
        raise AssertionError(f"the methods disagree: {differences}")
    return differences


def forward_result(method: str, inputs: Inputs) -> torch.Tensor:
    plan = PREPARE[method](inputs.geometry, inputs.grid)
    with torch.no_grad():
        return POOL[method](inputs.depth, inputs.features, plan, inputs.grid)


def benchmark(config: str, batch: int, repeats: int, threads: int) -> str:
    inputs = make_inputs(config, batch)
    differences = check_agreement(inputs)
    forward_ms = {method: median_ms(forward_workload(method, inputs), repeats) for method in METHODS}
    training_ms = {method: median_ms(training_workload(method, inputs), repeats) for method in METHODS}
    index_ms = median_ms(lambda: BEVPoolIndex.from_geometry(inputs.geometry, inputs.grid), repeats)
    memory = {method: measure_memory(config, method, batch, threads) for method in METHODS}

    def triple(values: dict[str, float]) -> str:
        return "/".join(f"{values[method]:.1f}" for method in METHODS)

    return (
        f"config={config} batch={batch} "
        f"speedup_vs_naive={training_ms['naive'] / training_ms['ours']:.1f} "
        f"speedup_vs_cumsum={training_ms['cumsum'] / training_ms['ours']:.1f} "
        f"mem_ratio_vs_naive={memory['ours'][1] / memory['naive'][1]:.3f} "
        f"fwd_speedup_vs_naive={forward_ms['naive'] / forward_ms['ours']:.1f} "
        f"fwd_speedup_vs_cumsum={forward_ms['cumsum'] / forward_ms['ours']:.1f} "
        f"fwd_mem_ratio_vs_naive={memory['ours'][0] / memory['naive'][0]:.3f} "
        f"| ours/naive/cumsum: fwd_ms={triple(forward_ms)} train_ms={triple(training_ms)} "
        f"fwd_peak_mib={triple({m: memory[m][0] for m in METHODS})} "
        f"train_peak_mib={triple({m: memory[m][1] for m in METHODS})} "
        f"| index_ms={index_ms:.1f} "
        f"rel_diff_naive={differences['naive']:.1e} rel_diff_cumsum={differences['cumsum']:.1e}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes to measure")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    # One memory measurement in this fresh process (see measure_memory).
    parser.add_argument("--memory_of", nargs=3, metavar=("CONFIG", "METHOD", "BATCH"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_of:
        config, method, batch = args.memory_of
        measure_memory_here(config, method, int(batch))
        return
    print(f"# torch {torch.__version__}, CPU, {args.threads} threads, median of {args.repeats}; "
          f"speedups and mem ratio: training step (prep + forward + backward); fwd_*: inference with a fixed index")
    for config in args.configs:
        for batch in args.batch:
            print(benchmark(config, batch, args.repeats, args.threads), flush=True)


if __name__ == "__main__":
    main()
