"""Configuration of the GeoMIM LiDAR teacher: hard voxelisation and the SparseEncoder of bevfusion's TransFusion-L."""

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig


def _as_lists(value):
    """Tuples (of tuples) as lists, the form a config holds after a JSON round trip."""
    return [_as_lists(item) for item in value] if isinstance(value, (list, tuple)) else value


def _triple(value: int | list[int]) -> list[int]:
    return [value] * 3 if isinstance(value, int) else list(value)


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Cells along one axis after a (sparse) convolution: ``floor((size + 2 padding - kernel) / stride) + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


@strict
class GeoMIMLidarTeacherConfig(PreTrainedConfig):
    r"""
    Configuration of [`GeoMIMLidarTeacher`]: the frozen LiDAR branch whose BEV features GeoMIM pretraining
    reconstructs from the cameras. The defaults are bevfusion's LiDAR-only TransFusion-L
    (`configs/nuscenes/det/transfusion/secfpn/lidar/voxelnet_0p075.yaml`), whose encoder GeoMIM loads from
    `lidar-only-det.pth`: 0.075 x 0.075 x 0.2 m voxels over [-54, 54] x [-54, 54] x [-5, 3] m in the LiDAR frame, a
    sparse grid of 1440 x 1440 x 41 and a BEV map of 256 x 180 x 180. `from_preset("small_grid")` is a
    preset that runs in about a second on a CPU (synthetic data, tests, demos).

    Args:
        in_channels (`int`, *optional*, defaults to 5):
            Values per point: x, y, z, intensity and the time lag of the sweep.
        point_cloud_range (`list[float]`, *optional*, defaults to `[-54, -54, -5, 54, 54, 3]`):
            `[x_min, y_min, z_min, x_max, y_max, z_max]` in metres, LiDAR frame. Points outside are dropped.
        voxel_size (`list[float]`, *optional*, defaults to `[0.075, 0.075, 0.2]`):
            Voxel edge per axis (x, y, z) in metres; each range must be a whole number of voxels.
        max_num_points (`int`, *optional*, defaults to 10):
            Points kept per voxel, the first ones in input order (hard voxelisation).
        max_voxels (`int`, *optional*, defaults to 160000):
            Voxels kept per sample, in order of first appearance; the points of later voxels are dropped. GeoMIM runs
            the teacher's voxeliser in eval mode, so the test value of bevfusion's (120000, 160000) applies.
        base_channels (`int`, *optional*, defaults to 16):
            Channels of the input submanifold convolution.
        encoder_channels (`list[list[int]]`, *optional*):
            Defaults to `[[16, 16, 32], [32, 32, 64], [64, 64, 128], [128, 128]]`.
            Per stage: one entry per residual block (submanifold, channels unchanged), and, in every stage but the
            last, a final entry for the stride-2 sparse convolution that ends it (bevfusion's `basicblock` layout).
        encoder_paddings (`list[list[int | list[int]]]`, *optional*):
            Defaults to `[[0, 0, 1], [0, 0, 1], [0, 0, [1, 1, 0]], [0, 0]]`.
            Same nesting as `encoder_channels`, as in the original config. Only the entries of the stride-2
            convolutions are used; residual blocks always pad by 1.
        output_channels (`int`, *optional*, defaults to 128):
            Channels of the final (1, 1, 3) convolution with stride (1, 1, 2), which leaves 2 z-slices.
        batch_norm_eps (`float`, *optional*, defaults to 1e-3):
            Epsilon of every BatchNorm1d.
        batch_norm_momentum (`float`, *optional*, defaults to 0.01):
            Momentum of every BatchNorm1d (used only if the teacher is ever trained).
        initializer_seed (`int`, *optional*):
            Not read by the model; a randomly initialised teacher (`pretraining.md` section 4, option (b)) records
            its seed here so that target caches and model cards can name it.

    The sparse shape is `(nx, ny, nz + 1)` for a grid of nx x ny x nz voxels: like mmdet3d's SECOND, the encoder gets
    one extra z cell (hence 41 for 40 voxels). The BEV map is indexed (X, Y), not BEVDet's (Y, X), and channel
    `c * Z + z` holds channel c of output z-slice z.
    """

    model_type = "geomim_lidar_teacher"

    in_channels: int = 5
    point_cloud_range: list[float | int] | tuple[float | int, ...] = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)
    voxel_size: list[float | int] | tuple[float | int, ...] = (0.075, 0.075, 0.2)
    max_num_points: int = 10
    max_voxels: int = 160000
    base_channels: int = 16
    encoder_channels: list[list[int]] | tuple = ((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128))
    encoder_paddings: list[list[int | list[int]]] | tuple = ((0, 0, 1), (0, 0, 1), (0, 0, (1, 1, 0)), (0, 0))
    output_channels: int = 128
    batch_norm_eps: float = 1e-3
    batch_norm_momentum: float = 0.01
    initializer_seed: int | None = None

    def __post_init__(self, **kwargs):
        self.point_cloud_range = [float(value) for value in self.point_cloud_range]
        self.voxel_size = [float(value) for value in self.voxel_size]
        self.encoder_channels = _as_lists(self.encoder_channels)
        self.encoder_paddings = _as_lists(self.encoder_paddings)
        if len(self.point_cloud_range) != 6 or len(self.voxel_size) != 3:
            raise ValueError(f"point_cloud_range needs 6 values [x_min, y_min, z_min, x_max, y_max, z_max] and "
                             f"voxel_size 3, got {self.point_cloud_range} and {self.voxel_size}")
        if min(self.in_channels, self.max_num_points, self.max_voxels, self.base_channels, self.output_channels) < 1:
            raise ValueError("in_channels, max_num_points, max_voxels, base_channels and output_channels must be >= 1")
        if self.in_channels < 3:
            raise ValueError(f"in_channels must be at least 3 (x, y, z first), got {self.in_channels}")
        self._check_encoder()
        if min(self.output_sparse_shape) < 1:
            raise ValueError(f"the grid {self.sparse_shape} is too small for the encoder's strides: it leaves an "
                             f"output of {self.output_sparse_shape} cells (x, y, z)")
        super().__post_init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GeoMIMLidarTeacherConfig":
        """A named configuration of `TEACHER_PRESETS`, with `overrides` of its fields."""
        if name not in TEACHER_PRESETS:
            raise ValueError(f"unknown LiDAR teacher preset {name!r}; known: {sorted(TEACHER_PRESETS)}")
        return cls(**{**TEACHER_PRESETS[name], **overrides})

    @property
    def grid_size(self) -> list[int]:
        """Voxels per axis (x, y, z)."""
        sizes = []
        for axis, name in enumerate("xyz"):
            low, high, step = self.point_cloud_range[axis], self.point_cloud_range[axis + 3], self.voxel_size[axis]
            if step <= 0 or high <= low:
                raise ValueError(f"{name}: need {name}_min < {name}_max and a positive voxel size, got range "
                                 f"[{low}, {high}] and voxel {step}")
            cells = (high - low) / step
            # The voxeliser rounds the cell count (round((max - min) / size)); refuse ranges that are not whole.
            if abs(cells - round(cells)) > 1e-4:
                raise ValueError(f"{name}: the range [{low}, {high}] is not a whole number of {step} m voxels")
            sizes.append(round(cells))
        return sizes

    def _check_encoder(self) -> None:
        if len(self.encoder_channels) != len(self.encoder_paddings) or any(
            len(channels) != len(paddings) for channels, paddings in zip(self.encoder_channels, self.encoder_paddings)
        ):
            raise ValueError(f"encoder_paddings {self.encoder_paddings} must have the nesting of encoder_channels "
                             f"{self.encoder_channels}")
        if not self.encoder_channels or not self.encoder_channels[-1]:
            raise ValueError(f"encoder_channels needs at least one stage, the last with a residual block, got "
                             f"{self.encoder_channels}")
        for stage, _ in enumerate(self.encoder_channels):
            channels = self.stage_input_channels(stage)
            for block, out_channels in enumerate(self.block_channels(stage)):
                if out_channels != channels:
                    raise ValueError(f"encoder_channels[{stage}][{block}] = {out_channels}: a residual block keeps "
                                     f"its {channels} input channels")

    def block_channels(self, stage: int) -> list[int]:
        """Channels of the residual blocks of ``stage``."""
        channels = self.encoder_channels[stage]
        return channels[:-1] if self.has_downsample(stage) else channels

    def stage_input_channels(self, stage: int) -> int:
        """Channels entering ``stage``: the input convolution's, then each downsampling's."""
        return self.base_channels if stage == 0 else self.encoder_channels[stage - 1][-1]

    def has_downsample(self, stage: int) -> bool:
        """Every stage but the last ends with a stride-2 sparse convolution."""
        return stage < len(self.encoder_channels) - 1

    def downsample_padding(self, stage: int) -> list[int]:
        """(x, y, z) padding of the stride-2 convolution that ends ``stage``."""
        return _triple(self.encoder_paddings[stage][-1])

    @property
    def sparse_shape(self) -> list[int]:
        """(x, y, z) cells of the encoder input: the voxel grid plus one z cell."""
        x_cells, y_cells, z_cells = self.grid_size
        return [x_cells, y_cells, z_cells + 1]

    @property
    def encoder_output_channels(self) -> int:
        return self.encoder_channels[-1][-1]

    @property
    def output_sparse_shape(self) -> list[int]:
        """(x, y, z) cells of the encoder output: three stride-2 convolutions, then the (1, 1, 3) / (1, 1, 2) one."""
        shape = list(self.sparse_shape)
        for stage in range(len(self.encoder_channels)):
            if self.has_downsample(stage):
                padding = self.downsample_padding(stage)
                shape = [conv_output_size(size, 3, 2, pad) for size, pad in zip(shape, padding)]
        return [shape[0], shape[1], conv_output_size(shape[2], 3, 2, 0)]

    @property
    def bev_shape(self) -> tuple[int, int, int]:
        """(channels, X, Y) of the BEV map: ``output_channels`` times the output z-slices, then the cells."""
        x_cells, y_cells, z_slices = self.output_sparse_shape
        return self.output_channels * z_slices, x_cells, y_cells


TEACHER_PRESETS: dict[str, dict] = {
    # bevfusion's TransFusion-L SparseEncoder, the teacher of the released GeoMIM pretraining.
    "bevfusion": {},
    # Runs in about a second on a CPU: 0.3 m voxels over the bevfusion range (360 x 360 x 41), half the channels, a
    # BEV map of 128 x 45 x 45 (2.4 m cells). For synthetic data, tests and demos.
    "small_grid": {"voxel_size": (0.3, 0.3, 0.2), "base_channels": 8,
                   "encoder_channels": ((8, 8, 16), (16, 16, 32), (32, 32, 64), (64, 64)), "output_channels": 64},
}

__all__ = ["GeoMIMLidarTeacherConfig", "TEACHER_PRESETS"]
