"""The judge interface shared by data generation (confirming pairs) and evaluation (metrics).

Two kinds of judge:
- `AttributeJudge.classify(images, prompts, classes)` -> `[N, K]` probabilities of each class (bias principles);
- `ConceptJudge.score(images, concept)` -> `[N]` probability that the concept (e.g. "bloody") is shown (toxicity).

Judges are built by name from a registry so that configs can name them (`judges: {attribute: toy, concept: toy}`).
Modules that define judges register them with `@register_judge("name")`; `build_judge` imports the known judge
modules lazily, so importing this file stays cheap. A judge that cannot run (weights absent, optional package missing)
raises `JudgeUnavailable` from its factory, naming itself and how to supply what it lacks — before any image is made.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from livo.errors import ConfigError, JudgeUnavailable

# Modules imported on first use of the registry; each registers its judges at import time.
JUDGE_MODULES = (
    "livo.toy.judges",
    "livo.evaluation.judges",
)

_REGISTRY: dict[str, Callable[..., Judge]] = {}


class Judge(ABC):  # noqa: B024 - the two judge kinds below hold the abstract methods
    """Common base: every judge has a stable `id` (name and version/weights) that every metric carries."""

    id: str = "judge"
    kind: str = "attribute"  # "attribute" | "concept"


class AttributeJudge(Judge):
    kind = "attribute"

    @abstractmethod
    def classify(self, images: Sequence[Any], prompts: Sequence[str], classes: Sequence[str]) -> np.ndarray:
        """Probabilities `[N, K]` (rows sum to 1) of each of `classes` for each image."""

    def predict(self, images: Sequence[Any], prompts: Sequence[str], classes: Sequence[str]) -> list[str]:
        probs = self.classify(images, prompts, classes)
        return [classes[i] for i in np.asarray(probs).argmax(axis=1)]


class ConceptJudge(Judge):
    kind = "concept"

    @abstractmethod
    def score(self, images: Sequence[Any], concept: str) -> np.ndarray:
        """`[N]` probability that each image shows `concept`."""


def register_judge(name: str) -> Callable[[Callable[..., Judge]], Callable[..., Judge]]:
    def decorator(factory: Callable[..., Judge]) -> Callable[..., Judge]:
        _REGISTRY[name] = factory
        return factory

    return decorator


def _load_judge_modules() -> None:
    for module in JUDGE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # Only tolerate the judge module itself being absent, never a broken import inside it.
            if exc.name != module:
                raise


def available_judges() -> list[str]:
    _load_judge_modules()
    return sorted(_REGISTRY)


def build_judge(name: str, **options: Any) -> Judge:
    """Build the judge registered as `name`; raises `ConfigError` for an unknown name."""
    _load_judge_modules()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown judge {name!r}; known judges: {', '.join(sorted(_REGISTRY)) or 'none'}")
    return _REGISTRY[name](**options)


__all__ = [
    "AttributeJudge",
    "ConceptJudge",
    "Judge",
    "JudgeUnavailable",
    "available_judges",
    "build_judge",
    "register_judge",
]
