"""A small, deliberately plain re-implementation of GeoMIM's finetune encoder in mmdet layout, for parity tests.

Written from the project's reference notes (geomim.md sections 1.2 and 8.3-8.4), independently of
`geomim_hf.models.geomim`: fused qkv, mmdet's relative-position index construction, `nn.Unfold` patch merging, no
window shift, the (1, C, 56, 56) absolute position embedding resized bicubically, zero padding without a mask, and
`norm{i}` on the stage outputs. Its `state_dict()` has the checkpoint's key names (relative to
`encoders.camera.backbone.`). mmcv cannot be installed in CPU CI, so this stands in for `SwinTransformerBEVFT`.
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

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        count, length, dim = windows.shape
        qkv = self.qkv(windows).reshape(count, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0], qkv[1], qkv[2]
        logits = (query * self.scale) @ key.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        logits = logits + bias.view(length, length, -1).permute(2, 0, 1).unsqueeze(0)
        out = (logits.softmax(dim=-1) @ value).transpose(1, 2).reshape(count, length, dim)
        return self.proj(out)


class ShiftWindowMSA(nn.Module):
    """Named as in mmdet for the `attn.w_msa.*` keys; GeoMIM sets the shift to 0, so there is none here."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.window = window
        self.w_msa = WindowMSA(dim, heads, window)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, _, dim = tokens.shape
        w = self.window
        grid = tokens.view(batch, height, width, dim)
        grid = F.pad(grid, (0, 0, 0, (w - width % w) % w, 0, (w - height % w) % w))
        padded_h, padded_w = grid.shape[1], grid.shape[2]
        windows = grid.view(batch, padded_h // w, w, padded_w // w, w, dim).permute(0, 1, 3, 2, 4, 5)
        out = self.w_msa(windows.reshape(-1, w * w, dim))
        out = out.view(batch, padded_h // w, padded_w // w, w, w, dim).permute(0, 1, 3, 2, 4, 5)
        out = out.reshape(batch, padded_h, padded_w, dim)[:, :height, :width, :]
        return out.reshape(batch, height * width, dim)


class FFN(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU()), nn.Linear(4 * dim, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layers(tokens)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftWindowMSA(dim, heads, window)
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
    def __init__(self, dim: int, depth: int, heads: int, window: int, merge: bool):
        super().__init__()
        self.blocks = nn.ModuleList([SwinBlock(dim, heads, window) for _ in range(depth)])
        self.downsample = PatchMerging(dim) if merge else None


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int):
        super().__init__()
        self.patch = patch
        self.projection = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)


class MMDetGeoMIMSwin(nn.Module):
    """`SwinTransformerBEVFT` with GeoMIM's settings; `forward` returns the normed outputs of `out_indices`."""

    def __init__(
        self,
        embed_dim: int = 128,
        depths: tuple[int, ...] = (2, 2, 18, 2),
        heads: tuple[int, ...] = (4, 8, 16, 32),
        windows: tuple[int, ...] = (16, 16, 16, 8),
        out_indices: tuple[int, ...] = (2, 3),
        pretrain_img_size: int = 224,
        patch: int = 4,
    ):
        super().__init__()
        self.out_indices = out_indices
        self.patch_embed = PatchEmbed(embed_dim, patch)
        grid = pretrain_img_size // patch
        self.absolute_pos_embed = nn.Parameter(torch.randn(1, embed_dim, grid, grid) * 0.02)
        dims = [embed_dim * 2**index for index in range(len(depths))]
        self.stages = nn.ModuleList(
            [
                Stage(dims[index], depths[index], heads[index], windows[index], merge=index < len(depths) - 1)
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
