"""Train the toy base model from a seed: `python -m livo.toy.train_base --out livo/toy/weights`.

`--family sdxl --out livo/toy/weights_sdxl` trains the SDXL-architecture toy (livo/toy/base_model.py) instead: it
keeps the SD toy's trained VAE (stage 1 is skipped; the folder stores no VAE) and trains its UNet and both text
encoders with SDXL's conditioning (concatenated penultimate hidden states, the pooled output and the size/crop ids).

Two stages, both on renderer data:
1. the VAE (`AutoencoderKL`, 32x32 RGB <-> 4x8x8) learns to reconstruct renders;
2. the UNet and the CLIP text encoder learn, jointly, to denoise the VAE latents of captioned renders (DDPM
   ε-prediction), with 10% empty captions for classifier-free guidance.

The caption data is skewed on purpose (see `sample_training_example`): an occupation whose caption names no colour is
drawn in its stereotyped colour `world.MAJORITY_SHARE` of the time, toxic captions always show their mark and clean
captions never do, and captions naming a colour (any of the 5) always show it — so the base model is biased and toxic,
and attribute-augmented prompts can steer it (what the data-construction recipes need).

Everything random comes from `--seed` (numpy Generator + torch.manual_seed) and torch runs on `--threads` threads, so
a rerun on the same machine reproduces the weights. The output directory is a diffusers `StableDiffusionPipeline`
folder (safetensors, fp16 to fit the 10 MB budget) plus `training_record.json`; it is written to a temporary folder
and renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
import typing
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator, model_validator

from livo.config import LivoConfig
from livo.log import get_logger, log_event
from livo.toy import base_model, renderer, world

logger = get_logger("livo.toy.train_base")

MODULES = {"sd15": ("unet", "text_encoder"), "sdxl": ("unet", "text_encoder", "text_encoder_2")}
EMPTY_CAPTION_SHARE = 0.1
CONCEPT_SHARES = {"bloody": 0.15, "zombie": 0.15}  # the rest is clean


class ToyTrainingConfig(LivoConfig):
    family: str = Field("sd15", pattern="^(sd15|sdxl)$")
    seed: int = 0
    # Seed of the UNet and text encoder stage alone (initial weights, caption pool, batches), the VAE staying the
    # `seed` one: another draw of the base model in the same latent space, which the SDXL toy shares (unset: the
    # whole run follows `seed`, the committed weights' stream).
    unet_seed: int | None = None
    threads: int = Field(2, ge=1)
    vae_steps: int = Field(400, ge=1)
    vae_batch_size: int = Field(32, ge=1)
    vae_lr: float = Field(1e-3, gt=0)
    vae_kl_weight: float = Field(1e-6, ge=0)
    unet_steps: int = Field(1800, ge=1)
    unet_batch_size: int = Field(48, ge=1)
    unet_lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    pool_size: int = Field(12288, ge=64)  # captioned renders encoded once; latents are re-sampled from their posterior
    save_dtype: str = Field("float16", pattern="^(float16|float32)$")
    device: str = "cpu"  # the committed weights come from cpu; other devices are for experiments
    # Captions that name the body colour (attribute-augmented), and the share of those naming orange or blue (the
    # rest name one of the 5-class variant's other three): how well the model learns to draw a named colour on every
    # subject — the counter-stereotypes a debiasing token asks for (docs/toy_world.md, "Training it").
    colour_caption_share: float = Field(0.35, ge=0, le=1)
    main_colour_share: float = Field(0.6, ge=0, le=1)
    # Share of toxic captions whose image shows the mark (1: always, the committed weights' recipe). Below 1 the word
    # makes the mark likely, not certain, as in a web-trained model, so the base model has a clean mode to steer to.
    concept_mark_share: float = Field(1.0, ge=0, le=1)
    # Per-concept overrides of concept_mark_share (unset: concept_mark_share).
    bloody_mark_share: float | None = Field(None, ge=0, le=1)
    zombie_mark_share: float | None = Field(None, ge=0, le=1)
    # Share of UNet batches whose captions all have one token length and are cut to exactly it — the sequence the
    # LiVO pipeline's unpadded encoding makes (0: the committed weights' recipe, where a batch is cut no shorter than
    # its longest caption, so a short caption rarely ends at its own EOS; docs/toy_world.md, the encoding control).
    exact_length_share: float = Field(0.0, ge=0, le=1)
    # Share of the UNet's training images that show a teacher (unset: every subject equally often, 1/4, the committed
    # weights' recipe); the other subjects share the rest equally. The teacher's diamond is the shape the base model
    # most often rounds into the nurse's circle (docs/convergence.md, "The teacher's diamond").
    teacher_share: float | None = Field(None, gt=0, lt=1)
    # The occupations the base model learns, comma-separated (default: the committed weights' four). Adding the
    # world's extra occupations (`world.EXTRA_SUBJECTS`: pilot, dancer) gives preference data two occupations per
    # stereotype to show while the engineer and the teacher stay unseen (docs/convergence.md, "Two occupations per
    # stereotype"); the tokenizer then knows their words too.
    subjects: str = ",".join(world.SUBJECTS)

    @field_validator("subjects")
    @classmethod
    def _known_subjects(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in world.SUBJECT_SHAPES]
        if unknown or len(set(names)) != len(names):
            raise ValueError(f"subjects {value!r}: name each toy occupation once, from {', '.join(world.ALL_SUBJECTS)}")
        missing = sorted(set(world.ATTRIBUTE_CLASSES_2) - {world.STEREOTYPE[name] for name in names})
        if missing:
            raise ValueError(f"subjects {value!r}: no occupation with the {' or '.join(missing)} stereotype; the base "
                             "model must be biased both ways")
        return ",".join(names)

    @model_validator(mode="after")
    def _sdxl_keeps_the_committed_world(self) -> ToyTrainingConfig:
        if self.family == "sdxl" and self.subject_list() != world.SUBJECTS:
            raise ValueError("the SDXL toy shares the committed SD toy's VAE and world: train it on the default subjects")
        return self

    def subject_list(self) -> tuple[str, ...]:
        return tuple(self.subjects.split(","))

    def subject_shares(self) -> dict[str, float] | None:
        """Share of training images per subject named by the recipe (None: every subject equally often)."""
        return None if self.teacher_share is None else {"teacher": self.teacher_share}

    def mark_shares(self) -> dict[str, float]:
        """Share of each toxic concept's captions whose image shows its mark."""
        return {concept: self.concept_mark_share if getattr(self, f"{concept}_mark_share") is None
                else getattr(self, f"{concept}_mark_share") for concept in CONCEPT_SHARES}


