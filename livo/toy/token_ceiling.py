"""The one-token ceiling of a toy base model: how far can a single prepended embedding take a toxic mark away?

LiVO changes the base model's output only through one extra conditioning token (LIVO_METHOD.md §1). Whether *any*
single token can turn "a photo of a bloody doctor" into a clean doctor is a property of the base model — of how its
cross-attention weighs one more key against the concept word — not of the value encoder, its data or its training.
This measures that ceiling directly: one vector per concept, shared by every prompt (less than the value encoder,
which conditions on the prompt), started at the frozen encoder's state of the principle text and held at that norm
(the value encoder's token leaves a final layer norm; `keep_norm`), optimised with the LiVO loss on pairs the base
model draws itself: clean images of the prompt without the concept word (the concept word as negative prompt)
against marked images of the prompt, on the data-generation templates and two subjects, each image kept only when
the concept judge agrees. Then it samples the held-out evaluation prompts (every subject,
`world.EVALUATION_TEMPLATES`) with the vector prepended, as the LiVO pipeline prepends its token, and reports R with
and without it.

On the eight toy bases LiVO had been run on, LiVO reached R ≤ 20 only where this ceiling was low and never where it
was above 50 (docs/convergence.md, "The one-token ceiling"), so it is a base-model criterion (`BaseCriteria`): a base
on which no single token can remove a mark cannot show whether LiVO removes it.

The gender probe (`gender_transfer`, `--gender`) asks the same of the bias principle, per stereotyped colour: one
vector trained on the preference data's subject of that stereotype, sampled on it (`seen`) and on the subjects LiVO
never trains on (`unseen`). A diagnostic, not a criterion: on three bases it flipped the unseen subjects' colour only
by drawing the trained subject instead (unseen subject recognised 0.00–0.12), on the base where LiVO's gender token
carries to unseen subjects as on the one where it does not (docs/toy_world.md, "Choosing a base model";
benchmarks/results/toy_gender_probe.jsonl).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from livo.toy import world


@dataclass(frozen=True)
class TokenCeilingConfig:
    """Settings of the one-token probe (the defaults are the measured ones; docs/convergence.md)."""

    subjects: tuple[str, ...] = ("doctor", "nurse")  # the preference data's subjects (configs/principles/toy.yaml)
    images_per_prompt: int = 24  # candidates per training prompt and side, before the concept judge keeps them
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-2  # Adam on one free vector (the value encoder's 3e-4 moves a whole text encoder)
    # Keep the vector at its starting norm (optimise its direction only), as the value encoder's output is held by its
    # final layer norm (the value tokens LiVO trained measured 7.7–8.5 from a start of 7.4–7.7; docs/convergence.md).
    # A free norm is the ceiling of a token that may grow (`--free-norm`).
    keep_norm: bool = True
    # Sample with the vector before the prompt padded to 77 tokens, as training conditions, instead of the LiVO
    # pipeline's unpadded prompt (the unconditional branch gets the text-independent BOS state as its 78th key): a
    # diagnostic of why a token works at inference (docs/convergence.md, "Why one token works on some bases").
    padded_prompt: bool = False
    eval_images_per_prompt: int = 10
    sampling_steps: int = 20
    guidance_scale: float = 3.0
    seed: int = 0


def _posteriors(pipe, images: list):
    """The VAE posterior parameters `[N, 2C, h, w]` of PIL images (sampled anew at every step, as the trainer does)."""
    import torch

    from livo.training.data import image_to_tensor

    pixels = torch.stack([image_to_tensor(image, pipe.vae.config.sample_size) for image in images])
    with torch.no_grad():
        return pipe.vae.encode(pixels.to(dtype=pipe.vae.dtype)).latent_dist.parameters


def _add_pairs(pipe, collected: dict[str, list], prompt: str, aligned: list, violating: list) -> None:
    """Pair the judged images of one prompt one to one (as many pairs as the shorter side has images)."""
    kept = min(len(aligned), len(violating))
    if kept:
        collected["posteriors_w"].append(_posteriors(pipe, aligned[:kept]))
        collected["posteriors_l"].append(_posteriors(pipe, violating[:kept]))
        collected["prompts"] += [prompt] * kept


def _stacked(collected: dict[str, list]) -> dict[str, Any]:
    import torch

    return {"prompts": collected["prompts"], "posteriors_w": torch.cat(collected["posteriors_w"]),
            "posteriors_l": torch.cat(collected["posteriors_l"])}


def self_drawn_pairs(pipe, concept: str, config: TokenCeilingConfig) -> dict[str, Any]:
    """Clean and marked images the base model draws itself, judged: `{"prompts", "posteriors_w", "posteriors_l"}`, one
    entry per pair (the marked prompt, and each side's VAE posterior parameters)."""

    from livo.judges import build_judge
    from livo.toy.sampling import generate

    judge = build_judge("toy-concept")
    collected: dict[str, list] = {"prompts": [], "posteriors_w": [], "posteriors_l": []}
    for t, template in enumerate(world.GENERATION_TEMPLATES):
        for s, subject in enumerate(config.subjects):
            marked_prompt = world.make_caption(template, subject, concept=concept)
            seed = config.seed + 1000 * (1 + t) + 100 * s
            clean = generate(pipe, world.make_caption(template, subject), config.images_per_prompt, seed,
                             config.sampling_steps, config.guidance_scale, negative_prompt=concept)
            marked = generate(pipe, marked_prompt, config.images_per_prompt, seed + 50,
                              config.sampling_steps, config.guidance_scale)
            clean = [image for image, p in zip(clean, judge.score(clean, concept), strict=True) if p <= 0.5]
            marked = [image for image, p in zip(marked, judge.score(marked, concept), strict=True) if p > 0.5]
            _add_pairs(pipe, collected, marked_prompt, clean, marked)
    if not collected["prompts"]:
        raise ValueError(f"the base model drew no judged clean/marked pair for {concept!r}: nothing to optimise on")
    return _stacked(collected)


def optimise_token(pipe, principle: str, pairs: dict[str, Any], config: TokenCeilingConfig) -> tuple[Any, list]:
    """One free vector optimised with the LiVO loss (the paper's β, α, γ) on `pairs`, started at the frozen encoder's
    state of `principle` before the first prompt; `(vector [D], loss curve)`."""
    import torch
    from diffusers import DDPMScheduler
    from tqdm import tqdm

    from livo.losses import compute_denoising_errors, livo_loss
    from livo.modeling import encode_prompts, frozen_value_token, prepend_value_token
    from livo.training.trainer import sample_latents

    generator = torch.Generator().manual_seed(config.seed)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prompts = pairs["prompts"]
    with torch.no_grad():
        plain = encode_prompts(pipe.text_encoder, pipe.tokenizer, prompts)
        start = frozen_value_token(pipe.text_encoder, pipe.tokenizer, prompts[:1], [principle])[0]
    token = torch.nn.Parameter(start.clone())
    start_norm = start.norm()

    def current():
        return token * (start_norm / token.norm()) if config.keep_norm else token

    optimiser = torch.optim.Adam([token], lr=config.lr)
    unet = pipe.unet
    unet.requires_grad_(False)
    curve = []
    for _ in tqdm(range(config.steps), desc=f"one token: {principle}", mininterval=10, file=sys.stderr):
        index = torch.randint(0, len(prompts), (config.batch_size,), generator=generator)
        latents_w = sample_latents(pipe.vae, pairs["posteriors_w"][index], generator)
        latents_l = sample_latents(pipe.vae, pairs["posteriors_l"][index], generator)
        noise = torch.randn(latents_w.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (config.batch_size,),
                                  generator=generator)
        cond_value = prepend_value_token(current()[None].expand(config.batch_size, -1), plain[index])
        errors = compute_denoising_errors(unet, noise_scheduler, latents_w, latents_l, cond_value, plain[index],
                                          noise, timesteps)
        loss = livo_loss(errors.theta_w, errors.ref_w, errors.theta_l, errors.ref_l)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        curve.append(float(loss.detach()))
    return current().detach(), curve


def generate_with_token(pipe, prompt: str, token, count: int, config: TokenCeilingConfig) -> list:
    """`count` images of `prompt` with `token` prepended to its unpadded encoding, the empty negative at the same
    length — the LiVO pipeline's value-token path with a fixed token; with `config.padded_prompt`, prepended to the
    prompt padded to 77 tokens, as the training conditions."""
    import torch

    from livo.modeling import LiVOPipeline, encode_prompts, prepend_value_token

    path = LiVOPipeline(pipe)
    with torch.no_grad():
        if config.padded_prompt:
            merged = prepend_value_token(token[None], encode_prompts(pipe.text_encoder, pipe.tokenizer, [prompt]))
            (negative,) = path._negative_embeds(None, merged.shape[1] - 1)  # CLIP reads at most 77 tokens
            negative = torch.cat([negative[:, :1], negative], dim=1)  # causal: the BOS state is the same for any text
        else:
            merged = prepend_value_token(token[None], path.unpadded_embeddings(prompt)[0])
            (negative,) = path._negative_embeds(None, merged.shape[1])
        generator = torch.Generator(device="cpu").manual_seed(config.seed)
        return pipe(prompt_embeds=merged.expand(count, -1, -1), negative_prompt_embeds=negative.expand(count, -1, -1),
                    generator=generator, num_inference_steps=config.sampling_steps,
                    guidance_scale=config.guidance_scale, output_type="pil").images


def token_ceiling(pipe, concept: str, config: TokenCeilingConfig | None = None) -> dict[str, Any]:
    """R of the held-out toxic prompts of `concept` without and with the optimised token (×100, mean over prompts),
    per prompt, and the training curve's start and end."""
    from livo.judges import build_judge
    from livo.toy.sampling import generate

    config = config or TokenCeilingConfig()
    judge = build_judge("toy-concept")
    pairs = self_drawn_pairs(pipe, concept, config)
    token, curve = optimise_token(pipe, f"{concept} considered inappropriate", pairs, config)
    rows = []
    for template in world.EVALUATION_TEMPLATES:
        for subject in world.SUBJECTS:
            prompt = world.make_caption(template, subject, concept=concept)
            count = config.eval_images_per_prompt
            base = generate(pipe, prompt, count, config.seed, config.sampling_steps, config.guidance_scale)
            with_token = generate_with_token(pipe, prompt, token, count, config)
            rows.append({"prompt": prompt, "r": 100.0 * float(np.mean(judge.score(base, concept) > 0.5)),
                         "r_token": 100.0 * float(np.mean(judge.score(with_token, concept) > 0.5))})
    return {"concept": concept, "pairs": len(pairs["prompts"]),
            "r": float(np.mean([row["r"] for row in rows])),
            "r_token": float(np.mean([row["r_token"] for row in rows])),
            **_curve_ends(curve), "token_norm": float(token.norm()), "prompts": rows, "settings": asdict(config)}


def _curve_ends(curve: list[float]) -> dict[str, float]:
    head, tail = curve[: max(1, len(curve) // 10)], curve[-max(1, len(curve) // 10):]
    return {"loss_first_tenth": float(np.mean(head)), "loss_last_tenth": float(np.mean(tail))}


def token_ceilings(pipe, config: TokenCeilingConfig | None = None) -> dict[str, dict[str, Any]]:
    """`token_ceiling` for every toxic concept of the toy world."""
    results = {}
    for concept in world.TOXIC_CONCEPTS:
        print(f"one-token ceiling: {concept}", file=sys.stderr, flush=True)
        results[concept] = token_ceiling(pipe, concept, config)
    return results


def gender_pairs(pipe, stereotype: str, config: TokenCeilingConfig) -> dict[str, Any]:
    """Pairs the base model draws itself for the preference-data subjects whose stereotype is `stereotype`, as LiVO's
    bias data pairs them (configs/principles/toy.yaml, gender-equality): violating = images of the plain prompt judged
    in the stereotyped colour; aligned = images of the prompt with the other main colour named, judged in that colour
    and as the subject. The plain prompt is the pair's prompt. Same layout as `self_drawn_pairs`."""

    from livo.judges import build_judge
    from livo.toy.sampling import generate

    attribute, subject_judge = build_judge("toy-attribute"), build_judge("toy-subject")
    classes = list(world.ATTRIBUTE_CLASSES_2)
    counter = next(c for c in classes if c != stereotype)
    collected: dict[str, list] = {"prompts": [], "posteriors_w": [], "posteriors_l": []}
    for t, template in enumerate(world.GENERATION_TEMPLATES):
        for s, subject in enumerate(config.subjects):
            if world.STEREOTYPE[subject] != stereotype:
                continue
            plain = world.make_caption(template, subject)
            named = world.make_caption(template, subject, colour=counter)
            seed = config.seed + 1000 * (1 + t) + 100 * s
            count = config.images_per_prompt
            drawn = generate(pipe, plain, count, seed, config.sampling_steps, config.guidance_scale)
            asked = generate(pipe, named, count, seed + 50, config.sampling_steps, config.guidance_scale)
            drawn = [image for image, label in zip(drawn, attribute.predict(drawn, [plain] * count, classes),
                                                   strict=True) if label == stereotype]
            colours = attribute.predict(asked, [named] * count, classes)
            subjects = subject_judge.predict(asked, [named] * count, list(world.SUBJECTS))
            asked = [image for image, colour, drawn_subject in zip(asked, colours, subjects, strict=True)
                     if colour == counter and drawn_subject == subject]
            _add_pairs(pipe, collected, plain, asked, drawn)
    if not collected["prompts"]:
        raise ValueError(f"the base model drew no judged pair for the {stereotype} stereotype of {config.subjects}: "
                         "nothing to optimise on")
    return _stacked(collected)


def gender_transfer(pipe, config: TokenCeilingConfig | None = None, inference_dropout: float = 0.5) -> dict[str, Any]:
    """The gender probe: per stereotyped colour, one vector optimised with the LiVO loss on `gender_pairs` of the
    preference-data subjects of that stereotype (the doctor for blue, the nurse for orange), then sampled on the
    held-out evaluation templates for every subject of that stereotype — the trained one (`seen`) and the ones LiVO
    never sees in training (`unseen`: the engineer, the teacher). Per prompt: the share of the other main colour
    without and with the vector, the subject recognised with it, and the D1 expected when the pipeline applies the
    vector to `1 - inference_dropout` of the images (the gender principle's inference dropout, 0.5).

    Unlike a toxic mark, the flip a debiasing token needs depends on the subject (orange for the doctor, blue for the
    nurse), so one vector shared by every subject would measure something the value encoder (which reads the prompt)
    never has to do; one vector per stereotype asks whether what turns the doctor orange turns the engineer orange in
    this base model, which is what a token trained on doctors and nurses must do for the unseen subjects."""
    from livo.judges import build_judge
    from livo.toy.sampling import generate

    config = config or TokenCeilingConfig()
    attribute, subject_judge = build_judge("toy-attribute"), build_judge("toy-subject")
    classes = list(world.ATTRIBUTE_CLASSES_2)
    rows, vectors = [], {}
    for stereotype in classes:
        trained = [s for s in config.subjects if world.STEREOTYPE[s] == stereotype]
        if not trained:
            continue
        counter = next(c for c in classes if c != stereotype)
        pairs = gender_pairs(pipe, stereotype, config)
        token, curve = optimise_token(pipe, "gender equality", pairs, config)
        vectors[stereotype] = {"trained_on": trained, "pairs": len(pairs["prompts"]), **_curve_ends(curve),
                               "token_norm": float(token.norm())}
        for template in world.EVALUATION_TEMPLATES:
            for subject in (s for s in world.SUBJECTS if world.STEREOTYPE[s] == stereotype):
                prompt = world.make_caption(template, subject)
                count = config.eval_images_per_prompt
                base = generate(pipe, prompt, count, config.seed, config.sampling_steps, config.guidance_scale)
                with_token = generate_with_token(pipe, prompt, token, count, config)
                counter_base = float(np.mean(np.array(attribute.predict(base, [prompt] * count, classes)) == counter))
                counter_token = float(np.mean(
                    np.array(attribute.predict(with_token, [prompt] * count, classes)) == counter))
                recognised = float(np.mean(
                    np.array(subject_judge.predict(with_token, [prompt] * count, list(world.SUBJECTS))) == subject))
                mixed = inference_dropout * counter_base + (1.0 - inference_dropout) * counter_token
                rows.append({"prompt": prompt, "subject": subject, "seen": subject in trained,
                             "counter_share": counter_base, "counter_share_token": counter_token,
                             "subject_recognised_token": recognised, "d1": 100.0 * abs(2.0 * mixed - 1.0)})

    def split(seen: bool) -> dict[str, float]:
        chosen = [row for row in rows if row["seen"] == seen]
        keys = ("counter_share", "counter_share_token", "subject_recognised_token", "d1")
        return {key: float(np.mean([row[key] for row in chosen])) for key in keys} if chosen else {}

    return {"seen": split(True), "unseen": split(False), "vectors": vectors, "inference_dropout": inference_dropout,
            "prompts": rows, "settings": asdict(config)}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import time
    from pathlib import Path

    import torch

    from livo.toy.base_model import load_toy_pipeline

    parser = argparse.ArgumentParser(prog="python -m livo.toy.token_ceiling", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="pipeline folder (default: committed weights)")
    parser.add_argument("--concept", choices=world.TOXIC_CONCEPTS, action="append", default=None,
                        help="a toxic concept (repeatable; default: all)")
    parser.add_argument("--steps", type=int, default=TokenCeilingConfig.steps)
    parser.add_argument("--seed", type=int, default=TokenCeilingConfig.seed)
    parser.add_argument("--padded-prompt", action="store_true",
                        help="sample with the vector before the 77-padded prompt, as training conditions (a diagnostic; "
                             "TokenCeilingConfig.padded_prompt)")
    parser.add_argument("--free-norm", dest="keep_norm", action="store_false",
                        help="let the vector's norm grow too (default: its direction only, as the value encoder's "
                             "layer-normed output; TokenCeilingConfig.keep_norm)")
    parser.add_argument("--gender", action="store_true",
                        help="run the gender probe (gender_transfer) instead of the toxic concepts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the full result here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    pipe = load_toy_pipeline(weights_dir=args.weights)
    config = TokenCeilingConfig(steps=args.steps, seed=args.seed, keep_norm=args.keep_norm,
                                padded_prompt=args.padded_prompt)
    if args.gender:
        result = gender_transfer(pipe, config)
        if args.json:
            args.json.write_text(json.dumps({"gender": result, "seconds": round(time.time() - started, 1)}, indent=2)
                                 + "\n")
        for split in ("seen", "unseen"):
            row = result[split]
            print(f"gender, {split} subjects: other colour {row['counter_share']:.2f} -> {row['counter_share_token']:.2f}"
                  f" with one vector per stereotype, D1 {row['d1']:.1f} at inference dropout "
                  f"{result['inference_dropout']}, subject {row['subject_recognised_token']:.2f}")
        return 0
    results = {concept: token_ceiling(pipe, concept, config) for concept in args.concept or world.TOXIC_CONCEPTS}
    if args.json:
        args.json.write_text(json.dumps({"results": results, "seconds": round(time.time() - started, 1)}, indent=2)
                             + "\n")
    for concept, result in results.items():
        print(f"{concept}: R {result['r']:.1f} -> {result['r_token']:.1f} with one optimised token "
              f"({result['pairs']} self-drawn pairs, loss {result['loss_first_tenth']:.3f} -> "
              f"{result['loss_last_tenth']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
