"""PyTorch GeoMIM pretraining: masked multi-view image modelling that reconstructs a LiDAR detector's BEV features.

GeoMIM ("Towards Better 3D Knowledge Transfer via Masked Image Modeling for Multi-view 3D Understanding", Liu et al.,
ICCV 2023, arXiv 2303.11325) pretrains the multi-camera Swin encoder of [`GeoMIMModel`] as follows (ported from
`SwinTransformerBEV` in `pretrain/mmdet3d/models/backbones/swin_geomim.py`, `DepthLSSTransformGT` and
`BEVFusionGeoMIM` of Sense-X/GeoMIM):

1. **Dual complementary masks.** One random permutation of the stride-32 cells, shared by every camera and sample,
   splits them into two halves. Every window attention of the encoder keeps each half to itself, so a single pass
   encodes the images twice, each time from one half only.
2. **Neck.** The stride-32 map is projected, upsampled and added to the stride-16 map, smoothed by one (group-masked)
   Swin block and projected to the decoder width.
3. **Decoders.** Each group keeps its own tokens and gets a mask token everywhere else, plus a fixed sin-cos position
   embedding. A semantic branch (8 ViT blocks, cross-view attention by image row after blocks 1 and 5) and a depth
   branch (taken after block 3, gated by a camera-aware squeeze-excitation on the 22-value camera vector, 4 blocks
   with one cross-view attention) run on both groups at once.
4. **LSS projection.** A depth net on the concatenated branches predicts a depth distribution and context features,
   which are splatted into a 0.3 m BEV grid in the LiDAR frame, downsampled and mapped to the teacher's 256 channels.
5. **Loss.** MSE against the teacher's BEV features standardised per 18 x 18 patch, averaged over both groups, plus
   0.01 x the BCE of the depth distribution against LiDAR depth.

After pretraining only the encoder is kept: [`GeoMIMForPretraining.save_encoder`] writes it as a [`GeoMIMModel`]
checkpoint.

Where this port differs from the original, the difference does not change what a trained model computes: padding and
cells seen by neither group form a group of their own instead of attending to everything (their outputs are never
used), the view transform runs in the autocast dtype instead of float32 (pooling stays in float32), and a NaN
reconstruction loss is returned as it is instead of being silently replaced by 0.
"""

from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.utils import ModelOutput

from ...geometry import BEVPoolIndex, bev_pool, create_frustum, depth_bin_targets, depth_loss, frustum_to_ego
from ...geometry._checks import check_shape
from .configuration_geomim import GeoMIMConfig
from .configuration_geomim_pretraining import GeoMIMPretrainingConfig
from .modeling_geomim import GeoMIMLayer, GeoMIMModel, GeoMIMPreTrainedModel, expand_token_groups

NUM_MASK_GROUPS = 2
# Variance floor of the per-patch target standardisation (MAE's norm_pix_loss value, kept by GeoMIM).
TARGET_NORM_EPS = 1e-6


