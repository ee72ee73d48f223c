"""Random BEVDet / BEVDet4D detector checkpoints in the ORIGINAL key layout, and a matching random six-camera batch.

Test helper for the parity tests of issue 8 (with `bevdet_reference.py`). `checkpoint_shapes(spec)` lists every tensor
a released `bevdet-swinb-4d-256x704-cbgs(-geomim)` file holds for a given architecture (see `bevdet_reference.py` for
the modules behind each prefix), without allocating anything; `random_state_dict(spec)` fills them for SMALL specs
(the tests run in seconds on CPU); `save_checkpoint` writes them as the released files are written: `{'state_dict'}`,
or the EMA hook's `{'epoch', 'state_dict', 'updates'}`.

Values are chosen so that every tensor matters: weights scaled by 1/sqrt(fan_in), LayerNorm / BatchNorm affine
parameters away from (1, 0), BatchNorm running statistics away from (0, 1) (the reference runs BN in eval mode, so the
running statistics are what BN applies), `num_batches_tracked` as int64 counters, mmdet's `relative_position_index`
buffers (int64, they are in the released files), and the heatmap bias near SeparateHead's initial -2.19.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from mmdet_swin_reference import mmdet_relative_position_index

CLASS_NAMES = (
    "car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle", "pedestrian",
    "traffic_cone",
)
ONE_TASK = (CLASS_NAMES,)  # the released 4D configs
SIX_TASKS = (  # the stereo configs' CenterPoint split
    ("car",), ("truck", "construction_vehicle"), ("bus", "trailer"), ("barrier",), ("motorcycle", "bicycle"),
    ("pedestrian", "traffic_cone"),
)
HEAD_CHANNELS = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}  # `common_heads` of the configs
HEATMAP_INIT_BIAS = -2.19


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
    """Architecture of a BEVDet(4D) detector; the defaults are a SMALL GeoMIM-style 4D detector with one task.

    Widths deliberately differ from one another so that a converter mixing two of them up fails on shapes.
    """

    embed_dim: int = 16  # Swin embed dims (128 for Swin-B)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    heads: tuple[int, ...] = (1, 2, 2, 4)
    windows: tuple[int, ...] = (4, 4, 4, 2)
    absolute_position: bool = True  # GeoMIM (SwinTransformerBEVFT); False: the baseline SwinTransformerOri
    pretrain_img_size: int = 224  # absolute_pos_embed is (1, C, 224 / 4, 224 / 4)
    patch_size: int = 4
    out_indices: tuple[int, ...] = (2, 3)
    neck_channels: int = 24  # img_neck out = view transformer in (256)
    depth_bins: int = 59  # len(arange(*depth)) of the grid config
    bev_channels: int = 8  # numC_Trans (80)
    bev_neck_channels: int = 20  # img_bev_encoder_neck out = head in (256)
    share_conv_channels: int = 12  # CenterHead share_conv_channel (64)
    head_conv_channels: int = 10  # SeparateHead head_conv (64, its default)
    tasks: tuple[tuple[str, ...], ...] = ONE_TASK
    temporal: bool = True  # BEVDet4D with one previous frame and pre_process_net; False: single-frame BEVDet

    @property
    def shifted_windows(self) -> bool:
        """The released pairing: GeoMIM (absolute PE) never shifts, the ImageNet baseline (no absolute PE) does."""
        return not self.absolute_position

    @property
    def frames(self) -> int:
        return 2 if self.temporal else 1


GEOMIM_SWINB_4D = DetectorSpec(
    embed_dim=128, depths=(2, 2, 18, 2), heads=(4, 8, 16, 32), windows=(16, 16, 16, 8), neck_channels=256,
    bev_channels=80, bev_neck_channels=256, share_conv_channels=64, head_conv_channels=64,
)
BASELINE_SWINB_4D = dataclasses.replace(GEOMIM_SWINB_4D, absolute_position=False)


def _batch_norm(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}weight": (channels,), f"{prefix}bias": (channels,), f"{prefix}running_mean": (channels,),
        f"{prefix}running_var": (channels,), f"{prefix}num_batches_tracked": (),
    }


def _layer_norm(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}weight": (channels,), f"{prefix}bias": (channels,)}


def _linear(prefix: str, out_channels: int, in_channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}weight": (out_channels, in_channels), f"{prefix}bias": (out_channels,)}


def _swin_shapes(spec: DetectorSpec) -> dict[str, tuple[int, ...]]:
    p = "img_backbone."
    shapes: dict[str, tuple[int, ...]] = {}
    if spec.absolute_position:
        grid = spec.pretrain_img_size // spec.patch_size
        shapes[f"{p}absolute_pos_embed"] = (1, spec.embed_dim, grid, grid)
    shapes[f"{p}patch_embed.projection.weight"] = (spec.embed_dim, 3, spec.patch_size, spec.patch_size)
    shapes[f"{p}patch_embed.projection.bias"] = (spec.embed_dim,)
    shapes |= _layer_norm(f"{p}patch_embed.norm.", spec.embed_dim)
    for stage, (depth, heads, window) in enumerate(zip(spec.depths, spec.heads, spec.windows, strict=True)):
        dim = spec.embed_dim * 2**stage
        for block in range(depth):
            b = f"{p}stages.{stage}.blocks.{block}."
            shapes |= _layer_norm(f"{b}norm1.", dim)
            shapes[f"{b}attn.w_msa.relative_position_bias_table"] = ((2 * window - 1) ** 2, heads)
            shapes[f"{b}attn.w_msa.relative_position_index"] = (window**2, window**2)
            shapes |= _linear(f"{b}attn.w_msa.qkv.", 3 * dim, dim)
            shapes |= _linear(f"{b}attn.w_msa.proj.", dim, dim)
            shapes |= _layer_norm(f"{b}norm2.", dim)
            shapes |= _linear(f"{b}ffn.layers.0.0.", 4 * dim, dim)
            shapes |= _linear(f"{b}ffn.layers.1.", dim, 4 * dim)
        if stage < len(spec.depths) - 1:
            shapes |= _layer_norm(f"{p}stages.{stage}.downsample.norm.", 4 * dim)
            shapes[f"{p}stages.{stage}.downsample.reduction.weight"] = (2 * dim, 4 * dim)
    for index in spec.out_indices:
        shapes |= _layer_norm(f"{p}norm{index}.", spec.embed_dim * 2**index)
    return shapes


def _fpn_lss_shapes(prefix: str, in_channels: int, out_channels: int, extra_upsample: bool) -> dict:
    """FPN_LSS: `conv` (3x3 no bias, BN, ReLU, 3x3 no bias, BN, ReLU) at 2x the output width when `up2` follows."""
    middle = 2 * out_channels if extra_upsample else out_channels
    shapes = {f"{prefix}conv.0.weight": (middle, in_channels, 3, 3)}
    shapes |= _batch_norm(f"{prefix}conv.1.", middle)
    shapes[f"{prefix}conv.3.weight"] = (middle, middle, 3, 3)
    shapes |= _batch_norm(f"{prefix}conv.4.", middle)
    if extra_upsample:
        shapes[f"{prefix}up2.1.weight"] = (out_channels, middle, 3, 3)
        shapes |= _batch_norm(f"{prefix}up2.2.", out_channels)
        shapes[f"{prefix}up2.4.weight"] = (out_channels, out_channels, 1, 1)
        shapes[f"{prefix}up2.4.bias"] = (out_channels,)
    return shapes


def _custom_resnet_shapes(prefix: str, in_channels: int, channels: tuple[int, ...], blocks: int = 2) -> dict:
    """CustomResNet of mmdet BasicBlocks; the first block of every layer has a 3x3 `downsample` conv WITH bias, even
    at stride 1 and equal widths (pre_process_net)."""
    shapes: dict[str, tuple[int, ...]] = {}
    current = in_channels
    for layer, width in enumerate(channels):
        for block in range(blocks):
            b = f"{prefix}layers.{layer}.{block}."
            shapes[f"{b}conv1.weight"] = (width, current, 3, 3)
            shapes |= _batch_norm(f"{b}bn1.", width)
            shapes[f"{b}conv2.weight"] = (width, width, 3, 3)
            shapes |= _batch_norm(f"{b}bn2.", width)
            if block == 0:
                shapes[f"{b}downsample.weight"] = (width, current, 3, 3)
                shapes[f"{b}downsample.bias"] = (width,)
            current = width
    return shapes


def _center_head_shapes(spec: DetectorSpec) -> dict[str, tuple[int, ...]]:
    p = "pts_bbox_head."
    shapes = {f"{p}shared_conv.conv.weight": (spec.share_conv_channels, spec.bev_neck_channels, 3, 3)}
    shapes |= _batch_norm(f"{p}shared_conv.bn.", spec.share_conv_channels)
    for task, names in enumerate(spec.tasks):
        for head, channels in (HEAD_CHANNELS | {"heatmap": len(names)}).items():
            h = f"{p}task_heads.{task}.{head}."
            shapes[f"{h}0.conv.weight"] = (spec.head_conv_channels, spec.share_conv_channels, 3, 3)
            shapes |= _batch_norm(f"{h}0.bn.", spec.head_conv_channels)
            shapes[f"{h}1.weight"] = (channels, spec.head_conv_channels, 3, 3)
            shapes[f"{h}1.bias"] = (channels,)
    return shapes


def checkpoint_shapes(spec: DetectorSpec) -> dict[str, tuple[int, ...]]:
    """Every key of the detector's state dict with its shape, in data-flow order (not necessarily the file's)."""
    c = spec.bev_channels
    stage_channels = [spec.embed_dim * 2**index for index in spec.out_indices]
    shapes = _swin_shapes(spec)
    shapes |= _fpn_lss_shapes("img_neck.", sum(stage_channels), spec.neck_channels, extra_upsample=False)
    shapes["img_view_transformer.depth_net.weight"] = (spec.depth_bins + c, spec.neck_channels, 1, 1)
    shapes["img_view_transformer.depth_net.bias"] = (spec.depth_bins + c,)
    if spec.temporal:
        shapes |= _custom_resnet_shapes("pre_process_net.", c, (c,))
    shapes |= _custom_resnet_shapes("img_bev_encoder_backbone.", c * spec.frames, (2 * c, 4 * c, 8 * c))
    shapes |= _fpn_lss_shapes("img_bev_encoder_neck.", 8 * c + 2 * c, spec.bev_neck_channels, extra_upsample=True)
    shapes |= _center_head_shapes(spec)
    return shapes


def _random_value(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    def normal(scale: float) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * scale

    if key.endswith("relative_position_index"):
        return mmdet_relative_position_index(math.isqrt(shape[0]))
    if key.endswith("num_batches_tracked"):
        return torch.randint(1, 100_000, shape, generator=generator, dtype=torch.int64)
    if key.endswith("running_mean"):
        return normal(0.2)
    if key.endswith("running_var"):
        return 0.5 + 1.5 * torch.rand(shape, generator=generator)
    if key.endswith("relative_position_bias_table") or key.endswith("absolute_pos_embed"):
        return normal(0.3)
    if ".heatmap.1.bias" in key:
        return HEATMAP_INIT_BIAS + normal(0.2)
    if len(shape) == 1:  # norm affine parameters and layer biases
        return (1.0 if key.endswith("weight") else 0.0) + normal(0.1)
    return normal(math.sqrt(2.0 / math.prod(shape[1:])))  # He scale: activations neither vanish nor explode


def random_state_dict(spec: DetectorSpec = DetectorSpec(), seed: int = 0) -> dict[str, torch.Tensor]:
    """A random detector state dict in the original key layout (fp32 tensors, int64 counters and index buffers)."""
    generator = torch.Generator().manual_seed(seed)
    return {key: _random_value(key, shape, generator) for key, shape in checkpoint_shapes(spec).items()}


def save_checkpoint(state_dict: dict[str, torch.Tensor], path: str | Path, layout: str = "released") -> Path:
    """Writes `state_dict` as the released files are written: `released` -> `{'state_dict'}`, `ema` -> the EMA hook's
    `{'epoch', 'state_dict', 'updates'}`. Refuses to overwrite an existing file."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; not overwriting it")
    if layout == "released":
        payload = {"state_dict": state_dict}
    elif layout == "ema":
        payload = {"epoch": 20, "state_dict": state_dict, "updates": 10560 + 20 * 1759}
    else:
        raise ValueError(f"unknown checkpoint layout {layout!r}; expected 'released' or 'ema'")
    torch.save(payload, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a released-style detector file (either layout), loaded with `weights_only=True`."""
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _rotation_z(angle: torch.Tensor) -> torch.Tensor:
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack([cos, -sin, zero, sin, cos, zero, zero, zero, one], dim=-1).view(*angle.shape, 3, 3)


CAMERA_YAWS_DEGREES = (55.0, 0.0, -55.0, 110.0, 180.0, -110.0)  # FRONT_LEFT, FRONT, FRONT_RIGHT, BACK_LEFT, BACK, ...
CAMERA_TO_EGO_AXES = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # optical z -> ego x


def random_batch(
    batch: int = 1, image_size: tuple[int, int] = (64, 192), seed: int = 0, bev_augmentation: bool = True,
    temporal: bool = True,
) -> dict[str, torch.Tensor]:
    """A six-camera nuScenes-like batch in the reference's argument names.

    Cameras at the nuScenes yaws, 1.5 m from the ego origin and 1.6 m up, with the 1600x900 intrinsics; each image
    resized, bottom-cropped, possibly flipped and rotated by up to 5.4 degrees (BEVDet's `img_transform` conventions:
    image-plane `post_rots` / `post_trans`); BEV augmentation as BEVDet's `bev_transform` (rotation up to 22.5 degrees,
    scale 0.95-1.05, x / y flips) unless disabled. The previous frame shares the intrinsics and image augmentation
    and sees the key ego 2 m back and 3 degrees of yaw earlier; `temporal=False` leaves its inputs out.
    """
    generator = torch.Generator().manual_seed(seed)
    height, width = image_size
    cameras = len(CAMERA_YAWS_DEGREES)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator)

    yaws = torch.deg2rad(torch.tensor(CAMERA_YAWS_DEGREES)) + uniform(-0.02, 0.02, cameras)
    camera_to_ego = torch.eye(4).repeat(batch, cameras, 1, 1)
    camera_to_ego[..., :3, :3] = _rotation_z(yaws) @ CAMERA_TO_EGO_AXES
    camera_to_ego[..., 0, 3] = 1.5 * torch.cos(yaws)
    camera_to_ego[..., 1, 3] = 1.5 * torch.sin(yaws)
    camera_to_ego[..., 2, 3] = 1.6

    intrinsics = torch.tensor([[1266.0, 0.0, 816.0], [0.0, 1266.0, 491.0], [0.0, 0.0, 1.0]])
    intrinsics = intrinsics.repeat(batch, cameras, 1, 1)
    intrinsics[..., :2, 2] += uniform(-10.0, 10.0, batch, cameras, 2)

    # Image augmentation as BEVDet's img_transform: resize, crop (bottom rows kept), flip, rotate about the centre.
    resize = width / 1600.0 + uniform(-0.01, 0.02, batch, cameras)
    crop_top = (900.0 * resize - height).clamp(min=0.0)
    crop_left = (1600.0 * resize - width) * uniform(0.0, 1.0, batch, cameras)
    post_rot = torch.zeros(batch, cameras, 2, 2)
    post_rot[..., 0, 0] = post_rot[..., 1, 1] = resize
    post_tran = -torch.stack([crop_left, crop_top], dim=-1)
    flip = torch.where(uniform(0.0, 1.0, batch, cameras) < 0.5, -1.0, 1.0)
    flip_matrix = torch.diag_embed(torch.stack([flip, torch.ones_like(flip)], dim=-1))
    post_rot = flip_matrix @ post_rot
    post_tran = (flip_matrix @ post_tran.unsqueeze(-1)).squeeze(-1)
    post_tran[..., 0] += torch.where(flip < 0, float(width), 0.0)
    angle = torch.deg2rad(uniform(-5.4, 5.4, batch, cameras))
    rotation = _rotation_z(angle)[..., :2, :2]
    centre = torch.tensor([width / 2.0, height / 2.0])
    post_rot = rotation @ post_rot
    post_tran = (rotation @ (post_tran - centre).unsqueeze(-1)).squeeze(-1) + centre
    post_rots = torch.eye(3).repeat(batch, cameras, 1, 1)
    post_rots[..., :2, :2] = post_rot
    post_trans = torch.zeros(batch, cameras, 3)
    post_trans[..., :2] = post_tran

    bda = torch.eye(3).repeat(batch, 1, 1)
    if bev_augmentation:
        scale = uniform(0.95, 1.05, batch)
        flips = torch.diag_embed(torch.stack([
            torch.where(uniform(0.0, 1.0, batch) < 0.5, -1.0, 1.0),
            torch.where(uniform(0.0, 1.0, batch) < 0.5, -1.0, 1.0),
            torch.ones(batch),
        ], dim=-1))
        bda = flips @ (scale.view(batch, 1, 1) * _rotation_z(torch.deg2rad(uniform(-22.5, 22.5, batch))))

    previous_ego_to_key_ego = torch.eye(4)
    previous_ego_to_key_ego[:3, :3] = _rotation_z(torch.deg2rad(torch.tensor(-3.0)))
    previous_ego_to_key_ego[:3, 3] = torch.tensor([-2.0, 0.1, 0.0])

    images = torch.randn(batch, cameras, 3, height, width, generator=generator)
    inputs = {
        "images": images, "intrinsics": intrinsics, "sensor2keyego": camera_to_ego, "post_rots": post_rots,
        "post_trans": post_trans, "bda": bda,
    }
    if temporal:
        inputs["previous_images"] = images + 0.5 * torch.randn(images.shape, generator=generator)
        inputs["previous_sensor2keyego"] = previous_ego_to_key_ego @ camera_to_ego
    return inputs
