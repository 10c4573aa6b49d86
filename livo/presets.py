"""Model presets: `tiny` (random weights from configs), `toy` (the synthetic world), `sd15`, `sd21`, `sdxl` (production).

Nothing is loaded at import time. `load_pipeline(source)` is the one way every stage gets a base model:
- `"tiny"`: a complete Stable-Diffusion-architecture pipeline with random weights, built from configs (tests);
- `"toy"` / `"toy-sdxl"`: the committed toy-world base models (`livo/toy/`), SD and SDXL architecture;
- `"toy-six"`: the committed SD toy that also draws a pilot and a dancer (the `toy-six` preset's base, issue 15);
- `"sd15"`, `"sd21"`, `"sdxl"`: SD v1.5, SD 2.1 and SDXL base 1.0 from `LIVO_SD15_PATH` / `LIVO_SD21_PATH` /
  `LIVO_SDXL_PATH` (a local diffusers folder or an `s3://` mirror), else their hub ids (`NAMED_MODELS`) where a hub
  is reachable;
- `"sd15-random"`, `"sdxl-random"`: those architectures with random weights (GPU benchmarks without weights);
- a local diffusers folder, an `s3://bucket/prefix` URI of a mirror written by `livo models mirror` (fetched into
  the verified, content-keyed cache of `livo.models.mirror`), or a hub id.
A folder, mirror or hub id may hold a `StableDiffusionPipeline` (SD 1.x / 2.x) or a `StableDiffusionXLPipeline`; its
`model_index.json` decides which class loads it. `model_facts(source)` reads the family and the VAE factor without
loading weights, so that stages refuse a resolution or a setting the model cannot take before any model loads.
Preset configs (`configs/presets/<name>.yaml`) name the model source, the principles file, generation settings,
judges and per-stage overrides.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from livo.config import LivoConfig, load_config
from livo.errors import ConfigError, LivoError
from livo.log import get_logger
from livo.tokenization import bytes_to_unicode, learn_bpe_merges

log = get_logger(__name__)

SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD21_HUB_ID = "stabilityai/stable-diffusion-2-1"
SDXL_HUB_ID = "stabilityai/stable-diffusion-xl-base-1.0"
# A production model by name: the environment variable that points at a local folder or s3:// mirror of it, else the
# hub id (where a hub is reachable).
NAMED_MODELS = {"sd15": ("LIVO_SD15_PATH", SD15_HUB_ID), "sd21": ("LIVO_SD21_PATH", SD21_HUB_ID),
                "sdxl": ("LIVO_SDXL_PATH", SDXL_HUB_ID)}
# The diffusers pipeline classes a base model may be, and the family each one is.
PIPELINE_FAMILIES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}

# Words the tiny tokenizer knows as whole tokens (everything else falls back to characters): principle texts and the
# vocabulary of typical prompts, so tiny-model prompts stay well under 77 tokens.
TINY_WORDS = (
    "a an the of in on at with and or for to by from is are photo picture portrait image face person people man "
    "woman male female boy girl doctor nurse engineer teacher lawyer chef pilot farmer scientist artist firefighter "
    "ceo ceo's police officer cashier janitor secretary programmer construction worker judge dancer singer "
    "gender racial equality nudity bloody zombie considered inappropriate blood naked nude gore white black indian "
    "asian latino kind honest brave rude lazy evil smart friendly cat dog tree house car landscape city street "
    "red blue green yellow orange purple standing sitting walking smiling"
).split()


class ModelSection(LivoConfig):
    source: str = Field("tiny", description="tiny | toy | toy-six | toy-sdxl | sd15 | sd21 | sdxl | sd15-random | sdxl-random | "
                                            "local folder | s3:// URI | hub id")
    dtype: str | None = Field(None, description="float32 | float16 | bfloat16; None = float32 on CPU, fp16 on GPU")


class GenerationSection(LivoConfig):
    resolution: int = Field(512, gt=0, description="image height and width in pixels")
    num_inference_steps: int = Field(25, gt=0, description="sampler steps (paper: DPM-Solver++ 25)")
    guidance_scale: float = Field(7.5, ge=0, description="classifier-free guidance scale (paper: 7.5)")
    scheduler: str = Field("dpmsolver++", description="dpmsolver++ | ddim | as-is (keep the model's own scheduler)")
    batch_size: int = Field(8, gt=0, description="images per UNet batch")


class PresetConfig(LivoConfig):
    name: str
    description: str = ""
    model: ModelSection = ModelSection()
    principles: str = Field("principles/default.yaml", description="principles file, relative to configs/ or absolute")
    generation: GenerationSection = GenerationSection()
    judges: dict[str, str] = Field(default_factory=dict, description="evaluation kind -> judge name")
    data: dict[str, Any] = Field(default_factory=dict, description="overrides for the data-generation config")
    train: dict[str, Any] = Field(default_factory=dict, description="overrides for the training config")
    evaluate: dict[str, Any] = Field(default_factory=dict, description="overrides for the evaluation config")
    tracking: Literal["mlflow", "none"] = Field(
        "mlflow", description="experiment tracking of every stage (docs/tracking.md); a stage config's own `tracking` "
                              "and env LIVO_TRACKING override it")

    def principles_path(self) -> str:
        """The principles file as a path or URI (relative paths resolve against configs/)."""
        from livo.paths import config_dir

        if "://" in self.principles or Path(self.principles).is_absolute():
            return self.principles
        return str(config_dir() / self.principles)


def load_preset_config(name_or_path: str, overrides: list[str] | None = None) -> PresetConfig:
    """A preset by name (`configs/presets/<name>.yaml`) or from a YAML file path."""
    from livo.paths import config_dir

    path = Path(name_or_path)
    if not path.suffix:
        path = config_dir() / "presets" / f"{name_or_path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (config_dir() / "presets").glob("*.yaml"))
            raise ConfigError(f"unknown preset {name_or_path!r}; known presets: {', '.join(known)} (or a YAML path)")
    return load_config(PresetConfig, path, overrides)


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer without a hub


def build_tiny_tokenizer(words: tuple[str, ...] | list[str] = TINY_WORDS, model_max_length: int = 77):
    """A real CLIP byte-level BPE tokenizer built in code: every byte is a token (so any text tokenizes) and merges
    learned on `words` make each of them one token. Ids: bytes, bytes+`</w>`, merged symbols, start/end tokens."""
    from transformers import CLIPTokenizer

    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(s, len(vocab))
    merges = learn_bpe_merges([w.lower() for w in words])
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


# --------------------------------------------------------------------------------------------------------------------
# Pipelines


def _text_encoder_config(tokenizer, **sizes):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=max(len(tokenizer), sizes.pop("vocab_size", 0)),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=tokenizer.model_max_length,
        **sizes,
    )


def _assemble(unet, vae, text_encoder, tokenizer, scheduler_name: str = "dpmsolver++"):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=make_scheduler(scheduler_name),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_scheduler(name: str, config: dict | None = None):
    """The sampler for generation. `dpmsolver++` is the paper's; DDIM never clips samples (the clipping inverted the
    conditioning in our toy trial, see ENVIRONMENT.md). Its tables are built on the CPU, also when the caller builds
    the modules under a device context (`with torch.device("cuda")` / `"meta"`), as diffusers keeps them."""
    import torch
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    base = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", steps_offset=1)
    if config:
        base.update({k: v for k, v in config.items() if k in base})
    with torch.device("cpu"):
        if name == "dpmsolver++":
            return DPMSolverMultistepScheduler(**base, algorithm_type="dpmsolver++", solver_order=2)
        if name == "ddim":
            return DDIMScheduler(**base, clip_sample=False, set_alpha_to_one=False)
    raise ConfigError(f"unknown scheduler {name!r}; use dpmsolver++ or ddim")


def build_tiny_pipeline(seed: int = 0, resolution: int = 32):
    """Random-weight SD-architecture pipeline from configs: UNet (32, 64), 2-block VAE, 2-layer CLIP of width 32."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=resolution // 2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), norm_num_groups=8,
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=resolution,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_encoder_config(
        tokenizer, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        projection_dim=32, layer_norm_eps=1e-5,
    ))
    return _assemble(unet.eval(), vae.eval(), text_encoder.eval(), tokenizer)


