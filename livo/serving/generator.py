"""What the server calls: a `Generator` turns a batch of `GenerationRequest`s into images, the principle used and the
retriever's evidence, and describes the version it serves (`ModelInfo`).

The server depends on this small interface only. `RegisteredGenerator` implements it over a loaded version
(`livo.serving.loading.RegisteredPipeline`): the principle is chosen as the pipeline chooses it
(`choose_principle`), the value-token positions follow the same rule as a call of the pipeline
(`value_token_mask(n, inference_dropout, first seed)`), and a whole batch of requests becomes one `generate` call, so
images of different requests share UNet batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

AUTO = "auto"  # the retriever chooses the principle


@dataclass(frozen=True)
class PrincipleInfo:
    id: str
    text: str
    category: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "text": self.text, "category": self.category}


@dataclass(frozen=True)
class ModelInfo:
    """The version being served (what every response and the page report)."""

    name: str
    version: str
    lineage_sha256: str | None = None  # sha256 of the version's lineage.json as stored
    report_uri: str | None = None  # the evaluation report (HTML)
    base_model: str | None = None
    principles: tuple[PrincipleInfo, ...] = ()

    def principle(self, principle_id: str) -> PrincipleInfo | None:
        return next((p for p in self.principles if p.id == principle_id), None)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "lineage_sha256": self.lineage_sha256,
                "report_uri": self.report_uri, "base_model": self.base_model,
                "principles": [p.to_json() for p in self.principles]}


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt: `principle` is AUTO, a principle id, or None (no value token: the base model's images)."""

    prompt: str
    principle: str | None
    seeds: tuple[int, ...]
    compare: bool = False  # also return the base model's images for the same seeds


@dataclass
class GenerationResult:
    images: list[Any]  # one per seed (PIL images; the server encodes them)
    principle: PrincipleInfo | None  # the principle chosen (its token conditions the images marked in value_token)
    evidence: dict[str, Any]  # how it was chosen: {"stage", "confidence", "score", "margin", "applicable", ...}
    value_token: list[bool] = field(default_factory=list)  # which images carry the value token
    base_images: list[Any] | None = None  # with compare: the base model's images, same seeds


class Generator(Protocol):
    def info(self) -> ModelInfo: ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in order. Called from one worker thread at a time."""
        ...


class RegisteredGenerator:
    """`Generator` over a `RegisteredPipeline` (or anything with its `info`, `principles`, `choose_principle` and
    `generate`).

    `inference_dropout`: None applies each principle's own (as a call of the pipeline and evaluation do: a bias
    principle with p = 0.5 conditions half of a request's images); a number overrides it for every request.
    """

    def __init__(self, pipe: Any, *, num_inference_steps: int = 25, guidance_scale: float = 7.5,
                 resolution: int | None = None, batch_size: int = 8, inference_dropout: float | None = None):
        self.pipe = pipe
        self.settings = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                             height=resolution, width=resolution, batch_size=batch_size)
        self.inference_dropout = inference_dropout
        version = pipe.info
        self._info = ModelInfo(
            name=version.model, version=version.version, lineage_sha256=version.lineage_sha256,
            report_uri=version.report_uri or None, base_model=version.base_model_id,
            principles=tuple(PrincipleInfo(p.id, p.text, p.category) for p in pipe.principles))
        self.calls = 0

    def info(self) -> ModelInfo:
        return self._info

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        from livo.modeling import value_token_mask

        self.calls += 1
        prompts: list[str] = []
        texts: list[str | None] = []
        seeds: list[int] = []
        slots: list[tuple[int, int, str]] = []  # (request, image position, "aligned" | "base") per generated image
        results = []
        for index, request in enumerate(requests):
            choice = self.pipe.choose_principle(request.prompt, request.principle)
            dropout = choice.inference_dropout if self.inference_dropout is None else self.inference_dropout
            count = len(request.seeds)
            mask = value_token_mask(count, dropout, request.seeds[0]) if choice.id else [False] * count
            results.append(GenerationResult(
                images=[None] * count, value_token=list(mask),
                principle=PrincipleInfo(choice.id, choice.text, choice.category) if choice.id else None,
                evidence={"stage": choice.stage, "confidence": choice.confidence, "score": choice.score,
                          "margin": choice.margin, "applicable": list(choice.applicable),
                          "keywords": list(choice.keywords), "withheld": dict(choice.withheld)},
                base_images=[None] * count if request.compare else None))
            for position, seed in enumerate(request.seeds):
                kinds = ["aligned"] + (["base"] if request.compare and mask[position] else [])
                for kind in kinds:
                    prompts.append(request.prompt)
                    texts.append(choice.text if kind == "aligned" and mask[position] else None)
                    seeds.append(seed)
                    slots.append((index, position, kind))
        out = self.pipe.generate(prompts, texts, num_images_per_prompt=1, seeds=seeds, inference_dropout=0.0,
                                 **self.settings)
        for (index, position, kind), image in zip(slots, out.images, strict=True):
            (results[index].images if kind == "aligned" else results[index].base_images)[position] = image
        for result in results:
            if result.base_images is not None:  # images without the token are the base model's already
                result.base_images = [base if base is not None else image
                                      for base, image in zip(result.base_images, result.images, strict=True)]
        return results
