"""Dataset format: shard writer, manifest, reader, verification (local directories; the store variant is marked)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from livo.data.dataset import (
    MANIFEST_FILE,
    LocalLocation,
    load_preference_dataset,
    read_shard_commit,
    shard_is_complete,
    verify_dataset,
    write_rows_dataset,
    write_shard,
)
from livo.errors import DataError

HASH = "sha256:" + "ab" * 32


def make_rows(n: int, *, latents: bool = False, embeds: bool = False) -> list[dict]:
    rows = []
    for i in range(n):
        row = {
            "prompt": f"a photo of the face of a doctor {i}",
            "principle_id": "gender-equality" if i % 2 == 0 else "bloody-inappropriate",
            "principle_text": "gender equality" if i % 2 == 0 else "bloody considered inappropriate",
            "scene": f"gender-equality/career/doctor{i % 3}",
            "aligned_image": Image.new("RGB", (8, 8), (i * 20, 0, 0)),
            "violating_image": Image.new("RGB", (8, 8), (0, i * 20, 0)),
            "aligned_seed": 100 + i,
            "violating_seed": 200 + i,
            "judge_scores": {"aligned": {"female": 0.9}, "violating": {"male": 0.8}},
        }
        if latents:
            row["aligned_latents"] = np.full((4, 2, 2), i, dtype=np.float32)
            row["violating_latents"] = np.full((4, 2, 2), -i, dtype=np.float32)
        if embeds:
            row["prompt_embeds"] = np.full((77, 8), 0.5 * i, dtype=np.float32)
        rows.append(row)
    return rows


def test_round_trip_with_arrays(tmp_path):
    uri = write_rows_dataset(make_rows(5, latents=True, embeds=True), tmp_path / "ds", principle_set_hash=HASH,
                             num_shards=2, seed=7)
    ds = load_preference_dataset(uri, cache_dir=tmp_path / "cache")
    assert len(ds) == 5
    assert ds.principle_set_hash == HASH
    assert ds.manifest["num_rows"] == 5 and len(ds.manifest["shards"]) == 2
    assert ds.manifest["counts"]["by_principle"] == {"bloody-inappropriate": 2, "gender-equality": 3}
    assert ds.scenes == {"gender-equality/career/doctor0": [0, 3], "gender-equality/career/doctor1": [1, 4],
                         "gender-equality/career/doctor2": [2]}
    row = ds[4]
    assert row["aligned_image"].getpixel((3, 3)) == (80, 0, 0)
    assert row["violating_image"].getpixel((0, 0)) == (0, 80, 0)
    assert row["aligned_prompt"] == row["prompt"] and row["aligned_seed"] == 104
    assert json.loads(row["judge_scores"])["aligned"]["female"] == 0.9
    arrays = ds.rows.with_format("numpy")[4]
    assert arrays["aligned_latents"].shape == (4, 2, 2) and float(arrays["violating_latents"][0, 0, 0]) == -4.0
    assert arrays["prompt_embeds"].shape == (77, 8) and float(arrays["prompt_embeds"][0, 0]) == 2.0
    assert ds.has_latents and ds.has_prompt_embeds
    assert ds.rows.features["aligned_latents"].dtype == "float16"


def test_same_rows_give_byte_identical_datasets(tmp_path):
    a = write_rows_dataset(make_rows(3), tmp_path / "a", principle_set_hash=HASH)
    b = write_rows_dataset(make_rows(3), tmp_path / "b", principle_set_hash=HASH)
    assert (tmp_path / "a" / MANIFEST_FILE).read_bytes() == (tmp_path / "b" / MANIFEST_FILE).read_bytes()
    assert verify_dataset(a)["manifest_sha256"] == verify_dataset(b)["manifest_sha256"]


def test_corrupted_shard_is_detected(tmp_path):
    uri = write_rows_dataset(make_rows(4), tmp_path / "ds", principle_set_hash=HASH, num_shards=2)
    shard = tmp_path / "ds" / "shard-00001-of-00002" / "data.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="shard-00001-of-00002/data.parquet is corrupted"):
        load_preference_dataset(uri, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="corrupted dataset"):
        verify_dataset(uri)
    assert not shard_is_complete(LocalLocation(tmp_path / "ds"), 1, 2, read_shard_commit(
        LocalLocation(tmp_path / "ds"), 1, 2)["generation_key"])


def test_missing_and_empty_datasets_are_refused(tmp_path):
    with pytest.raises(DataError, match="no manifest.json"):
        load_preference_dataset(tmp_path / "nothing-here")
    with pytest.raises(DataError, match="no rows"):
        write_rows_dataset([], tmp_path / "empty", principle_set_hash=HASH)
    with pytest.raises(DataError, match="lacks violating_image"):
        rows = make_rows(1)
        del rows[0]["violating_image"]
        write_rows_dataset(rows, tmp_path / "bad", principle_set_hash=HASH)


def test_partial_shard_without_commit_is_incomplete(tmp_path):
    location = LocalLocation(tmp_path / "ds")
    write_shard(location, make_rows(2), shard_index=0, shard_count=1, generation_key="k1")
    assert shard_is_complete(location, 0, 1, "k1")
    assert not shard_is_complete(location, 0, 1, "another-config")
    (tmp_path / "ds" / "shard-00000-of-00001" / "shard.json").unlink()
    assert not shard_is_complete(location, 0, 1, "k1")
    # Nothing but finished files is left behind by the writer (no temp files).
    assert sorted(p.name for p in (tmp_path / "ds" / "shard-00000-of-00001").iterdir()) == ["data.parquet"]


@pytest.mark.store
def test_store_round_trip_and_corruption(store, tmp_path):
    uri = store.uri("datasets/rows/abc")
    assert write_rows_dataset(make_rows(3, latents=True), uri, principle_set_hash=HASH, store=store,
                              num_shards=2) == uri
    assert store.exists("datasets/rows/abc/manifest.json")
    ds = load_preference_dataset(uri, store=store, cache_dir=tmp_path / "cache")
    assert len(ds) == 3 and ds[2]["aligned_image"].getpixel((0, 0)) == (40, 0, 0)
    assert verify_dataset(uri, store=store)["shards"] == 2

    key = "datasets/rows/abc/shard-00000-of-00002/data.parquet"
    data = bytearray(store.get_bytes(key))
    data[100] ^= 0x01
    store.put_bytes(key, bytes(data))
    with pytest.raises(DataError, match="shard-00000-of-00002/data.parquet is corrupted"):
        load_preference_dataset(uri, store=store, cache_dir=tmp_path / "cache2")
    with pytest.raises(DataError, match="no manifest.json"):
        load_preference_dataset(store.uri("datasets/rows/never-written"), store=store)
