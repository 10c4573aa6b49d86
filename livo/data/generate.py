"""The preference-data generator: config, planning and validation, sharding, resumability, batched generation.

Flow (`livo generate`, or one KFP task per shard plus a merge task):

1. `prepare_generation(config)`: load the principles, synthesise the scenes, build and probe the judges, open and
   probe the output location. Every bad input (unknown principle id, empty prompt list, a judge whose weights are
   missing, an unreachable store) fails here — before a model is loaded or an image generated.
2. `run_generation(plan)`: load the base model (fp16 + SDPA on GPU), fingerprint it, then for each shard of this
   task: skip it when its commit object matches this generation (same config, principles, model, judges), otherwise
   generate it from scratch (a partial shard of a killed run has no commit and is regenerated, never appended to).
3. `merge_generated_dataset(location, shard_count)`: check every shard's commit and hash, write `manifest.json` last.

Scenes are dealt to shards round-robin (`scenes[i::shard_count]`), so shards cost about the same whatever the mix of
principles. Seeds derive from (seed, scene, role, class, index) — see `livo.data.recipes` — so the same config gives
the same dataset, byte for byte, on the same hardware and software.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from livo.config import LivoConfig, apply_overrides, load_config, read_yaml
from livo.data import recipes
from livo.data.dataset import (
    DatasetLocation,
    canonical_json,
    encode_image,
    merge_shards,
    open_location,
    read_shard_commit,
    sha256_bytes,
    shard_dirname,
    shard_is_complete,
    write_shard,
)
from livo.data.prompts import Scene, read_prompt_file, select_scenes
from livo.data.recipes import ImageRequest, JudgingConfig, SceneOutcome
from livo.errors import ConfigError, DataError
from livo.log import get_logger, log_event
from livo.retriever import RetrievalOptions

logger = get_logger("livo.data.generate")

DEFAULT_PRESET = "tiny"


class GenerateConfig(LivoConfig):
    """Everything that decides a generated dataset. Unset generation settings come from the preset."""

    name: str = Field("preference", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="dataset name")
    preset: str = Field(DEFAULT_PRESET, description="tiny | toy | toy-six | toy-sdxl | sd15 | sd21 | sdxl | path to a preset YAML")
    model: str | None = Field(None, description="model source; default: the preset's model.source")
    principles_file: str | None = Field(None, description="principles YAML (path or s3:// URI); default: preset's")
    principles: list[str] = Field(default_factory=list, description="principle ids; empty = every principle with a "
                                                                    "generation section (or with a prompt list); "
                                                                    "[auto] = the retriever labels the prompt list")
    prompts: dict[str, list[str]] = Field(default_factory=dict, description="principle id -> user prompts (replace "
                                                                            "that principle's templates)")
    prompts_file: str | None = Field(None, description="YAML {principle_id: [prompts]} or text, one per line")
    max_prompts_per_principle: int | None = Field(None, ge=1, description="keep the first N prompts per principle")
    candidates_per_scene: int = Field(4, ge=1, description="violating candidates (and aligned candidates) per scene")
    max_pairs_per_scene: int | None = Field(None, ge=1, description="cap on kept pairs per scene")
    subject_contrast: int = Field(
        0, ge=0, description="bias scenes: this many extra candidates showing the aligned attribute on the scene type's "
                             "other subjects ('an orange nurse' for the doctor scene); kept ones are extra violating "
                             "images, so the value token learns to change the attribute, not the subject")
    pairing: Literal["independent", "matched"] = Field(
        "independent", description="independent: aligned candidates have their own seeds and pairs zip kept images; "
                                   "matched: each aligned candidate shares its violating image's seed (initial noise) "
                                   "and is paired with it, so a pair differs only in what the prompt changes (train "
                                   "with redraw_violating=false to keep the pairs)")
    seed: int = Field(0, ge=0, description="base seed; every image seed derives from it")
    resolution: int | None = Field(None, gt=0, description="image size; default: preset")
    num_inference_steps: int | None = Field(None, gt=0, description="sampler steps; default: preset")
    guidance_scale: float | None = Field(None, ge=0, description="CFG scale; default: preset")
    scheduler: str | None = Field(None, description="dpmsolver++ | ddim | as-is; default: preset")
    batch_size: int | None = Field(None, gt=0, description="images per pipeline call; default: preset")
    device: str = Field("auto", description="auto (cuda when available) | cpu | cuda | cuda:N")
    dtype: str | None = Field(None, description="float32 | float16 | bfloat16; default: fp16 on GPU, fp32 on CPU")
    precompute_latents: bool = Field(
        True, description="store the VAE posterior (mean and log-variance) of both images; training samples it each "
                          "step instead of decoding and encoding the images")
    precompute_flipped_latents: bool = Field(
        False, description="also store the posteriors of the mirrored images, for training with random_flip")
    precompute_prompt_embeds: bool = Field(True, description="store the frozen text encoder's prompt embeddings")
    num_shards: int | None = Field(None, ge=1, description="shards; default: ceil(scenes / scenes_per_shard)")
    scenes_per_shard: int = Field(32, ge=1, description="scenes per shard when num_shards is not set")
    judging: JudgingConfig = Field(default_factory=JudgingConfig)
    retrieval: RetrievalOptions = Field(default_factory=RetrievalOptions,
                                        description="with principles=[auto]: retrieval.min_confidence leaves prompts "
                                                    "the retriever labels less confidently out")

    @model_validator(mode="after")
    def _flipped_needs_latents(self) -> GenerateConfig:
        if self.precompute_flipped_latents and not self.precompute_latents:
            raise ValueError("precompute_flipped_latents=true needs precompute_latents=true")
        return self


def build_generate_config(config_path: str | Path | None = None, overrides: Sequence[str] = (),
                          preset: str | None = None) -> GenerateConfig:
    """Preset defaults (its `judges` and `data` sections) < the YAML file < `key=value` overrides.

    The preset is chosen by a `preset=` override, else `preset:` in the file, else the `preset` argument, else
    `tiny`.
    """
    from livo.presets import load_preset_config

    raw: dict[str, Any] = {}
    if config_path is not None:
        loaded = read_yaml(config_path) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_path}: expected a mapping at the top level")
        raw = loaded
    raw = apply_overrides(raw, list(overrides))
    preset_name = str(raw.get("preset") or preset or DEFAULT_PRESET)
    preset_config = load_preset_config(preset_name)
    judging = {kind: preset_config.judges[kind] for kind in ("attribute", "concept") if preset_config.judges.get(kind)}
    base: dict[str, Any] = {**preset_config.data, "preset": preset_name}
    base["judging"] = {**judging, **(preset_config.data.get("judging") or {})}
    return load_config(GenerateConfig, config_path, list(overrides), base=base)


@dataclass
class GenerationPlan:
    """A validated generation: what to make, where, with which judges. Built without loading the model."""

    config: GenerateConfig
    settings: dict[str, Any]  # resolved: model, principles file, resolution, steps, guidance, scheduler, batch, ...
    principle_set: Any
    scenes: list[Scene]
    judges: dict[str, Any]
    judge_ids: dict[str, str]
    shard_count: int
    location: DatasetLocation
    plan_key: str  # hash of everything but the model weights; names the dataset
    subject_classes: list[str] = field(default_factory=list)  # what the subject judge chooses among (if any)
    labels: dict[str, Any] | None = None  # principles=[auto]: the retriever's label and confidence per prompt

    @property
    def dataset_id(self) -> str:
        return self.plan_key.split(":", 1)[1][:16]

    def shard_scenes(self, shard_index: int) -> list[tuple[int, Scene]]:
        return [(i, self.scenes[i]) for i in range(shard_index, len(self.scenes), self.shard_count)]


def resolve_settings(config: GenerateConfig) -> dict[str, Any]:
    from livo.presets import load_preset_config

    preset = load_preset_config(config.preset)
    principles_file = config.principles_file or preset.principles_path()
    return {
        "preset": preset.name,
        "model": config.model or preset.model.source,
        "principles_file": principles_file,
        "resolution": config.resolution or preset.generation.resolution,
        "num_inference_steps": config.num_inference_steps or preset.generation.num_inference_steps,
        "guidance_scale": config.guidance_scale if config.guidance_scale is not None
        else preset.generation.guidance_scale,
        "scheduler": config.scheduler or preset.generation.scheduler,
        "batch_size": config.batch_size or preset.generation.batch_size,
        "dtype_name": config.dtype or preset.model.dtype,
    }


def default_output(name: str, dataset_id: str) -> str:
    """`s3://$LIVO_S3_BUCKET/datasets/<name>/<id>` when a store is configured, else `runs/datasets/<name>/<id>`."""
    if os.environ.get("LIVO_S3_ENDPOINT"):
        from livo.store import ObjectStore

        return ObjectStore.from_env().uri(f"datasets/{name}/{dataset_id}")
    from livo.paths import runs_dir

    return str(runs_dir() / "datasets" / name / dataset_id)


def prepare_generation(config: GenerateConfig, *, out: str | Path | None = None, store: Any = None) -> GenerationPlan:
    """Validate everything that can be validated without the model (see the module docstring)."""
    from livo.evaluation.judges import judge_options_key
    from livo.judges import build_judge
    from livo.presets import check_model_settings
    from livo.principles import load_principles

    settings = resolve_settings(config)
    check_model_settings(settings["model"], resolution=settings["resolution"])
    principle_set = load_principles(settings["principles_file"])
    if AUTO_LABEL in config.principles and len(config.principles) > 1:
        raise ConfigError("principles=[auto] labels the prompt list with the retriever; give no other principle id "
                          "with it (or label the prompts yourself: YAML {principle_id: [prompts]})")
    user_prompts = {k: list(v) for k, v in config.prompts.items()}
    if config.prompts_file:
        for pid, prompts in read_prompt_file(config.prompts_file, config.principles).items():
            user_prompts.setdefault(pid, []).extend(prompts)
    principle_ids, labels = list(config.principles), None
    if AUTO_LABEL in principle_ids or AUTO_LABEL in user_prompts:
        user_prompts, principle_ids, labels = label_prompt_list(principle_set, config, user_prompts)
    scenes = select_scenes(principle_set, principle_ids, user_prompts,
                           limit_per_principle=config.max_prompts_per_principle)

    judges: dict[str, Any] = {}
    for kind, category in (("attribute", "bias"), ("concept", "toxicity")):
        if not any(s.category == category for s in scenes):
            continue
        name = getattr(config.judging, kind)
        if not name:
            from livo.judges import available_judges

            raise ConfigError(f"no {kind} judge configured for the {category} principles: set judging.{kind}=NAME "
                              f"(available: {', '.join(available_judges())}) or use a preset that names one")
        with judge_options_key("judging.options"):  # hints name this command's key, not `livo evaluate`'s
            judges[kind] = build_judge(name, **config.judging.options.get(name, {}))
    subject_classes: list[str] = []
    if config.judging.subject:
        subject_classes = list(config.judging.subject_classes) or sorted({s.subject for s in scenes if s.subject})
        if len(subject_classes) < 2:
            raise ConfigError(f"judging.subject={config.judging.subject} needs at least two subjects to choose among, "
                              f"got {subject_classes}; list them in judging.subject_classes")
        with judge_options_key("judging.options"):
            judges["subject"] = build_judge(config.judging.subject,
                                            **config.judging.options.get(config.judging.subject, {}))
        unknown = sorted({s.subject for s in scenes if s.subject} - set(subject_classes))
        if unknown:
            raise ConfigError(f"judging.subject_classes {subject_classes} lack the scene subject(s) "
                              f"{', '.join(unknown)}; add them or leave the list empty")
    _probe_judges(judges, scenes, subject_classes)
    judge_ids = {kind: judge.id for kind, judge in judges.items()}

    shard_count = config.num_shards or max(1, math.ceil(len(scenes) / config.scenes_per_shard))
    shard_count = min(shard_count, len(scenes))
    config_material = config.model_dump(mode="json")
    if config.retrieval == RetrievalOptions():
        del config_material["retrieval"]  # added later: datasets planned before it keep their ids
    plan_material = {
        "config": config_material,
        "settings": settings,
        "principle_set_hash": principle_set.hash,
        "scenes": [s.scene for s in scenes],
        "judge_ids": judge_ids,
        "shard_count": shard_count,
    }
    if labels is not None:
        plan_material["labels"] = labels
    plan_key = sha256_bytes(canonical_json(plan_material).encode("utf-8"))
    location = open_location(out or default_output(config.name, plan_key.split(":", 1)[1][:16]), store=store)
    location.check_writable()
    plan = GenerationPlan(config=config, settings=settings, principle_set=principle_set, scenes=scenes,
                          judges=judges, judge_ids=judge_ids, shard_count=shard_count, location=location,
                          plan_key=plan_key, subject_classes=subject_classes, labels=labels)
    log_event(logger, "generation planned", location=location.uri, scenes=len(scenes), shards=shard_count,
              principles=",".join(sorted({s.principle_id for s in scenes})), judges=judge_ids)
    return plan


AUTO_LABEL = "auto"


def label_prompt_list(principle_set: Any, config: GenerateConfig, user_prompts: dict[str, list[str]]
                      ) -> tuple[dict[str, list[str]], list[str], dict[str, Any]]:
    """principles=[auto]: the value retriever labels each prompt of the list (as the paper's data pipeline does).
    Prompts that get no principle, a principle withheld below `retrieval.min_confidence`, or one data generation has
    no recipe for (category other) are left out and counted. Returns the prompts per principle, the principle ids and
    the labelling record (each prompt's principle, stage and calibrated confidence) the manifest keeps."""
    from livo.retriever import deployed_retriever, label_prompts

    prompts = user_prompts.pop(AUTO_LABEL, [])
    if not prompts:
        raise ConfigError("principles=[auto] needs a prompt list to label: --prompts FILE (text, one prompt per line) "
                          "or prompts: {auto: [...]}")
    if user_prompts:
        raise ConfigError(f"principles=[auto] labels every prompt itself; the list also has prompts for "
                          f"{sorted(user_prompts)}: put them all under one plain list")
    retriever = deployed_retriever(principle_set, min_confidence=config.retrieval.min_confidence)
    labels = label_prompts(retriever, prompts)
    grouped: dict[str, list[str]] = {}
    left_out = {"no principle": 0, "withheld below min_confidence": 0, "no generation recipe": 0}
    for label in labels["prompts"]:
        pid = label["principle"]
        if pid is None:
            left_out["withheld below min_confidence" if label["withheld"] else "no principle"] += 1
        elif principle_set.get(pid).category not in ("bias", "toxicity"):
            left_out["no generation recipe"] += 1
        else:
            grouped.setdefault(pid, []).append(label["prompt"])
    labels["left_out"] = left_out
    if not grouped:
        raise ConfigError(f"none of the {len(prompts)} prompts got a principle to generate for ({left_out}); check "
                          "the prompt list, the principles file or retrieval.min_confidence")
    order = [p.id for p in principle_set if p.id in grouped]
    log_event(logger, "prompts labelled", prompts=len(prompts), counts=labels["counts"], left_out=left_out)
    return grouped, order, labels


def _probe_judges(judges: dict[str, Any], scenes: Sequence[Scene], subject_classes: Sequence[str] = ()) -> None:
    """Ask each judge once about a blank image for every class set / concept it will see, so that a judge that cannot
    handle a principle (unknown class or concept) fails now rather than after the first batch of images."""
    from PIL import Image

    blank = Image.new("RGB", (64, 64), (128, 128, 128))
    seen: set[Any] = set()
    for scene in scenes:
        if scene.category == "bias" and ("a", scene.classes) not in seen:
            seen.add(("a", scene.classes))
            probs = judges["attribute"].classify([blank], [scene.prompt], list(scene.classes))
            if tuple(getattr(probs, "shape", ())) != (1, len(scene.classes)):
                raise ConfigError(f"judge {judges['attribute'].id} returned shape {getattr(probs, 'shape', None)} "
                                  f"for {len(scene.classes)} classes; it does not follow the AttributeJudge interface")
        elif scene.category == "toxicity" and ("c", scene.concept) not in seen:
            seen.add(("c", scene.concept))
            judges["concept"].score([blank], scene.concept)
    if "subject" in judges:
        judges["subject"].classify([blank], [scenes[0].prompt], list(subject_classes))


# --------------------------------------------------------------------------------------------------------------------
# Running


@dataclass
class GenerationSummary:
    location: str
    shard_count: int
    shards_generated: list[int] = field(default_factory=list)
    shards_skipped: list[int] = field(default_factory=list)
    rows: int = 0  # rows written by this run; the whole dataset's once the manifest is written
    images_generated: int = 0
    generation_seconds: float = 0.0  # inside pipeline calls
    judge_seconds: float = 0.0  # inside judge calls (overlapped with generation, on a helper thread)
    write_seconds: float = 0.0  # building and writing shards and their commits
    # Where the rest of the wall time goes (what a bare pipeline loop does not spend): waiting for the judges at the
    # end of each phase (the aligned phase needs the violating phase's verdicts), the stored VAE posteriors and
    # prompt embeddings, and waiting for the PNG encoder before the shard is written.
    judge_wait_seconds: float = 0.0
    precompute_seconds: float = 0.0
    encode_wait_seconds: float = 0.0
    wall_seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None

    @property
    def images_per_second(self) -> float:
        return self.images_generated / self.generation_seconds if self.generation_seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "location": self.location, "shard_count": self.shard_count, "shards_generated": self.shards_generated,
            "shards_skipped": self.shards_skipped, "rows": self.rows, "images_generated": self.images_generated,
            "generation_seconds": round(self.generation_seconds, 3), "judge_seconds": round(self.judge_seconds, 3),
            "write_seconds": round(self.write_seconds, 3), "judge_wait_seconds": round(self.judge_wait_seconds, 3),
            "precompute_seconds": round(self.precompute_seconds, 3),
            "encode_wait_seconds": round(self.encode_wait_seconds, 3), "wall_seconds": round(self.wall_seconds, 3),
            "images_per_second": round(self.images_per_second, 3), "counts": self.counts, "stats": self.stats,
            "manifest_written": self.manifest is not None,
        }


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but no CUDA GPU is visible; use device=cpu or auto")
    return name


def load_generation_pipeline(settings: dict[str, Any], device: str, seed: int = 0):
    """The base pipeline on `device`: fp16 (or the configured dtype) and SDPA attention on GPU, fp32 on CPU. `seed`
    builds the random-weight presets (tiny, sd15-random, sdxl-random) as training builds them from its seed, so a
    `livo run --seed N` generates, trains and evaluates one model; sources with weights ignore it."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    from livo.presets import check_loaded_resolution, load_pipeline, make_scheduler, torch_dtype_named

    dtype = torch_dtype_named(settings["dtype_name"]) if settings["dtype_name"] else None
    if dtype is None:
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
    if device == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # fp16 convolutions are slow or unsupported on CPU; the GPU path keeps fp16
    on_cpu_fp32 = device == "cpu" and dtype == torch.float32  # how models are built/loaded: no cast needed
    pipe = load_pipeline(settings["model"], device=None if on_cpu_fp32 else device,
                         dtype=None if on_cpu_fp32 else dtype, seed=seed)
    check_loaded_resolution(pipe, settings.get("resolution"), settings["model"])
    if settings["scheduler"] != "as-is":
        pipe.scheduler = make_scheduler(settings["scheduler"], dict(pipe.scheduler.config))
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.vae.set_attn_processor(AttnProcessor2_0())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def vae_upcast_for_sdxl(pipe) -> Iterator[None]:
    """The VAE in fp32 for the duration when it needs it (`livo.modeling.vae_needs_fp32`: SDXL's) and was cast to
    fp16 for generation."""
    import torch

    from livo.modeling import vae_needs_fp32

    upcast = vae_needs_fp32(pipe) and pipe.vae.dtype == torch.float16
    if upcast:
        pipe.vae.to(torch.float32)
    try:
        yield
    finally:
        if upcast:
            pipe.vae.to(torch.float16)


def generation_key(plan: GenerationPlan, model_hash: str, device: str, dtype: str) -> str:
    """Identifies what produced a shard: the plan plus the model weights and numeric setup. A shard is reused only
    when its commit carries the same key."""
    material = {"plan_key": plan.plan_key, "model_hash": model_hash, "device_type": device.split(":")[0],
                "dtype": dtype}
    return sha256_bytes(canonical_json(material).encode("utf-8"))


def run_generation(plan: GenerationPlan, *, shard_indices: Sequence[int] | None = None, merge: bool = True,
                   progress: bool = True, pipe: Any = None, model_hash: str | None = None,
                   on_shard_written: Callable[[int], None] | None = None) -> GenerationSummary:
    """Generate the shards `shard_indices` (default: all) that are not complete yet; merge when asked and possible.

    `pipe` lets a caller (benchmark, tests) pass an already loaded pipeline, and `model_hash` its
    `base_model_fingerprint` when already known; otherwise the plan's model is loaded and fingerprinted.
    """
    from livo.presets import base_model_fingerprint

    started = time.perf_counter()
    indices = list(range(plan.shard_count)) if shard_indices is None else list(shard_indices)
    for index in indices:
        if not 0 <= index < plan.shard_count:
            raise ConfigError(f"shard index {index} is outside 0..{plan.shard_count - 1}")
    device = resolve_device(plan.config.device) if pipe is None else str(pipe.device)
    if pipe is None:
        pipe = load_generation_pipeline(plan.settings, device, seed=plan.config.seed)
    if model_hash is None:  # as training computes it: of the uncast weights, whatever dtype generation runs in
        model_hash = base_model_fingerprint(pipe, plan.settings["model"], seed=plan.config.seed)
    dtype_name = str(pipe.unet.dtype).replace("torch.", "")
    key = generation_key(plan, model_hash, device, dtype_name)
    metadata = {
        "name": plan.config.name,
        "dataset_id": plan.dataset_id,
        "principle_set_hash": plan.principle_set.hash,
        "principles_file": plan.settings["principles_file"],
        "config": plan.config.model_dump(mode="json"),
        "settings": {**plan.settings, "device_type": device.split(":")[0], "dtype": dtype_name},
        "seed": plan.config.seed,
        "generator_model_hash": model_hash,
        "judge_ids": plan.judge_ids,
        "scene_count": len(plan.scenes),
    }
    if plan.labels is not None:
        metadata["labels"] = plan.labels
    summary = GenerationSummary(location=plan.location.uri, shard_count=plan.shard_count)
    worker = _ShardWorker(plan, pipe, progress=progress)
    try:
        for index in indices:
            if shard_is_complete(plan.location, index, plan.shard_count, key):
                summary.shards_skipped.append(index)
                log_event(logger, "shard complete, skipped", shard=shard_dirname(index, plan.shard_count))
                continue
            rows, stats = worker.run(index)
            write_started = time.perf_counter()
            write_shard(plan.location, rows, shard_index=index, shard_count=plan.shard_count, generation_key=key,
                        stats=stats, metadata=metadata)
            summary.write_seconds += time.perf_counter() - write_started
            summary.shards_generated.append(index)
            summary.rows += len(rows)  # the manifest's total replaces this once every shard is committed
            if on_shard_written is not None:
                on_shard_written(index)
    finally:
        worker.close()
    summary.images_generated = worker.images_generated
    summary.generation_seconds = worker.generation_seconds
    summary.judge_seconds = worker.judge_seconds
    summary.judge_wait_seconds = worker.judge_wait_seconds
    summary.precompute_seconds = worker.precompute_seconds
    summary.encode_wait_seconds = worker.encode_wait_seconds
    if merge and _all_shards_committed(plan.location, plan.shard_count):
        summary.manifest = merge_generated_dataset(plan.location, plan.shard_count)
        summary.rows = summary.manifest["num_rows"]
        summary.counts = summary.manifest["counts"]["by_principle"]
        summary.stats = summary.manifest["stats"]
    summary.wall_seconds = time.perf_counter() - started
    log_event(logger, "generation finished", **{k: v for k, v in summary.as_dict().items() if k != "counts"})
    return summary


def _all_shards_committed(location: DatasetLocation, shard_count: int) -> bool:
    return all(location.exists(f"{shard_dirname(i, shard_count)}/shard.json") for i in range(shard_count))


def merge_generated_dataset(location: DatasetLocation | str | Path, shard_count: int, *, store: Any = None
                            ) -> dict[str, Any]:
    """Write the manifest of a generated dataset from its shard commits (no model needed: the KFP merge step).

    Every shard must be committed, by the same generation (same key and metadata), with an intact data file.
    """
    location = open_location(location, store=store)
    first = read_shard_commit(location, 0, shard_count)
    if first is None:
        raise DataError(f"{location.uri}: {shard_dirname(0, shard_count)} is not committed; generate it first")
    metadata = first.get("metadata") or {}
    for index in range(1, shard_count):
        commit = read_shard_commit(location, index, shard_count)
        if commit is not None and commit.get("metadata") != metadata:
            raise DataError(f"{location.uri}: {shard_dirname(index, shard_count)} was generated with different "
                            "settings than shard 0; regenerate it with the same config")
    return merge_shards(
        location, shard_count=shard_count, name=metadata.get("name", "preference"),
        dataset_id=metadata.get("dataset_id", ""), principle_set_hash=metadata.get("principle_set_hash", ""),
        generation_key=first["generation_key"], config={"generate": metadata.get("config"),
                                                        "settings": metadata.get("settings"),
                                                        "principles_file": metadata.get("principles_file"),
                                                        **({"labels": metadata["labels"]} if "labels" in metadata
                                                           else {})},
        seed=metadata.get("seed"), generator_model_hash=metadata.get("generator_model_hash"),
        judge_ids=metadata.get("judge_ids"), source="generated",
    )


@dataclass
class _Phase:
    """One generation phase of a shard, per scene index: PIL images, their PNG encodings (futures), judge outputs."""

    def subject_ok_of(self, index: int) -> list[bool] | None:
        return None if self.subject_ok is None else self.subject_ok[index]


    images: dict[int, list[Any]] = field(default_factory=dict)
    png: dict[int, list[Any]] = field(default_factory=dict)
    judged: dict[int, Any] = field(default_factory=dict)
    subject_ok: dict[int, list[bool]] | None = None  # per scene index, when a subject judge is configured


class _ShardWorker:
    """Generates one shard's rows: phase 1 violating candidates, phase 2 aligned candidates, judging, pairing.

    The GPU (or CPU) generates batch k+1 while two helper threads judge batch k (one thread, so a judge is never
    called concurrently with itself) and encode its images to PNG: on a GPU the CPU-side work then costs almost no
    wall time. Results do not depend on this overlap: batches, judge calls and encodings are the same as sequential.
    """

    def __init__(self, plan: GenerationPlan, pipe: Any, *, progress: bool):
        from concurrent.futures import ThreadPoolExecutor

        from livo.progress import progress_bar

        self.plan = plan
        self.pipe = pipe
        self.config = plan.config
        self.settings = plan.settings
        self.images_generated = 0
        self.generation_seconds = 0.0
        self.judge_seconds = 0.0
        self.judge_wait_seconds = 0.0
        self.precompute_seconds = 0.0
        self.encode_wait_seconds = 0.0
        self.judge_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="livo-judge")
        self.encode_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="livo-png")
        # The total grows by each shard's upper bound (2 × candidates × scenes) when the shard starts, and shrinks by
        # the aligned candidates of scenes the judges dropped.
        self.bar = progress_bar(total=0, unit="img", desc="generate", disable=not progress, dynamic_ncols=True)

    def close(self) -> None:
        self.bar.close()
        self.judge_pool.shutdown(wait=True)
        self.encode_pool.shutdown(wait=True)

    def run(self, shard_index: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
        config = self.config
        outcomes = {index: SceneOutcome(scene=scene) for index, scene in self.plan.shard_scenes(shard_index)}
        self.bar.total += 2 * config.candidates_per_scene * len(outcomes)
        self.bar.set_postfix_str(shard_dirname(shard_index, self.plan.shard_count))
        for index, outcome in outcomes.items():
            outcome.violating_requests = recipes.violating_requests(outcome.scene, index,
                                                                    config.candidates_per_scene, config.seed)
        violating = self.generate_and_judge([r for o in outcomes.values() for r in o.violating_requests], outcomes)
        for index, output in violating.judged.items():
            recipes.judge_violating(outcomes[index], output, config.judging, violating.subject_ok_of(index))

        for index, outcome in outcomes.items():
            outcome.aligned_requests = recipes.aligned_requests(outcome, index, config.candidates_per_scene,
                                                                config.seed, matched=config.pairing == "matched",
                                                                contrast=config.subject_contrast)
            # the scene's aligned candidates that will never be generated
            self.bar.total -= config.candidates_per_scene - len(outcome.aligned_requests)
        self.bar.refresh()
        aligned = self.generate_and_judge([r for o in outcomes.values() for r in o.aligned_requests], outcomes)
        for index, output in aligned.judged.items():
            recipes.judge_aligned(outcomes[index], output, config.judging, aligned.subject_ok_of(index))

        rows: list[dict[str, Any]] = []
        encoded: list[tuple[Any, Any]] = []
        stats: Counter[str] = Counter(scenes=len(outcomes))
        for index, outcome in outcomes.items():
            stats["violating_candidates"] += len(outcome.violating_requests)
            stats["violating_kept"] += len(outcome.kept_violating)
            stats["aligned_candidates"] += len(outcome.aligned_requests)
            stats["aligned_kept"] += len(outcome.kept_aligned)
            if outcome.kept_contrast:
                stats["contrast_kept"] += len(outcome.kept_contrast)
            if outcome.skipped:
                stats[f"scenes_skipped_{outcome.skipped.replace(' ', '_')}"] += 1
            scene = outcome.scene
            for pair in recipes.select_pairs(outcome, self.plan.judge_ids, config.max_pairs_per_scene):
                # a subject-contrast image was generated in the aligned phase
                violating_phase = aligned if pair.violating.role == recipes.CONTRAST else violating
                rows.append({
                    "prompt": scene.prompt,
                    "principle_id": scene.principle_id,
                    "principle_text": scene.principle_text,
                    "scene": scene.scene,
                    "aligned_image": aligned.images[index][pair.aligned.index],
                    "violating_image": violating_phase.images[index][pair.violating.index],
                    "aligned_prompt": pair.aligned.prompt,
                    "violating_prompt": pair.violating.prompt,
                    "aligned_negative_prompt": pair.aligned.negative_prompt,
                    "aligned_seed": pair.aligned.seed,
                    "violating_seed": pair.violating.seed,
                    "judge_scores": pair.judge_scores,
                })
                encoded.append((aligned.png[index][pair.aligned.index],
                                violating_phase.png[index][pair.violating.index]))
        stats["pairs"] = len(rows)
        started = time.perf_counter()
        if rows and (config.precompute_latents or config.precompute_prompt_embeds):
            self._precompute(rows)
        self.precompute_seconds += time.perf_counter() - started
        started = time.perf_counter()
        for row, (aligned_png, violating_png) in zip(rows, encoded, strict=True):
            row["aligned_image"], row["violating_image"] = aligned_png.result(), violating_png.result()
        self.encode_wait_seconds += time.perf_counter() - started
        return rows, dict(sorted(stats.items()))

    def generate_and_judge(self, requests: list[ImageRequest], outcomes: dict[int, SceneOutcome]) -> _Phase:
        """Images for `requests`, `batch_size` per pipeline call across scenes; each batch is judged and PNG-encoded
        in the background while the next one is generated. Returned grouped by scene index, in request order."""
        import numpy as np
        import torch

        phase = _Phase()
        judge_futures = []
        batch_size = self.settings["batch_size"]
        for start in range(0, len(requests), batch_size):
            chunk = requests[start:start + batch_size]
            started = time.perf_counter()
            output = self.pipe(
                prompt=[r.prompt for r in chunk],
                negative_prompt=[r.negative_prompt for r in chunk],
                generator=[torch.Generator("cpu").manual_seed(r.seed) for r in chunk],
                num_inference_steps=self.settings["num_inference_steps"],
                guidance_scale=self.settings["guidance_scale"],
                height=self.settings["resolution"],
                width=self.settings["resolution"],
                output_type="pil",
            )
            self.generation_seconds += time.perf_counter() - started
            for request, image in zip(chunk, output.images, strict=True):
                phase.images.setdefault(request.scene_index, []).append(image)
                phase.png.setdefault(request.scene_index, []).append(self.encode_pool.submit(encode_image, image))
            judge_futures.append((chunk, self.judge_pool.submit(self._judge_batch, chunk, output.images, outcomes)))
            self.bar.update(len(chunk))
        self.images_generated += len(requests)
        parts: dict[int, list[Any]] = {}
        subject_parts: dict[int, list[bool]] = {}
        started = time.perf_counter()
        for _chunk, future in judge_futures:
            future.result()
        self.judge_wait_seconds += time.perf_counter() - started
        for chunk, future in judge_futures:
            for request, (row, subject_ok) in zip(chunk, future.result(), strict=True):
                parts.setdefault(request.scene_index, []).append(row)
                subject_parts.setdefault(request.scene_index, []).append(subject_ok)
        phase.judged = {index: np.stack(rows) for index, rows in parts.items()}
        if "subject" in self.plan.judges:
            phase.subject_ok = subject_parts
        return phase

    def _judge_batch(self, requests: list[ImageRequest], images: list[Any],
                     outcomes: dict[int, SceneOutcome]) -> list[Any]:
        """Judge outputs for one generated batch, one judge call per principle in it. Attribute judges get the
        scene's plain prompt with every image, aligned ones included: the question is what the image shows for that
        scene (a CLIP-style judge reads "<prompt>, <class>"), and the augmented prompt would leak the answer."""
        import numpy as np

        started = time.perf_counter()
        out: list[Any] = [None] * len(requests)
        by_principle: dict[str, list[int]] = {}
        for position, request in enumerate(requests):
            by_principle.setdefault(outcomes[request.scene_index].scene.principle_id, []).append(position)
        for positions in by_principle.values():
            scene = outcomes[requests[positions[0]].scene_index].scene
            batch = [images[p] for p in positions]
            if scene.category == "bias":
                prompts = [outcomes[requests[p].scene_index].scene.prompt for p in positions]
                result = np.asarray(self.plan.judges["attribute"].classify(batch, prompts, list(scene.classes)))
            else:
                result = np.asarray(self.plan.judges["concept"].score(batch, scene.concept)).reshape(-1)
            for p, value in zip(positions, result, strict=True):
                out[p] = value
        subject_ok = [True] * len(requests)
        if "subject" in self.plan.judges:  # scenes without a subject are not checked
            checked = [p for p, r in enumerate(requests) if outcomes[r.scene_index].scene.subject]
            if checked:
                classes = list(self.plan.subject_classes)
                probs = np.asarray(self.plan.judges["subject"].classify(
                    [images[p] for p in checked], [outcomes[requests[p].scene_index].scene.prompt for p in checked],
                    classes))
                for p, top in zip(checked, probs.argmax(axis=1), strict=True):
                    subject_ok[p] = classes[int(top)] == outcomes[requests[p].scene_index].scene.subject
        self.judge_seconds += time.perf_counter() - started
        return list(zip(out, subject_ok, strict=True))

    def _precompute(self, rows: list[dict[str, Any]]) -> None:
        """The VAE posterior of both images (unscaled mean ‖ log-variance, sampled by training at every step, as
        `livo.training.trainer.encode_latents` samples it from the pixels), that of their mirror images when asked,
        and the frozen text encoder's prompt embeddings."""
        import numpy as np
        import torch

        from livo.modeling import encode_prompts, is_sdxl

        pipe = self.pipe
        batch_size = self.settings["batch_size"]
        sides = [("", False)] + ([("_flipped", True)] if self.config.precompute_flipped_latents else [])
        with torch.no_grad(), vae_upcast_for_sdxl(pipe):
            if self.config.precompute_latents:
                for side in ("aligned", "violating"):
                    for start in range(0, len(rows), batch_size):
                        chunk = rows[start:start + batch_size]
                        pixels = np.stack([np.asarray(r[f"{side}_image"].convert("RGB"), dtype=np.float32)
                                           for r in chunk]) / 127.5 - 1.0
                        tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(pipe.vae.device, pipe.vae.dtype)
                        for suffix, mirrored in sides:
                            posterior = pipe.vae.encode(tensor.flip(-1) if mirrored else tensor).latent_dist
                            for row, parameters in zip(chunk, posterior.parameters, strict=True):
                                row[f"{side}_latent_dist{suffix}"] = parameters.float().cpu().numpy().astype(
                                    np.float16)
            # an SDXL base model's conditioning is two encoders' tokens and a pooled output: training encodes it
            if self.config.precompute_prompt_embeds and not is_sdxl(pipe):
                for start in range(0, len(rows), batch_size):
                    chunk = rows[start:start + batch_size]
                    embeds = encode_prompts(pipe.text_encoder, pipe.tokenizer, [r["prompt"] for r in chunk])
                    for row, embed in zip(chunk, embeds, strict=True):
                        row["prompt_embeds"] = embed.float().cpu().numpy().astype(np.float16)


def generate_dataset(config: GenerateConfig, *, out: str | Path | None = None, store: Any = None,
                     progress: bool = True, pipe: Any = None,
                     on_shard_written: Callable[[int], None] | None = None) -> GenerationSummary:
    """Plan, generate every missing shard, and write the manifest: what `livo generate` does."""
    plan = prepare_generation(config, out=out, store=store)
    return run_generation(plan, progress=progress, pipe=pipe, on_shard_written=on_shard_written)
