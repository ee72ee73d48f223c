"""PyTorch GeoMIM LiDAR teacher: hard voxelisation and bevfusion's SparseEncoder on spconv 2.x.

GeoMIM pretraining (Liu et al., ICCV 2023, arXiv 2303.11325) reconstructs, from the six cameras, the BEV features of a
frozen LiDAR detector: the voxeliser and the `SparseEncoder` of bevfusion's LiDAR-only TransFusion-L
(mit-han-lab/bevfusion, `mmdet3d/models/backbones/sparse_encoder.py` with `block_type: basicblock`). Only those two
parts are built, as in `BEVFusionGeoMIM`; the SECOND backbone, FPN and detection head are not needed.

The network, in bevfusion's (x, y, z) voxel order:
- `conv_input`: submanifold 3x3x3 convolution, BatchNorm1d, ReLU;
- `encoder.stages[i]`: residual blocks of two submanifold convolutions (bevfusion's `SparseBasicBlock`), then, in
  every stage but the last, a stride-2 sparse convolution with the configured padding;
- `conv_out`: sparse (1, 1, 3) convolution with stride (1, 1, 2);
- the dense output (B, C, X, Y, Z) is read as (B, C * Z, X, Y), channel `c * Z + z`.

spconv's CPU kernels return wrong results with more than one torch thread (traveller59/spconv #679), so on the CPU
the sparse part runs single-threaded and the caller's thread count is restored afterwards.
"""

import contextlib
import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_utils import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_lidar_teacher import GeoMIMLidarTeacherConfig


def import_spconv():
    """``spconv.pytorch``, or an error that says how to install it."""
    try:
        import spconv.pytorch as spconv
    except ImportError as error:
        raise ImportError(
            "The GeoMIM LiDAR teacher needs spconv 2.x: `pip install geomim_hf[spconv]` (CPU build) or the CUDA build "
            "matching your torch, e.g. `pip install spconv-cu121`."
        ) from error
    return spconv


@contextlib.contextmanager
def spconv_threads(device: torch.device) -> Iterator[None]:
    """One torch thread while spconv runs on the CPU (its kernels are wrong with more); the count is restored."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class Voxels:
    """Hard-voxelised points of a batch.

    Attributes:
        features: (V, C) mean of the kept points of each voxel.
        coordinates: (V, 4) int32 ``(batch index, x, y, z)`` voxel indices.
        num_points: (V,) int32 points averaged in each voxel (at most ``max_num_points``).
    """

    features: torch.Tensor
    coordinates: torch.Tensor
    num_points: torch.Tensor


def hard_voxelize_sample(
    points: torch.Tensor,
    point_cloud_range: list[float],
    voxel_size: list[float],
    grid_size: list[int],
    max_num_points: int,
    max_voxels: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hard voxelisation of one point cloud, with the semantics of bevfusion's ``hard_voxelize`` kernels.

    A point falls in voxel ``floor((p - range_min) / voxel_size)`` (float32 arithmetic, as the kernels), if that lies
    in the grid. Voxels are numbered in order of their first point; each keeps its first ``max_num_points`` points; only
    the first ``max_voxels`` voxels are kept, and the points of the others are dropped.

    Args:
        points: (P, C) float32, x, y, z first; rows with a NaN coordinate fall outside.
        point_cloud_range, voxel_size, grid_size: the grid (see [`GeoMIMLidarTeacherConfig`]).
        max_num_points, max_voxels: the limits.

    Returns:
        features (V, C) (the mean of the kept points), cells (V, 3) int64 (x, y, z), num_points (V,) int64.
    """
    start = points.new_tensor(point_cloud_range[:3])
    step = points.new_tensor(voxel_size)
    size = points.new_tensor(grid_size)
    scaled = (points[:, :3] - start) / step  # (P, 3) position in voxels
    inside = ((scaled >= 0) & (scaled < size)).all(dim=1)  # decided on floats, so NaN is outside
    point_index = inside.nonzero().squeeze(1)  # (Q,) kept in input order
    cells = scaled[point_index].floor().long()  # (Q, 3)
    if len(point_index) == 0:
        return points.new_zeros(0, points.shape[1]), cells, cells.new_zeros(0)

    key = (cells[:, 0] * grid_size[1] + cells[:, 1]) * grid_size[2] + cells[:, 2]
    _, voxel_of_point = torch.unique(key, return_inverse=True)  # (Q,) index into the sorted unique voxels
    num_unique = int(voxel_of_point.max()) + 1
    order_in_input = torch.arange(len(point_index), device=points.device)
    first_point = torch.full((num_unique,), len(point_index), device=points.device, dtype=torch.long)
    first_point.scatter_reduce_(0, voxel_of_point, order_in_input, reduce="amin")
    appearance = torch.argsort(first_point)  # sorted-unique index of the k-th voxel to appear
    rank = torch.empty_like(appearance)
    rank[appearance] = torch.arange(num_unique, device=points.device)
    voxel_of_point = rank[voxel_of_point]  # voxels renumbered in order of first appearance

    # Slot of each point in its voxel: its position among the voxel's points, in input order (a stable sort groups
    # the points by voxel without reordering them).
    by_voxel, grouping = torch.sort(voxel_of_point, stable=True)
    counts = torch.bincount(voxel_of_point, minlength=num_unique)
    group_start = torch.cumsum(counts, dim=0) - counts
    slot = torch.empty_like(voxel_of_point)
    slot[grouping] = order_in_input - group_start[by_voxel]

    num_voxels = min(num_unique, max_voxels)
    keep = (voxel_of_point < num_voxels) & (slot < max_num_points)
    kept_voxel = voxel_of_point[keep]
    sums = points.new_zeros(num_voxels, points.shape[1]).index_add_(0, kept_voxel, points[point_index[keep]])
    num_points = torch.bincount(kept_voxel, minlength=num_voxels)
    voxel_cells = cells[first_point[appearance[:num_voxels]]]
    return sums / num_points[:, None].to(sums.dtype), voxel_cells, num_points


