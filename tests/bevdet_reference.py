"""Independent functional reference of the released BEVDet / BEVDet4D detectors, for the parity tests of issue 8.

Plain torch functions over a state dict in the ORIGINAL key layout (no mmcv, no `geomim_hf`): it computes what
`bevdet-swinb-4d-256x704-cbgs-geomim.py` (and the baseline `bevdet-swinb-4d-256x704-cbgs.py`, and single-frame BEVDet)
compute in eval mode (BatchNorm with running statistics, no dropout / drop path), in fp32. Written from the BEVDet
dev2.x code as forked in Sense-X/GeoMIM `bevdet/` and HuangJunJie2017/BEVDet dev2.x; file and function per part:

- `img_backbone.*`: `SwinTransformerBEVFT` (`models/backbones/swin_bev.py`) or, with `shifted_windows=True` and no
  `absolute_pos_embed`, `SwinTransformerOri` (`swin_ori.py`), through `tests/mmdet_swin_reference.py` (loaded strictly,
  `relative_position_index` buffers included). The architecture (embed dims, depths, heads, windows, patch size,
  absolute PE grid, out_indices) is read from the state dict; whether windows shift cannot be, so it is an argument.
- `img_neck.*`: `FPN_LSS.forward` (`models/necks/lss_fpn.py`) with the config's `input_feature_index=(0, 1)`,
  `scale_factor=2`, `extra_upsample=None`: the stride-32 map upsampled x2 (bilinear, align_corners=True) and
  concatenated AFTER the stride-16 map, then `conv` = 3x3 (no bias), BN, ReLU, 3x3 (no bias), BN, ReLU.
- `img_view_transformer.depth_net.*`: `LSSViewTransformer.forward` / `view_transform_core` (`models/necks/
  view_transformer.py`): one 1x1 conv with bias, channels [0, D) depth logits (softmax over D), [D, D + C) context.
  Geometry: `create_frustum` (u = linspace(0, W_in - 1, W_in // downsample), v likewise, d = arange(*depth)),
  `get_lidar_coor` (called `get_ego_coor` in later BEVDet): subtract `post_trans`, apply `inverse(post_rots)`, (u d,
  v d, d), apply `sensor2ego[:3, :3] @ inverse(intrinsics)`, add `sensor2ego[:3, 3]`, apply the 3x3 `bda`. Pooling:
  `voxel_pooling_prepare_v2` + `bev_pool_v2` (`ops/bev_pool_v2/bev_pool.py`) re-done as a brute-force scatter-add of
  depth x context over ALL frustum points, with the original's `((p - lower) / interval).long()` cell index, which
  truncates toward zero (points up to one cell below a lower bound land in cell 0), the in-range filter on the
  truncated index, then `bev_pool_v2`'s (B, C, Z, Y, X) output collapsed as `cat(unbind(dim=2), 1)`: channels are
  z-major, [z0 c0..cC-1, z1 c0..].
- `pre_process_net.*` (4D only): `CustomResNet(numC_input=C, num_layer=[2], num_channels=[C], stride=[1],
  backbone_output_ids=[0])` (`models/backbones/resnet.py`), output `[0]`, applied to each frame in
  `BEVDet4D.prepare_bev_feat` (`models/detectors/bevdet.py`).
- 4D: `BEVDet4D.extract_img_feat` with `align_after_view_transfromation=False`: the previous frame goes through the
  same image encoder and view transformer with ITS OWN camera -> key-ego transform (and the key frame's intrinsics,
  image augmentation and BDA, as the data pipeline gives them), then pre_process_net; BEV maps concatenated
  [key, previous] on channels.
- `img_bev_encoder_backbone.*`: `CustomResNet` with the defaults `num_layer=[2, 2, 2]`, `stride=[2, 2, 2]`, all three
  layer outputs. `img_bev_encoder_neck.*`: `FPN_LSS` with the defaults `input_feature_index=(0, 2)`,
  `scale_factor=4`, `extra_upsample=2`: [layer-0 map, layer-2 map upsampled x4] -> `conv` at 2x the output width ->
  `up2` = upsample x2, 3x3 (no bias), BN, ReLU, 1x1 WITH bias.
- `pts_bbox_head.*`: `CenterHead.forward_single` and `SeparateHead.forward` (`models/dense_heads/
  centerpoint_head.py`): `shared_conv` = ConvModule 3x3 (no bias) + BN + ReLU; per task and per head in the order
  reg, height, dim, rot, vel, heatmap: ConvModule(`final_kernel`=3, padding 1, no bias, BN, ReLU) then a 3x3 conv with
  bias. The raw outputs are returned (before sigmoid), each (B, C, Y, X), in the released semantics: reg = sub-cell
  (x, y) offset, height = gravity-centre z, dim = log(l, w, h), rot = (sin, cos) of yaw, vel = (vx, vy).

Ambiguities resolved by reading the code:
- mmdet `BasicBlock`: conv1 3x3 (stride, no bias), bn1, ReLU, conv2 3x3 (no bias), bn2, + identity, ReLU. In
  `CustomResNet` the FIRST block of EVERY layer gets `downsample=nn.Conv2d(in, out, 3, stride, 1)` (bias on), also
  in `pre_process_net` where stride is 1 and widths are equal; later blocks have none.
- `FPN_LSS` concatenation order is [feats[index0], upsampled feats[index1]], so conv.0's first input channels belong
  to the higher-resolution map (512 of 1536 in the image neck, 160 of 800 in the BEV neck).
- SeparateHead's intermediate ConvModule uses `final_kernel` (3x3) too, not 1x1; every head has `num_conv=2`. The
  heatmap bias is initialised to -2.19 (`init_weights`); it is just a weight here.
- `bda` is the (B, 3, 3) rotation/scale/flip matrix: `get_lidar_coor` applies no BDA translation.
- The frustum is built from the CONFIG's input size, not from the images; this reference refuses images of another
  size instead of reproducing that mismatch.
- Swin's shifted windows (baseline) follow mmdet: pad first, then roll, shift never turned off (see
  `mmdet_swin_reference.py`).
- Strides are not in the weights: image neck / view transformer / BEV encoder strides are the released configs'.

The reference is strict: every tensor of the state dict must be read exactly once; a missing or unexpected key
raises a `KeyError` naming it.
"""

