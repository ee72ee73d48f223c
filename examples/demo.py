"""The whole product on the built-in synthetic default, end to end: ``make demo``.

Steps so far: generate the synthetic nuScenes and ScanNet sets in their official layouts, read them back with the
nuScenes devkit and summarise them, draw a preview of each, and stream one training batch through the data layer. Later capabilities (pretraining, BEV detection,
evaluation, Hub round trips) add their steps here, so that this one command always shows everything working.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import torch

from geomim_hf.data.collate import NuScenesCollator
from geomim_hf.data.image_processing_geomim import GeoMIMImageProcessor
from geomim_hf.data.nuscenes import load_nuscenes
from geomim_hf.data.nuscenes_constants import CATEGORY_TO_DETECTION_CLASS
from geomim_hf.data.scannet import load_scannet
from geomim_hf.data.synthetic import NuScenesSpec, ScanNetSpec, generate_nuscenes, generate_scannet, render_preview


def _step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def summarise_nuscenes(dataroot: Path, version: str) -> None:
    from nuscenes import NuScenes

    nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    nusc.list_scenes()
    print("tables: " + ", ".join(f"{len(getattr(nusc, table))} {table}" for table in nusc.table_names))
    per_class = collections.Counter(
        CATEGORY_TO_DETECTION_CLASS.get(a["category_name"], f"({a['category_name']})") for a in nusc.sample_annotation
    )
    print("annotations per detection class: " + ", ".join(f"{k} {v}" for k, v in sorted(per_class.items())))


def summarise_scannet(root: Path) -> None:
    for split in ("train", "val"):
        scenes = (root / f"scannetv2_{split}.txt").read_text().split()
        frames = sum(len(list((root / scene / "color").glob("*.jpg"))) for scene in scenes)
        print(f"{split}: {len(scenes)} scans, {frames} RGB-D frames ({', '.join(scenes)})")


def print_training_batch(nuscenes_root: Path, version: str, scannet_root: Path) -> None:
    dataset = load_nuscenes(nuscenes_root, version, split="mini_train", num_sweeps=10)
    collate = NuScenesCollator(GeoMIMImageProcessor.bevdet_finetuning(), augment=True,
                               generator=torch.Generator().manual_seed(0))
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate)))
    print("nuScenes batch (streaming, augmented, BEVDet finetuning preset):")
    for name, value in batch.items():
        described = f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}" if torch.is_tensor(value) else value
        print(f"  {name:18s} {described}")
    frame = next(iter(load_scannet(scannet_root, split="train")))
    print(f"ScanNet frame {frame['scene_id']}/{frame['frame_index']}: image {frame['image'].size}, "
          f"depth {frame['depth'].shape} metres, label space {frame['label_space']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_output"))
    args = parser.parse_args()
    start = time.perf_counter()
    nuscenes_spec, scannet_spec = NuScenesSpec(), ScanNetSpec()

    _step(f"1. Synthetic nuScenes {nuscenes_spec.version}: {nuscenes_spec.scenes} scenes x "
          f"{nuscenes_spec.samples_per_scene} samples, {nuscenes_spec.sweeps} sweeps, "
          f"{nuscenes_spec.image_size[0]}x{nuscenes_spec.image_size[1]} cameras")
    # The demo owns its output folder; the generator still refuses to replace anything it did not write itself.
    nuscenes_root = generate_nuscenes(args.out / "nuscenes", overwrite=True)
    summarise_nuscenes(nuscenes_root, nuscenes_spec.version)

    _step(f"2. Synthetic ScanNet ({scannet_spec.layout}): {scannet_spec.scenes} scans x {scannet_spec.frames} frames")
    scannet_root = generate_scannet(args.out / "scannet", overwrite=True)
    summarise_scannet(scannet_root)

    _step("3. Previews")
    for dataset in (nuscenes_root, scannet_root):
        print(f"wrote {render_preview(dataset, args.out / f'preview_{dataset.name}.png').resolve()}")

    _step("4. Streaming data layer: one training batch")
    print_training_batch(nuscenes_root, nuscenes_spec.version, scannet_root)

    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
