"""`livo retrieve`: one prompt, a file of prompts, JSON lines, --eval; bad input gives exit code 2 and a cause.

These run keyword-only (--no-semantic) to stay fast; the semantic stage is covered in tests/test_retriever.py.
"""

from __future__ import annotations

import json

import pytest

from livo.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["retrieve", "--no-semantic", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_single_prompt_text(capsys):
    code, out, _ = run(capsys, "a bloody nurse")
    assert code == 0
    # the keyword stage's calibrated confidence (share of keyword decisions right on the dev splits): 0.9615
    assert out.split() == ["bloody", "0.96", "all=bloody,gender-equality,racial-equality", "a", "bloody", "nurse"]


def test_file_json_lines_skip_blank_lines(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\ufeffa bloody nurse\n\n   \na photo of a cat\na naked zombie\n", encoding="utf-8")
    code, out, _ = run(capsys, "--file", str(prompts), "--json")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["prompt"] for line in lines] == ["a bloody nurse", "a photo of a cat", "a naked zombie"]
    assert lines[0]["principle"] == {"id": "bloody", "text": "bloody considered inappropriate",
                                     "category": "toxicity"}
    assert lines[0]["all"] == ["bloody", "gender-equality", "racial-equality"]
    assert lines[0]["confidence"] == 0.9615
    # keywords only (no semantic stage): nothing measured the absence of a principle, so no confidence for "none"
    assert lines[1] == {"prompt": "a photo of a cat", "principle": None, "confidence": None, "all": []}
    assert lines[2]["all"] == ["nudity", "zombie"]


def test_explain_adds_the_deciding_stage(capsys):
    code, out, _ = run(capsys, "a photo of a doctor", "--json", "--explain")
    line = json.loads(out)
    assert code == 0 and line["explain"]["decided_by"] == "person-lexicon"


def test_non_utf8_line_names_file_and_line(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"a cat\na caf\xe9 terrace\n")
    code, out, err = run(capsys, "--file", str(prompts))
    assert code == 2 and out == ""
    assert f"{prompts}:2: not UTF-8" in err


def test_empty_prompt_and_missing_input_exit_2(tmp_path, capsys):
    code, _, err = run(capsys, "   ")
    assert code == 2 and "prompt is empty" in err
    code, _, err = run(capsys)
    assert code == 2 and "give a PROMPT" in err
    code, _, err = run(capsys, "--file", str(tmp_path / "missing.txt"))
    assert code == 2 and "no such file" in err


def test_custom_and_invalid_principles(tmp_path, capsys):
    custom = tmp_path / "p.yaml"
    custom.write_text("principles:\n  - id: no-smoking\n    text: smoking considered inappropriate\n"
                      "    category: other\n    retrieval: {keywords: [cigarette]}\n")
    code, out, _ = run(capsys, "--principles", str(custom), "a man with cigarettes", "--json")
    assert code == 0 and json.loads(out)["principle"]["id"] == "no-smoking"
    custom.write_text("principles:\n  - id: no-smoking\n    category: other\n")
    code, _, err = run(capsys, "--principles", str(custom), "a man")
    assert code == 2 and "principles[0] (id 'no-smoking'): text: required" in err


def test_eval_prints_accuracy_and_confusion(tmp_path, capsys):
    labelled = tmp_path / "l.jsonl"
    rows = [
        {"prompt": "a bloody knife", "expected": "bloody", "all": ["bloody"], "split": "dev"},
        {"prompt": "a photo of a nurse", "expected": ["gender-equality", "racial-equality"],
         "all": ["gender-equality", "racial-equality"], "split": "dev"},
        {"prompt": "a cat", "expected": None, "all": [], "split": "test"},
        {"prompt": "a woman without a stitch of clothing", "expected": "nudity", "split": "test"},
    ]
    labelled.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, out, _ = run(capsys, "--eval", str(labelled))
    assert code == 0
    assert "retrieve accuracy: 0.7500 on 4 prompts" in out
    assert "split dev: 1.0000" in out and "split test: 0.5000" in out
    assert "confusion (rows: expected, columns: retrieved):" in out
    assert "expected nudity, got gender-equality" in out
    code, out, _ = run(capsys, "--eval", str(labelled), "--json", "--split", "dev")
    report = json.loads(out)
    assert report["n"] == 2 and report["accuracy"] == 1.0
    assert report["confusion"]["bloody"] == {"bloody": 1}


def test_min_confidence_withholds_below_the_floor(capsys):
    code, out, _ = run(capsys, "a bloody nurse", "--json", "--explain", "--min-confidence", "0.95")
    line = json.loads(out)
    # keyword 0.9615 passes the floor; the person lexicon's 0.9453 does not
    assert code == 0 and line["principle"]["id"] == "bloody" and line["all"] == ["bloody"]
    assert line["explain"]["withheld"] == {"gender-equality": 0.9453, "racial-equality": 0.9453}
    code, out, _ = run(capsys, "a bloody nurse", "--min-confidence", "0.99")
    assert code == 0 and out.split()[:3] == ["none", "0.04", "all=-"]  # P(none) = 1 - 0.9615
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses it before anything loads
        run(capsys, "a nurse", "--min-confidence", "high")
    assert exit_info.value.code == 2 and "not a number between 0 and 1" in capsys.readouterr().err
