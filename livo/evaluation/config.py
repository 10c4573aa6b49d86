"""Typed evaluation config: which principles and prompts, how many images, which judges, quality metrics, gates.

Loaded with `livo.config.load_config(EvaluationConfig, path, overrides)`; a preset's `evaluate:` section is the base
(`EvaluationConfig.from_preset`). Every field is documented in docs/evaluation.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from livo.config import LivoConfig


class EvalPrompt(LivoConfig):
    text: str = Field(min_length=1, description="the prompt, exactly as fed to the model")
    subject: str | None = Field(None, description="what the prompt depicts, for the optional subject-fidelity metric")
    split: Literal["seen", "unseen"] | None = Field(
        None, description="seen: the prompt's subject occurs in the value encoder's training data (only the template "
                          "is held out); unseen: neither subject nor template does. Metrics are reported per split.")


class JudgeSelection(LivoConfig):
    attribute: str | None = Field(None, description="judge for bias principles (e.g. clip-zero-shot, age-gender)")
    concept: str | None = Field(None, description="judge for toxicity principles (e.g. llava-yes-no, nudenet)")
    subject: str | None = Field(None, description="optional judge for subject fidelity (toy: toy-subject)")
    per_attribute: dict[str, str | None] = Field(
        default_factory=dict, description="attribute -> judge, overriding `attribute`; null = no judge (unavailable)")
    per_concept: dict[str, str | None] = Field(
        default_factory=dict, description="concept -> judge, overriding `concept`; null = no judge (unavailable)")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="judge name -> factory options, e.g. {clip-zero-shot: {model: /models/clip}}")

    def for_attribute(self, attribute: str) -> str | None:
        return self.per_attribute[attribute] if attribute in self.per_attribute else self.attribute

    def for_concept(self, concept: str) -> str | None:
        return self.per_concept[concept] if concept in self.per_concept else self.concept


class QualityConfig(LivoConfig):
    feature_extractor: str = Field("pixel-stats", description="pixel-stats | clip | module:callable (IS and FID)")
    feature_extractor_options: dict[str, Any] = Field(default_factory=dict)
    inception_score: bool = True
    fid: bool = True
    is_splits: int = Field(1, ge=1, description="Inception Score splits (10 in papers with thousands of images)")
    clip_model: str | None = Field(
        None, description="CLIPModel directory or hub id for CLIPScore (paper: openai/clip-vit-large-patch14); "
                          "None = CLIPScore reported unavailable")
    subject_fidelity: bool = Field(True, description="computed when judges.subject is set and prompts name subjects")
    named_reference: bool = Field(
        True, description="bias principles with subject fidelity: also draw, on each value-token image's seed, the "
                          "base model's image of the prompt naming an under-represented class (the data recipe's "
                          "aligned image) — what the base model itself keeps of the subject when told the attribute "
                          "(subject_fidelity.token.named; reported, not gated)")


class PrincipleGates(LivoConfig):
    """Overrides of the category-wide gate thresholds for one principle (`gates.per_principle.<id>`). A field left
    out inherits the category's value; an explicit null switches that gate off for this principle."""

    min_improvement: float | None = Field(None, description="base − aligned of the category's metric ≥ this")
    min_improvement_over_control: float | None = Field(
        None, description="control − aligned of the category's metric ≥ this (the value token's own effect)")
    max_aligned: float | None = Field(None, ge=0, description="aligned value of the category's metric ≤ this")
    min_subject_fidelity_ratio: float | None = Field(
        None, gt=0, description="aligned / base subject fidelity on value-token images ≥ this")
    max_subject_fidelity_drop: float | None = Field(
        None, ge=0, description="base − aligned subject fidelity (points) on value-token images ≤ this")


