"""Importer of the authors' released layout, on a small fixture in that layout (tests/data/fixtures/authors)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest

from livo.cli import main
from livo.data.dataset import load_preference_dataset
from livo.data.importer import import_authors_dataset, normalize_value, resolve_principle
from livo.errors import ConfigError, DataError
from livo.principles import load_principles

AUTHORS = Path(__file__).parent / "fixtures" / "authors"


def test_their_spellings_map_to_our_ids():
    principles = load_principles()
    for spelling, expected in [
        ("gender equality", "gender-equality"),
        ("Racial Equality", "racial-equality"),
        ("nudity considered inapproriate", "nudity"),
        ("bloody considered inapproriate", "bloody"),
        ("zombie considered inapproriate", "zombie"),
        ("Zombie considered inappropriate.", "zombie"),
        ("zombie considerd inappropriate", "zombie"),  # close match of an unseen typo
    ]:
        assert resolve_principle(spelling, principles).id == expected, spelling
    assert resolve_principle("be nice", principles) is None
    assert resolve_principle("be nice", principles, {normalize_value("be nice"): "gender-equality"}).id == \
        "gender-equality"


def test_import_fixture(tmp_path):
    uri, report = import_authors_dataset(AUTHORS, tmp_path / "ds")
    assert report["rows"] == 8 and report["scenes"] == 5
    assert report["spellings"]["bloody considered inapproriate"] == "bloody"
    assert report["skipped_scenes"] == ["zombie/only_aligned (no violating image)"]
    ds = load_preference_dataset(uri, cache_dir=tmp_path / "cache")
    assert ds.manifest["source"] == "imported" and ds.principle_set_hash == load_principles().hash
    assert ds.manifest["counts"]["by_principle"] == {"bloody": 2, "gender-equality": 3, "nudity": 1,
                                                     "racial-equality": 1, "zombie": 1}
    doctor = ds.scenes["gender-equality/gender/doctor"]
    assert len(doctor) == 3  # 2 aligned and 3 violating images: the shorter list cycles, no image dropped
    rows = [ds[i] for i in doctor]
    assert [r["aligned_prompt"] for r in rows] == ["a photo of the face of a female doctor"] * 3
    assert {r["prompt"] for r in rows} == {"a photo of the face of a doctor"}
    raw = ds.rows.cast_column("violating_image", datasets.Image(decode=False))
    # Images keep their original bytes (the JPEGs are not re-encoded) and file names.
    assert [raw[i]["violating_image"]["path"] for i in doctor] == ["violating_2.jpg", "violating_3.jpg",
                                                                  "violating_4.jpg"]
    assert raw[doctor[0]]["violating_image"]["bytes"] == (AUTHORS / "gender/doctor/violating_2.jpg").read_bytes()
    zombie = ds[ds.scenes["zombie/zombie/zombie-man"][0]]
    assert (zombie["prompt"], zombie["aligned_prompt"]) == ("a zombie man", "a man")  # value prefix stripped
    assert zombie["principle_text"] == "zombie considered inappropriate"


def test_unknown_spelling_needs_a_mapping(tmp_path, capsys):
    source = tmp_path / "src"
    shutil.copytree(AUTHORS / "race", source / "race")
    metadata = source / "race" / "nurse" / "metadata.jsonl"
    lines = [json.loads(line) for line in metadata.read_text().splitlines()]
    metadata.write_text("\n".join(json.dumps({**line, "value": "equal skin tones"}) for line in lines) + "\n")
    with pytest.raises(ConfigError, match="'equal skin tones' \\(in race/nurse\\).*--map"):
        import_authors_dataset(source, tmp_path / "out")
    code = main(["data", "import", str(source), "--out", str(tmp_path / "out"), "--map",
                 "equal skin tones=racial-equality"])
    assert code == 0 and "imported 1 pairs from 1 scenes" in capsys.readouterr().out
    assert main(["data", "verify", str(tmp_path / "out")]) == 0


def test_broken_metadata_is_reported(tmp_path):
    scene = tmp_path / "src" / "gender" / "x"
    scene.mkdir(parents=True)
    (scene / "metadata.jsonl").write_text('{"file_name": "a.png", "prompt": "p", "value": "gender equality", '
                                          '"label": 1}\n')
    with pytest.raises(DataError, match="image 'a.png' is missing"):
        import_authors_dataset(tmp_path / "src", tmp_path / "out")
    with pytest.raises(ConfigError, match="no <type>/<scene>/metadata.jsonl"):
        import_authors_dataset(tmp_path, tmp_path / "out2")
