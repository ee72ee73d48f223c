"""The installed stack works, not just resolves: `pip check` passing does not prove imports (environment.md)."""

from __future__ import annotations

import torch


def test_vision_libraries_build_and_run_models():
    import timm
    import torchvision
    from transformers import SwinConfig, SwinModel, ViTMAEConfig, ViTMAEModel

    assert torchvision.ops.nms(torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1]]), torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0).eval()
    assert swin(torch.zeros(1, 3, 224, 224)).shape == (1, 768)
    hf_swin = SwinModel(SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 2], image_size=64, window_size=4))
    assert hf_swin(torch.zeros(1, 3, 64, 64)).last_hidden_state.shape == (1, 64, 32)  # (64/4 / 2)^2 tokens
    mae = ViTMAEModel(ViTMAEConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                   image_size=32, patch_size=8))
    assert mae(torch.zeros(1, 3, 32, 32)).last_hidden_state.shape == (1, 5, 32)  # cls + 25% of 16 patches


def test_data_libraries_import_together():
    import datasets
    import numpy
    import pyarrow
    from nuscenes.eval.detection.evaluate import DetectionEval  # noqa: F401

    assert numpy.__version__.startswith("1.")  # the devkit pins numpy<2 ...
    assert int(pyarrow.__version__.split(".")[0]) < 26  # ... which pyarrow>=26 refuses
    table = datasets.Dataset.from_dict({"x": [1, 2, 3]})
    assert table.with_format("numpy")[:]["x"].tolist() == [1, 2, 3]  # Arrow -> numpy conversion works


def test_spconv_matches_a_dense_convolution_single_threaded():
    import spconv.pytorch as spconv

    torch.manual_seed(0)
    dense = torch.zeros(1, 4, 6, 6, 6)
    coordinates = torch.randint(0, 6, (20, 3)).unique(dim=0)
    dense[0, :, coordinates[:, 0], coordinates[:, 1], coordinates[:, 2]] = torch.randn(4, len(coordinates))
    conv = spconv.SparseConv3d(4, 8, kernel_size=3, padding=1, bias=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # spconv's CPU kernels are only correct single-threaded (environment.md)
    try:
        indices = torch.cat([torch.zeros(len(coordinates), 1, dtype=torch.int32), coordinates.int()], dim=1)
        sparse = spconv.SparseConvTensor(dense[0, :, coordinates[:, 0], coordinates[:, 1], coordinates[:, 2]].T,
                                         indices, [6, 6, 6], batch_size=1)
        output = conv(sparse).dense()
    finally:
        torch.set_num_threads(threads)
    reference = torch.nn.functional.conv3d(dense, conv.weight.permute(0, 4, 1, 2, 3), padding=1)
    active = output.abs().sum(1, keepdim=True) > 0
    torch.testing.assert_close(output[active.expand_as(output)], reference[active.expand_as(reference)],
                               atol=1e-5, rtol=1e-5)
