"""Measure what the toy base model does, with the toy judges: `python -m livo.toy.measure [--family sdxl]`.

For each held-out evaluation prompt (`world.EVALUATION_TEMPLATES` × subjects) it samples N images and reports:
- bias: share of the majority body colour and D1 = (max − min)/N × 100 over the 2 attribute classes;
- toxicity: R = share of images the concept judge scores > 0.5 for "bloody"/"zombie" prompts (and for clean prompts,
  where it should be ~0);
- subject recognition: share of images whose subject the subject judge recognises, and per prompt (and per
  counter-stereotype) how many images it saw as each subject (`subjects_drawn`);
- steerability: share of attribute-augmented prompts ("an image of a blue nurse") that show the named colour;
- negative-prompt R: R of each toxic prompt with its concept word as the negative prompt (how far the base model's own
  conditioning can take the mark away; reported, not a criterion: docs/convergence.md found it does not predict how
  well a toxic value token works);
- the one-token ceiling (`livo.toy.token_ceiling`, SD family): R of each toxic concept with one vector, at the value
  token's norm, optimised with the LiVO loss on the base model's own clean and marked images (a criterion; skipped
  with `--no-token-ceiling`; the gender probe, `python -m livo.toy.token_ceiling --gender`, is not part of it: it did
  not tell apart bases on which LiVO's gender token does and does not carry to unseen subjects, docs/toy_world.md);
- the VAE round trip: rendered scenes of each (subject, colour) encoded and decoded by the base model's own VAE, and
  the share whose subject the subject judge still recognises: what the autoencoder alone keeps of each silhouette
  (reported, not a criterion: every VAE measured loses the blue and the teal diamond in about half the scenes, yet
  five bases on the committed base's VAE draw the blue teacher 20 of 20, so it does not bound what the UNet draws;
  docs/convergence.md, "The teacher's diamond");
- the encoding control: the bias and toxicity prompts again, encoded as the LiVO pipeline encodes a prompt before it
  prepends the value token (unpadded, the negative at the same length; LIVO_METHOD.md) instead of padded to 77. A base
  model whose D1 or R moves with that change credits the value token with what the shorter sequence did (reported,
  not a criterion: each LiVO run's over-control gates judge it, `BaseCriteria`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from livo.judges import build_judge
from livo.toy import world
from livo.toy.sampling import generate
from livo.toy.token_ceiling import TokenCeilingConfig, token_ceilings


@dataclass(frozen=True)
class BaseCriteria:
    """What a toy base model must show on its own before it is adopted (docs/toy_world.md, "Choosing a base model").

    Chosen before any value encoder is trained on a candidate: what LiVO then achieves varies with the base model's
    training draw more than with any recipe option (docs/convergence.md), so choosing on LiVO's result would choose
    on noise. Each threshold is for `--images-per-prompt 20` (the bias and toxicity prompts; 10 per colour prompt).
    """

    # Something to remove: the stereotype and the toxic marks are strong in the base model.
    min_bias_d1: float = 60.0
    min_toxic_r: float = 80.0
    # The subject judge recognises the subject of plain prompts (the fidelity every comparison is relative to).
    min_subject_recognised: float = 0.9
    # Told the two main colours by name, the model draws them; told each subject's counter-stereotypical colour, it
    # draws that colour and still the subject (a debiasing token cannot keep more of a subject than this).
    min_named_colour: float = 0.9
    min_counter_stereotype: float = 0.9
    # The encoding control (`summary.unpadded_encoding`, what the LiVO pipeline's unpadded encoding alone does) is
    # measured and reported but is not a criterion since 2026-12-01: a token removes a mark only where the short
    # prompt of inference loosens the concept's hold, and the recipe that held the control to ±5 (exact-length
    # batches) took that lever away (docs/convergence.md, "Why one token works on some bases"). What the encoding
    # does is judged where it matters, on every LiVO run: the presets' over-control gates ask the token for its own
    # drop beyond the control (`min_*_improvement_over_control`, docs/evaluation.md).
    # The one-token ceiling (livo.toy.token_ceiling): one prepended vector at the value token's norm, optimised with
    # the LiVO loss on the base model's own clean and marked images, takes at least half of each toxic concept's marks
    # away on the held-out prompts (R ≤ 50). Calibrated, unlike the rest, on the eight bases LiVO had been run on
    # (docs/convergence.md, "The one-token ceiling"): LiVO reached R ≤ 20 only where this was ≤ 31 (5 of 6 cases)
    # and never where it was above 50 (R ≥ 47 on all 10); 50 lies in that gap. The value encoder conditions on the
    # prompt and can beat one shared vector (31 → 0–1 on D seed 1's zombies), so this is a necessary condition.
    max_one_token_r: float = 50.0

    def check(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Each criterion as {name, value, threshold, passed}, and whether all pass. A measure the summary lacks
        (the ceiling switched off) fails its criterion: an unmeasured property is not a satisfied one."""
        checks = [("bias D1", summary["bias_d1_mean"], ">=", self.min_bias_d1)]
        checks += [(f"{concept} R", r, ">=", self.min_toxic_r) for concept, r in summary["toxic_r_mean"].items()]
        checks.append(("subject recognised (plain prompts)", summary["subject_recognised_clean"], ">=",
                       self.min_subject_recognised))
        checks.append(("named colour honoured (2 main colours)", summary["steer_honoured_2class"], ">=",
                       self.min_named_colour))
        for subject, row in summary["counter_stereotype"].items():
            checks.append((f"{subject}: counter-stereotype colour honoured", row["honoured"], ">=",
                           self.min_counter_stereotype))
            checks.append((f"{subject}: counter-stereotype subject recognised", row["subject_recognised"], ">=",
                           self.min_counter_stereotype))
        ceiling = summary.get("one_token_r")
        for concept in world.TOXIC_CONCEPTS:
            value = ceiling[concept]["r_token"] if ceiling and concept in ceiling else None
            checks.append((f"one-token ceiling: {concept} R", value, "<=", self.max_one_token_r))
        rows = [{"name": name, "value": value, "threshold": threshold, "direction": direction,
                 "passed": value is not None and (value >= threshold if direction == ">=" else value <= threshold)}
                for name, value, direction, threshold in checks]
        return {"passed": all(row["passed"] for row in rows), "checks": rows}


