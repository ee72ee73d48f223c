"""Evaluation with the official benchmarks: nuScenes detection through the devkit's ``DetectionEval``."""

from .nuscenes_detection import (
    NuScenesDetectionEvaluator,
    SubmissionError,
    default_attribute,
    evaluate_detector,
    format_metrics,
    model_inputs,
)

__all__ = [
    "NuScenesDetectionEvaluator",
    "SubmissionError",
    "default_attribute",
    "evaluate_detector",
    "format_metrics",
    "model_inputs",
]
