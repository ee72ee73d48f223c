"""Speed and memory of `GeoMIMForBEVDetection`: forward latency, training-step time and peak memory, with the share
of time in the encoder, the view transform (image neck, depth net, geometry, BEV pooling) and the BEV encoder + head.

Default: the headline configuration (GeoMIM Swin-B, six cameras at 256 x 704, BEVDet4D with a previous frame, batch
1) in fp32 and under bf16 autocast, on CPU, and on the GPU when there is one. Every configuration runs in a fresh
process so that its peak memory is its own. Ratios are against fp32 on the same device, in the same run.

    python benchmarks/detection.py [--preset bevdet4d-swinb-256x704|tiny] [--repeats 2] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time
from collections import defaultdict

import torch

# The detector's modules (paths in the model) and the part of the time each counts towards.
PARTS = {"bev_model.encoder": "encoder", "bev_model.image_neck": "view transform",
         "bev_model.view_transform": "view transform", "bev_model.pre_process": "BEV encoder + head",
         "bev_model.bev_encoder": "BEV encoder + head", "head": "BEV encoder + head"}


def nuscenes_like_batch(config, batch_size: int, device: str) -> dict[str, torch.Tensor]:
    """Six cameras on the nuScenes rig (55-degree spacing, 1600 x 900 intrinsics resized to the input), a previous
    frame 2 m behind, and a few boxes for the loss."""
    import math

    height, width = config.bev_config.image_size
    cameras = 6
    scale = width / 1600
    intrinsics = torch.tensor([[1266.0 * scale, 0, 800 * scale], [0, 1266.0 * scale, 450 * scale], [0, 0, 1]])
    camera_to_ego = torch.eye(4).repeat(batch_size, cameras, 1, 1)
    for index, yaw in enumerate((55.0, 0.0, -55.0, 110.0, 180.0, -110.0)):
        angle = math.radians(yaw)
        forward = torch.tensor([math.cos(angle), math.sin(angle), 0.0])
        right = torch.tensor([math.sin(angle), -math.cos(angle), 0.0])
        camera_to_ego[:, index, :3, :3] = torch.stack([right, torch.tensor([0.0, 0.0, -1.0]), forward], dim=1)
        camera_to_ego[:, index, :3, 3] = torch.tensor([1.0, 0.0, 1.6]) + forward
    previous = camera_to_ego.clone()
    previous[..., 0, 3] -= 2.0
    boxes = torch.tensor([[10.0, 2.0, 0.5, 1.9, 4.6, 1.7, 0.3, 3.0, 0.0], [-15.0, 6.0, 0.8, 0.7, 0.7, 1.8, 1.0, 0, 0]])
    batch = {
        "pixel_values": torch.randn(batch_size, cameras, 3, height, width),
        "camera_intrinsics": intrinsics.repeat(batch_size, cameras, 1, 1),
        "camera_to_ego": camera_to_ego,
        "post_rot": torch.eye(3).repeat(batch_size, cameras, 1, 1),
        "post_tran": torch.zeros(batch_size, cameras, 3),
        "gt_boxes": boxes.repeat(batch_size, 1, 1),
        "gt_labels": torch.tensor([[0, 8]]).repeat(batch_size, 1),
    }
    if config.bev_config.num_previous_frames:
        batch |= {"previous_pixel_values": torch.randn(batch_size, cameras, 3, height, width),
                  "previous_camera_to_ego": previous}
    return {key: value.to(device) for key, value in batch.items()}


def measure(preset: str, device: str, dtype: str, repeats: int, threads: int | None, queue) -> None:
    """One configuration, in its own process: mean forward and training-step time, part shares, peak memory."""
    from geomim_hf.models.bevdet import GeoMIMBEVDetectionConfig, GeoMIMForBEVDetection
    from geomim_hf.models.inputs import model_inputs

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = GeoMIMBEVDetectionConfig.from_preset(preset)
    model = GeoMIMForBEVDetection(config).to(device)
    batch = nuscenes_like_batch(config, 1, device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bf16")
    seconds = defaultdict(float)

    def synchronize():
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(name):
        def start(*_):
            synchronize()
            seconds[f"start/{name}"] = time.perf_counter()

        def stop(*_):
            synchronize()
            seconds[PARTS[name]] += time.perf_counter() - seconds.pop(f"start/{name}")
        return start, stop

    for name in PARTS:
        module = model.get_submodule(name) if model.bev_model.pre_process is not None or "pre_process" not in name \
            else None
        if module is not None:
            start, stop = timed(name)
            module.register_forward_pre_hook(start)
            module.register_forward_hook(stop)

    def forward():  # inference: without the training targets, no loss
        with torch.no_grad(), autocast:
            model.eval()(**model_inputs(model, batch, targets=False))

    def train_step():
        with autocast:
            model.train()(**model_inputs(model, batch)).loss.backward()
        model.zero_grad(set_to_none=True)

    results = {}
    for name, step in (("forward", forward), ("train_step", train_step)):
        step()  # warm-up
        seconds.clear()
        synchronize()
        begin = time.perf_counter()
        for _ in range(repeats):
            step()
        synchronize()
        total = (time.perf_counter() - begin) / repeats
        shares = {part: value / repeats / total for part, value in seconds.items() if not part.startswith("start/")}
        # The hooks time forward passes; in a training step the rest is the backward pass and the loss.
        results[name] = {"seconds": total, **shares, "rest": 1.0 - sum(shares.values())}
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put({"results": results, "peak_mib": peak / 2**20})


def measure_in_fresh_process(preset: str, device: str, dtype: str, repeats: int, threads: int | None) -> dict:
    """Runs :func:`measure` in a spawned process (so that its peak memory is its own) and returns its report; a child
    that dies is an error, not a hang."""
    import queue as queues

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(preset, device, dtype, repeats, threads, queue))
    process.start()
    while True:
        try:
            report = queue.get(timeout=5)
            break
        except queues.Empty:
            if not process.is_alive():
                raise RuntimeError(f"the measurement of {preset} {device} {dtype} died (exit code {process.exitcode})")
    process.join()
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="bevdet4d-swinb-256x704", help="a detection preset")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        baseline = None
        for dtype in ("fp32", "bf16"):
            report = measure_in_fresh_process(args.preset, device, dtype, args.repeats, args.threads)
            results = report["results"]
            baseline = baseline or results
            for step in ("forward", "train_step"):
                figures = results[step]
                shares = " ".join(f"{part.replace(' ', '_').replace('+', 'and')}={share:.0%}"
                                  for part, share in figures.items() if part != "seconds")
                print(f"preset={args.preset} device={device} dtype={dtype} {step}_s={figures['seconds']:.3f} "
                      f"ratio_vs_fp32={baseline[step]['seconds'] / figures['seconds']:.2f} {shares} "
                      f"peak_mib={report['peak_mib']:.0f}", flush=True)
            print(json.dumps({"preset": args.preset, "device": device, "dtype": dtype, **report}))


if __name__ == "__main__":
    main()