def hard_voxelize(points: torch.Tensor, points_mask: torch.Tensor, config: GeoMIMLidarTeacherConfig) -> Voxels:
    """[`hard_voxelize_sample`] of every sample of a padded batch, with its batch index in the coordinates.

    Args:
        points: (B, P, C) float32.
        points_mask: (B, P) bool, False for padding.
        config: grid and limits.
    """
    features, coordinates, num_points = [], [], []
    for batch_index in range(points.shape[0]):
        sample_features, cells, sample_counts = hard_voxelize_sample(
            points[batch_index][points_mask[batch_index]], config.point_cloud_range, config.voxel_size,
            config.grid_size, config.max_num_points, config.max_voxels,
        )
        features.append(sample_features)
        coordinates.append(nn.functional.pad(cells, (1, 0), value=batch_index))
        num_points.append(sample_counts)
    return Voxels(torch.cat(features), torch.cat(coordinates).int(), torch.cat(num_points).int())


@dataclass
class GeoMIMLidarTeacherOutput(ModelOutput):
    r"""
    Outputs of [`GeoMIMLidarTeacher`].

    Args:
        bev_features (`torch.FloatTensor` of shape `(batch_size, output_channels * z_slices, X, Y)`):
            The BEV map GeoMIM pretraining reconstructs (256 x 180 x 180 for bevfusion's teacher), indexed (X, Y) in
            the LiDAR frame, channel `c * z_slices + z`. Cells without an active voxel are 0.
        voxel_features (`torch.FloatTensor` of shape `(num_voxels, in_channels)`):
            Mean of the points of each voxel, the encoder input.
        voxel_coordinates (`torch.IntTensor` of shape `(num_voxels, 4)`):
            `(batch index, x, y, z)` of each voxel.
        voxel_num_points (`torch.IntTensor` of shape `(num_voxels,)`):
            Points averaged in each voxel.
    """

    bev_features: torch.FloatTensor | None = None
    voxel_features: torch.FloatTensor | None = None
    voxel_coordinates: torch.IntTensor | None = None
    voxel_num_points: torch.IntTensor | None = None


class GeoMIMSparseConvLayer(nn.Module):
    """Sparse 3D convolution without bias, BatchNorm1d over the active sites, then ReLU (bevfusion's
    `make_sparse_convmodule` with order conv / norm / act). Weights are spconv 2.x's `(out, kx, ky, kz, in)`."""

    def __init__(
        self,
        config: GeoMIMLidarTeacherConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | list[int] = 1,
        submanifold: bool = True,
        indice_key: str | None = None,
        activation: bool = True,
    ):
        super().__init__()
        spconv = import_spconv()
        convolution_class = spconv.SubMConv3d if submanifold else spconv.SparseConv3d
        self.convolution = convolution_class(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False, indice_key=indice_key
        )
        self.normalization = nn.BatchNorm1d(out_channels, eps=config.batch_norm_eps,
                                            momentum=config.batch_norm_momentum)
        self.activation = nn.ReLU() if activation else nn.Identity()

    def forward(self, hidden_states):
        hidden_states = self.convolution(hidden_states)
        return hidden_states.replace_feature(self.activation(self.normalization(hidden_states.features)))


