"""Pretraining step of `Mask3DForDepthPretraining` (ViT-B/16 at 240x320) against transformers' `ViTMAEForPreTraining` of
the same size, in one process.

    python benchmarks/mask3d_step.py                          # CPU: batch 2, 1 warm-up and 3 timed steps
    python benchmarks/mask3d_step.py --device cuda --per_device_train_batch_size 32 --warmup 3 --repeats 10

A step is forward, backward and an AdamW update, in fp32 and under bf16 autocast, for randomly initialised models
with their default masking (75 % of the RGB patches; Mask3D also masks 75 % of the depth patches). ViTMAE gets the
same ViT-B/16 encoder and its default decoder, which is also Mask3D's (512 wide, 8 layers, 16 heads); since ViTMAE
breaks on a rectangular `image_size` (transformers #35280), it is built square and run at 240x320 with
`interpolate_pos_encoding=True`, which gives it the same 15 x 20 patches. Mask3D does more: the depth stream (patch
embedding and 2 layers of width 384 on the visible depth patches) and a decoder that also reads the visible depth
tokens (300 + 75 tokens instead of 300).

For each precision the script prints `ratio_vs_vitmae=` (step time) and `memory_ratio_vs_vitmae=` (peak memory), ours
divided by ViTMAE's: the goal is at most 1.2. Time is the fastest timed step. Peak memory is
`torch.cuda.max_memory_allocated` on a GPU and the sampled growth of the resident set on CPU (see `encoder.py`).
"""

import argparse
import contextlib

import torch
from encoder import measure  # the timing and peak-memory harness of benchmarks/encoder.py
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from geomim_hf import Mask3DConfig, Mask3DForDepthPretraining, cli
from geomim_hf.models.inputs import model_inputs

IMAGE_SIZE = (240, 320)


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    mask3d = Mask3DForDepthPretraining(Mask3DConfig(image_size=IMAGE_SIZE))
    vitmae = ViTMAEForPreTraining(ViTMAEConfig(image_size=224, patch_size=16, mask_ratio=0.75))
    encoder = mask3d.config
    assert (vitmae.config.hidden_size, vitmae.config.num_hidden_layers, vitmae.config.decoder_hidden_size,
            vitmae.config.decoder_num_hidden_layers) == (encoder.hidden_size, encoder.num_hidden_layers,
                                                         encoder.decoder_hidden_size, encoder.decoder_num_hidden_layers)
    return {"vitmae": vitmae, "mask3d": mask3d}


def training_step(name: str, model: torch.nn.Module, batch: dict, device: torch.device, bf16: bool):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    # ViTMAE takes the RGB of the batch only, at the rectangular size by interpolating its square position table.
    options = {"interpolate_pos_encoding": True} if name == "vitmae" else {}

    def step() -> None:
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss = model(**model_inputs(model, batch), **options).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    cli.add_argument(parser, "--per_device_train_batch_size", deprecated=("--batch_size",), type=int, default=2,
                     help="frames per training step")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (the fastest is kept)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    batch_size = args.per_device_train_batch_size
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} batch={batch_size} "
          f"input={IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}")
    generator = torch.Generator().manual_seed(0)
    batch = {"pixel_values": torch.randn(batch_size, 3, *IMAGE_SIZE, generator=generator).to(device),
             "depth_values": (0.5 + 5 * torch.rand(batch_size, *IMAGE_SIZE, generator=generator)).to(device)}
    candidates = {name: model.to(device).train() for name, model in models().items()}
    for precision in ("fp32", "bf16"):
        results = {}
        for name, model in candidates.items():
            step = training_step(name, model, batch, device, bf16=precision == "bf16")
            results[name] = measure(step, device, args.warmup, args.repeats)
            print(f"{precision} {name:>7}: {results[name].seconds:7.3f} s/step, peak {results[name].peak_megabytes:.0f}"
                  " MiB", flush=True)
        print(f"{precision}: ratio_vs_vitmae={results['mask3d'].seconds / results['vitmae'].seconds:.3f} "
              f"memory_ratio_vs_vitmae={results['mask3d'].peak_megabytes / results['vitmae'].peak_megabytes:.3f}",
              flush=True)


if __name__ == "__main__":
    main()
