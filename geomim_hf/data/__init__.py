"""Data: nuScenes and ScanNet as streaming HuggingFace datasets, the multi-camera image processor, BEV augmentation,
model-ready batches, and synthetic datasets in the official layouts (``geomim_hf.data.synthetic``)."""

from .bev_augmentation import augment_boxes, augment_points, bev_augmentation_matrix, sample_bev_augmentation
from .collate import NuScenesCollator
from .errors import DataError
from .image_processing_geomim import GeoMIMImageProcessor
from .nuscenes import load_nuscenes, split_by_node
from .scannet import load_scannet

__all__ = [
    "DataError",
    "GeoMIMImageProcessor",
    "NuScenesCollator",
    "augment_boxes",
    "augment_points",
    "bev_augmentation_matrix",
    "load_nuscenes",
    "load_scannet",
    "sample_bev_augmentation",
    "split_by_node",
]
