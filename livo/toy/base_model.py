"""The toy base models: the classes of Stable Diffusion v1.5 (and of SDXL), built from small configs, and their weights.

`build_toy_components(seed)` makes fresh (random) modules of the exact SD classes — `AutoencoderKL`,
`UNet2DConditionModel`, `CLIPTextModel`, `CLIPTokenizer` (a byte-level BPE vocabulary built here, no hub) and a
diffusers scheduler — and `load_toy_pipeline()` loads the trained ones committed under `livo/toy/weights/` (written by
`python -m livo.toy.train_base --out livo/toy/weights`) as a `diffusers.StableDiffusionPipeline`, safetensors only.

`build_toy_sdxl_components(seed)` does the same for the SDXL architecture (issue 18): two text encoders
(`CLIPTextModel` and `CLIPTextModelWithProjection`, whose penultimate hidden states are concatenated into 128-wide
tokens and whose projected pooled output conditions the UNet with the size/crop time ids) and a UNet with SDXL's
`text_time` added conditions. It shares the SD toy's trained VAE — the same world in the same latent space — so
`python -m livo.toy.train_base --family sdxl --out livo/toy/weights_sdxl` trains only the UNet and the two encoders, and
`load_toy_sdxl_pipeline()` returns a `diffusers.StableDiffusionXLPipeline`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from livo.errors import LivoError
from livo.toy import world

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SDXL_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights_sdxl"
# The six-occupation SD toy (issue 15; docs/convergence.md, "Lower mark shares"): the pilot and the dancer too
SIX_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights_six"
MODEL_MAX_LENGTH = 77  # like CLIP's: the LiVO pipeline truncates prompts to 76 tokens to make room for the value token
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": MODEL_MAX_LENGTH,
    "projection_dim": 64,
    "hidden_act": "quick_gelu",
}
# 32x32 RGB <-> 4x8x8 latents (two 2x downsamplings).
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": 32,
    "act_fn": "silu",
}
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    # 8x8 -> 4x4 -> 2x2; cross-attention at 8x8 and 4x4 (where subject, colour and marks are decided).
    "block_out_channels": [48, 96, 96],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "cross_attention_dim": TEXT_ENCODER_CONFIG["hidden_size"],
    "attention_head_dim": 8,
    "norm_num_groups": 16,
}
# SDXL's conditioning at toy size: tokens are the two encoders' penultimate hidden states side by side (64 + 64), and
# the added embedding reads the second encoder's projected pooled output (64) and six size/crop ids (6 x 8).
SDXL_TIME_EMBED_DIM = 8
UNET_SDXL_CONFIG: dict[str, Any] = {
    **UNET_CONFIG,
    "cross_attention_dim": 2 * TEXT_ENCODER_CONFIG["hidden_size"],
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": SDXL_TIME_EMBED_DIM,
    "projection_class_embeddings_input_dim": 6 * SDXL_TIME_EMBED_DIM + TEXT_ENCODER_CONFIG["projection_dim"],
}
# The training noise schedule (DDPM, linear betas: at t=999 almost no signal is left, which tiny latents need).
NOISE_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}


def build_bpe_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style byte-level BPE vocabulary in which every word of `words` is one token.

    Base symbols are the 256 byte characters, alone and with the end-of-word marker `</w>` (so any text still
    tokenises, letter by letter); merges are learnt greedily (most frequent pair first, ties broken alphabetically)
    until each word is a single symbol — standard BPE training, so encoding replays exactly these merges.
    """
    from livo.tokenization import bytes_to_unicode, learn_bpe_merges

    byte_chars = list(bytes_to_unicode().values())
    vocab_list = [BOS_TOKEN, EOS_TOKEN] + byte_chars + [c + "</w>" for c in byte_chars]
    merges = learn_bpe_merges(sorted(set(words)))
    for left, right in merges:
        if left + right not in vocab_list:
            vocab_list.append(left + right)
    return {token: i for i, token in enumerate(vocab_list)}, merges


def build_tokenizer(subjects: tuple[str, ...] = world.SUBJECTS):
    """The toy world's `CLIPTokenizer` (every word of `world.caption_words(subjects)` is a single token)."""
    from transformers import CLIPTokenizer

    vocab, merges = build_bpe_vocab(world.caption_words(subjects))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MODEL_MAX_LENGTH)


def build_toy_components(seed: int = 0, subjects: tuple[str, ...] = world.SUBJECTS) -> dict[str, Any]:
    """Fresh, randomly initialised components of the toy model (seeded), keyed like `StableDiffusionPipeline`'s; the
    tokenizer knows the words of `subjects`."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer(subjects)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TEXT_ENCODER_CONFIG,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config)
    vae = AutoencoderKL(**VAE_CONFIG)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    scheduler = DDPMScheduler(**NOISE_SCHEDULE, clip_sample=False)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "unet": unet, "scheduler": scheduler}


def build_toy_sdxl_components(seed: int = 0, vae=None) -> dict[str, Any]:
    """Fresh SDXL-architecture components (seeded), keyed like `StableDiffusionXLPipeline`'s. `vae` defaults to the
    SD toy's trained VAE (loaded from `WEIGHTS_DIR`), so both toy models draw in one latent space."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tokenizer()
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                 **TEXT_ENCODER_CONFIG)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    unet = UNet2DConditionModel(**UNET_SDXL_CONFIG)
    if vae is None:
        vae = load_toy_pipeline().vae
    scheduler = DDPMScheduler(**NOISE_SCHEDULE, clip_sample=False)
    return {"tokenizer": tokenizer, "tokenizer_2": build_tokenizer(), "text_encoder": text_encoder,
            "text_encoder_2": text_encoder_2, "vae": vae, "unet": unet, "scheduler": scheduler}


