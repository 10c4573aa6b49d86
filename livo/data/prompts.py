"""Prompt synthesis for preference-data generation.

Each principle yields *scenes*: one plain prompt (what the base model is asked, whose output may violate the
principle) plus what the aligned image is made from:
- bias: one attribute-augmented prompt per class ("a photo of the face of a female doctor");
- toxicity: the clean prompt (the principle's `remove_words` deleted) and its negative prompt.

Prompts come from the principles file's `generation` section (templates × subjects, scene types such as career /
goodness / badness) or from user prompt lists (`{principle_id: [prompts]}`), which replace the templates of that
principle. Order is canonical (principles in file order, scene types round-robin, then templates), so the same
inputs always give the same scenes in the same order — generation seeds and shards depend on it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livo.errors import ConfigError

USER_SCENE_TYPE = "custom"
_ARTICLES = ("a", "an")
_PUNCTUATION = ",.;:!?"


@dataclass(frozen=True)
class Scene:
    """One prompt of one principle and the prompts its aligned images are generated from."""

    principle_id: str
    principle_text: str
    category: str  # bias | toxicity
    scene: str  # "<principle_id>/<scene type>/<prompt slug>": unique across principles
    scene_type: str
    prompt: str  # the plain prompt: violating candidates are the base model's images of it
    subject: str | None = None
    attribute: str | None = None  # bias: attribute name (gender)
    classes: tuple[str, ...] = ()  # bias: attribute classes, in the principle's order
    attribute_prompts: dict[str, str] = field(default_factory=dict)  # bias: class -> augmented prompt
    concept: str | None = None  # toxicity: what the concept judge is asked about
    clean_prompt: str | None = None  # toxicity: prompt with the concept words removed
    negative_prompt: str | None = None  # toxicity: negative prompt of the clean image
    # bias: class -> the same prompt about the scene type's *other* subjects, with that class's attribute word
    # ("a photo of an orange nurse" for the doctor scene): images that have the aligned attribute but not the subject
    contrast_prompts: dict[str, tuple[str, ...]] = field(default_factory=dict)


def slugify(text: str, max_length: int = 80) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.casefold()).strip("-")
    return slug[:max_length].rstrip("-") or "prompt"


def _article_for(word: str) -> str:
    return "an" if word[:1].casefold() in "aeiou" else "a"


def _fix_article(tokens: list[str], position: int) -> None:
    """Make the article just before `tokens[position]` agree with that token ("a" + "Indian" -> "an Indian")."""
    if 0 < position < len(tokens) and tokens[position - 1].casefold() in _ARTICLES:
        article = _article_for(tokens[position])
        tokens[position - 1] = article.capitalize() if tokens[position - 1][0].isupper() else article


def render_template(template: str, subject: str) -> str:
    """Fill `{subject}` and fix the article in front of it ("a {subject}" + "engineer" -> "an engineer")."""
    before, _, after = template.partition("{subject}")
    if before and not before[-1].isspace():  # glued to a word ("x-{subject}"): no article to fix
        return before + subject + after
    tokens = before.split()
    position = len(tokens)
    tokens += subject.split()
    _fix_article(tokens, position)
    return " ".join(tokens) + after


def insert_attribute_word(prompt: str, word: str, subjects: Sequence[str] = ()) -> str:
    """Insert `word` before the first known subject in `prompt` (longest subject first, whole words), fixing the
    article; without a known subject, append it (", female"), the form CLIP-style judges are also asked about."""
    tokens = prompt.split()
    folded = [t.strip(_PUNCTUATION).casefold() for t in tokens]
    for subject in sorted(subjects, key=lambda s: (-len(s.split()), s)):
        target = subject.casefold().split()
        for start in range(len(tokens) - len(target) + 1):
            if folded[start:start + len(target)] == target:
                out = tokens[:start] + word.split() + tokens[start:]
                _fix_article(out, start)
                return " ".join(out)
    return f"{prompt.rstrip(_PUNCTUATION + ' ')}, {word}"


def remove_phrases(prompt: str, phrases: Sequence[str]) -> str:
    """Delete every whole-word occurrence of `phrases` (case-insensitive), keeping trailing punctuation and fixing
    the article before the next word ("a naked woman" -> "a woman", "a nude elf" -> "an elf")."""
    tokens = prompt.split()
    folded = [t.strip(_PUNCTUATION).casefold() for t in tokens]
    targets = sorted((p.casefold().split() for p in phrases if p.strip()), key=len, reverse=True)
    out: list[str] = []
    fix_at: list[int] = []
    index = 0
    while index < len(tokens):
        for target in targets:
            if folded[index:index + len(target)] == target:
                last = tokens[index + len(target) - 1]
                trailing = last[len(last.rstrip(_PUNCTUATION)):]
                if trailing and out and out[-1].casefold() not in _ARTICLES:  # "a bloody, x" -> "a x"
                    out[-1] += trailing
                index += len(target)
                fix_at.append(len(out))
                break
        else:
            out.append(tokens[index])
            index += 1
    for position in fix_at:
        _fix_article(out, position)
    return " ".join(out)


def _round_robin(groups: Sequence[Sequence[Any]]) -> list[Any]:
    out = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


def _principle_prompts(principle: Any, user_prompts: Sequence[str] | None) -> list[tuple[str, str, str | None]]:
    """(scene type, prompt, subject) in canonical order."""
    if user_prompts is not None:
        cleaned = [" ".join(p.split()) for p in user_prompts]
        cleaned = [p for p in cleaned if p]
        if not cleaned:
            raise ConfigError(f"the prompt list for principle {principle.id!r} is empty; give at least one prompt")
        return [(USER_SCENE_TYPE, p, None) for p in dict.fromkeys(cleaned)]
    gen = principle.generation
    if gen is None or not gen.templates:
        raise ConfigError(
            f"principle {principle.id!r} has no generation.templates/subjects in its principles file and no prompt "
            "list was given; add a generation section or pass prompts for it"
        )
    per_type = []
    for scene_type, subjects in gen.subjects.items():
        items = [(scene_type, render_template(t, s), s) for s in subjects for t in gen.templates]
        per_type.append(items)
    return list(dict.fromkeys(_round_robin(per_type)))


def build_scenes(principle: Any, user_prompts: Sequence[str] | None = None, *, limit: int | None = None
                 ) -> list[Scene]:
    """The scenes of one principle (see the module docstring); `limit` keeps the first `limit` in canonical order."""
    if principle.category not in ("bias", "toxicity"):
        raise ConfigError(f"principle {principle.id!r} has category {principle.category!r}: data generation has "
                          "recipes for bias and toxicity principles only; give its dataset via `livo data import`")
    prompts = _principle_prompts(principle, user_prompts)
    if limit is not None:
        prompts = prompts[:limit]
    gen = principle.generation
    scenes = []
    seen: set[str] = set()
    for scene_type, prompt, subject in prompts:
        name = f"{principle.id}/{scene_type}/{slugify(prompt)}"
        if name in seen:  # two prompts that differ only in punctuation/case: keep the first
            continue
        seen.add(name)
        common = dict(principle_id=principle.id, principle_text=principle.text, category=principle.category,
                      scene=name, scene_type=scene_type, prompt=prompt, subject=subject)
        if principle.category == "bias":
            classes = tuple(principle.evaluation.classes)
            words = dict(gen.attribute_words) if gen is not None else {}
            known_subjects = [s for subjects in (gen.subjects.values() if gen else ()) for s in subjects]
            if subject:
                known_subjects = [subject]
            augmented = {c: insert_attribute_word(prompt, words.get(c, c), known_subjects) for c in classes}
            others = [o for o in (gen.subjects.get(scene_type, []) if gen and subject else []) if o != subject]
            contrast = {c: tuple(insert_attribute_word(_swap_subject(prompt, subject, o), words.get(c, c), [o])
                                 for o in others) for c in classes} if others else {}
            scenes.append(Scene(**common, attribute=principle.evaluation.attribute, classes=classes,
                                attribute_prompts=augmented, contrast_prompts=contrast))
        else:
            remove_words = tuple(gen.remove_words) if gen is not None else ()
            negative = gen.negative_prompt if gen is not None else None
            if not remove_words and not negative:
                raise ConfigError(f"principle {principle.id!r}: generation needs remove_words and/or "
                                  "negative_prompt to make the clean (aligned) image")
            clean = remove_phrases(prompt, remove_words)
            if not clean.strip(_PUNCTUATION + " "):
                raise ConfigError(f"principle {principle.id!r}: prompt {prompt!r} is empty once {list(remove_words)} "
                                  "are removed; give prompts that describe something besides the concept")
            scenes.append(Scene(**common, concept=principle.evaluation.concept, clean_prompt=clean,
                                negative_prompt=negative))
    return scenes


def _swap_subject(prompt: str, subject: str, other: str) -> str:
    """`prompt` with the whole word(s) `subject` replaced by `other`, the article fixed ("a doctor" -> "an engineer")."""
    tokens = prompt.split()
    target = subject.casefold().split()
    folded = [t.strip(_PUNCTUATION).casefold() for t in tokens]
    for start in range(len(tokens) - len(target) + 1):
        if folded[start:start + len(target)] == target:
            trailing = tokens[start + len(target) - 1][len(tokens[start + len(target) - 1].rstrip(_PUNCTUATION)):]
            out = tokens[:start] + other.split() + tokens[start + len(target):]
            out[start + len(other.split()) - 1] += trailing
            _fix_article(out, start)
            return " ".join(out)
    return prompt


def read_prompt_file(path: str | Path, principle_ids: Sequence[str]) -> dict[str, list[str]]:
    """A prompt list file: YAML/JSON `{principle_id: [prompts]}`, or plain text (one prompt per line, `#` comments)
    for exactly one selected principle."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such prompt file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML/JSON ({' '.join(str(exc).split())})") from None
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise ConfigError(f"{path}: expected a mapping principle_id -> list of prompts")
        return {str(k): [str(p) for p in v] for k, v in data.items()}
    if len(principle_ids) != 1:
        raise ConfigError(f"{path}: a plain-text prompt list needs exactly one principle (--principle ID); "
                          "for several, write YAML {principle_id: [prompts]}")
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return {principle_ids[0]: prompts}


