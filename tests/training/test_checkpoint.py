"""Run outputs: complete vs incomplete checkpoints, pruning, verified fetch, atomic publish; local and object store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from livo.errors import ConfigError, LivoError
from livo.training import checkpoint as ckpt


def fake_checkpoint(output: ckpt.RunOutput, step: int, commit: bool = True) -> Path:
    """Files as DeepSpeed and the trainer write them, then (optionally) the commit object."""
    directory = output.checkpoint_dir(step)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mp_rank_00_model_states.pt").write_bytes(b"model" * 100 + bytes([step % 256]))
    (directory / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"optim" * 100)
    (directory / ckpt.TRAINER_STATE_FILE).write_text(json.dumps({"step": step}))
    if commit:
        files = output.publish_checkpoint_files(step)
        output.commit_checkpoint(step, files, {"step": step})
    return directory


def test_only_committed_checkpoints_count(tmp_path):
    output = ckpt.LocalRunOutput(tmp_path)
    fake_checkpoint(output, 10)
    fake_checkpoint(output, 20)
    fake_checkpoint(output, 30, commit=False)  # a save killed half-way
    assert output.complete_steps() == [10, 20]
    assert output.fetch_checkpoint(20) == output.checkpoint_dir(20)


def test_prune_keeps_the_newest_and_removes_the_commit_first(tmp_path):
    output = ckpt.LocalRunOutput(tmp_path)
    for step in (1, 2, 3, 4):
        fake_checkpoint(output, step)
    assert output.prune(2) == [1, 2]
    assert output.complete_steps() == [3, 4]
    assert not output.checkpoint_dir(1).exists()


def test_fetch_refuses_a_modified_checkpoint(tmp_path):
    output = ckpt.LocalRunOutput(tmp_path)
    directory = fake_checkpoint(output, 5)
    (directory / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"flipped")
    with pytest.raises(LivoError, match="does not match the digest"):
        output.fetch_checkpoint(5)


def test_publish_dir_replaces_atomically(tmp_path):
    output = ckpt.LocalRunOutput(tmp_path / "run")
    for version in (b"v1", b"v2"):
        staging = tmp_path / f"stage-{version.decode()}"
        staging.mkdir()
        (staging / "model.safetensors").write_bytes(version)
        digests = output.publish_dir(staging, "value_encoder")
        assert digests == {"model.safetensors": ckpt.sha256_file(tmp_path / "run" / "value_encoder" / "model.safetensors")}
    assert (tmp_path / "run" / "value_encoder" / "model.safetensors").read_bytes() == b"v2"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["value_encoder"]


def test_rng_state_roundtrip_without_pickle(tmp_path):
    import torch

    generator = torch.Generator().manual_seed(123)
    torch.randn(5, generator=generator)
    ckpt.save_rng_state(tmp_path / "rng.safetensors", {"noise_generator": generator.get_state()})
    expected = torch.randn(4, generator=generator)
    restored = torch.Generator()
    restored.set_state(ckpt.load_rng_state(tmp_path / "rng.safetensors")["noise_generator"])
    assert torch.equal(torch.randn(4, generator=restored), expected)
    with pytest.raises(LivoError, match="same world size"):
        ckpt.load_rng_state(tmp_path / "rng-rank7.safetensors")


def test_unsupported_output_scheme(tmp_path):
    with pytest.raises(ConfigError, match="unsupported scheme"):
        ckpt.open_run_output("gs://bucket/run")


@pytest.mark.store
def test_store_output_roundtrip(store, tmp_path):
    output = ckpt.StoreRunOutput(store, "runs/r1", tmp_path / "staging")
    fake_checkpoint(output, 7)
    fake_checkpoint(output, 9, commit=False)
    output.publish_checkpoint_files(9)  # uploaded but never committed
    assert output.complete_steps() == [7]
    assert store.exists("runs/r1/checkpoints/step-00000007/COMPLETE.json")

    output.discard_local_copy(7)
    assert not output.checkpoint_dir(7).exists()
    fetched = output.fetch_checkpoint(7)  # downloads and verifies against the commit
    assert (fetched / "mp_rank_00_model_states.pt").read_bytes() == b"model" * 100 + bytes([7])

    fake_checkpoint(output, 8)
    assert output.prune(1) == [7]
    assert output.complete_steps() == [8]
    assert store.list("runs/r1/checkpoints/step-00000007") == []

    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    files = output.publish_dir(export, "value_encoder")
    assert set(files) == {"config.json"}
    output.put_json("result.json", {"ok": True})
    assert output.get_json("result.json") == {"ok": True}


@pytest.mark.store
def test_s3_output_uri_opens_the_configured_store(store, tmp_path, monkeypatch):
    for key, value in store.env().items():
        monkeypatch.setenv(key, value)
    output = ckpt.open_run_output(f"s3://{store.bucket}/runs/r2", staging_dir=str(tmp_path / "staging"))
    assert isinstance(output, ckpt.StoreRunOutput)
    assert (output.store.bucket, output.prefix) == (store.bucket, "runs/r2")
    fake_checkpoint(output, 3)
    assert output.complete_steps() == [3]
    with pytest.raises(ConfigError, match="whole bucket"):
        ckpt.open_run_output(f"s3://{store.bucket}")