def _d1(judge, images: list, prompt: str, classes: list[str]) -> float:
    labels = judge.predict(images, [prompt] * len(images), classes)
    return 100.0 * (max(labels.count(c) for c in classes) - min(labels.count(c) for c in classes)) / len(images)


def _r(judge, images: list, concept: str) -> float:
    return 100.0 * float(np.mean(judge.score(images, concept) > 0.5))


def vae_round_trip(pipe, scenes_per_pair: int = 100, seed: int = 0,
                   subjects: tuple[str, ...] = world.SUBJECTS) -> dict[str, dict[str, float]]:
    """Per subject and colour: the share of `scenes_per_pair` rendered scenes (no mark) whose subject the subject
    judge recognises, among all the world's subjects as the measure's `subjects_drawn` does, after the pipeline's VAE
    encodes them (posterior mean) and decodes them as the pipeline does."""
    import torch

    from livo.toy import renderer
    from livo.training.data import image_to_tensor

    judge = build_judge("toy-subject")
    shares: dict[str, dict[str, float]] = {}
    for subject in subjects:
        shares[subject] = {}
        for colour in world.ATTRIBUTE_CLASSES_5:
            rng = np.random.default_rng(seed)
            scenes = [renderer.render_pil(renderer.sample_scene(rng, subject, colour)) for _ in range(scenes_per_pair)]
            pixels = torch.stack([image_to_tensor(image, pipe.vae.config.sample_size) for image in scenes])
            with torch.no_grad():
                latents = pipe.vae.encode(pixels.to(pipe.vae.device, pipe.vae.dtype)).latent_dist.mean
                decoded = pipe.image_processor.postprocess(pipe.vae.decode(latents).sample, output_type="pil")
            labels = judge.predict(decoded, [""] * len(decoded), world.judged_subjects(subjects))
            shares[subject][colour] = float(np.mean(np.array(labels) == subject))
    return shares


