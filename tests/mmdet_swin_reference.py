"""A small, deliberately plain re-implementation of GeoMIM's finetune encoder in mmdet layout, for parity tests.

Written from the project's reference notes (geomim.md sections 1.2 and 8.3-8.4), independently of
`geomim_hf.models.geomim`: fused qkv, mmdet's relative-position index construction, `nn.Unfold` patch merging, no
window shift, the (1, C, 56, 56) absolute position embedding resized bicubically, zero padding without a mask, and
`norm{i}` on the stage outputs. Its `state_dict()` has the checkpoint's key names (relative to
`encoders.camera.backbone.`). mmcv cannot be installed in CPU CI, so this stands in for `SwinTransformerBEVFT`.

With `absolute_position=False, shift_windows=True` it is the ImageNet baseline's `SwinTransformerOri`
(GeoMIM `bevdet/mmdet3d/models/backbones/swin_ori.py`, mmdet's `ShiftWindowMSA`): odd blocks of every stage roll the
zero-padded grid by `window // 2` and add mmdet's region mask (-100 between tokens of different regions of the padded
grid). Unlike transformers' `SwinLayer` by default, mmdet never turns the shift off when a stage's grid is no larger
than its window (stage 3 at 256x704: an 8x22 grid with window 8 still shifts by 4).
"""

import torch
from torch import nn
from torch.nn import functional as F


def mmdet_relative_position_index(window: int) -> torch.Tensor:
    """mmdet's `WindowMSA` construction: `double_step_seq` plus its transpose, flipped along dim 1."""
    rows = torch.arange(0, (2 * window - 1) * window, 2 * window - 1)
    columns = torch.arange(window)
    sequence = (rows[:, None] + columns[None, :]).reshape(1, -1)
    return (sequence + sequence.T).flip(1).contiguous()


class WindowMSA(nn.Module):
    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads = heads
        self.window = window
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.02)
        self.register_buffer("relative_position_index", mmdet_relative_position_index(window))

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`windows`: (batch * num_windows, L, C); `mask`: (num_windows, L, L) additive, or None."""
        count, length, dim = windows.shape
        qkv = self.qkv(windows).reshape(count, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]
        logits = (query * self.scale) @ key.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        logits = logits + bias.view(length, length, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            num_windows = mask.shape[0]
            logits = logits.view(count // num_windows, num_windows, self.heads, length, length) + mask[None, :, None]
            logits = logits.view(count, self.heads, length, length)
        out = (logits.softmax(dim=-1) @ value).transpose(1, 2).reshape(count, length, dim)
        return self.proj(out)


def mmdet_shift_mask(padded_height: int, padded_width: int, window: int, shift: int) -> torch.Tensor:
    """mmdet's SW-MSA mask, (num_windows, window**2, window**2): each axis of the padded grid splits into the slices
    `[0, -window)`, `[-window, -shift)`, `[-shift, end)`; tokens of different (row, column) slice pairs get -100."""
    regions = torch.zeros(padded_height, padded_width)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for label, (rows, columns) in enumerate((rows, columns) for rows in bands for columns in bands):
        regions[rows, columns] = label
    labels = regions.view(padded_height // window, window, padded_width // window, window)
    labels = labels.permute(0, 2, 1, 3).reshape(-1, window * window)
    different = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(different.shape).masked_fill(different, -100.0)


class ShiftWindowMSA(nn.Module):
    """Named as in mmdet for the `attn.w_msa.*` keys. GeoMIM forces `shift = 0`; the baseline shifts odd blocks."""

    def __init__(self, dim: int, heads: int, window: int, shift: int = 0):
        super().__init__()
        self.window = window
        self.shift = shift
        self.w_msa = WindowMSA(dim, heads, window)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, _, dim = tokens.shape
        w, s = self.window, self.shift
        grid = tokens.view(batch, height, width, dim)
        grid = F.pad(grid, (0, 0, 0, (w - width % w) % w, 0, (w - height % w) % w))  # pad first, then shift
        padded_h, padded_w = grid.shape[1], grid.shape[2]
        mask = None
        if s > 0:
            grid = torch.roll(grid, shifts=(-s, -s), dims=(1, 2))
            mask = mmdet_shift_mask(padded_h, padded_w, w, s).to(grid)
        windows = grid.view(batch, padded_h // w, w, padded_w // w, w, dim).permute(0, 1, 3, 2, 4, 5)
        out = self.w_msa(windows.reshape(-1, w * w, dim), mask)
        out = out.view(batch, padded_h // w, padded_w // w, w, w, dim).permute(0, 1, 3, 2, 4, 5)
        out = out.reshape(batch, padded_h, padded_w, dim)
        if s > 0:
            out = torch.roll(out, shifts=(s, s), dims=(1, 2))
        out = out[:, :height, :width, :]
        return out.reshape(batch, height * width, dim)


class FFN(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU()), nn.Linear(4 * dim, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layers(tokens)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftWindowMSA(dim, heads, window, shift)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FFN(dim)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        tokens = tokens + self.attn(self.norm1(tokens), height, width)
        return tokens + self.ffn(self.norm2(tokens))


class PatchMerging(nn.Module):
    """mmdet's merging: corner padding to even sizes, `nn.Unfold(2, stride=2)` (channel-major 4C), norm, reduction."""

    def __init__(self, dim: int):
        super().__init__()
        self.sampler = nn.Unfold(kernel_size=2, stride=2)
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int, int]:
        batch, _, dim = tokens.shape
        grid = tokens.view(batch, height, width, dim).permute(0, 3, 1, 2)
        grid = F.pad(grid, (0, width % 2, 0, height % 2))
        merged = self.sampler(grid).transpose(1, 2)  # (batch, L/4, 4C), feature 4c + k
        return self.reduction(self.norm(merged)), grid.shape[2] // 2, grid.shape[3] // 2


