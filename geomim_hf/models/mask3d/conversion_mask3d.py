"""Conversion of ViT checkpoints into the RGB encoder of Mask3D ([`Mask3DModel`]): the one place that knows foreign key
names.

Two source layouts:

- **timm** (`patch_embed.proj`, `blocks.{i}.attn.qkv`, a final `norm`): timm ViTs and the original MAE release
  (facebookresearch/mae, whose pretraining checkpoints also hold the decoder, dropped here). Fused `qkv` rows are split
  into query, key and value. The number of heads cannot be read from the weights: it is an argument (timm's ViT-Ti/S/B/L
  all use 64-dimensional heads, the default).
- **transformers** `ViTModel` / `ViTMAEModel` (also from their heads' checkpoints): loaded by transformers itself, which
  also renames v4 keys, and copied one to one, since `Mask3DModel` uses their weight names.

Everything that is not the encoder is dropped by an explicit list and reported; any other key is an error. The output
keeps the source's square grid unless another `image_size` is asked for, in which case the position table is resized
bicubically once, exactly as the encoder would resize it on the fly.
"""

from collections.abc import Mapping
from dataclasses import replace

import torch

from ...checkpoint_conversion import (
    CheckpointConversionError,
    ConversionReport,
    KeyRule,
    apply_key_rules,
    load_converted,
    split_fused_qkv,
)
from .configuration_mask3d import Mask3DConfig
from .modeling_mask3d import Mask3DModel, resize_position_table

TIMM_HEAD_DIM = 64

# timm / MAE key -> Mask3DModel key, drops first.
TIMM_RULES = (
    KeyRule(r"head\..+", drop="classifier head"),
    KeyRule(r"mask_token|decoder_.+", drop="MAE decoder (pretraining only)"),
    KeyRule(r"cls_token", ("embeddings.cls_token",)),
    KeyRule(r"pos_embed", ("embeddings.position_embeddings",)),
    KeyRule(r"patch_embed\.proj\.(?P<p>weight|bias)", ("embeddings.patch_embeddings.projection.{p}",)),
    KeyRule(r"blocks\.(?P<i>\d+)\.norm1\.(?P<p>weight|bias)", ("layers.{i}.layernorm_before.{p}",)),
    KeyRule(r"blocks\.(?P<i>\d+)\.norm2\.(?P<p>weight|bias)", ("layers.{i}.layernorm_after.{p}",)),
    KeyRule(
        r"blocks\.(?P<i>\d+)\.attn\.qkv\.(?P<p>weight|bias)",
        ("layers.{i}.attention.q_proj.{p}", "layers.{i}.attention.k_proj.{p}", "layers.{i}.attention.v_proj.{p}"),
        split_fused_qkv,
    ),
    KeyRule(r"blocks\.(?P<i>\d+)\.attn\.proj\.(?P<p>weight|bias)", ("layers.{i}.attention.o_proj.{p}",)),
    KeyRule(r"blocks\.(?P<i>\d+)\.mlp\.fc(?P<n>[12])\.(?P<p>weight|bias)", ("layers.{i}.mlp.fc{n}.{p}",)),
    KeyRule(r"norm\.(?P<p>weight|bias)", ("layernorm.{p}",)),
)
# A transformers ViT / ViTMAE has Mask3DModel's names already: everything but its pooler and mask token is copied.
TRANSFORMERS_RULES = (
    KeyRule(r"pooler\..+", drop="pooler"),
    KeyRule(r"embeddings\.mask_token", drop="mask token (masked image modeling only)"),
    KeyRule(r"(?P<key>.+)", ("{key}",)),
)
# timm ViT features the Mask3D encoder does not have; converting them would silently change the function.
UNSUPPORTED_TIMM_KEYS = {
    "fc_norm.": "the model pools by averaging and has no final norm on the tokens (global_pool='avg')",
    "reg_token": "register tokens",
    "norm_pre.": "a norm before the blocks",
    ".ls1.": "layer scale",
    ".q_norm.": "query / key normalisation",
}


def _square_grid_side(position_rows: int, key: str) -> int:
    """The side of the square patch grid of a position table with a CLS row."""
    side = int(round((position_rows - 1) ** 0.5))
    if side * side != position_rows - 1:
        raise CheckpointConversionError(
            f"{key} has {position_rows} rows, not 1 (CLS) + a square grid; tables without a CLS row are unsupported"
        )
    return side


