"""PyTorch BEV trunk: multi-camera images (and previous frames) -> bird's-eye-view features, the part of BEVDet that
every BEV head of the package (detection today; stereo and occupancy next) stands on.

Ported from GeoMIM's `bevdet/` (a fork of BEVDet dev2.x, HuangJunJie2017/BEVDet): the image side of `BEVDet4D` with
`align_after_view_transfromation=False` (`mmdet3d/models/detectors/bevdet.py`), `FPN_LSS` (`necks/lss_fpn.py`),
`LSSViewTransformer` (`necks/view_transformer.py`, with this package's pure-PyTorch `bev_pool` in place of the CUDA
`bev_pool_v2`) and `CustomResNet` (`backbones/resnet.py`).

Two seams are chosen by the configuration: the view transform (`view_transform_type`, one module per depth net,
`VIEW_TRANSFORMS`) and the BEV encoder (`bev_encoder_type`, `BEV_ENCODERS`, which also builds the per-frame
`pre_process` net of its kind). A new depth net or a 3D BEV encoder is a new entry there, not a change to the trunk.

Frames: `camera_to_ego` takes each camera to the ego frame of the key frame (this package uses the LIDAR_TOP key
frame's ego pose); `bev_augmentation` then moves that frame to the augmented one in which the BEV grid lives.
"""

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoBackbone, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ...geometry import BEVPoolIndex, bev_pool, create_frustum, frustum_to_ego
from .configuration_bev import GeoMIMBEVConfig


@dataclass
class GeoMIMBEVModelOutput(ModelOutput):
    r"""
    Outputs of [`GeoMIMBEVModel`].

    Args:
        bev_features (`torch.FloatTensor` of shape `(batch_size, bev_neck_channels, Y, X)`):
            The BEV encoder's output, a head's input.
        depth_probabilities (`torch.FloatTensor` of shape `(batch_size, num_cameras, depth_bins, h, w)`):
            The key frame's depth distribution per feature pixel (softmax over the bins), for a depth loss.
    """

    bev_features: torch.FloatTensor | None = None
    depth_probabilities: torch.FloatTensor | None = None


@dataclass
class CameraGeometry:
    """Where one frame's feature pixels look, all `(batch_size, num_cameras, ...)`: `camera_intrinsics` (3, 3) of the
    original images, `camera_to_ego` (4, 4) into the key ego, the image augmentation `post_rot` (3, 3) and
    `post_tran` (3,), and the BEV augmentation `(batch_size, 4, 4)` or None. Previous frames share the key frame's
    intrinsics and augmentation; only their `camera_to_ego` is their own."""

    camera_intrinsics: torch.Tensor
    camera_to_ego: torch.Tensor
    post_rot: torch.Tensor
    post_tran: torch.Tensor
    bev_augmentation: torch.Tensor | None


@dataclass
class LiftedFrame:
    """One frame in the BEV: `bev` `(batch_size, lifted_channels, Y, X)` and its depth distribution
    `depth_probabilities` `(batch_size, num_cameras, depth_bins, h, w)`."""

    bev: torch.Tensor
    depth_probabilities: torch.Tensor


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


class GeoMIMLSSViewTransform(nn.Module):
    """Lift-Splat (`view_transform_type="lss"`): one 1x1 conv gives each feature pixel depth logits and context; the
    context, weighted by the softmax over depth, is pooled into the BEV grid at every frustum point's position."""

    def __init__(self, config: GeoMIMBEVConfig):
        super().__init__()
        self.grid = config.grid
        self.depth_net = nn.Conv2d(config.image_neck_channels, self.grid.num_depth_bins + config.context_channels, 1)
        frustum = create_frustum(tuple(config.image_size), config.feature_stride, self.grid)  # (D, h, w, 3)
        self.register_buffer("frustum", frustum, persistent=False)

    def forward(self, image_features: torch.Tensor, geometry: CameraGeometry) -> LiftedFrame:
        """`image_features` (B, N, C, h, w) -> the frame's BEV map (B, Z * context_channels, Y, X) and depth
        probabilities. Depth, context and pooling run in float32, as the original's `force_fp32`."""
        batch, cameras = image_features.shape[:2]
        depth_and_context = self.depth_net(image_features.flatten(0, 1)).unflatten(0, (batch, cameras))
        num_bins = self.grid.num_depth_bins
        depth_probabilities = depth_and_context[:, :, :num_bins].float().softmax(dim=2)  # (B, N, D, h, w)
        context = depth_and_context[:, :, num_bins:].float()  # (B, N, C, h, w)
        with torch.no_grad():
            bev_augmentation = geometry.bev_augmentation
            points = frustum_to_ego(self.frustum.float(), geometry.camera_intrinsics.float(),
                                    geometry.camera_to_ego.float(), geometry.post_rot.float(),
                                    geometry.post_tran.float(),
                                    None if bev_augmentation is None else bev_augmentation.float())
            index = BEVPoolIndex.from_geometry(points, self.grid)
        return LiftedFrame(bev_pool(depth_probabilities, context, index), depth_probabilities)