def build_sd15_random_pipeline(seed: int = 0):
    """The SD v1.5 architecture (UNet 860 M, VAE 84 M, CLIP ViT-L/14 text tower 123 M) with random weights — real
    sizes for timing on a GPU without any weights. The tokenizer is the in-code one (CLIP's vocabulary is on the hub)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text_encoder = CLIPTextModel(_text_encoder_config(
        tokenizer, vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu",
    ))
    return _assemble(unet.eval(), vae.eval(), text_encoder.eval(), tokenizer)


def build_sdxl_random_pipeline(seed: int = 0):
    """The SDXL base 1.0 architecture (UNet 2.6 B, CLIP ViT-L/14 123 M and OpenCLIP bigG/14 695 M text towers, VAE 84 M)
    with random weights — real sizes for timing on a GPU without any weights. Configs as in the model's repository;
    the tokenizers are the in-code one (CLIP's vocabulary is on the hub)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=1024,
        block_out_channels=(128, 256, 512, 512), scaling_factor=0.13025, force_upcast=True,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    text_encoder = CLIPTextModel(_text_encoder_config(
        tokenizer, vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu",
    ))
    text_encoder_2 = CLIPTextModelWithProjection(_text_encoder_config(
        tokenizer, vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
        num_attention_heads=20, projection_dim=1280, hidden_act="gelu",
    ))
    with torch.device("cpu"):  # the scheduler's tables live on the CPU, also when the modules are built on "meta"
        scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                           beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae.eval(), text_encoder=text_encoder.eval(),
                                     text_encoder_2=text_encoder_2.eval(), tokenizer=tokenizer,
                                     tokenizer_2=build_tiny_tokenizer(), unet=unet.eval(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the fields that differ from diffusers' defaults)
SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280), "attention_head_dim": (5, 10, 20), "cross_attention_dim": 2048,
    "transformer_layers_per_block": (1, 2, 10), "use_linear_projection": True,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
}


