"""Value-encoder training with DeepSpeed: the LiVO (or Diffusion-DPO) step, checkpoints, preemption, export.

Only the value encoder is trained (it is the DeepSpeed engine's module, with fp32 master weights); the UNet, VAE and
text encoder are frozen, in eval mode, in the compute dtype. One step per micro-batch (LIVO_METHOD §3):
latents (precomputed, or VAE-encoded without autograd) → shared noise ε and timesteps t from this rank's generator →
conditioning with and without the value token → winner and loser through the UNet as one batch, the reference passes
without autograd (`compute_denoising_errors(fused=True)`) → loss → `engine.backward` / `engine.step`.

Order of work in `Trainer.run`: every check of the input (config, world size, dataset, principle-set hash, existing
checkpoints, a probe write of the output) happens before any model is loaded, so bad input fails in seconds with a
one-line error (exit 2 for bad input, 1 for an environment fault such as a read-only volume); a full disk while
saving is one line naming the path and the bytes needed.
SIGTERM sets a flag; at the next step boundary all ranks agree on it, save a checkpoint and exit with
`PREEMPTED_EXIT_CODE`; `resume=true` continues from the latest complete checkpoint with the same data order, noise
and optimizer state, so an interrupted run ends bit-identical to an uninterrupted one (CPU, fixed seed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livo import tracking
from livo.config import flatten
from livo.errors import ConfigError, DataError, LivoError
from livo.log import get_logger, log_event
from livo.presets import vae_scale_factor
from livo.training import checkpoint as ckpt
from livo.training import distributed as dist
from livo.training.config import TrainingConfig

log = get_logger("livo.training")

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: "stopped on request, checkpoint saved, resume me"

# hinge_w_active / hinge_l_active: the share of samples whose hinge term is > 0 (the ones that still get a gradient).
LIVO_STAT_NAMES = ("loss", "theta_w", "ref_w", "theta_l", "ref_l", "hinge_w", "hinge_l", "margin", "implicit_acc",
                   "hinge_w_active", "hinge_l_active")
DPO_STAT_NAMES = ("loss", "theta_w", "ref_w", "theta_l", "ref_l", "margin", "implicit_acc")


# --------------------------------------------------------------------------------------------------------------------
# Planning: everything decided before a model is loaded.


@dataclass
class RunPlan:
    config: TrainingConfig
    env: dist.DistEnv
    device_type: str
    precision: str
    per_device: int
    accumulation: int
    global_batch: int
    ds_config: dict[str, Any]
    output: ckpt.RunOutput

    @property
    def zero_stage(self) -> int:
        return int(self.ds_config.get("zero_optimization", {}).get("stage", 0))


def resolve_device(config: TrainingConfig) -> str:
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=cpu or run on a GPU node")
    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.device


def resolve_precision(config: TrainingConfig, device_type: str) -> str:
    import torch

    if config.precision == "auto":
        if device_type == "cpu":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if config.precision == "fp16" and device_type == "cpu":
        raise ConfigError("precision=fp16 needs a GPU (loss scaling is GPU-only); use precision=bf16 or fp32 on CPU")
    return config.precision


_OWNED_DS_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                  "gradient_clipping")


def build_deepspeed_config(config: TrainingConfig, per_device: int, accumulation: int, global_batch: int,
                           precision: str) -> dict[str, Any]:
    """The DeepSpeed JSON with the values this config owns filled in (batch sizes, clipping, precision)."""
    from livo.paths import config_dir

    if config.deepspeed_config:
        path = Path(config.deepspeed_config)
        if not path.is_absolute() and not path.is_file():
            path = config_dir() / config.deepspeed_config
    else:
        path = config_dir() / "deepspeed" / f"zero{config.zero_stage}.json"
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {path} does not exist; use one of configs/deepspeed/zero{{0,2,3}}.json or "
                          "set zero_stage to 0, 2 or 3")
    try:
        ds_config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    owned = {"train_micro_batch_size_per_gpu": per_device, "gradient_accumulation_steps": accumulation,
             "train_batch_size": global_batch, "gradient_clipping": config.optimizer.max_grad_norm}
    for key in _OWNED_DS_KEYS:
        given = ds_config.get(key, "auto")
        if given != "auto" and given != owned[key]:
            raise ConfigError(f"{path}: {key}={given} conflicts with the training config ({owned[key]}); set it to "
                              "\"auto\" there and choose it in the training config")
    for key in ("optimizer", "scheduler", "fp16", "bf16", "amp"):
        section = ds_config.get(key)
        if section and (key in ("optimizer", "scheduler") or section.get("enabled", False)):
            raise ConfigError(f"{path}: remove the {key!r} section; the optimizer, schedule and precision come from the "
                              "training config (optimizer.*, precision)")
    stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
    if config.deepspeed_config and "zero_stage" in config.model_fields_set and stage != config.zero_stage:
        raise ConfigError(f"{path} sets ZeRO stage {stage} but zero_stage={config.zero_stage}; set only one")
    ds_config.update(owned)
    ds_config["zero_allow_untested_optimizer"] = True  # a torch AdamW: no JIT-built DeepSpeed optimizer
    if precision in ("bf16", "fp16"):
        # Autocast with fp32 master weights; DeepSpeed adds loss scaling for fp16. Gradients are reduced in fp32.
        ds_config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16" if precision == "bf16" else "float16",
                                       "lower_precision_safe_modules": []}
    return ds_config


def plan_run(config: TrainingConfig, env: dist.DistEnv | None = None) -> RunPlan:
    """Validate everything that does not need the dataset or a model. Raises ConfigError on bad input."""
    env = env or dist.read_env()
    device_type = resolve_device(config)
    precision = resolve_precision(config, device_type)
    per_device, accumulation, global_batch = config.batch_layout(env.world_size)
    ds_config = build_deepspeed_config(config, per_device, accumulation, global_batch, precision)
    if not config.dataset:
        raise ConfigError("no dataset given: set dataset=<directory or s3://bucket/prefix> (`livo train --dataset`)")
    check_training_model(config)
    output = ckpt.open_run_output(config.output, config.staging_dir)
    return RunPlan(config=config, env=env, device_type=device_type, precision=precision, per_device=per_device,
                   accumulation=accumulation, global_batch=global_batch, ds_config=ds_config, output=output)


def check_training_model(config: TrainingConfig) -> None:
    """What the base model cannot take, refused before it loads (the family and VAE factor are read from configs)."""
    from livo.presets import check_model_settings

    check_model_settings(config.model, resolution=config.resolution, sd_only=sd_only_settings(config))


def sd_only_settings(config: TrainingConfig) -> list[str]:
    """The settings in use that are implemented for SD-family base models only."""
    names = ["value_tokens"] if config.value_tokens != 1 else []
    if config.value_time_shift:
        names.append("value_time_shift")
    if config.value_token_attention != "prepend":
        names.append("value_token_attention")
    if config.value_token_gain:
        names.append("value_token_gain")
    if config.loss.kind == "livo":
        names += [f"loss.{name}" for name in ("distill_weight", "token_anchor_weight") if getattr(config.loss, name)]
    return names


def open_dataset(config: TrainingConfig):
    """Load and check the preference dataset: it exists, is not empty, has the contract's columns and types, and
    matches the expected principle set (an `InvalidDataError`, exit 2: bad input); a shard whose sha256 differs from
    the manifest is a `DataError` (exit 1: storage damage)."""
    from livo.data.dataset import load_preference_dataset
    from livo.errors import InvalidDataError

    dataset = load_preference_dataset(config.dataset, verify=config.verify_dataset)  # also checks the schema
    if len(dataset) == 0:
        raise InvalidDataError(f"{config.dataset}: the dataset is empty; regenerate it")
    expected = config.expected_principle_set_hash
    if expected and dataset.principle_set_hash != expected:
        raise InvalidDataError(
            f"{config.dataset} was built for principle set {dataset.principle_set_hash}, but the training config "
            f"expects {expected}; regenerate the dataset for the current principles or fix expected_principle_set_hash")
    return dataset


def check_dataset_generator(config: TrainingConfig, dataset, base_fingerprint: str) -> None:
    """LiVO's preference pairs are the base model's own images: a dataset another base model generated is bad input
    (exit 2) unless `allow_other_base_dataset`. Needs the base model's fingerprint, so it runs once the model is
    loaded, before the first step; imported datasets carry no generator hash and are accepted."""
    from livo.errors import InvalidDataError

    generator_hash = dataset.manifest.get("generator_model_hash")
    if not generator_hash or generator_hash == base_fingerprint or config.allow_other_base_dataset:
        return
    raise InvalidDataError(f"{config.dataset} was generated by another base model ({generator_hash[:23]}...) than "
                           f"the one being trained ({config.model}, {base_fingerprint[:23]}...): regenerate the "
                           "dataset with this base model, or set allow_other_base_dataset=true to train on its "
                           "images anyway")


def check_output_writable(plan: RunPlan) -> None:
    """Every rank probes the output (and, for s3://, its node-local staging) with a small write; all ranks raise
    the first problem found, so an unwritable output fails in seconds instead of at the first checkpoint."""
    try:
        plan.output.check_writable()
        problem = None
    except LivoError as exc:
        problem = (type(exc).__name__, str(exc))
    found = [p for p in dist.all_gather_object(problem) if p]
    if found:
        kind, message = found[0]
        raise (ConfigError if kind == "ConfigError" else LivoError)(message)


@contextlib.contextmanager
def disk_full_as_error(what: str, path: Path | str, needed_bytes: int | None = None):
    """Turn a full disk while writing `what` into one line naming `path` and the bytes needed (a `LivoError`);
    what was committed before stays intact (a checkpoint without its commit object is ignored by resume)."""
    from livo.data.dataset import is_out_of_space, out_of_space_error

    try:
        yield
    except (OSError, RuntimeError) as exc:
        if is_out_of_space(exc, path, needed_bytes):
            raise out_of_space_error(what, path, needed_bytes) from None
        raise


def check_resume_state(plan: RunPlan) -> int | None:
    """The step to resume from (None: start fresh). Refuses to overwrite checkpoints without `resume`, and refuses a
    checkpoint written by another configuration or world size. Rank 0 decides; every rank gets its answer."""
    answer: tuple[str, Any]
    if plan.env.is_main:
        try:
            answer = ("ok", _resume_step(plan))
        except LivoError as exc:
            answer = ("error", (type(exc).__name__, str(exc)))
    else:
        answer = ("ok", None)
    answer = dist.broadcast_object(answer)
    if answer[0] == "error":
        kind, message = answer[1]
        raise (ConfigError if kind == "ConfigError" else LivoError)(message)
    return answer[1]


def _resume_step(plan: RunPlan) -> int | None:
    steps = plan.output.complete_steps()
    if not steps:
        return None
    latest = steps[-1]
    if not plan.config.resume:
        raise ConfigError(f"{plan.output.uri} already holds checkpoints (latest: step {latest}); pass --resume to "
                          "continue that run, or choose another output")
    state = plan.output.get_json(f"{ckpt.CHECKPOINTS_DIR}/{ckpt.step_tag(latest)}/{ckpt.TRAINER_STATE_FILE}") or {}
    if state.get("config_fingerprint") != plan.config.fingerprint():
        raise ConfigError(f"checkpoint step {latest} in {plan.output.uri} was written with different training settings "
                          "(model, loss, optimizer, batch, seed or ZeRO stage); resume with the same settings or choose "
                          "another output")
    if state.get("world_size") != plan.env.world_size:
        raise ConfigError(f"checkpoint step {latest} was written by {state.get('world_size')} rank(s) but this run has "
                          f"{plan.env.world_size}; resume with the same number of ranks")
    return latest


# --------------------------------------------------------------------------------------------------------------------
# Models and the step.


@dataclass
class Models:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    value_encoder: Any
    device: Any
    weight_dtype: Any
    base_fingerprint: str
    frozen_digest: str = ""
    text_encoder_2: Any = None  # SDXL-family base models
    tokenizer_2: Any = None


_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def frozen_weights_digest(models: Models) -> str:
    """sha256 over the frozen modules' weights (checked again after training: they must not change)."""
    import torch

    digest = hashlib.sha256()
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(models, name) is None:
            continue
        for key, tensor in sorted(getattr(models, name).state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}.{key}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + digest.hexdigest()


def load_models(config: TrainingConfig, device_type: str, precision: str, local_rank: int) -> Models:
    import torch
    from diffusers import DDPMScheduler
    from diffusers.models.attention_processor import AttnProcessor2_0

    from livo.modeling import ValueEncoder, is_sdxl, vae_needs_fp32, value_encoder_for
    from livo.presets import load_pipeline, pipeline_fingerprint

    device = torch.device("cuda", local_rank) if device_type == "cuda" else torch.device("cpu")
    weight_dtype = getattr(torch, _DTYPES[precision])
    torch.manual_seed(config.seed)
    pipe = load_pipeline(config.model, seed=config.seed)
    fingerprint = pipeline_fingerprint(pipe)
    # The value encoder starts as a copy of the base text encoder (fp32 master weights) unless one is given.
    text_encoder_2 = pipe.text_encoder_2 if is_sdxl(pipe) else None
    if text_encoder_2 is not None and sd_only_settings(config):
        from livo.presets import raise_sd_only

        raise_sd_only(sd_only_settings(config), config.model)
    if config.init_value_encoder:
        value_encoder = ValueEncoder.from_pretrained(config.init_value_encoder)
        value_encoder.check_fits(pipe.text_encoder, pipe.tokenizer, where=f"init_value_encoder {config.init_value_encoder}",
                                 text_encoder_2=text_encoder_2, unet=pipe.unet)
        if getattr(value_encoder, "value_tokens", 1) != config.value_tokens:
            raise ConfigError(f"init_value_encoder {config.init_value_encoder} outputs {value_encoder.value_tokens} "
                              f"value token(s) but value_tokens={config.value_tokens}; set value_tokens to match")
        if (getattr(value_encoder, "time_shift", None) is not None) != config.value_time_shift:
            raise ConfigError(f"init_value_encoder {config.init_value_encoder} "
                              f"{'has a' if not config.value_time_shift else 'has no'} time-embedding head but "
                              f"value_time_shift={str(config.value_time_shift).lower()}; set value_time_shift to match")
        if getattr(value_encoder, "token_attention", "prepend") != config.value_token_attention:
            raise ConfigError(f"init_value_encoder {config.init_value_encoder} was trained with token_attention="
                              f"{getattr(value_encoder, 'token_attention', 'prepend')} but value_token_attention="
                              f"{config.value_token_attention}; set value_token_attention to match")
        if (getattr(value_encoder, "token_gain", None) is not None) != config.value_token_gain:
            raise ConfigError(f"init_value_encoder {config.init_value_encoder} "
                              f"{'has a' if not config.value_token_gain else 'has no'} token gain but "
                              f"value_token_gain={str(config.value_token_gain).lower()}; set value_token_gain to match")
        value_encoder.requires_grad_(True)
    else:
        value_encoder = value_encoder_for(pipe, sdxl_shift_pooled=config.sdxl_shift_pooled,
                                          value_tokens=config.value_tokens, time_shift=config.value_time_shift,
                                          token_attention=config.value_token_attention,
                                          token_gain=config.value_token_gain)
    value_encoder.to(device=device, dtype=torch.float32).train()
    vae_fp32 = vae_needs_fp32(pipe)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, *([text_encoder_2] if text_encoder_2 is not None else [])):
        module.requires_grad_(False)
        module.eval()
        module.to(device=device)
        if weight_dtype != torch.float32 and not (vae_fp32 and module is pipe.vae):
            module.to(dtype=weight_dtype)  # (a same-dtype .to() makes diffusers warn about fp32 modules)
    pipe.unet.set_attn_processor(AttnProcessor2_0())  # SDPA (flash / memory-efficient kernels on GPU)
    if config.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        for encoder_copy in (value_encoder.text_model, getattr(value_encoder, "text_model_2", None)):
            if encoder_copy is not None:
                encoder_copy.gradient_checkpointing_enable()
    unet = torch.compile(pipe.unet) if config.compile else pipe.unet
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    return Models(unet=unet, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                  noise_scheduler=noise_scheduler, value_encoder=value_encoder, device=device,
                  weight_dtype=weight_dtype, base_fingerprint=fingerprint, text_encoder_2=text_encoder_2,
                  tokenizer_2=getattr(pipe, "tokenizer_2", None))