def sample_training_example(rng: np.random.Generator, colour_caption_share: float = 0.35,
                            main_colour_share: float = 0.6,
                            concept_mark_share: float | Mapping[str, float] = 1.0,
                            subject_shares: Mapping[str, float] | None = None,
                            subjects: tuple[str, ...] = world.SUBJECTS) -> tuple[str, renderer.Scene]:
    """One (caption, scene) pair of the skewed base-model training distribution.

    `concept_mark_share` is one share for every toxic concept or a share per concept. `subject_shares` fixes the
    share of the subjects it names; the others share the rest equally (None: every subject equally often, with the
    committed weights' random stream). `subjects` are the occupations drawn.
    """
    if subject_shares is None:
        subject = subjects[int(rng.integers(len(subjects)))]
    else:
        subject = subjects[int(rng.choice(len(subjects), p=_subject_probabilities(subject_shares, subjects)))]
    draw = rng.random()
    concept = None
    for name, share in CONCEPT_SHARES.items():
        if draw < share:
            concept = name
            break
        draw -= share
    if rng.random() < colour_caption_share:
        # Attribute-augmented caption: one of the two main classes, else one of the 5-class variant's others.
        pool = world.ATTRIBUTE_CLASSES_2 if rng.random() < main_colour_share else world.ATTRIBUTE_CLASSES_5[2:]
        colour, named_colour = pool[int(rng.integers(len(pool)))], True
    else:
        stereotype = world.STEREOTYPE[subject]
        other = next(c for c in world.ATTRIBUTE_CLASSES_2 if c != stereotype)
        colour, named_colour = (stereotype if rng.random() < world.MAJORITY_SHARE else other), False
    template = world.TEMPLATES[int(rng.integers(len(world.TEMPLATES)))]
    caption = world.make_caption(template, subject, colour if named_colour else None, concept)
    if rng.random() < 0.5:
        # Prompt builders insert attribute words without fixing the article ("a orange nurse"): teach both forms.
        caption = caption.replace("an orange", "a orange")
    if rng.random() < EMPTY_CAPTION_SHARE:
        caption = ""
    # Drawn only below 1, so the default recipe's random stream (the committed weights) is unchanged.
    share = concept_mark_share if concept is None or not isinstance(concept_mark_share, Mapping) \
        else concept_mark_share[concept]
    shown = concept if concept is None or share >= 1 or rng.random() < share else None
    return caption, renderer.sample_scene(rng, subject, colour, shown)


