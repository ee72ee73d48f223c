"""The whole product on the built-in synthetic default, end to end: ``make demo``.

Generate the synthetic nuScenes and ScanNet sets in their official layouts, read them back with the nuScenes devkit and
summarise them, draw a preview of each, stream one training batch through the data layer, convert a GeoMIM
checkpoint in the original (mmdet) layout; pretrain a tiny GeoMIM encoder for a few steps on a LiDAR teacher's cached
BEV targets, finetune the tiny BEV detector from it with ``accelerate launch`` and evaluate it with the devkit, reload
it with ``from_pretrained`` (the same predictions) and draw its detections; pretrain a tiny Mask3D RGB-D ViT and
compare its depth on a held-out room with a constant-depth baseline. Each capability adds its step here, so that this
one command always shows everything working.
"""
from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

import torch

from geomim_hf import GeoMIMModel, cli
from geomim_hf.data.collate import NuScenesCollator
from geomim_hf.data.image_processing_geomim import GeoMIMImageProcessor
from geomim_hf.data.nuscenes import load_nuscenes
from geomim_hf.data.nuscenes_constants import CATEGORY_TO_DETECTION_CLASS
from geomim_hf.data.scannet import load_scannet
from geomim_hf.data.synthetic import NuScenesSpec, ScanNetSpec, generate_nuscenes, generate_scannet
from geomim_hf.models.inputs import model_inputs
from geomim_hf.visualization import render_preview


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


