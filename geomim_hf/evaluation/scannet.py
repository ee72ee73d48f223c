"""ScanNet evaluation: the depth reconstruction metrics of Mask3D pretraining, the picture of a few
reconstructions, and the 2D semantic segmentation mIoU of a finetuned model.

Depth metrics (AbsRel, RMSE, delta < 1.25) are computed over the valid pixels of each frame, those whose true depth
lies in (0, 10] m, averaged per frame, then over frames. They are measured on the model's dense prediction with the
pretraining masks drawn from a fixed seed, so a checkpoint always gets the same numbers on the same frames; visible
depth patches are part of the map (with `loss_patches="all"` the model is trained to reproduce them too).

The baseline fills every pixel of a frame with that frame's mean valid depth: a constant that knows each frame's
scale, which is the part of the depth a model gets from the visible depth patches for free.

Segmentation metrics follow the `evaluate` library's `mean_iou`: per-class IoU and accuracy from the confusion of all
pixels that are not ignored, and their means over the classes that count (`evaluate` gives NaN, here None, for a
class absent from both prediction and ground truth).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..models.inputs import model_inputs

MAX_EVAL_DEPTH = 10.0


def frame_depth_metrics(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame `(abs_rel, rmse, delta1)` over valid pixels, `(batch, 3)`; NaN rows for frames with none.

    Args:
        predicted (`torch.Tensor` of shape `(batch, height, width)`): positive depth in metres.
        target (`torch.Tensor` of shape `(batch, height, width)`): true depth in metres, 0 where unknown.
    """
    predicted, target = predicted.double(), target.double()
    valid = ((target > 0) & (target <= MAX_EVAL_DEPTH)).flatten(1)
    predicted, target = predicted.flatten(1), target.flatten(1)
    count = valid.sum(1)
    safe_target = torch.where(valid, target, torch.ones_like(target))
    abs_rel = torch.where(valid, (predicted - target).abs() / safe_target, 0).sum(1) / count
    rmse = (torch.where(valid, (predicted - target) ** 2, 0).sum(1) / count).sqrt()
    ratio = torch.maximum(predicted / safe_target, safe_target / predicted)
    delta1 = torch.where(valid, (ratio < 1.25).double(), 0).sum(1) / count
    return torch.stack([abs_rel, rmse, delta1], dim=1)  # 0 / 0 = NaN where count is 0


def mean_depth_baseline(target: torch.Tensor) -> torch.Tensor:
    """Each frame filled with its own mean valid depth, `(batch, height, width)`."""
    valid = (target > 0) & (target <= MAX_EVAL_DEPTH)
    mean = (target * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)
    return mean[:, None, None].expand_as(target).clamp(min=1e-3)


class DepthMetrics:
    """Accumulates per-frame depth metrics of the model and of the baseline; `compute` averages over frames."""

    names = ("abs_rel", "rmse", "delta1")

    def __init__(self) -> None:
        self.sums = torch.zeros(2, 3, dtype=torch.float64)  # (model / baseline, metric)
        self.frames = 0

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        per_frame = torch.stack([frame_depth_metrics(predicted, target),
                                 frame_depth_metrics(mean_depth_baseline(target), target)])  # (2, batch, 3)
        has_pixels = ~per_frame[0, :, 0].isnan()
        self.sums += per_frame[:, has_pixels].sum(1).cpu()
        self.frames += int(has_pixels.sum())

    def compute(self, sums: torch.Tensor | None = None, frames: int | None = None) -> dict[str, float]:
        """The means over frames; pass `sums` / `frames` gathered over processes to combine them."""
        sums = self.sums if sums is None else sums
        frames = self.frames if frames is None else frames
        if frames == 0:
            raise ValueError("no evaluation frame has valid depth in (0, 10] m")
        means = (sums / frames).tolist()
        metrics = {name: means[0][index] for index, name in enumerate(self.names)}
        metrics |= {f"baseline_{name}": means[1][index] for index, name in enumerate(self.names)}
        return metrics | {"num_frames": frames}


