"""PyTorch BEVDet / BEVDet4D: the BEV trunk (`GeoMIMBEVModel`) with CenterPoint's head, the detector that GeoMIM
finetunes for nuScenes 3D detection.

Ported from GeoMIM's `bevdet/` (a fork of BEVDet dev2.x, HuangJunJie2017/BEVDet): `BEVDet4D`
(`mmdet3d/models/detectors/bevdet.py`) on the trunk of `..bev.modeling_bev`, and mmdet3d's `CenterHead`
(`dense_heads/centerpoint_head.py`).

Boxes are `(x, y, z, w, l, h, yaw, vx, vy)`: the gravity centre, nuScenes' size order, yaw of the length axis
counter-clockwise from +x, velocity in m/s, in the (augmented) ego frame of the key frame. The head regresses sizes as
log (l, w, h), the channel order of the released checkpoints; `centerpoint.py` does the one swap.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ...geometry import depth_bin_targets, depth_loss
from ..bev.modeling_bev import ConvNormActivation, GeoMIMBEVModel
from .centerpoint import HEAD_OUTPUTS, detection_loss
from .configuration_bevdet import GeoMIMBEVDetectionConfig
from .post_processing import decode_detections

# Checkpoints written before the BEV trunk existed (geomim_hf 0.1.0.dev0, up to commit 73980e5) name the trunk's
# modules at the top level; loading renames them (the head's names did not change). `image_neck.` and `pre_process.`
# keys of such a checkpoint are also those of a trunk saved alone, which gains its `bev_model.` prefix either way.
LEGACY_KEY_MAPPING = {
    r"^geomim\.": "bev_model.encoder.geomim.",
    r"^image_neck\.": "bev_model.image_neck.",
    r"^view_transformer\.": "bev_model.view_transform.",
    r"^pre_process\.": "bev_model.pre_process.",
    r"^bev_encoder\.stages\.": "bev_model.bev_encoder.backbone.stages.",
    r"^bev_neck\.": "bev_model.bev_encoder.neck.",
}


@dataclass
class GeoMIMBEVDetectionOutput(ModelOutput):
    r"""
    Outputs of [`GeoMIMForBEVDetection`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned with `gt_boxes` and `gt_labels`):
            `heatmap_loss + bbox_loss (+ depth_loss)`.
        heatmap_loss, bbox_loss, depth_loss (`torch.FloatTensor` of shape `()`, *optional*):
            The Gaussian focal loss of the heatmaps and the L1 box loss, summed over tasks, and the depth loss (with
            `config.depth_loss_weight > 0` and `depth_targets`).
        head_outputs (`tuple(dict[str, torch.FloatTensor])`):
            Per task, the raw head maps `(batch_size, channels, Y, X)` before any activation: `reg` (2: cell offset
            x, y), `height` (1: centre z), `dim` (3: log l, w, h), `rot` (2: sin, cos yaw), `vel` (2: vx, vy) and
            `heatmap` (logits of the task's classes).
        bev_features (`torch.FloatTensor` of shape `(batch_size, bev_neck_channels, Y, X)`):
            Output of the BEV trunk, the head's input.
        depth_probabilities (`torch.FloatTensor` of shape `(batch_size, num_cameras, depth_bins, h, w)`):
            The key frame's depth distribution per feature pixel.
    """

    loss: torch.FloatTensor | None = None
    heatmap_loss: torch.FloatTensor | None = None
    bbox_loss: torch.FloatTensor | None = None
    depth_loss: torch.FloatTensor | None = None
    head_outputs: tuple[dict[str, torch.FloatTensor], ...] | None = None
    bev_features: torch.FloatTensor | None = None
    depth_probabilities: torch.FloatTensor | None = None


class GeoMIMHeatmapClassifier(nn.Conv2d):
    """The last conv of a heatmap head: a class of its own so that initialisation can give it CenterPoint's prior
    bias."""


class GeoMIMCenterPointTaskHead(nn.Module):
    """mmdet3d's `SeparateHead` for one task: per output, a conv-BN-ReLU then a biased conv to its channels."""

    def __init__(self, config: GeoMIMBEVDetectionConfig, num_classes: int):
        super().__init__()
        hidden = config.task_head_channels
        kernel = config.head_final_kernel
        self.outputs = nn.ModuleDict()
        for name, out_channels in {**HEAD_OUTPUTS, "heatmap": num_classes}.items():
            final_conv = GeoMIMHeatmapClassifier if name == "heatmap" else nn.Conv2d
            self.outputs[name] = nn.Sequential(
                ConvNormActivation(config.head_channels, hidden, kernel),
                final_conv(hidden, out_channels, kernel, padding=kernel // 2),
            )

    def forward(self, hidden_states: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(hidden_states) for name, head in self.outputs.items()}


class GeoMIMCenterPointHead(nn.Module):
    """mmdet3d's `CenterHead`: a shared conv-BN-ReLU, then one separate head per task."""

    def __init__(self, config: GeoMIMBEVDetectionConfig):
        super().__init__()
        self.shared_conv = ConvNormActivation(config.bev_config.bev_neck_channels, config.head_channels)
        self.task_heads = nn.ModuleList(GeoMIMCenterPointTaskHead(config, len(task)) for task in config.tasks)

    def forward(self, bev_features: torch.Tensor) -> tuple[dict[str, torch.Tensor], ...]:
        hidden_states = self.shared_conv(bev_features)
        return tuple(task_head(hidden_states) for task_head in self.task_heads)


class GeoMIMBEVDetectionPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading for the detector: transformers' defaults plus the head's prior bias (the
    trunk initialises itself). Checkpoints of the layout before the trunk existed load through `LEGACY_KEY_MAPPING`;
    saving always writes the current layout."""

    config: GeoMIMBEVDetectionConfig
    base_model_prefix = "bev_model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, GeoMIMHeatmapClassifier):
            init.constant_(module.bias, self.config.heatmap_init_bias)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        kwargs["key_mapping"] = {**LEGACY_KEY_MAPPING, **(kwargs.get("key_mapping") or {})}
        return super().from_pretrained(*args, **kwargs)

    def save_pretrained(self, *args, save_original_format: bool = False, **kwargs):
        # transformers would otherwise write a checkpoint back under the legacy names it was loaded with.
        return super().save_pretrained(*args, save_original_format=save_original_format, **kwargs)


class GeoMIMForBEVDetection(GeoMIMBEVDetectionPreTrainedModel):
    """BEVDet / BEVDet4D: the BEV trunk and CenterPoint's head.

    Takes the batches of [`~geomim_hf.data.NuScenesCollator`] through [`~geomim_hf.models.inputs.model_inputs`];
    with `gt_boxes` and `gt_labels` it returns the training loss too. [`post_process`] turns the outputs into boxes.
    """

    target_input_names = ("gt_boxes", "gt_labels", "depth_targets")

    def __init__(self, config: GeoMIMBEVDetectionConfig):
        super().__init__(config)
        self.bev_model = GeoMIMBEVModel(config.bev_config)
        self.head = GeoMIMCenterPointHead(config)
        self.post_init()

    def forward_loss(self, output: GeoMIMBEVDetectionOutput, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                     depth_targets: torch.Tensor | None) -> None:
        """Adds CenterPoint's losses (and the depth loss) of `output` against the targets to it."""
        if gt_labels.shape != gt_boxes.shape[:2] or gt_boxes.shape[-1:] != (9,):
            raise ValueError(f"gt_boxes must be (batch_size, max_boxes, 9) and gt_labels (batch_size, max_boxes), "
                             f"got {tuple(gt_boxes.shape)} and {tuple(gt_labels.shape)}")
        if gt_labels.numel() and gt_labels.max() >= len(self.config.class_names):
            raise ValueError(f"gt_labels index the model's {len(self.config.class_names)} classes "
                             f"{self.config.class_names}, got label {gt_labels.max().item()}")
        losses = detection_loss(output.head_outputs, gt_boxes, gt_labels, self.config)
        output.heatmap_loss, output.bbox_loss = losses["heatmap"], losses["bbox"]
        output.loss = output.heatmap_loss + output.bbox_loss
        if self.config.depth_loss_weight > 0 and depth_targets is not None:
            bin_targets = depth_bin_targets(depth_targets, self.config.bev_config.grid)
            output.depth_loss = depth_loss(output.depth_probabilities, bin_targets,
                                           weight=self.config.depth_loss_weight)
            output.loss = output.loss + output.depth_loss

    def forward(
        self,
        pixel_values: torch.Tensor,
        camera_intrinsics: torch.Tensor,
        camera_to_ego: torch.Tensor,
        post_rot: torch.Tensor,
        post_tran: torch.Tensor,
        bev_augmentation: torch.Tensor | None = None,
        previous_pixel_values: torch.Tensor | None = None,
        previous_camera_to_ego: torch.Tensor | None = None,
        zero_previous_frame: bool = False,
        gt_boxes: torch.Tensor | None = None,
        gt_labels: torch.Tensor | None = None,
        depth_targets: torch.Tensor | None = None,
    ) -> GeoMIMBEVDetectionOutput:
        r"""
        Args:
            pixel_values, camera_intrinsics, camera_to_ego, post_rot, post_tran, bev_augmentation,
            previous_pixel_values, previous_camera_to_ego, zero_previous_frame:
                The cameras of the key frame and of the previous frames; see [`GeoMIMBEVModel.forward`].
            gt_boxes (`torch.FloatTensor` of shape `(batch_size, max_boxes, 9)`, *optional*), gt_labels
            (`torch.LongTensor` of shape `(batch_size, max_boxes)`, *optional*):
                Targets in the augmented frame; labels index `config.class_names`, -1 marks padding.
            depth_targets (`torch.FloatTensor` of shape `(batch_size, num_cameras, h, w)`, *optional*):
                Nearest LiDAR depth per feature pixel (0: none), for `config.depth_loss_weight > 0`.
        """
        if (gt_boxes is None) != (gt_labels is None):
            raise ValueError("gt_boxes and gt_labels are the targets together: pass both or neither")
        bev_outputs = self.bev_model(pixel_values, camera_intrinsics, camera_to_ego, post_rot, post_tran,
                                     bev_augmentation, previous_pixel_values, previous_camera_to_ego,
                                     zero_previous_frame)
        output = GeoMIMBEVDetectionOutput(head_outputs=self.head(bev_outputs.bev_features),
                                          bev_features=bev_outputs.bev_features,
                                          depth_probabilities=bev_outputs.depth_probabilities)
        if gt_boxes is not None:
            self.forward_loss(output, gt_boxes, gt_labels, depth_targets)
        return output

    @torch.no_grad()
    def post_process(self, outputs: GeoMIMBEVDetectionOutput, score_threshold: float | None = None) -> list[dict]:
        """Boxes from the head outputs: per-task top-K decoding, score and centre-range filters, Scale-NMS (rotated or
        circle, per task), tasks merged.

        Returns one dict per sample with `boxes` (K, 9) `(x, y, z, w, l, h, yaw, vx, vy)` in the (augmented) key-ego
        frame, `scores` (K,) and `labels` (K,) indexing `config.class_names`, by descending score.
        """
        return decode_detections(outputs.head_outputs, self.config, score_threshold=score_threshold)


__all__ = ["GeoMIMBEVDetectionOutput", "GeoMIMBEVDetectionPreTrainedModel", "GeoMIMForBEVDetection"]
