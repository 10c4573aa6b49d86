"""`livo serve MODEL` end to end: a real tiny version registered in the embedded store is loaded (verified) and
served; an unknown version, a tampered one and one trained on another base model are never served (exit 2 / 1 / 2
with one `livo: error:` line)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_client import REPO, call, decode_png, free_port, running_server  # noqa: E402
from test_serving_load import MODEL, flip_a_weight_byte, register_tiny  # noqa: E402  (the loader's tests register the same version)

LIVO = [sys.executable, "-m", "livo.cli"]


def test_serve_help_names_the_model_forms_and_settings() -> None:
    proc = subprocess.run(LIVO + ["serve", "--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "NAME@vN" in proc.stdout and "--port" in proc.stdout and "--set" in proc.stdout


@pytest.fixture(scope="module")
def registered(seaweed_store: Any, tmp_path_factory: pytest.TempPathFactory):
    store = seaweed_store.for_bucket(f"t-{uuid.uuid4().hex[:16]}")
    store.ensure_bucket()
    return store, register_tiny(store, tmp_path_factory.mktemp("version"))


def _store_env(store: Any) -> dict[str, str]:
    return {**store.env(), "LIVO_TRACKING": "none"}


def _refused(args: list[str], env: dict[str, str], code: int, *fragments: str) -> None:
    port = free_port()
    proc = subprocess.run(LIVO + ["serve", *args, "--port", str(port)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env}, cwd=REPO)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("livo: error:")]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.mark.store
@pytest.mark.slow  # ~20 s: registers a version, then loads and verifies it in a `livo serve` process
def test_livo_serve_loads_a_registered_version_and_serves_it(registered, tmp_path: Path) -> None:
    store, result = registered
    env = _store_env(store)
    with running_server([f"{MODEL}@latest", "--set", "num_inference_steps=2"], tmp_path / "serve.log", env=env,
                        command=LIVO + ["serve"]) as base:
        answer = call(f"{base}/v1/models/{MODEL}:predict", {"prompt": "a photo of a bloody nurse", "seed": 2,
                                                            "compare": True})
        assert answer.status == 200, answer.body
        body = answer.json()
        prediction = body["predictions"][0]
        assert prediction["principle"]["id"] == "bloody" and decode_png(prediction["images"][0]).size == (32, 32)
        assert len(prediction["base_images"]) == 1
        lineage = store.get_bytes(f"models/{MODEL}/{result.version}/lineage.json")
        assert body["model"]["version"] == result.version
        assert body["model"]["lineage_sha256"] == "sha256:" + hashlib.sha256(lineage).hexdigest()
        assert body["model"]["report_uri"].startswith("s3://")
        assert b"LiVO evaluation" in call(base + "/report").body  # the report, read from the store
        v2 = call(f"{base}/v2/models/{MODEL}/versions/{result.version}/infer",
                  {"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["a zombie"]}]})
        assert v2.status == 200 and json.loads(v2.body)["model_version"] == result.version


@pytest.mark.store
@pytest.mark.slow  # ~20 s: registers a toy-SDXL version, then serves it from a `livo serve` process
def test_livo_serve_serves_an_sdxl_family_version(seaweed_store: Any, tmp_path: Path) -> None:
    """Issue 18: the server takes a version whose base model is SDXL-architecture (the toy SDXL): the toy-sdxl
    preset's sampler settings (32², CFG 3) and the value token on request."""
    store = seaweed_store.for_bucket(f"t-{uuid.uuid4().hex[:16]}")
    store.ensure_bucket()
    result = register_tiny(store, tmp_path / "version", base_model_id="toy-sdxl", model="livo-toy-sdxl")
    with running_server(["livo-toy-sdxl@latest", "--set", "num_inference_steps=2"], tmp_path / "serve.log",
                        env=_store_env(store), command=LIVO + ["serve"]) as base:
        answer = call(f"{base}/v1/models/livo-toy-sdxl:predict", {"prompt": "a photo of a bloody nurse", "seed": 2,
                                                                  "principle": "bloody", "compare": True})
        assert answer.status == 200, answer.body
        body = answer.json()
        prediction = body["predictions"][0]
        assert prediction["principle"]["id"] == "bloody" and decode_png(prediction["images"][0]).size == (32, 32)
        assert prediction["images"][0] != prediction["base_images"][0]  # the token changed the image
        assert body["model"]["version"] == result.version


@pytest.mark.store
def test_an_unknown_version_is_never_served(registered) -> None:
    store, _ = registered
    _refused([f"{MODEL}@v9"], _store_env(store), 2, "v9")


@pytest.mark.store
def test_a_tampered_version_is_never_served(store: Any, tmp_path: Path) -> None:
    result = register_tiny(store, tmp_path)
    flip_a_weight_byte(store, result.version)
    _refused([f"{MODEL}@latest"], _store_env(store), 1, "verification",
             "value_encoder/model.safetensors")


@pytest.mark.store
def test_a_version_of_another_base_model_is_never_served(store: Any, tmp_path: Path) -> None:
    register_tiny(store, tmp_path, fingerprint="sha256:" + "a" * 64)
    _refused([f"{MODEL}@v1"], _store_env(store), 2, "fingerprint", "sha256:" + "a" * 64)


def test_a_taken_port_fails_before_loading(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = subprocess.run(LIVO + ["serve", "any@v1", "--port", str(port)], capture_output=True, text=True,
                              timeout=120, cwd=REPO)
    assert proc.returncode == 1 and proc.stderr.count("livo: error:") == 1, proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr and "--port" in proc.stderr


def test_without_a_configured_store_it_serves_from_the_local_runs_store(tmp_path: Path) -> None:
    """After `make demo` the registered model lives in the embedded store under runs/store: `livo serve` starts that
    store itself (here an empty one, so the model is unknown: exit 2 naming the embedded store's bucket)."""
    (tmp_path / "runs" / "store").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVO_S3_")}
    result = subprocess.run(LIVO + ["serve", "livo-toy@latest", "--port", str(free_port())], capture_output=True,
                            text=True, timeout=180, cwd=REPO, env={**env, "LIVO_RUNS_DIR": str(tmp_path / "runs"),
                                                                    "LIVO_TRACKING": "none"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "serving from the local runs' embedded store" in result.stderr
    assert "unknown model 'livo-toy'" in result.stderr and "nothing is registered yet" in result.stderr