def synthetic_geomim_checkpoint(path: Path, embed_dim: int = 32, depths=(2, 2, 2, 2), heads=(1, 2, 4, 8),
                                windows=(16, 16, 16, 8)) -> Path:
    """A small GeoMIM pretraining checkpoint with random weights, laid out as the original runner saves it: the
    mmdet-layout encoder under ``encoders.camera.backbone.``, plus pretraining-only decoder keys and optimizer state."""
    generator = torch.Generator().manual_seed(0)

    def weights(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.02

    def linear(name: str, out_features: int, in_features: int) -> dict:
        return {f"{name}.weight": weights(out_features, in_features), f"{name}.bias": weights(out_features)}

    def norm(name: str, dim: int) -> dict:
        return {f"{name}.weight": 1 + weights(dim), f"{name}.bias": weights(dim)}

    encoder = {"patch_embed.projection.weight": weights(embed_dim, 3, 4, 4), "patch_embed.projection.bias":
               weights(embed_dim), **norm("patch_embed.norm", embed_dim),
               "absolute_pos_embed": weights(1, embed_dim, 56, 56)}
    for stage, (depth, num_heads, window) in enumerate(zip(depths, heads, windows)):
        dim = embed_dim * 2**stage
        for block in range(depth):
            prefix = f"stages.{stage}.blocks.{block}."
            encoder |= norm(prefix + "norm1", dim) | norm(prefix + "norm2", dim)
            encoder |= linear(prefix + "attn.w_msa.qkv", 3 * dim, dim) | linear(prefix + "attn.w_msa.proj", dim, dim)
            encoder[prefix + "attn.w_msa.relative_position_bias_table"] = weights((2 * window - 1) ** 2, num_heads)
            encoder[prefix + "attn.w_msa.relative_position_index"] = torch.zeros(window**2, window**2,
                                                                                 dtype=torch.long)
            encoder |= linear(prefix + "ffn.layers.0.0", 4 * dim, dim) | linear(prefix + "ffn.layers.1", dim, 4 * dim)
        if stage < len(depths) - 1:
            encoder |= norm(f"stages.{stage}.downsample.norm", 4 * dim)
            encoder[f"stages.{stage}.downsample.reduction.weight"] = weights(2 * dim, 4 * dim)
    encoder |= norm("norm2", embed_dim * 4) | norm("norm3", embed_dim * 8)
    decoder = {"mask_token": weights(1, 1, 512), "decoder_norm.weight": weights(512)}
    state_dict = {f"encoders.camera.backbone.{key}": value for key, value in (encoder | decoder).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": {"epoch": 50}, "state_dict": state_dict, "optimizer": {"state": {}}}, path)
    return path


def convert_and_encode(out: Path, batch: dict) -> None:
    checkpoint = synthetic_geomim_checkpoint(out / "checkpoints" / "geomim_synthetic.pth")
    model_dir = out / "geomim-swin-synthetic"
    script = Path(__file__).resolve().parent.parent / "conversion" / "convert_geomim_swin_to_hf.py"
    subprocess.run([sys.executable, str(script), "--checkpoint", str(checkpoint), "--output_dir", str(model_dir),
                    "--overwrite_output_dir"], check=True)
    model = GeoMIMModel.from_pretrained(model_dir).eval()
    inputs = model_inputs(model, batch, targets=False)  # the entries of the batch that the encoder takes
    with torch.no_grad():
        outputs = model(**inputs)
    feature_maps = [tuple(feature_map.shape) for feature_map in outputs.feature_maps]
    print(f"reloaded {type(model).__name__} from {model_dir}; it takes {sorted(inputs)} of the demo batch "
          f"({tuple(inputs['pixel_values'].shape)}) and gives feature maps {feature_maps}")


def print_training_batch(nuscenes_root: Path, version: str, scannet_root: Path) -> dict:
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
    return batch


EXAMPLES = Path(__file__).resolve().parent


ACCELERATE_CPU = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
                  "--mixed_precision", "no", "--dynamo_backend", "no"]


def pretrain_geomim(out: Path, nuscenes_root: Path, version: str) -> Path:
    """A few GeoMIM pretraining steps of the `tiny` preset on cached teacher targets: a seeded random LiDAR teacher
    (the synthetic world has no trained LiDAR detector), its BEV targets precomputed once, then the pretraining
    script. Returns the pretrained encoder's folder."""
    import json

    teacher_dir, cache_dir, output_dir = out / "lidar-teacher", out / "teacher-targets", out / "geomim-pretrain-tiny"
    subprocess.run([sys.executable, str(EXAMPLES.parent / "conversion" / "convert_bevfusion_lidar_teacher.py"),
                    "--random_init", "small_grid", "--seed", "0", "--output_dir", str(teacher_dir),
                    "--overwrite_output_dir"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, str(EXAMPLES / "precompute_teacher_targets.py"), "--dataroot", str(nuscenes_root),
                    "--version", version, "--split", "mini_train", "--teacher_name_or_path", str(teacher_dir),
                    "--num_sweeps", "1", "--output_dir", str(cache_dir), "--overwrite_output_dir"], check=True)
    subprocess.run([*ACCELERATE_CPU, str(EXAMPLES / "pretrain_geomim.py"), "--dataroot", str(nuscenes_root),
                    "--version", version, "--train_split", "mini_train", "--config_name", "tiny", "--teacher_cache",
                    str(cache_dir), "--num_sweeps", "1", "--max_train_steps", "20", "--output_dir", str(output_dir),
                    "--overwrite_output_dir"], check=True)
    metrics = json.loads((output_dir / "metrics.json").read_text())
    print(f"pretrained {metrics['steps']} steps on cached teacher targets: " +
          ", ".join(f"{key} {value:.3f}" for key, value in metrics.items() if isinstance(value, float)))
    return output_dir / "encoder"


# The demo set has one training scene and one validation scene: too little to generalise from in a minute, so the
# demo scores the scene it trained on, as the learning test does (benchmarks/transfer_synthetic.py has held-out
# numbers).
DEMO_EVAL_SPLIT = "mini_train"


def finetune_detector(out: Path, nuscenes_root: Path, version: str, encoder: Path) -> Path:
    """A shortened run of the finetuning script's `tiny` defaults (20 epochs of the training scene instead of 60),
    from the encoder pretrained in the previous step."""
    output_dir = out / "bevdet-tiny"
    subprocess.run([*ACCELERATE_CPU, str(EXAMPLES / "finetune_bevdet.py"), "--dataroot", str(nuscenes_root),
                    "--version", version, "--train_split", "mini_train", "--eval_split", DEMO_EVAL_SPLIT,
                    "--model_name_or_path", str(encoder), "--config_name", "tiny", "--num_train_epochs", "20",
                    "--logging_steps", "25", "--output_dir", str(output_dir), "--overwrite_output_dir"], check=True)
    print(f"(devkit metrics on {DEMO_EVAL_SPLIT}, the scene the detector trained on)")
    return output_dir


def reload_and_visualize(out: Path, detector_dir: Path, nuscenes_root: Path, version: str) -> None:
    """Evaluates the saved folder again with `evaluate_bevdet.py` (a fresh `from_pretrained`) and checks that its
    submission is the trainer's, box for box; then draws one validation sample."""
    import json

    from geomim_hf.data.nuscenes import split_sample_tokens

    evaluation_dir = out / "bevdet-tiny-reloaded"
    subprocess.run([sys.executable, str(EXAMPLES / "evaluate_bevdet.py"), "--model_name_or_path", str(detector_dir),
                    "--dataroot", str(nuscenes_root), "--version", version, "--split", DEMO_EVAL_SPLIT,
                    "--output_dir", str(evaluation_dir), "--dataloader_num_workers", "0"], check=True,
                   stdout=subprocess.DEVNULL)
    trained = json.loads((detector_dir / "results_nusc.json").read_text())["results"]
    reloaded = json.loads((evaluation_dir / "results_nusc.json").read_text())["results"]
    if trained != reloaded:
        raise SystemExit("the reloaded detector predicts differently from the trained one")
    print(f"reloaded {detector_dir} with from_pretrained: the same {sum(map(len, reloaded.values()))} boxes on "
          f"{len(reloaded)} samples")
    token = split_sample_tokens(nuscenes_root, version, DEMO_EVAL_SPLIT)[5]
    subprocess.run([sys.executable, str(EXAMPLES / "visualize_bevdet.py"), "--model_name_or_path", str(detector_dir),
                    "--dataroot", str(nuscenes_root), "--version", version, "--sample_token", token,
                    "--output_dir", str(out)], check=True)


def pretrain_mask3d(out: Path) -> None:
    """The Mask3D pretraining script's `tiny` defaults on six synthetic rooms; depth of the held-out room against
    filling each frame with its mean depth."""
    import json
    import os

    root = generate_scannet(out / "scannet_mask3d", overwrite=True, scenes=6, frames=6, color_size=(160, 120))
    output_dir = out / "mask3d-tiny"
    # One thread: a tiny model gains nothing from a second one and loses much when the cores are busy.
    subprocess.run([*ACCELERATE_CPU, str(EXAMPLES / "pretrain_mask3d.py"),
                    "--dataroot", str(root), "--config_name", "tiny", "--output_dir", str(output_dir),
                    "--overwrite_output_dir"], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = json.loads((output_dir / "metrics.json").read_text())
    print(f"held-out room, {metrics['num_frames']} frames, model vs per-frame mean depth: "
          f"AbsRel {metrics['abs_rel']:.3f} vs {metrics['baseline_abs_rel']:.3f}, "
          f"RMSE {metrics['rmse']:.2f} vs {metrics['baseline_rmse']:.2f} m, "
          f"delta<1.25 {metrics['delta1']:.3f} vs {metrics['baseline_delta1']:.3f}; "
          f"wrote {output_dir / 'reconstructions.png'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument(parser, "--output_dir", deprecated=("--out",), type=Path, default=Path("demo_output"),
                     help="folder for everything the demo writes (it owns the folder: earlier demo output is replaced)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.output_dir
    start = time.perf_counter()
    nuscenes_spec, scannet_spec = NuScenesSpec(), ScanNetSpec()

    _step(f"1. Synthetic nuScenes {nuscenes_spec.version}: {nuscenes_spec.scenes} scenes x "
          f"{nuscenes_spec.samples_per_scene} samples, {nuscenes_spec.sweeps} sweeps, "
          f"{nuscenes_spec.image_size[0]}x{nuscenes_spec.image_size[1]} cameras")
    # The demo owns its output folder; the generator still refuses to replace anything it did not write itself.
    nuscenes_root = generate_nuscenes(out / "nuscenes", overwrite=True)
    summarise_nuscenes(nuscenes_root, nuscenes_spec.version)

    _step(f"2. Synthetic ScanNet ({scannet_spec.layout}): {scannet_spec.scenes} scans x {scannet_spec.frames} frames")
    scannet_root = generate_scannet(out / "scannet", overwrite=True)
    summarise_scannet(scannet_root)

    _step("3. Previews")
    for dataset in (nuscenes_root, scannet_root):
        print(f"wrote {render_preview(dataset, out / f'preview_{dataset.name}.png').resolve()}")

    _step("4. Streaming data layer: one training batch")
    batch = print_training_batch(nuscenes_root, nuscenes_spec.version, scannet_root)

    _step("5. GeoMIM encoder: convert an original-layout checkpoint, reload it with from_pretrained, encode the batch")
    convert_and_encode(out, batch)

    _step("6. GeoMIM pretraining: a LiDAR teacher's BEV targets cached once, then a few masked pretraining steps")
    encoder = pretrain_geomim(out, nuscenes_root, nuscenes_spec.version)

    _step("7. BEV detection: finetune the tiny preset from that encoder with accelerate launch, evaluate with the "
          "nuScenes devkit (on the training scene)")
    detector_dir = finetune_detector(out, nuscenes_root, nuscenes_spec.version, encoder)

    _step("8. Reload the detector with from_pretrained: the same predictions; draw them")
    reload_and_visualize(out, detector_dir, nuscenes_root, nuscenes_spec.version)

    _step("9. Mask3D RGB-D ViT: pretrain the tiny preset on synthetic ScanNet rooms, depth of a held-out room")
    pretrain_mask3d(out)

    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
