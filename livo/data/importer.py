"""Import the LiVO authors' released preference data into our dataset format.

Their layout: `<type>/<scene>/metadata.jsonl` (one JSON object per image: `file_name` relative to the scene folder,
`prompt`, `value` = the principle text in their spelling, `label` = 1 for aligned, 0 for violating) next to the image
files.

Principle spellings. Their public code (github.com/achernarwang/LiVO) writes the principles as "gender equality",
"racial equality" (README, value_encoder/inference_example.py, evaluation/eval_bias.py), "nudity|bloody|zombie
considered inappropriate" (README, evaluation/eval_toxicity.py), "bloody content is considered inappropriate"
(README and inference_example.py) and "nudity|bloody|zombie considered inapproporiate" (value_retriever/retriever.py,
typo included). `resolve_principle` recognises those and their variants of case, whitespace, hyphen/underscore,
punctuation, the fillers "content"/"is"/"generally" and misspellings of "inappropriate"/"considered"; an unknown
string is never guessed into a principle (no whole-string fuzzy match: "racial inequality" or "nudity considered
appropriate" must not become a principle), and `--map "their text=our-id"` settles anything else.

Pairs, as the authors' loader builds them (value_encoder/train.py, `ValueEncoderDataset`): it keeps one item per
*aligned* image (label 1) and, each time an item is read, draws the violating image with `random.choice` from the
violating images (label 0) of the same scene. The import does the same draw once per aligned image, uniformly with a
seeded RNG (`random.Random("<seed>:<type>/<scene>")`, so a scene's draws do not depend on the other scenes), and
records the seed in the report and the manifest: the same source and seed give an identical dataset. Violating images
that no draw picked are not in the dataset (as in any one epoch of theirs); scenes without aligned or without
violating images are reported and skipped. Images are stored with their original bytes (no re-encoding).
"""

from __future__ import annotations

import difflib
import json
import math
import random
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livo.data.dataset import image_problem, write_rows_dataset
from livo.data.prompts import slugify
from livo.errors import ConfigError, InvalidDataError
from livo.log import get_logger, log_event

logger = get_logger("livo.data.importer")

METADATA_FILE = "metadata.jsonl"
ROWS_PER_SHARD = 2000
DEFAULT_PAIRING_SEED = 0
PAIRING_RULE = ("one pair per aligned image (file order); its violating image drawn uniformly at random from the "
                "same scene's violating images, seeded (the authors' ValueEncoderDataset draws with random.choice)")

# Their spellings, as canonical keys (see `canonical_value`) -> our canonical texts. The toxicity forms
# "<concept> [content] [is] [generally] considered <inappropriate, misspelt or not>" are reduced to
# "<concept> considered inappropriate" before this lookup, so only the concepts' own variants are listed.
AUTHOR_ALIASES: dict[str, str] = {
    "gender equality": "gender equality",
    "gender": "gender equality",
    "racial equality": "racial equality",
    "race equality": "racial equality",
    "race": "racial equality",
    "nudity considered inappropriate": "nudity considered inappropriate",
    "nude considered inappropriate": "nudity considered inappropriate",
    "naked considered inappropriate": "nudity considered inappropriate",
    "nudity": "nudity considered inappropriate",
    "nude": "nudity considered inappropriate",
    "bloody considered inappropriate": "bloody considered inappropriate",
    "blood considered inappropriate": "bloody considered inappropriate",
    "bloody": "bloody considered inappropriate",
    "blood": "bloody considered inappropriate",
    "zombie considered inappropriate": "zombie considered inappropriate",
    "zombies considered inappropriate": "zombie considered inappropriate",
    "zombie": "zombie considered inappropriate",
}
# Words of the paper's principle texts whose misspellings are corrected (a word within difflib ratio 0.8 of one of
# them, at least 5 letters long and with the same first two letters: "considerd", "equalty", "zombei"; never
# "inequality" -> "equality", whose first letters differ).
_KNOWN_WORDS = ("gender", "equality", "racial", "nudity", "bloody", "zombie", "considered", "content")
_WORD_CUTOFF = 0.8
_TOXICITY_FORM = re.compile(r"^(?P<concept>.+?)(?: contents?)?(?: is| are)?(?: generally)? considered inappropriate$")


