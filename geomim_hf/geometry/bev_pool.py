"""BEV pooling (the "splat" of Lift-Splat) in pure PyTorch, as one sparse matrix product.

Every frustum point (camera n, depth bin d, feature pixel (i, j)) that falls in the grid adds
``depth[n, d, i, j] * features[n, :, i, j]`` to its BEV cell. Gathering, per cell, the points that share a pixel turns
the pooling into

    bev[cell] = sum over pixels of W[cell, pixel] * features[pixel],
    W[cell, pixel] = sum of depth[point] over that pixel's points in that cell,

a product of the sparse matrix W (cells x pixels, at most one entry per kept point) with the small dense matrix of pixel
features. Where W has entries depends only on the geometry: :class:`BEVPoolIndex` sorts it out once, as BEVPoolv2's
precomputation does, and :func:`bev_pool` then costs a gather and a segment sum of depth probabilities plus one CSR
product. It never builds the (points x C) outer product, runs wherever torch has sparse CSR kernels (CPU, CUDA) and is
deterministic on CPU.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
from torch.autograd.function import once_differentiable

from ._checks import check_shape
from .grid import BEVGrid, voxel_indices


def _row_offsets(entry_rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """CSR row offsets (num_rows + 1,) of a matrix whose entries, stored row by row, lie in rows ``entry_rows``."""
    counts = torch.bincount(entry_rows, minlength=num_rows)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _sort_key(values: torch.Tensor, bound: int) -> torch.Tensor:
    """``values`` (all below ``bound``) as int32 when they fit: torch sorts int32 keys about twice as fast as int64."""
    return values.int() if bound <= torch.iinfo(torch.int32).max else values


def _csr_matrix(
    row_offsets: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, num_columns: int
) -> torch.Tensor:
    with warnings.catch_warnings():
        # torch marks all of sparse CSR as beta; the two kernels used here (CSR @ dense, sampled_addmm) are covered by
        # this package's tests.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(
            row_offsets, columns, values, (row_offsets.numel() - 1, num_columns), check_invariants=False
        )


def _sparse_dense_product(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``matrix @ dense`` for a CSR ``matrix``, written straight into a fresh tensor.

    ``@`` zero-fills its result and copies the kernel's output into it: three passes over the output where one will
    do (``beta=0`` means the uninitialised ``product`` is never read).
    """
    product = dense.new_empty(matrix.shape[0], dense.shape[1])
    return torch.addmm(product, matrix, dense, beta=0.0, out=product)


