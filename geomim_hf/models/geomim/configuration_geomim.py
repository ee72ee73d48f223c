"""Configuration of the GeoMIM Swin encoder."""

from huggingface_hub.dataclasses import strict
from transformers.backbone_utils import BackboneConfigMixin
from transformers.configuration_utils import PreTrainedConfig


@strict
class GeoMIMConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    Configuration of [`GeoMIMModel`] and [`GeoMIMBackbone`]: the multi-camera Swin encoder pretrained by GeoMIM
    (Liu et al., ICCV 2023, arXiv 2303.11325). The defaults are GeoMIM Swin-Base as its BEVDet finetune backbone
    builds it: plain (unshifted) window attention with per-stage windows (16, 16, 16, 8), a learnable absolute position
    embedding resized bicubically to every input, and normed outputs at strides 16 and 32.

    Setting `shift_windows=True`, `window_size=7` and `use_absolute_embeddings=False` gives a standard Swin
    Transformer, so ImageNet Swin weights can be converted for the baseline.

    Args:
        image_size (`int`, *optional*, defaults to 224):
            Pretraining image size. With `patch_size` it fixes the grid of the absolute position embedding (56 x 56).
        patch_size (`int`, *optional*, defaults to 4):
            Size (and stride) of the patch embedding.
        num_channels (`int`, *optional*, defaults to 3):
            Number of input channels.
        embed_dim (`int`, *optional*, defaults to 128):
            Channels of stage 1; every later stage doubles them (192 for Swin-Large).
        depths (`list[int]`, *optional*, defaults to `[2, 2, 18, 2]`):
            Number of transformer blocks per stage.
        num_heads (`list[int]`, *optional*, defaults to `[4, 8, 16, 32]`):
            Number of attention heads per stage (`[6, 12, 24, 48]` for Swin-Large).
        window_size (`int` or `list[int]`, *optional*, defaults to `[16, 16, 16, 8]`):
            Attention window per stage; an int applies to all stages.
        shift_windows (`bool`, *optional*, defaults to `False`):
            Whether odd blocks use shifted windows. GeoMIM never shifts; standard Swin does.
        use_absolute_embeddings (`bool`, *optional*, defaults to `True`):
            Whether to add the learnable absolute position embedding after the patch embedding.
        mlp_ratio (`float`, *optional*, defaults to 4.0):
            Ratio of the MLP hidden size to the block width.
        qkv_bias (`bool`, *optional*, defaults to `True`):
            Whether the query, key and value projections have a bias.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout after the position embedding, the attention projection and the MLP.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout on the attention probabilities.
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth, rising linearly over all blocks up to this rate (GeoMIM finetunes with 0.2).
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the MLP.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initialisation.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the layer norms.
        out_features (`list[str]`, *optional*, defaults to `["stage3", "stage4"]`):
            Stages whose normed feature maps are returned, among `"stem"`, `"stage1"`, ..., `"stage4"`.
        out_indices (`list[int]`, *optional*):
            The same selection by index into `stage_names`; give one of the two.

    Example:

    ```python
    >>> from geomim_hf import GeoMIMConfig, GeoMIMModel

    >>> config = GeoMIMConfig()  # GeoMIM Swin-Base
    >>> model = GeoMIMModel(config)

    ```
    """

    model_type = "geomim"

    attribute_map = {
        "num_attention_heads": "num_heads",
        "num_hidden_layers": "num_layers",
    }

    image_size: int = 224
    patch_size: int = 4
    num_channels: int = 3
    embed_dim: int = 128
    depths: list[int] | tuple[int, ...] = (2, 2, 18, 2)
    num_heads: list[int] | tuple[int, ...] = (4, 8, 16, 32)
    window_size: int | list[int] | tuple[int, ...] = (16, 16, 16, 8)
    shift_windows: bool = False
    use_absolute_embeddings: bool = True
    mlp_ratio: float | int = 4.0
    qkv_bias: bool = True
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.0
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        self.depths = list(self.depths)
        self.num_heads = list(self.num_heads)
        num_stages = len(self.depths)
        if isinstance(self.window_size, int):
            self.window_size = [self.window_size] * num_stages
        self.window_size = list(self.window_size)
        if not len(self.num_heads) == len(self.window_size) == num_stages:
            raise ValueError(
                f"depths, num_heads and window_size need one entry per stage, got depths={self.depths}, "
                f"num_heads={self.num_heads} and window_size={self.window_size}"
            )
        for stage_index, heads in enumerate(self.num_heads):
            stage_width = self.embed_dim * 2**stage_index
            if stage_width % heads != 0:
                raise ValueError(f"Stage {stage_index + 1} has {stage_width} channels, not divisible by {heads} heads")

        self.num_layers = num_stages
        # The channels after the last stage, the name that VisionEncoderDecoder-style consumers read.
        self.hidden_size = self.embed_dim * 2 ** (num_stages - 1)
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, num_stages + 1)]

        out_features = kwargs.pop("out_features", None)
        out_indices = kwargs.pop("out_indices", None)
        if out_features is None and out_indices is None:
            out_features, out_indices = self._out_features, self._out_indices
        if out_features is None and out_indices is None:
            # GeoMIM's detectors read the stride-16 and stride-32 maps (mmdet out_indices (2, 3)).
            out_features = self.stage_names[-2:]
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        super().__post_init__(**kwargs)


__all__ = ["GeoMIMConfig"]
