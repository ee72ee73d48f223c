"""nuScenes detection evaluation: key-ego predictions -> the official submission -> the devkit's `DetectionEval`.

The submission follows the devkit's format (`python-sdk/nuscenes/eval/detection/README.md`): every box in the global
frame, moved there with the pose of the LIDAR_TOP key frame whose ego frame the model predicted in; size (w, l, h);
rotation as a devkit quaternion (w, x, y, z); velocity rotated to the global frame; an attribute from the class and
the predicted speed (mmdet3d's rule, which BEVDet's submissions use); a `meta` block (camera only); and every sample
of the split present, possibly with no box.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from pyquaternion import Quaternion

from ..data.bev_augmentation import augment_boxes
from ..data.nuscenes import nuscenes_database, split_sample_tokens
from ..data.nuscenes_constants import DETECTION_CLASSES
from ..models.inputs import model_inputs

MAX_BOXES_PER_SAMPLE = 500  # the benchmark's limit
MOVING_SPEED = 0.2  # m/s; above it a box counts as moving when its attribute is chosen
SUBMISSION_FILE = "results_nusc.json"
TP_ERRORS = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE", "attr_err": "mAAE"}


class SubmissionError(ValueError):
    """Predictions that the benchmark would refuse or mis-score: a sample of the split missing, an unknown one, a
    malformed box."""


def default_attribute(name: str, velocity: Sequence[float]) -> str:
    """The attribute of a predicted box: moving vehicles `vehicle.moving`, moving cycles `cycle.with_rider`; standing
    pedestrians `pedestrian.standing`, stopped buses `vehicle.stopped`; otherwise the class's default (mmdet3d's
    `NuScenesDataset.DefaultAttribute`; none for barriers and cones)."""
    moving = float(np.hypot(velocity[0], velocity[1])) > MOVING_SPEED
    if moving and name in ("car", "construction_vehicle", "bus", "truck", "trailer"):
        return "vehicle.moving"
    if moving and name in ("bicycle", "motorcycle"):
        return "cycle.with_rider"
    if not moving and name == "pedestrian":
        return "pedestrian.standing"
    if not moving and name == "bus":
        return "vehicle.stopped"
    defaults = {"car": "vehicle.parked", "truck": "vehicle.parked", "construction_vehicle": "vehicle.parked",
                "trailer": "vehicle.parked", "bus": "vehicle.moving", "pedestrian": "pedestrian.moving",
                "motorcycle": "cycle.without_rider", "bicycle": "cycle.without_rider"}
    return defaults.get(name, "")


def boxes_to_global(boxes: np.ndarray, ego_to_global: np.ndarray) -> list[tuple[np.ndarray, Quaternion, np.ndarray]]:
    """Centre (3,), orientation (devkit `Quaternion`) and velocity (2,) in the global frame of ego-frame boxes (K, 9)
    `(x, y, z, w, l, h, yaw, vx, vy)`, given the ego pose (4, 4)."""
    rotation, translation = ego_to_global[:3, :3], ego_to_global[:3, 3]
    ego_rotation = Quaternion(matrix=rotation, rtol=1e-6, atol=1e-6)
    return [(rotation @ box[:3] + translation,
             ego_rotation * Quaternion(axis=(0.0, 0.0, 1.0), angle=float(box[6])),
             rotation[:2, :2] @ box[7:9])  # the pose's yaw; its roll and pitch are ~0 on nuScenes
            for box in np.asarray(boxes, dtype=np.float64)]


class NuScenesDetectionEvaluator:
    """Collects predictions for the samples of a split and scores them with the official devkit.

    Example::

        evaluator = NuScenesDetectionEvaluator("data/nuscenes", "v1.0-trainval", "val", model.config.class_names)
        for batch in loader:
            detections = model.post_process(model(**model_inputs(model, batch, targets=False)))
            evaluator.add_batch(batch, detections)
        metrics = evaluator.evaluate("eval_output")  # also writes eval_output/results_nusc.json

    Args:
        dataroot, version, split: the dataset and split (a devkit split or a key of the dataroot's `splits.json`).
        class_names: the model's label order (`config.class_names`).
    """

    def __init__(self, dataroot: str | Path, version: str, split: str,
                 class_names: Sequence[str] = DETECTION_CLASSES) -> None:
        self.dataroot, self.version, self.split = str(Path(dataroot).resolve()), version, split
        self.class_names = list(class_names)
        unknown = sorted(set(self.class_names) - set(DETECTION_CLASSES))
        if unknown:
            raise ValueError(f"class_names {unknown} are not nuScenes detection classes {DETECTION_CLASSES}")
        self.sample_tokens = split_sample_tokens(self.dataroot, version, split)
        self.results: dict[str, list[dict]] = {}

    def add(self, sample_token: str, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
            ego_to_global: torch.Tensor | np.ndarray, bev_augmentation: torch.Tensor | None = None) -> None:
        """Adds one sample's predictions.

        Args:
            sample_token: the sample.
            boxes: (K, 9) `(x, y, z, w, l, h, yaw, vx, vy)` in the key frame's ego frame (the augmented one if
                `bev_augmentation` is given, which is then undone), z the box centre.
            scores: (K,); labels: (K,) indices into `class_names`.
            ego_to_global: (4, 4) pose of the key frame's ego frame (the batch's `ego_to_global`).
            bev_augmentation: (4, 4) BEV augmentation the boxes are in, or None.
        """
        if sample_token in self.results:
            raise SubmissionError(f"sample {sample_token} was added twice")
        boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 9)
        if bev_augmentation is not None:
            boxes = augment_boxes(boxes, torch.linalg.inv(torch.as_tensor(bev_augmentation, dtype=torch.float64)))
        scores = torch.as_tensor(scores).double().reshape(-1)
        labels = torch.as_tensor(labels).long().reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise SubmissionError(f"sample {sample_token}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} "
                                  f"labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise SubmissionError(f"sample {sample_token}: labels must index {len(self.class_names)} class names, got "
                                  f"{labels.min().item()}..{labels.max().item()}")
        order = scores.argsort(descending=True)[:MAX_BOXES_PER_SAMPLE]
        self.results[sample_token] = self.global_boxes(sample_token, boxes[order].numpy(), scores[order].numpy(),
                                                       labels[order].numpy(), np.asarray(ego_to_global, np.float64))

    def add_batch(self, batch: Mapping, detections: Sequence[Mapping[str, torch.Tensor]]) -> None:
        """Adds the `post_process` output of a collated batch (its `sample_tokens`, `ego_to_global`,
        `bev_augmentation`)."""
        for index, (token, detection) in enumerate(zip(batch["sample_tokens"], detections)):
            bev_augmentation = batch.get("bev_augmentation")
            self.add(token, detection["boxes"].cpu(), detection["scores"].cpu(), detection["labels"].cpu(),
                     batch["ego_to_global"][index].cpu(),
                     None if bev_augmentation is None else bev_augmentation[index].cpu())

    def global_boxes(self, sample_token: str, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                     ego_to_global: np.ndarray) -> list[dict]:
        """The submission entries of one sample: boxes moved from the ego frame to the global frame."""
        entries = []
        for (centre, orientation, velocity), box, score, label in zip(
                boxes_to_global(boxes, ego_to_global), boxes, scores, labels):
            name = self.class_names[label]
            entries.append({
                "sample_token": sample_token,
                "translation": centre.tolist(),
                "size": box[3:6].tolist(),
                "rotation": orientation.elements.tolist(),
                "velocity": velocity.tolist(),
                "detection_name": name,
                "detection_score": float(score),
                "attribute_name": default_attribute(name, velocity),
            })
        return entries

    def submission(self) -> dict:
        """The submission JSON object; every sample of the split must have been added."""
        missing = [token for token in self.sample_tokens if token not in self.results]
        extra = sorted(set(self.results) - set(self.sample_tokens))
        if missing or extra:
            raise SubmissionError(
                f"the predictions must cover exactly the {len(self.sample_tokens)} samples of split {self.split!r}: "
                f"{len(missing)} missing (first: {missing[:3]}), {len(extra)} not in the split (first: {extra[:3]})"
            )
        meta = {"use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False, "use_external": False}
        return {"meta": meta, "results": {token: self.results[token] for token in self.sample_tokens}}

    def evaluate(self, output_dir: str | Path) -> dict[str, float]:
        """Writes `OUTPUT_DIR/results_nusc.json`, runs the devkit's `DetectionEval` (`detection_cvpr_2019`) on the
        split, and returns `mAP`, `NDS`, the five TP errors (`mATE`, ..., `mAAE`) and `AP_<class>` per class (the
        mean over the four distance thresholds). The devkit's own summaries go to `OUTPUT_DIR/devkit/`."""
        from nuscenes.eval.common.config import config_factory
        from nuscenes.eval.detection.evaluate import DetectionEval

        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        submission_path = output_dir / SUBMISSION_FILE
        submission_path.write_text(json.dumps(self.submission()))
        nusc = nuscenes_database(self.dataroot, self.version)
        with contextlib.redirect_stdout(io.StringIO()):  # the devkit prints progress even with verbose=False
            evaluation = DetectionEval(nusc, config=config_factory("detection_cvpr_2019"),
                                       result_path=str(submission_path), eval_set=self.split,
                                       output_dir=str(output_dir / "devkit"), verbose=False)
            summary = evaluation.main(plot_examples=0, render_curves=False)
        metrics = {"mAP": summary["mean_ap"], "NDS": summary["nd_score"]}
        metrics |= {TP_ERRORS[name]: value for name, value in summary["tp_errors"].items()}
        metrics |= {f"AP_{name}": value for name, value in summary["mean_dist_aps"].items()}
        return metrics


