"""Bad data is found at the door: `livo data import` and `livo data verify` decode every image and check the schema,
a damaged manifest or metadata file is one line naming the file, and a full disk while writing is one line too.

Every case runs the real CLI (`livo.cli.main`) and checks the exit code and that stderr is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from livo.cli import main

AUTHORS = Path(__file__).parent / "fixtures" / "authors"
PRINCIPLE_SET_HASH = "sha256:" + "ab" * 32


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what the test's own setup printed
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def copy_authors(tmp_path: Path) -> Path:
    source = tmp_path / "authors"
    shutil.copytree(AUTHORS, source)
    return source


def _image(seed: int):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8))


def rows(count: int = 4) -> list[dict]:
    return [dict(prompt="a photo of a doctor", principle_id="gender-equality", principle_text="gender equality",
                 scene="gender-equality/career/doctor", aligned_image=_image(k), violating_image=_image(100 + k))
            for k in range(count)]


def write_raw_dataset(path: Path, table: dict, features) -> str:
    """A dataset whose single shard holds `table` as given (no validation by our writer), committed and merged
    exactly as livo would: what a foreign tool, an old livo or a hand edit could leave behind."""
    import datasets

    from livo.data.dataset import (
        SHARD_FORMAT_NAME,
        count_rows,
        merge_shards,
        sha256_file,
        shard_dirname,
    )

    shard = path / shard_dirname(0, 1)
    shard.mkdir(parents=True)
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(shard / "data.parquet"))
    n = len(table["prompt"])
    commit = {"format": SHARD_FORMAT_NAME, "format_version": 1, "shard_index": 0, "shard_count": 1,
              "generation_key": "k", "rows": n, "columns": list(features), "latent_shape": None, "embed_shape": None,
              "file": {"path": f"{shard.name}/data.parquet", "sha256": sha256_file(shard / "data.parquet"),
                       "bytes": (shard / "data.parquet").stat().st_size},
              "counts": count_rows([{"principle_id": p, "scene": s}
                                    for p, s in zip(table["principle_id"], table["scene"], strict=True)]),
              "stats": {}, "metadata": {}}
    (shard / "shard.json").write_text(json.dumps(commit))
    merge_shards(path, shard_count=1, name="raw", dataset_id="raw", principle_set_hash=PRINCIPLE_SET_HASH,
                 generation_key="k")
    return str(path)


def valid_table(count: int = 4) -> dict:
    from livo.data.dataset import normalize_row

    normalized = [normalize_row(row) for row in rows(count)]
    return {name: [row[name] for row in normalized] for name in normalized[0]}


# -- import --------------------------------------------------------------------------------------------------------


def test_import_rejects_a_file_that_is_not_an_image(tmp_path, capsys):
    source = copy_authors(tmp_path)
    bad = source / "gender" / "doctor" / "violating_3.jpg"
    bad.write_text("this is not a jpeg")
    code, _, err = run_cli(capsys, "data", "import", str(source), "--out", str(tmp_path / "ds"))
    line = one_line_error(err)
    assert code == 2, err
    assert str(bad) in line and "not a decodable image" in line and "metadata.jsonl:" in line
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_import_rejects_a_truncated_image(tmp_path, capsys):
    source = copy_authors(tmp_path)
    bad = source / "race" / "nurse" / "aligned_0.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # a valid header, half the pixels
    code, _, err = run_cli(capsys, "data", "import", str(source), "--out", str(tmp_path / "ds"))
    assert code == 2 and str(bad) in one_line_error(err), err


def test_import_names_a_line_that_is_not_utf8(tmp_path, capsys):
    source = copy_authors(tmp_path)
    metadata = source / "race" / "nurse" / "metadata.jsonl"
    metadata.write_bytes(metadata.read_bytes() + b'{"file_name": "aligned_0.png", "prompt": "caf\xe9", '
                                                 b'"value": "racial equality", "label": 1}\n')
    code, _, err = run_cli(capsys, "data", "import", str(source), "--out", str(tmp_path / "ds"))
    line = one_line_error(err)
    assert code == 2 and f"{metadata}:3: not UTF-8" in line, err


@pytest.mark.parametrize(("entry", "fragment"), [
    ('{"file_name": "aligned_0.png", "prompt": "x", "value": "racial equality", "label": 7}', "label 7"),
    ('{"file_name": "aligned_0.png", "prompt": "x", "label": 1}', "missing value"),
    ('{"file_name": ["aligned_0.png"], "prompt": "x", "value": "racial equality", "label": 1}', "file_name is list"),
    ('{"file_name": "aligned_0.png", "prompt": "x", "value": "racial equality", "label": 1', "not valid JSON"),
    ('["aligned_0.png"]', "expected a JSON object"),
])
def test_import_malformed_metadata_is_bad_input(tmp_path, capsys, entry, fragment):
    source = copy_authors(tmp_path)
    metadata = source / "race" / "nurse" / "metadata.jsonl"
    metadata.write_text(metadata.read_text() + entry + "\n")
    code, _, err = run_cli(capsys, "data", "import", str(source), "--out", str(tmp_path / "ds"))
    line = one_line_error(err)
    assert code == 2 and f"{metadata}:3:" in line and fragment in line, err


# -- verify / info -------------------------------------------------------------------------------------------------


def test_verify_decodes_every_image_and_names_the_row(tmp_path, capsys):
    table = valid_table()
    table["violating_image"][2] = {"bytes": b"GIF89a but not really", "path": "v2.gif"}
    uri = write_raw_dataset(tmp_path / "ds", table, _features())
    code, _, err = run_cli(capsys, "data", "verify", uri)
    line = one_line_error(err)
    assert code == 2, err
    assert "shard-00000-of-00001/data.parquet: row 2 (dataset row 2) violating_image (v2.gif)" in line
    assert "not a decodable image" in line
    # The hash-only check still passes: the bytes are what the manifest recorded.
    assert run_cli(capsys, "data", "verify", uri, "--hashes-only")[0] == 0


def test_verify_checks_column_types(tmp_path, capsys):
    import datasets

    table = valid_table()
    table["aligned_seed"] = [str(k) for k in range(4)]
    features = _features()
    features["aligned_seed"] = datasets.Value("string")
    uri = write_raw_dataset(tmp_path / "ds", table, features)
    code, _, err = run_cli(capsys, "data", "verify", uri)
    line = one_line_error(err)
    assert code == 2 and "column aligned_seed is string, the contract says int64" in line, err


def test_verify_passes_a_good_dataset_and_counts_images(tmp_path, capsys):
    from livo.data.dataset import write_rows_dataset

    uri = write_rows_dataset(rows(3), tmp_path / "ds", principle_set_hash=PRINCIPLE_SET_HASH, num_shards=2)
    code, out, err = run_cli(capsys, "data", "verify", uri, "--json")
    assert code == 0, err
    assert json.loads(out)["images_decoded"] == 6


@pytest.mark.parametrize("command", ["verify", "info"])
@pytest.mark.parametrize(("damage", "fragment"), [
    (lambda m: m.pop("shards"), "required key(s) shards missing"),
    (lambda m: m.pop("counts"), "required key(s) counts missing"),
    (lambda m: m.update(num_rows="4"), "num_rows is str, expected int"),
    (lambda m: m["shards"][0].pop("sha256"), "shards[0] lacks sha256"),
])
def test_a_damaged_manifest_is_one_line(tmp_path, capsys, command, damage, fragment):
    from livo.data.dataset import write_rows_dataset

    uri = write_rows_dataset(rows(2), tmp_path / "ds", principle_set_hash=PRINCIPLE_SET_HASH)
    manifest_path = Path(uri) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    damage(manifest)
    manifest_path.write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, "data", command, uri)
    line = one_line_error(err)
    assert code == 2 and str(manifest_path) in line and fragment in line, err


def test_a_missing_dataset_is_bad_input(tmp_path, capsys):
    code, _, err = run_cli(capsys, "data", "verify", str(tmp_path / "nothing"))
    assert code == 2 and "no manifest.json" in one_line_error(err)


# -- writing to a full disk ----------------------------------------------------------------------------------------


def test_import_onto_a_full_disk_is_one_line_and_leaves_no_manifest(tmp_path, capsys, small_tmpfs):
    mount, fill = small_tmpfs
    fill(4 * 1024)  # room for the write probe and the directories, not for a shard of the fixture's images
    out = mount / "ds"
    code, _, err = run_cli(capsys, "data", "import", str(AUTHORS), "--out", str(out))
    line = one_line_error(err)
    assert code == 1, err
    assert "no space left on the device writing shard shard-00000-of-00001 (7 rows)" in line
    assert str(out / "shard-00000-of-00001") in line and "it needs about" in line
    assert not (out / "manifest.json").exists()
    assert not list(out.rglob("*.tmp")) and not (out / "shard-00000-of-00001" / "shard.json").exists()


def _features():
    from livo.data.dataset import preference_features

    return preference_features()