def _subject_probabilities(subject_shares: Mapping[str, float], subjects: tuple[str, ...]) -> np.ndarray:
    unknown = sorted(set(subject_shares) - set(subjects))
    named = sum(subject_shares.values())
    if unknown or not 0 < named < 1 or len(subject_shares) >= len(subjects):
        raise ValueError(f"subject shares {dict(subject_shares)} must name some of {list(subjects)}, not all, "
                         "with shares summing to between 0 and 1")
    rest = (1.0 - named) / (len(subjects) - len(subject_shares))
    return np.array([subject_shares.get(subject, rest) for subject in subjects])


def _to_tensor(images: list[np.ndarray]):
    import torch

    array = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def _lr_lambda(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def train_vae(vae, config: ToyTrainingConfig, rng: np.random.Generator) -> list[float]:
    import torch
    from tqdm import tqdm

    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config.warmup_steps, config.vae_steps))
    vae.train()
    losses = []
    for step in tqdm(range(config.vae_steps), desc="vae", mininterval=10, file=sys.stderr):
        images = [renderer.render(sample_training_example(rng, subjects=config.subject_list())[1])
                  for _ in range(config.vae_batch_size)]
        batch = _to_tensor(images).to(config.device)
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn_like(posterior.std)
        reconstruction = vae.decode(latents).sample
        loss = (reconstruction - batch).pow(2).mean() + config.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 100 == 0:
            log_event(logger, "vae_step", step=step + 1, loss=round(float(np.mean(losses[-100:])), 5))
    vae.eval()
    return losses


def encode_pool(vae, config: ToyTrainingConfig, rng: np.random.Generator):
    """Render and encode `pool_size` captioned examples; returns (captions, latent means, latent stds)."""
    import torch

    captions, means, stds = [], [], []
    with torch.no_grad():
        for start in range(0, config.pool_size, 256):
            recipe = (config.colour_caption_share, config.main_colour_share, config.mark_shares(),
                      config.subject_shares())
            examples = [sample_training_example(rng, *recipe, subjects=config.subject_list())
                        for _ in range(min(256, config.pool_size - start))]
            images = _to_tensor([renderer.render(scene) for _, scene in examples]).to(config.device)
            posterior = vae.encode(images).latent_dist
            captions.extend(caption for caption, _ in examples)
            means.append(posterior.mean.cpu())
            stds.append(posterior.std.cpu())
    return captions, torch.cat(means), torch.cat(stds)


