"""Importer of the authors' released layout, on a small fixture in that layout (tests/data/fixtures/authors)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import datasets
import pytest

from livo.cli import main
from livo.data.dataset import load_preference_dataset
from livo.data.importer import collect_rows, import_authors_dataset, normalize_value, resolve_principle
from livo.errors import ConfigError, DataError
from livo.principles import load_principles

AUTHORS = Path(__file__).parent / "fixtures" / "authors"


# Every spelling of a principle in the authors' public code (github.com/achernarwang/LiVO: README.md,
# value_encoder/inference_example.py, value_retriever/retriever.py, evaluation/eval_bias.py, eval_toxicity.py), then
# variants of case, whitespace, hyphen/underscore, punctuation and typos.
THEIR_SPELLINGS = [
    ("gender equality", "gender-equality"),  # README --validation_prompts, eval_bias.py, retriever.py
    ("racial equality", "racial-equality"),  # inference_example.py, eval_bias.py, retriever.py
    ("nudity considered inappropriate", "nudity"),  # README --validation_prompts, eval_toxicity.py
    ("bloody considered inappropriate", "bloody"),  # eval_toxicity.py
    ("zombie considered inappropriate", "zombie"),  # eval_toxicity.py
    ("bloody content is considered inappropriate", "bloody"),  # README and inference_example.py
    ("nudity considered inapproporiate", "nudity"),  # retriever.py (sic)
    ("bloody considered inapproporiate", "bloody"),  # retriever.py (sic)
    ("zombie considered inapproporiate", "zombie"),  # retriever.py (sic)
    ("Gender Equality", "gender-equality"),
    ("GENDER  EQUALITY ", "gender-equality"),
    ("gender-equality", "gender-equality"),
    ("gender_equality", "gender-equality"),
    ("Racial Equality.", "racial-equality"),
    ("race equality", "racial-equality"),
    ("nudity considered inapproriate", "nudity"),
    ("nudity considered inappropiate", "nudity"),
    ("Nudity is considered inappropriate!", "nudity"),
    ("nudity content is generally considered inappropriate", "nudity"),
    ("nude considered inappropriate", "nudity"),
    ("naked-considered-inappropriate", "nudity"),
    ("bloody considered inapproriate", "bloody"),
    ("Bloody content considered inappropriate;", "bloody"),
    ("blood is considered inappropriate", "bloody"),
    ("zombie considered inapproriate", "zombie"),
    ("Zombie considered inappropriate.", "zombie"),
    ("zombies are considered inappropriate", "zombie"),
    ("zombie_content_is_considered_inappropriate", "zombie"),
    ("zombie considerd inappropriate", "zombie"),  # an unseen typo of a known word
    ("gender equalty", "gender-equality"),
]
NOT_PRINCIPLES = [
    "be nice", "", "  ", "not applicable", "retrieve failure",  # the last two: retriever.py's other answers
    "nudity considered appropriate", "zombie considered appropriate", "bloody content is considered appropriate",
    "nudity not considered inappropriate", "gender inequality", "racial inequality", "gender equality not required",
    "violence considered inappropriate", "considered inappropriate", "inappropriate", "equality", "bloody mary",
    "nudity considered inappropriate for children", "racist", "zombie apocalypse",
]


@pytest.mark.parametrize(("spelling", "expected"), THEIR_SPELLINGS)
def test_their_spellings_map_to_our_ids(spelling, expected):
    assert resolve_principle(spelling, load_principles()).id == expected


@pytest.mark.parametrize("text", NOT_PRINCIPLES)
def test_unrelated_strings_map_to_nothing(text):
    assert resolve_principle(text, load_principles()) is None


def test_a_mapping_settles_an_unknown_spelling():
    principles = load_principles()
    assert resolve_principle("be nice", principles, {normalize_value("be nice"): "gender-equality"}).id == \
        "gender-equality"


def test_import_fixture(tmp_path):
    uri, report = import_authors_dataset(AUTHORS, tmp_path / "ds", seed=3)
    assert report["rows"] == 7 and report["scenes"] == 5  # one pair per aligned image
    assert report["seed"] == 3 and "drawn uniformly" in report["pairing"]
    assert report["spellings"]["bloody considered inapproriate"] == "bloody"
    assert report["skipped_scenes"] == ["zombie/only_aligned (no violating image)"]
    ds = load_preference_dataset(uri, cache_dir=tmp_path / "cache")
    assert ds.manifest["source"] == "imported" and ds.principle_set_hash == load_principles().hash
    assert ds.manifest["seed"] == 3 and ds.manifest["config"]["pairing_seed"] == 3
    assert ds.manifest["config"]["pairing"] == report["pairing"]
    assert ds.manifest["counts"]["by_principle"] == {"bloody": 2, "gender-equality": 2, "nudity": 1,
                                                     "racial-equality": 1, "zombie": 1}
    doctor = ds.scenes["gender-equality/gender/doctor"]
    assert len(doctor) == 2  # 2 aligned and 3 violating images: one pair per aligned image
    rows = [ds[i] for i in doctor]
    assert [r["aligned_prompt"] for r in rows] == ["a photo of the face of a female doctor"] * 2
    assert {r["prompt"] for r in rows} == {"a photo of the face of a doctor"}
    raw = ds.rows.cast_column("violating_image", datasets.Image(decode=False))
    raw_aligned = ds.rows.cast_column("aligned_image", datasets.Image(decode=False))
    # Images keep their original bytes (the JPEGs are not re-encoded) and file names.
    assert [raw_aligned[i]["aligned_image"]["path"] for i in doctor] == ["aligned_0.jpg", "aligned_1.jpg"]
    for i in doctor:
        name = raw[i]["violating_image"]["path"]
        assert name in {"violating_2.jpg", "violating_3.jpg", "violating_4.jpg"}
        assert raw[i]["violating_image"]["bytes"] == (AUTHORS / "gender/doctor" / name).read_bytes()
    knife = ds.scenes["bloody/bloody/knife"]  # 2 aligned, 1 violating: both pairs share the violating image
    assert [raw[i]["violating_image"]["path"] for i in knife] == ["violating_2.png"] * 2
    zombie = ds[ds.scenes["zombie/zombie/zombie-man"][0]]
    assert (zombie["prompt"], zombie["aligned_prompt"]) == ("a zombie man", "a man")  # value prefix stripped
    assert zombie["principle_text"] == "zombie considered inappropriate"


def _synthetic_scene(root: Path, scene: str, aligned: int, violating: int) -> None:
    """A scene in their layout: `aligned` metadata lines naming one aligned file (decoded once), and `violating`
    distinct violating files."""
    from PIL import Image

    folder = root / "gender" / scene
    folder.mkdir(parents=True)
    Image.new("RGB", (2, 2), (0, 0, 0)).save(folder / "a.png")
    lines = [{"file_name": "a.png", "prompt": f"a female {scene}", "value": "gender equality", "label": 1}] * aligned
    for k in range(violating):
        Image.new("RGB", (2, 2), (k, 0, 0)).save(folder / f"v{k}.png")
        lines.append({"file_name": f"v{k}.png", "prompt": f"a {scene}", "value": "gender equality", "label": 0})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def _violating_names(rows: list[dict]) -> list[str]:
    return [row["violating_image"]["path"] for row in rows]


def test_pairing_draws_the_violating_image_uniformly_from_the_same_scene(tmp_path):
    source = tmp_path / "src"
    n, k = 6000, 6
    _synthetic_scene(source, "doctor", aligned=n, violating=k)
    _synthetic_scene(source, "nurse", aligned=50, violating=3)
    principles = load_principles()
    for seed in (0, 1, 2):
        rows, report = collect_rows(source, principles, seed=seed)
        assert report["rows"] == n + 50 == len(rows)  # one pair per aligned image
        by_scene = {scene: [r for r in rows if r["scene"] == f"gender-equality/gender/{scene}"]
                    for scene in ("doctor", "nurse")}
        assert len(by_scene["doctor"]) == n and len(by_scene["nurse"]) == 50
        assert set(_violating_names(by_scene["nurse"])) <= {"v0.png", "v1.png", "v2.png"}  # never another scene's
        assert {r["violating_prompt"] for r in by_scene["doctor"]} == {"a doctor"}
        counts = Counter(_violating_names(by_scene["doctor"]))
        assert set(counts) == {f"v{j}.png" for j in range(k)}
        # Uniform: chi-square with k-1 = 5 degrees of freedom below its 0.1% critical value (20.52), and every
        # share within 0.03 of 1/6 (the standard deviation of a share is sqrt(1/6 * 5/6 / 6000) = 0.0048).
        expected = n / k
        chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
        assert chi2 < 20.52, (seed, counts)
        assert max(abs(c / n - 1 / k) for c in counts.values()) < 0.03, (seed, counts)


def test_pairing_is_reproducible_by_seed(tmp_path):
    source = tmp_path / "src"
    _synthetic_scene(source, "doctor", aligned=200, violating=5)
    principles = load_principles()
    first = _violating_names(collect_rows(source, principles, seed=7)[0])
    assert first == _violating_names(collect_rows(source, principles, seed=7)[0])
    assert first != _violating_names(collect_rows(source, principles, seed=8)[0])
    # The whole import: same seed -> byte-identical shards (the manifest's sha256 per shard).
    uris = [import_authors_dataset(AUTHORS, tmp_path / name, seed=seed)[0]
            for name, seed in (("a", 5), ("b", 5))]
    manifests = [json.loads((Path(uri) / "manifest.json").read_text()) for uri in uris]
    assert manifests[0]["shards"] == manifests[1]["shards"]
    with pytest.raises(ConfigError, match="seed"):
        import_authors_dataset(AUTHORS, tmp_path / "c", seed="5")
    # The CLI passes --seed through and the manifest records it.
    assert main(["data", "import", str(AUTHORS), "--out", str(tmp_path / "cli"), "--seed", "5"]) == 0
    cli_manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert cli_manifest["seed"] == 5 and cli_manifest["shards"] == manifests[0]["shards"]


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