def normalize_value(text: str) -> str:
    """Case-folded (NFKC), hyphens, underscores and other punctuation turned into spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w\s]|_", " ", text).split())


def _correct_word(word: str) -> str:
    if word.startswith("inap") and difflib.SequenceMatcher(None, word, "inappropriate").ratio() >= _WORD_CUTOFF:
        return "inappropriate"  # "inapproriate", "inappropiate", "inapproporiate" (never "appropriate")
    if len(word) < 5 or word in _KNOWN_WORDS:
        return word
    for known in _KNOWN_WORDS:
        if word[:2] == known[:2] and difflib.SequenceMatcher(None, word, known).ratio() >= _WORD_CUTOFF:
            return known
    return word


def canonical_value(text: str) -> str:
    """The key a principle spelling is matched by: `normalize_value`, misspelt known words corrected, and the
    toxicity form "<concept> [content] [is] [generally] considered inappropriate" reduced to
    "<concept> considered inappropriate"."""
    key = " ".join(_correct_word(word) for word in normalize_value(text).split())
    match = _TOXICITY_FORM.match(key)
    return f"{match['concept']} considered inappropriate" if match else key


def parse_mappings(items: list[str] | None) -> dict[str, str]:
    """`["their text=our-id", ...]` -> {normalised text: id}."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--map {item!r}: expected 'their principle text=our-principle-id'")
        text, _, pid = item.rpartition("=")
        out[normalize_value(text)] = pid.strip()
    return out


def resolve_principle(value: str, principle_set: Any, mappings: Mapping[str, str] | None = None) -> Any:
    """Our `Principle` for one of their `value` strings, or None when nothing matches.

    In order: an explicit `--map`, our principle text (normalised), then the canonical keys of our texts and of the
    authors' spellings (`AUTHOR_ALIASES`). Nothing fuzzier: a string none of these recognises is reported, not guessed.
    """
    key = normalize_value(value)
    mappings = mappings or {}
    if key in mappings:
        return principle_set.get(mappings[key])  # raises for an unknown id
    by_text = {normalize_value(p.text): p for p in principle_set}
    if key in by_text:
        return by_text[key]
    by_canonical = {canonical_value(p.text): p for p in reversed(tuple(principle_set))}  # first text wins a tie
    canonical = canonical_value(value)
    if canonical in by_canonical:
        return by_canonical[canonical]
    alias = AUTHOR_ALIASES.get(canonical)
    return None if alias is None else by_canonical.get(canonical_value(alias))


@dataclass
class _Image:
    path: Path
    file_name: str
    prompt: str
    value: str
    line: int = 0


_METADATA_TYPES: dict[str, tuple[type, ...]] = {"file_name": (str,), "prompt": (str,), "value": (str, type(None)),
                                                "label": (int, str)}


