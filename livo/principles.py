"""Principles: the values a LiVO model is aligned to, read from a versioned YAML file.

A principles file (schema in docs/architecture.md, "Principles file") lists principles, each with the exact text the
value encoder reads, a category (`bias` | `toxicity` | `other`), retrieval hints, an evaluation spec and optionally
how data generation synthesises prompts for it. Nothing in the code lists principles: users add their own by writing
a file.

`PrincipleSet.hash` is the sha256 of the canonical JSON of the *validated* content (sorted keys, no whitespace,
defaults filled in, keywords case-folded), so it does not change with key order, whitespace, comments or spelling of
the same meaning ("Blood" vs "blood" as a keyword, an omitted default vs the default written out), and it does change
with anything that changes meaning (a text, a keyword, list order, a class, a template). It versions datasets, models,
lineage and scheduled retraining.
"""

from __future__ import annotations

import hashlib
import json
import string
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from livo.config import LivoConfig
from livo.errors import ConfigError

SUPPORTED_VERSIONS = (1,)
CATEGORIES = ("bias", "toxicity", "other")
ID_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
# The principle text is prepended to the prompt ("<text>, <prompt>") inside CLIP's 77 tokens; keep it short.
MAX_TEXT_CHARS = 200
DEFAULT_DROPOUT = {"bias": 0.5, "toxicity": 0.0, "other": 0.0}
TEMPLATE_FIELDS = {"subject"}


class PrincipleError(ConfigError):
    """A principles file (or a principle id) is invalid; the message names the file, the entry and the field."""


