"""The toy base model: the classes of Stable Diffusion v1.5, built from small configs, and its committed weights.

`build_toy_components(seed)` makes fresh (random) modules of the exact SD classes — `AutoencoderKL`,
`UNet2DConditionModel`, `CLIPTextModel`, `CLIPTokenizer` (a byte-level BPE vocabulary built here, no hub) and a
diffusers scheduler — and `load_toy_pipeline()` loads the trained ones committed under `livo/toy/weights/` (written by
`python -m livo.toy.train_base --out livo/toy/weights`) as a `diffusers.StableDiffusionPipeline`, safetensors only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from livo.errors import LivoError
from livo.toy import world

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
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


def build_tokenizer():
    """The toy world's `CLIPTokenizer` (every word of `world.caption_words()` is a single token)."""
    from transformers import CLIPTokenizer

    vocab, merges = build_bpe_vocab(world.caption_words())
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MODEL_MAX_LENGTH)


def build_toy_components(seed: int = 0) -> dict[str, Any]:
    """Fresh, randomly initialised components of the toy model (seeded), keyed like `StableDiffusionPipeline`'s."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer()
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