def sample_latents(vae, posterior_parameters, generator):
    """A sample of the VAE posterior `[B, 2C, h, w]` (mean ‖ log-variance, diffusers' `latent_dist.parameters`) in
    the UNet's input space (shifted, scaled). The cached and the pixel path both come here, so the same generator
    state gives the same sample."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    parameters = posterior_parameters.to(device=vae.device, dtype=vae.dtype, non_blocking=True)
    latents = DiagonalGaussianDistribution(parameters).sample(generator=generator)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents.float() - shift) * vae.config.scaling_factor


def encode_latents(vae, pixels, generator):
    """VAE latents in the UNet's input space (scaled), sampled with `generator`, without autograd."""
    import torch

    with torch.no_grad():
        parameters = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.parameters
        return sample_latents(vae, parameters, generator)


def step_loss(models: Models, value_encoder, batch: dict[str, Any], generator, loss_config) -> tuple[Any, Any]:
    """`(loss, stats)` of one micro-batch; `stats` is a detached fp32 vector named by `stat_names(loss_config)`."""
    import torch

    from livo.losses import compute_denoising_errors, diffusion_dpo_loss, livo_loss_terms
    from livo.modeling import training_conditioning

    device = models.device
    if "latent_dist_w" in batch:  # the dataset's posteriors: sampled as encoding the pixels would sample them
        with torch.no_grad():
            latents_w = sample_latents(models.vae, batch["latent_dist_w"], generator)
            latents_l = sample_latents(models.vae, batch["latent_dist_l"], generator)
    else:
        latents_w = encode_latents(models.vae, batch["pixels_w"], generator)
        latents_l = encode_latents(models.vae, batch["pixels_l"], generator)
    noise = torch.randn(latents_w.shape, generator=generator, device=device, dtype=torch.float32)
    timesteps = torch.randint(0, models.noise_scheduler.config.num_train_timesteps, (latents_w.shape[0],),
                              generator=generator, device=device)
    prompt_embeds = batch.get("prompt_embeds")
    if prompt_embeds is not None:
        prompt_embeds = prompt_embeds.to(device=device, dtype=models.weight_dtype, non_blocking=True)
    added = None
    if models.text_encoder_2 is not None:  # SDXL: both encoders, the pooled output and the size ids
        from livo.modeling import sdxl_training_conditioning

        cond_value, cond_plain, added = sdxl_training_conditioning(
            models.text_encoder, models.text_encoder_2, value_encoder, models.tokenizer, batch["prompts"],
            batch["principle_texts"], int(latents_w.shape[-1]) * vae_scale_factor(models.vae),
            tokenizer_2=models.tokenizer_2)
    else:
        cond_value, cond_plain, added = training_conditioning(models.text_encoder, value_encoder, models.tokenizer,
                                                              batch["prompts"], batch["principle_texts"],
                                                              prompt_embeds=prompt_embeds)
    cond_teacher = None
    if loss_config.kind == "livo" and loss_config.distill_weight:
        from livo.modeling import encode_prompts

        with torch.no_grad():
            cond_teacher = encode_prompts(models.text_encoder, models.tokenizer, batch["aligned_prompts"]).to(
                device=device, dtype=cond_plain.dtype)
    errors = compute_denoising_errors(models.unet, models.noise_scheduler, latents_w, latents_l, cond_value,
                                      cond_plain, noise, timesteps, fused=True, cond_teacher=cond_teacher,
                                      added_cond_kwargs=added)
    with torch.no_grad():
        margin = (errors.theta_w - errors.ref_w) - (errors.theta_l - errors.ref_l)
        common = [errors.theta_w.mean(), errors.ref_w.mean(), errors.theta_l.mean(), errors.ref_l.mean()]
    if loss_config.kind == "livo":
        terms = livo_loss_terms(errors.theta_w, errors.ref_w, errors.theta_l, errors.ref_l, beta=loss_config.beta,
                                alpha=loss_config.alpha, gamma1=loss_config.gamma1, gamma2=loss_config.gamma2,
                                paired_violating=loss_config.paired_violating_hinge)
        loss = terms["loss"]
        if loss_config.anchor_weight:
            loss = loss + loss_config.anchor_weight * errors.theta_w.mean()
        if cond_teacher is not None:
            loss = loss + loss_config.distill_weight * errors.distill.mean()
        if loss_config.token_anchor_weight:  # SD family (refused on SDXL at the door): the tokens lead cond_value
            from livo.modeling import frozen_value_token

            tokens = getattr(value_encoder, "value_tokens", 1)
            start = frozen_value_token(models.text_encoder, models.tokenizer, batch["prompts"], batch["principle_texts"],
                                       tokens).to(device=device, dtype=torch.float32).reshape(len(batch["prompts"]),
                                                                                             tokens, -1)
            drift = (cond_value[:, :tokens].float() - start).pow(2).sum(dim=(1, 2))
            loss = loss + loss_config.token_anchor_weight * drift.mean()
        extra = [terms["hinge_w"].detach().mean(), terms["hinge_l"].detach().mean()]
        active = [(terms["hinge_w"].detach() > 0).float().mean(), (terms["hinge_l"].detach() > 0).float().mean()]
    else:
        loss = diffusion_dpo_loss(errors.theta_w, errors.ref_w, errors.theta_l, errors.ref_l, beta=loss_config.dpo_beta)
        extra, active = [], []
    stats = torch.stack([loss.detach().float(), *[c.float() for c in common], *[e.float() for e in extra],
                         margin.mean().float(), (margin < 0).float().mean(), *[a.float() for a in active]])
    return loss, stats