class GateConfig(LivoConfig):
    """Release gates. `passed` is true when every gate that is not waived holds. Metrics are ×100 points; improvements
    are base − aligned. A gate whose judge or metric is unavailable FAILS unless `waive` names it. No threshold set at
    all = an ungated evaluation, which registration refuses without `allow_ungated` (docs/evaluation.md, Gates)."""

    bias_metric: Literal["D1", "D2"] = "D1"
    min_bias_improvement: float | None = Field(None, description="every bias principle: base − aligned ≥ this")
    min_bias_improvement_over_control: float | None = Field(
        None, description="every bias principle: control − aligned ≥ this, the value token's own effect beyond what "
                          "the token path's unpadded encoding does (needs encoding_control; docs/evaluation.md)")
    max_bias: float | None = Field(None, ge=0, description="every bias principle: aligned metric ≤ this")
    toxicity_metric: Literal["R", "S", "Max", "Prob"] = "R"
    min_toxicity_improvement: float | None = Field(None, description="every toxicity principle: base − aligned ≥ this")
    min_toxicity_improvement_over_control: float | None = Field(
        None, description="every toxicity principle: control − aligned ≥ this (as min_bias_improvement_over_control)")
    max_toxicity: float | None = Field(None, ge=0, description="every toxicity principle: aligned metric ≤ this")
    min_subject_fidelity_ratio: float | None = Field(
        None, gt=0, description="every principle: aligned / base subject fidelity on its value-token images ≥ this")
    max_subject_fidelity_drop: float | None = Field(
        None, ge=0, description="every principle: base − aligned subject fidelity (points) on value-token images ≤ this")
    max_fid: float | None = Field(None, description="FID(aligned vs base images) ≤ this")
    max_clip_score_drop: float | None = Field(None, description="base − aligned CLIPScore ≤ this")
    max_inception_score_drop: float | None = Field(None, description="base − aligned IS ≤ this")
    per_principle: dict[str, PrincipleGates] = Field(
        default_factory=dict, description="principle id -> overrides of the thresholds above for that principle")
    per_split: dict[Literal["seen", "unseen"], PrincipleGates] = Field(
        default_factory=dict,
        description="split -> gates on the prompts of that split alone (EvalPrompt.split), for every principle that "
                    "has such prompts, in addition to the whole-principle gates; a field left out = no such gate")
    waive: dict[str, str] = Field(
        default_factory=dict, description="gate name (e.g. 'quality: FID', 'racial-equality: judged') or principle id "
                                          "-> the reason; a waived gate is reported but does not decide `passed`")

    @model_validator(mode="before")
    @classmethod
    def _removed_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and "fail_on_unavailable" in data:
            raise ValueError("gates.fail_on_unavailable was removed: an unavailable judge or metric now always fails "
                             "its gate; waive a gate by name with a reason instead (gates.waive: {'<gate>': <why>})")
        return data

    @field_validator("waive")
    @classmethod
    def _waivers_have_reasons(cls, value: dict[str, str]) -> dict[str, str]:
        for name, reason in value.items():
            if not str(name).strip() or not str(reason or "").strip():
                raise ValueError(f"waiver {name!r}: give the gate name and a non-empty reason")
        return value

    def for_principle(self, pid: str, kind: str) -> dict[str, Any]:
        """The thresholds that apply to principle `pid` of `kind` (bias | toxicity): metric, min_improvement,
        max_aligned, min_subject_fidelity_ratio, max_subject_fidelity_drop (None = that gate is off)."""
        bias = kind == "bias"
        values: dict[str, Any] = {
            "metric": self.bias_metric if bias else self.toxicity_metric,
            "min_improvement": self.min_bias_improvement if bias else self.min_toxicity_improvement,
            "min_improvement_over_control": self.min_bias_improvement_over_control if bias
            else self.min_toxicity_improvement_over_control,
            "max_aligned": self.max_bias if bias else self.max_toxicity,
            "min_subject_fidelity_ratio": self.min_subject_fidelity_ratio,
            "max_subject_fidelity_drop": self.max_subject_fidelity_drop,
        }
        override = self.per_principle.get(pid)
        if override is not None:
            values.update({name: getattr(override, name) for name in override.model_fields_set})
        return values


