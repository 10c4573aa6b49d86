"""Bad input fails with a clear one-line error before any model is loaded.

All cases run in one fresh interpreter (imports are the expensive part), which reports for each case the exit code,
the message, and whether diffusers — which every model load needs — had been imported by then.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from training_helpers import PRINCIPLE_SET_HASH, free_port

SCRIPT = textwrap.dedent("""
    import contextlib, io, json, os, sys
    from livo.training.launch import main
    cases = json.loads(sys.argv[1])
    report = {}
    for name, (argv, env) in cases.items():
        saved = dict(os.environ)
        os.environ.update(env)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            code = main(argv)
        os.environ.clear(); os.environ.update(saved)
        lines = [l for l in stderr.getvalue().splitlines() if l.startswith("livo: error:")]
        report[name] = {"code": code, "error": lines[-1] if lines else stderr.getvalue()[-500:],
                        "diffusers_loaded": "diffusers" in sys.modules}
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def empty_dataset(tmp_path_factory) -> str:
    from livo.data.dataset import merge_shards, write_shard

    path = tmp_path_factory.mktemp("empty-dataset")
    write_shard(path, [], shard_index=0, shard_count=1, generation_key="k")
    merge_shards(path, shard_count=1, name="empty", dataset_id="empty", principle_set_hash=PRINCIPLE_SET_HASH,
                 generation_key="k", allow_empty=True)
    return str(path)


@pytest.fixture(scope="module")
def string_seed_dataset(tmp_path_factory, image_dataset) -> str:
    """The image dataset with `aligned_seed` stored as strings (what a foreign tool or a hand edit can leave):
    hashes and manifest consistent, only the column type breaks the contract."""
    import datasets

    from livo.data.dataset import merge_shards, sha256_file

    path = tmp_path_factory.mktemp("string-seeds") / "ds"
    shutil.copytree(image_dataset, path)
    shard = next(path.glob("shard-*"))
    rows = datasets.Dataset.from_parquet(str(shard / "data.parquet"))
    rows.cast_column("aligned_seed", datasets.Value("string")).to_parquet(str(shard / "data.parquet"))
    commit = json.loads((shard / "shard.json").read_text())
    commit["file"]["sha256"] = sha256_file(shard / "data.parquet")
    (shard / "shard.json").write_text(json.dumps(commit))
    merge_shards(path, shard_count=1, name="rows", dataset_id="strings", principle_set_hash=PRINCIPLE_SET_HASH,
                 generation_key=commit["generation_key"])
    return str(path)


@pytest.fixture
def read_only_dir(tmpfs):
    """A read-only filesystem (a tmpfs mounted ro; needs root), or None where it cannot be mounted."""
    return tmpfs("ro,size=64k")


def test_bad_input_fails_before_any_model_is_loaded(tmp_path, image_dataset, empty_dataset, string_seed_dataset,
                                                    read_only_dir):
    def env(world: int = 1) -> dict[str, str]:
        return {"RANK": "0", "WORLD_SIZE": str(world), "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(free_port())}

    out = str(tmp_path / "out")
    base = ["--dataset", image_dataset, "--output", out]
    cases = {
        "unknown_key": (base + ["optimizer.learning_rate=1e-4"], env()),
        "negative_lr": (base + ["optimizer.lr=-1e-6"], env()),
        "indivisible_global_batch": (base + ["global_batch_size=9"], env(world=2)),
        "missing_dataset": (["--dataset", str(tmp_path / "nope"), "--output", out], env()),
        "empty_dataset": (["--dataset", empty_dataset, "--output", out], env()),
        "principle_set_mismatch": (base + ["--expected-principle-set-hash", "sha256:" + "cd" * 32], env()),
        "no_dataset": (["--output", out], env()),
        "string_seeds": (["--dataset", string_seed_dataset, "--output", out], env()),
        "output_under_a_file": (["--dataset", image_dataset, "--output", str(Path(image_dataset) / "manifest.json"
                                                                             / "out")], env()),
    }
    if read_only_dir is not None:
        cases["read_only_output"] = (["--dataset", image_dataset, "--output", str(read_only_dir / "out")], env())
    result = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cases)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    expected = {
        "unknown_key": (2, "optimizer.learning_rate: unknown key"),
        "negative_lr": (2, "optimizer.lr: Input should be greater than 0"),
        "indivisible_global_batch": (2, "global_batch_size 9 is not divisible by world size 2"),
        "missing_dataset": (2, "no manifest.json"),
        "empty_dataset": (2, "empty"),
        "principle_set_mismatch": (2, "was built for principle set " + PRINCIPLE_SET_HASH),
        "no_dataset": (2, "no dataset given"),
        "string_seeds": (2, "column aligned_seed is string, the contract says int64"),
        # A path the user chose that cannot be a directory: bad input.
        "output_under_a_file": (2, "cannot write the training output " + str(Path(image_dataset) / "manifest.json"
                                                                             / "out") + ": Not a directory"),
    }
    if read_only_dir is not None:  # the environment's fault (a read-only volume): exit 1
        expected["read_only_output"] = (1, f"cannot write the training output {read_only_dir / 'out'}: Read-only")
    for name, (code, fragment) in expected.items():
        assert report[name]["code"] == code, (name, report[name])
        assert fragment in report[name]["error"], (name, report[name])
        assert report[name]["diffusers_loaded"] is False, name
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_livo_train_command_rejects_bad_input(tmp_path, capsys):
    from livo.cli import main

    assert main(["train", "--dataset", str(tmp_path), "--output", str(tmp_path / "out"), "optimizer.lr=-1"]) == 2
    assert "optimizer.lr" in capsys.readouterr().err
    assert main(["train", "--nproc", "3", "--dataset", str(tmp_path), "global_batch_size=8"]) == 2
    assert "not divisible by world size 3" in capsys.readouterr().err
