"""Draw a detector's predictions on one nuScenes sample: the six cameras with the projected predicted (dashed, with
scores) and ground-truth (solid) boxes in class colours, and a bird's-eye view with the LiDAR points, both box sets
and the ego car.

    python examples/visualize_bevdet.py --model_name_or_path geomim/bevdet4d-swin-base --dataroot data/nuscenes \\
        --version v1.0-trainval --sample_token 3e8750f331d7499e9b5123e9eb70f2e2 --output_dir pictures

writes `OUTPUT_DIR/detections.png` (`--out FILE`, the spelling of earlier releases, writes FILE). The sample goes in
without its training targets, so no loss is computed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from nuscenes.utils.data_classes import Box

from geomim_hf import GeoMIMForBEVDetection, GeoMIMImageProcessor, cli
from geomim_hf.data.collate import NuScenesCollator
from geomim_hf.data.nuscenes import nuscenes_database, read_previous_frames, sample_example
from geomim_hf.evaluation.nuscenes_detection import boxes_to_global
from geomim_hf.models.inputs import model_inputs
from geomim_hf.visualization import draw_nuscenes_sample

FIGURE_NAME = "detections.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument(parser, "--model_name_or_path", deprecated=("--model",), required=True,
                     help="GeoMIMForBEVDetection folder or Hub id")
    parser.add_argument("--dataroot", type=Path, required=True, help="nuScenes dataroot (official v1.0 layout)")
    parser.add_argument("--version", default="v1.0-trainval")
    parser.add_argument("--sample_token", required=True)
    cli.add_output_file_arguments(parser, FIGURE_NAME, "the picture")
    parser.add_argument("--score_threshold", type=float, default=0.3, help="draw predictions scoring at least this")
    return parser.parse_args(argv)


def predicted_boxes(model, processor, nusc, sample_token: str, score_threshold: float) -> list[Box]:
    """The model's detections on one sample as global-frame devkit boxes (with `name` and `score`)."""
    sample = nusc.get("sample", sample_token)
    example = sample_example(nusc, sample, num_sweeps=1)
    previous_frames = model.config.bev_config.num_previous_frames
    if previous_frames:
        example |= read_previous_frames(nusc, sample, previous_frames)
    batch = NuScenesCollator(processor, depth_downsample=None, previous_frames=previous_frames,
                             class_names=model.config.class_names)([example])
    with torch.no_grad():
        outputs = model(**model_inputs(model, batch, model.device, targets=False))
    (detection,) = model.post_process(outputs, score_threshold=score_threshold)
    boxes = []
    global_frame = boxes_to_global(detection["boxes"].numpy(), np.asarray(example["ego_to_global"]))
    for (centre, orientation, _), box, score, label in zip(global_frame, detection["boxes"].tolist(),
                                                           detection["scores"].tolist(), detection["labels"].tolist()):
        boxes.append(Box(centre.tolist(), box[3:6], orientation, score=score, name=model.config.class_names[label]))
    return boxes


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    model = GeoMIMForBEVDetection.from_pretrained(args.model_name_or_path).eval()
    processor = GeoMIMImageProcessor.from_pretrained(args.model_name_or_path)
    nusc = nuscenes_database(str(args.dataroot.resolve()), args.version)
    if args.sample_token not in nusc._token2ind["sample"]:
        raise SystemExit(f"error: sample {args.sample_token} is not in {args.dataroot}/{args.version}")
    boxes = predicted_boxes(model, processor, nusc, args.sample_token, args.score_threshold)
    title = (f"{args.model_name_or_path}: {len(boxes)} detections >= {args.score_threshold} on sample "
             f"{args.sample_token[:8]}")
    out = draw_nuscenes_sample(nusc, args.sample_token, cli.output_file(args, FIGURE_NAME), predictions=boxes,
                               title=title)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