def _read_metadata(path: Path) -> list[dict[str, Any]]:
    """The entries of one metadata.jsonl; any unusable line fails naming the file and the line number."""
    entries = []
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise InvalidDataError(f"{path}: cannot read ({exc.strerror})") from None
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidDataError(f"{path}:{number}: not UTF-8 (byte {raw[exc.start]:#04x} at column "
                                   f"{exc.start + 1}); save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidDataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(entry, dict):
            raise InvalidDataError(f"{path}:{number}: expected a JSON object with file_name, prompt, value, label")
        missing = [k for k in _METADATA_TYPES if k not in entry]
        if missing:
            raise InvalidDataError(f"{path}:{number}: missing {', '.join(missing)} (expected file_name, prompt, value, "
                                   "label)")
        wrong = [f"{k} is {type(entry[k]).__name__}" for k, kinds in _METADATA_TYPES.items()
                 if not isinstance(entry[k], kinds) or isinstance(entry[k], bool)]
        if wrong:
            raise InvalidDataError(f"{path}:{number}: {', '.join(wrong)} (file_name and prompt are strings, value a "
                                   "string, label 0 or 1)")
        if str(entry["label"]) not in ("0", "1"):
            raise InvalidDataError(f"{path}:{number}: label {entry['label']!r} is not 0 (violating) or 1 (aligned)")
        entry["_line"] = number
        entries.append(entry)
    return entries


def _image_bytes(image: _Image, metadata: Path, line: int) -> bytes:
    """The image file's bytes, after PIL decoded them completely (a non-image fails here, not in training)."""
    data = image.path.read_bytes()
    problem = image_problem(data)
    if problem:
        raise InvalidDataError(f"{image.path} (listed in {metadata}:{line}): {problem}; replace the file or drop its "
                               "line")
    return data


def _plain_prompt(prompt: str, value: str, principle: Any) -> str:
    """Their prompts may carry the value in front ("gender equality, a photo of ..."); ours keep them apart."""
    head, comma, rest = prompt.partition(",")
    if comma and normalize_value(head) in (normalize_value(value), normalize_value(principle.text)):
        return rest.strip()
    return prompt


def collect_rows(source_dir: str | Path, principle_set: Any, mappings: Mapping[str, str] | None = None, *,
                 seed: int = DEFAULT_PAIRING_SEED) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows in our schema from the authors' layout, plus a report (scenes, images, spellings mapped, skipped).

    One row per aligned image, in file order; its violating image is drawn uniformly from the same scene's violating
    images by `random.Random(f"{seed}:{type}/{scene}")` (the authors' `random.choice`, done once and seeded).
    """
    root = Path(source_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such directory (expected <type>/<scene>/{METADATA_FILE} inside)")
    metadata_files = sorted(root.glob(f"*/*/{METADATA_FILE}"))
    if not metadata_files:
        raise ConfigError(f"{root}: no <type>/<scene>/{METADATA_FILE} found; is this the authors' data folder?")
    rows: list[dict[str, Any]] = []
    spellings: dict[str, str] = {}
    unmapped: dict[str, str] = {}
    skipped: list[str] = []
    for metadata in metadata_files:
        scene_dir = metadata.parent
        scene_type, scene_name = scene_dir.parent.name, scene_dir.name
        where = f"{scene_type}/{scene_name}"
        aligned: list[_Image] = []
        violating: list[_Image] = []
        for entry in _read_metadata(metadata):
            image_path = (scene_dir / entry["file_name"]).resolve()
            if not image_path.is_relative_to(scene_dir.resolve()) or not image_path.is_file():
                raise InvalidDataError(f"{metadata}:{entry['_line']}: image {entry['file_name']!r} is missing from "
                                       f"{scene_dir}")
            image = _Image(image_path, entry["file_name"], str(entry["prompt"]), str(entry["value"] or scene_type),
                           entry["_line"])
            (aligned if str(entry["label"]) == "1" else violating).append(image)
        values = {i.value for i in aligned + violating}
        principles = {}
        for value in values:
            principle = resolve_principle(value, principle_set, mappings)
            if principle is None:
                unmapped[value] = where
                continue
            spellings[value] = principle.id
            principles[principle.id] = principle
        if len(principles) > 1:
            raise InvalidDataError(f"{metadata}: one scene mixes principles {sorted(principles)}; split it into scenes")
        if not principles:
            continue
        principle = next(iter(principles.values()))
        if not aligned or not violating:
            skipped.append(f"{where} ({'no aligned' if not aligned else 'no violating'} image)")
            continue
        scene = f"{principle.id}/{slugify(scene_type)}/{slugify(scene_name)}"
        checked = {image.path: _image_bytes(image, metadata, image.line) for image in aligned + violating}
        rng = random.Random(f"{seed}:{scene_type}/{scene_name}")
        for a in aligned:
            v = violating[rng.randrange(len(violating))]
            rows.append({
                "prompt": _plain_prompt(v.prompt, v.value, principle),
                "principle_id": principle.id,
                "principle_text": principle.text,
                "scene": scene,
                "aligned_image": {"bytes": checked[a.path], "path": a.file_name},
                "violating_image": {"bytes": checked[v.path], "path": v.file_name},
                "aligned_prompt": _plain_prompt(a.prompt, a.value, principle),
                "violating_prompt": _plain_prompt(v.prompt, v.value, principle),
            })
    if unmapped:
        listed = "; ".join(f"{value!r} (in {where})" for value, where in sorted(unmapped.items()))
        raise ConfigError(f"principle spellings not recognised: {listed}; map them with "
                          f"--map \"<their text>=<principle id>\" (ids: {', '.join(principle_set.ids)})")
    if not rows:
        raise InvalidDataError(f"{root}: no scene has both aligned (label 1) and violating (label 0) images")
    report = {"scenes": len({r["scene"] for r in rows}), "rows": len(rows), "spellings": dict(sorted(spellings.items())),
              "skipped_scenes": skipped, "pairing": PAIRING_RULE, "seed": seed}
    return rows, report


def import_authors_dataset(source_dir: str | Path, out: str | Path, *, principles_file: str | Path | None = None,
                           mappings: list[str] | None = None, name: str = "authors",
                           num_shards: int | None = None, store: Any = None,
                           seed: int = DEFAULT_PAIRING_SEED) -> tuple[str, dict[str, Any]]:
    """Convert the authors' layout at `source_dir` into a dataset at `out`; returns (uri, report).

    `seed` fixes the draw of each aligned image's violating partner; it is recorded in the report (`seed`, beside
    `pairing`) and in the manifest (`seed`, `config.pairing_seed`): the same source and seed give identical shards.
    """
    from livo.principles import load_principles

    principle_set = load_principles(principles_file)
    mapping = parse_mappings(mappings)
    for pid in mapping.values():
        principle_set.get(pid)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"pairing seed {seed!r} is not an integer; pass an int (default {DEFAULT_PAIRING_SEED})")
    rows, report = collect_rows(source_dir, principle_set, mapping, seed=seed)
    shards = num_shards or max(1, math.ceil(len(rows) / ROWS_PER_SHARD))
    uri = write_rows_dataset(
        rows, out, principle_set_hash=principle_set.hash, name=name, num_shards=shards, source="imported",
        config={"imported_from": Path(source_dir).name, "principles_file": str(principle_set.source),
                "spellings": report["spellings"], "pairing": PAIRING_RULE, "pairing_seed": seed},
        seed=seed, store=store,
    )
    log_event(logger, "authors' dataset imported", uri=uri, rows=report["rows"], scenes=report["scenes"],
              skipped=len(report["skipped_scenes"]), pairing_seed=seed)
    return uri, report
