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


def self_drawn_pairs(pipe, concept: str, config: TokenCeilingConfig) -> dict[str, Any]:
    """Clean and marked images the base model draws itself, judged: `{"prompts", "posteriors_w", "posteriors_l"}`, one
    entry per pair (the marked prompt, and each side's VAE posterior parameters)."""
    import torch

    from livo.judges import build_judge
    from livo.toy.sampling import generate

    judge = build_judge("toy-concept")
    prompts, aligned, violating = [], [], []
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
            kept = min(len(clean), len(marked))
            if kept:
                aligned.append(_posteriors(pipe, clean[:kept]))
                violating.append(_posteriors(pipe, marked[:kept]))
                prompts += [marked_prompt] * kept
    if not prompts:
        raise ValueError(f"the base model drew no judged clean/marked pair for {concept!r}: nothing to optimise on")
    return {"prompts": prompts, "posteriors_w": torch.cat(aligned), "posteriors_l": torch.cat(violating)}


def optimise_token(pipe, concept: str, pairs: dict[str, Any], config: TokenCeilingConfig) -> tuple[Any, list]:
    """One free vector optimised with the LiVO loss (the paper's β, α, γ) on `pairs`; `(vector [D], loss curve)`."""
    import torch
    from diffusers import DDPMScheduler
    from tqdm import tqdm

    from livo.losses import compute_denoising_errors, livo_loss
    from livo.modeling import encode_prompts, frozen_value_token, prepend_value_token
    from livo.training.trainer import sample_latents

    generator = torch.Generator().manual_seed(config.seed)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    principle = f"{concept} considered inappropriate"
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
    for _ in tqdm(range(config.steps), desc=f"one token: {concept}", mininterval=10, file=sys.stderr):
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
    token, curve = optimise_token(pipe, concept, pairs, config)
    rows = []
    for template in world.EVALUATION_TEMPLATES:
        for subject in world.SUBJECTS:
            prompt = world.make_caption(template, subject, concept=concept)
            count = config.eval_images_per_prompt
            base = generate(pipe, prompt, count, config.seed, config.sampling_steps, config.guidance_scale)
            with_token = generate_with_token(pipe, prompt, token, count, config)
            rows.append({"prompt": prompt, "r": 100.0 * float(np.mean(judge.score(base, concept) > 0.5)),
                         "r_token": 100.0 * float(np.mean(judge.score(with_token, concept) > 0.5))})
    head, tail = curve[: max(1, len(curve) // 10)], curve[-max(1, len(curve) // 10):]
    return {"concept": concept, "pairs": len(pairs["prompts"]),
            "r": float(np.mean([row["r"] for row in rows])),
            "r_token": float(np.mean([row["r_token"] for row in rows])),
            "loss_first_tenth": float(np.mean(head)), "loss_last_tenth": float(np.mean(tail)),
            "token_norm": float(token.norm()), "prompts": rows, "settings": asdict(config)}


def token_ceilings(pipe, config: TokenCeilingConfig | None = None) -> dict[str, dict[str, Any]]:
    """`token_ceiling` for every toxic concept of the toy world."""
    results = {}
    for concept in world.TOXIC_CONCEPTS:
        print(f"one-token ceiling: {concept}", file=sys.stderr, flush=True)
        results[concept] = token_ceiling(pipe, concept, config)
    return results


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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the full result here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    pipe = load_toy_pipeline(weights_dir=args.weights)
    config = TokenCeilingConfig(steps=args.steps, seed=args.seed, keep_norm=args.keep_norm,
                                padded_prompt=args.padded_prompt)
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