@dataclass
class GeoMIMForPretrainingOutput(ModelOutput):
    r"""
    Outputs of [`GeoMIMForPretraining`]. BEV maps are laid out `(X, Y)` like the LiDAR teacher's (bevfusion's voxel
    order), not BEVDet's `(Y, X)`.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `teacher_features` is given):
            `reconstruction_loss + depth_loss` (the depth term only when `depth_targets` is given).
        reconstruction_loss (`torch.FloatTensor` of shape `()`, *optional*):
            MSE between each group's reconstruction and the normalised target over every cell and channel, averaged
            over the two groups.
        depth_loss (`torch.FloatTensor` of shape `()`, *optional*):
            Weighted BCE of the depth distributions on the patches with a LiDAR depth, averaged over the two groups.
        reconstruction (`torch.FloatTensor` of shape `(batch_size, 2, teacher_channels, X, Y)`):
            The BEV features reconstructed from each mask group.
        normalized_target (`torch.FloatTensor` of shape `(batch_size, teacher_channels, X, Y)`, *optional*):
            The teacher's features standardised per patch: what `reconstruction` is trained to match.
        mask (`torch.FloatTensor` of shape `(2, height / 32, width / 32)`):
            `mask[g]` is 1 on the stride-32 cells hidden from group `g`, shared by every camera and sample. Pass it
            back as `mask=` to reuse it.
        depth_probabilities (`torch.FloatTensor` of shape `(batch_size, 2, num_cameras, num_depth_bins, height / 16,
        width / 16)`):
            Each group's depth distribution (softmax over the bins) for every feature pixel.
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    depth_loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    normalized_target: torch.FloatTensor | None = None
    mask: torch.FloatTensor | None = None
    depth_probabilities: torch.FloatTensor | None = None


def normalize_bev_target(target: torch.Tensor, patch_size: int, eps: float = TARGET_NORM_EPS) -> torch.Tensor:
    """Standardises a BEV map within each `patch_size x patch_size` patch: `(x - mean) / sqrt(var + eps)`, with the
    mean and the unbiased variance taken over all channels and cells of the patch (MAE's `norm_pix_loss` on BEV
    patches, as GeoMIM does to the teacher's features).

    Args:
        target: `(batch, channels, X, Y)`, both sides multiples of `patch_size`.

    Returns:
        `(batch, channels, X, Y)` in float32 or wider.
    """
    check_shape("target", target, (None, None, None, None), "(B, C, X, Y)")
    batch, channels, size_x, size_y = target.shape
    if size_x % patch_size or size_y % patch_size:
        raise ValueError(f"the {size_x} x {size_y} BEV target does not split into {patch_size} x {patch_size} patches")
    target = target.to(torch.promote_types(target.dtype, torch.float32))
    patches = target.view(batch, channels, size_x // patch_size, patch_size, size_y // patch_size, patch_size)
    mean = patches.mean(dim=(1, 3, 5), keepdim=True)
    variance = patches.var(dim=(1, 3, 5), keepdim=True, correction=1)
    return ((patches - mean) / (variance + eps).sqrt()).view(batch, channels, size_x, size_y)


def bev_cosine_similarity(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between each group's reconstruction `(batch, 2, C, X, Y)` and the target `(batch, C, X, Y)`,
    over all channels and cells of a sample: `(batch, 2)`."""
    return F.cosine_similarity(reconstruction.flatten(2).float(), target.flatten(1).float()[:, None], dim=-1)


def sincos_position_grid(channels: int, grid_size: int) -> torch.Tensor:
    """The fixed 2D sin-cos position embedding of MAE and MixMIM on a `grid_size x grid_size` grid, channel-first
    `(1, channels, grid_size, grid_size)`: the first half of the channels encodes the column, the second the row,
    each as `[sin(p * w_k), cos(p * w_k)]` with `w_k = 10000^(-k / (channels / 4))`."""
    if channels % 4:
        raise ValueError(f"a 2D sin-cos embedding needs channels divisible by 4, got {channels}")
    frequencies = 1.0 / 10000 ** (torch.arange(channels // 4, dtype=torch.float64) / (channels // 4))
    positions = torch.arange(grid_size, dtype=torch.float64)
    angles = positions[:, None] * frequencies[None, :]  # (grid, channels / 4)
    axis_embedding = torch.cat([angles.sin(), angles.cos()], dim=1)  # (grid, channels / 2)
    rows = axis_embedding[:, None, :].expand(grid_size, grid_size, -1)
    columns = axis_embedding[None, :, :].expand(grid_size, grid_size, -1)
    table = torch.cat([columns, rows], dim=-1)  # (row, column, channels)
    return table.permute(2, 0, 1).unsqueeze(0).float()


class GeoMIMCrossViewBlock(Block):
    """Cross-view attention (the original's `WBlock`): a pre-norm ViT block whose attention runs over one image row of
    all cameras at once, `num_cameras x width` tokens, so that cameras exchange information along the horizon.

    It adds no camera embedding, so it treats the cameras as a set. Zero-initialised output projections make it start
    as the identity.
    """

    def forward(self, hidden_states: torch.Tensor, num_cameras: int, height: int, width: int) -> torch.Tensor:
        """`hidden_states`: `(samples * num_cameras, height * width, channels)`, cameras of a sample consecutive."""
        channels = hidden_states.shape[-1]
        # (samples * cameras, h * w, C) -> (samples * h, cameras * w, C): one sequence per image row of the rig
        rows = hidden_states.view(-1, num_cameras, height, width, channels).transpose(1, 2)
        rows = super().forward(rows.reshape(-1, num_cameras * width, channels))
        rows = rows.view(-1, height, num_cameras, width, channels).transpose(1, 2)
        return rows.reshape(-1, height * width, channels)


class GeoMIMSqueezeExcitation(nn.Module):
    """Squeeze-excitation gate driven by an external vector: `features * sigmoid(expand(relu(reduce(vector))))`."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_reduce = nn.Linear(channels, channels)
        self.activation = nn.ReLU()
        self.conv_expand = nn.Linear(channels, channels)

    def forward(self, features: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        """`features`: `(images, tokens, channels)`; `vector`: `(images, 1, channels)`."""
        return features * self.conv_expand(self.activation(self.conv_reduce(vector))).sigmoid()


class GeoMIMCameraAwareGate(nn.Module):
    """Camera-aware depth features (the original's `PoseSEModule`, after BEVDepth): the 22-value camera vector, batch
    normalised and embedded by an MLP, gates every token of its camera's features."""

    def __init__(self, config: GeoMIMPretrainingConfig):
        super().__init__()
        self.bn = nn.BatchNorm1d(config.camera_vector_size)
        self.depth_mlp = Mlp(config.camera_vector_size, config.decoder_hidden_size, config.decoder_hidden_size)
        self.depth_se = GeoMIMSqueezeExcitation(config.decoder_hidden_size)

    def forward(self, features: torch.Tensor, camera_vector: torch.Tensor) -> torch.Tensor:
        """`features`: `(images, tokens, channels)`; `camera_vector`: `(images, camera_vector_size)`."""
        embedded = self.depth_mlp(self.bn(camera_vector))[:, None, :]  # (images, 1, channels)
        return self.depth_se(features, embedded)


class GeoMIMViewTransform(nn.Module):
    """Lift-Splat-Shoot on the decoder features (the original's `DepthLSSTransformGT`): a depth net predicts a depth
    distribution and context features per feature pixel, `geomim_hf.geometry.bev_pool` splats their outer product
    into the BEV grid, and strided convolutions downsample the map. Module names follow the original."""

    def __init__(self, config: GeoMIMPretrainingConfig):
        super().__init__()
        hidden, channels = config.decoder_hidden_size, config.bev_channels
        self.num_depth_bins = config.bev_grid.num_depth_bins
        # Input: depth-branch and semantic features concatenated, in that order.
        self.depthnet = nn.Sequential(
            nn.Conv2d(2 * hidden, hidden, 3, padding=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, self.num_depth_bins + channels, 1),
        )
        if config.bev_downsample == 1:
            self.downsample = nn.Identity()
        else:
            self.downsample = nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
                nn.Conv2d(channels, channels, 3, stride=config.bev_downsample, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            )

    def forward(
        self, depth_features: torch.Tensor, semantic_features: torch.Tensor, index: BEVPoolIndex
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask group.

        Args:
            depth_features, semantic_features: `(batch, cameras, channels, h, w)` decoder outputs.
            index: the geometry of the batch's frustum in the LSS grid.

        Returns:
            bev: `(batch, bev_channels, X', Y')` downsampled BEV features, `(X, Y)` layout.
            depth_probabilities: `(batch, cameras, num_depth_bins, h, w)`.
        """
        batch, cameras = depth_features.shape[:2]
        features = torch.cat([depth_features, semantic_features], dim=2).flatten(0, 1)  # (B * N, 2 * hidden, h, w)
        logits = self.depthnet(features).unflatten(0, (batch, cameras))  # (B, N, D + C, h, w)
        # The splat sums hundreds of points per cell: it runs in float32 whatever the autocast dtype.
        depth_probabilities = logits[:, :, : self.num_depth_bins].float().softmax(dim=2)
        context = logits[:, :, self.num_depth_bins :].float()
        # bev_pool lays the grid out (Y, X); the teacher's map is (X, Y). This transpose is the one place they meet.
        bev = bev_pool(depth_probabilities, context, index).transpose(-1, -2)  # (B, C, X, Y)
        return self.downsample(bev), depth_probabilities


class GeoMIMForPretraining(GeoMIMPreTrainedModel):
    """GeoMIM masked multi-view pretraining: the [`GeoMIMModel`] encoder (`self.geomim`), the neck and decoders, the
    LSS projection and the reconstruction head. Train it on six-camera batches in the LiDAR frame with a LiDAR
    teacher's BEV features as the target, then keep the encoder with [`~GeoMIMForPretraining.save_encoder`]."""

    config: GeoMIMPretrainingConfig
    target_input_names = ("teacher_features", "depth_targets")

    def __init__(self, config: GeoMIMPretrainingConfig):
        super().__init__(config)
        encoder_config: GeoMIMConfig = config.encoder_config
        hidden = config.decoder_hidden_size
        stride16_width, stride32_width = (encoder_config.embed_dim * 2**index
                                          for index in (encoder_config.num_layers - 2, encoder_config.num_layers - 1))
        self.geomim = GeoMIMModel(encoder_config)

        # Neck: top-down merge of the last two stages.
        self.up_p4_fc = nn.Linear(stride32_width, stride16_width)
        self.up_smooth_p4 = GeoMIMLayer(
            encoder_config,
            dim=stride16_width,
            num_heads=encoder_config.num_heads[-2],
            window_size=config.neck_window_size,
            shift_size=0,
            drop_path_rate=0.0,
        )
        self.final_norm = nn.LayerNorm(stride16_width, eps=config.layer_norm_eps)
        self.decoder_embed_new = nn.Linear(stride16_width, hidden)

        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden))
        # Fixed, never trained (MixMIM's sin-cos table); a buffer so that it still saves and loads.
        grid = config.decoder_position_grid
        self.register_buffer("decoder_pos_embed", torch.zeros(1, hidden, grid, grid))

        # timm's blocks, as in the original (timm now defaults to eps 1e-6; the original's LayerNorm had 1e-5).
        layer_norm = partial(nn.LayerNorm, eps=config.layer_norm_eps)
        block_arguments = dict(dim=hidden, num_heads=config.decoder_num_heads, mlp_ratio=config.decoder_mlp_ratio,
                               qkv_bias=True, norm_layer=layer_norm)
        self.decoder_blocks = nn.ModuleList([Block(**block_arguments) for _ in range(config.decoder_depth)])
        self.decoder_norm = layer_norm(hidden)
        self.cam_pose = GeoMIMCameraAwareGate(config)
        self.decoder_blocks_pix = nn.ModuleList([Block(**block_arguments) for _ in range(config.depth_decoder_depth)])
        self.decoder_norm_pix = layer_norm(hidden)
        # The semantic branch's cross-view blocks first, then the depth branch's (the original's order).
        num_cross_view = len(config.cross_view_blocks) + len(config.depth_cross_view_blocks)
        self.decoder_cross_module = nn.ModuleList(
            [GeoMIMCrossViewBlock(**block_arguments) for _ in range(num_cross_view)]
        )

        self.vtransform = GeoMIMViewTransform(config)
        self.prediction_head = nn.Conv2d(config.bev_channels, config.teacher_channels, kernel_size=1)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, GeoMIMForPretraining):
            init.trunc_normal_(module.mask_token, std=self.config.initializer_range)
            init.copy_(
                module.decoder_pos_embed,
                sincos_position_grid(self.config.decoder_hidden_size, self.config.decoder_position_grid),
            )
            # Every cross-view block starts as the identity. Done here, on the model, because the model is initialised
            # after all its children (so the zeros are final) and, unlike a block, it is never skipped for holding no
            # parameters of its own.
            for block in module.decoder_cross_module:
                for layer in (block.attn.proj, block.mlp.fc2):
                    init.zeros_(layer.weight)
                    init.zeros_(layer.bias)

    # ------------------------------------------------------------------ masks

    def random_masking(self, grid: tuple[int, int], noise: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """Draws the two complementary masks on the stride-32 `grid`, shared by all cameras and samples.

        The cells are ranked by `noise` `(grid_height * grid_width,)` (uniform if not given): group 0 sees the lowest
        `L // 2`, group 1 the next `L // 2`, where `L` is the number of cells; with an odd `L` the last cell is seen by
        neither, as in the original.

        Returns:
            `(2, grid_height, grid_width)` float, 1 where the cell is hidden from that group.
        """
        num_cells = grid[0] * grid[1]
        if noise is None:
            noise = torch.rand(num_cells, device=device)
        check_shape("noise", noise, (num_cells,), f"(height / {self.config.mask_stride} * width / "
                                                  f"{self.config.mask_stride},)")
        ranks = noise.argsort().argsort()  # rank of every cell
        group_size = num_cells // NUM_MASK_GROUPS
        groups = torch.stack([(ranks >= g * group_size) & (ranks < (g + 1) * group_size) for g in range(2)])
        return (~groups).float().view(NUM_MASK_GROUPS, *grid).to(device)

    def token_groups_from_mask(self, mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The group of every stride-32 cell, `(grid_height, grid_width)` long: 0 or 1 where that group sees the cell,
        -1 where neither does. Rejects masks that are not `(2, grid_height, grid_width)` 0/1 maps or that show a cell
        to both groups."""
        check_shape("mask", mask, (NUM_MASK_GROUPS, *grid), f"(2, height / {self.config.mask_stride}, "
                                                             f"width / {self.config.mask_stride})")
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must hold 0 (visible to the group) and 1 (hidden from it) only")
        visible = mask == 0
        if (visible[0] & visible[1]).any():
            raise ValueError("mask shows some cells to both groups; the two groups must be disjoint")
        return torch.where(visible[0], 0, torch.where(visible[1], 1, -1))

    # ------------------------------------------------------------------ steps

    def forward_encoder(
        self, pixel_values: torch.Tensor, token_groups: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both groups' encodings in one pass.

        Returns:
            The normed stride-16 and stride-32 maps, channel-last `(batch * cameras, h, w, channels)`.
        """
        stride16, stride32 = self.geomim(pixel_values, token_groups=token_groups).feature_maps
        return (stride16.flatten(0, 1).permute(0, 2, 3, 1), stride32.flatten(0, 1).permute(0, 2, 3, 1))

    def forward_neck(
        self, stride16: torch.Tensor, stride32: torch.Tensor, token_groups: torch.Tensor
    ) -> torch.Tensor:
        """Top-down merge: `(images, h, w, C16)` and `(images, h / 2, w / 2, C32)` to `(images, h, w, hidden)`."""
        _, height, width, _ = stride16.shape
        top_down = self.up_p4_fc(stride32).permute(0, 3, 1, 2)
        top_down = F.interpolate(top_down, size=(height, width), mode="nearest").permute(0, 2, 3, 1)
        stride16_groups = expand_token_groups(token_groups, 2, height, width)
        merged = self.up_smooth_p4(stride16 + top_down, stride16_groups)
        return self.decoder_embed_new(self.final_norm(merged))

    def fill_mask_tokens(self, features: torch.Tensor, token_groups: torch.Tensor) -> torch.Tensor:
        """Each group's decoder input: its own tokens, the mask token elsewhere, plus the decoder position embedding.

        Args:
            features: `(images, h, w, hidden)` neck output.

        Returns:
            `(2 * images, h * w, hidden)`, group 0's images first.
        """
        _, height, width, hidden = features.shape
        stride16_groups = expand_token_groups(token_groups, 2, height, width)
        mask_token = self.mask_token.to(features.dtype).view(1, 1, 1, hidden)
        groups = [torch.where((stride16_groups == g)[None, :, :, None], features, mask_token)
                  for g in range(NUM_MASK_GROUPS)]
        tokens = torch.cat(groups).flatten(1, 2)  # (2 * images, h * w, hidden)
        position = F.interpolate(self.decoder_pos_embed.float(), size=(height, width), mode="bicubic",
                                 align_corners=False)
        return tokens + position.to(tokens.dtype).flatten(2).transpose(1, 2)

    def forward_decoder(
        self, tokens: torch.Tensor, camera_vector: torch.Tensor, num_cameras: int, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The semantic and depth branches, with cross-view attention, for both groups at once.

        Args:
            tokens: `(2 * samples * cameras, h * w, hidden)` from [`fill_mask_tokens`].
            camera_vector: `(samples * cameras, camera_vector_size)`.

        Returns:
            semantic, depth: `(2 * samples * cameras, hidden, h, w)` each.
        """
        config = self.config
        cross_view = iter(self.decoder_cross_module)
        depth_input = None
        for index, block in enumerate(self.decoder_blocks):
            tokens = block(tokens)
            if index in config.cross_view_blocks:
                tokens = next(cross_view)(tokens, num_cameras, height, width)
            if index == config.depth_branch_block:
                depth_input = tokens
        semantic = self.decoder_norm(tokens)

        # Both groups share the camera vector; concatenated like the tokens, as the original feeds the batch norm.
        depth = self.cam_pose(depth_input, torch.cat([camera_vector] * NUM_MASK_GROUPS))
        for index, block in enumerate(self.decoder_blocks_pix):
            depth = block(depth)
            if index in config.depth_cross_view_blocks:
                depth = next(cross_view)(depth, num_cameras, height, width)
        depth = self.decoder_norm_pix(depth)

        def channel_first(sequence: torch.Tensor) -> torch.Tensor:
            return sequence.transpose(1, 2).unflatten(2, (height, width))

        return channel_first(semantic), channel_first(depth)

    def forward_bev(
        self, semantic: torch.Tensor, depth: torch.Tensor, index: BEVPoolIndex, batch_size: int, num_cameras: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each group through the LSS projection and the head, separately, as the original does (so that the batch
        norms never see the other group).

        Returns:
            reconstruction: `(batch, 2, teacher_channels, X, Y)`.
            depth_probabilities: `(batch, 2, cameras, num_depth_bins, h, w)`.
        """
        reconstructions, depth_probabilities = [], []
        group_shape = (NUM_MASK_GROUPS, batch_size, num_cameras)
        for depth_group, semantic_group in zip(depth.unflatten(0, group_shape), semantic.unflatten(0, group_shape)):
            bev, group_depth_probabilities = self.vtransform(depth_group, semantic_group, index)
            reconstructions.append(self.prediction_head(bev))
            depth_probabilities.append(group_depth_probabilities)
        return torch.stack(reconstructions, dim=1), torch.stack(depth_probabilities, dim=1)

    def forward_loss(
        self,
        reconstruction: torch.Tensor,
        depth_probabilities: torch.Tensor,
        teacher_features: torch.Tensor,
        depth_targets: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns the per-patch normalised target, the reconstruction MSE and the depth BCE (or `None`), each
        averaged over the two groups."""
        target = normalize_bev_target(teacher_features, self.config.target_patch_size)
        reconstruction_loss = torch.stack(
            [F.mse_loss(reconstruction[:, g].float(), target) for g in range(NUM_MASK_GROUPS)]
        ).mean()
        if depth_targets is None:
            return target, reconstruction_loss, None
        bin_targets = depth_bin_targets(depth_targets.float(), self.config.bev_grid)  # (B, N, D, h, w)
        weighted_bce = torch.stack(
            [depth_loss(depth_probabilities[:, g], bin_targets, weight=self.config.depth_loss_weight)
             for g in range(NUM_MASK_GROUPS)]
        )
        return target, reconstruction_loss, weighted_bce.mean()

    def check_inputs(
        self,
        pixel_values: torch.Tensor,
        camera_intrinsics: torch.Tensor,
        camera_to_lidar: torch.Tensor,
        camera_vector: torch.Tensor,
        teacher_features: torch.Tensor | None,
        depth_targets: torch.Tensor | None,
    ) -> None:
        check_shape("pixel_values", pixel_values, (None, None, self.config.encoder_config.num_channels, None, None),
                    "(B, N, 3, H, W)")
        batch, cameras, _, height, width = pixel_values.shape
        stride = self.config.mask_stride
        if height % stride or width % stride:
            raise ValueError(f"GeoMIM pretraining draws its masks on the stride-{stride} grid: the image size "
                             f"{height} x {width} must be a multiple of {stride}")
        check_shape("camera_intrinsics", camera_intrinsics, (batch, cameras, 3, 3), "(B, N, 3, 3)")
        check_shape("camera_to_lidar", camera_to_lidar, (batch, cameras, 4, 4), "(B, N, 4, 4)")
        check_shape("camera_vector", camera_vector, (batch, cameras, self.config.camera_vector_size),
                    "(B, N, camera_vector_size)")
        if teacher_features is not None:
            check_shape("teacher_features", teacher_features,
                        (batch, self.config.teacher_channels, *self.config.bev_output_size),
                        "(B, teacher_channels, X, Y) in the teacher's (X, Y) layout")
        if depth_targets is not None:
            check_shape("depth_targets", depth_targets,
                        (batch, cameras, height // self.config.feature_stride, width // self.config.feature_stride),
                        f"(B, N, H / {self.config.feature_stride}, W / {self.config.feature_stride})")

    def forward(
        self,
        pixel_values: torch.Tensor,
        camera_intrinsics: torch.Tensor,
        camera_to_lidar: torch.Tensor,
        camera_vector: torch.Tensor,
        post_rot: torch.Tensor | None = None,
        post_tran: torch.Tensor | None = None,
        lidar_augmentation: torch.Tensor | None = None,
        teacher_features: torch.Tensor | None = None,
        depth_targets: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> GeoMIMForPretrainingOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_cameras, 3, height, width)`):
                Normalised RGB images; height and width multiples of 32.
            camera_intrinsics (`torch.FloatTensor` of shape `(batch_size, num_cameras, 3, 3)`):
                Intrinsics of the original (unaugmented) images.
            camera_to_lidar (`torch.FloatTensor` of shape `(batch_size, num_cameras, 4, 4)`):
                Camera -> LiDAR (key frame) transforms: pretraining runs in the teacher's LiDAR frame.
            camera_vector (`torch.FloatTensor` of shape `(batch_size, num_cameras, 22)`):
                The camera-aware depth branch's input (intrinsics, image augmentation, camera -> ego calibration).
            post_rot (`torch.FloatTensor` of shape `(batch_size, num_cameras, 3, 3)`, *optional*):
                Image augmentation, with `post_tran` `(batch_size, num_cameras, 3)`: pixel `p` of the original image
                lands at `post_rot @ p + post_tran`.
            lidar_augmentation (`torch.FloatTensor` of shape `(batch_size, 4, 4)`, *optional*):
                BEV augmentation (flip) of the LiDAR frame, applied to the points the teacher saw.
            teacher_features (`torch.FloatTensor` of shape `(batch_size, teacher_channels, X, Y)`, *optional*):
                The LiDAR teacher's BEV map in its `(X, Y)` layout (from the target cache or a live teacher). Without
                it the model only reconstructs.
            depth_targets (`torch.FloatTensor` of shape `(batch_size, num_cameras, height / 16, width / 16)`,
            *optional*):
                Nearest LiDAR depth per feature patch in metres, 0 where none.
            noise (`torch.FloatTensor` of shape `(height / 32 * width / 32,)`, *optional*):
                Ranks the stride-32 cells for [`~GeoMIMForPretraining.random_masking`]; fixes the masks.
            mask (`torch.FloatTensor` of shape `(2, height / 32, width / 32)`, *optional*):
                Explicit masks, as returned in `outputs.mask`; takes precedence over `noise`.
        """
        self.check_inputs(pixel_values, camera_intrinsics, camera_to_lidar, camera_vector, teacher_features,
                          depth_targets)
        batch_size, num_cameras, _, height, width = pixel_values.shape
        grid = (height // self.config.mask_stride, width // self.config.mask_stride)
        if mask is None:
            mask = self.random_masking(grid, noise, pixel_values.device)
        mask = mask.to(pixel_values.device)
        token_groups = self.token_groups_from_mask(mask, grid)

        stride16, stride32 = self.forward_encoder(pixel_values, token_groups)
        tokens = self.fill_mask_tokens(self.forward_neck(stride16, stride32, token_groups), token_groups)
        feature_height, feature_width = stride16.shape[1:3]
        semantic, depth = self.forward_decoder(
            tokens, camera_vector.flatten(0, 1).to(tokens.dtype), num_cameras, feature_height, feature_width
        )

        frustum = create_frustum((height, width), self.config.feature_stride, self.config.bev_grid,
                                 device=pixel_values.device)
        geometry = frustum_to_ego(
            frustum,
            camera_intrinsics.float(),
            camera_to_lidar.float(),
            None if post_rot is None else post_rot.float(),
            None if post_tran is None else post_tran.float(),
            None if lidar_augmentation is None else lidar_augmentation.float(),
        )
        index = BEVPoolIndex.from_geometry(geometry, self.config.bev_grid)
        reconstruction, depth_probabilities = self.forward_bev(semantic, depth, index, batch_size, num_cameras)

        loss = reconstruction_loss = weighted_depth_loss = target = None
        if teacher_features is not None:
            target, reconstruction_loss, weighted_depth_loss = self.forward_loss(
                reconstruction, depth_probabilities, teacher_features, depth_targets
            )
            loss = reconstruction_loss if weighted_depth_loss is None else reconstruction_loss + weighted_depth_loss
        return GeoMIMForPretrainingOutput(
            loss=loss,
            reconstruction_loss=reconstruction_loss,
            depth_loss=weighted_depth_loss,
            reconstruction=reconstruction,
            normalized_target=target,
            mask=mask,
            depth_probabilities=depth_probabilities,
        )

    def save_encoder(self, save_directory, **kwargs) -> None:
        """Saves the pretrained encoder alone as a [`GeoMIMModel`] checkpoint (its `config.json` and weights), the
        format that `GeoMIMModel.from_pretrained`, `GeoMIMBackbone.from_pretrained` and the BEV detectors load.
        `kwargs` go to `save_pretrained` (e.g. `safe_serialization`, `push_to_hub`)."""
        self.geomim.save_pretrained(save_directory, **kwargs)


__all__ = [
    "GeoMIMForPretraining",
    "GeoMIMForPretrainingOutput",
    "bev_cosine_similarity",
    "normalize_bev_target",
]