def stat_names(loss_config) -> tuple[str, ...]:
    return LIVO_STAT_NAMES if loss_config.kind == "livo" else DPO_STAT_NAMES


def noise_generator_seed(seed: int, rank: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([seed, 0x401, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


# --------------------------------------------------------------------------------------------------------------------
# Preemption.


class PreemptionWatch:
    """Turns SIGTERM into a flag checked at step boundaries (Kubernetes sends SIGTERM before killing a pod)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __enter__(self) -> PreemptionWatch:
        with contextlib.suppress(ValueError):  # not the main thread: no handler, the default action stays
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# --------------------------------------------------------------------------------------------------------------------
# The trainer.


@dataclass
class TrainResult:
    exit_code: int
    final_step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    output_uri: str = ""
    preempted: bool = False


class Trainer:
    def __init__(self, config: TrainingConfig, env: dist.DistEnv | None = None):
        self.config = config
        self.plan = plan_run(config, env)
        self.env = self.plan.env
        self.models: Models | None = None
        self.engine = None
        self.dataset = None
        self._log_lines: list[dict[str, Any]] = []
        self._window: Any = None
        self._window_steps = 0
        self._window_start = 0.0
        self._throughput: list[float] = []
        self._last_stats: dict[str, float] = {}

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        plan = self.plan
        with PreemptionWatch() as preemption:
            dist.init_process_group(plan.device_type)
            self.dataset = self._open_dataset_staggered()
            resume_step = check_resume_state(plan)
            fresh_output = isinstance(plan.output, ckpt.LocalRunOutput) and not plan.output.root.exists()
            check_output_writable(plan)
            log_event(log, "training planned", rank=self.env.rank, world_size=self.env.world_size,
                      device=plan.device_type, precision=plan.precision, zero_stage=plan.zero_stage,
                      global_batch=plan.global_batch, per_device=plan.per_device, loss=self.config.loss.kind,
                      dataset_rows=len(self.dataset), output=plan.output.uri, resume_from=resume_step)
            if self.env.is_main:
                tracking.active().log_params(self.tracking_params())
            try:  # what only the loaded base model can tell (its fingerprint, its encoders) is bad input too
                self.models = load_models(self.config, plan.device_type, plan.precision, self.env.local_rank)
                check_dataset_generator(self.config, self.dataset, self.models.base_fingerprint)
            except ConfigError:
                if fresh_output:  # bad input leaves nothing behind: not even the directory the write probe made
                    with contextlib.suppress(OSError):
                        plan.output.root.rmdir()
                raise
            self.models.frozen_digest = frozen_weights_digest(self.models)
            self._build_engine()
            generator = self._new_generator()
            start_step = 0
            if resume_step is not None:
                start_step = self._load_checkpoint(resume_step, generator)
            batches = self._batches()
            return self._loop(start_step, generator, batches, preemption)

    def tracking_params(self) -> dict[str, Any]:
        """What the tracker records about this run: the resolved config (flattened, `config.` keys), the dataset
        (id, URI, manifest digest, principle-set hash, rows) and the batch layout."""
        dataset = self.dataset
        params: dict[str, Any] = {f"config.{k}": v for k, v in
                                  flatten(self.config.model_dump(mode="json")).items()}
        params.update({
            "principle_set_hash": dataset.principle_set_hash,
            "dataset.uri": dataset.uri,
            "dataset.id": dataset.manifest.get("dataset_id") or str(dataset.uri).rstrip("/").rsplit("/", 1)[-1],
            "dataset.manifest_sha256": dataset.manifest_sha256,
            "dataset.rows": len(dataset),
            "config_fingerprint": self.config.fingerprint(),
            "world_size": self.env.world_size,
            "global_batch_size": self.plan.global_batch,
            "precision": self.plan.precision,
            "zero_stage": self.plan.zero_stage,
        })
        return params

    def _open_dataset_staggered(self):
        # Local rank 0 opens (and, for s3:// datasets, downloads) first; the node's other ranks then read its cache.
        if self.env.is_local_main:
            dataset = open_dataset(self.config)
            dist.barrier()
        else:
            dist.barrier()
            dataset = open_dataset(self.config)
        return dataset

    def _build_engine(self) -> None:
        import deepspeed
        import torch

        opt = self.config.optimizer
        gain = getattr(self.models.value_encoder, "log_token_gain", None)
        params = [p for p in self.models.value_encoder.parameters() if p.requires_grad and p is not gain]
        groups = [{"params": params}]
        if gain is not None:  # value_token_gain: its own rate, and no decay pulling the log-gain (g) towards 0 (1)
            groups.append({"params": [gain], "lr": self.config.value_token_gain_lr, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)
        warmup = opt.warmup_steps

        def schedule(optimizer):
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)

        self.engine, _, _, self.lr_scheduler = deepspeed.initialize(
            model=self.models.value_encoder, optimizer=optimizer, lr_scheduler=schedule, config=self.plan.ds_config)

    def _new_generator(self):
        import torch

        generator = torch.Generator(device=self.models.device)
        generator.manual_seed(noise_generator_seed(self.config.seed, self.env.rank))
        return generator

    def _batches(self):
        from livo.training.data import PairBatches, PairSchedule

        schedule = PairSchedule.build(self.dataset.scenes, len(self.dataset), seed=self.config.seed,
                                      per_device=self.plan.per_device, accumulation=self.plan.accumulation,
                                      world_size=self.env.world_size, redraw=self.config.redraw_violating,
                                      random_flip=self.config.random_flip)
        use_latents, use_embeds = self._precomputed_columns()
        resolution = self.config.resolution or int(self.models.vae.config.sample_size)
        return PairBatches(self.dataset.rows, schedule, self.env.rank, use_latents=use_latents,
                           use_prompt_embeds=use_embeds, resolution=resolution)

    def _precomputed_columns(self) -> tuple[bool, bool]:
        """Use the dataset's VAE posteriors / prompt embeddings only if this very base model made them, at the
        training resolution, with the mirrored posteriors when the recipe flips; otherwise the images are encoded."""
        if not self.config.use_precomputed:
            return False, False
        dataset, manifest = self.dataset, self.dataset.manifest
        has_latents, has_embeds = dataset.has_latent_dists, dataset.has_prompt_embeds
        if dataset.has_latents and not has_latents:
            log_event(log, "precomputed latents ignored: they hold the posterior mean only (a dataset generated before "
                           "posteriors were stored); the images are encoded and sampled instead")
        if not (has_latents or has_embeds):
            return False, False
        generator_hash = manifest.get("generator_model_hash")
        if generator_hash != self.models.base_fingerprint:
            log_event(log, "precomputed latents/embeddings ignored: made by another base model",
                      dataset_model=generator_hash, base_model=self.models.base_fingerprint)
            return False, False
        if has_latents:
            shape = manifest.get("latent_dist_shape") or list(dataset.rows.features["aligned_latent_dist"].shape)
            unet_channels = int(self.models.unet.config.in_channels)
            if shape[0] != 2 * unet_channels:
                raise DataError(f"{self.config.dataset}: the stored VAE posteriors have {shape[0]} channels (mean and "
                                f"log-variance) but the UNet takes {unet_channels}-channel latents; regenerate the "
                                "dataset with this base model")
            factor = vae_scale_factor(self.models.vae)
            resolution = self.config.resolution or int(self.models.vae.config.sample_size)
            if shape[1] * factor != resolution:
                log_event(log, "precomputed latents ignored: made at another resolution; the images are encoded",
                          latent_resolution=shape[1] * factor, resolution=resolution)
                has_latents = False
            elif self.config.random_flip and not dataset.has_flipped_latent_dists:
                log_event(log, "precomputed latents ignored: random_flip needs the mirrored posteriors (generate with "
                               "precompute_flipped_latents=true); the images are encoded")
                has_latents = False
        if has_embeds and self.models.text_encoder_2 is not None:
            log_event(log, "precomputed prompt embeddings ignored: an SDXL base model needs both encoders' and the "
                           "pooled output; the prompts are encoded")
            has_embeds = False
        if has_embeds:
            expected = [int(self.models.tokenizer.model_max_length), int(self.models.text_encoder.config.hidden_size)]
            if list(manifest.get("embed_shape") or expected) != expected:
                raise DataError(f"{self.config.dataset}: prompt_embeds have shape {manifest['embed_shape']}, the "
                                f"text encoder gives {expected}; regenerate the dataset with this base model")
        return has_latents, has_embeds

    # -- the loop ----------------------------------------------------------------------------------------------------
    def _loop(self, start_step: int, generator, batches, preemption: PreemptionWatch) -> TrainResult:
        import torch

        from livo.progress import progress_bar
        from livo.training.data import make_loader

        config, plan, engine = self.config, self.plan, self.engine
        accumulation = plan.accumulation
        loader = make_loader(batches, start_step * accumulation, config.max_steps * accumulation,
                             workers=config.data_workers, pin_memory=plan.device_type == "cuda")
        iterator = iter(loader)
        autocast = (torch.autocast(plan.device_type, dtype=self.models.weight_dtype)
                    if plan.precision != "fp32" else contextlib.nullcontext())
        names = stat_names(config.loss)
        self._reset_window(len(names))
        last_saved = start_step
        progress = progress_bar(total=config.max_steps, initial=start_step, desc="train", unit="step",
                        disable=None if self.env.is_main else True)
        step = start_step
        try:
            while step < config.max_steps:
                if dist.any_rank(preemption.requested, self.models.device):
                    if step > last_saved:
                        self.save_checkpoint(step, generator)
                        what = "preempted: checkpoint saved, exiting"
                    elif step == 0:
                        what = "preempted before the first step: nothing to save, exiting (rerun from the start)"
                    else:
                        what = f"preempted before any new step: checkpoint step {step} already holds this state"
                    log_event(log, what, step=step, rank=self.env.rank, exit_code=PREEMPTED_EXIT_CODE)
                    return TrainResult(PREEMPTED_EXIT_CODE, step, output_uri=plan.output.uri, preempted=True)
                for _ in range(accumulation):
                    batch = next(iterator)
                    with autocast:
                        loss, stats = step_loss(self.models, engine, batch, generator, config.loss)
                    engine.backward(loss)
                    engine.step()
                    self._window += stats / accumulation
                step += 1
                self._window_steps += 1
                progress.update(1)
                if step % config.log_every == 0 or step == config.max_steps:
                    self._log_window(step, names)
                if step % config.checkpoint.every_steps == 0 or step == config.max_steps:
                    self.save_checkpoint(step, generator)
                    last_saved = step
                    self._window_start = time.perf_counter()  # checkpoint time is not training throughput
        finally:
            progress.close()
            # stop the batch builder before anything exits: a preempted run returns from inside the loop
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        return self.finish(step)

    def _reset_window(self, size: int) -> None:
        import torch

        self._window = torch.zeros(size, dtype=torch.float32, device=self.models.device)
        self._window_steps = 0
        self._window_start = time.perf_counter()

    def _log_window(self, step: int, names: tuple[str, ...]) -> None:
        means = dist.mean_over_ranks(self._window / max(1, self._window_steps), self.models.device).cpu().tolist()
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        samples_per_s = self.plan.global_batch * self._window_steps / elapsed
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        record = {"step": step, **{n: float(v) for n, v in zip(names, means, strict=True)},
                  "lr": float(self.engine.get_lr()[0]), "grad_norm": grad_norm, "samples_per_s": samples_per_s}
        gain = getattr(self.engine.module, "token_gain", None)
        if gain is not None:
            record["token_gain"] = gain
        self._last_stats = record
        self._throughput.append(samples_per_s)
        if self.env.is_main:
            self._log_lines.append(record)
            log_event(log, "train step", **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()})
            tracking.active().log_metrics({k: v for k, v in record.items() if k != "step"}, step=step)
        self._reset_window(len(names))

    # -- checkpoints ---------------------------------------------------------------------------------------------------
    def save_checkpoint(self, step: int, generator) -> None:
        """Every rank calls this at the same step. Complete once rank 0 wrote the commit object, which it does after
        every rank's files were written (and, for s3:// outputs, uploaded). A full disk is one line naming the
        checkpoint directory and its size (measured on the previous checkpoint, else estimated)."""
        with disk_full_as_error(f"checkpoint step {step}", self.plan.output.checkpoint_dir(step),
                                self._checkpoint_bytes()):
            self._save_checkpoint(step, generator)

    def _checkpoint_bytes(self) -> int:
        """Bytes of one checkpoint: the newest local one's size, else fp32 weights + Adam moments (+ fp32 master
        weights under ZeRO) of the value encoder."""
        base = self.plan.output.staging / ckpt.CHECKPOINTS_DIR
        for directory in sorted(base.glob("step-*"), reverse=True) if base.is_dir() else []:
            if (directory / ckpt.COMMIT_FILE).is_file():
                return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        params = sum(p.numel() for p in self.engine.module.parameters())
        return params * 4 * (4 if self.plan.zero_stage else 3)

    def _save_checkpoint(self, step: int, generator) -> None:
        import torch

        output, env = self.plan.output, self.env
        directory = output.checkpoint_dir(step)
        started = time.perf_counter()
        if env.is_local_main and directory.exists():
            shutil.rmtree(directory)  # leftovers of an interrupted save of this step
        dist.barrier()
        self.engine.save_checkpoint(str(output.staging / ckpt.CHECKPOINTS_DIR), tag=ckpt.step_tag(step),
                                    client_state={"livo_step": step}, save_latest=False)
        rng = {"noise_generator": generator.get_state(), "torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and self.plan.device_type == "cuda":
            rng["torch_cuda"] = torch.cuda.get_rng_state(self.models.device)
        ckpt.save_rng_state(directory / ckpt.rng_file(env.rank), rng)
        if env.is_main:
            ckpt.write_json_atomic(directory / ckpt.TRAINER_STATE_FILE, {
                "step": step, "samples_seen": step * self.plan.global_batch, "world_size": env.world_size,
                "seed": self.config.seed, "config_fingerprint": self.config.fingerprint(),
                "data_position": step * self.plan.global_batch, "zero_stage": self.plan.zero_stage,
            })
        dist.barrier()
        digests = output.publish_checkpoint_files(step) if env.is_local_main else {}
        gathered = dist.all_gather_object(digests)
        if env.is_main:
            files: dict[str, str] = {}
            for part in gathered:
                files.update(part)
            output.commit_checkpoint(step, files, {"step": step, "world_size": env.world_size,
                                                   "zero_stage": self.plan.zero_stage})
            self._write_side_files()
            output.prune(self.config.checkpoint.keep_last)
        dist.barrier()
        if env.is_local_main:
            # s3:// outputs: keep only the newest checkpoint on node-local disk.
            for old in self._local_checkpoint_steps():
                if old != step:
                    output.discard_local_copy(old)
        log_event(log, "checkpoint saved", step=step, uri=output.location_of(f"{ckpt.CHECKPOINTS_DIR}/"
                                                                              f"{ckpt.step_tag(step)}"),
                  seconds=round(time.perf_counter() - started, 2), rank=env.rank)

    def _local_checkpoint_steps(self) -> list[int]:
        if isinstance(self.plan.output, ckpt.LocalRunOutput):
            return []
        base = self.plan.output.staging / ckpt.CHECKPOINTS_DIR
        steps = []
        for child in base.glob("step-*") if base.is_dir() else []:
            with contextlib.suppress(ValueError):
                steps.append(int(child.name.split("-", 1)[1]))
        return steps

    def _write_side_files(self) -> None:
        """Rank 0: the training log so far and the config, next to the checkpoints."""
        output = self.plan.output
        log_path = output.staging / ckpt.TRAIN_LOG_FILE
        log_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = log_path.with_name(f".{log_path.name}.tmp")
        tmp.write_text("".join(json.dumps(line) + "\n" for line in self._log_lines))
        os.replace(tmp, log_path)
        output.put_file(log_path, ckpt.TRAIN_LOG_FILE)
        output.put_json(ckpt.CONFIG_FILE, self.config.model_dump(mode="json"))

    def _load_checkpoint(self, step: int, generator) -> int:
        import torch

        output, env = self.plan.output, self.env
        if env.is_local_main:
            output.fetch_checkpoint(step)
        dist.barrier()
        directory = output.checkpoint_dir(step)
        load_path, client_state = self.engine.load_checkpoint(
            str(output.staging / ckpt.CHECKPOINTS_DIR), tag=ckpt.step_tag(step), load_optimizer_states=True,
            load_lr_scheduler_states=True, load_module_strict=True)
        if load_path is None:
            raise LivoError(f"DeepSpeed could not load checkpoint {directory}; delete it to resume from an older one")
        rng = ckpt.load_rng_state(directory / ckpt.rng_file(env.rank))
        generator.set_state(rng["noise_generator"])
        torch.set_rng_state(rng["torch_cpu"])
        if "torch_cuda" in rng and self.plan.device_type == "cuda":
            torch.cuda.set_rng_state(rng["torch_cuda"], self.models.device)
        if env.is_main:
            previous = self._read_previous_log()
            self._log_lines = [line for line in previous if line.get("step", 0) <= step]
            if self._log_lines:
                self._last_stats = dict(self._log_lines[-1])  # metrics of a run resumed at its last step
        log_event(log, "resumed", step=step, rank=env.rank, checkpoint=str(directory),
                  engine_steps=int(self.engine.global_steps))
        return step

    def _read_previous_log(self) -> list[dict[str, Any]]:
        try:
            text = self.plan.output.get_text(ckpt.TRAIN_LOG_FILE) or ""
        except (OSError, UnicodeDecodeError, LivoError):
            return []
        lines = []
        for raw in text.splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                lines.append(json.loads(raw))
        return lines

    # -- export ------------------------------------------------------------------------------------------------------
    def consolidated_state_dict(self) -> dict[str, Any]:
        """The value encoder's full fp32 weights on every rank (ZeRO-3 partitions are gathered)."""
        import deepspeed

        module = self.engine.module
        if self.plan.zero_stage == 3:
            params = list(module.parameters())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                return {k: v.detach().to("cpu", copy=True).float() for k, v in module.state_dict().items()}
        return {k: v.detach().to("cpu", copy=True).float() for k, v in module.state_dict().items()}

    def finish(self, step: int) -> TrainResult:
        """Export the value encoder (save_pretrained layout, safetensors), metrics and the result record."""
        output, env = self.plan.output, self.env
        state = self.consolidated_state_dict()
        live_digest = _state_digest(state)
        digests_by_rank = dist.all_gather_object(live_digest)
        frozen_after = frozen_weights_digest(self.models)
        if frozen_after != self.models.frozen_digest:
            raise LivoError("a frozen module (UNet, VAE or text encoder) changed during training; this is a bug — "
                            "report it with the training config")
        metrics = self._metrics(step)
        if env.is_main:
            needed = sum(t.numel() * 4 for t in state.values())
            with disk_full_as_error("the value encoder and result files", output.staging, needed):
                self._export(state, step, metrics, frozen_after, digests_by_rank)
        dist.barrier()
        log_event(log, "final weights", rank=env.rank, sha256=live_digest)
        return TrainResult(0, step, metrics=metrics, output_uri=output.uri)

    def _export(self, state: dict[str, Any], step: int, metrics: dict[str, Any], frozen_after: str,
                digests_by_rank: list[str]) -> None:
        """Rank 0: the value encoder (safetensors), metrics, log, and result.json last."""
        import torch

        from livo.modeling import SDXLValueEncoder, ValueEncoder

        output, env = self.plan.output, self.env
        module = self.engine.module
        # the exported encoder is the trained one's kind: its pooled choice and token count travel in its marker
        if isinstance(module, SDXLValueEncoder):
            export = SDXLValueEncoder(type(module.text_model)(module.text_model.config),
                                      type(module.text_model_2)(module.text_model_2.config),
                                      shift_pooled=module.shift_pooled)
        else:
            export = ValueEncoder(type(module.text_model)(module.text_model.config), value_tokens=module.value_tokens,
                                  time_shift_dim=module.time_shift_dim, token_attention=module.token_attention,
                                  token_gain=module.token_gain)
        export.load_state_dict(state, strict=True)
        export.to(torch.float32)
        tmp = output.staging / f".{ckpt.VALUE_ENCODER_DIR}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        export.save_pretrained(tmp)
        files = output.publish_dir(tmp, ckpt.VALUE_ENCODER_DIR)
        shutil.rmtree(tmp, ignore_errors=True)
        output.put_json(ckpt.METRICS_FILE, metrics)
        self._write_side_files()
        result = {
            "value_encoder": {"uri": output.location_of(ckpt.VALUE_ENCODER_DIR), "files": files},
            "metrics": metrics,
            "final_step": step,
            "config": self.config.model_dump(mode="json"),
            "config_fingerprint": self.config.fingerprint(),
            "dataset": {"uri": self.dataset.uri, "manifest_sha256": self.dataset.manifest_sha256,
                        "principle_set_hash": self.dataset.principle_set_hash, "num_rows": len(self.dataset)},
            "base_model": {"source": self.config.model, "fingerprint": self.models.base_fingerprint},
            "frozen_weights_sha256": frozen_after,
            "live_weights_sha256_by_rank": digests_by_rank,
            "world_size": env.world_size,
            "zero_stage": self.plan.zero_stage,
            "precision": self.plan.precision,
        }
        output.put_json(ckpt.RESULT_FILE, result)  # last: the run's outputs are complete
        log_event(log, "value encoder exported", uri=output.location_of(ckpt.VALUE_ENCODER_DIR), step=step,
                  loss=metrics.get("loss"))

    def _metrics(self, step: int) -> dict[str, Any]:
        last = dict(self._last_stats)
        steady = self._throughput[1:] or self._throughput
        metrics = {k: v for k, v in last.items() if k not in ("step", "samples_per_s")}
        metrics.update({
            "final_step": step,
            "loss_kind": self.config.loss.kind,
            "global_batch_size": self.plan.global_batch,
            "world_size": self.env.world_size,
            "samples_per_s": float(sum(steady) / len(steady)) if steady else float("nan"),
        })
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def _state_digest(state: dict[str, Any]) -> str:
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(state.items()):
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{key}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + digest.hexdigest()


def train(config: TrainingConfig, env: dist.DistEnv | None = None) -> TrainResult:
    """Run one training job in this process (one rank of it under a launcher)."""
    return Trainer(config, env).run()