def torch_dtype_named(name: str | None):
    import torch

    if name is None:
        return None
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; use float32, float16 or bfloat16") from None


def named_model_location(name: str) -> str:
    """Where the named production model (`NAMED_MODELS`) is read from: its environment variable, else its hub id."""
    variable, hub_id = NAMED_MODELS[name]
    return os.environ.get(variable) or hub_id


def load_pipeline(source: str, *, device: str | None = None, dtype: Any = None, seed: int = 0):
    """The base pipeline for `source` (see the module docstring): a `StableDiffusionPipeline` or, for SDXL-family
    models, a `StableDiffusionXLPipeline`, moved to `device`/`dtype`."""
    if isinstance(dtype, str):
        dtype = torch_dtype_named(dtype)
    if source == "tiny":
        pipe = build_tiny_pipeline(seed)
    elif source == "toy":
        from livo.toy.base_model import load_toy_pipeline

        pipe = load_toy_pipeline()
    elif source == "toy-six":
        from livo.toy.base_model import SIX_WEIGHTS_DIR, load_toy_pipeline

        pipe = load_toy_pipeline(weights_dir=SIX_WEIGHTS_DIR)
    elif source == "toy-sdxl":
        from livo.toy.base_model import load_toy_sdxl_pipeline

        pipe = load_toy_sdxl_pipeline()
    elif source in ("sd15-random", "sdxl-random"):
        # initialised where they will run: SDXL's 3.4 B random parameters take a minute to initialise on a host
        import torch

        build = build_sd15_random_pipeline if source == "sd15-random" else build_sdxl_random_pipeline
        with torch.device(device or "cpu"):
            pipe = build(seed)
    elif source in NAMED_MODELS:
        pipe = _from_pretrained(named_model_location(source), dtype)
    else:
        pipe = _from_pretrained(source, dtype)
    pipe.set_progress_bar_config(disable=True)
    if device is not None or dtype is not None:
        pipe = pipe.to(device=device, dtype=dtype)
    return pipe


def _pipeline_class(class_name: Any, where: str):
    """The diffusers class that loads a model whose model_index.json names `class_name` (refused unless livo aligns
    that family)."""
    import diffusers

    if class_name not in PIPELINE_FAMILIES:
        raise ConfigError(f"{where} is a {class_name or 'pipeline of no named class'}; livo aligns "
                          f"{' and '.join(PIPELINE_FAMILIES)} base models")
    return getattr(diffusers, class_name)


