"""`TrainingConfig`: every knob of value-encoder training, typed, with the authors' released run as defaults.

Defaults follow LIVO_METHOD.md §4 (SD v1.5 run): β 1000, α 500, γ1 1, γ2 0.5, AdamW lr 1e-6 (betas 0.9/0.999,
weight decay 1e-2, eps 1e-8), gradient clip 1.0, batch 8 per device, constant learning rate, a checkpoint every 1000
steps. Load with `load_training_config(path, overrides)`; unknown keys and bad values are `ConfigError`s.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from livo.config import LivoConfig, load_config
from livo.errors import ConfigError


class LossConfig(LivoConfig):
    kind: Literal["livo", "dpo"] = Field("livo", description="livo (hinge loss, the method) | dpo (Diffusion-DPO)")
    beta: float = Field(1000.0, gt=0, description="LiVO β: scale of the aligned-image hinge (θw − rw)")
    alpha: float = Field(500.0, gt=0, description="LiVO α: scale of the violating-image hinge (rl − θl)")
    gamma1: float = Field(1.0, ge=0, description="LiVO γ1: margin of the aligned-image hinge")
    gamma2: float = Field(0.5, ge=0, description="LiVO γ2: margin of the violating-image hinge")
    distill_weight: float = Field(
        0.0, ge=0, description="λ of an added prompt-distillation term λ·‖UNet(z_t, c_value) − UNet(z_t, E(aligned "
                               "prompt))‖² on both noisy latents: the token is pulled towards what the base model "
                               "does when the prompt itself asks for the aligned image (docs/convergence.md, issue "
                               "15); 0 = the paper's loss")
    anchor_weight: float = Field(
        0.0, ge=0, description="λ of an added anchor term λ·θw (the value-conditioned denoising error of the aligned "
                               "image, no margin), so that the aligned image's content keeps pulling once the first "
                               "hinge is met (docs/convergence.md, issue 15); 0 = the paper's loss")
    token_anchor_weight: float = Field(
        0.0, ge=0, description="λ of an added penalty λ·‖v − v₀‖² on the value token v, v₀ being the frozen text "
                               "encoder's pooled output of the same value text (where the token starts): keeps the "
                               "token among the states the UNet knows (docs/convergence.md, issue 15); SD family only; "
                               "0 = the paper's loss")
    paired_violating_hinge: bool = Field(
        False, description="the violating hinge asks for the violating image's error to rise beyond the aligned "
                           "image's: relu(γ2 + α·((rl − θl) − (rw − θw))), so a change that hurts both images of a pair "
                           "alike (e.g. the subject's shape) earns nothing (docs/convergence.md, issue 15); false = the "
                           "paper's loss")
    dpo_beta: float = Field(5000.0, gt=0, description="Diffusion-DPO β (reference-code convention, with the ½)")


class OptimizerConfig(LivoConfig):
    lr: float = Field(1e-6, gt=0, description="AdamW learning rate (constant after warm-up)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW decoupled weight decay")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    max_grad_norm: float = Field(1.0, ge=0, description="global gradient-norm clip; 0 disables clipping")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps (the released run used none)")

    @model_validator(mode="after")
    def _betas_in_range(self) -> OptimizerConfig:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        return self


class CheckpointConfig(LivoConfig):
    every_steps: int = Field(1000, gt=0, description="save a resumable checkpoint every N optimizer steps")
    keep_last: int = Field(2, ge=1, description="complete checkpoints kept; older ones are deleted")


class TrainingConfig(LivoConfig):
    """One training run. `output` is a local directory or `s3://bucket/prefix`."""

    model: str = Field("tiny", description="base model: a preset model source (tiny | toy | toy-six | toy-sdxl | sd15 | sd21 | sdxl | sd15-random | sdxl-random), folder, s3:// URI or hub id")
    init_value_encoder: str | None = Field(
        None, description="start from this value encoder (save_pretrained dir); default: copy of the base encoder")
    dataset: str | None = Field(None, description="preference dataset: local directory or s3://bucket/prefix")
    expected_principle_set_hash: str | None = Field(
        None, description="refuse a dataset built for another principle set (sha256:... of the principles file)")
    verify_dataset: bool = Field(True, description="recompute the dataset's shard hashes before training")
    allow_other_base_dataset: bool = Field(
        False, description="train on a dataset another base model generated (its manifest's generator_model_hash is "
                           "not this base model's fingerprint): its images are used, its stored latents are not; "
                           "imported datasets (no generator hash) are always accepted")
    output: str = Field("runs/train", description="where checkpoints, the value encoder and metrics go")
    staging_dir: str | None = Field(
        None, description="node-local scratch for checkpoints of an s3:// output (default: a temp dir)")

    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()

    max_steps: int = Field(15000, gt=0, description="optimizer steps (released run: 15 000)")
    per_device_batch_size: int = Field(8, gt=0, description="pairs per device per micro-step (released run: 8)")
    gradient_accumulation_steps: int = Field(1, gt=0, description="micro-steps per optimizer step")
    global_batch_size: int | None = Field(
        None, gt=0, description="pairs per optimizer step over all ranks; when set, it fixes the per-device batch")
    seed: int = Field(0, ge=0, description="seeds data order, violating-image draws, noise and timesteps")
    redraw_violating: bool = Field(
        True, description="re-draw each pair's violating image from its scene at every step (the released recipe); "
                          "false = train on the pairs as stored (for matched pairs, data pairing=matched)")

    sdxl_shift_pooled: bool = Field(
        True, description="SDXL-family base models: the value path also replaces the pooled text_embeds with the value "
                          "text's (candidate (b) of docs/architecture.md, the default chosen by measurement on the toy "
                          "SDXL); false = the value token only (candidate (a))")
    value_tokens: int = Field(
        1, ge=1, le=16, description="value tokens prepended to the prompt: 1 = the paper's pooled output; k > 1 = the "
                                    "value encoder's last k final-layer states ending at EOS (docs/convergence.md, "
                                    "issue 15); SD family only",
    )
    value_time_shift: bool = Field(
        False, description="SD-family base models: the value encoder also shifts the UNet's time embedding through a "
                           "zero-initialised linear head on its pooled output — a global conditioning channel like "
                           "SDXL's pooled embedding, not in the paper (docs/convergence.md, issue 15)")
    value_token_attention: Literal["prepend", "additive"] = Field(
        "prepend", description="SD-family base models: how the value token enters the UNet's cross-attention. prepend "
                               "= the paper (one more key of the softmax, whose share is taken from the prompt's "
                               "tokens); additive = the prompt's attention kept whole and the token's value added "
                               "with the share the softmax gives it (docs/convergence.md, issue 15; not the paper)")
    value_token_gain: bool = Field(
        False, description="SD-family base models: a learned scalar gain on the value token, 1 at initialisation, so "
                           "the token can grow beyond the norm the text encoder's final layer norm holds it at "
                           "(docs/convergence.md, \"The one-token ceiling\"; issue 15, not the paper). Trained at "
                           "value_token_gain_lr; saved in livo_value_encoder.json (token_gain)")
    value_token_gain_lr: float = Field(
        1e-2, gt=0, description="learning rate of value_token_gain's log-gain (AdamW, no weight decay): the encoder's "
                                "rate would let g change by only ~lr per step")
    random_flip: bool = Field(
        False, description="mirror each pair (aligned and violating image together) with probability 1/2, as "
                           "diffusers' --random_flip; LIVO_METHOD.md's recipe does not flip")

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast dtype with fp32 master weights; auto = bf16 on GPU (fp16 without bf16), fp32 on CPU")
    zero_stage: Literal[0, 2, 3] = Field(2, description="DeepSpeed ZeRO stage (configs/deepspeed/zero<stage>.json)")
    deepspeed_config: str | None = Field(
        None, description="DeepSpeed JSON; default configs/deepspeed/zero<stage>.json. Batch sizes, clipping and "
                          "precision always come from this config")
    resolution: int | None = Field(
        None, gt=0, description="image size when latents must be computed; default: the VAE's sample size")
    use_precomputed: bool = Field(
        True, description="use the dataset's VAE posteriors (sampled each step) and prompt embeddings when present")
    gradient_checkpointing: bool = Field(False, description="recompute UNet and value-encoder activations")
    compile: bool = Field(False, description="torch.compile the UNet")
    data_workers: int = Field(
        0, ge=0, description="DataLoader worker processes (0: batches are built in a background thread)")

    resume: bool = Field(False, description="continue from the latest complete checkpoint in `output`")
    log_every: int = Field(10, gt=0, description="log loss parts, lr, grad norm and samples/s every N steps")
    tracking: Literal["mlflow", "none"] = Field(
        "mlflow", description="experiment tracking of this run (docs/tracking.md); env LIVO_TRACKING overrides it")

    @model_validator(mode="after")
    def _time_shift_not_compiled(self) -> TrainingConfig:
        # a compiled UNet ignores a forward hook added after compilation (measured: its outputs stay the base model's)
        if self.value_time_shift and self.compile:
            raise ValueError("value_time_shift cannot be combined with compile: a compiled UNet ignores the "
                             "time-embedding shift; set compile=false")
        # the additive token swaps the cross-attention processors around each value pass: a compiled UNet would
        # recompile on every swap
        if self.value_token_attention != "prepend" and self.compile:
            raise ValueError(f"value_token_attention={self.value_token_attention} cannot be combined with compile: "
                             "it swaps the UNet's attention processors at every step; set compile=false")
        return self

    @model_validator(mode="after")
    def _batch_consistent(self) -> TrainingConfig:
        if self.global_batch_size is not None and "per_device_batch_size" in self.model_fields_set:
            # Both given: they must agree for some world size; the exact check happens in `batch_layout`.
            if self.global_batch_size % (self.per_device_batch_size * self.gradient_accumulation_steps):
                raise ValueError(
                    f"global_batch_size {self.global_batch_size} is not a multiple of per_device_batch_size "
                    f"{self.per_device_batch_size} × gradient_accumulation_steps {self.gradient_accumulation_steps}")
        return self

    def batch_layout(self, world_size: int) -> tuple[int, int, int]:
        """`(per_device, accumulation, global)` for `world_size` ranks; ConfigError when they cannot agree."""
        accum = self.gradient_accumulation_steps
        if self.global_batch_size is None:
            per_device = self.per_device_batch_size
            return per_device, accum, per_device * accum * world_size
        denominator = world_size * accum
        if self.global_batch_size % denominator:
            raise ConfigError(
                f"global_batch_size {self.global_batch_size} is not divisible by world size {world_size} × "
                f"gradient_accumulation_steps {accum}; choose a multiple of {denominator} or change the number of ranks")
        per_device = self.global_batch_size // denominator
        if "per_device_batch_size" in self.model_fields_set and per_device != self.per_device_batch_size:
            raise ConfigError(
                f"global_batch_size {self.global_batch_size} over {world_size} rank(s) × {accum} accumulation step(s) "
                f"gives {per_device} per device, but per_device_batch_size is {self.per_device_batch_size}; set only one")
        return per_device, accum, self.global_batch_size

    def fingerprint(self) -> str:
        """sha256 of the settings that change what a step computes (resume refuses a checkpoint of another run)."""
        relevant = self.model_dump(mode="json", include={
            "model", "init_value_encoder", "loss", "optimizer", "per_device_batch_size", "gradient_accumulation_steps",
            "global_batch_size", "seed", "zero_stage", "resolution"})
        if self.random_flip:  # added later: runs without it keep their fingerprints
            relevant["random_flip"] = True
        if not self.sdxl_shift_pooled:  # the same for the SDXL knob, whose default became true (issue 18)
            relevant["sdxl_shift_pooled"] = False
        if self.value_tokens != 1:
            relevant["value_tokens"] = self.value_tokens
        if self.value_time_shift:
            relevant["value_time_shift"] = True
        if self.value_token_attention != "prepend":
            relevant["value_token_attention"] = self.value_token_attention
        if self.value_token_gain:
            relevant["value_token_gain"] = True
            relevant["value_token_gain_lr"] = self.value_token_gain_lr
        for knob in ("paired_violating_hinge", "token_anchor_weight"):  # the same for loss knobs added later
            if not getattr(self.loss, knob):
                relevant["loss"].pop(knob)
        return "sha256:" + hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def load_training_config(path: str | Path | None = None, overrides: list[str] | None = None,
                         base: dict[str, Any] | None = None) -> TrainingConfig:
    """A `TrainingConfig` from defaults, then `base` (e.g. a preset's `train:` section), the YAML file, overrides."""
    return load_config(TrainingConfig, path, overrides, base=base)
