"""Evaluation with the official benchmarks and metrics: nuScenes detection through the devkit's ``DetectionEval``
(``nuscenes_detection``), and on ScanNet the depth reconstruction of Mask3D pretraining and the 2D semantic
segmentation mIoU (``scannet``)."""

from .nuscenes_detection import (
    NuScenesDetectionEvaluator,
    SubmissionError,
    default_attribute,
    evaluate_detector,
    format_metrics,
)
from .scannet import (
    DepthMetrics,
    SegmentationMetrics,
    evaluate_depth,
    evaluate_segmentation,
    format_iou_table,
    frame_depth_metrics,
)

__all__ = [
    "DepthMetrics",
    "NuScenesDetectionEvaluator",
    "SegmentationMetrics",
    "SubmissionError",
    "default_attribute",
    "evaluate_depth",
    "evaluate_detector",
    "evaluate_segmentation",
    "format_iou_table",
    "format_metrics",
    "frame_depth_metrics",
]