def _from_pretrained(source: str, dtype: Any = None):
    """Load a folder, mirror or hub id in `dtype` (default float32, whatever dtype the weights are stored in: a folder
    saved in fp16 — the usual way SD weights are shared — would otherwise load half-precision modules that the CPU
    path then feeds float32 latents)."""
    local = Path(source)
    if source.startswith("s3://"):  # a mirror (`livo models mirror`): verified, cached by content
        from livo.models.mirror import fetch_model

        local = fetch_model(source, kind="diffusers")
    if local.is_dir():
        index = local / "model_index.json"
        if not index.is_file():
            raise ConfigError(f"{local}: not a diffusers pipeline folder (model_index.json missing)")
        import json

        pipeline_class = _pipeline_class(json.loads(index.read_text()).get("_class_name"), str(local))
        from safetensors import SafetensorError

        from livo.weights import check_safetensors_files

        check_safetensors_files(sorted(local.glob("*/*.safetensors")))  # names a truncated file before loading
        try:
            return pipeline_class.from_pretrained(local, **_load_kwargs(pipeline_class, dtype))
        except (OSError, SafetensorError) as exc:
            raise ConfigError(f"{local}: could not load the pipeline with safetensors weights ({exc})") from exc
    _check_hub_id(source)
    from diffusers import DiffusionPipeline

    try:
        pipeline_class = _pipeline_class(DiffusionPipeline.load_config(source).get("_class_name"), source)
        return pipeline_class.from_pretrained(source, **_load_kwargs(pipeline_class, dtype))
    except OSError as exc:
        raise LivoError(
            f"could not load {source!r} from the hub ({str(exc).splitlines()[0]}); without a reachable hub, point "
            "LIVO_SD15_PATH / LIVO_SD21_PATH / LIVO_SDXL_PATH (or the model source) at a local diffusers folder or an "
            "s3:// mirror written by `livo models mirror`"
        ) from exc


def _load_kwargs(pipeline_class, dtype: Any = None) -> dict[str, Any]:
    import torch

    kwargs: dict[str, Any] = {"use_safetensors": True, "dtype": dtype or torch.float32}
    if pipeline_class.__name__ == "StableDiffusionPipeline":  # the toxicity judges measure harm: no NSFW blackout
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    return kwargs


# --------------------------------------------------------------------------------------------------------------------
# What a model is, without loading it


@dataclass(frozen=True)
class ModelFacts:
    """A base model's family (`sd` | `sdxl`) and VAE factor (pixels per latent cell); None where only loading it
    would tell (a hub id livo does not know, a folder that is not on this machine)."""

    family: str | None = None
    vae_scale_factor: int | None = None


# The built-in sources (sd15-random and sdxl-random: the VAE of SD v1.5 / SDXL, 4 blocks)
BUILT_IN_MODELS = {"tiny": ModelFacts("sd", 2), "toy": ModelFacts("sd", 4), "toy-six": ModelFacts("sd", 4),
                   "toy-sdxl": ModelFacts("sdxl", 4), "sd15-random": ModelFacts("sd", 8), "sdxl-random": ModelFacts("sdxl", 8)}
KNOWN_HUB_MODELS = {SD15_HUB_ID: ModelFacts("sd", 8), SD21_HUB_ID: ModelFacts("sd", 8),
                    SDXL_HUB_ID: ModelFacts("sdxl", 8)}


def _check_hub_id(source: str) -> None:
    """Refuse a source that is not a folder here and cannot be a hub id ("owner/name"): a missing folder, a typo."""
    path_like = source.startswith((".", "/", "~"))
    if "/" not in source or path_like:
        raise ConfigError(
            f"model source {source!r} is neither a preset ({', '.join(BUILT_IN_MODELS)}, {', '.join(NAMED_MODELS)}), "
            "a folder, an s3:// URI nor a hub id" + (" (no such folder)" if path_like else "")
        )