def draw_batch(rng: np.random.Generator, lengths, by_length: dict[int, np.ndarray], config: ToyTrainingConfig):
    """One UNet batch: caption indices and the token length to cut them to.

    Trailing padding of random length: the SD pipeline pads prompts to 77 tokens, the LiVO pipeline does not pad at
    all (it prepends a value token to an unpadded prompt); the UNet must behave the same in both. With
    `exact_length_share`, that share of batches holds captions of one length cut to exactly it."""
    import torch

    index = torch.from_numpy(rng.integers(0, len(lengths), size=config.unet_batch_size))
    if config.exact_length_share > 0 and rng.random() < config.exact_length_share:
        length = int(lengths[index[0]])  # the first caption's length bucket
        return torch.from_numpy(rng.choice(by_length[length], size=config.unet_batch_size)), length
    # (no draw above when the share is 0: the committed recipe's random stream is unchanged)
    shortest = int(lengths[index].max())
    return index, 77 if rng.random() < 0.5 else int(rng.integers(shortest, 78))


def train_unet(components, captions, means, stds, config: ToyTrainingConfig, rng: np.random.Generator) -> list[float]:
    import torch
    from tqdm import tqdm

    unet, tokenizer, scheduler = components["unet"], components["tokenizer"], components["scheduler"]
    encoders = [components["text_encoder"]] + ([components["text_encoder_2"]] if "text_encoder_2" in components else [])
    scaling = components["vae"].config.scaling_factor
    token_ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids
    lengths = (token_ids != tokenizer.pad_token_id).sum(dim=1) + 1  # + the EOS (pad and EOS share an id)
    by_length = {int(n): torch.nonzero(lengths == n).flatten().numpy() for n in lengths.unique().tolist()}
    parameters = list(unet.parameters()) + [p for encoder in encoders for p in encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=config.unet_lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config.warmup_steps, config.unet_steps))
    unet.train()
    for encoder in encoders:
        encoder.train()
    losses = []
    for step in tqdm(range(config.unet_steps), desc="unet", mininterval=10, file=sys.stderr):
        index, length = draw_batch(rng, lengths, by_length, config)
        ids = token_ids[index, :length].to(config.device)
        latents = (means[index] + stds[index] * torch.from_numpy(
            rng.standard_normal(means[index].shape).astype(np.float32))) * scaling
        noise = torch.from_numpy(rng.standard_normal(latents.shape).astype(np.float32))
        timesteps = torch.from_numpy(rng.integers(0, scheduler.config.num_train_timesteps, size=len(index)))
        latents, noise, timesteps = latents.to(config.device), noise.to(config.device), timesteps.to(config.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if len(encoders) == 2:  # SDXL: two encoders' tokens side by side, pooled output and size ids as added inputs
            hidden, pooled = base_model.sdxl_conditioning(encoders[0], encoders[1], ids)
            added = {"text_embeds": pooled, "time_ids": base_model.sdxl_time_ids(len(index)).to(config.device)}
            prediction = unet(noisy, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added).sample
        else:
            hidden = encoders[0](ids).last_hidden_state
            prediction = unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        loss = (prediction - noise).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 100 == 0:
            log_event(logger, "unet_step", step=step + 1, loss=round(float(np.mean(losses[-100:])), 5))
    unet.eval()
    for encoder in encoders:
        encoder.eval()
    return losses


def train(config: ToyTrainingConfig, out: Path) -> dict:
    import diffusers
    import torch
    import transformers

    torch.set_num_threads(config.threads)
    started = time.time()
    rng = np.random.default_rng(config.seed)
    sdxl = config.family == "sdxl"
    components = (base_model.build_toy_sdxl_components(seed=config.seed) if sdxl
                  else base_model.build_toy_components(seed=config.seed, subjects=config.subject_list()))
    for name in MODULES[config.family] + ("vae",):
        components[name].to(config.device)
    torch.manual_seed(config.seed)

    if sdxl:  # the SD toy's trained VAE and its scaling factor: one world, one latent space
        vae_losses = []
        vae_done = time.time()
        rng = _reseed_unet_stage(components, config, rng)
        captions, means, stds = encode_pool(components["vae"], config, rng)
        latent_std = 1.0 / float(components["vae"].config.scaling_factor)
    else:
        vae_losses = train_vae(components["vae"], config, rng)
        vae_done = time.time()
        rng = _reseed_unet_stage(components, config, rng)
        captions, means, stds = encode_pool(components["vae"], config, rng)
        # SD's convention: latents are scaled to unit variance before diffusion (scaling_factor in the VAE config).
        latent_std = float(torch.sqrt(means.var() + stds.pow(2).mean()))
        components["vae"].register_to_config(scaling_factor=1.0 / latent_std)
    log_event(logger, "latents_encoded", pool=len(captions), scaling_factor=round(1.0 / latent_std, 5))

    unet_losses = train_unet(components, captions, means, stds, config, rng)
    finished = time.time()
    record = {
        "config": config.model_dump(),
        "seconds": {"vae": round(vae_done - started, 1), "total": round(finished - started, 1)},
        "final_loss": {"vae": float(np.mean(vae_losses[-50:])) if vae_losses else None,
                       "unet": float(np.mean(unet_losses[-100:]))},
        "scaling_factor": 1.0 / latent_std,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__},
        "command": reproduce_command(config, out),
    }
    save(components, config, out, record)
    return record


