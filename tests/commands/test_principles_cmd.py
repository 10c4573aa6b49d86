"""`livo principles validate`: summary + hash on success, the file/entry/field message and exit code 2 on failure."""

from __future__ import annotations

import json

from livo.cli import main
from livo.principles import default_principles_path, load_principles


def test_validate_default_prints_hash_and_summary(capsys):
    assert main(["principles", "validate", str(default_principles_path())]) == 0
    out = capsys.readouterr().out
    assert f"hash: {load_principles().hash}" in out
    assert "5 principle(s):" in out
    assert "gender-equality" in out and "'zombie considered inappropriate'" in out
    assert "race ['white', 'black', 'indian', 'asian', 'latino']" in out


def test_validate_json(capsys):
    assert main(["principles", "validate", str(default_principles_path()), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is True and report["hash"] == load_principles().hash
    assert [p["id"] for p in report["principles"]] == ["gender-equality", "racial-equality", "nudity", "bloody",
                                                       "zombie"]
    assert report["principles"][0]["retrieval"]["person"] is True
    assert report["principles"][2]["evaluation"] == {"concept": "nudity"}


def test_invalid_file_exits_2_with_the_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("principles:\n  - id: x\n    text: x\n    category: bias\n    retrieval: {person: true}\n"
                   "    evaluation: {attribute: gender, classes: [male, female], colour: red}\n")
    assert main(["principles", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"livo: error: {bad}: principles[0] (id 'x'): evaluation.colour: unknown key")
    assert "attribute, classes, concept" in err


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["principles", "validate", str(tmp_path / "nope.yaml")]) == 2
    assert "no such principles file" in capsys.readouterr().err
