"""ObjectStore and EmbeddedSeaweedFS against the real SeaweedFS server (marker `store`)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import time
from pathlib import Path

import pytest

from livo.errors import ConfigError, StoreError
from livo.store import (
    EmbeddedSeaweedFS,
    ObjectStore,
    parse_s3_uri,
    sha256_bytes,
    store_from_env_or_embedded,
)


class FailingStream(io.RawIOBase):
    """Yields `good_bytes` bytes, then raises, like a network mount or a generator dying mid-upload."""

    def __init__(self, good_bytes: int):
        self.remaining = good_bytes

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.remaining <= 0:
            raise OSError("source died half-way")
        n = self.remaining if size < 0 else min(size, self.remaining)
        self.remaining -= n
        return b"\x07" * n


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------------- no server needed
def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://bucket/a/b.json") == ("bucket", "a/b.json")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(ConfigError, match="not an object-store URI"):
        parse_s3_uri("/local/path")
    with pytest.raises(ConfigError, match="names no bucket"):
        parse_s3_uri("s3:///key")


def test_from_env_names_every_missing_variable() -> None:
    with pytest.raises(ConfigError) as err:
        ObjectStore.from_env({"LIVO_S3_ENDPOINT": "127.0.0.1:9000", "LIVO_S3_BUCKET": "mlpipeline"})
    assert "LIVO_S3_ACCESS_KEY" in str(err.value) and "LIVO_S3_SECRET_KEY" in str(err.value)
    assert "LIVO_S3_ENDPOINT" not in str(err.value).split("(")[0]


def test_endpoint_forms_and_secret_hygiene() -> None:
    env = {"LIVO_S3_ENDPOINT": "https://s3.example.org:9000/", "LIVO_S3_ACCESS_KEY": "AK",
           "LIVO_S3_SECRET_KEY": "very-secret", "LIVO_S3_BUCKET": "mlpipeline"}
    store = ObjectStore.from_env(env)
    assert (store.endpoint, store.secure, store.bucket) == ("s3.example.org:9000", True, "mlpipeline")
    assert store.env()["LIVO_S3_ENDPOINT"] == "https://s3.example.org:9000"
    assert "very-secret" not in repr(store)
    other = store.for_uri("s3://datasets/x/manifest.json")
    assert (other.bucket, other.endpoint, other.env()["LIVO_S3_SECRET_KEY"]) == ("datasets", store.endpoint,
                                                                                 "very-secret")


def test_for_uri_on_the_class_reads_credentials_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVO_S3_ENDPOINT", "127.0.0.1:9000")
    monkeypatch.setenv("LIVO_S3_ACCESS_KEY", "AK")
    monkeypatch.setenv("LIVO_S3_SECRET_KEY", "SK")
    monkeypatch.delenv("LIVO_S3_BUCKET", raising=False)
    store = ObjectStore.for_uri("s3://models-bucket/models/m/v1")
    assert (store.endpoint, store.bucket, store.env()["LIVO_S3_ACCESS_KEY"]) == ("127.0.0.1:9000", "models-bucket",
                                                                                "AK")
    assert ObjectStore("http://seaweedfs.kubeflow:9000", "a", "b", "mlpipeline").secure is False
    with pytest.raises(ConfigError, match="no path"):
        ObjectStore("http://host:9000/prefix", "a", "b", "mlpipeline")
    with pytest.raises(ConfigError, match="bucket names"):
        ObjectStore("host:9000", "a", "b", "x")


def test_unreachable_endpoint_fails_fast_with_clear_error() -> None:
    store = ObjectStore(f"127.0.0.1:{_closed_port()}", "a", "b", "livo")
    started = time.monotonic()
    with pytest.raises(StoreError) as err:
        store.get_bytes("anything")
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, elapsed
    message = str(err.value)
    assert "refused the connection" in message and "LIVO_S3_ENDPOINT" in message and "is running" in message
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------- real SeaweedFS


@pytest.mark.store
def test_round_trip_bytes_json_sha256_list_exists(store: ObjectStore) -> None:
    payload = os.urandom(300_000)
    digest = store.put_bytes("runs/r1/blob.bin", payload)
    assert digest == "sha256:" + hashlib.sha256(payload).hexdigest()
    assert store.get_bytes("runs/r1/blob.bin") == payload
    assert store.sha256("runs/r1/blob.bin") == digest
    assert store.size("runs/r1/blob.bin") == 300_000
    store.put_json("runs/r1/meta.json", {"b": 2, "a": [1, 2.5]})
    assert store.get_json("runs/r1/meta.json") == {"a": [1, 2.5], "b": 2}
    store.put_bytes("runs/r2/x", b"x")
    assert store.list("runs") == ["runs/r1/blob.bin", "runs/r1/meta.json", "runs/r2/x"]
    assert store.list("runs/", recursive=False) == ["runs/r1/", "runs/r2/"]
    assert store.list("run") == []  # prefixes are folder boundaries, not string prefixes
    assert store.exists("runs/r2/x") and not store.exists("runs/r2/y")
    assert store.uri("runs/r2/x") == f"s3://{store.bucket}/runs/r2/x"


@pytest.mark.store
def test_upload_dir_download_dir_with_commit(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"hidden_size": 32}')
    (src / "sub" / "weights.bin").write_bytes(os.urandom(50_000))
    digests = store.upload_dir("models/m/v1", src, commit_key="models/m/v1/manifest.json",
                               commit_payload={"version": "v1"})
    assert digests == {"config.json": sha256_bytes(b'{"hidden_size": 32}'),
                       "sub/weights.bin": sha256_bytes((src / "sub" / "weights.bin").read_bytes())}
    commit = store.get_json("models/m/v1/manifest.json")
    assert commit == {"version": "v1", "files": digests}

    out = tmp_path / "out"
    assert store.download_dir("models/m/v1", out, require_commit="models/m/v1/manifest.json") == digests
    assert (out / "sub" / "weights.bin").read_bytes() == (src / "sub" / "weights.bin").read_bytes()
    assert not (out / "manifest.json").exists()  # only the committed files, not the commit object itself
    assert not list(out.rglob("*.part"))

    # a modified stored file is caught against the commit object's digest
    store.put_bytes("models/m/v1/config.json", b'{"hidden_size": 33}')
    with pytest.raises(StoreError, match="was modified"):
        store.download_dir("models/m/v1", tmp_path / "out2", require_commit="models/m/v1/manifest.json")

    assert store.delete_prefix("models/m") == 3
    assert store.list("models") == []


@pytest.mark.store
def test_interrupted_single_put_leaves_no_object(store: ObjectStore) -> None:
    with pytest.raises(OSError, match="half-way"):
        store.put_stream("half/small.bin", FailingStream(good_bytes=1000), length=100_000)
    assert not store.exists("half/small.bin")
    assert store.list("half") == []


@pytest.mark.store
def test_interrupted_multipart_put_keeps_previous_version(store: ObjectStore) -> None:
    store.put_bytes("half/big.bin", b"previous complete version")
    with pytest.raises(OSError, match="half-way"):  # 12 MiB -> multipart; dies in the second part
        store.put_stream("half/big.bin", FailingStream(good_bytes=7 << 20), length=12 << 20)
    assert store.get_bytes("half/big.bin") == b"previous complete version"
    assert store.list("half") == ["half/big.bin"]


@pytest.mark.store
def test_interrupted_upload_dir_has_no_commit(store: ObjectStore, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a.bin", "b.bin", "c.bin"):
        (tmp_path / name).write_bytes(name.encode() * 10)
    real_put_file = store.put_file

    def put_file_dying_on_b(key: str, path: str | Path, content_type: str | None = None) -> str:
        if key.endswith("b.bin"):
            raise StoreError("object store at test went away")
        return real_put_file(key, path, content_type)

    monkeypatch.setattr(store, "put_file", put_file_dying_on_b)
    with pytest.raises(StoreError, match="went away"):
        store.upload_dir("ds/x", tmp_path, commit_key="ds/x/manifest.json")
    assert store.list("ds/x") == ["ds/x/a.bin"]
    assert not store.exists("ds/x/manifest.json")
    with pytest.raises(StoreError, match="incomplete: its commit object ds/x/manifest.json is missing"):
        store.download_dir("ds/x", tmp_path / "out", require_commit="ds/x/manifest.json")


@pytest.mark.store
def test_download_missing_key_leaves_no_file(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"no object s3://.*/nope\.bin"):
        store.download_file("nope.bin", tmp_path / "nope.bin")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StoreError, match="no object"):
        store.get_json("nope.json")


@pytest.mark.store
def test_bad_credentials_and_missing_bucket(seaweed_store: ObjectStore, store: ObjectStore) -> None:
    env = store.env()
    wrong_secret = ObjectStore(env["LIVO_S3_ENDPOINT"], env["LIVO_S3_ACCESS_KEY"], "wrong-secret", store.bucket)
    with pytest.raises(StoreError, match="rejected the credentials .*LIVO_S3_SECRET_KEY"):
        wrong_secret.put_bytes("k", b"v")
    wrong_key = ObjectStore(env["LIVO_S3_ENDPOINT"], "nobody", "wrong-secret", store.bucket)
    with pytest.raises(StoreError, match="rejected the credentials"):
        wrong_key.list("")
    missing = seaweed_store.for_bucket("no-such-bucket-livo")
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-livo' does not exist"):
        missing.get_bytes("k")
    assert missing.bucket_exists() is False


@pytest.mark.store
def test_get_json_rejects_non_json(store: ObjectStore) -> None:
    store.put_bytes("bad.json", b"\x00not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        store.get_json("bad.json")


@pytest.mark.store
def test_env_helper_uses_configured_store(tmp_path: Path, store: ObjectStore) -> None:
    # With LIVO_S3_ENDPOINT set, the helper uses that store and starts nothing.
    with store_from_env_or_embedded(tmp_path / "run-a", env=store.env()) as configured:
        assert (configured.endpoint, configured.bucket) == (store.endpoint, store.bucket)
        configured.put_bytes("seen", b"1")
    assert store.get_bytes("seen") == b"1"
    assert not (tmp_path / "run-a").exists()


@pytest.mark.store
@pytest.mark.slow
def test_embedded_server_lifecycle(tmp_path: Path) -> None:
    # Without it, an embedded server starts under the run directory and is stopped by PID afterwards.
    with store_from_env_or_embedded(tmp_path / "run-b", env={}, stop_grace_s=1.0) as embedded:
        embedded.put_bytes("hello.txt", b"hi")
        port = int(embedded.endpoint.rsplit(":", 1)[1])
        identities = json.loads((tmp_path / "run-b" / "store" / "s3-identities.json").read_text())
        assert identities["identities"][0]["credentials"][0]["accessKey"] == embedded.env()["LIVO_S3_ACCESS_KEY"]
        assert oct((tmp_path / "run-b" / "store" / "s3-identities.json").stat().st_mode & 0o777) == "0o600"
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
    assert (tmp_path / "run-b" / "store" / "weed.log").stat().st_size > 0

    # Restarting on the same data directory (new ports, new credentials) keeps the data.
    with EmbeddedSeaweedFS(tmp_path / "run-b" / "store", stop_grace_s=1.0) as server:
        assert server.store().get_bytes("hello.txt") == b"hi"
        pid = server.pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
