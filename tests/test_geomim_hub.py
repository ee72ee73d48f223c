"""`from_pretrained("geomim/swin-base")` offline, from a Hub cache, and the model cards' usage snippets.

huggingface_hub reads `HF_HUB_OFFLINE` and `HF_HUB_CACHE` into `huggingface_hub.constants` when it is imported, and
looks them up there on every call; the tests set both the environment and those constants. In offline mode any
HTTP request raises, so these tests also prove that nothing touches the network.
"""

from __future__ import annotations

import re
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoModel

from geomim_hf import GeoMIMBackbone, GeoMIMConfig, GeoMIMModel

MODEL_CARDS = Path(__file__).resolve().parent.parent / "model_cards"
REVISION = "0123456789abcdef0123456789abcdef01234567"
TINY = dict(embed_dim=8, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])


def add_to_hub_cache(cache: Path, repo_id: str, model: GeoMIMModel) -> None:
    """Lays `model` out as `huggingface_hub` caches a downloaded repo: snapshots/<revision>/ and refs/main."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    model.save_pretrained(repo_dir / "snapshots" / REVISION)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(REVISION)


@pytest.fixture
def offline_hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def tiny_geomim(seed: int) -> GeoMIMModel:
    torch.manual_seed(seed)
    return GeoMIMModel(GeoMIMConfig(**TINY)).eval()


def test_from_pretrained_loads_the_hub_id_offline_from_the_cache(offline_hub_cache):
    model = tiny_geomim(seed=0)
    add_to_hub_cache(offline_hub_cache, "geomim/swin-base", model)

    loaded, loading_info = GeoMIMModel.from_pretrained("geomim/swin-base", output_loading_info=True)
    assert all(not keys for keys in loading_info.values())
    auto_loaded = AutoModel.from_pretrained("geomim/swin-base")
    backbone = GeoMIMBackbone.from_pretrained("geomim/swin-base")
    assert isinstance(auto_loaded, GeoMIMModel)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
        assert torch.equal(auto_loaded.state_dict()[name], tensor), name
        assert torch.equal(backbone.state_dict()["geomim." + name], tensor), name


def test_an_explicit_cache_dir_works_too(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = tiny_geomim(seed=1)
    add_to_hub_cache(tmp_path / "elsewhere", "geomim/swin-large", model)
    loaded = GeoMIMModel.from_pretrained("geomim/swin-large", cache_dir=tmp_path / "elsewhere")
    assert torch.equal(loaded.embeddings.position_embeddings, model.embeddings.position_embeddings)


def test_a_repo_missing_from_the_cache_fails_offline_without_a_request(offline_hub_cache):
    with pytest.raises(OSError, match="couldn't find them in the cached files"):
        GeoMIMModel.from_pretrained("geomim/swin-base")


@pytest.mark.parametrize("variant", ["base", "large"])
def test_model_card_usage_snippet_runs(variant, offline_hub_cache):
    """The card's snippet, verbatim, against a tiny stand-in for the Hub repo it names."""
    card = (MODEL_CARDS / f"geomim-swin-{variant}.md").read_text()
    (snippet,) = re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL)
    assert f'"geomim/swin-{variant}"' in snippet
    add_to_hub_cache(offline_hub_cache, f"geomim/swin-{variant}", tiny_geomim(seed=2))
    namespace: dict[str, object] = {}
    exec(compile(snippet, f"geomim-swin-{variant}.md", "exec"), namespace)
    assert namespace["stride16"].shape == (1, 6, 32, 16, 44)
    assert namespace["stride32"].shape == (1, 6, 64, 8, 22)


@pytest.mark.parametrize("variant", ["base", "large"])
def test_model_card_metadata_and_provenance(variant):
    card = (MODEL_CARDS / f"geomim-swin-{variant}.md").read_text()
    metadata = card.split("---\n")[1]
    for field in ("library_name:", "license:", "tags:", "datasets:"):
        assert field in metadata
    assert "the original repository's number" in card.lower()
    assert "not reproduced with this port" in card
    assert card.count("{{") == card.count("{{ conversion_record }}") == 1  # the converter fills in its record