class GeoMIMSparseBasicBlock(nn.Module):
    """Two submanifold 3x3x3 layers with a residual connection and ReLU after the sum (bevfusion's
    `SparseBasicBlock`). Submanifold convolutions keep the input sites, in their order, so features add site-wise."""

    def __init__(self, config: GeoMIMLidarTeacherConfig, channels: int, indice_key: str):
        super().__init__()
        self.conv_layer1 = GeoMIMSparseConvLayer(config, channels, channels, 3, indice_key=indice_key)
        self.conv_layer2 = GeoMIMSparseConvLayer(config, channels, channels, 3, indice_key=indice_key,
                                                 activation=False)
        self.activation = nn.ReLU()

    def forward(self, hidden_states):
        residual = hidden_states.features
        hidden_states = self.conv_layer2(self.conv_layer1(hidden_states))
        return hidden_states.replace_feature(self.activation(hidden_states.features + residual))


class GeoMIMSparseStage(nn.Module):
    """The residual blocks of one resolution, then (all stages but the last) a stride-2 sparse convolution."""

    def __init__(self, config: GeoMIMLidarTeacherConfig, stage_index: int):
        super().__init__()
        # Submanifold layers of one resolution see the same sites: they share spconv's index rules.
        indice_key = f"submanifold{stage_index}"
        self.blocks = nn.ModuleList(
            [GeoMIMSparseBasicBlock(config, channels, indice_key) for channels in config.block_channels(stage_index)]
        )
        self.downsample = None
        if config.has_downsample(stage_index):
            # Residual blocks keep the channels, so the downsampling sees the stage's input channels.
            self.downsample = GeoMIMSparseConvLayer(
                config, config.stage_input_channels(stage_index), config.encoder_channels[stage_index][-1], 3,
                stride=2, padding=config.downsample_padding(stage_index), submanifold=False,
            )

    def forward(self, hidden_states):
        for block in self.blocks:
            hidden_states = block(hidden_states)
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        return hidden_states


class GeoMIMSparseEncoder(nn.Module):
    def __init__(self, config: GeoMIMLidarTeacherConfig):
        super().__init__()
        self.stages = nn.ModuleList(
            [GeoMIMSparseStage(config, stage_index) for stage_index in range(len(config.encoder_channels))]
        )

    def forward(self, hidden_states):
        for stage in self.stages:
            hidden_states = stage(hidden_states)
        return hidden_states


class GeoMIMLidarTeacherPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading for the GeoMIM LiDAR teacher."""

    config: GeoMIMLidarTeacherConfig
    base_model_prefix = "lidar_teacher"
    main_input_name = "points"
    input_modalities = ("lidar",)
    _no_split_modules = ["GeoMIMSparseEncoder"]
    # The original runs the teacher in fp32 (force_fp32): loading with a half dtype keeps it there.
    _keep_in_fp32_modules_strict = ["conv_input", "encoder", "conv_out"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # BatchNorm: weight 1, bias 0, running statistics of the identity
        # The spconv module itself, not its wrapper: transformers skips modules without parameters of their own.
        if isinstance(module, import_spconv().conv.SparseConvolution):
            weight = module.weight  # (out, kx, ky, kz, in): torch's fan computation does not apply
            fan_in = weight[0].numel()
            # He initialisation keeps the feature scale through the ReLU layers of a randomly initialised teacher.
            init.normal_(weight, mean=0.0, std=math.sqrt(2.0 / fan_in))


class GeoMIMLidarTeacher(GeoMIMLidarTeacherPreTrainedModel):
    """The GeoMIM LiDAR teacher: points in the LiDAR frame -> hard voxels -> SparseEncoder -> BEV map.

    Use it frozen (`from_pretrained` returns it in eval mode; call it under `torch.no_grad()`): the BEV map is a
    pretraining target, and spconv has no CPU backward.
    """

    def __init__(self, config: GeoMIMLidarTeacherConfig):
        super().__init__(config)
        self.conv_input = GeoMIMSparseConvLayer(config, config.in_channels, config.base_channels, 3,
                                                indice_key="submanifold0")
        self.encoder = GeoMIMSparseEncoder(config)
        self.conv_out = GeoMIMSparseConvLayer(config, config.encoder_output_channels, config.output_channels,
                                              (1, 1, 3), stride=(1, 1, 2), padding=0, submanifold=False)
        self.post_init()

    def check_inputs(self, points: torch.Tensor, points_mask: torch.Tensor | None) -> torch.Tensor:
        """The (B, P) bool mask, after checking the shapes."""
        if points.ndim != 3 or points.shape[-1] != self.config.in_channels:
            raise ValueError(f"points must have shape (batch_size, num_points, {self.config.in_channels}) = x, y, z, "
                             f"intensity, time lag in the LiDAR frame; got {tuple(points.shape)}")
        if points_mask is None:
            return torch.ones(points.shape[:2], dtype=torch.bool, device=points.device)
        if points_mask.shape != points.shape[:2]:
            raise ValueError(f"points_mask must have shape (batch_size, num_points) = {tuple(points.shape[:2])}, "
                             f"got {tuple(points_mask.shape)}")
        return points_mask.to(device=points.device, dtype=torch.bool)

    def voxelize(self, points: torch.Tensor, points_mask: torch.Tensor | None = None) -> Voxels:
        """Hard voxels of a batch (B, P, C) in float32; see [`hard_voxelize_sample`]."""
        return hard_voxelize(points.float(), self.check_inputs(points, points_mask), self.config)

    def forward(self, points: torch.Tensor, points_mask: torch.Tensor | None = None) -> GeoMIMLidarTeacherOutput:
        r"""
        Args:
            points (`torch.FloatTensor` of shape `(batch_size, num_points, in_channels)`):
                x, y, z (metres, LiDAR frame of the key frame, after the BEV flip), intensity and sweep time lag.
            points_mask (`torch.BoolTensor` of shape `(batch_size, num_points)`, *optional*):
                False for padding rows.

        Example:

        ```python
        >>> import torch
        >>> from geomim_hf import GeoMIMLidarTeacher, GeoMIMLidarTeacherConfig

        >>> teacher = GeoMIMLidarTeacher(GeoMIMLidarTeacherConfig.from_preset("small_grid")).eval()
        >>> scale, offset = torch.tensor([80.0, 80.0, 6.0, 255.0, 0.5]), torch.tensor([40.0, 40.0, 4.0, 0.0, 0.0])
        >>> points = torch.rand(1, 2000, 5) * scale - offset  # x, y, z, intensity, time lag
        >>> with torch.no_grad():
        ...     bev = teacher(points).bev_features
        >>> tuple(bev.shape)
        (1, 128, 45, 45)

        ```
        """
        spconv = import_spconv()
        device = points.device
        batch_size = points.shape[0]
        channels, x_cells, y_cells = self.config.bev_shape
        # The original runs the teacher in fp32 (force_fp32); spconv's CPU kernels have no half precision anyway.
        # The voxeliser's small tensor ops gain nothing from more CPU threads either, so all of it runs in one.
        with torch.autocast(device_type=device.type, enabled=False), spconv_threads(device):
            voxels = self.voxelize(points, points_mask)
            if len(voxels.features) == 0:
                bev = points.new_zeros(batch_size, channels, x_cells, y_cells, dtype=torch.float32)
            else:
                hidden_states = spconv.SparseConvTensor(
                    voxels.features, voxels.coordinates, self.config.sparse_shape, batch_size
                )
                hidden_states = self.conv_out(self.encoder(self.conv_input(hidden_states)))
                dense = hidden_states.dense()  # (B, C, X, Y, Z)
                # (B, C, X, Y, Z) -> (B, C, Z, X, Y) -> (B, C * Z, X, Y): channel c * Z + z, as bevfusion.
                bev = dense.permute(0, 1, 4, 2, 3).reshape(batch_size, channels, x_cells, y_cells)
        return GeoMIMLidarTeacherOutput(
            bev_features=bev,
            voxel_features=voxels.features,
            voxel_coordinates=voxels.coordinates,
            voxel_num_points=voxels.num_points,
        )


def random_lidar_teacher(config: GeoMIMLidarTeacherConfig, seed: int) -> GeoMIMLidarTeacher:
    """A teacher with random weights drawn from ``seed`` (the seed is recorded in its config), in eval mode, leaving
    the global random state untouched.

    For data without a trained LiDAR detector (the synthetic sets): untrained, the SparseEncoder's features still
    encode the occupied geometry (option (b) of the project's pretraining notes). Say so wherever it is used.
    """
    config = copy.deepcopy(config)
    config.initializer_seed = seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GeoMIMLidarTeacher(config).eval()


__all__ = [
    "GeoMIMLidarTeacher",
    "GeoMIMLidarTeacherOutput",
    "GeoMIMLidarTeacherPreTrainedModel",
    "hard_voxelize",
    "random_lidar_teacher",
]
