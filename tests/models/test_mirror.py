"""Model mirrors: `livo models mirror|verify|fetch|show|ls` and loading `s3://` model sources through the verified,
content-keyed cache (pipelines via `load_pipeline`, judges via `load_pretrained`), against the embedded SeaweedFS."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from livo.cli import main
from livo.errors import ConfigError, JudgeUnavailable, LivoError
from livo.models.mirror import MANIFEST_NAME, LocalModel, mirror_model, model_cache_dir, plan_files
from livo.store import ObjectStore, sha256_file

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


# ------------------------------------------------------------------------------------------------------ fixtures
def _save_tiny_pipeline(directory: Path, seed: int) -> tuple[Path, str]:
    from livo.presets import build_tiny_pipeline, pipeline_fingerprint

    pipe = build_tiny_pipeline(seed)
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory, pipeline_fingerprint(pipe)


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A saved tiny SD pipeline folder and the fingerprint of the pipeline that wrote it."""
    return _save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "pipeline", seed=0)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from livo.evaluation.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "model-cache"
    monkeypatch.setenv("LIVO_MODEL_CACHE", str(directory))
    return directory


@pytest.fixture
def s3_env(store: ObjectStore, cache: Path, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    """`LIVO_S3_*` pointing at the test's bucket (the CLI and `load_pipeline` read them), and an empty model cache."""
    for key, value in store.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return store


@pytest.fixture
def gets(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Keys of every streamed object read (file downloads and verification), in order."""
    keys: list[str] = []
    original = ObjectStore.open_stream

    def counting(self: ObjectStore, key: str) -> Iterator[bytes]:
        keys.append(key)
        yield from original(self, key)

    monkeypatch.setattr(ObjectStore, "open_stream", counting)
    return keys


def _files(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): sha256_file(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def _cache_entries(cache: Path) -> list[str]:
    """Cache entries and leftover temporary downloads (not the per-entry lock files)."""
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) if cache.exists() else []


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------- diffusers round trip
@pytest.mark.store
def test_mirrored_pipeline_loads_identically_and_is_cached_by_content(
        s3_env: ObjectStore, cache: Path, tiny_pipeline: tuple[Path, str], gets: list[str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from livo.presets import load_pipeline, pipeline_fingerprint

    folder, fingerprint = tiny_pipeline
    uri = s3_env.uri("mirrors/tiny-sd")
    assert main(["models", "mirror", str(folder), uri, "--no-progress"]) == 0
    out = capsys.readouterr().out
    local = _files(folder)
    assert f"mirrored diffusers model {folder} to {uri}: {len(local)} files" in out

    manifest = s3_env.get_json(f"mirrors/tiny-sd/{MANIFEST_NAME}")
    assert manifest["kind"] == "diffusers" and manifest["source"] == str(folder) and manifest["revision"] is None
    assert {rel: entry["sha256"] for rel, entry in manifest["files"].items()} == local
    assert manifest["total_bytes"] == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert sorted(s3_env.list("mirrors/tiny-sd")) == sorted([f"mirrors/tiny-sd/{r}" for r in local]
                                                            + [f"mirrors/tiny-sd/{MANIFEST_NAME}"])

    assert pipeline_fingerprint(load_pipeline(uri)) == fingerprint
    assert sorted(gets) == sorted(f"mirrors/tiny-sd/{rel}" for rel in local)  # every file once, nothing else
    entry = cache / manifest["content_hash"].split(":")[1]
    assert _cache_entries(cache) == [entry.name]
    assert _files(entry) == {**local, MANIFEST_NAME: sha256_file(entry / MANIFEST_NAME)}

    gets.clear()
    assert pipeline_fingerprint(load_pipeline(uri)) == fingerprint
    assert gets == []  # the verified cache entry is reused: only the manifest is read

    # Another URI of the same content shares the entry; a re-mirrored URI with new weights is not served stale.
    assert main(["models", "mirror", str(folder), s3_env.uri("mirrors/copy"), "--no-progress"]) == 0
    load_pipeline(s3_env.uri("mirrors/copy"))
    assert gets == [] and _cache_entries(cache) == [entry.name]
    other_folder, other_fingerprint = _save_tiny_pipeline(tmp_path / "seed1", seed=1)
    assert other_fingerprint != fingerprint
    assert main(["models", "mirror", str(other_folder), uri, "--no-progress"]) == 0
    assert pipeline_fingerprint(load_pipeline(uri)) == other_fingerprint
    assert len(gets) == len(_files(other_folder)) and len(_cache_entries(cache)) == 2

    capsys.readouterr()
    assert main(["models", "ls", s3_env.uri("mirrors")]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == [s3_env.uri("mirrors/copy"), uri]
    assert main(["models", "show", uri, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == str(other_folder)
    assert main(["models", "fetch", uri, "--no-progress"]) == 0
    fetched = Path(capsys.readouterr().out.strip())
    assert fetched.parent == cache and (fetched / "model_index.json").is_file()


@pytest.mark.store
def test_manifest_is_written_last_and_an_interrupted_mirror_is_refused(
        s3_env: ObjectStore, tiny_pipeline: tuple[Path, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from livo.presets import load_pipeline

    folder, _ = tiny_pipeline
    uri = s3_env.uri("mirrors/interrupted")
    writes: list[str] = []
    put_stream, put_bytes = ObjectStore.put_stream, ObjectStore.put_bytes

    class Interrupted(Exception):
        pass

    def failing_put_stream(self: ObjectStore, key: str, *args, **kwargs) -> str:
        if len(writes) == 3:
            raise Interrupted(key)
        writes.append(key)
        return put_stream(self, key, *args, **kwargs)

    monkeypatch.setattr(ObjectStore, "put_stream", failing_put_stream)
    with pytest.raises(Interrupted):
        mirror_model(str(folder), uri, progress=False)
    assert len(s3_env.list("mirrors/interrupted")) == 3
    assert not s3_env.exists(f"mirrors/interrupted/{MANIFEST_NAME}")

    with pytest.raises(ConfigError) as refused:
        load_pipeline(uri)
    assert str(refused.value).startswith(f"{uri} has no {MANIFEST_NAME}: mirror it with "
                                         f"`livo models mirror SOURCE {uri}`")
    assert refused.value.exit_code == 2
    capsys.readouterr()
    assert main(["models", "verify", uri]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"livo: error: {uri} has no {MANIFEST_NAME}")

    # Finishing the copy into the same prefix needs no --overwrite (what is there belongs to this mirror), and the
    # manifest is the very last write.
    def recording_put_stream(self: ObjectStore, key: str, *args, **kwargs) -> str:
        writes.append(key)
        return put_stream(self, key, *args, **kwargs)

    def recording_put_bytes(self: ObjectStore, key: str, *args, **kwargs) -> str:
        writes.append(key)
        return put_bytes(self, key, *args, **kwargs)

    writes.clear()
    monkeypatch.setattr(ObjectStore, "put_stream", recording_put_stream)
    monkeypatch.setattr(ObjectStore, "put_bytes", recording_put_bytes)
    manifest = mirror_model(str(folder), uri, progress=False)
    assert writes[-1] == f"mirrors/interrupted/{MANIFEST_NAME}" and writes.count(writes[-1]) == 1
    assert len(writes) == manifest["file_count"] + 1 == len(_files(folder)) + 1


@pytest.mark.store
def test_mirror_refuses_a_prefix_holding_other_objects_unless_overwrite(
        s3_env: ObjectStore, tiny_clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s3_env.put_bytes("shared/clip/notes.txt", b"not a model")
    uri = s3_env.uri("shared/clip")
    assert main(["models", "mirror", str(tiny_clip), uri, "--no-progress"]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "shared/clip/notes.txt" in err[0] and "--overwrite" in err[0]
    assert s3_env.list("shared/clip") == ["shared/clip/notes.txt"]
    assert main(["models", "mirror", str(tiny_clip), uri, "--overwrite", "--no-progress"]) == 0
    assert "shared/clip/notes.txt" not in s3_env.list("shared/clip")
    assert s3_env.exists(f"shared/clip/{MANIFEST_NAME}")


@pytest.mark.store
def test_a_flipped_byte_fails_verify_naming_the_file_and_loading_leaves_no_cache_entry(
        s3_env: ObjectStore, cache: Path, tiny_pipeline: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    from livo.presets import load_pipeline

    folder, _ = tiny_pipeline
    uri = s3_env.uri("mirrors/flipped")
    mirror_model(str(folder), uri, progress=False)
    assert main(["models", "verify", uri]) == 0
    assert capsys.readouterr().out.startswith(f"{uri}: OK ({len(_files(folder))} files")

    key = f"mirrors/flipped/{UNET_WEIGHTS}"
    data = bytearray(s3_env.get_bytes(key))
    data[len(data) // 2] ^= 0x01
    s3_env.put_bytes(key, bytes(data))

    capsys.readouterr()
    assert main(["models", "verify", uri]) == 1
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"livo: error: {uri}: 1 of ") and f"{UNET_WEIGHTS}: sha256" in err[0]
    assert main(["models", "verify", uri, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and [m.split(":")[0] for m in report["mismatches"]] == [UNET_WEIGHTS]

    with pytest.raises(LivoError) as corrupted:
        load_pipeline(uri)
    assert not isinstance(corrupted.value, ConfigError) and corrupted.value.exit_code == 1
    assert s3_env.uri(key) in str(corrupted.value) and "modified or corrupted" in str(corrupted.value)
    assert _cache_entries(cache) == []  # neither a cache entry nor the temporary download survives


@pytest.mark.store
def test_truncated_cache_entry_is_downloaded_again(s3_env: ObjectStore, cache: Path, tiny_clip: Path,
                                                   gets: list[str]) -> None:
    from livo.models.mirror import fetch_model

    uri = s3_env.uri("mirrors/clip")
    mirror_model(str(tiny_clip), uri, progress=False)
    entry = fetch_model(uri, progress=False)
    first = len(gets)
    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert fetch_model(uri, progress=False) == entry
    assert len(gets) == 2 * first and sha256_file(weights) == sha256_file(tiny_clip / "model.safetensors")
    assert _cache_entries(cache) == [entry.name]


@pytest.mark.store
def test_concurrent_fetches_of_one_model_download_it_once(s3_env: ObjectStore, cache: Path, tiny_clip: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranks of one pod share the cache: the second waits on the first's lock and reuses its entry."""
    import threading
    import time

    from livo.models.mirror import fetch_model

    uri = s3_env.uri("mirrors/clip")
    file_count = mirror_model(str(tiny_clip), uri, progress=False)["file_count"]
    streamed: list[str] = []
    original = ObjectStore.open_stream

    def slow(self: ObjectStore, key: str) -> Iterator[bytes]:
        streamed.append(key)
        time.sleep(0.1)
        yield from original(self, key)

    monkeypatch.setattr(ObjectStore, "open_stream", slow)
    results: list[Path] = []
    first = threading.Thread(target=lambda: results.append(fetch_model(uri, progress=False)))
    first.start()
    deadline = time.monotonic() + 30
    while not streamed and time.monotonic() < deadline:  # the first fetch holds the lock and is downloading
        time.sleep(0.01)
    assert streamed
    second = fetch_model(uri, progress=False)
    first.join(timeout=60)
    assert results == [second] and len(streamed) == file_count
    assert _cache_entries(cache) == [second.name]


# ------------------------------------------------------------------------------------------------ hub and judges
def _fake_hub_cache(root: Path, repo_id: str, folder: Path, revision: str) -> Path:
    """The layout huggingface_hub reads offline: models--org--name/{refs/main, snapshots/<rev>/...}."""
    repo_dir = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    shutil.copytree(folder, snapshot)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


@pytest.mark.store
def test_hub_id_mirrors_from_an_offline_hf_cache(s3_env: ObjectStore, tiny_pipeline: tuple[Path, str],
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder, _ = tiny_pipeline
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = _fake_hub_cache(tmp_path / "hf" / "hub", "livo-test/tiny-sd", folder, revision)
    (snapshot / "v1-5-pruned.ckpt").write_bytes(b"pickle checkpoint")
    (snapshot / "v1-5-pruned-emaonly.safetensors").write_bytes(b"single-file checkpoint")
    (snapshot / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle beside safetensors")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)

    uri = s3_env.uri("mirrors/hub")
    assert main(["models", "mirror", "livo-test/tiny-sd", uri, "--no-progress", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert (manifest["source"], manifest["revision"], manifest["kind"]) == ("livo-test/tiny-sd", revision, "diffusers")
    assert {rel: entry["sha256"] for rel, entry in manifest["files"].items()} == _files(folder)
    skipped = {item["path"]: item["reason"] for item in manifest["skipped"]}
    assert set(skipped) == {"v1-5-pruned.ckpt", "v1-5-pruned-emaonly.safetensors", "unet/diffusion_pytorch_model.bin"}
    assert skipped["unet/diffusion_pytorch_model.bin"].startswith("pickle weights")
    # Same content as mirroring the folder itself: one cache entry serves both.
    assert manifest["content_hash"] == mirror_model(str(folder), s3_env.uri("mirrors/local"),
                                                    progress=False)["content_hash"]

    capsys.readouterr()
    assert main(["models", "mirror", "livo-test/absent", s3_env.uri("mirrors/absent"), "--no-progress"]) == 1
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "'livo-test/absent'" in err[0] and "HF cache" in err[0]
    assert s3_env.list("mirrors/absent") == []


@pytest.mark.store
def test_transformers_mirror_loads_through_the_judges(s3_env: ObjectStore, tiny_clip: Path) -> None:
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from livo.evaluation.judges import load_pretrained
    from livo.presets import load_pipeline

    uri = s3_env.uri("mirrors/clip-vit-l14")
    manifest = mirror_model(str(tiny_clip), uri, progress=False)
    assert manifest["kind"] == "transformers" and set(manifest["files"]) == set(_files(tiny_clip))

    model, processor = load_pretrained(CLIPModel, CLIPProcessor, uri, judge="clip-zero-shot", option="model",
                                       device="cpu")
    reference = CLIPModel.from_pretrained(tiny_clip).state_dict()
    loaded = model.state_dict()
    assert sorted(loaded) == sorted(reference)
    assert all(torch.equal(loaded[name], reference[name]) for name in reference)
    assert processor.tokenizer.get_vocab() == CLIPProcessor.from_pretrained(tiny_clip).tokenizer.get_vocab()

    with pytest.raises(ConfigError, match="is a transformers mirror .* a diffusers model is needed"):
        load_pipeline(uri)
    with pytest.raises(JudgeUnavailable) as missing:
        load_pretrained(CLIPModel, CLIPProcessor, s3_env.uri("mirrors/none"), judge="clip-zero-shot",
                        option="model", device="cpu")
    assert str(missing.value).startswith(f"judge clip-zero-shot: {s3_env.uri('mirrors/none')} has no {MANIFEST_NAME}")


@pytest.mark.store
def test_pickle_only_folder_is_refused_and_nothing_is_written(s3_env: ObjectStore, tiny_clip: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "clip-pickle"
    shutil.copytree(tiny_clip, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()

    assert main(["models", "mirror", str(folder), s3_env.uri("mirrors/pickle"), "--no-progress"]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1
    assert "pytorch_model.bin are pickle weights with no safetensors beside them" in err[0]
    assert "safe_serialization=True" in err[0]
    assert s3_env.list("mirrors") == []


# ----------------------------------------------------------------------------------------- file selection, no store
def test_plan_keeps_safetensors_and_pipeline_components_only(tiny_pipeline: tuple[Path, str], tiny_clip: Path,
                                                             tmp_path: Path) -> None:
    folder = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline[0], folder)
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    (folder / "vae" / "diffusion_flax_model.msgpack").write_bytes(b"x")
    (folder / "extra").mkdir()
    (folder / "extra" / "weights.safetensors").write_bytes(b"x")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref")
    (folder / "README.md").write_text("model card")
    plan = plan_files(LocalModel(folder, "diffusers", str(folder)), excludes=["vae/config.json"])
    assert plan.files == sorted(set(_files(tiny_pipeline[0])) - {"vae/config.json"} | {"README.md"})
    reasons = {item["path"]: item["reason"].split(" ")[0] for item in plan.skipped}
    assert reasons == {"unet/diffusion_pytorch_model.bin": "pickle", "vae/diffusion_flax_model.msgpack": "weights",
                       "extra/weights.safetensors": "not", ".git/HEAD": "hidden", "vae/config.json": "excluded"}

    unet_pickle_only = tmp_path / "pipe-unet-pickle"
    shutil.copytree(tiny_pipeline[0], unet_pickle_only)
    (unet_pickle_only / UNET_WEIGHTS).rename(unet_pickle_only / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"unet/diffusion_pytorch_model\.bin are pickle weights"):
        plan_files(LocalModel(unet_pickle_only, "diffusers", "pipe"))

    weightless = tmp_path / "config-only"
    weightless.mkdir()
    (weightless / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="no safetensors weights"):
        plan_files(LocalModel(weightless, "transformers", "config-only"))


def test_model_cache_location_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LIVO_MODEL_CACHE", raising=False)
    monkeypatch.delenv("LIVO_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert model_cache_dir() == tmp_path / "home" / ".cache" / "livo" / "models"
    monkeypatch.setenv("LIVO_CACHE_DIR", str(tmp_path / "livo-cache"))
    assert model_cache_dir() == tmp_path / "livo-cache" / "models"
    monkeypatch.setenv("LIVO_MODEL_CACHE", str(tmp_path / "volume"))
    assert model_cache_dir() == tmp_path / "volume"