from __future__ import annotations

import dataclasses
import math
import re

import torch
import torch.nn.functional as F
from mmdet_swin_reference import MMDetGeoMIMSwin

HEAD_NAMES = ("reg", "height", "dim", "rot", "vel", "heatmap")  # SeparateHead order: common_heads, then heatmap
BATCH_NORM_EPS = 1e-5  # mmcv BN / BN2d default


@dataclasses.dataclass(frozen=True)
class LSSSettings:
    """The grid config, input size and downsample of the view transformer (headline config defaults).

    Each axis is (lower, upper, interval); `depth` is `arange(*depth)`: 59 bins at the default.
    """

    x: tuple[float, float, float] = (-51.2, 51.2, 0.8)
    y: tuple[float, float, float] = (-51.2, 51.2, 0.8)
    z: tuple[float, float, float] = (-5.0, 3.0, 8.0)
    depth: tuple[float, float, float] = (1.0, 60.0, 1.0)
    input_size: tuple[int, int] = (256, 704)
    downsample: int = 16

    def grid(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`create_grid_infos`: lower bound, interval and size (float32, as the original's `torch.Tensor`s), x/y/z."""
        axes = (self.x, self.y, self.z)
        lower = torch.tensor([axis[0] for axis in axes], dtype=torch.float32)
        interval = torch.tensor([axis[2] for axis in axes], dtype=torch.float32)
        size = torch.tensor([(axis[1] - axis[0]) / axis[2] for axis in axes], dtype=torch.float32)
        return lower, interval, size


@dataclasses.dataclass
class ReferenceOutput:
    """`tasks[t][name]`: raw head output (B, C, Y, X); `bev_features`: BEV encoder input (B, frames * C_bev * Z, Y,
    X), [key, previous] for 4D; `depth`: key-frame depth probabilities (B, N, D, H / downsample, W / downsample)."""

    tasks: list[dict[str, torch.Tensor]]
    bev_features: torch.Tensor
    depth: torch.Tensor


class StateReader:
    """Read access to a state dict that records which keys were used, so that the reference is strict both ways."""

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        self.state_dict = state_dict
        self.used: set[str] = set()

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.state_dict:
            raise KeyError(f"the reference needs {key!r}, which the state dict lacks")
        self.used.add(key)
        return self.state_dict[key]

    def has(self, key: str) -> bool:
        return key in self.state_dict

    def subset(self, prefix: str) -> dict[str, torch.Tensor]:
        """All tensors under `prefix`, prefix removed, marked as used."""
        keys = [key for key in self.state_dict if key.startswith(prefix)]
        self.used.update(keys)
        return {key.removeprefix(prefix): self.state_dict[key] for key in keys}

    def check_all_used(self) -> None:
        unused = sorted(set(self.state_dict) - self.used)
        if unused:
            raise KeyError(f"{len(unused)} tensors the original detector does not have, e.g. {unused[:5]}")


# ---------------------------------------------------------------------------------------------------------------
# Building blocks


def conv(reader: StateReader, prefix: str, x: torch.Tensor, stride: int = 1, bias: bool = False) -> torch.Tensor:
    """`nn.Conv2d` with 'same' padding k // 2 (every conv here); `bias` as the original module declares it."""
    weight = reader[f"{prefix}weight"]
    return F.conv2d(x, weight, reader[f"{prefix}bias"] if bias else None, stride=stride, padding=weight.shape[-1] // 2)


def batch_norm(reader: StateReader, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode BatchNorm2d: running statistics, affine; `num_batches_tracked` is read (it is in the file) only."""
    reader[f"{prefix}num_batches_tracked"]
    return F.batch_norm(
        x, reader[f"{prefix}running_mean"], reader[f"{prefix}running_var"], reader[f"{prefix}weight"],
        reader[f"{prefix}bias"], training=False, eps=BATCH_NORM_EPS,
    )


def conv_bn_relu(reader: StateReader, conv_prefix: str, bn_prefix: str, x: torch.Tensor, stride: int = 1):
    return F.relu(batch_norm(reader, bn_prefix, conv(reader, conv_prefix, x, stride=stride)))


def upsample(x: torch.Tensor, scale_factor: int) -> torch.Tensor:
    """`nn.Upsample(scale_factor, mode='bilinear', align_corners=True)`."""
    return F.interpolate(x, scale_factor=scale_factor, mode="bilinear", align_corners=True)


def fpn_lss(
    reader: StateReader, prefix: str, feats: list[torch.Tensor], input_feature_index: tuple[int, int],
    scale_factor: int, extra_upsample: int | None,
) -> torch.Tensor:
    """`FPN_LSS.forward` (lss_fpn.py): cat([feats[i0], up(feats[i1])]) -> conv -> optional up2."""
    x = torch.cat([feats[input_feature_index[0]], upsample(feats[input_feature_index[1]], scale_factor)], dim=1)
    x = conv_bn_relu(reader, f"{prefix}conv.0.", f"{prefix}conv.1.", x)
    x = conv_bn_relu(reader, f"{prefix}conv.3.", f"{prefix}conv.4.", x)
    if extra_upsample is not None:
        x = upsample(x, extra_upsample)
        x = conv_bn_relu(reader, f"{prefix}up2.1.", f"{prefix}up2.2.", x)
        x = conv(reader, f"{prefix}up2.4.", x, bias=True)
    return x


def basic_block(reader: StateReader, prefix: str, x: torch.Tensor, stride: int, downsample: bool) -> torch.Tensor:
    """mmdet `BasicBlock.forward`; `downsample` is CustomResNet's 3x3 conv with bias on the identity path."""
    out = conv_bn_relu(reader, f"{prefix}conv1.", f"{prefix}bn1.", x, stride=stride)
    out = batch_norm(reader, f"{prefix}bn2.", conv(reader, f"{prefix}conv2.", out))
    identity = conv(reader, f"{prefix}downsample.", x, stride=stride, bias=True) if downsample else x
    return F.relu(out + identity)


def custom_resnet(reader: StateReader, prefix: str, x: torch.Tensor, strides: tuple[int, ...]) -> list[torch.Tensor]:
    """`CustomResNet.forward` (resnet.py) with `backbone_output_ids` = every layer; blocks per layer from the keys."""
    outputs = []
    for layer, stride in enumerate(strides):
        blocks = _count_indices(reader, rf"{re.escape(prefix)}layers\.{layer}\.(\d+)\.conv1\.weight")
        if blocks == 0:
            raise KeyError(f"the reference needs {prefix}layers.{layer}.*, which the state dict lacks")
        for block in range(blocks):
            x = basic_block(reader, f"{prefix}layers.{layer}.{block}.", x, stride if block == 0 else 1, block == 0)
        outputs.append(x)
    return outputs


def _count_indices(reader: StateReader, pattern: str) -> int:
    """1 + the largest captured index of keys matching `pattern` (0 if none)."""
    indices = [int(match.group(1)) for key in reader.state_dict if (match := re.fullmatch(pattern, key))]
    return max(indices) + 1 if indices else 0


# ---------------------------------------------------------------------------------------------------------------
# Image encoder


def swin_from_state_dict(reader: StateReader, shifted_windows: bool) -> MMDetGeoMIMSwin:
    """The mmdet Swin of `img_backbone.*`, architecture read from the tensors, weights loaded strictly."""
    weights = reader.subset("img_backbone.")
    projection = weights["patch_embed.projection.weight"]  # (E, 3, patch, patch)
    stages = 1 + max(int(key.split(".")[1]) for key in weights if key.startswith("stages."))
    depths, heads, windows = [], [], []
    for stage in range(stages):
        blocks = [int(m.group(1)) for key in weights if (m := re.match(rf"stages\.{stage}\.blocks\.(\d+)\.", key))]
        depths.append(1 + max(blocks))
        table = weights[f"stages.{stage}.blocks.0.attn.w_msa.relative_position_bias_table"]  # ((2w - 1)^2, heads)
        heads.append(table.shape[1])
        windows.append((math.isqrt(table.shape[0]) + 1) // 2)
    out_indices = tuple(sorted(int(m.group(1)) for key in weights if (m := re.fullmatch(r"norm(\d+)\.weight", key))))
    position = weights.get("absolute_pos_embed")  # (1, E, grid, grid)
    swin = MMDetGeoMIMSwin(
        embed_dim=projection.shape[0], depths=tuple(depths), heads=tuple(heads), windows=tuple(windows),
        out_indices=out_indices, patch=projection.shape[-1],
        pretrain_img_size=(position.shape[-1] if position is not None else 56) * projection.shape[-1],
        absolute_position=position is not None, shift_windows=shifted_windows,
    )
    swin.load_state_dict(weights, strict=True)
    return swin.eval()


def image_encoder(reader: StateReader, swin: MMDetGeoMIMSwin, images: torch.Tensor) -> torch.Tensor:
    """`BEVDet.image_encoder`: (B, N, 3, H, W) -> Swin (out_indices) -> img_neck -> (B, N, C_neck, H / 16, W / 16)."""
    batch, cameras = images.shape[:2]
    feats = swin(images.flatten(0, 1))
    x = fpn_lss(reader, "img_neck.", feats, input_feature_index=(0, 1), scale_factor=2, extra_upsample=None)
    return x.view(batch, cameras, *x.shape[1:])


# ---------------------------------------------------------------------------------------------------------------
# View transformer


def create_frustum(settings: LSSSettings) -> torch.Tensor:
    """`create_frustum`: (D, fH, fW, 3) of (u, v, d) in input-image pixels, fH = H_in // downsample."""
    height, width = settings.input_size
    feature_height, feature_width = height // settings.downsample, width // settings.downsample
    depths = torch.arange(*settings.depth, dtype=torch.float)
    bins = depths.shape[0]
    d = depths.view(-1, 1, 1).expand(bins, feature_height, feature_width)
    u = torch.linspace(0, width - 1, feature_width, dtype=torch.float).view(1, 1, -1).expand_as(d)
    v = torch.linspace(0, height - 1, feature_height, dtype=torch.float).view(1, -1, 1).expand_as(d)
    return torch.stack((u, v, d), dim=-1)


def get_lidar_coor(
    frustum: torch.Tensor, sensor2ego: torch.Tensor, intrinsics: torch.Tensor, post_rots: torch.Tensor,
    post_trans: torch.Tensor, bda: torch.Tensor,
) -> torch.Tensor:
    """`get_lidar_coor` / `get_ego_coor`, same operations in the same order (so the same float32 rounding).

    frustum (D, fH, fW, 3); sensor2ego (B, N, 4, 4); intrinsics, post_rots (B, N, 3, 3); post_trans (B, N, 3);
    bda (B, 3, 3). Returns (B, N, D, fH, fW, 3) in the (augmented) key-ego frame.
    """
    batch, cameras = sensor2ego.shape[:2]
    points = frustum.to(sensor2ego) - post_trans.view(batch, cameras, 1, 1, 1, 3)
    points = torch.inverse(post_rots).view(batch, cameras, 1, 1, 1, 3, 3).matmul(points.unsqueeze(-1))
    points = torch.cat((points[..., :2, :] * points[..., 2:3, :], points[..., 2:3, :]), dim=5)  # (u d, v d, d)
    combine = sensor2ego[:, :, :3, :3].matmul(torch.inverse(intrinsics))
    points = combine.view(batch, cameras, 1, 1, 1, 3, 3).matmul(points).squeeze(-1)
    points = points + sensor2ego[:, :, :3, 3].view(batch, cameras, 1, 1, 1, 3)
    return bda.view(batch, 1, 1, 1, 1, 3, 3).matmul(points.unsqueeze(-1)).squeeze(-1)


def voxel_pooling(
    coor: torch.Tensor, depth: torch.Tensor, context: torch.Tensor, settings: LSSSettings
) -> torch.Tensor:
    """Brute-force scatter-add: every frustum point adds depth x context to its cell (`voxel_pooling_v2`).

    coor (B, N, D, fH, fW, 3); depth (B, N, D, fH, fW); context (B, N, C, fH, fW). Returns (B, Z * C, Y, X).
    """
    lower, interval, size = settings.grid()
    size_x, size_y, size_z = (int(value) for value in size)
    channels = context.shape[2]
    cell = ((coor - lower.to(coor)) / interval.to(coor)).long()  # truncation toward zero, as the original
    inside = ((cell >= 0) & (cell < size.to(coor))).all(dim=-1)
    batch_index = torch.arange(coor.shape[0]).view(-1, 1, 1, 1, 1).expand(cell.shape[:-1])
    flat = ((batch_index * size_z + cell[..., 2]) * size_y + cell[..., 1]) * size_x + cell[..., 0]
    values = depth.unsqueeze(-1) * context.permute(0, 1, 3, 4, 2).unsqueeze(2)  # (B, N, D, fH, fW, C)
    pooled = torch.zeros(coor.shape[0] * size_z * size_y * size_x, channels, dtype=values.dtype)
    pooled.index_add_(0, flat[inside], values[inside])
    pooled = pooled.view(coor.shape[0], size_z, size_y, size_x, channels).permute(0, 4, 1, 2, 3)  # (B, C, Z, Y, X)
    return torch.cat(pooled.unbind(dim=2), dim=1)


def view_transform(
    reader: StateReader, feats: torch.Tensor, sensor2ego: torch.Tensor, intrinsics: torch.Tensor,
    post_rots: torch.Tensor, post_trans: torch.Tensor, bda: torch.Tensor, settings: LSSSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`LSSViewTransformer.forward`: feats (B, N, C_in, fH, fW) -> BEV (B, Z * C, Y, X), depth (B, N, D, fH, fW)."""
    frustum = create_frustum(settings)
    bins, feature_height, feature_width = frustum.shape[:3]
    batch, cameras = feats.shape[:2]
    if tuple(feats.shape[-2:]) != (feature_height, feature_width):
        raise ValueError(f"image features {tuple(feats.shape[-2:])} do not match the frustum's "
                         f"{(feature_height, feature_width)}")
    x = conv(reader, "img_view_transformer.depth_net.", feats.flatten(0, 1), bias=True)
    if x.shape[1] <= bins:
        raise ValueError(f"depth_net has {x.shape[1]} outputs, not more than the {bins} depth bins of the settings")
    depth = x[:, :bins].softmax(dim=1).view(batch, cameras, bins, feature_height, feature_width)
    context = x[:, bins:].view(batch, cameras, -1, feature_height, feature_width)
    coor = get_lidar_coor(frustum, sensor2ego, intrinsics, post_rots, post_trans, bda)
    return voxel_pooling(coor, depth, context, settings), depth


# ---------------------------------------------------------------------------------------------------------------
# BEV encoder and head


def center_head(reader: StateReader, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """`CenterHead.forward_single`: shared_conv, then each task's SeparateHead; raw outputs per task."""
    p = "pts_bbox_head."
    x = conv_bn_relu(reader, f"{p}shared_conv.conv.", f"{p}shared_conv.bn.", x)
    tasks = _count_indices(reader, rf"{re.escape(p)}task_heads\.(\d+)\.heatmap\.1\.weight")
    outputs = []
    for task in range(tasks):
        outputs.append({})
        for name in HEAD_NAMES:
            h = f"{p}task_heads.{task}.{name}."
            hidden = conv_bn_relu(reader, f"{h}0.conv.", f"{h}0.bn.", x)
            outputs[-1][name] = conv(reader, f"{h}1.", hidden, bias=True)
    return outputs


def bev_encoder(reader: StateReader, x: torch.Tensor) -> torch.Tensor:
    """`BEVDet.bev_encoder`: CustomResNet (3 layers, stride 2) then FPN_LSS((0, 2), x4, extra x2)."""
    feats = custom_resnet(reader, "img_bev_encoder_backbone.", x, strides=(2, 2, 2))
    return fpn_lss(reader, "img_bev_encoder_neck.", feats, input_feature_index=(0, 2), scale_factor=4,
                   extra_upsample=2)


# ---------------------------------------------------------------------------------------------------------------
# Detector


def _check_inputs(images, intrinsics, sensor2keyego, post_rots, post_trans, bda, settings: LSSSettings) -> None:
    if images.dim() != 5 or images.shape[2] != 3:
        raise ValueError(f"images must be (B, N, 3, H, W), got {tuple(images.shape)}")
    batch, cameras = images.shape[:2]
    if tuple(images.shape[-2:]) != tuple(settings.input_size):
        raise ValueError(f"images are {tuple(images.shape[-2:])}, the settings' input size is {settings.input_size}")
    expected = {
        "intrinsics": (intrinsics, (batch, cameras, 3, 3)), "sensor2keyego": (sensor2keyego, (batch, cameras, 4, 4)),
        "post_rots": (post_rots, (batch, cameras, 3, 3)), "post_trans": (post_trans, (batch, cameras, 3)),
        "bda": (bda, (batch, 3, 3)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must be {shape}, got {tuple(tensor.shape)}")


@torch.no_grad()
def bevdet_forward(
    state_dict: dict[str, torch.Tensor],
    images: torch.Tensor,
    intrinsics: torch.Tensor,
    sensor2keyego: torch.Tensor,
    post_rots: torch.Tensor,
    post_trans: torch.Tensor,
    bda: torch.Tensor,
    previous_images: torch.Tensor | None = None,
    previous_sensor2keyego: torch.Tensor | None = None,
    *,
    shifted_windows: bool,
    settings: LSSSettings = LSSSettings(),
) -> ReferenceOutput:
    """The original detector's raw head outputs for one batch (eval mode, fp32).

    Args:
        state_dict: detector tensors in the original key layout (`img_backbone.*`, `img_neck.*`,
            `img_view_transformer.depth_net.*`, [`pre_process_net.*`], `img_bev_encoder_backbone.*`,
            `img_bev_encoder_neck.*`, `pts_bbox_head.*`); 4D iff `pre_process_net.*` is present.
        images: (B, N, 3, H, W), already normalised (the released weights expect mmcv's BGR quirk), (H, W) equal to
            `settings.input_size`, multiples of 32.
        intrinsics: (B, N, 3, 3) camera matrices of the source images (before augmentation).
        sensor2keyego: (B, N, 4, 4) camera -> key-ego transforms.
        post_rots: (B, N, 3, 3) image augmentation (resize / flip / rotation) in image-plane pixels.
        post_trans: (B, N, 3) image augmentation translation (crop / flip / rotation), pixels.
        bda: (B, 3, 3) BEV augmentation (rotation, scale, flips) applied to the ego points.
        previous_images: 4D only, (B, N, 3, H, W) of the previous key frame; default: the key frame's images.
        previous_sensor2keyego: 4D only, (B, N, 4, 4) previous-frame cameras -> CURRENT key ego; default: the key
            frame's (BEVDet's start-of-scene behaviour). The previous frame shares intrinsics, post_rots, post_trans
            and bda with the key frame.
        shifted_windows: True for the baseline's SwinTransformerOri, False for GeoMIM's SwinTransformerBEVFT.
        settings: grid, depth bins, input size, downsample.
    """
    _check_inputs(images, intrinsics, sensor2keyego, post_rots, post_trans, bda, settings)
    reader = StateReader(state_dict)
    temporal = any(key.startswith("pre_process_net.") for key in state_dict)
    if not temporal and (previous_images is not None or previous_sensor2keyego is not None):
        raise ValueError("previous-frame inputs given to a single-frame BEVDet state dict (no pre_process_net.*)")
    swin = swin_from_state_dict(reader, shifted_windows)

    def frame(frame_images: torch.Tensor, frame_sensor2keyego: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`BEVDet4D.prepare_bev_feat` (or BEVDet's image encoder + view transformer)."""
        feats = image_encoder(reader, swin, frame_images)
        bev, depth = view_transform(reader, feats, frame_sensor2keyego, intrinsics, post_rots, post_trans, bda,
                                    settings)
        if temporal:
            bev = custom_resnet(reader, "pre_process_net.", bev, strides=(1,))[0]
        return bev, depth

    bev, depth = frame(images, sensor2keyego)
    if temporal:
        previous_images = images if previous_images is None else previous_images
        previous_sensor2keyego = sensor2keyego if previous_sensor2keyego is None else previous_sensor2keyego
        if previous_images.shape != images.shape or previous_sensor2keyego.shape != sensor2keyego.shape:
            raise ValueError(f"previous frame {tuple(previous_images.shape)} / {tuple(previous_sensor2keyego.shape)} "
                             f"does not match the key frame {tuple(images.shape)} / {tuple(sensor2keyego.shape)}")
        previous_bev, _ = frame(previous_images, previous_sensor2keyego)
        bev = torch.cat([bev, previous_bev], dim=1)
    tasks = center_head(reader, bev_encoder(reader, bev))
    reader.check_all_used()
    return ReferenceOutput(tasks=tasks, bev_features=bev, depth=depth)