@dataclasses.dataclass(frozen=True, eq=False)
class BEVPoolIndex:
    """Geometry-only bookkeeping of :func:`bev_pool`: which frustum points are kept and where they go, sorted.

    Build it with :meth:`from_geometry` and reuse it for as long as the geometry does not change (inference with fixed
    cameras); a training step with augmentation builds a new one. P is the number of kept frustum points, E the number
    of entries of W, i.e. of distinct (cell, pixel) pairs among them (E <= P).
    """

    depth_shape: tuple[int, int, int, int, int]  # (B, N, D, h, w) of the geometry
    grid_shape: tuple[int, int, int]  # (Z, Y, X)
    point_depth_index: torch.Tensor  # (P,) flat index into depth (B, N, D, h, w); grouped by entry
    point_entry: torch.Tensor  # (P,) entry of W that the point adds to; ascending
    row_offsets: torch.Tensor  # (B*Z*Y*X + 1,) CSR row offsets of W (rows: cells, flat over (B, Z, Y, X))
    entry_pixel: torch.Tensor  # (E,) column of each entry of W: flat index into pixels (B, N, h, w)
    transposed_row_offsets: torch.Tensor  # (B*N*h*w + 1,) CSR row offsets of W^T (rows: pixels)
    transposed_entry_cell: torch.Tensor  # (E,) column of each entry of W^T: flat cell index
    transposed_order: torch.Tensor  # (E,) entry of W behind each entry of W^T

    @classmethod
    def from_geometry(cls, geometry: torch.Tensor, grid: BEVGrid) -> BEVPoolIndex:
        """Index of ``geometry`` (B, N, D, h, w, 3), the ego-frame frustum points of :func:`.camera.frustum_to_ego`.

        Runs on the geometry's device; no gradient flows through it.
        """
        check_shape("geometry", geometry, (None, None, None, None, None, 3), "(B, N, D, h, w, 3)")
        batch, cameras, depth_bins, height, width, _ = geometry.shape
        if depth_bins != grid.num_depth_bins:
            raise ValueError(f"geometry has {depth_bins} depth bins but the grid has {grid.num_depth_bins}")
        num_z, num_y, num_x = grid.shape
        num_cells, num_pixels = batch * num_z * num_y * num_x, batch * cameras * height * width
        # Points taken pixel by pixel, (B, N, h, w, D): a stable sort by cell alone then orders them by (cell, pixel).
        voxel, inside = voxel_indices(geometry.detach().permute(0, 1, 3, 4, 2, 5), grid)  # (B, N, h, w, D, 3)
        b = torch.arange(batch, device=geometry.device).view(batch, 1, 1, 1, 1)
        cell = ((b * num_z + voxel[..., 2]) * num_y + voxel[..., 1]) * num_x + voxel[..., 0]  # (B, N, h, w, D)

        kept = inside.reshape(-1).nonzero().squeeze(1)  # (P,) into (B, N, h, w, D)
        point_pixel, point_bin = kept // depth_bins, kept % depth_bins  # into (B, N, h, w); depth bin
        image, pixel_in_image = point_pixel // (height * width), point_pixel % (height * width)
        point_depth_index = (image * depth_bins + point_bin) * (height * width) + pixel_in_image  # into (B, N, D, h, w)
        point_cell, order = torch.sort(_sort_key(cell.reshape(-1)[kept], num_cells), stable=True)
        point_pixel, point_depth_index = point_pixel[order], point_depth_index[order]

        # An entry of W starts wherever the cell or the pixel changes.
        starts = torch.ones_like(point_pixel, dtype=torch.bool)
        starts[1:] = (point_cell[1:] != point_cell[:-1]) | (point_pixel[1:] != point_pixel[:-1])
        entry_cell, entry_pixel = point_cell[starts].long(), point_pixel[starts]
        # Stable, so that the cells stay ascending within each row of W^T.
        transposed_order = torch.sort(_sort_key(entry_pixel, num_pixels), stable=True).indices
        return cls(
            depth_shape=(batch, cameras, depth_bins, height, width),
            grid_shape=grid.shape,
            point_depth_index=point_depth_index,
            point_entry=starts.cumsum(dim=0) - 1,
            row_offsets=_row_offsets(entry_cell, num_cells),
            entry_pixel=entry_pixel,
            transposed_row_offsets=_row_offsets(entry_pixel, num_pixels),
            transposed_entry_cell=entry_cell[transposed_order],
            transposed_order=transposed_order,
        )

    @property
    def num_entries(self) -> int:
        return self.entry_pixel.numel()

    @property
    def device(self) -> torch.device:
        return self.row_offsets.device

    def weight_matrix(self, entry_weights: torch.Tensor) -> torch.Tensor:
        """W as a sparse CSR (B*Z*Y*X, B*N*h*w) matrix with values ``entry_weights`` (E,)."""
        return _csr_matrix(self.row_offsets, self.entry_pixel, entry_weights, self.transposed_row_offsets.numel() - 1)

    def transposed_weight_matrix(self, entry_weights: torch.Tensor) -> torch.Tensor:
        """W^T as a sparse CSR (B*N*h*w, B*Z*Y*X) matrix with values ``entry_weights`` (E,) given in W's entry order."""
        return _csr_matrix(
            self.transposed_row_offsets,
            self.transposed_entry_cell,
            entry_weights[self.transposed_order],
            self.row_offsets.numel() - 1,
        )