class GeoMIMBEVEncoder(nn.Module):
    """BEVDet's BEV encoder (`bev_encoder_type="resnet"`) on z-collapsed maps: CustomResNet (stride-2 stages), then
    FPN_LSS fusing the first and last stage and upsampling back to the grid."""

    def __init__(self, config: GeoMIMBEVConfig):
        super().__init__()
        num_stages = len(config.bev_encoder_blocks)
        self.backbone = GeoMIMBEVResNet(config.bev_input_channels, config.bev_encoder_blocks,
                                        config.bev_encoder_channels, [2] * num_stages)
        self.neck = GeoMIMFPNLSS(config.bev_encoder_channels[0] + config.bev_encoder_channels[-1],
                                 config.bev_neck_channels, scale_factor=2 ** (num_stages - 1), extra_upsample=2)

    @staticmethod
    def pre_process_net(config: GeoMIMBEVConfig) -> nn.Module:
        """BEVDet4D's per-frame `pre_process` net of this encoder's kind: one stride-1 CustomResNet stage."""
        channels = config.lifted_channels
        return GeoMIMBEVResNet(channels, [config.pre_process_blocks], [channels], [1])

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        stage_outputs = self.backbone(bev)
        return self.neck(stage_outputs[0], stage_outputs[-1])


VIEW_TRANSFORMS = {"lss": GeoMIMLSSViewTransform}
BEV_ENCODERS = {"resnet": GeoMIMBEVEncoder}


class GeoMIMBEVPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading for the trunk: transformers' defaults (normal weights, BatchNorm at identity);
    the encoder initialises itself (it is a `PreTrainedModel` of its own)."""

    config: GeoMIMBEVConfig
    base_model_prefix = "bev_model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, GeoMIMLSSViewTransform):
            # Non-persistent, so rebuilt on every load.
            init.copy_(module.frustum, create_frustum(tuple(self.config.image_size), self.config.feature_stride,
                                                      module.grid))


class GeoMIMBEVModel(GeoMIMBEVPreTrainedModel):
    """The BEV trunk: encoder -> image neck -> view transform -> temporal fusion -> BEV encoder, from the cameras of
    the key frame (and of BEVDet4D's previous key frame) to BEV features.

    Takes the batches of [`~geomim_hf.data.NuScenesCollator`] through [`~geomim_hf.models.inputs.model_inputs`].
    """

    def __init__(self, config: GeoMIMBEVConfig):
        super().__init__(config)
        self.encoder = AutoBackbone.from_config(config.encoder_config)
        self.image_neck = GeoMIMFPNLSS(sum(self.encoder.channels), config.image_neck_channels, scale_factor=2,
                                       extra_upsample=None)
        self.view_transform = VIEW_TRANSFORMS[config.view_transform_type](config)
        bev_encoder_class = BEV_ENCODERS[config.bev_encoder_type]
        self.pre_process = bev_encoder_class.pre_process_net(config) if config.num_previous_frames else None
        self.bev_encoder = bev_encoder_class(config)
        self.post_init()

    def check_inputs(self, pixel_values: torch.Tensor, geometry: CameraGeometry,
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
        expected = {"camera_intrinsics": (geometry.camera_intrinsics, (batch, cameras, 3, 3)),
                    "camera_to_ego": (geometry.camera_to_ego, (batch, cameras, 4, 4)),
                    "post_rot": (geometry.post_rot, (batch, cameras, 3, 3)),
                    "post_tran": (geometry.post_tran, (batch, cameras, 3))}
        if geometry.bev_augmentation is not None:
            expected["bev_augmentation"] = (geometry.bev_augmentation, (batch, 4, 4))
        if (previous_pixel_values is None) != (previous_camera_to_ego is None):
            raise ValueError("previous_pixel_values and previous_camera_to_ego describe the previous frames: pass "
                             "both or neither")
        if previous_pixel_values is not None:
            if not self.config.num_previous_frames:
                raise ValueError("this single-frame BEVDet model takes no previous frame (num_previous_frames = 0)")
            frames = self.config.num_previous_frames
            expected["previous_pixel_values"] = (previous_pixel_values, (batch, frames, *pixel_values.shape[1:]))
            expected["previous_camera_to_ego"] = (previous_camera_to_ego, (batch, frames, cameras, 4, 4))
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name} must have shape {shape} to match pixel_values {tuple(pixel_values.shape)} "
                                 f"(batch_size, num_cameras = {batch}, {cameras}), got {tuple(tensor.shape)}")

    def forward_frame(self, pixel_values: torch.Tensor, geometry: CameraGeometry) -> LiftedFrame:
        """One frame's cameras -> its BEV map (after `pre_process` for BEVDet4D) and depth probabilities."""
        batch, cameras = pixel_values.shape[:2]
        stride16, stride32 = self.encoder(pixel_values.flatten(0, 1)).feature_maps  # (B * N, C_i, h_i, w_i)
        stride = self.config.feature_stride
        lifted_size = (pixel_values.shape[-2] // stride, pixel_values.shape[-1] // stride)
        if tuple(stride16.shape[-2:]) != lifted_size:
            raise ValueError(f"the encoder's first map is {tuple(stride16.shape[-2:])}, the trunk lifts the stride-"
                             f"{stride} map {lifted_size}: encoder_config.out_features must name the maps at strides "
                             f"{stride} and {2 * stride}")
        image_features = self.image_neck(stride16, stride32).unflatten(0, (batch, cameras))  # (B, N, C, h, w)
        frame = self.view_transform(image_features, geometry)
        bev = frame.bev.to(image_features.dtype)
        if self.pre_process is not None:
            bev = self.pre_process(bev)[0]
        return dataclasses.replace(frame, bev=bev)

    def forward_temporal(self, key: LiftedFrame, geometry: CameraGeometry, previous_pixel_values: torch.Tensor | None,
                         previous_camera_to_ego: torch.Tensor | None, zero_previous_frame: bool) -> torch.Tensor:
        """BEVDet4D's fusion: [key, previous frames] concatenated on channels, each previous frame lifted with its own
        cameras -> key ego and no gradient (it only supplies features, as in BEVDet4D)."""
        if not self.config.num_previous_frames:
            return key.bev
        if zero_previous_frame:
            previous = [torch.zeros_like(key.bev)] * self.config.num_previous_frames
        elif previous_pixel_values is None:
            # The key frame as its own previous frame, as BEVDet does at the start of a scene: the same computation.
            previous = [key.bev.detach()] * self.config.num_previous_frames
        else:
            previous = []
            with torch.no_grad():
                for frame_pixels, frame_cameras in zip(previous_pixel_values.unbind(1),
                                                       previous_camera_to_ego.unbind(1)):
                    frame_geometry = dataclasses.replace(geometry, camera_to_ego=frame_cameras)
                    previous.append(self.forward_frame(frame_pixels, frame_geometry).bev)
        return torch.cat([key.bev, *previous], dim=1)

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
    ) -> GeoMIMBEVModelOutput:
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
            previous_pixel_values (`torch.FloatTensor` of shape `(batch_size, [num_previous_frames,] num_cameras, 3,
            height, width)`, *optional*), previous_camera_to_ego (`torch.FloatTensor` of shape `(batch_size,
            [num_previous_frames,] num_cameras, 4, 4)`, *optional*):
                BEVDet4D's previous key frames, newest first: their images (with the key frame's intrinsics and
                augmentation) and their cameras -> the *current* key ego. The frame axis may be left out for one
                previous frame. Without them the key frame is its own previous frame, as BEVDet does at the start of
                a scene.
            zero_previous_frame (`bool`, *optional*, defaults to `False`):
                Replace the previous frames' BEV by zeros (BEVDet4D's first training epochs).
        """
        geometry = CameraGeometry(camera_intrinsics, camera_to_ego, post_rot, post_tran, bev_augmentation)
        if previous_pixel_values is not None and previous_pixel_values.ndim == pixel_values.ndim:
            previous_pixel_values = previous_pixel_values.unsqueeze(1)  # one previous frame, without its frame axis
        if previous_camera_to_ego is not None and previous_camera_to_ego.ndim == camera_to_ego.ndim:
            previous_camera_to_ego = previous_camera_to_ego.unsqueeze(1)
        self.check_inputs(pixel_values, geometry, previous_pixel_values, previous_camera_to_ego)

        key = self.forward_frame(pixel_values, geometry)
        bev = self.forward_temporal(key, geometry, previous_pixel_values, previous_camera_to_ego, zero_previous_frame)
        return GeoMIMBEVModelOutput(bev_features=self.bev_encoder(bev), depth_probabilities=key.depth_probabilities)


__all__ = ["GeoMIMBEVModel", "GeoMIMBEVModelOutput", "GeoMIMBEVPreTrainedModel"]
