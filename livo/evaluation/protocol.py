"""The paper's evaluation protocol (LIVO_METHOD §6): base vs candidate on the same prompts and seeds, judged.

Three phases, so that every bad input fails before the first image is generated:

1. `plan_evaluation(principles, config)` — pure checks: which principles, their prompts, their evaluation specs.
2. `load_judges(plan, config)` — builds every judge (a judge whose weights are absent raises `JudgeUnavailable`)
   and runs each on one blank image with the classes / concept it will be asked about, so a misconfigured judge
   fails here too; an attribute or concept no configured judge covers (race offline) is marked unavailable.
3. `run_evaluation(...)` — generation (batched), judging (batched), metrics.

For each principle with P prompts and N images per prompt, image i of the flattened (prompt, image) grid uses seed
`config.seed + i` for both models. The candidate uses the value token on exactly round(N·(1 − inference_dropout))
images per prompt at positions drawn from the seed (`livo.modeling.value_token_mask`, the same rule as
`LiVOPipeline.generate`); its other images are, by the pipeline's contract, the base model's images for the same
seeds, so they are taken from the base run instead of being generated twice.

metrics.json binds the verdict to what was evaluated (`evaluated`): the value encoder's `weights_digest` (the digest
registration recomputes), the base model's `pipeline_fingerprint` (as training records it), the principle-set hash
and the sha256 of the evaluation config's canonical JSON. `evaluate_candidate` first invalidates the outputs of any
earlier evaluation in its output directory and writes metrics.json last, so an interrupted evaluation leaves no
complete-looking output.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from livo.config import flatten
from livo.errors import ConfigError, JudgeUnavailable
from livo.evaluation import metrics as M
from livo.evaluation.config import EvalPrompt, EvaluationConfig
from livo.log import get_logger, log_event

logger = get_logger(__name__)

SCHEMA_VERSION = 1
BIAS_KEYS = ("D1", "D2")
TOXICITY_KEYS = ("R", "S", "Max", "Prob")


@dataclass
class PrinciplePlan:
    principle: Any  # livo.principles.Principle
    kind: str  # "bias" | "toxicity"
    prompts: list[EvalPrompt]
    judge_name: str | None = None
    judge: Any = None
    unavailable: str | None = None  # why no judge can measure this principle (reported, never guessed)

    @property
    def id(self) -> str:
        return self.principle.id

    @property
    def target(self) -> str:
        """The attribute (bias) or concept (toxicity) that is judged."""
        spec = self.principle.evaluation
        return spec.attribute if self.kind == "bias" else spec.concept


@dataclass
class EvaluationPlan:
    principles: list[PrinciplePlan]
    subject_judge: Any = None
    subjects: list[str] = field(default_factory=list)
    extractor: Any = None
    clip_scorer: Any = None
    quality_unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def runnable(self) -> list[PrinciplePlan]:
        return [p for p in self.principles if p.unavailable is None]


@dataclass
class PrincipleImages:
    prompts: list[str]  # one per image, prompt-major
    seeds: list[int]
    base: list[Any]
    aligned: list[Any]
    used_value_token: list[bool]
    # the named reference (`draw_named_reference`): per image of the grid, the base model's image of the prompt with
    # an under-represented class named, and that class — on value-token images of prompts naming a subject, else None
    named: list[Any] | None = None
    named_classes: list[str | None] | None = None
    # the encoding control (`EvaluationConfig.encoding_control`): the base images with each value-token image replaced
    # by the base model's image, same seed, of the prompt encoded as the token path encodes it, without the token
    control: list[Any] | None = None


@dataclass
class EvaluationResult:
    metrics: dict[str, Any]
    images: dict[str, PrincipleImages]
    config: EvaluationConfig
    paths: dict[str, Any] = field(default_factory=dict)  # written outputs (metrics, report, summary)


def plan_evaluation(principles: Any, config: EvaluationConfig) -> EvaluationPlan:
    """Select principles and prompts; raise `ConfigError` for any inconsistency. Loads nothing."""
    known = {p.id: p for p in principles}
    unknown = sorted(set(config.prompts) - set(known) | set(config.principles or []) - set(known))
    if unknown:
        raise ConfigError(f"evaluation names unknown principle(s) {', '.join(unknown)}; known: {', '.join(known)}")
    explicit = config.principles is not None or bool(config.prompts)
    selected = config.principles if config.principles is not None else (
        list(config.prompts) if config.prompts else list(known))
    plans = []
    for pid in selected:
        principle = known[pid]
        kind = _evaluation_kind(principle)
        if kind is None:
            if explicit:
                raise ConfigError(
                    f"principle {pid} has no evaluation spec: add `evaluation: {{attribute: ..., classes: [...]}}` "
                    f"(bias) or `evaluation: {{concept: ...}}` (toxicity) to its entry in the principles file")
            continue
        prompts = config.prompts.get(pid) or [EvalPrompt(text=t) for t in
                                              principle.retrieval.examples[: config.default_prompts_per_principle]]
        if not prompts:
            raise ConfigError(f"principle {pid} has no evaluation prompts: set evaluate.prompts.{pid} (a list of "
                              f"prompts) or give the principle retrieval examples")
        plans.append(PrinciplePlan(principle=principle, kind=kind, prompts=list(prompts)))
    if not plans:
        raise ConfigError("nothing to evaluate: no principle has an evaluation spec (evaluation.attribute + classes, "
                          "or evaluation.concept) and prompts")
    return EvaluationPlan(principles=plans)


def _evaluation_kind(principle: Any) -> str | None:
    spec = principle.evaluation
    if spec.attribute and len(spec.classes) >= 2:
        return "bias"
    if spec.concept:
        return "toxicity"
    if spec.attribute:
        raise ConfigError(f"principle {principle.id}: evaluation.attribute {spec.attribute!r} needs at least two "
                          f"classes (evaluation.classes)")
    return None


def load_judges(plan: EvaluationPlan, config: EvaluationConfig) -> EvaluationPlan:
    """Build every judge and quality model the plan needs; fail (or mark unavailable) before any generation."""
    from PIL import Image

    from livo.judges import build_judge

    built: dict[str, Any] = {}

    def judge(name: str) -> Any:
        if name not in built:
            built[name] = build_judge(name, **config.judges.options.get(name, {}))
        return built[name]

    blank = [Image.new("RGB", (64, 64), (128, 128, 128))]
    for item in plan.principles:
        if item.kind == "bias":
            attribute, choice = item.target, config.judges.for_attribute(item.target)
            explicit_none = attribute in config.judges.per_attribute
            setting = f"judges.per_attribute.{attribute} or judges.attribute"
        else:
            attribute, choice = item.target, config.judges.for_concept(item.target)
            explicit_none = attribute in config.judges.per_concept
            setting = f"judges.per_concept.{attribute} or judges.concept"
        if choice is None:
            if not explicit_none:
                raise ConfigError(f"principle {item.id}: no judge configured for {item.kind} {attribute!r}; set "
                                  f"{setting} (e.g. {_judge_examples(item.kind)})")
            item.unavailable = f"no judge configured for {attribute!r} (judges.per_{_kind_key(item.kind)}.{attribute}: null)"
            continue
        item.judge_name, item.judge = choice, judge(choice)
        try:
            if item.kind == "bias":
                item.judge.classify(blank, [item.prompts[0].text], list(item.principle.evaluation.classes))
            else:
                item.judge.score(blank, item.target)
        except JudgeUnavailable as exc:
            item.unavailable = str(exc)
        if item.unavailable:
            log_event(logger, "principle unavailable", principle=item.id, reason=item.unavailable)

    quality = config.quality
    subjects = sorted({p.subject for item in plan.runnable for p in item.prompts if p.subject})
    if quality.subject_fidelity and config.judges.subject and subjects:
        plan.subject_judge, plan.subjects = judge(config.judges.subject), subjects
        plan.subject_judge.classify(blank, [plan.runnable[0].prompts[0].text], subjects)
    elif quality.subject_fidelity:
        plan.quality_unavailable["subject_fidelity"] = (
            "no subject judge configured (judges.subject)" if not config.judges.subject
            else "no evaluation prompt names its subject (prompts: [{text, subject}])")
    if quality.fid or quality.inception_score:
        from livo.evaluation.quality import build_feature_extractor

        plan.extractor = build_feature_extractor(quality.feature_extractor, **quality.feature_extractor_options)
    if quality.clip_model:
        from livo.evaluation.quality import ClipScorer

        plan.clip_scorer = ClipScorer(quality.clip_model)
    else:
        plan.quality_unavailable["CLIPScore"] = ("no CLIP model configured: set quality.clip_model to a CLIPModel "
                                                 "directory (paper: openai/clip-vit-large-patch14)")
    if not plan.runnable:
        log_event(logger, "no principle can be judged with the configured judges")
    return plan


def _kind_key(kind: str) -> str:
    return "attribute" if kind == "bias" else "concept"


def _judge_examples(kind: str) -> str:
    return "clip-zero-shot, age-gender, toy-attribute" if kind == "bias" else "llava-yes-no, nudenet, toy-concept"


def generate_images(pipeline: Any, plan: EvaluationPlan, config: EvaluationConfig,
                    generation: dict[str, Any], base_cache: Any = None) -> dict[str, PrincipleImages]:
    """Base and candidate images for every runnable principle (batched inside `LiVOPipeline.generate`); the base
    images come from `base_cache` (a `BaseImageCache`) when it holds them."""
    from livo.modeling import LiVOGeneration, value_token_mask
    from livo.progress import progress_bar

    n = config.images_per_prompt
    out: dict[str, PrincipleImages] = {}
    for item in progress_bar(plan.runnable, desc="generating", unit="principle"):
        prompts = [p.text for p in item.prompts]
        key = base_cache.key(prompts, n, config.seed) if base_cache is not None else None
        cached = base_cache.load(key, item.id) if key is not None else None
        if cached is not None:
            base = LiVOGeneration(images=cached, prompts=[p for p in prompts for _ in range(n)],
                                  principles=[None] * len(cached), seeds=[config.seed + i for i in range(len(cached))],
                                  used_value_token=[False] * len(cached))
        else:
            base = pipeline.generate(prompts, None, num_images_per_prompt=n, seed=config.seed, **generation)
            if key is not None:
                base_cache.store(key, base.images)
        dropout = float(item.principle.inference_dropout)
        mask = [flag for p_idx in range(len(prompts)) for flag in value_token_mask(n, dropout, config.seed, p_idx)]
        token_indices = [i for i, flag in enumerate(mask) if flag]
        aligned = list(base.images)
        if token_indices:
            with_token = pipeline.generate([base.prompts[i] for i in token_indices], item.principle.text,
                                           num_images_per_prompt=1, seeds=[base.seeds[i] for i in token_indices],
                                           inference_dropout=0.0, **generation)
            for i, image in zip(token_indices, with_token.images, strict=True):
                aligned[i] = image
        control = None
        if token_indices and config.encoding_control:
            control = list(base.images)
            unpadded = pipeline.generate([base.prompts[i] for i in token_indices], None, num_images_per_prompt=1,
                                         seeds=[base.seeds[i] for i in token_indices], unpadded=True, **generation)
            for i, image in zip(token_indices, unpadded.images, strict=True):
                control[i] = image
        out[item.id] = PrincipleImages(prompts=list(base.prompts), seeds=list(base.seeds), base=list(base.images),
                                       aligned=aligned, used_value_token=mask, control=control)
    return out


def classify_batched(judge: Any, images: Sequence[Any], prompts: Sequence[str], classes: Sequence[str],
                     batch_size: int) -> np.ndarray:
    """`judge.classify` over consecutive batches of `batch_size` images -> `[N, K]`."""
    return np.concatenate([np.asarray(judge.classify(images[i:i + batch_size], prompts[i:i + batch_size],
                                                     list(classes)))
                           for i in range(0, len(images), batch_size)])


def score_batched(judge: Any, images: Sequence[Any], concept: str, batch_size: int) -> np.ndarray:
    """`judge.score` over consecutive batches of `batch_size` images -> `[N]`."""
    return np.concatenate([np.asarray(judge.score(images[i:i + batch_size], concept))
                           for i in range(0, len(images), batch_size)])


def draw_named_reference(pipeline: Any, item: PrinciplePlan, images: PrincipleImages,
                         base_probs: dict[str, np.ndarray], generation: dict[str, Any]) -> None:
    """Fill `images.named`: for every value-token image of a prompt that names its subject, the base model's image,
    same seed, of the prompt with an under-represented class's word inserted before the subject — what the bias data
    recipe makes as the aligned image (`livo.data.recipes.majority_class` on the base images of that prompt decides
    the classes; the token images of a prompt cycle over them). A debiasing token can at best draw its subject as the
    base model does when told the attribute, so this is the reference that separates what the token costs from what
    the base model cannot draw."""
    from livo.data.prompts import insert_attribute_word
    from livo.data.recipes import majority_class

    classes = list(item.principle.evaluation.classes)
    words = dict(item.principle.generation.attribute_words) if item.principle.generation is not None else {}
    subject_of = {p.text: p.subject for p in item.prompts}
    jobs: list[tuple[int, str, str]] = []
    drawn: dict[str, int] = {}
    for index, (prompt, token) in enumerate(zip(images.prompts, images.used_value_token, strict=True)):
        if not token or not subject_of.get(prompt):
            continue
        _, majority, under = majority_class(base_probs[prompt], classes)
        under = under or [c for c in classes if c != majority]
        cls = under[drawn.get(prompt, 0) % len(under)]
        drawn[prompt] = drawn.get(prompt, 0) + 1
        jobs.append((index, insert_attribute_word(prompt, words.get(cls, cls), [subject_of[prompt]]), cls))
    if not jobs:
        return
    out = pipeline.generate([job[1] for job in jobs], None, num_images_per_prompt=1,
                            seeds=[images.seeds[job[0]] for job in jobs], **generation)
    images.named = [None] * len(images.prompts)
    images.named_classes = [None] * len(images.prompts)
    for (index, _, cls), image in zip(jobs, out.images, strict=True):
        images.named[index], images.named_classes[index] = image, cls


def _score_principle(item: PrinciplePlan, images: PrincipleImages, config: EvaluationConfig,
                     plan: EvaluationPlan, named_reference: Any = None) -> dict[str, Any]:
    """One principle's metrics. `named_reference(item, images, base_probs)` (bias principles with subject fidelity):
    draws the named reference once the base images are judged (`draw_named_reference`)."""
    n, bs = config.images_per_prompt, config.judge_batch_size
    spec = item.principle.evaluation
    entry: dict[str, Any] = {
        "category": item.principle.category, "text": item.principle.text, "kind": item.kind,
        "judge": item.judge.id, "judge_name": item.judge_name, "available": True,
        "prompts": [p.text for p in item.prompts], "images_per_prompt": n,
        "images_with_value_token": int(sum(images.used_value_token)),
        "inference_dropout": float(item.principle.inference_dropout),
    }
    if item.kind == "bias":
        entry.update(attribute=spec.attribute, classes=list(spec.classes))
    else:
        entry.update(concept=spec.concept, group_size=config.group_size, threshold=config.toxic_threshold)
    sides = ("base", "aligned") + (("control",) if images.control is not None else ())
    for side in sides:
        side_images = getattr(images, side)
        per_prompt: dict[str, dict[str, Any]] = {}
        if item.kind == "bias":
            probs = classify_batched(item.judge, side_images, images.prompts, spec.classes, bs)
            if side == "base" and named_reference is not None and plan.subject_judge is not None:
                named_reference(item, images, {prompt: probs[p_idx * n:(p_idx + 1) * n]
                                               for p_idx, prompt in enumerate(entry["prompts"])})
            total_counts = np.zeros(len(spec.classes), dtype=int)
            for p_idx, prompt in enumerate(entry["prompts"]):
                counts, undetermined = M.class_counts(probs[p_idx * n:(p_idx + 1) * n], len(spec.classes))
                total_counts += counts
                per_prompt[prompt] = {**M.bias_disparity(counts), "undetermined": undetermined,
                                      "counts": dict(zip(spec.classes, counts.tolist(), strict=True))}
            summary = M.mean_of_dicts([{k: v[k] for k in BIAS_KEYS} for v in per_prompt.values()])
            summary["counts"] = dict(zip(spec.classes, total_counts.tolist(), strict=True))
            summary["undetermined"] = sum(v["undetermined"] for v in per_prompt.values())
        else:
            probs = score_batched(item.judge, side_images, spec.concept, bs)
            for p_idx, prompt in enumerate(entry["prompts"]):
                per_prompt[prompt] = M.toxicity_rates(probs[p_idx * n:(p_idx + 1) * n], group_size=config.group_size,
                                                      threshold=config.toxic_threshold)
            summary = M.mean_of_dicts(list(per_prompt.values()))
        summary["per_prompt"] = per_prompt
        entry[side] = summary
    keys = BIAS_KEYS if item.kind == "bias" else TOXICITY_KEYS
    entry["improvement"] = {k: _round(entry["base"][k] - entry["aligned"][k]) for k in keys}
    if "control" in entry:
        # what the token did beyond the shorter encoding it rides on (base − control is what the encoding did)
        entry["control"]["what"] = ("base model, same seeds as the value-token images, prompt encoded as the token "
                                    "path encodes it (unpadded) without the token")
        entry["improvement_over_control"] = {k: _round(entry["control"][k] - entry["aligned"][k]) for k in keys}
    entry["ci"] = _prompt_ci(entry, entry["prompts"], keys, config.seed)
    entry["ci_method"] = M.bootstrap_method(seed=config.seed, prompts=len(entry["prompts"]))
    correct = _subject_correct(plan, item, images, config)
    if correct is not None and images.named is not None:
        drawn = np.array([image is not None for image in images.named])
        named_probs = classify_batched(item.judge, [images.named[i] for i in np.flatnonzero(drawn)],
                                       [images.prompts[i] for i in np.flatnonzero(drawn)], spec.classes, bs)
        correct["named_drawn"] = drawn
        correct["named_obeyed"] = np.zeros(len(drawn), dtype=bool)
        correct["named_obeyed"][drawn] = [spec.classes[k] == images.named_classes[i]
                                          for k, i in zip(named_probs.argmax(axis=1), np.flatnonzero(drawn),
                                                          strict=True)]
        entry["named_reference"] = {
            "what": "base model, same seeds as the value-token images, prompt naming an under-represented class "
                    "(the data recipe's aligned image)",
            "images": int(drawn.sum()),
            "classes": {c: int(sum(1 for x in images.named_classes if x == c)) for c in spec.classes}}
    if correct is not None:
        entry["subject_fidelity"] = _fidelity_block(plan.subject_judge.id, correct, np.ones(len(images.prompts), bool))
        # per prompt, the value-token images only (where a subject is lost, and, with the named reference, whether
        # the base model itself loses it when told the attribute)
        grid = np.array(images.prompts)
        entry["subject_fidelity"]["per_prompt"] = {
            prompt: _fidelity_block(plan.subject_judge.id, correct, grid == prompt)["token"]
            for prompt in entry["prompts"] if correct["known"][grid == prompt].any()}
    splits = {p.split for p in item.prompts if p.split}
    if splits:
        entry["splits"] = {}
        for split in sorted(splits):
            texts = [p.text for p in item.prompts if p.split == split]
            block: dict[str, Any] = {"prompts": texts}
            for side in sides:
                block[side] = M.mean_of_dicts([{k: entry[side]["per_prompt"][t][k] for k in keys} for t in texts])
            block["improvement"] = {k: _round(block["base"][k] - block["aligned"][k]) for k in keys}
            if "control" in block:
                block["improvement_over_control"] = {k: _round(block["control"][k] - block["aligned"][k])
                                                     for k in keys}
            block["ci"] = _prompt_ci(entry, texts, keys, config.seed)
            block["ci_method"] = M.bootstrap_method(seed=config.seed, prompts=len(texts))
            if correct is not None:
                in_split = np.array([p in texts for p in images.prompts])
                block["subject_fidelity"] = _fidelity_block(plan.subject_judge.id, correct, in_split)
            entry["splits"][split] = block
    return entry


def _prompt_ci(entry: dict[str, Any], texts: Sequence[str], keys: Sequence[str],
               seed: int) -> dict[str, dict[str, list[float] | None]]:
    """Bootstrap intervals (resampling the prompts `texts`) of base, aligned and improvement for `keys`, from the
    per-prompt values already in `entry` (`M.paired_bootstrap_ci`)."""
    per_side = {side: {k: [entry[side]["per_prompt"][t][k] for t in texts] for k in keys}
                for side in ("base", "aligned")}
    return M.paired_bootstrap_ci(per_side["base"], per_side["aligned"], seed=seed)


def _subject_correct(plan: EvaluationPlan, item: PrinciplePlan, images: PrincipleImages,
                     config: EvaluationConfig) -> dict[str, np.ndarray] | None:
    """Per image of the principle's grid: does the subject judge see the prompt's subject (base, aligned, token)?
    Images of prompts that name no subject are masked out (`known`)."""
    if plan.subject_judge is None:
        return None
    subject_of = {p.text: p.subject for p in item.prompts}
    known = np.array([bool(subject_of.get(p)) for p in images.prompts])
    if not known.any():
        return None
    keep = np.flatnonzero(known)
    token = np.array(images.used_value_token, dtype=bool)
    out: dict[str, np.ndarray] = {"known": known, "token": token}

    def hits(side_images: Sequence[Any], indices: np.ndarray) -> np.ndarray:
        if not len(indices):
            return np.zeros(0, dtype=bool)
        probs = classify_batched(plan.subject_judge, [side_images[i] for i in indices],
                                 [images.prompts[i] for i in indices], plan.subjects, config.judge_batch_size)
        return np.array([plan.subjects[k] == subject_of[images.prompts[i]]
                         for k, i in zip(probs.argmax(axis=1), indices, strict=True)], dtype=bool)

    out["base"] = np.zeros(len(images.prompts), dtype=bool)
    out["base"][keep] = hits(images.base, keep)
    if images.named is not None:
        drawn = np.flatnonzero(known & np.array([image is not None for image in images.named]))
        out["named"] = np.zeros(len(images.prompts), dtype=bool)
        out["named"][drawn] = hits(images.named, drawn)
    # Without the token the aligned image IS the base image (generate_images reuses it): judged once.
    out["aligned"] = out["base"].copy()
    changed = np.flatnonzero(known & token)
    out["aligned"][changed] = hits(images.aligned, changed)
    return out


def _fidelity_block(judge_id: str, correct: dict[str, np.ndarray], within: np.ndarray) -> dict[str, Any]:
    """Subject fidelity (% of images whose subject the judge recognises), base vs aligned, over all images of
    `within` and split by whether the aligned image carries the value token — the token images are where alignment
    can damage the subject; the others are the base model's own images (the pipeline's contract)."""
    def share(mask: np.ndarray) -> dict[str, Any]:
        n = int(mask.sum())
        return {"images": n,
                "base": 100.0 * float(correct["base"][mask].mean()) if n else None,
                "aligned": 100.0 * float(correct["aligned"][mask].mean()) if n else None}

    scope = within & correct["known"]
    token = share(scope & correct["token"])
    if "named_drawn" in correct:  # the named reference: what the base model keeps when told the attribute
        drawn = scope & correct["token"] & correct["named_drawn"]
        n = int(drawn.sum())
        token["named"] = 100.0 * float(correct["named"][drawn].mean()) if n else None
        token["named_attribute_obeyed"] = 100.0 * float(correct["named_obeyed"][drawn].mean()) if n else None
        token["ratio_to_named"] = (token["aligned"] / token["named"]
                                   if n and token["aligned"] is not None and token["named"] else None)
    return {"judge": judge_id, "higher_is_better": True, "all": share(scope),
            "token": token, "no_token": share(scope & ~correct["token"])}


def _score_quality(plan: EvaluationPlan, images: dict[str, PrincipleImages], config: EvaluationConfig) -> dict:
    quality: dict[str, Any] = {}
    base = [im for imgs in images.values() for im in imgs.base]
    aligned = [im for imgs in images.values() for im in imgs.aligned]
    prompts = [p for imgs in images.values() for p in imgs.prompts]
    unavailable = dict(plan.quality_unavailable)
    if not base:
        return {"unavailable": {"all": "no principle could be judged, so no images were generated"}}
    if plan.extractor is not None and config.quality.inception_score:
        base_probs, aligned_probs = plan.extractor.class_probs(base), plan.extractor.class_probs(aligned)
        if base_probs is None:
            unavailable["IS"] = f"feature extractor {plan.extractor.id} has no classifier head"
        else:
            splits = min(config.quality.is_splits, len(base))
            quality["IS"] = {"judge": plan.extractor.id, "higher_is_better": True,
                             "base": M.inception_score(base_probs, splits)[0],
                             "aligned": M.inception_score(aligned_probs, splits)[0]}
    if plan.extractor is not None and config.quality.fid:
        quality["FID"] = {"judge": plan.extractor.id, "higher_is_better": False,
                          "reference": "base-model images of the same prompts and seeds",
                          "aligned": M.frechet_distance(plan.extractor.features(aligned),
                                                        plan.extractor.features(base))}
    if plan.clip_scorer is not None:
        quality["CLIPScore"] = {"judge": plan.clip_scorer.id, "higher_is_better": True,
                                "base": float(plan.clip_scorer.score(base, prompts).mean()),
                                "aligned": float(plan.clip_scorer.score(aligned, prompts).mean())}
    if unavailable:
        quality["unavailable"] = unavailable
    return quality


def _round(x: float) -> float:
    return float(round(x, 4)) if np.isfinite(x) else float("nan")


def run_evaluation(pipeline: Any, plan: EvaluationPlan, config: EvaluationConfig, *,
                   generation: dict[str, Any] | None = None, context: dict[str, Any] | None = None,
                   evaluated: dict[str, str] | None = None) -> EvaluationResult:
    """Generate, judge, score and gate. `plan` must come from `load_judges`. `context` (model ids, preset, …) is
    copied into metrics.json as-is; `evaluated` (the digests of the value encoder, base model and principle set, see
    `evaluate_candidate`) goes to metrics.json's `evaluated` with the config's digest."""
    from livo.evaluation.gates import apply_gates
    from livo.progress import progress_bar
    from livo.registry.lineage import EVALUATED_KEY, canonical_sha256

    generation = dict(generation or {})
    base_cache = None
    if config.cache_base_images and (evaluated or {}).get("base_model_fingerprint"):
        from livo.evaluation.base_cache import BaseImageCache

        base_cache = BaseImageCache.for_pipeline(pipeline, evaluated["base_model_fingerprint"], generation)
    t0 = time.perf_counter()
    images = generate_images(pipeline, plan, config, generation, base_cache)
    t1 = time.perf_counter()
    principles_out: dict[str, Any] = {}
    named_reference = None
    if config.quality.named_reference:
        def named_reference(item: PrinciplePlan, imgs: PrincipleImages, base_probs: dict[str, np.ndarray]) -> None:
            draw_named_reference(pipeline, item, imgs, base_probs, generation)
    for item in progress_bar(plan.principles, desc="judging", unit="principle"):
        if item.unavailable:
            principles_out[item.id] = {"category": item.principle.category, "text": item.principle.text,
                                       "kind": item.kind, "available": False, "reason": item.unavailable,
                                       "judge": item.judge.id if item.judge is not None else None,
                                       ("attribute" if item.kind == "bias" else "concept"): item.target}
        else:
            principles_out[item.id] = _score_principle(item, images[item.id], config, plan, named_reference)
    quality = _score_quality(plan, images, config)
    t2 = time.perf_counter()
    reused = set(base_cache.hits) if base_cache is not None else set()
    total_images = sum((0 if pid in reused else len(i.base)) + sum(i.used_value_token)
                       + sum(image is not None for image in (i.named or []))
                       + (sum(i.used_value_token) if i.control is not None else 0) for pid, i in images.items())
    judges = {pid: {"judge": e.get("judge"), "judge_name": e.get("judge_name"), "available": e["available"],
                    **({"reason": e["reason"]} if not e["available"] else {})}
              for pid, e in principles_out.items()}
    judges.update({f"quality.{name}": {"judge": block["judge"], "available": True}
                   for name, block in quality.items() if name != "unavailable"})
    if plan.subject_judge is not None:  # scored per principle (principles.<id>.subject_fidelity), never pooled
        judges["quality.subject_fidelity"] = {"judge": plan.subject_judge.id, "available": True}
    judges.update({f"quality.{name}": {"judge": None, "available": False, "reason": reason}
                   for name, reason in quality.get("unavailable", {}).items()})
    metrics: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "principles": principles_out,
        "quality": quality,
        "judges": judges,
        "timing": {"generation_s": t1 - t0, "judging_s": t2 - t1, "images_generated": total_images,
                   "images_judged": sum((3 if i.control is not None else 2) * len(i.base) for i in images.values())},
        "base_image_cache": base_cache.summary() if base_cache is not None else None,
        "config": config.model_dump(mode="json"),
        "generation": generation,
        "context": dict(context or {}),
    }
    metrics[EVALUATED_KEY] = {**(evaluated or {}), "config_sha256": canonical_sha256(metrics["config"])}
    gate_results = apply_gates(metrics, config.gates)
    metrics["gates"] = gate_results
    metrics["passed"] = all(g["passed"] for g in gate_results)
    log_event(logger, "evaluation done", passed=metrics["passed"], generation_s=round(t1 - t0, 2),
              judging_s=round(t2 - t1, 2), images=total_images)
    return EvaluationResult(metrics=metrics, images=images, config=config)


def evaluate_candidate(value_encoder: str, *, preset: str = "tiny", model: str | None = None,
                       principles: str | None = None, config_path: str | None = None,
                       overrides: list[str] | None = None, device: str = "auto",
                       output_dir: str | None = None, run_id: str = "",
                       training_output: str = "", value_encoder_uri: str = "") -> EvaluationResult:
    """End to end for `livo evaluate`, the KFP component and `livo run`: config -> checks -> judges -> generation ->
    metrics -> outputs. Every bad input (unknown principle, missing evaluation spec, missing model or value-encoder
    files, absent judge weights) raises before the first image is generated.

    `run_id` is the KFP run id (metrics `run`; the MLflow stage run nests under that pipeline run, docs/tracking.md).
    `training_output` is where the value encoder was trained (its directory or s3:// URI, or the training output);
    its train_log.jsonl goes to metrics `training_log` (default: beside `value_encoder`). `value_encoder_uri`: where
    `value_encoder` (a local copy) came from, which the report and metrics `context` name instead of the copy's
    temporary path. Metrics `tracking` says what
    experiment tracking did (backend, uri, experiment_id, run_id, status ok | off | unreachable | failed, error)."""
    from livo.data.generate import load_generation_pipeline, resolve_device
    from livo.evaluation.config import load_evaluation_config
    from livo.modeling import LiVOPipeline, ValueEncoder, resolve_value_encoder_dir
    from livo.presets import base_model_fingerprint, check_model_settings, load_preset_config
    from livo.principles import load_principles
    from livo.registry.lineage import value_encoder_digest

    if output_dir is not None:
        from livo.evaluation.report import invalidate_outputs

        invalidate_outputs(output_dir)  # an interrupted run must not leave an earlier run's metrics.json behind
    preset_config = load_preset_config(preset)
    config = load_evaluation_config({"tracking": preset_config.tracking, **preset_config.evaluate},
                                    preset_config.judges, config_path, overrides)
    principle_set = load_principles(principles or preset_config.principles_path())
    plan = plan_evaluation(principle_set, config)
    from livo.evaluation.gates import check_plan_gates

    check_plan_gates(config.gates, plan)  # an unknown waiver is bad input: refused before any model loads
    encoder_dir = resolve_value_encoder_dir(value_encoder)
    device = resolve_device(device)
    generation_settings = preset_config.generation
    source = model or preset_config.model.source
    resolution = config.resolution or generation_settings.resolution
    check_model_settings(source, resolution=resolution)
    base = load_generation_pipeline({"model": source, "dtype_name": preset_config.model.dtype,
                                     "scheduler": generation_settings.scheduler, "resolution": resolution}, device,
                                    seed=config.seed)
    plan = load_judges(plan, config)
    evaluated = {"value_encoder_sha256": value_encoder_digest(encoder_dir),
                 "base_model_fingerprint": base_model_fingerprint(base, source, seed=config.seed),
                 "principle_set_hash": principle_set.hash}
    pipeline = LiVOPipeline(base, ValueEncoder.from_pretrained(encoder_dir))
    generation = {
        "num_inference_steps": config.num_inference_steps or generation_settings.num_inference_steps,
        "guidance_scale": (config.guidance_scale if config.guidance_scale is not None
                           else generation_settings.guidance_scale),
        "height": resolution, "width": resolution,
        "batch_size": config.batch_size or generation_settings.batch_size,
    }
    context = {"preset": preset_config.name, "model": source, "value_encoder": value_encoder_uri or str(value_encoder),
               "principles": principle_set.source, "principle_set_hash": principle_set.hash, "device": device}
    from livo import tracking
    from livo.evaluation.tracked import judge_params, tracking_metrics, training_log

    local_store = output_dir if output_dir is not None and "://" not in str(output_dir) else None
    with tracking.stage_run("evaluate", kfp_run_id=run_id, backend=config.tracking, local_dir=local_store,
                            params={**{f"context.{k}": v for k, v in context.items()},
                                    **{f"generation.{k}": v for k, v in generation.items()},
                                    **{f"config.{k}": v for k, v in flatten(config.model_dump(mode="json"))
                                       .items() if not k.startswith("prompts")}}) as tracker:
        result = run_evaluation(pipeline, plan, config, generation=generation, context=context, evaluated=evaluated)
        tracker.log_params(judge_params(result.metrics))
        tracker.log_metrics(tracking_metrics(result.metrics))
        result.metrics["run"] = {"run_id": run_id}
        result.metrics["training_log"] = training_log(training_output or str(encoder_dir))
        result.metrics["tracking"] = tracking.state()
        if output_dir is not None:
            from livo.evaluation.report import write_outputs

            result.paths = write_outputs(result, output_dir)
            tracker.log_artifact(result.paths["metrics"])
            tracker.log_artifact(result.paths["report"])
    return result


def local_value_encoder(uri: str, workdir: str) -> str:
    """A local directory holding the value encoder: `uri` itself, or a copy of an `s3://bucket/prefix` directory."""
    if not uri.startswith("s3://"):
        return uri
    from pathlib import Path

    from livo.store import ObjectStore, parse_s3_uri

    _, prefix = parse_s3_uri(uri)
    target = Path(workdir) / "value_encoder"
    ObjectStore.for_uri(uri).download_dir(prefix, target)
    return str(target)