class EvaluationConfig(LivoConfig):
    principles: list[str] | None = Field(
        None, description="principle ids to evaluate; None = every principle with an evaluation spec and prompts")
    prompts: dict[str, list[EvalPrompt]] = Field(
        default_factory=dict, description="principle id -> evaluation prompts (strings or {text, subject})")
    default_prompts_per_principle: int = Field(
        4, ge=0, description="without explicit prompts, use this many of the principle's retrieval examples")
    images_per_prompt: int = Field(50, ge=1, description="paper: 50 images per prompt")
    seed: int = Field(0, description="image i of a principle's (prompt, image) grid uses seed + i, base and aligned")
    batch_size: int | None = Field(None, ge=1, description="images per generation batch; None = the preset's")
    judge_batch_size: int = Field(32, ge=1, description="images per judging call")
    group_size: int = Field(5, ge=1, description="toxicity Max/Prob group size (paper: 5)")
    toxic_threshold: float = Field(0.5, ge=0, le=1, description="P above which an image counts as toxic")
    num_inference_steps: int | None = Field(None, gt=0, description="None = the preset's generation setting")
    guidance_scale: float | None = Field(None, ge=0)
    resolution: int | None = Field(None, gt=0)
    judges: JudgeSelection = JudgeSelection()
    quality: QualityConfig = QualityConfig()
    gates: GateConfig = GateConfig()
    encoding_control: bool = Field(
        True, description="also draw, on each value-token image's seed, the base model's image of the prompt encoded "
                          "as the token path encodes it (unpadded, LIVO_METHOD.md) without the token, and report the "
                          "metrics on them as `control`: a base model that changes with the shorter sequence would "
                          "otherwise credit the token with it (docs/evaluation.md)")
    report_images_per_principle: int = Field(8, ge=0, description="image pairs shown per principle in the report")
    cache_base_images: bool = Field(
        True, description="keep the base model's images on local disk by content hash and reuse them when nothing "
                          "that decides them changed ($LIVO_CACHE_DIR/evaluation; livo/evaluation/base_cache.py)")
    tracking: Literal["mlflow", "none"] = Field(
        "mlflow", description="experiment tracking of this evaluation (docs/tracking.md); env LIVO_TRACKING overrides")

    @field_validator("prompts", mode="before")
    @classmethod
    def _strings_are_prompts(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: [{"text": p} if isinstance(p, str) else p for p in (prompts or [])]
                    for key, prompts in value.items()}
        return value

    @model_validator(mode="after")
    def _control_gates_need_the_control(self) -> EvaluationConfig:
        gates = self.gates
        asked = [name for name in ("min_bias_improvement_over_control", "min_toxicity_improvement_over_control")
                 if getattr(gates, name) is not None]
        asked += [f"per_{kind}.{key}.min_improvement_over_control"
                  for kind, overrides in (("principle", gates.per_principle), ("split", gates.per_split))
                  for key, override in overrides.items() if override.min_improvement_over_control is not None]
        if asked and not self.encoding_control:
            raise ValueError(f"gates.{asked[0]} compares the aligned model with the encoding control, but "
                             "encoding_control is off: set encoding_control: true, or remove the over-control gates")
        return self


def load_evaluation_config(preset_evaluate: dict[str, Any] | None = None, preset_judges: dict[str, str] | None = None,
                           path: str | None = None, overrides: list[str] | None = None) -> EvaluationConfig:
    """The evaluation config: the preset's `judges` and `evaluate` sections, then a YAML file, then overrides."""
    from livo.config import load_config

    base: dict[str, Any] = {"judges": {k: v for k, v in (preset_judges or {}).items()
                                       if k in ("attribute", "concept", "subject")}}
    for key, value in (preset_evaluate or {}).items():
        if key == "judges" and isinstance(value, dict):
            base["judges"] = {**base["judges"], **value}
        else:
            base[key] = value
    return load_config(EvaluationConfig, path, overrides, base=base)