def select_scenes(principle_set: Any, principle_ids: Sequence[str] = (),
                  user_prompts: Mapping[str, Sequence[str]] | None = None, *,
                  limit_per_principle: int | None = None) -> list[Scene]:
    """Scenes of the selected principles (all bias/toxicity principles that can make prompts when none selected).

    Raises ConfigError for an unknown principle id, an empty prompt list, or a selected principle with nothing to
    generate from — before any model is loaded.
    """
    user_prompts = dict(user_prompts or {})
    for pid in list(principle_ids) + list(user_prompts):
        principle_set.get(pid)  # raises for an unknown id, naming the known ones
    if principle_ids:
        chosen = [principle_set.get(pid) for pid in dict.fromkeys(principle_ids)]
    elif user_prompts:
        chosen = [p for p in principle_set if p.id in user_prompts]
    else:
        chosen = [p for p in principle_set if p.category in ("bias", "toxicity") and p.generation is not None
                  and p.generation.templates]
        if not chosen:
            raise ConfigError(f"{principle_set.source}: no principle has a generation section; add one or give "
                              "prompt lists")
    scenes: list[Scene] = []
    for principle in chosen:
        scenes.extend(build_scenes(principle, user_prompts.get(principle.id), limit=limit_per_principle))
    if not scenes:
        raise ConfigError("no prompts to generate from; check the principle selection and prompt lists")
    return scenes
