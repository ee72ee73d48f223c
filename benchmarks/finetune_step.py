"""Finetuning speed of the detection presets next to the input pipeline that feeds them.

For each preset (`tiny`, `bevdet4d-swinb-256x704`): training steps per second and peak memory at batch 1 in fp32 and
under bf16 autocast (on CPU, and on the GPU when there is one; each in a fresh process, see `detection.py`), and the
samples per second that `load_nuscenes` + `NuScenesCollator` deliver with the DataLoader workers
`examples/finetune_bevdet.py` uses by default for that preset, on synthetic nuScenes at the preset's image size
(1600 x 900 source images for the headline preset, as nuScenes). The loader must outrun the step:
`loader_vs_step` > 1.

    python benchmarks/finetune_step.py [--presets tiny bevdet4d-swinb-256x704] [--threads N]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# Importable by name, also in the spawned processes that run the measurements (they re-run this module's top).
sys.path.insert(0, str(HERE))
import detection  # noqa: E402
SOURCE_IMAGE_SIZE = {"tiny": (352, 128), "bevdet4d-swinb-256x704": (1600, 900)}


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def loader_rate(preset: str, root: Path, num_workers: int) -> float:
    """Training samples per second through the finetuning script's data path for `preset`."""
    from geomim_hf.data.collate import NuScenesCollator
    from geomim_hf.data.nuscenes import load_nuscenes
    from geomim_hf.models.bevdet import GeoMIMBEVDetectionConfig

    finetune = _module(HERE.parent / "examples" / "finetune_bevdet.py", "finetune_bevdet")
    config = GeoMIMBEVDetectionConfig.from_preset(preset)
    trunk = config.bev_config
    defaults = finetune.TRAINING_PRESETS[preset]
    collate = NuScenesCollator(finetune.detection_processor(preset, trunk.image_size), augment=defaults["augment"],
                               depth_downsample=trunk.feature_stride if config.depth_loss_weight else None,
                               previous_frames=trunk.num_previous_frames, class_names=config.class_names, seed=0)
    dataset = load_nuscenes(root, "v1.0-mini", "mini_train", num_sweeps=defaults["num_sweeps"],
                            previous_frames=trunk.num_previous_frames, decode_images=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=num_workers, collate_fn=collate)
    iterator = iter(loader)
    next(iterator)  # worker start-up and the devkit's tables are not the steady state
    start, count = time.perf_counter(), 0
    for batch in iterator:
        count += len(batch["sample_tokens"])
    return count / (time.perf_counter() - start)


def train_step_seconds(preset: str, device: str = "cpu", dtype: str = "fp32", repeats: int = 2,
                       threads: int | None = None) -> dict:
    """`detection.py`'s measurement of one configuration, in a fresh process: its report (step seconds, peak)."""
    return detection.measure_in_fresh_process(preset, device, dtype, repeats, threads)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "bevdet4d-swinb-256x704"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--loader_samples_per_scene", type=int, default=4,
                        help="synthetic key frames per scene for the loader measurement (3 scenes, 2 train)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from geomim_hf.data.synthetic import generate_nuscenes

    finetune = _module(HERE.parent / "examples" / "finetune_bevdet.py", "finetune_bevdet")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as folder:
        for preset in args.presets:
            root = generate_nuscenes(Path(folder) / preset, scenes=3, samples_per_scene=args.loader_samples_per_scene,
                                     sweeps=0,
                                     image_size=SOURCE_IMAGE_SIZE[preset], progress=False)
            workers = finetune.TRAINING_PRESETS[preset]["dataloader_num_workers"]
            samples_per_s = loader_rate(preset, root, workers)
            for device in devices:
                for dtype in ("fp32", "bf16"):
                    report = train_step_seconds(preset, device, dtype, args.repeats, args.threads)
                    step_s = report["results"]["train_step"]["seconds"]
                    print(f"preset={preset} device={device} dtype={dtype} steps_per_s={1 / step_s:.3f} "
                          f"peak_mib={report['peak_mib']:.0f} "
                          f"loader_workers={workers} loader_samples_per_s={samples_per_s:.2f} "
                          f"loader_vs_step={samples_per_s * step_s:.2f}", flush=True)


if __name__ == "__main__":
    main()
