"""PyTorch BEVDet / BEVDet4D on the GeoMIM Swin encoder: the detector that GeoMIM finetunes for nuScenes 3D detection.

Ported from GeoMIM's `bevdet/` (a fork of BEVDet dev2.x, HuangJunJie2017/BEVDet): `BEVDet4D` with
`align_after_view_transfromation=False` (`mmdet3d/models/detectors/bevdet.py`), `FPN_LSS` (`necks/lss_fpn.py`),
`LSSViewTransformer` (`necks/view_transformer.py`, with this package's pure-PyTorch `bev_pool` in place of the CUDA
`bev_pool_v2`), `CustomResNet` (`backbones/resnet.py`) and mmdet3d's `CenterHead` (`dense_heads/centerpoint_head.py`).

Frames: `camera_to_ego` takes each camera to the ego frame of the key frame (this package uses the LIDAR_TOP key
frame's ego pose); `bev_augmentation` then moves that frame to the augmented one in which the BEV grid and the boxes
live. Boxes are `(x, y, z, w, l, h, yaw, vx, vy)`: the gravity centre, nuScenes' size order, yaw of the length axis
counter-clockwise from +x, velocity in m/s. The head regresses sizes as log (l, w, h), the channel order of the
released checkpoints; `centerpoint.py` does the one swap.
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.utils import ModelOutput

from ...geometry import BEVPoolIndex, bev_pool, create_frustum, depth_bin_targets, depth_loss, frustum_to_ego
from ..geomim.modeling_geomim import GeoMIMModel, GeoMIMPreTrainedModel
from .centerpoint import HEAD_OUTPUTS, detection_loss
from .configuration_bevdet import GeoMIMBEVDetectionConfig
from .post_processing import decode_detections


@dataclass
class GeoMIMBEVDetectionOutput(ModelOutput):
    r"""
    Outputs of [`GeoMIMForBEVDetection`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned with `gt_boxes` and `gt_labels`):
            `loss_heatmap + loss_bbox (+ loss_depth)`.
        loss_heatmap, loss_bbox, loss_depth (`torch.FloatTensor` of shape `()`, *optional*):
            The Gaussian focal loss of the heatmaps and the L1 box loss, summed over tasks, and the depth loss (with
            `config.depth_loss_weight > 0` and `depth_targets`).
        head_outputs (`tuple(dict[str, torch.FloatTensor])`):
            Per task, the raw head maps `(batch_size, channels, Y, X)` before any activation: `reg` (2: cell offset
            x, y), `height` (1: centre z), `dim` (3: log l, w, h), `rot` (2: sin, cos yaw), `vel` (2: vx, vy) and
            `heatmap` (logits of the task's classes).
        bev_features (`torch.FloatTensor` of shape `(batch_size, bev_neck_channels, Y, X)`):
            Output of the BEV encoder, the head's input.
        depth_probabilities (`torch.FloatTensor` of shape `(batch_size, num_cameras, depth_bins, h, w)`):
            The key frame's depth distribution per feature pixel.
    """

    loss: torch.FloatTensor | None = None
    loss_heatmap: torch.FloatTensor | None = None
    loss_bbox: torch.FloatTensor | None = None
    loss_depth: torch.FloatTensor | None = None
    head_outputs: tuple[dict[str, torch.FloatTensor], ...] | None = None
    bev_features: torch.FloatTensor | None = None
    depth_probabilities: torch.FloatTensor | None = None


# What NuScenesCollator batches hold besides the model's inputs, so that `model(**batch)` works; any other keyword is
# an error rather than silently ignored (a misspelt input would otherwise change nothing).
COLLATOR_KEYS_NOT_USED = frozenset({"camera_vector", "points", "points_mask", "sample_tokens", "ego_to_global",
                                    "previous_valid"})


class ConvNormActivation(nn.Sequential):
    """3x3 (or `kernel_size`) convolution without bias, BatchNorm, ReLU: mmcv's `ConvModule` as BEVDet uses it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU(inplace=True)


class GeoMIMBEVBasicBlock(nn.Module):
    """mmdet's ResNet `BasicBlock` (two 3x3 conv + BN, residual, ReLU). The first block of a CustomResNet stage always
    projects its shortcut with a biased 3x3 convolution at the stage's stride, even at stride 1."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, project_shortcut: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1) if project_shortcut else None
        self.activation = nn.ReLU(inplace=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shortcut = hidden_states if self.shortcut is None else self.shortcut(hidden_states)
        hidden_states = self.activation(self.norm1(self.conv1(hidden_states)))
        hidden_states = self.norm2(self.conv2(hidden_states))
        return self.activation(hidden_states + shortcut)


class GeoMIMBEVResNet(nn.Module):
    """BEVDet's `CustomResNet`: stages of basic blocks, each opened by a projecting block at the stage's stride.
    Returns every stage's output."""

    def __init__(self, in_channels: int, blocks: list[int], channels: list[int], strides: list[int]):
        super().__init__()
        self.stages = nn.ModuleList()
        for num_blocks, out_channels, stride in zip(blocks, channels, strides):
            stage = [GeoMIMBEVBasicBlock(in_channels, out_channels, stride, project_shortcut=True)]
            stage += [GeoMIMBEVBasicBlock(out_channels, out_channels) for _ in range(num_blocks - 1)]
            self.stages.append(nn.Sequential(*stage))
            in_channels = out_channels

    def forward(self, hidden_states: torch.Tensor) -> list[torch.Tensor]:
        stage_outputs = []
        for stage in self.stages:
            hidden_states = stage(hidden_states)
            stage_outputs.append(hidden_states)
        return stage_outputs


class GeoMIMFPNLSS(nn.Module):
    """BEVDet's `FPN_LSS`: the coarse map is upsampled (bilinear, align_corners) onto the fine one, concatenated after
    it, and fused by two conv-BN-ReLU; optionally upsampled once more (`extra_upsample`) and projected by a 3x3
    conv-BN-ReLU and a biased 1x1 conv. With `extra_upsample` the fusion runs at twice the output width."""

    def __init__(self, in_channels: int, out_channels: int, scale_factor: int, extra_upsample: int | None):
        super().__init__()
        self.scale_factor = scale_factor
        self.extra_upsample = extra_upsample
        fused_channels = out_channels * (2 if extra_upsample else 1)
        self.fuse1 = ConvNormActivation(in_channels, fused_channels)
        self.fuse2 = ConvNormActivation(fused_channels, fused_channels)
        if extra_upsample:
            self.up_fuse = ConvNormActivation(fused_channels, out_channels)
            self.up_projection = nn.Conv2d(out_channels, out_channels, kernel_size=1)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        coarse = F.interpolate(coarse, scale_factor=self.scale_factor, mode="bilinear", align_corners=True)
        hidden_states = self.fuse2(self.fuse1(torch.cat([fine, coarse], dim=1)))
        if self.extra_upsample:
            hidden_states = F.interpolate(hidden_states, scale_factor=self.extra_upsample, mode="bilinear",
                                          align_corners=True)
            hidden_states = self.up_projection(self.up_fuse(hidden_states))
        return hidden_states


class GeoMIMLSSViewTransformer(nn.Module):
    """Lift-Splat: one 1x1 conv gives each feature pixel depth logits and context; the context, weighted by the
    softmax over depth, is pooled into the BEV grid at every frustum point's position."""

    def __init__(self, config: GeoMIMBEVDetectionConfig):
        super().__init__()
        self.grid = config.grid
        self.context_channels = config.context_channels
        self.depth_net = nn.Conv2d(config.image_neck_channels, self.grid.num_depth_bins + config.context_channels, 1)
        frustum = create_frustum(tuple(config.image_size), config.feature_stride, self.grid)  # (D, h, w, 3)
        self.register_buffer("frustum", frustum, persistent=False)

    def forward(
        self,
        image_features: torch.Tensor,
        camera_intrinsics: torch.Tensor,
        camera_to_ego: torch.Tensor,
        post_rot: torch.Tensor,
        post_tran: torch.Tensor,
        bev_augmentation: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`image_features` (B, N, C, h, w) -> BEV map (B, Z * context_channels, Y, X) and depth probabilities
        (B, N, D, h, w). Pooling runs in float32, as the original's `force_fp32`."""
        batch, cameras = image_features.shape[:2]
        depth_and_context = self.depth_net(image_features.flatten(0, 1)).unflatten(0, (batch, cameras))
        num_bins = self.grid.num_depth_bins
        depth_probabilities = depth_and_context[:, :, :num_bins].float().softmax(dim=2)  # (B, N, D, h, w)
        context = depth_and_context[:, :, num_bins:].float()  # (B, N, C, h, w)
        with torch.no_grad():
            geometry = frustum_to_ego(self.frustum, camera_intrinsics.float(), camera_to_ego.float(),
                                      post_rot.float(), post_tran.float(),
                                      None if bev_augmentation is None else bev_augmentation.float())
            index = BEVPoolIndex.from_geometry(geometry, self.grid)
        return bev_pool(depth_probabilities, context, index), depth_probabilities


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
        self.shared_conv = ConvNormActivation(config.bev_neck_channels, config.head_channels)
        self.task_heads = nn.ModuleList(GeoMIMCenterPointTaskHead(config, len(task)) for task in config.tasks)

    def forward(self, bev_features: torch.Tensor) -> tuple[dict[str, torch.Tensor], ...]:
        hidden_states = self.shared_conv(bev_features)
        return tuple(task_head(hidden_states) for task_head in self.task_heads)


class GeoMIMBEVDetectionPreTrainedModel(GeoMIMPreTrainedModel):
    """Weight initialisation and loading for the detector: the encoder's rules, plus the head's prior bias."""

    config: GeoMIMBEVDetectionConfig

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # transformers' defaults (normal weights, BatchNorm at identity) plus the encoder's own tensors.
        super()._init_weights(module)
        if isinstance(module, GeoMIMHeatmapClassifier):
            init.constant_(module.bias, self.config.heatmap_init_bias)
        elif isinstance(module, GeoMIMLSSViewTransformer):
            # Non-persistent, so rebuilt on every load.
            init.copy_(module.frustum, create_frustum(tuple(self.config.image_size), self.config.feature_stride,
                                                      module.grid))


class GeoMIMForBEVDetection(GeoMIMBEVDetectionPreTrainedModel):
    """BEVDet / BEVDet4D on the GeoMIM Swin encoder.

    Takes the batches of [`~geomim_hf.data.NuScenesCollator`] as keyword arguments; with `gt_boxes` and `gt_labels`
    it returns the training loss too. [`post_process`] turns the outputs into boxes.
    """

    def __init__(self, config: GeoMIMBEVDetectionConfig):
        super().__init__(config)
        encoder_config = config.encoder_config
        self.geomim = GeoMIMModel(encoder_config)
        encoder_channels = [self.geomim.num_features[encoder_config.stage_names.index(stage)]
                            for stage in encoder_config.out_features]
        self.image_neck = GeoMIMFPNLSS(sum(encoder_channels), config.image_neck_channels, scale_factor=2,
                                       extra_upsample=None)
        self.view_transformer = GeoMIMLSSViewTransformer(config)
        lifted_channels = config.context_channels * config.grid.num_z
        self.pre_process = (
            GeoMIMBEVResNet(lifted_channels, [config.pre_process_blocks], [lifted_channels], [1])
            if config.num_previous_frames else None
        )
        num_stages = len(config.bev_encoder_blocks)
        self.bev_encoder = GeoMIMBEVResNet(config.bev_input_channels, config.bev_encoder_blocks,
                                           config.bev_encoder_channels, [2] * num_stages)
        self.bev_neck = GeoMIMFPNLSS(config.bev_encoder_channels[0] + config.bev_encoder_channels[-1],
                                     config.bev_neck_channels, scale_factor=2 ** (num_stages - 1), extra_upsample=2)
        self.head = GeoMIMCenterPointHead(config)
        self.post_init()

    def check_inputs(self, pixel_values: torch.Tensor, camera_intrinsics: torch.Tensor, camera_to_ego: torch.Tensor,
                     post_rot: torch.Tensor, post_tran: torch.Tensor, bev_augmentation: torch.Tensor | None,
                     previous_pixel_values: torch.Tensor | None, previous_camera_to_ego: torch.Tensor | None) -> None:
        """Clear errors for inputs the model cannot take, before any compute."""
        height, width = self.config.image_size
        if pixel_values.ndim != 5 or pixel_values.shape[2] != 3:
            raise ValueError(f"pixel_values must be (batch_size, num_cameras, 3, height, width), got "
                             f"{tuple(pixel_values.shape)}")
        batch, cameras = pixel_values.shape[:2]
        if tuple(pixel_values.shape[-2:]) != (height, width):
            raise ValueError(f"pixel_values are {tuple(pixel_values.shape[-2:])} images but the model's frustum is "
                             f"built for image_size {(height, width)}; resize them with the model's image processor")
        expected = {"camera_intrinsics": (camera_intrinsics, (batch, cameras, 3, 3)),
                    "camera_to_ego": (camera_to_ego, (batch, cameras, 4, 4)),
                    "post_rot": (post_rot, (batch, cameras, 3, 3)), "post_tran": (post_tran, (batch, cameras, 3))}
        if bev_augmentation is not None:
            expected["bev_augmentation"] = (bev_augmentation, (batch, 4, 4))
        if (previous_pixel_values is None) != (previous_camera_to_ego is None):
            raise ValueError("previous_pixel_values and previous_camera_to_ego describe one previous frame: pass both "
                             "or neither")
        if previous_pixel_values is not None:
            if not self.config.num_previous_frames:
                raise ValueError("this single-frame BEVDet model takes no previous frame (num_previous_frames = 0)")
            expected["previous_pixel_values"] = (previous_pixel_values, tuple(pixel_values.shape))
            expected["previous_camera_to_ego"] = (previous_camera_to_ego, (batch, cameras, 4, 4))
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name} must have shape {shape} to match pixel_values {tuple(pixel_values.shape)} "
                                 f"(batch_size, num_cameras = {batch}, {cameras}), got {tuple(tensor.shape)}")

    def forward_frame(self, pixel_values: torch.Tensor, camera_intrinsics: torch.Tensor, camera_to_ego: torch.Tensor,
                      post_rot: torch.Tensor, post_tran: torch.Tensor,
                      bev_augmentation: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One frame's cameras -> its BEV map (after `pre_process` for BEVDet4D) and depth probabilities."""
        stride16, stride32 = self.geomim(pixel_values).feature_maps  # (B, N, C_i, h_i, w_i)
        image_features = self.image_neck(stride16.flatten(0, 1), stride32.flatten(0, 1))  # (B * N, C, h, w)
        bev, depth_probabilities = self.view_transformer(image_features.unflatten(0, stride16.shape[:2]),
                                                         camera_intrinsics, camera_to_ego, post_rot, post_tran,
                                                         bev_augmentation)
        bev = bev.to(image_features.dtype)
        if self.pre_process is not None:
            bev = self.pre_process(bev)[0]
        return bev, depth_probabilities

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
        **kwargs,
    ) -> GeoMIMBEVDetectionOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_cameras, 3, height, width)`):
                Normalised, augmented images at `config.image_size`.
            camera_intrinsics (`torch.FloatTensor` of shape `(batch_size, num_cameras, 3, 3)`):
                Intrinsics of the original images.
            camera_to_ego (`torch.FloatTensor` of shape `(batch_size, num_cameras, 4, 4)`):
                Camera -> key-frame ego.
            post_rot (`torch.FloatTensor` of shape `(batch_size, num_cameras, 3, 3)`), post_tran
            (`torch.FloatTensor` of shape `(batch_size, num_cameras, 3)`):
                Image augmentation, `p_aug = post_rot @ p + post_tran`.
            bev_augmentation (`torch.FloatTensor` of shape `(batch_size, 4, 4)`, *optional*):
                BEV augmentation (key ego -> augmented frame of the grid and the boxes).
            previous_pixel_values (`torch.FloatTensor`, *optional*), previous_camera_to_ego (`torch.FloatTensor`,
            *optional*):
                BEVDet4D's previous key frame: its images (with the key frame's intrinsics and augmentation) and its
                cameras -> the *current* key ego. Without them the key frame is its own previous frame, as BEVDet
                does at the start of a scene.
            zero_previous_frame (`bool`, *optional*, defaults to `False`):
                Replace the previous frame's BEV by zeros (BEVDet4D's first training epochs).
            gt_boxes (`torch.FloatTensor` of shape `(batch_size, max_boxes, 9)`, *optional*), gt_labels
            (`torch.LongTensor` of shape `(batch_size, max_boxes)`, *optional*):
                Targets in the augmented frame; labels index `config.class_names`, -1 marks padding.
            depth_targets (`torch.FloatTensor` of shape `(batch_size, num_cameras, h, w)`, *optional*):
                Nearest LiDAR depth per feature pixel (0: none), for `config.depth_loss_weight > 0`.
        """
        unexpected = sorted(set(kwargs) - COLLATOR_KEYS_NOT_USED)
        if unexpected:
            raise TypeError(f"GeoMIMForBEVDetection.forward() got unexpected inputs {unexpected}")
        self.check_inputs(pixel_values, camera_intrinsics, camera_to_ego, post_rot, post_tran, bev_augmentation,
                          previous_pixel_values, previous_camera_to_ego)
        frame_geometry = (camera_intrinsics, camera_to_ego, post_rot, post_tran, bev_augmentation)
        bev, depth_probabilities = self.forward_frame(pixel_values, *frame_geometry)
        if self.config.num_previous_frames:
            if zero_previous_frame:
                previous_bev = torch.zeros_like(bev)
            elif previous_pixel_values is None:
                previous_bev = bev.detach()  # the key frame as its own previous frame: the same computation
            else:
                # The previous frame only supplies features: no gradient, as in BEVDet4D.
                with torch.no_grad():
                    previous_bev, _ = self.forward_frame(previous_pixel_values, camera_intrinsics,
                                                         previous_camera_to_ego, post_rot, post_tran, bev_augmentation)
            bev = torch.cat([bev, previous_bev], dim=1)

        stage_outputs = self.bev_encoder(bev)
        bev_features = self.bev_neck(stage_outputs[0], stage_outputs[-1])
        head_outputs = self.head(bev_features)

        output = GeoMIMBEVDetectionOutput(head_outputs=head_outputs, bev_features=bev_features,
                                          depth_probabilities=depth_probabilities)
        if gt_boxes is not None and gt_labels is not None:
            losses = detection_loss(head_outputs, gt_boxes, gt_labels, self.config)
            output.loss_heatmap, output.loss_bbox = losses["heatmap"], losses["bbox"]
            output.loss = output.loss_heatmap + output.loss_bbox
            if self.config.depth_loss_weight > 0 and depth_targets is not None:
                output.loss_depth = depth_loss(depth_probabilities, depth_bin_targets(depth_targets, self.config.grid),
                                               weight=self.config.depth_loss_weight)
                output.loss = output.loss + output.loss_depth
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