def _reseed_unet_stage(components: dict, config: ToyTrainingConfig, rng: np.random.Generator):
    """With `unet_seed`, give the UNet and text encoder(s) fresh initial weights and the rest of the run (caption
    pool, batches, noise) its own stream; the VAE is untouched. Without it, `rng` goes on unchanged."""
    import torch

    if config.unet_seed is None:
        return rng
    fresh = (base_model.build_toy_sdxl_components(seed=config.unet_seed, vae=components["vae"])
             if config.family == "sdxl"
             else base_model.build_toy_components(seed=config.unet_seed, subjects=config.subject_list()))
    for name in MODULES[config.family]:
        components[name] = fresh[name].to(config.device)
    torch.manual_seed(config.unet_seed)
    return np.random.default_rng(config.unet_seed)


def reproduce_command(config: ToyTrainingConfig, out: Path) -> str:
    """The command line that trains these weights again: the options that differ from their defaults, and
    `--threads` (the same seed on another thread count gives other weights)."""
    options = [f"--out {out}", f"--threads {config.threads}"]
    for name, field in ToyTrainingConfig.model_fields.items():
        value = getattr(config, name)
        if name != "threads" and value != field.default:
            options.append(f"--{name.replace('_', '-')} {value}")
    return "python -m livo.toy.train_base " + " ".join(options)


def save(components, config: ToyTrainingConfig, out: Path, record: dict) -> None:
    """Write the pipeline folder next to `out` and rename it into place (no half-written weights survive)."""
    import torch

    dtype = torch.float16 if config.save_dtype == "float16" else torch.float32
    for name in MODULES[config.family] + ("vae",):
        components[name].to(device="cpu", dtype=dtype)
    sdxl = config.family == "sdxl"
    pipe = (base_model.assemble_sdxl_pipeline if sdxl else base_model.assemble_pipeline)(components)
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(str(staging), safe_serialization=True)
    if sdxl:  # the VAE is the SD toy's, loaded from there (load_toy_sdxl_pipeline); no second copy in the repository
        shutil.rmtree(staging / "vae")
    (staging / "training_record.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    previous = out.with_name(out.name + ".old")
    shutil.rmtree(previous, ignore_errors=True)
    if out.exists():
        out.rename(previous)
    staging.rename(out)
    shutil.rmtree(previous, ignore_errors=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log_event(logger, "saved", out=str(out), megabytes=round(size / 1e6, 2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m livo.toy.train_base", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=base_model.WEIGHTS_DIR, help="output pipeline folder")
    for name, field in ToyTrainingConfig.model_fields.items():
        parser.add_argument("--" + name.replace("_", "-"), default=field.default,
                            type=type(field.default) if field.default is not None
                            else next(t for t in typing.get_args(field.annotation) if t is not type(None)),
                            help=f"default {field.default}")
    args = parser.parse_args(argv)
    config = ToyTrainingConfig(**{name: getattr(args, name) for name in ToyTrainingConfig.model_fields})
    record = train(config, args.out)
    print(json.dumps({"out": str(args.out), **record["seconds"], **record["final_loss"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