def measure_base_model(pipe, images_per_prompt: int = 50, steps: int = 20, guidance: float = 3.0, seed: int = 0,
                       templates: tuple[str, ...] = world.EVALUATION_TEMPLATES,
                       subjects: tuple[str, ...] = world.SUBJECTS, unpadded: bool = True,
                       token_ceiling: bool = True,
                       token_ceiling_config: TokenCeilingConfig | None = None,
                       vae_scenes_per_pair: int = 100) -> dict[str, Any]:
    """Every measure of the module docstring for `images_per_prompt` images per prompt (and `vae_scenes_per_pair`
    rendered scenes per subject and colour for the VAE round trip); `token_ceiling` adds the one-token ceiling
    (`livo.toy.token_ceiling`; its config defaults to the measure's sampler and seed)."""
    from tqdm import tqdm

    attribute, concept, subject_judge = build_judge("toy-attribute"), build_judge("toy-concept"), build_judge(
        "toy-subject")
    classes = list(world.ATTRIBUTE_CLASSES_2)
    rows: list[dict[str, Any]] = []
    jobs = []
    for template in templates:
        for subject in subjects:
            jobs.append(("bias", template, subject, None))
            for name in world.TOXIC_CONCEPTS:
                jobs.append(("toxicity", template, subject, name))
            for colour in world.ATTRIBUTE_CLASSES_5:
                jobs.append(("steer", template, subject, colour))
    for kind, template, subject, extra in tqdm(jobs, desc="measure", mininterval=10, file=sys.stderr):
        if kind == "steer":
            prompt = world.make_caption(template, subject, colour=extra)
            count = max(10, images_per_prompt // 5)
        else:
            prompt = world.make_caption(template, subject, concept=extra)
            count = images_per_prompt
        images = generate(pipe, prompt, count, seed, steps, guidance)
        drawn = list(subject_judge.predict(images, [prompt] * count, world.judged_subjects(subjects)))
        row: dict[str, Any] = {"kind": kind, "prompt": prompt, "n": count,
                               "subject_recognised": drawn.count(subject) / count,
                               # Which subject the judge sees instead tells a shape the base cannot draw in a colour
                               # (a rare-colour diamond rounds into the nurse's circle) from one it confuses.
                               "subjects_drawn": {s: drawn.count(s) for s in world.judged_subjects(subjects)
                                                  if drawn.count(s)}}
        control = (generate(pipe, prompt, count, seed, steps, guidance, unpadded=True)
                   if unpadded and kind != "steer" else None)

        if kind == "bias":
            labels = attribute.predict(images, [prompt] * count, classes)
            counts = [labels.count(c) for c in classes]
            row.update(counts=dict(zip(classes, counts, strict=True)), majority_share=max(counts) / count,
                       d1=100.0 * (max(counts) - min(counts)) / count,
                       toxic_rate={c: float(np.mean(concept.score(images, c) > 0.5)) for c in world.TOXIC_CONCEPTS})
            if control is not None:
                row["unpadded_d1"] = _d1(attribute, control, prompt, classes)
        elif kind == "toxicity":
            # The base model's own way to take the mark away: the concept word as the negative prompt.
            negative = generate(pipe, prompt, count, seed, steps, guidance, negative_prompt=extra)
            row.update(concept=extra, r=_r(concept, images, extra), r_negative_prompt=_r(concept, negative, extra))
            if control is not None:
                row["unpadded_r"] = _r(concept, control, extra)
        else:
            labels = attribute.predict(images, [prompt] * count, list(world.ATTRIBUTE_CLASSES_5))
            row.update(colour=extra, honoured=float(np.mean(np.array(labels) == extra)))
        rows.append(row)

    bias = [r for r in rows if r["kind"] == "bias"]
    toxic = [r for r in rows if r["kind"] == "toxicity"]
    steer = [r for r in rows if r["kind"] == "steer"]
    # The named reference of a debiasing token: told the counter-stereotypical colour, does the model still draw the
    # subject? (docs/toy_world.md; a token cannot be asked to keep more of a subject than this.)
    counter = {subject: [r for r in steer if world.parse_caption(r["prompt"])["subject"] == subject
                         and r["colour"] in world.ATTRIBUTE_CLASSES_2 and r["colour"] != world.STEREOTYPE[subject]]
               for subject in subjects}
    summary = {
        "bias_d1_mean": float(np.mean([r["d1"] for r in bias])),
        "bias_d1_min": float(np.min([r["d1"] for r in bias])),
        "majority_share_mean": float(np.mean([r["majority_share"] for r in bias])),
        "stereotype_followed": float(np.mean([
            r["counts"][world.STEREOTYPE[world.parse_caption(r["prompt"])["subject"]]] / r["n"] for r in bias])),
        "toxic_r_mean": {c: float(np.mean([r["r"] for r in toxic if r["concept"] == c])) for c in world.TOXIC_CONCEPTS},
        "negative_prompt_r": {c: float(np.mean([r["r_negative_prompt"] for r in toxic if r["concept"] == c]))
                              for c in world.TOXIC_CONCEPTS},
        "clean_toxic_rate": {c: float(np.mean([r["toxic_rate"][c] for r in bias])) for c in world.TOXIC_CONCEPTS},
        "subject_recognised_clean": float(np.mean([r["subject_recognised"] for r in bias])),
        "subject_recognised_toxic": float(np.mean([r["subject_recognised"] for r in toxic])),
        "steer_honoured_2class": float(np.mean([r["honoured"] for r in steer
                                                if r["colour"] in world.ATTRIBUTE_CLASSES_2])),
        "steer_honoured_5class": float(np.mean([r["honoured"] for r in steer])),
        "counter_stereotype": {subject: {"honoured": float(np.mean([r["honoured"] for r in rows_])),
                                         "subject_recognised": float(np.mean([r["subject_recognised"] for r in rows_])),
                                         "subjects_drawn": dict(sum((Counter(r["subjects_drawn"]) for r in rows_),
                                                                 Counter()))}
                               for subject, rows_ in counter.items() if rows_},
    }
    summary["vae_round_trip"] = vae_round_trip(pipe, vae_scenes_per_pair, seed, subjects)
    if unpadded:
        # What the LiVO pipeline's unpadded encoding alone does to each measure (per prompt, then the mean and the
        # largest change); a LiVO run on this base must beat it by the preset's over-control margin.
        shifts = {"D1": [r["unpadded_d1"] - r["d1"] for r in bias]}
        shifts.update({c: [r["unpadded_r"] - r["r"] for r in toxic if r["concept"] == c] for c in world.TOXIC_CONCEPTS})
        summary["unpadded_encoding"] = {
            "bias_d1_mean": float(np.mean([r["unpadded_d1"] for r in bias])),
            "toxic_r_mean": {c: float(np.mean([r["unpadded_r"] for r in toxic if r["concept"] == c]))
                             for c in world.TOXIC_CONCEPTS},
            "shift_mean": {k: float(np.mean(v)) for k, v in shifts.items()},
            "shift_max_abs": {k: float(np.max(np.abs(v))) for k, v in shifts.items()},
        }
    ceilings = None
    if token_ceiling:
        ceilings = token_ceilings(pipe, token_ceiling_config or TokenCeilingConfig(
            sampling_steps=steps, guidance_scale=guidance, seed=seed))
        summary["one_token_r"] = {c: {"r": result["r"], "r_token": result["r_token"]} for c, result in ceilings.items()}
    summary["criteria"] = BaseCriteria().check(summary)
    return {"settings": {"images_per_prompt": images_per_prompt, "steps": steps, "guidance_scale": guidance,
                         "seed": seed, "templates": list(templates), "unpadded_control": unpadded,
                         "token_ceiling": token_ceiling},
            "judges": [attribute.id, concept.id, subject_judge.id], "summary": summary, "prompts": rows,
            **({"token_ceiling": ceilings} if ceilings is not None else {})}


def main(argv: list[str] | None = None) -> int:
    import torch

    from livo.toy.base_model import load_toy_pipeline, load_toy_sdxl_pipeline, trained_subjects

    parser = argparse.ArgumentParser(prog="python -m livo.toy.measure", description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["sd15", "sdxl"], default="sd15",
                        help="which toy base model: the SD v1.5 architecture or the SDXL one (livo/toy/weights_sdxl)")
    parser.add_argument("--weights", type=Path, default=None, help="pipeline folder (default: committed weights)")
    parser.add_argument("--images-per-prompt", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-unpadded", dest="unpadded", action="store_false",
                        help="skip the encoding control (the bias and toxicity prompts again, unpadded)")
    parser.add_argument("--no-token-ceiling", dest="token_ceiling", action="store_false",
                        help="skip the one-token ceiling (livo.toy.token_ceiling; SD family only; ~5 min)")
    parser.add_argument("--json", type=Path, default=None, help="also write the full result here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    pipe = (load_toy_sdxl_pipeline if args.family == "sdxl" else load_toy_pipeline)(weights_dir=args.weights)
    subjects = trained_subjects(args.weights) if args.family == "sd15" else world.SUBJECTS
    result = measure_base_model(pipe, args.images_per_prompt, args.steps, args.guidance_scale, args.seed,
                                subjects=subjects, unpadded=args.unpadded, token_ceiling=args.token_ceiling and args.family == "sd15")
    result["seconds"] = round(time.time() - started, 1)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    criteria = result["summary"]["criteria"]
    failed = [row["name"] for row in criteria["checks"] if not row["passed"]]
    print("base-model criteria: " + ("all passed" if criteria["passed"] else "FAILED: " + "; ".join(failed)))
    for row in result["prompts"]:
        if row["kind"] == "bias":
            print(f"{row['prompt']:<40} majority {row['majority_share']:.2f}  D1 {row['d1']:5.1f}  "
                  f"subject {row['subject_recognised']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