class Stage(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, window: int, merge: bool, shift_windows: bool = False):
        super().__init__()
        shifts = [window // 2 if shift_windows and index % 2 == 1 else 0 for index in range(depth)]
        self.blocks = nn.ModuleList([SwinBlock(dim, heads, window, shift) for shift in shifts])
        self.downsample = PatchMerging(dim) if merge else None


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int):
        super().__init__()
        self.patch = patch
        self.projection = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)


class MMDetGeoMIMSwin(nn.Module):
    """`SwinTransformerBEVFT` with GeoMIM's settings (or, with `absolute_position=False, shift_windows=True`, the
    baseline's `SwinTransformerOri`); `forward` returns the normed outputs of `out_indices`."""

    def __init__(
        self,
        embed_dim: int = 128,
        depths: tuple[int, ...] = (2, 2, 18, 2),
        heads: tuple[int, ...] = (4, 8, 16, 32),
        windows: tuple[int, ...] = (16, 16, 16, 8),
        out_indices: tuple[int, ...] = (2, 3),
        pretrain_img_size: int = 224,
        patch: int = 4,
        absolute_position: bool = True,
        shift_windows: bool = False,
    ):
        super().__init__()
        self.out_indices = out_indices
        self.patch_embed = PatchEmbed(embed_dim, patch)
        grid = pretrain_img_size // patch
        self.absolute_pos_embed = (
            nn.Parameter(torch.randn(1, embed_dim, grid, grid) * 0.02) if absolute_position else None
        )
        dims = [embed_dim * 2**index for index in range(len(depths))]
        self.stages = nn.ModuleList(
            [
                Stage(
                    dims[index], depths[index], heads[index], windows[index], merge=index < len(depths) - 1,
                    shift_windows=shift_windows,
                )
                for index in range(len(depths))
            ]
        )
        for index in out_indices:
            self.add_module(f"norm{index}", nn.LayerNorm(dims[index]))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        patch = self.patch_embed.patch
        _, _, height, width = images.shape
        images = F.pad(images, (0, (patch - width % patch) % patch, 0, (patch - height % patch) % patch))
        grid = self.patch_embed.projection(images)
        height, width = grid.shape[2], grid.shape[3]
        tokens = self.patch_embed.norm(grid.flatten(2).transpose(1, 2))
        if self.absolute_pos_embed is not None:
            position = F.interpolate(self.absolute_pos_embed, size=(height, width), mode="bicubic")
            tokens = tokens + position.flatten(2).transpose(1, 2)

        outputs = []
        for index, stage in enumerate(self.stages):
            for block in stage.blocks:
                tokens = block(tokens, height, width)
            if index in self.out_indices:
                normed = getattr(self, f"norm{index}")(tokens)
                outputs.append(normed.view(-1, height, width, normed.shape[-1]).permute(0, 3, 1, 2))
            if stage.downsample is not None:
                tokens, height, width = stage.downsample(tokens, height, width)
        return outputs
