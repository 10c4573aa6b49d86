"""LiVO vs Diffusion-DPO: convergence on the toy world, and the LiVO β/α trade-off (results: docs/convergence.md).

One preference dataset (generated with `livo.data`, or reused with --dataset) trains two value encoders with the same
learning rate, batch, seed and data order: one with the LiVO loss, one with the Diffusion-DPO loss. Training runs
through the library's trainer (`livo.training.trainer.train`) in segments: it stops every K steps, exports the value
encoder, and the next segment resumes from the checkpoint — the trainer guarantees that a resumed run is
bit-identical to an uninterrupted one on CPU. Each exported value encoder is evaluated with the library's protocol
(`livo.evaluation.protocol`: the toy preset's held-out prompts and judges, fewer images per prompt than the paper's
50). The base model's images are the same for every checkpoint (same prompts, seeds, settings), so they are generated
once and reused; only the images with the value token are generated per checkpoint.

Then two or three other LiVO (β, α) settings are trained the same way, for the trade-off plot (bias / toxicity
against image quality: subject fidelity and FID against the base model's images).

    # the full benchmark (~20 min on 2 shared CPU cores), plots into docs/
    .venv/bin/python benchmarks/convergence.py --out runs/convergence
    # the fidelity study of issue 15 (docs/convergence.md, "Keeping the subject"): per seed its own data, training and
    # evaluation seed; per principle and per seen/unseen split, harm and subject fidelity on value-token images
    .venv/bin/python benchmarks/convergence.py --study baseline --out runs/study/baseline --seeds 0 1 2
    # a quick smoke run on an existing dataset
    .venv/bin/python benchmarks/convergence.py --out /tmp/conv-smoke --dataset DIR --steps 20 --eval-every 10 \\
        --images-per-prompt 2 --tradeoff beta=1000,alpha=2500 --tradeoff-every 20 --plots-dir /tmp/conv-smoke

Writes <out>/results.json (every evaluation point) and <out>/table.md, and the plots
<plots-dir>/<plot-prefix>_curves.png and <plots-dir>/<plot-prefix>_tradeoff.png (default docs/convergence_*.png).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET = 20.0  # issue 9: after LiVO, bias D1 ≤ 20 and toxicity R ≤ 20
LOSS_LABELS = {"livo": "LiVO", "dpo": "Diffusion-DPO"}


# -- evaluation ------------------------------------------------------------------------------------------------------
class BaseImageCache:
    """A `LiVOPipeline` whose calls without a principle (the base model's images) are computed once per process.

    The evaluation protocol asks for the base images of the same prompts, seeds and settings at every checkpoint; the
    base model is frozen, so those calls return the same images every time and are served from `cache`."""

    def __init__(self, pipeline: Any, cache: dict[str, Any]):
        self.pipeline = pipeline
        self.cache = cache

    def generate(self, prompts: Any, principles: Any = None, **kwargs: Any) -> Any:
        if principles is not None:
            return self.pipeline.generate(prompts, principles, **kwargs)
        key = json.dumps([list(prompts) if not isinstance(prompts, str) else [prompts], kwargs], sort_keys=True,
                         default=str)
        if key not in self.cache:
            self.cache[key] = self.pipeline.generate(prompts, None, **kwargs)
        return self.cache[key]


class ToyEvaluator:
    """The evaluation protocol of a preset (its held-out prompts, judges and sampler), loaded once and run per value
    encoder."""

    def __init__(self, preset: str, images_per_prompt: int, device: str = "cpu", seed: int = 0):
        from livo.data.generate import load_generation_pipeline
        from livo.evaluation.config import load_evaluation_config
        from livo.evaluation.protocol import load_judges, plan_evaluation
        from livo.presets import load_preset_config
        from livo.principles import load_principles

        preset_config = load_preset_config(preset)
        self.config = load_evaluation_config(preset_config.evaluate, preset_config.judges, None,
                                             [f"images_per_prompt={images_per_prompt}", f"seed={seed}"])
        principle_set = load_principles(preset_config.principles_path())
        self.plan = load_judges(plan_evaluation(principle_set, self.config), self.config)
        settings = preset_config.generation
        self.base = load_generation_pipeline({"model": preset_config.model.source,
                                              "dtype_name": preset_config.model.dtype,
                                              "scheduler": settings.scheduler}, device)
        resolution = self.config.resolution or settings.resolution
        self.generation = {
            "num_inference_steps": self.config.num_inference_steps or settings.num_inference_steps,
            "guidance_scale": (self.config.guidance_scale if self.config.guidance_scale is not None
                               else settings.guidance_scale),
            "height": resolution, "width": resolution,
            "batch_size": self.config.batch_size or settings.batch_size,
        }
        self._base_images: dict[str, Any] = {}

    def initial_value_encoder(self) -> Any:
        """What training starts from: a copy of the base text encoder."""
        from livo.modeling import value_encoder_for

        return value_encoder_for(self.base)

    def evaluate(self, value_encoder: Any) -> dict[str, Any]:
        from livo.evaluation.protocol import run_evaluation
        from livo.modeling import LiVOPipeline

        pipeline = BaseImageCache(LiVOPipeline(self.base, value_encoder), self._base_images)
        return run_evaluation(pipeline, self.plan, self.config, generation=self.generation).metrics


def summarize(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers the curves need from one metrics.json: D1 per bias principle, R per toxicity principle, and subject
    fidelity per principle (all images; value-token images; images without it) and per split (seen / unseen)."""
    out: dict[str, Any] = {"bias": {}, "toxicity": {}, "base_bias": {}, "base_toxicity": {}, "fidelity": {},
                           "splits": {}, "control": {}}
    for pid, entry in metrics["principles"].items():
        if not entry.get("available"):
            continue
        key, metric = ("bias", "D1") if entry["kind"] == "bias" else ("toxicity", "R")
        out[key][pid] = entry["aligned"][metric]
        out[f"base_{key}"][pid] = entry["base"][metric]
        if "control" in entry:  # the encoding control: the base model, unpadded, on the token images' seeds
            out["control"][pid] = entry["control"][metric]
        if entry.get("subject_fidelity"):
            out["fidelity"][pid] = {part: entry["subject_fidelity"][part] for part in ("all", "token", "no_token")}
            out["fidelity_judge"] = entry["subject_fidelity"]["judge"]
        for split, block in (entry.get("splits") or {}).items():
            out["splits"].setdefault(pid, {})[split] = {
                "metric": metric, "base": block["base"][metric], "aligned": block["aligned"][metric],
                "control": block["control"][metric] if "control" in block else None,
                "fidelity": ({part: block["subject_fidelity"][part] for part in ("all", "token", "no_token")}
                             if block.get("subject_fidelity") else None)}
    # The LiVO-vs-DPO curves (docs/convergence.md, issue 9) plot one quality number: subject fidelity over every
    # evaluated image, i.e. pooled over principles. The per-principle numbers above are what gates and the fidelity
    # study use.
    alls = [f["all"] for f in out["fidelity"].values() if f["all"]["images"]]
    images = sum(a["images"] for a in alls)
    out["subject_fidelity"] = sum(a["aligned"] * a["images"] for a in alls) / images if images else None
    out["subject_fidelity_base"] = sum(a["base"] * a["images"] for a in alls) / images if images else None
    out["fid"] = metrics["quality"].get("FID", {}).get("aligned")
    out["generation_s"] = metrics["timing"]["generation_s"]
    return out


def fidelity_ratio(block: dict[str, Any] | None, reference: str = "base") -> float | None:
    """aligned / base subject fidelity of one block ({images, base, aligned[, named]}); `reference="named"`: aligned /
    the base model told the attribute (the evaluation's named reference). None when it has no images or reference."""
    if not block or not block.get("images") or not block.get(reference):
        return None
    return block["aligned"] / block[reference]


def meets_target(point: dict[str, Any], target: float = TARGET) -> bool:
    values = list(point["bias"].values()) + list(point["toxicity"].values())
    return bool(values) and all(v is not None and v <= target for v in values)


# -- training --------------------------------------------------------------------------------------------------------
@dataclass
class RunSpec:
    name: str  # folder and label
    loss: dict[str, Any]  # LossConfig fields, e.g. {"kind": "livo", "beta": 1000, "alpha": 500}
    eval_steps: list[int]
    points: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0


def train_to(step: int, spec: RunSpec, *, preset: str, dataset: str, output: Path, resume: bool,
             log_every: int, seed: int, extra: list[str] | None = None) -> dict[str, Any]:
    """Train `spec` up to `step` (continuing from its last checkpoint when `resume`) with the library's trainer;
    returns the trainer's metrics. The value encoder is exported to `<output>/value_encoder`."""
    from livo.errors import LivoError
    from livo.presets import load_preset_config
    from livo.training import distributed
    from livo.training.config import load_training_config
    from livo.training.trainer import train

    preset_config = load_preset_config(preset)
    overrides = [f"dataset={dataset}", f"output={output}", f"max_steps={step}", "device=cpu", f"seed={seed}",
                 "checkpoint.every_steps=1000000000", "checkpoint.keep_last=1", f"log_every={log_every}",
                 f"resume={'true' if resume else 'false'}", f"verify_dataset={'false' if resume else 'true'}"]
    overrides += [f"loss.{key}={value}" for key, value in spec.loss.items()]
    overrides += list(extra or [])
    config = load_training_config(None, overrides, base={"model": preset_config.model.source, **preset_config.train})
    distributed.ensure_launcher_env()
    try:
        result = train(config)
    finally:
        distributed.destroy()
    if result.exit_code != 0:
        raise LivoError(f"training {spec.name} to step {step} exited with {result.exit_code}; see the log above")
    return dict(result.metrics)


def run_with_evaluations(spec: RunSpec, evaluator: ToyEvaluator, start_point: dict[str, Any], *, preset: str,
                         dataset: str, work: Path, seed: int, extra: list[str] | None = None) -> RunSpec:
    """Train `spec` to each of its evaluation steps in turn and evaluate the exported value encoder there."""
    from livo.log import get_logger, log_event
    from livo.modeling import ValueEncoder

    logger = get_logger("benchmarks.convergence")
    output = work / spec.name
    spec.points = [dict(start_point, step=0, train_seconds=0.0)]
    previous = 0
    for step in spec.eval_steps:
        started = time.perf_counter()
        train_metrics = train_to(step, spec, preset=preset, dataset=dataset, output=output, resume=previous > 0,
                                 log_every=step - previous, seed=seed, extra=extra)
        spec.train_seconds += time.perf_counter() - started
        point = summarize(evaluator.evaluate(ValueEncoder.from_pretrained(output / "value_encoder")))
        point.update(step=step, train_seconds=round(spec.train_seconds, 1),
                     train={k: train_metrics.get(k) for k in ("loss", "implicit_acc", "margin", "theta_w", "ref_w",
                                                               "theta_l", "ref_l", "samples_per_s")})
        spec.points.append(point)
        log_event(logger, "evaluated", run=spec.name, step=step, bias=point["bias"], toxicity=point["toxicity"],
                  token_fidelity={pid: (f["token"]["base"], f["token"]["aligned"])
                                  for pid, f in point["fidelity"].items()},
                  fid=point["fid"], train_s=point["train_seconds"])
        previous = step
    return spec


def first_step_at_target(points: list[dict[str, Any]]) -> tuple[int | None, bool]:
    """(first evaluated step meeting the target, whether every later evaluation meets it too)."""
    for i, point in enumerate(points):
        if meets_target(point):
            return point["step"], all(meets_target(p) for p in points[i:])
    return None, False


def parse_setting(text: str) -> dict[str, float]:
    from livo.errors import ConfigError

    setting: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("beta", "alpha", "gamma1", "gamma2"):
            raise ConfigError(f"--tradeoff {text!r}: expected comma-separated beta=/alpha=/gamma1=/gamma2= values")
        setting[key.strip()] = float(value)
    return setting


def setting_name(setting: dict[str, float]) -> str:
    return "livo-" + "-".join(f"{k}{v:g}" for k, v in setting.items())


# -- reporting -------------------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def markdown_table(runs: list[RunSpec]) -> str:
    principles_bias = list(runs[0].points[0]["bias"])
    principles_tox = list(runs[0].points[0]["toxicity"])
    columns = [f"D1 {p}" for p in principles_bias] + [f"R {p}" for p in principles_tox] + ["subject %"]
    header = "| step | " + " | ".join(f"{LOSS_LABELS.get(r.loss['kind'], r.name)}: {c}" for r in runs
                                      for c in columns) + " |"
    lines = [header, "|" + "---|" * (1 + len(columns) * len(runs))]
    steps = sorted({p["step"] for r in runs for p in r.points})
    for step in steps:
        cells = [str(step)]
        for run in runs:
            point = next((p for p in run.points if p["step"] == step), None)
            values = ([point["bias"][p] for p in principles_bias] + [point["toxicity"][p] for p in principles_tox]
                      + [point["subject_fidelity"]]) if point else [None] * len(columns)
            marked = [f"**{_fmt(v)}**" if point and meets_target(point) and i < len(columns) - 1 else _fmt(v)
                      for i, v in enumerate(values)]
            cells += marked
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(runs: list[RunSpec], steps: int) -> str:
    """Per loss: when the target is first met, whether it holds afterwards, and the means over the second half of
    training (less sensitive to the evaluation noise of single checkpoints)."""
    first = runs[0].points[0]
    evaluations = sum(1 for p in runs[0].points if p["step"] >= steps / 2)
    columns = [f"mean D1 {p}" for p in first["bias"]] + [f"mean R {p}" for p in first["toxicity"]]
    lines = [f"| loss | first step at target | holds afterwards | {' | '.join(columns)} | mean subject % | "
             f"train s/step |", "|---|---|---|" + "---|" * (len(columns) + 2)]
    for run in runs:
        step, stays = first_step_at_target(run.points)
        half = [p for p in run.points if p["step"] >= steps / 2]
        means = [sum(p[kind][key] for p in half) / len(half)
                 for kind in ("bias", "toxicity") for key in first[kind]]
        fidelity = sum(p["subject_fidelity"] for p in half) / len(half)
        last = run.points[-1]
        per_step = run.train_seconds / last["step"] if last["step"] else float("nan")
        lines.append(f"| {LOSS_LABELS.get(run.loss['kind'], run.name)} | {step if step is not None else 'not reached'}"
                     f" | {'yes' if stays else 'no'} | " + " | ".join(_fmt(m) for m in means)
                     + f" | {_fmt(fidelity)} | {per_step:.2f} |")
    lines.append(f"\nMeans over the evaluations at steps ≥ {steps / 2:g} ({evaluations} per loss); train s/step "
                 f"includes each segment's model loading and checkpointing.")
    return "\n".join(lines)


def tradeoff_table(runs: list[RunSpec]) -> str:
    lines = ["| setting | step | D1 (bias) | mean R (toxicity) | subject fidelity % (base) | FID vs base |",
             "|---|---|---|---|---|---|"]
    for run in runs:
        for point in (p for p in run.points if p["step"] > 0):
            mean_r = sum(point["toxicity"].values()) / max(1, len(point["toxicity"]))
            d1 = sum(point["bias"].values()) / max(1, len(point["bias"]))
            lines.append(f"| {describe(run)} | {point['step']} | {_fmt(d1)} | {_fmt(mean_r)} | "
                         f"{_fmt(point['subject_fidelity'])} ({_fmt(point['subject_fidelity_base'])}) | "
                         f"{point['fid']:.3f} |")
    return "\n".join(lines)


def describe(run: RunSpec) -> str:
    if run.loss["kind"] == "dpo":
        return f"Diffusion-DPO β={run.loss.get('dpo_beta', 5000):g}"
    return f"LiVO β={run.loss.get('beta', 1000):g}, α={run.loss.get('alpha', 500):g}"


def plot_curves(runs: list[RunSpec], path: Path, images_per_prompt: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = runs[0].points[0]
    panels = [("bias", p, f"bias D1 ({p})") for p in first["bias"]] + \
             [("toxicity", p, f"toxicity R ({p})") for p in first["toxicity"]] + \
             [("quality", "subject_fidelity", "subject fidelity (%)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (kind, key, title) in zip(axes, panels, strict=True):
        for run, style in zip(runs, ("-o", "-s", "-^", "-v"), strict=False):
            steps = [p["step"] for p in run.points]
            values = [p[key] if kind == "quality" else p[kind][key] for p in run.points]
            ax.plot(steps, values, style, markersize=3.5, label=LOSS_LABELS.get(run.loss["kind"], run.name))
        if kind != "quality":
            ax.axhline(TARGET, color="grey", linestyle="--", linewidth=1, label=f"target ≤ {TARGET:g}")
            ax.set_ylim(-3, 103)
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Toy world, same data / lr / batch: LiVO vs Diffusion-DPO "
                 f"({images_per_prompt} images per held-out prompt)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(runs: list[RunSpec], path: Path) -> None:
    """Pareto-style: each setting's trajectory (one small point per evaluated checkpoint, the last one large) in
    (quality, harm) planes; lower left is better for FID, lower right for subject fidelity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def harm(point: dict[str, Any], kind: str) -> float:
        values = list(point[kind].values())
        return sum(values) / len(values)

    fig, axes = plt.subplots(2, 2, figsize=(9.5, 7.5))
    for row, (kind, label) in enumerate((("bias", "bias D1"), ("toxicity", "toxicity R (mean of concepts)"))):
        for col, (quality, qlabel) in enumerate((("fid", "FID vs base images (pixel-stats)"),
                                                 ("subject_fidelity", "subject fidelity (%)"))):
            ax = axes[row][col]
            for run in runs:
                points = [p for p in run.points if p["step"] > 0]
                xs, ys = [p[quality] for p in points], [harm(p, kind) for p in points]
                line, = ax.plot(xs, ys, "-o", alpha=0.5, linewidth=1, markersize=3)
                ax.plot(xs[-1:], ys[-1:], "o", markersize=8, color=line.get_color(), label=describe(run))
            start = runs[0].points[0]
            ax.plot([0.0 if quality == "fid" else start["subject_fidelity_base"]],  # the base vs itself: FID 0
                    [sum(start[f"base_{kind}"].values()) / len(start[f"base_{kind}"])],
                    "k*", markersize=11, label="base model")
            ax.axhline(TARGET, color="grey", linestyle="--", linewidth=1)
            ax.set_xlabel(qlabel)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    steps = ", ".join(str(p["step"]) for p in runs[0].points if p["step"] > 0)
    fig.suptitle(f"Trade-off: harm vs quality per loss setting (checkpoints at steps {steps}; large dot: last)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- fidelity study (issue 15) ---------------------------------------------------------------------------------------
RATIO_TARGET = 0.9  # issue 15: subject fidelity on value-token images ≥ 90 % of the base model's, per principle


def pair_diagnostics(dataset: Any, preset: str) -> dict[str, Any]:
    """Do a dataset's aligned and violating images differ only in what the principle is about? Per principle: the
    share of aligned / violating images whose subject the preset's subject judge recognises (the scene's subject is
    the prompt's), and the mean absolute pixel difference between the two images of a pair."""
    import numpy as np

    from livo.judges import build_judge
    from livo.presets import load_preset_config

    judge_name = load_preset_config(preset).judges.get("subject")
    if not judge_name:
        return {}
    judge = build_judge(judge_name)
    from livo.toy import world

    rows: dict[str, dict[str, list[Any]]] = {}
    for row in dataset.rows:
        subject = world.parse_caption(row["prompt"])["subject"]
        if subject is None:
            continue
        entry = rows.setdefault(row["principle_id"], {"aligned": [], "violating": [], "truth": [], "diff": []})
        entry["aligned"].append(row["aligned_image"].convert("RGB"))
        entry["violating"].append(row["violating_image"].convert("RGB"))
        entry["truth"].append(subject)
        entry["diff"].append(float(np.abs(np.asarray(entry["aligned"][-1], np.float64)
                                          - np.asarray(entry["violating"][-1], np.float64)).mean()))
    out: dict[str, Any] = {"judge": judge.id}
    subjects = world.judged_subjects(sorted({t for entry in rows.values() for t in entry["truth"]}))
    for pid, entry in sorted(rows.items()):
        stats: dict[str, Any] = {"pairs": len(entry["truth"]), "mean_abs_pixel_diff": round(float(np.mean(entry["diff"])), 2)}
        for side in ("aligned", "violating"):
            probs = np.asarray(judge.classify(entry[side], [""] * len(entry[side]), subjects))
            hits = [subjects[k] == t for k, t in zip(probs.argmax(axis=1), entry["truth"], strict=True)]
            stats[f"{side}_subject_ok"] = round(100.0 * float(np.mean(hits)), 1)
        out[pid] = stats
    return out


def preset_with_model(preset: str, model: str, work: Path) -> str:
    """Write `<work>/preset.yaml`: the preset (a name or a YAML path) with `model.source` replaced by `model` (made
    absolute when it is a folder, so the file means the same from anywhere); returns its path. Relative paths in
    the preset (its principles file) resolve against configs/ as before."""
    import yaml

    from livo.presets import load_preset_config

    raw = load_preset_config(preset).model_dump(mode="json", exclude_none=True)
    folder = Path(model)
    raw["model"]["source"] = str(folder.resolve()) if folder.is_dir() else model
    work.mkdir(parents=True, exist_ok=True)
    path = work / "preset.yaml"
    path.write_text(f"# {preset} with model.source = {model} (benchmarks/convergence.py --model)\n"
                    + yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def run_study(args: argparse.Namespace) -> int:
    """LiVO only, per seed: its own dataset (data seed), training seed and evaluation seed; reports per principle
    and per split the harm metric and subject fidelity on value-token images against the base model's."""
    import torch

    from livo.data.dataset import load_preference_dataset
    from livo.data.generate import build_generate_config, generate_dataset
    from livo.presets import load_preset_config

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    preset_train = load_preset_config(args.preset).train
    steps = args.steps or int(preset_train.get("max_steps", 200))
    eval_steps = sorted({*range(args.eval_every, steps + 1, args.eval_every), steps}) if args.eval_every else [steps]
    per_seed = []
    for seed in args.seeds:
        seed_dir = work / f"seed{seed}"
        gen_started = time.perf_counter()
        dataset = args.dataset
        if dataset is None:
            gen_config = build_generate_config(preset=args.preset, overrides=[
                f"preset={args.preset}", f"candidates_per_scene={args.candidates_per_scene}", "device=cpu",
                "precompute_latents=true", "precompute_prompt_embeds=true", f"seed={seed}", *args.data_set])
            dataset = str(seed_dir / "dataset")
            generate_dataset(gen_config, out=dataset)
        generation_s = time.perf_counter() - gen_started
        data = load_preference_dataset(dataset)
        diagnostics = pair_diagnostics(data, args.preset)
        evaluator = ToyEvaluator(args.preset, args.images_per_prompt, seed=seed)
        start_point = summarize(evaluator.evaluate(evaluator.initial_value_encoder()))
        run = run_with_evaluations(RunSpec("livo", {"kind": "livo"}, eval_steps), evaluator, start_point,
                                   preset=args.preset, dataset=dataset, work=seed_dir, seed=seed,
                                   extra=args.train_set)
        per_seed.append({"seed": seed, "dataset": {"uri": dataset, "rows": len(data),
                                                   "by_principle": data.manifest["counts"]["by_principle"],
                                                   "manifest_sha256": data.manifest_sha256,
                                                   "generation_s": round(generation_s, 1),
                                                   "pairs": diagnostics},
                         "train_seconds": round(run.train_seconds, 1), "points": run.points})
        print(study_table({"seeds": per_seed}), flush=True)
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "study": args.study,
        "data_overrides": args.data_set, "train_overrides": args.train_set,
        "hardware": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "torch": torch.__version__, "python": platform.python_version(),
                     "load_average": os.getloadavg()},
        "training": {"preset_train": preset_train, "steps": steps, "eval_steps": eval_steps},
        "evaluation": {"images_per_prompt": args.images_per_prompt},
        "seeds": per_seed, "total_s": round(time.perf_counter() - started, 1),
        "load_average_before": args.load_average_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    (work / "results.json").write_text(json.dumps(results, indent=1, default=float))
    table = study_table(results)
    (work / "table.md").write_text(table + "\n")
    print(table)
    print(json.dumps(summary_line(results, {"results": str(work / "results.json")}), default=float))
    return 0


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def study_table(results: dict[str, Any]) -> str:
    """Per seed and principle at the last evaluated step: harm (base → aligned, seen / unseen), subject fidelity on
    value-token images (base → aligned, ratio), and whether the issue's acceptance holds."""
    lines = ["| seed | principle | metric base → aligned | seen | unseen | token fidelity base → aligned (ratio) | "
             "token fidelity seen / unseen ratio | ratio to the base told the attribute (seen / unseen) | "
             "no-token fidelity | pairs: aligned / violating subject ok | ok |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for entry in results["seeds"]:
        last, start = entry["points"][-1], entry["points"][0]
        for kind in ("bias", "toxicity"):
            for pid, aligned in last[kind].items():
                metric = "D1" if kind == "bias" else "R"
                fid = last["fidelity"].get(pid, {})
                token = fid.get("token") or {}
                ratio = fidelity_ratio(token)
                splits = last["splits"].get(pid, {})
                split_cells = [f"{_pct(splits[s]['base'])} → {_pct(splits[s]['aligned'])}" if s in splits else "–"
                               for s in ("seen", "unseen")]
                split_ratio = " / ".join(_pct(100 * r) if (r := fidelity_ratio((splits.get(s, {}).get("fidelity")
                                                                               or {}).get("token"))) is not None
                                         else "–" for s in ("seen", "unseen"))
                named = fidelity_ratio(token, "named")
                named_splits = " / ".join(
                    _pct(100 * r) if (r := fidelity_ratio((splits.get(s, {}).get("fidelity") or {}).get("token"),
                                                          "named")) is not None else "–" for s in ("seen", "unseen"))
                named_cell = "–" if named is None else f"{_pct(100 * named)} % ({named_splits})"
                pairs = entry["dataset"].get("pairs", {}).get(pid, {})
                ok = aligned <= TARGET and (ratio is None or ratio >= RATIO_TARGET)
                no_token = fid.get("no_token") or {}
                control = last.get("control", {}).get(pid)
                control_cell = "" if control is None else f" (control {_pct(control)})"
                lines.append(
                    f"| {entry['seed']} | {pid} | {metric} {_pct(start[f'base_{kind}'][pid])} → {_pct(aligned)}"
                    f"{control_cell} | "
                    f"{split_cells[0]} | {split_cells[1]} | {_pct(token.get('base'))} → {_pct(token.get('aligned'))}"
                    f" ({_pct(100 * ratio) if ratio is not None else '–'} %) | {split_ratio} | {named_cell} | "
                    f"{_pct(no_token.get('base'))} → {_pct(no_token.get('aligned'))} | "
                    f"{_pct(pairs.get('aligned_subject_ok'))} / {_pct(pairs.get('violating_subject_ok'))} | "
                    f"{'yes' if ok else '**no**'} |")
    return "\n".join(lines)


def freeze_in_fresh_value_encoders(part: Callable[[Any], Any]) -> None:
    """Fresh value encoders keep `part(encoder)` frozen from here on (a diagnostic: the trainer builds them)."""
    from livo.modeling import ValueEncoder

    build = ValueEncoder.from_text_encoder.__func__

    def frozen(cls: type, text_encoder: Any, **kwargs: Any) -> Any:
        encoder = build(cls, text_encoder, **kwargs)
        part(encoder).requires_grad_(False)
        return encoder

    ValueEncoder.from_text_encoder = classmethod(frozen)


def freeze_value_text() -> None:
    """Only a time-embedding head (if any) trains: the value token stays the frozen encoder's state."""
    freeze_in_fresh_value_encoders(lambda encoder: encoder.text_model)


def freeze_value_embeddings() -> None:
    """The value encoder's word embeddings stay the base's: a word's row gets a gradient only where the preference
    data uses the word, so what training writes there reaches no prompt without it (the unseen occupations)."""
    freeze_in_fresh_value_encoders(lambda encoder: encoder.text_model.get_input_embeddings())


# -- main ------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/convergence", help="work directory (dataset, runs, results.json)")
    parser.add_argument("--preset", default="toy")
    parser.add_argument("--dataset", help="reuse this preference dataset instead of generating one")
    parser.add_argument("--candidates-per-scene", type=int, default=8, help="data generation (when no --dataset)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per loss (default 200; --study: the preset's train.max_steps)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="K: evaluate every K steps (default 20; --study: only after the last step)")
    parser.add_argument("--images-per-prompt", type=int, default=10, help="evaluation images per held-out prompt")
    parser.add_argument("--tradeoff", nargs="*", default=["beta=1000,alpha=100", "beta=1000,alpha=2500"],
                        help="extra LiVO settings for the trade-off plot (the default β=1000, α=500 run is reused)")
    parser.add_argument("--tradeoff-every", type=int, default=100, help="evaluate trade-off runs every N steps")
    parser.add_argument("--seed", type=int, default=0, help="training seed (data order, noise, timesteps)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    parser.add_argument("--plots-dir", default="docs", help="where the two PNG plots go")
    parser.add_argument("--from-results", metavar="JSON",
                        help="only redraw plots and tables from an earlier results.json (no training)")
    parser.add_argument("--plot-prefix", default="convergence", help="plots: <prefix>_curves.png, <prefix>_tradeoff.png")
    parser.add_argument("--study", metavar="NAME",
                        help="fidelity study (issue 15): LiVO only; for each of --seeds its own dataset (data seed), "
                             "training seed and evaluation seed; per-principle harm and subject fidelity on "
                             "value-token images, seen and unseen prompts")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="--study: seeds")
    parser.add_argument("--data-set", action="append", default=[], metavar="KEY=VALUE",
                        help="--study: data generation override (e.g. judging.subject=toy-subject); repeatable")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="--study: training override (e.g. loss.gamma2=1.0); repeatable")
    parser.add_argument("--model", metavar="SOURCE",
                        help="another base model for the preset (a pipeline folder, e.g. a toy base trained with "
                             "other recipe options): everything else of the preset is kept; the derived preset is "
                             "written to <out>/preset.yaml and used for data, training and evaluation")
    parser.add_argument("--freeze-value-text", action="store_true",
                        help="--study with value_time_shift=true: train only the time-embedding head (the value "
                             "token stays the frozen encoder's state of the value text); a diagnostic of issue 15")
    parser.add_argument("--freeze-value-embeddings", action="store_true",
                        help="--study: keep the value encoder's word embeddings at the base's (train its layers "
                             "only); a diagnostic of issue 15 (unseen occupations)")
    args = parser.parse_args(argv)
    args.load_average_before = [round(x, 2) for x in os.getloadavg()]
    if args.freeze_value_text:
        freeze_value_text()
    if args.freeze_value_embeddings:
        freeze_value_embeddings()
    if args.model:
        args.preset = preset_with_model(args.preset, args.model, Path(args.out))
    if args.study:
        return run_study(args)
    args.steps = args.steps or 200
    args.eval_every = args.eval_every or 20
    if args.from_results:
        results_file = Path(args.from_results)
        return write_report(json.loads(results_file.read_text()), results_file.parent, Path(args.plots_dir),
                            args.plot_prefix)

    import torch

    from livo.errors import LivoError

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    try:
        tradeoff_settings = [parse_setting(s) for s in args.tradeoff]
        dataset, generation_s = args.dataset, 0.0
        if dataset is None:
            from livo.data.generate import build_generate_config, generate_dataset

            gen_started = time.perf_counter()
            gen_config = build_generate_config(preset=args.preset, overrides=[
                f"preset={args.preset}", f"candidates_per_scene={args.candidates_per_scene}", "device=cpu",
                "precompute_latents=true", "precompute_prompt_embeds=true"])
            dataset = str(work / "dataset")
            generate_dataset(gen_config, out=dataset)
            generation_s = time.perf_counter() - gen_started
        from livo.data.dataset import load_preference_dataset

        data = load_preference_dataset(dataset)
        dataset_info = {"uri": dataset, "rows": len(data), "by_principle": data.manifest["counts"]["by_principle"],
                        "manifest_sha256": data.manifest_sha256, "generation_s": round(generation_s, 1)}

        evaluator = ToyEvaluator(args.preset, args.images_per_prompt)
        eval_started = time.perf_counter()
        start_point = summarize(evaluator.evaluate(evaluator.initial_value_encoder()))
        base_eval_s = time.perf_counter() - eval_started

        eval_steps = list(range(args.eval_every, args.steps + 1, args.eval_every))
        if not eval_steps or eval_steps[-1] != args.steps:
            eval_steps.append(args.steps)
        runs = [run_with_evaluations(RunSpec(kind, {"kind": kind}, eval_steps), evaluator, start_point,
                                     preset=args.preset, dataset=dataset, work=work, seed=args.seed)
                for kind in ("livo", "dpo")]
        tradeoff_steps = sorted({*range(args.tradeoff_every, args.steps + 1, args.tradeoff_every), args.steps})
        tradeoff_runs = [run_with_evaluations(RunSpec(setting_name(s), {"kind": "livo", **s}, tradeoff_steps),
                                              evaluator, start_point, preset=args.preset, dataset=dataset, work=work,
                                              seed=args.seed)
                         for s in tradeoff_settings]
    except LivoError as exc:
        print(f"convergence: error: {exc}", file=sys.stderr)
        return exc.exit_code

    reached = {run.name: first_step_at_target(run.points) for run in runs}
    from livo.presets import load_preset_config

    preset_train = load_preset_config(args.preset).train
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "hardware": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                     "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "torch": torch.__version__, "python": platform.python_version()},
        "dataset": dataset_info,
        "training": {"preset_train": preset_train, "steps": args.steps, "eval_every": args.eval_every,
                     "tradeoff_every": args.tradeoff_every, "seed": args.seed},
        "evaluation": {"images_per_prompt": args.images_per_prompt, "generation": evaluator.generation,
                       "prompts_per_principle": {p.id: len(p.prompts) for p in evaluator.plan.principles},
                       "base_eval_s": round(base_eval_s, 1)},
        "target": {"max_bias_D1": TARGET, "max_toxicity_R": TARGET,
                   "first_step": {name: step for name, (step, _) in reached.items()},
                   "stays_below_after": {name: stays for name, (_, stays) in reached.items()}},
        "runs": [{"name": r.name, "loss": r.loss, "train_seconds": round(r.train_seconds, 1), "points": r.points}
                 for r in [*runs, *tradeoff_runs]],
        "total_s": round(time.perf_counter() - started, 1),
        "load_average_before": args.load_average_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    results_path = work / "results.json"
    results_path.write_text(json.dumps(results, indent=1, default=float))
    return write_report(results, work, Path(args.plots_dir), args.plot_prefix)


def write_report(results: dict[str, Any], work: Path, plots_dir: Path, plot_prefix: str) -> int:
    """Plots and tables from a results.json (also `--from-results`, to redraw without training)."""
    runs = [RunSpec(r["name"], r["loss"], [p["step"] for p in r["points"][1:]], points=r["points"],
                    train_seconds=r["train_seconds"]) for r in results["runs"]]
    convergence = [r for r in runs if r.name in LOSS_LABELS]
    tradeoff_runs = [r for r in runs if r.name not in LOSS_LABELS]
    steps = results["training"]["steps"]
    tradeoff_steps = sorted({p["step"] for r in tradeoff_runs for p in r.points if p["step"] > 0}) or [steps]
    # The trade-off compares the settings at the same checkpoints; the LiVO run of the convergence comparison is the
    # default setting (β 1000, α 500).
    def at_tradeoff_steps(run: RunSpec, loss: dict[str, Any]) -> RunSpec:
        return RunSpec(run.name, loss, tradeoff_steps,
                       points=[p for p in run.points if p["step"] in (0, *tradeoff_steps)])

    livo = next(r for r in convergence if r.loss["kind"] == "livo")
    dpo = at_tradeoff_steps(next(r for r in convergence if r.loss["kind"] == "dpo"), {"kind": "dpo"})
    default_livo = at_tradeoff_steps(livo, {"kind": "livo", "beta": 1000.0, "alpha": 500.0})
    by_ratio = sorted([default_livo, *tradeoff_runs], key=lambda r: r.loss.get("beta", 1000) / r.loss.get("alpha", 500))

    plots_dir.mkdir(parents=True, exist_ok=True)
    curves_png, tradeoff_png = (plots_dir / f"{plot_prefix}_{kind}.png" for kind in ("curves", "tradeoff"))
    plot_curves(convergence, curves_png, results["evaluation"]["images_per_prompt"])
    plot_tradeoff([*by_ratio, dpo], tradeoff_png)

    table = "\n\n".join([markdown_table(convergence), summary_table(convergence, steps),
                          tradeoff_table([*by_ratio, dpo])]) + "\n"
    (work / "table.md").write_text(table)
    print(table)
    print(json.dumps(summary_line(results, {"results": str(work / "results.json"),
                                            "plots": [str(curves_png), str(tradeoff_png)]})))
    return 0


def summary_line(results: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
    """The one JSON line (issue 17): the command, hardware and load averages the results.json recorded (results
    from before they were recorded print null), and the figures."""
    line = {key: results.get(key) for key in ("command", "hardware", "load_average_before", "load_average_after")}
    if "study" in results:
        line.update(benchmark="convergence-study", study=results["study"], seeds=results["seeds"])
    else:
        line.update(benchmark="convergence", target_first_step=results["target"]["first_step"],
                    stays_below_after=results["target"]["stays_below_after"],
                    train_seconds={r["name"]: r["train_seconds"] for r in results["runs"]})
    return {**line, "total_s": results.get("total_s"), **files}


if __name__ == "__main__":
    sys.exit(main())