@torch.no_grad()
def evaluate_detector(model, processor, dataroot: str | Path, version: str, split: str, output_dir: str | Path, *,
                      batch_size: int = 1, num_workers: int = 0, accelerator=None) -> dict[str, float]:
    """Runs a `GeoMIMForBEVDetection` over every sample of a split and scores it with the devkit (see
    [`NuScenesDetectionEvaluator.evaluate`]); writes `OUTPUT_DIR/results_nusc.json`.

    With an `accelerate.Accelerator`, every process predicts its own scenes and the main process scores all of them
    (the others return an empty dict); inference runs under the accelerator's autocast.
    """
    from accelerate.utils import gather_object
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ..data.collate import NuScenesCollator
    from ..data.nuscenes import load_nuscenes, scenes_of_split

    rank, world_size = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    detector = accelerator.unwrap_model(model) if accelerator else model
    device = accelerator.device if accelerator else next(detector.parameters()).device
    autocast = accelerator.autocast if accelerator else contextlib.nullcontext
    config = detector.config
    was_training = model.training
    model.eval()
    scenes = scenes_of_split(str(Path(dataroot).resolve()), version, split)[rank::world_size]
    predictions = []
    if scenes:
        previous_frames = config.bev_config.num_previous_frames
        dataset = load_nuscenes(dataroot, version, split, num_sweeps=1, previous_frames=previous_frames,
                                decode_images=False, scenes=scenes)
        collate = NuScenesCollator(processor, augment=False, depth_downsample=None, previous_frames=previous_frames,
                                   class_names=config.class_names)
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
        for batch in tqdm(loader, desc=f"evaluating on {split}", disable=rank != 0):
            with autocast():  # no training targets: no loss is computed
                detections = detector.post_process(model(**model_inputs(model, batch, device, targets=False)))
            for index, detection in enumerate(detections):
                predictions.append((batch["sample_tokens"][index],
                                    {key: value.float().cpu() for key, value in detection.items()},
                                    batch["ego_to_global"][index]))
    if accelerator is not None:
        predictions = gather_object(predictions)
    model.train(was_training)
    if rank != 0:
        return {}
    evaluator = NuScenesDetectionEvaluator(dataroot, version, split, config.class_names)
    for token, detection, ego_to_global in predictions:
        evaluator.add(token, detection["boxes"], detection["scores"], detection["labels"], ego_to_global)
    return evaluator.evaluate(output_dir)


def format_metrics(metrics: Mapping[str, float]) -> str:
    """A table of the devkit's metrics, as `nuscenes/eval/detection/evaluate.py` prints them."""
    lines = [f"mAP: {metrics['mAP']:.4f}", *(f"{short}: {metrics[short]:.4f}" for short in TP_ERRORS.values()),
             f"NDS: {metrics['NDS']:.4f}", "", f"{'Object Class':<22}AP"]
    lines += [f"{name:<22}{metrics[f'AP_{name}']:.3f}" for name in DETECTION_CLASSES if f"AP_{name}" in metrics]
    return "\n".join(lines)


__all__ = ["NuScenesDetectionEvaluator", "SubmissionError", "boxes_to_global", "default_attribute", "evaluate_detector",
           "format_metrics"]
