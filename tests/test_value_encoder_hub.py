"""`ValueEncoder.from_pretrained` with a Hugging Face hub id, resolved offline from a hand-built HF cache layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from livo.errors import ConfigError
from livo.modeling import ValueEncoder

REVISION = "0123456789abcdef0123456789abcdef01234567"


def _encoder(seed: int) -> ValueEncoder:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=16, projection_dim=16)
    return ValueEncoder(CLIPTextModel(config).eval())


def _hub_cache(home: Path, repo_id: str, encoder: ValueEncoder, *, nested: bool = False) -> Path:
    """HF_HOME/hub/models--org--name/{refs/main, snapshots/<rev>/...} as huggingface_hub lays it out."""
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    encoder.save_pretrained(snapshot / "value_encoder" if nested else snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.fixture
def offline_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return home


def _same_weights(a: ValueEncoder, b: ValueEncoder) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("nested", [False, True], ids=["top-level", "value_encoder-folder"])
def test_a_hub_id_resolves_from_the_local_hf_cache_offline(offline_hf: Path, nested: bool) -> None:
    encoder = _encoder(0)
    _hub_cache(offline_hf, "acme/livo-value-encoder", encoder, nested=nested)
    loaded = ValueEncoder.from_pretrained("acme/livo-value-encoder")
    assert _same_weights(loaded, encoder)


def test_a_local_path_wins_over_a_hub_id_of_the_same_spelling(offline_hf: Path, tmp_path: Path) -> None:
    _hub_cache(offline_hf, "acme/enc", _encoder(0))
    local = _encoder(1)
    local.save_pretrained(tmp_path / "acme" / "enc")  # ./acme/enc exists in the working directory
    assert _same_weights(ValueEncoder.from_pretrained("acme/enc"), local)
    shutil.rmtree(tmp_path / "acme")
    assert _same_weights(ValueEncoder.from_pretrained("acme/enc"), _encoder(0))


def test_an_unknown_hub_id_is_a_config_error_with_a_hint(offline_hf: Path) -> None:
    with pytest.raises(ConfigError) as info:
        ValueEncoder.from_pretrained("acme/no-such-encoder")
    message = str(info.value)
    assert "acme/no-such-encoder" in message and "HF_HUB_OFFLINE" in message and "local folder" in message
    with pytest.raises(ConfigError, match="no value encoder found"):  # a path-like spelling is never a hub id
        ValueEncoder.from_pretrained("./acme/no-such-encoder")