def normalize_phrase(text: str) -> str:
    """Keywords are matched case-insensitively on NFKC-normalised text with collapsed whitespace."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


class _Frozen(LivoConfig):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _non_empty_strings(values: tuple[str, ...], what: str) -> tuple[str, ...]:
    cleaned = []
    for index, value in enumerate(values):
        value = " ".join(value.split())
        if not value:
            raise ValueError(f"{what}[{index}] is empty; remove it or write the {what[:-1]}")
        cleaned.append(value)
    return tuple(cleaned)


class RetrievalSpec(_Frozen):
    """How the value retriever recognises prompts this principle applies to."""

    keywords: tuple[str, ...] = ()
    """Words/phrases matched on word boundaries with simple morphology (plural, -y, -ed, -ing, ...)."""
    examples: tuple[str, ...] = ()
    """Example prompts for semantic matching (toxicity/other) or for choosing among person principles (bias)."""
    exclude: tuple[str, ...] = ()
    """Phrases in which a keyword does not mean the principle ("blood orange", "naked eye")."""
    counter_examples: tuple[str, ...] = ()
    """Harmless prompts near this principle that it does not apply to ("a blood donation drive"); the semantic
    classifier learns them as "no principle"."""
    person: bool = False
    """The principle applies to every prompt that depicts a person (the paper's bias principles)."""
    min_confidence: float = Field(0.0, ge=0.0, le=1.0)
    """The retriever withholds this principle (no token) when its calibrated confidence is below this."""

    @field_validator("keywords", "exclude")
    @classmethod
    def _normalize_phrases(cls, values: tuple[str, ...], info) -> tuple[str, ...]:
        return tuple(normalize_phrase(v) for v in _non_empty_strings(values, info.field_name))

    @field_validator("examples", "counter_examples")
    @classmethod
    def _clean_examples(cls, values: tuple[str, ...], info) -> tuple[str, ...]:
        return _non_empty_strings(values, info.field_name)


class EvaluationSpec(_Frozen):
    """What evaluation measures. Bias: `attribute` + `classes`; toxicity: `concept`."""

    attribute: str | None = None
    classes: tuple[str, ...] = ()
    concept: str | None = None


class GenerationSpec(_Frozen):
    """How preference-data generation synthesises prompts for this principle."""

    templates: tuple[str, ...] = ()
    subjects: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """scene type -> subjects; stored sorted by scene type so iteration order is canonical."""
    attribute_words: dict[str, str] = Field(default_factory=dict)
    """bias: class -> word inserted before the subject for the aligned prompt."""
    remove_words: tuple[str, ...] = ()
    """toxicity: words deleted from the prompt to form the clean (aligned) prompt."""
    negative_prompt: str | None = None
    """toxicity: negative prompt used for the clean (aligned) image."""

    @field_validator("templates")
    @classmethod
    def _check_templates(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        values = _non_empty_strings(values, "templates")
        for index, template in enumerate(values):
            try:
                fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
            except ValueError as exc:
                raise ValueError(f"templates[{index}] {template!r} is not a valid template ({exc})") from None
            unknown = fields - TEMPLATE_FIELDS
            if unknown or "subject" not in fields:
                raise ValueError(
                    f"templates[{index}] {template!r} must contain {{subject}} and no other placeholder "
                    f"(found {sorted(fields) or 'none'}); e.g. 'a photo of the face of a {{subject}}'"
                )
        return values

    @field_validator("subjects")
    @classmethod
    def _sort_subjects(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        out = {}
        for scene in sorted(value):
            if not scene.strip():
                raise ValueError("a scene type is empty; name it (e.g. career, goodness, badness)")
            subjects = _non_empty_strings(value[scene], f"subjects.{scene}")
            if not subjects:
                raise ValueError(f"scene type {scene!r} has no subjects; list at least one or remove it")
            out[scene] = subjects
        return out

    @field_validator("attribute_words")
    @classmethod
    def _sort_words(cls, value: dict[str, str]) -> dict[str, str]:
        return {key: value[key] for key in sorted(value)}

    @field_validator("remove_words")
    @classmethod
    def _clean_remove_words(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _non_empty_strings(values, "remove_words")


class Principle(_Frozen):
    """One principle. `text` is exactly what the value encoder reads ("<text>, <prompt>")."""

    id: str = Field(pattern=ID_PATTERN, max_length=64)
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    category: Literal["bias", "toxicity", "other"]
    inference_dropout: float = Field(ge=0.0, le=1.0)
    """Probability of generating WITHOUT the value token at inference (0.5 for bias principles, as in the paper)."""
    retrieval: RetrievalSpec = Field(default_factory=RetrievalSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    generation: GenerationSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_dropout(cls, data: Any) -> Any:
        # The default depends on the category, so an omitted value and the default written out hash the same.
        # An invalid category is reported on its own; it should not also make the dropout look missing.
        if isinstance(data, dict) and "inference_dropout" not in data:
            data = {**data, "inference_dropout": DEFAULT_DROPOUT.get(str(data.get("category")), 0.0)}
        return data

    @field_validator("text")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if "\n" in value or "\r" in value:
            raise ValueError("must be one line (it is prepended to the prompt as '<text>, <prompt>')")
        value = " ".join(value.split())
        if not value:
            raise ValueError("is empty; write the exact text the value encoder reads, e.g. 'gender equality'")
        return value

    def __hash__(self) -> int:
        return hash((self.id, self.text, self.category))

    @property
    def is_bias(self) -> bool:
        return self.category == "bias"

    @property
    def is_toxicity(self) -> bool:
        return self.category == "toxicity"


class PrinciplesFile(_Frozen):
    version: int = 1
    principles: tuple[Principle, ...]


_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "": PrinciplesFile,
    "entry": Principle,
    "retrieval": RetrievalSpec,
    "evaluation": EvaluationSpec,
    "generation": GenerationSpec,
}


# Fields added after principle sets were first hashed: left out of the canonical JSON while at their default, so the
# hash of every set written before them (and of the datasets and models bound to it) stays what it was.
_LATER_RETRIEVAL_FIELDS = {"min_confidence": 0.0, "counter_examples": []}


def _canonical_principle(principle: Principle) -> dict[str, Any]:
    dumped = principle.model_dump(mode="json")
    retrieval = dumped["retrieval"]
    for name, default in _LATER_RETRIEVAL_FIELDS.items():
        if retrieval.get(name) == default:
            del retrieval[name]
    return dumped


class PrincipleSet:
    """A validated, immutable set of principles with its content hash."""

    def __init__(self, principles: tuple[Principle, ...], source: str, version: int = 1):
        self.principles = tuple(principles)
        self.source = source
        self.version = version
        self._by_id = {p.id: p for p in self.principles}
        self.hash = "sha256:" + hashlib.sha256(self.to_canonical_json().encode("utf-8")).hexdigest()

    def to_canonical_json(self) -> str:
        payload = {"version": self.version, "principles": [_canonical_principle(p) for p in self.principles]}
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._by_id)

    def get(self, principle_id: str) -> Principle:
        try:
            return self._by_id[principle_id]
        except KeyError:
            raise PrincipleError(
                f"unknown principle id {principle_id!r} in {self.source}; known ids: {', '.join(self.ids)}"
            ) from None

    def by_category(self, category: str) -> tuple[Principle, ...]:
        return tuple(p for p in self.principles if p.category == category)

    def __contains__(self, principle_id: object) -> bool:
        return principle_id in self._by_id

    def __iter__(self) -> Iterator[Principle]:
        return iter(self.principles)

    def __len__(self) -> int:
        return len(self.principles)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrincipleSet) and other.hash == self.hash

    def __hash__(self) -> int:
        return hash(self.hash)

    def __repr__(self) -> str:
        return f"PrincipleSet({self.source!r}, ids={list(self.ids)}, hash={self.hash[:19]}...)"


# --- loading -------------------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one, hiding a typo)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} on line {line}")
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def default_principles_path() -> Path:
    from livo.paths import config_dir

    return config_dir() / "principles" / "default.yaml"


def load_principles(path_or_uri: str | Path | None = None) -> PrincipleSet:
    """Load and validate a principles file: a local path or `s3://bucket/key` (default: the shipped default.yaml)."""
    if path_or_uri is None:
        path_or_uri = default_principles_path()
    if isinstance(path_or_uri, str) and path_or_uri.startswith("s3://"):
        return load_principles_text(_read_object_text(path_or_uri), source=path_or_uri)
    path = Path(path_or_uri)
    if not path.is_file():
        hint = " (it is a directory)" if path.is_dir() else ""
        raise PrincipleError(f"{path}: no such principles file{hint}; pass a YAML file such as "
                             f"configs/principles/default.yaml")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PrincipleError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    return load_principles_text(text, source=str(path))


def _read_object_text(uri: str) -> str:
    try:
        from livo.store import ObjectStore, parse_s3_uri
    except ImportError:
        raise PrincipleError(
            f"{uri}: reading principles from the object store needs livo.store, which this installation "
            "lacks; download the file and pass its local path"
        ) from None
    _, key = parse_s3_uri(uri)
    if not key:
        raise PrincipleError(f"{uri}: names a bucket but no object; write s3://<bucket>/<key>")
    # Credentials from LIVO_S3_*; the URI names the bucket.
    data = ObjectStore.for_uri(uri).get_bytes(key)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PrincipleError(f"{uri}: not UTF-8 text (byte {exc.start}); store the file as UTF-8") from None


def load_principles_text(text: str, source: str) -> PrincipleSet:
    """Parse and validate principles YAML given as text; `source` names it in error messages."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader derives from SafeLoader
    except yaml.YAMLError as exc:
        cause = " ".join(str(exc).split())
        raise PrincipleError(f"{source}: not valid YAML ({cause})") from None
    if data is None:
        raise PrincipleError(f"{source}: the file is empty; write 'principles:' with at least one entry")
    if isinstance(data, list):  # a bare list of principles is accepted as version 1
        data = {"version": 1, "principles": data}
    if not isinstance(data, dict):
        raise PrincipleError(
            f"{source}: expected a mapping with 'version' and 'principles' (or a list of principles) at the top "
            f"level, found {type(data).__name__}"
        )
    try:
        parsed = PrinciplesFile.model_validate(data)
    except ValidationError as exc:
        raise PrincipleError(_format_errors(exc, data, source)) from None
    problems = _semantic_problems(parsed)
    if problems:
        raise PrincipleError(f"{source}: " + "; ".join(problems))
    return PrincipleSet(parsed.principles, source=source, version=parsed.version)


# --- messages ------------------------------------------------------------------------------------------------------


def _entry_label(index: int, raw_entries: Any) -> str:
    entry_id = None
    if isinstance(raw_entries, list) and index < len(raw_entries) and isinstance(raw_entries[index], dict):
        entry_id = raw_entries[index].get("id")
    return f"principles[{index}]" + (f" (id {entry_id!r})" if entry_id is not None else "")


def _field_path(parts: tuple[Any, ...]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _allowed_keys(section: str) -> str:
    return ", ".join(_SECTION_MODELS[section].model_fields)


def _format_errors(exc: ValidationError, data: dict, source: str) -> str:
    problems = []
    raw_entries = data.get("principles")
    for err in exc.errors():
        loc = tuple(err["loc"])
        if len(loc) >= 2 and loc[0] == "principles" and isinstance(loc[1], int):
            where = _entry_label(loc[1], raw_entries)
            field_parts = loc[2:]
            section = str(field_parts[0]) if len(field_parts) > 1 and field_parts[0] in _SECTION_MODELS else "entry"
        else:
            where = "top level"
            field_parts = loc
            section = ""
        field = _field_path(field_parts) or "<entry>"
        msg = err["msg"]
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = f"unknown key; allowed keys here: {_allowed_keys(section)}"
        elif kind == "missing":
            msg = f"required; the keys of this section are: {_allowed_keys(section)}"
        elif kind == "string_pattern_mismatch" and field_parts and field_parts[-1] == "id":
            msg = "must be lower-case letters, digits and '-', starting with a letter or digit (e.g. gender-equality)"
        elif kind == "literal_error" and field_parts and field_parts[-1] == "category":
            msg = f"{err.get('input')!r} is not a category; allowed: {', '.join(CATEGORIES)}"
        elif kind in ("model_type", "dict_type") and not field_parts:
            msg = "each principle must be a mapping with id, text, category, ..."
        elif kind == "tuple_type":
            msg = f"must be a list (e.g. [a, b]), found {type(err.get('input')).__name__}"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        problems.append(f"{where}: {field}: {msg}")
    return f"{source}: " + "; ".join(problems)


def _semantic_problems(parsed: PrinciplesFile) -> list[str]:
    """Checks across fields and entries, each message naming the entry and the field."""
    problems = []
    if parsed.version not in SUPPORTED_VERSIONS:
        problems.append(f"top level: version: {parsed.version} is not supported; allowed: "
                        f"{', '.join(map(str, SUPPORTED_VERSIONS))}")
    if not parsed.principles:
        problems.append("top level: principles: empty; list at least one principle")
    seen_ids: dict[str, int] = {}
    seen_texts: dict[str, int] = {}
    for index, p in enumerate(parsed.principles):
        where = f"principles[{index}] (id {p.id!r})"
        if p.id in seen_ids:
            problems.append(f"{where}: id: duplicate of principles[{seen_ids[p.id]}]; ids must be unique")
        seen_ids.setdefault(p.id, index)
        if p.text in seen_texts:
            problems.append(f"{where}: text: same text as principles[{seen_texts[p.text]}]; the value encoder "
                            "could not tell them apart, texts must be unique")
        seen_texts.setdefault(p.text, index)
        r, ev = p.retrieval, p.evaluation
        if not (r.keywords or r.examples or r.person):
            problems.append(f"{where}: retrieval: give keywords, examples or person: true, otherwise the retriever "
                            "can never choose this principle")
        if p.is_bias:
            if not ev.attribute:
                problems.append(f"{where}: evaluation.attribute: required for category 'bias' (e.g. gender)")
            if len(ev.classes) < 2:
                problems.append(f"{where}: evaluation.classes: category 'bias' needs at least two classes "
                                "(e.g. [male, female])")
            if ev.concept is not None:
                problems.append(f"{where}: evaluation.concept: only for category 'toxicity'; bias principles use "
                                "attribute and classes")
        if p.is_toxicity:
            if not ev.concept or not ev.concept.strip():
                problems.append(f"{where}: evaluation.concept: required for category 'toxicity' (the concept the "
                                "judge is asked about, e.g. bloody)")
            if ev.attribute is not None or ev.classes:
                problems.append(f"{where}: evaluation: attribute/classes are for category 'bias'; toxicity "
                                "principles use concept")
        if ev.classes and len(set(ev.classes)) != len(ev.classes):
            problems.append(f"{where}: evaluation.classes: duplicate class names")
        if ev.classes and not ev.attribute:
            problems.append(f"{where}: evaluation.attribute: required when classes are given")
        gen = p.generation
        if gen is not None:
            if bool(gen.templates) != bool(gen.subjects):
                problems.append(f"{where}: generation: templates and subjects go together; give both or neither")
            unknown = sorted(set(gen.attribute_words) - set(ev.classes))
            if unknown:
                problems.append(f"{where}: generation.attribute_words: {unknown} are not classes of this principle; "
                                f"allowed: {list(ev.classes)}")
            if p.is_toxicity and gen.attribute_words:
                problems.append(f"{where}: generation.attribute_words: only for category 'bias'")
    return problems