def convert_timm_state_dict(
    state_dict: Mapping[str, torch.Tensor], num_attention_heads: int | None = None, layer_norm_eps: float = 1e-6
) -> tuple[Mask3DConfig, dict[str, torch.Tensor], ConversionReport]:
    """Converts a timm-layout ViT (or original MAE) state dict to `Mask3DModel` keys, and reads the architecture.

    Args:
        state_dict: the tensors, without container or `module.` prefix (see `unwrap_state_dict`).
        num_attention_heads: heads per layer; the weights cannot tell. Default: hidden size / 64.
        layer_norm_eps: epsilon of the source's layer norms (timm and MAE: 1e-6).
    """
    report = ConversionReport(target=Mask3DModel.__name__, source_layout="timm")
    for marker, feature in UNSUPPORTED_TIMM_KEYS.items():
        offending = sorted(key for key in state_dict if marker in key or key.startswith(marker))
        if offending:
            raise CheckpointConversionError(f"{offending[0]}: unsupported ViT feature ({feature})")
    converted = apply_key_rules(state_dict, TIMM_RULES, report, source="the timm-layout checkpoint")

    projection_key = "embeddings.patch_embeddings.projection.weight"
    if projection_key not in converted or "embeddings.position_embeddings" not in converted:
        raise CheckpointConversionError(
            f"No timm ViT patch embedding and position embedding (patch_embed.proj.weight, pos_embed) found; first "
            f"keys: {sorted(state_dict)[:8]}"
        )
    hidden_size, num_channels, patch_size, _ = converted[projection_key].shape
    side = _square_grid_side(converted["embeddings.position_embeddings"].shape[1], "pos_embed")
    layer_indices = {int(key.split(".")[1]) for key in converted if key.startswith("layers.")}
    if num_attention_heads is None:
        num_attention_heads = max(1, hidden_size // TIMM_HEAD_DIM)
        report.notes.append(f"assumed {num_attention_heads} heads ({TIMM_HEAD_DIM}-dim, timm's ViT-Ti/S/B/L)")
    config = Mask3DConfig(
        image_size=side * patch_size,
        patch_size=patch_size,
        num_channels=num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=len(layer_indices),
        num_attention_heads=num_attention_heads,
        intermediate_size=converted["layers.0.mlp.fc1.weight"].shape[0],
        qkv_bias="layers.0.attention.q_proj.bias" in converted,
        layer_norm_eps=layer_norm_eps,
        trainable_position_embeddings=True,
    )
    return config, converted, report


def convert_transformers_vit(model: torch.nn.Module) -> tuple[Mask3DConfig, dict[str, torch.Tensor], ConversionReport]:
    """Converts a transformers `ViTModel` or `ViTMAEModel` (as loaded by `AutoModel.from_pretrained`)."""
    source = model.config
    if source.model_type not in ("vit", "vit_mae"):
        raise CheckpointConversionError(f"expected a ViT or ViTMAE model, got model_type {source.model_type!r}")
    report = ConversionReport(target=Mask3DModel.__name__, source_layout=f"transformers {type(model).__name__}")
    converted = apply_key_rules(model.state_dict(), TRANSFORMERS_RULES, report, source=f"the {type(model).__name__}")
    patch_size = source.patch_size if isinstance(source.patch_size, int) else source.patch_size[0]
    side = _square_grid_side(converted["embeddings.position_embeddings"].shape[1], "embeddings.position_embeddings")
    config = Mask3DConfig(
        image_size=side * patch_size,
        patch_size=patch_size,
        num_channels=source.num_channels,
        hidden_size=source.hidden_size,
        num_hidden_layers=source.num_hidden_layers,
        num_attention_heads=source.num_attention_heads,
        intermediate_size=source.intermediate_size,
        hidden_act=source.hidden_act,
        qkv_bias=source.qkv_bias,
        layer_norm_eps=source.layer_norm_eps,
        # ViTMAE's table is fixed sin-cos; ViT's is learned.
        trainable_position_embeddings=source.model_type == "vit",
    )
    return config, converted, report


def build_encoder(
    config: Mask3DConfig,
    state_dict: dict[str, torch.Tensor],
    report: ConversionReport,
    image_size: tuple[int, int] | None = None,
) -> Mask3DModel:
    """A `Mask3DModel` loaded strictly with the converted weights, its position table resized to `image_size`
    `(height, width)` if given."""
    if image_size is not None and list(image_size) != config.image_size:
        from_grid = config.grid_size
        config = replace(config, image_size=list(image_size))  # re-validated against the patch size
        table = state_dict["embeddings.position_embeddings"]
        patch_table = resize_position_table(table[:, 1:], from_grid, config.grid_size)
        state_dict["embeddings.position_embeddings"] = torch.cat([table[:, :1], patch_table], dim=1)
        report.add_transformed(
            f"resized bicubically from the {from_grid[0]}x{from_grid[1]} patch grid to "
            f"{config.grid_size[0]}x{config.grid_size[1]} (image_size {config.image_size})",
            "embeddings.position_embeddings",
        )
    return load_converted(Mask3DModel(config), state_dict, report)


__all__ = ["TIMM_RULES", "TRANSFORMERS_RULES", "build_encoder", "convert_timm_state_dict", "convert_transformers_vit"]