@torch.no_grad()
def evaluate_depth(model, batches, accelerator=None, seed: int = 0, figure_path: str | Path | None = None,
                   image_mean=None, image_std=None, figure_frames: int = 4) -> dict[str, float]:
    """Depth metrics of a [`Mask3DForDepthPretraining`] on `batches` (dicts with `pixel_values` and `depth_values`),
    with masks drawn from `seed`; with `accelerator`, frames of all processes are combined. Pass the unwrapped model:
    processes may hold different numbers of frames, so no DDP hook may run. On the main process, `figure_path` gets a
    picture of the first frames (see [`save_reconstruction_figure`])."""
    model.eval()
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    metrics = DepthMetrics()
    figure_batch = None
    for batch in batches:
        pixel_values, depth_values = batch["pixel_values"].to(device), batch["depth_values"].to(device)
        num_patches = (pixel_values.shape[-2] // model.config.patch_size) * (
            pixel_values.shape[-1] // model.config.patch_size)
        noise = [torch.rand(pixel_values.shape[0], num_patches, generator=generator).to(pixel_values.device)
                 for _ in range(2)]
        outputs = model(pixel_values=pixel_values, depth_values=depth_values, rgb_noise=noise[0], depth_noise=noise[1])
        metrics.update(outputs.predicted_depth.float(), depth_values)
        if figure_batch is None:
            figure_batch = {"pixel_values": pixel_values[:figure_frames].cpu(),
                            "depth_values": depth_values[:figure_frames].cpu(),
                            "predicted_depth": outputs.predicted_depth[:figure_frames].float().cpu(),
                            "rgb_mask": outputs.rgb_mask[:figure_frames].cpu(),
                            "depth_mask": outputs.depth_mask[:figure_frames].cpu()}
    sums, frames = metrics.sums, metrics.frames
    if accelerator is not None:
        sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
        frames = int(accelerator.reduce(torch.tensor(frames, device=accelerator.device), reduction="sum"))
    is_main = accelerator is None or accelerator.is_main_process
    if figure_path is not None and figure_batch is not None and is_main:
        save_reconstruction_figure(figure_path, figure_batch, model.config.patch_size, image_mean, image_std)
    return metrics.compute(sums, frames)


def save_reconstruction_figure(path: str | Path, frames: dict[str, torch.Tensor], patch_size: int,
                               image_mean, image_std) -> Path:
    """A PNG with one row per frame: RGB, the masked RGB and masked depth the model saw, predicted and true depth."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    mean = torch.tensor(image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_std).view(1, 3, 1, 1)
    rgb = (frames["pixel_values"].float() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    batch_size, height, width, _ = rgb.shape
    grid = (height // patch_size, width // patch_size)

    def pixel_mask(patch_mask: torch.Tensor) -> np.ndarray:  # (batch, L) -> (batch, H, W), True where removed
        mask = patch_mask.reshape(-1, *grid).repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)
        return mask.bool().numpy()

    rgb_removed, depth_removed = pixel_mask(frames["rgb_mask"]), pixel_mask(frames["depth_mask"])
    depth = frames["depth_values"].numpy()
    columns = [
        ("RGB", rgb, None),
        ("masked RGB (input)", np.where(rgb_removed[..., None], 0.5, rgb), None),
        ("masked depth (input)", np.where(depth_removed | (depth <= 0), np.nan, depth), "viridis"),
        ("predicted depth", frames["predicted_depth"].numpy(), "viridis"),
        ("true depth (0 = none)", np.where(depth <= 0, np.nan, depth), "viridis"),
    ]
    figure, axes = plt.subplots(batch_size, len(columns), figsize=(3 * len(columns), 2.4 * batch_size), squeeze=False)
    for row in range(batch_size):
        valid = depth[row][(depth[row] > 0) & (depth[row] <= MAX_EVAL_DEPTH)]
        limits = (valid.min(), valid.max()) if valid.size else (0.0, MAX_EVAL_DEPTH)
        for column, (title, images, colormap) in enumerate(columns):
            axis = axes[row, column]
            if colormap is None:
                axis.imshow(images[row])
            else:
                axis.imshow(images[row], cmap=colormap, vmin=limits[0], vmax=limits[1])
            axis.set_axis_off()
            if row == 0:
                axis.set_title(title, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


class SegmentationMetrics:
    """Confusion matrix over `num_classes`, ignoring `ignore_index`; metrics as `evaluate`'s `mean_iou`."""

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # (label, prediction)

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        keep = labels != self.ignore_index
        pairs = labels[keep].long() * self.num_classes + predictions[keep].long()
        self.confusion += torch.bincount(pairs.cpu(), minlength=self.num_classes**2).view(self.num_classes, -1)

    def compute(self, confusion: torch.Tensor | None = None, class_names=None) -> dict:
        confusion = (self.confusion if confusion is None else confusion).double()
        intersection = confusion.diag()
        label_area, prediction_area = confusion.sum(1), confusion.sum(0)
        union = label_area + prediction_area - intersection
        iou = (intersection / union).numpy()  # NaN where the class is in neither
        accuracy = (intersection / label_area).numpy()
        names = class_names or [str(index) for index in range(self.num_classes)]

        def nan_mean(values: np.ndarray) -> float | None:
            return None if np.isnan(values).all() else float(np.nanmean(values))

        def per_class(values: np.ndarray) -> dict:  # None (JSON null) for classes that do not count
            return {name: None if np.isnan(value) else float(value) for name, value in zip(names, values)}

        return {
            "mean_iou": nan_mean(iou),
            "mean_accuracy": nan_mean(accuracy),
            "overall_accuracy": float(intersection.sum() / confusion.sum().clamp(min=1)),
            "per_category_iou": per_class(iou),
            "per_category_accuracy": per_class(accuracy),
        }


@torch.no_grad()
def evaluate_segmentation(model, batches, num_classes: int, ignore_index: int, accelerator=None,
                          class_names=None) -> dict:
    """`evaluate`-style mean IoU of a semantic segmentation model (logits at the label size) on `batches` (dicts with
    `pixel_values` and `labels`); with `accelerator`, the confusion matrices of all processes are summed. Pass the
    unwrapped model (see [`evaluate_depth`])."""
    model.eval()
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    metrics = SegmentationMetrics(num_classes, ignore_index)
    for batch in batches:
        logits = model(**model_inputs(model, batch, device, targets=False)).logits  # no labels: no loss
        metrics.update(logits.argmax(1).cpu(), batch["labels"])
    confusion = metrics.confusion
    if accelerator is not None:
        confusion = accelerator.reduce(confusion.to(accelerator.device), reduction="sum").cpu()
    return metrics.compute(confusion, class_names)


def format_iou_table(metrics: dict) -> str:
    """The per-class IoU and accuracy as a text table, then the means."""
    def percent(value: float | None) -> str:
        return f"{'-':>7}" if value is None else f"{value * 100:7.2f}"

    lines = [f"{'class':<16} {'IoU':>7} {'acc':>7}"]
    for name, iou in metrics["per_category_iou"].items():
        lines.append(f"{name:<16} {percent(iou)} {percent(metrics['per_category_accuracy'][name])}")
    lines.append(f"{'mean':<16} {percent(metrics['mean_iou'])} {percent(metrics['mean_accuracy'])}")
    lines.append(f"overall accuracy {metrics['overall_accuracy'] * 100:.2f} "
                 "(-: a class in neither prediction nor labels)")
    return "\n".join(lines)


__all__ = [
    "MAX_EVAL_DEPTH",
    "DepthMetrics",
    "SegmentationMetrics",
    "evaluate_depth",
    "evaluate_segmentation",
    "format_iou_table",
    "frame_depth_metrics",
    "mean_depth_baseline",
    "save_reconstruction_figure",
]