def sdxl_time_ids(batch: int, resolution: int = 32):
    """SDXL's added time ids for an uncropped `resolution`² image: (original h, w, crop top, left, target h, w)."""
    import torch

    return torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32).repeat(batch, 1)


def sdxl_conditioning(text_encoder, text_encoder_2, input_ids):
    """`(tokens [B, L, 128], pooled [B, 64])` as `StableDiffusionXLPipeline.encode_prompt` builds them: both encoders'
    penultimate hidden states side by side, and the second encoder's projected pooled output."""
    import torch

    first = text_encoder(input_ids, output_hidden_states=True)
    second = text_encoder_2(input_ids, output_hidden_states=True)
    return torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1), second.text_embeds


def sampling_scheduler(training_scheduler_config: dict[str, Any] | None = None):
    """DPM-Solver++ (the paper's sampler) on the training noise schedule; it never clips samples (see ENVIRONMENT.md's
    DDIM clip_sample trap)."""
    from diffusers import DPMSolverMultistepScheduler

    config = dict(NOISE_SCHEDULE)
    config.update({k: v for k, v in (training_scheduler_config or {}).items() if k in NOISE_SCHEDULE})
    return DPMSolverMultistepScheduler(**config, algorithm_type="dpmsolver++", solver_order=2, steps_offset=1)


def assemble_pipeline(components: dict[str, Any]):
    """A `StableDiffusionPipeline` from toy components (no safety checker: the toy judges measure toxicity)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"],
        unet=components["unet"],
        scheduler=components.get("sampling_scheduler") or sampling_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assemble_sdxl_pipeline(components: dict[str, Any]):
    """A `StableDiffusionXLPipeline` from toy SDXL components. The empty prompt is encoded like any other (the toy
    was trained on empty captions for guidance), not replaced by zeros as SDXL's default does."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=components["vae"], text_encoder=components["text_encoder"], text_encoder_2=components["text_encoder_2"],
        tokenizer=components["tokenizer"], tokenizer_2=components["tokenizer_2"], unet=components["unet"],
        scheduler=components.get("sampling_scheduler") or sampling_scheduler(),
        force_zeros_for_empty_prompt=False, add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def trained_subjects(weights_dir: str | Path | None = None) -> tuple[str, ...]:
    """The occupations a toy base model was trained on (its training record's `subjects`; records written before the
    recipe named them, the committed weights' among them, trained on `world.SUBJECTS`)."""
    record = Path(weights_dir if weights_dir is not None else WEIGHTS_DIR) / "training_record.json"
    subjects = json.loads(record.read_text()).get("config", {}).get("subjects") if record.is_file() else None
    return tuple(subjects.split(",")) if subjects else world.SUBJECTS


def load_toy_sdxl_pipeline(device: str = "cpu", dtype=None, weights_dir: str | Path | None = None):
    """The trained toy SDXL base model as a `diffusers.StableDiffusionXLPipeline` (safetensors only; its VAE is the SD
    toy's, loaded from `WEIGHTS_DIR`)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    path = Path(weights_dir) if weights_dir is not None else SDXL_WEIGHTS_DIR
    if not (path / "model_index.json").is_file():
        raise LivoError(f"toy SDXL base-model weights not found in {path}: run `python -m livo.toy.train_base --family "
                        f"sdxl --out {path}` (about 15 minutes on 2 CPU cores)")
    vae = load_toy_pipeline(dtype=dtype).vae
    record = path / "training_record.json"
    if record.is_file():
        # The VAE's weights are shared, but its scaling factor is recomputed from each SD recipe's captioned pool; the
        # UNet here was trained on latents scaled by the factor in its own record.
        vae.register_to_config(scaling_factor=json.loads(record.read_text())["scaling_factor"])
    pipe = StableDiffusionXLPipeline.from_pretrained(str(path), vae=vae, dtype=dtype or torch.float32,
                                                     use_safetensors=True, local_files_only=True,
                                                     add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_toy_pipeline(device: str = "cpu", dtype=None, weights_dir: str | Path | None = None):
    """The trained toy base model as a `diffusers.StableDiffusionPipeline` (safetensors only).

    `dtype` defaults to float32. Raises `LivoError` when the weights are missing, naming the command that makes them.
    """
    import torch
    from diffusers import StableDiffusionPipeline

    path = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    if not (path / "model_index.json").is_file():
        raise LivoError(
            f"toy base-model weights not found in {path}: run `python -m livo.toy.train_base --out {path}` "
            "(about 15 minutes on 2 CPU cores)"
        )
    pipe = StableDiffusionPipeline.from_pretrained(
        str(path),
        dtype=dtype or torch.float32,
        use_safetensors=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