class _SparseProduct(torch.autograd.Function):
    """``W @ pixel_features`` for the W of an index, differentiable in W's entries and in the features.

    torch's own autograd of a CSR-times-dense product rebuilds the transposed matrix at every backward (seconds on the
    pretraining grid); the index holds it already, so the backward is one more CSR product and one sampled product.
    """

    @staticmethod
    def forward(ctx, entry_weights: torch.Tensor, pixel_features: torch.Tensor, index: BEVPoolIndex) -> torch.Tensor:
        ctx.index = index
        ctx.save_for_backward(entry_weights, pixel_features)
        with torch.autocast(device_type=pixel_features.device.type, enabled=False):
            return _sparse_dense_product(index.weight_matrix(entry_weights), pixel_features)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_cells: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        entry_weights, pixel_features = ctx.saved_tensors
        index: BEVPoolIndex = ctx.index
        grad_cells = grad_cells.contiguous()  # (B*Z*Y*X, C)
        grad_entries = grad_features = None
        with torch.autocast(device_type=grad_cells.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                # d loss / d W[cell, pixel] = grad_cells[cell] . pixel_features[pixel], needed on W's entries only.
                sampled = torch.sparse.sampled_addmm(
                    index.weight_matrix(entry_weights), grad_cells, pixel_features.T, beta=0.0
                )
                grad_entries = sampled.values()
            if ctx.needs_input_grad[1]:
                grad_features = _sparse_dense_product(index.transposed_weight_matrix(entry_weights), grad_cells)
        return grad_entries, grad_features, None


def bev_pool(
    depth: torch.Tensor, features: torch.Tensor, index: BEVPoolIndex, *, collapse_z: bool = True
) -> torch.Tensor:
    """Splat per-pixel depth distributions times context features into the BEV grid.

    ``bev[:, cell] = sum over frustum points p in cell of depth[p] * features[pixel of p]``, summed over all cameras;
    points outside the grid are dropped. Differentiable in ``depth`` and ``features``.

    Args:
        depth: (B, N, D, h, w) depth distribution of every feature pixel (the softmax over D in LSS).
        features: (B, N, C, h, w) context features, same dtype and device as ``depth``.
        index: :class:`BEVPoolIndex` of the frustum geometry, on the same device.
        collapse_z: stack the Z slices along channels instead of keeping a Z axis.

    Returns:
        (B, Z*C, Y, X) when ``collapse_z``: slice z fills channels [z*C, (z+1)*C), as LSS's and BEVDet's
        ``torch.cat(bev.unbind(dim=2), dim=1)``; this is (B, C, Y, X) for the usual single z bin. Otherwise
        (B, C, Z, Y, X). The map comes out in channels-last memory format, the order the sparse product writes it in:
        convolutions take it as is, and ``.contiguous()`` gives NCHW strides when something needs them. Computed in
        the inputs' dtype, autocast or not.
    """
    batch, cameras, _, height, width = index.depth_shape
    check_shape("depth", depth, index.depth_shape, "(B, N, D, h, w) of the index's geometry")
    check_shape("features", features, (batch, cameras, None, height, width), "(B, N, C, h, w) of the index")
    if depth.dtype not in (torch.float32, torch.float64) or features.dtype != depth.dtype:
        # Each cell sums up to hundreds of points; the reference pools in float32 too (force_fp32), even under AMP.
        raise ValueError(f"depth ({depth.dtype}) and features ({features.dtype}) must both be float32 or both float64; "
                         f"cast them with .float() before pooling")
    if depth.device != index.device or features.device != index.device:
        raise ValueError(f"depth ({depth.device}), features ({features.device}) and the index ({index.device}) must "
                         f"be on the same device")
    channels = features.shape[2]
    point_weights = depth.reshape(-1).take(index.point_depth_index)  # (P,)
    entry_weights = point_weights.new_zeros(index.num_entries).index_add(0, index.point_entry, point_weights)  # (E,)
    pixel_features = features.permute(0, 1, 3, 4, 2).reshape(-1, channels)  # (B*N*h*w, C)
    cells = _SparseProduct.apply(entry_weights, pixel_features, index)  # (B*Z*Y*X, C)

    num_z, num_y, num_x = index.grid_shape
    cells = cells.view(batch, num_z, num_y, num_x, channels)
    if not collapse_z:
        return cells.permute(0, 4, 1, 2, 3)
    return cells.permute(0, 2, 3, 1, 4).reshape(batch, num_y, num_x, num_z * channels).permute(0, 3, 1, 2)


__all__ = ["BEVPoolIndex", "bev_pool"]
