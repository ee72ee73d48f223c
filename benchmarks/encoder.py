"""Speed and peak memory of `GeoMIMModel` against timm's and transformers' Swin-B, in one process.

    python benchmarks/encoder.py                         # 1x3x224x224 and 6x3x256x704, CPU or the first GPU
    python benchmarks/encoder.py --warmup 2 --repeats 5  # the same runs for both inputs (slow on CPU)

`GeoMIMModel` is configured as standard Swin-B (shifted windows of 7, no absolute position embedding) and timed
against `timm.create_model("swin_base_patch4_window7_224")` and transformers' `SwinModel` of the same size, all
randomly initialised, on the forward pass (no grad) and a forward + backward step. For every input and pass the
script prints `ratio_vs_timm=... ratio_vs_hf=...`, their time divided by ours (above 1: ours is faster). Then it
times the GeoMIM configuration itself (windows 16/16/16/8, no shift, absolute position embedding) on the rig input.

Peak memory is `torch.cuda.max_memory_allocated` on a GPU. On CPU it is the growth of the process's resident set,
sampled every millisecond, after handing freed heap memory back to the OS: coarser, but comparable between models.
"""

import argparse
import ctypes
import gc
import os
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import timm
import torch
from transformers import SwinConfig, SwinModel

from geomim_hf import GeoMIMConfig, GeoMIMModel


SWIN_B = {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32]}


@dataclass
class BenchmarkInput:
    shape: tuple[int, int, int, int]
    warmup: int  # untimed runs before the timed ones
    repeats: int  # timed runs, the fastest is kept


# On CPU one rig forward + backward of Swin-B takes about a minute, so by default the rig runs once, after the 224
# runs have warmed the process up.
INPUTS = {
    "224x224": BenchmarkInput((1, 3, 224, 224), warmup=1, repeats=3),
    "6x3x256x704": BenchmarkInput((6, 3, 256, 704), warmup=0, repeats=1),
}


@dataclass
class Encoder:
    name: str
    module: torch.nn.Module
    encode: Callable[[torch.Tensor], torch.Tensor]  # images -> last-stage features


@dataclass
class Measurement:
    seconds: float
    peak_megabytes: float


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory(device: torch.device):
    """Yields a dict that holds `peak_bytes` once the context closes: the allocator's peak on a GPU, the sampled peak
    growth of the resident set on CPU (after `malloc_trim` hands freed heap pages back to the OS)."""
    result = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device) - start
        return

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    start = resident_bytes()
    peak = start
    running = threading.Event()
    running.set()

    def sample() -> None:
        nonlocal peak
        while running.is_set():
            peak = max(peak, resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        running.clear()
        sampler.join()
        result["peak_bytes"] = max(peak, resident_bytes()) - start


def measure(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> Measurement:
    for _ in range(warmup):
        step()
    gc.collect()
    seconds = []
    with peak_memory(device) as memory:
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
    return Measurement(seconds=min(seconds), peak_megabytes=memory["peak_bytes"] / 2**20)


def swin_b_encoders(image_size: tuple[int, int]) -> list[Encoder]:
    """Standard Swin-B (shifted windows of 7) in three implementations, randomly initialised."""
    torch.manual_seed(0)
    standard_swin = GeoMIMConfig(
        **SWIN_B, window_size=7, shift_windows=True, use_absolute_embeddings=False, out_features=["stage4"]
    )
    geomim = GeoMIMModel(standard_swin)
    # timm fixes its shifted-window masks at construction, so it is built for the input size.
    timm_swin = timm.create_model("swin_base_patch4_window7_224", pretrained=False, num_classes=0, img_size=image_size)
    hf_swin = SwinModel(SwinConfig(**SWIN_B, window_size=7, drop_path_rate=0.0), add_pooling_layer=False)
    return [
        Encoder("geomim", geomim, lambda images: geomim(images).feature_maps[-1]),
        Encoder("timm", timm_swin, timm_swin.forward_features),
        Encoder("transformers", hf_swin, lambda images: hf_swin(images).last_hidden_state),
    ]


def time_passes(
    encoder: Encoder, label: str, images: torch.Tensor, device: torch.device, warmup: int, repeats: int
) -> dict[str, Measurement]:
    """Times the no-grad forward (eval mode) and a forward + backward step (train mode) of `encoder`."""

    def forward() -> None:
        with torch.no_grad():
            encoder.encode(images)

    def forward_backward() -> None:
        encoder.encode(images).float().mean().backward()

    module = encoder.module.to(device).eval()
    results = {"forward": measure(forward, device, warmup, repeats)}
    module.train()
    results["forward+backward"] = measure(forward_backward, device, warmup, repeats)
    module.zero_grad(set_to_none=True)
    module.eval().cpu()
    for pass_name, result in results.items():
        print(f"{label:>28} {pass_name:>16}: {result.seconds:7.3f} s, peak {result.peak_megabytes:.0f} MiB")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, help="untimed runs before each measurement, for every input")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (fastest kept), for every input")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} timm={timm.__version__}")

    runs = {
        name: (
            benchmark_input.shape,
            benchmark_input.warmup if args.warmup is None else args.warmup,
            benchmark_input.repeats if args.repeats is None else args.repeats,
        )
        for name, benchmark_input in INPUTS.items()
    }
    for input_name, (shape, warmup, repeats) in runs.items():
        images = torch.randn(shape, device=device)
        results = {
            encoder.name: time_passes(encoder, f"{encoder.name} swin-b {input_name}", images, device, warmup, repeats)
            for encoder in swin_b_encoders(image_size=shape[-2:])
        }
        for pass_name in ("forward", "forward+backward"):
            ours = results["geomim"][pass_name].seconds
            print(
                f"{input_name} {pass_name}: ratio_vs_timm={results['timm'][pass_name].seconds / ours:.2f} "
                f"ratio_vs_hf={results['transformers'][pass_name].seconds / ours:.2f}",
                flush=True,
            )

    torch.manual_seed(0)
    geomim_b = GeoMIMModel(GeoMIMConfig())
    rig = Encoder("geomim", geomim_b, lambda images: geomim_b(images).feature_maps[-1])
    shape, warmup, repeats = runs["6x3x256x704"]
    time_passes(rig, "geomim geomim-b 6x3x256x704", torch.randn(shape, device=device), device, warmup, repeats)


if __name__ == "__main__":
    main()