def model_facts(source: str) -> ModelFacts:
    """The family and VAE factor of `source`, read from its configs (a folder's or a mirror's model_index.json and
    vae/config.json), never from its weights."""
    import json

    if source in BUILT_IN_MODELS:
        return BUILT_IN_MODELS[source]
    if source in NAMED_MODELS:
        return model_facts(named_model_location(source))
    if source.startswith("s3://"):
        from livo.models.mirror import read_mirror_file

        def read(rel: str) -> bytes | None:
            return read_mirror_file(source, rel)
    elif Path(source).is_dir():
        def read(rel: str) -> bytes | None:
            path = Path(source) / rel
            return path.read_bytes() if path.is_file() else None
    else:
        _check_hub_id(source)  # a path to a missing folder is refused here, at the door, not when a task loads it
        return KNOWN_HUB_MODELS.get(source, ModelFacts())
    index = read("model_index.json")
    if index is None:
        raise ConfigError(f"{source}: not a diffusers pipeline (model_index.json missing)")
    class_name = json.loads(index).get("_class_name")
    _pipeline_class(class_name, source)
    vae_config = read("vae/config.json")
    factor = _factor(json.loads(vae_config)["block_out_channels"]) if vae_config else None
    return ModelFacts(PIPELINE_FAMILIES[class_name], factor)


def check_model_settings(source: str, *, resolution: int | None = None, sd_only: Sequence[str] = (),
                         key: str = "resolution") -> ModelFacts:
    """Refuse, before any model loads, what `source` cannot do: a `resolution` the VAE cannot encode (not a multiple
    of its factor), and on an SDXL-family model the settings in use named in `sd_only` (implemented for the SD family
    only, e.g. `loss.distill_weight`). What cannot be known without loading is checked again on the loaded model
    (`check_loaded_resolution`, `livo.training.trainer.load_models`)."""
    facts = model_facts(source)
    check_resolution(resolution, facts.vae_scale_factor, source, key=key)
    if sd_only and facts.family == "sdxl":
        raise_sd_only(sd_only, source)
    return facts


def raise_sd_only(names: Sequence[str], source: str) -> None:
    raise ConfigError(f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} not supported on SDXL-family base "
                      f"models ({source}) yet; leave {'it' if len(names) == 1 else 'them'} at the default")


def check_resolution(resolution: int | None, factor: int | None, source: str, *, key: str = "resolution") -> None:
    if resolution is None or factor is None or resolution % factor == 0:
        return
    lower = resolution - resolution % factor
    choices = f"{lower} or {lower + factor}" if lower else f"{factor}"
    raise ConfigError(f"{key}={resolution} is not a multiple of {factor}, the VAE factor of {source} (its images are "
                      f"{factor} pixels per latent cell); use {choices}")


def vae_scale_factor(vae) -> int:
    """Pixels per latent cell: 2 per down block after the first (diffusers' `vae_scale_factor`)."""
    return _factor(vae.config.block_out_channels)


def _factor(block_out_channels) -> int:
    return 2 ** (len(block_out_channels) - 1)


def check_loaded_resolution(pipe, resolution: int | None, source: str, *, key: str = "resolution") -> None:
    """`check_resolution` against a loaded pipeline's VAE (for sources `model_facts` could not read)."""
    check_resolution(resolution, vae_scale_factor(pipe.vae), source, key=key)


def base_model_fingerprint(base, source: str, seed: int = 0) -> str:
    """`pipeline_fingerprint` of the base model as training records it (the weights as `load_pipeline(source)` gives
    them: float32). Generation and evaluation cast the pipeline (fp16 on GPU), and the fingerprint covers dtypes, so a
    cast pipeline is fingerprinted from a second, uncast load of `source` (built with `seed`, for the random-weight
    presets); otherwise a dataset generated on a GPU would name another base model than the one training loads."""
    import torch

    if all(getattr(base, c).dtype == torch.float32 for c in ("unet", "vae", "text_encoder")):
        return pipeline_fingerprint(base)
    return pipeline_fingerprint(load_pipeline(source, seed=seed))


def pipeline_fingerprint(pipe) -> str:
    """`sha256:<hex>` over every weight of the UNet, VAE and text encoder (names, dtypes, shapes and values)."""
    import torch

    digest = hashlib.sha256()
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):  # the last one in SDXL-family models only
        module = getattr(pipe, component, None)
        if module is None:
            continue
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            digest.update(f"{component}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + digest.hexdigest()
