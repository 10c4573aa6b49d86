"""Training-step throughput: livo's step vs a faithful re-creation of the reference recipe's step.

Same models, same batch, same precision, same optimizer; only the step differs:

- shipped (`livo.training.trainer.step_loss` on what `livo generate` stores by default: the VAE posterior of both
  images, sampled every step, and the frozen prompt embeddings): the value encoder, winner and loser through the UNet
  in one batch with autograd, the two reference passes in one batch under `torch.no_grad()`;
- pixels (the same step on a dataset of images only — an imported one, or `use_precomputed=false`: it VAE-encodes
  both images and encodes the prompt every step);
- reference (the authors' recipe, LIVO_METHOD §4): VAE-encode both images every step (`latent_dist.sample()`), encode
  the prompt with the frozen text encoder every step, four separate UNet passes, reference passes with autograd on,
  gradient checkpointing on (the released run used it; `--reference-checkpointing off` drops it).

Both then backpropagate into the value encoder and take an AdamW step (grad clip 1.0). Reports samples/s, peak
memory (CUDA), FLOPs per step counted with `livo.flops.flop_counter` (torch's counter plus the CPU attention kernels),
and against the device's dense peak both MFU (model FLOPs: the step without gradient checkpointing) and HFU (hardware
FLOPs: recomputation included).

    python benchmarks/train_step.py --preset mid --device cpu --dtype fp32 --batch 4
    python benchmarks/train_step.py --preset sd15-random --device cuda --dtype bf16 --batch 8
    python benchmarks/train_step.py --preset sdxl-random --device cuda --dtype bf16 --batch 2 --gradient-checkpointing

SDXL-family presets (`sdxl-random`: SDXL base 1.0 sizes, 1024²; `toy-sdxl`: the toy SDXL, for a CPU run of the same
code) time the shipped and pixel steps only: the authors' recipe exists for SD v1.5 alone. Their VAE stays in fp32
(its config says force_upcast, as in training) and the prompt is encoded by both frozen encoders every step (datasets
store no SDXL prompt embeddings).

Prints one JSON line (the command, hardware, load average before and after, figures per variant). Results with the
hardware are recorded in docs/training.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import context, cpu_name, finished  # noqa: E402

# Dense peak TFLOP/s per dtype (vendor datasheets; SXM parts). MFU is null where the device is not listed.
PEAK_TFLOPS = {
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
}
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def build_mid_pipeline(seed: int = 0):
    """A mid-size SD-architecture model for CPU timing: 128² images, 32² latents, UNet (64, 128, 256) with
    cross-attention at the two finer levels, CLIP width 256 × 4 layers."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from livo.presets import _assemble, _text_encoder_config, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, cross_attention_dim=256,
        block_out_channels=(64, 128, 256), attention_head_dim=8, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=128,
        block_out_channels=(32, 64, 128), norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    )
    text_encoder = CLIPTextModel(_text_encoder_config(
        tokenizer, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
        projection_dim=256))
    return _assemble(unet.eval(), vae.eval(), text_encoder.eval(), tokenizer)


PRESETS = ("tiny", "mid", "sd15-random", "toy-sdxl", "sdxl-random")


def build_pipeline(preset: str, device: str = "cpu"):
    """The preset's pipeline and resolution. Random-weight presets come from `load_pipeline`, which initialises them
    on `device`: initialising SDXL's 3.4 B parameters on the host would cost a GPU lease more than the steps it times."""
    from livo.presets import build_tiny_pipeline, load_pipeline

    if preset == "tiny":
        return build_tiny_pipeline(0), 32
    if preset == "mid":
        return build_mid_pipeline(0), 128
    if preset == "toy-sdxl":
        return load_pipeline("toy-sdxl"), 32
    if preset in ("sd15-random", "sdxl-random"):
        return load_pipeline(preset, device=device), 512 if preset == "sd15-random" else 1024
    raise SystemExit(f"unknown preset {preset!r}: {' | '.join(PRESETS)}")


def reference_step_loss(models, value_encoder, pixels_w, pixels_l, prompts, principle_texts, generator):
    """The reference recipe's step, re-created: everything recomputed per step, four passes, autograd everywhere."""
    import torch

    from livo.losses import compute_denoising_errors, livo_loss
    from livo.modeling import prepend_value_token, tokenize_prompts, tokenize_value_inputs

    vae, device = models.vae, models.device
    scale = vae.config.scaling_factor
    latents_w = vae.encode(pixels_w.to(device, vae.dtype)).latent_dist.sample(generator=generator).float() * scale
    latents_l = vae.encode(pixels_l.to(device, vae.dtype)).latent_dist.sample(generator=generator).float() * scale
    noise = torch.randn(latents_w.shape, generator=generator, device=device)
    timesteps = torch.randint(0, models.noise_scheduler.config.num_train_timesteps, (latents_w.shape[0],),
                              generator=generator, device=device)
    ids = tokenize_prompts(models.tokenizer, prompts).to(device)
    cond_plain = models.text_encoder(input_ids=ids)[0]  # the authors' loop: no torch.no_grad() here
    value_ids = tokenize_value_inputs(models.tokenizer, principle_texts, prompts).to(device)
    cond_value = prepend_value_token(value_encoder(value_ids), cond_plain)
    errors = compute_denoising_errors(models.unet, models.noise_scheduler, latents_w, latents_l, cond_value,
                                      cond_plain, noise, timesteps, fused=False)
    return livo_loss(errors.theta_w, errors.ref_w, errors.theta_l, errors.ref_l)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="mid", choices=PRESETS)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--batch", type=int, default=None, help="pairs per step (default: 8 on cuda, 4 on cpu)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet (every variant); compile time is reported apart (warmup_ms)")
    parser.add_argument("--compile-mode", default=None, choices=["default", "reduce-overhead", "max-autotune"],
                        help="torch.compile mode (reduce-overhead replays CUDA graphs)")
    parser.add_argument("--channels-last", action="store_true", help="UNet weights and activations in channels-last")
    parser.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True): one kernel for the update")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="gradient checkpointing (UNet + value encoder) in our step too (default: off)")
    parser.add_argument("--reference-checkpointing", choices=["on", "off"], default="on",
                        help="gradient checkpointing in the reference step (the released run: on)")
    parser.add_argument("--only", choices=["shipped", "pixels", "reference"], help="time one variant only")
    parser.add_argument("--peak-tflops", type=float, help="override the device's dense peak for MFU")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)

    import torch
    from diffusers import DDPMScheduler
    from diffusers.models.attention_processor import AttnProcessor2_0

    from livo.flops import flop_counter
    from livo.modeling import encode_prompts, is_sdxl, vae_needs_fp32, value_encoder_for
    from livo.training.config import LossConfig
    from livo.training.trainer import Models, step_loss

    invocation = context("train_step.py", argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    device = torch.device(args.device)
    dtype = getattr(torch, DTYPES[args.dtype])
    batch = args.batch or (8 if args.device == "cuda" else 4)
    pipe, resolution = build_pipeline(args.preset, args.device)

    sdxl = is_sdxl(pipe)
    if sdxl and args.only == "reference":
        raise SystemExit("the reference recipe exists for SD v1.5 only: time shipped or pixels on SDXL presets")
    value_encoder = value_encoder_for(pipe).to(device=device, dtype=torch.float32).train()
    encoder_copies = [m for m in (value_encoder.text_model, getattr(value_encoder, "text_model_2", None)) if m]
    frozen = [pipe.unet, pipe.vae, pipe.text_encoder, *([pipe.text_encoder_2] if sdxl else [])]
    vae_fp32 = vae_needs_fp32(pipe)  # as training keeps it
    for module in frozen:
        module.requires_grad_(False)
        module.to(device=device)
        if dtype != torch.float32 and not (vae_fp32 and module is pipe.vae):
            module.to(dtype=dtype)
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    if args.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)

    def checkpointing(enabled: bool) -> None:
        if enabled:
            pipe.unet.enable_gradient_checkpointing()
            for copy in encoder_copies:
                copy.gradient_checkpointing_enable()
        else:
            pipe.unet.disable_gradient_checkpointing()
            for copy in encoder_copies:
                copy.gradient_checkpointing_disable()
    unet = torch.compile(pipe.unet, mode=args.compile_mode) if args.compile or args.compile_mode else pipe.unet
    models = Models(unet=unet, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                    noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config), value_encoder=value_encoder,
                    device=device, weight_dtype=dtype, base_fingerprint="",
                    text_encoder_2=pipe.text_encoder_2 if sdxl else None,
                    tokenizer_2=pipe.tokenizer_2 if sdxl else None)
    optimizer = torch.optim.AdamW(value_encoder.parameters(), lr=1e-6, betas=(0.9, 0.999), weight_decay=1e-2,
                                  eps=1e-8, **({"fused": True} if args.fused_adamw else {}))

    # One batch for every variant: images in [-1, 1]; "shipped" gets their VAE posteriors and prompt embeddings
    # precomputed once, as `livo generate` stores them.
    data_gen = torch.Generator().manual_seed(0)
    pixels_w = torch.rand(batch, 3, resolution, resolution, generator=data_gen) * 2 - 1
    pixels_l = torch.rand(batch, 3, resolution, resolution, generator=data_gen) * 2 - 1
    prompts = [f"a photo of the face of a {w}" for w in ("doctor", "nurse", "teacher", "chef")] * batch
    prompts = prompts[:batch]
    principle_texts = ["gender equality"] * batch
    with torch.no_grad():
        posterior_w = pipe.vae.encode(pixels_w.to(device, pipe.vae.dtype)).latent_dist.parameters.cpu()
        posterior_l = pipe.vae.encode(pixels_l.to(device, pipe.vae.dtype)).latent_dist.parameters.cpu()
    precomputed = {"latent_dist_w": posterior_w, "latent_dist_l": posterior_l,
                   "prompts": prompts, "principle_texts": principle_texts}
    if not sdxl:  # as `livo generate` stores them: SD-family prompt embeddings only
        with torch.no_grad():
            precomputed["prompt_embeds"] = encode_prompts(pipe.text_encoder, pipe.tokenizer, prompts).cpu().to(dtype)
    autocast = (torch.autocast(args.device, dtype=dtype) if args.dtype != "fp32" else contextlib.nullcontext())
    generator = torch.Generator(device=device).manual_seed(0)
    loss_config = LossConfig()

    pixel_batch = {"pixels_w": pixels_w.to(device, pipe.vae.dtype), "pixels_l": pixels_l.to(device, pipe.vae.dtype),
                   "prompts": prompts, "principle_texts": principle_texts}

    def ours(batch: dict, recompute: bool) -> None:
        checkpointing(args.gradient_checkpointing and recompute)
        with autocast:
            loss, _ = step_loss(models, value_encoder, batch, generator, loss_config)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(value_encoder.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def shipped(recompute: bool = True) -> None:
        ours(precomputed, recompute)

    def pixels(recompute: bool = True) -> None:
        ours(pixel_batch, recompute)

    def reference(recompute: bool = True) -> None:
        checkpointing(args.reference_checkpointing == "on" and recompute)
        with autocast:
            loss = reference_step_loss(models, value_encoder, pixels_w, pixels_l, prompts, principle_texts, generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(value_encoder.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    peak = args.peak_tflops
    device_name = torch.cuda.get_device_name(device) if args.device == "cuda" else cpu_name()
    if peak is None and args.device == "cuda":
        peak = next((v[args.dtype] for k, v in PEAK_TFLOPS.items() if k in device_name), None)

    variants = {name: step for name, step in (("shipped", shipped), ("pixels", pixels), ("reference", reference))
                if (not args.only or name == args.only) and not (sdxl and name == "reference")}
    # Warm-up apart: with --compile the first step of each variant is where the UNet compiles (reported, not timed).
    warmup_ms: dict[str, list[float]] = {name: [] for name in variants}
    for name, step in variants.items():
        for _ in range(args.warmup):
            start = time.perf_counter()
            step()
            sync()
            warmup_ms[name].append(round((time.perf_counter() - start) * 1000, 1))
    # Interleaved timing: a load spike on a shared machine hits both variants alike.
    times: dict[str, list[float]] = {name: [] for name in variants}
    peak_mem: dict[str, float] = {name: 0.0 for name in variants}
    for _ in range(args.steps):
        for name, step in variants.items():
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
            if args.device == "cuda":
                peak_mem[name] = max(peak_mem[name], torch.cuda.max_memory_allocated(device) / 2**30)
    results = {}
    for name, step in variants.items():
        # hardware FLOPs: what the step as run computes (recomputation included); model FLOPs: the same step without
        # gradient checkpointing, i.e. what the model needs. Attention is counted on every device (livo.flops).
        # Counted on the eager UNet: a compiled one runs the same arithmetic but hides its kernels from the counter.
        counted = {}
        models.unet = pipe.unet
        for recompute in (True, False):
            counter = flop_counter()
            with counter:
                step(recompute=recompute)
            sync()
            counted[recompute] = counter.get_total_flops()
        models.unet = unet
        flops, model_flops = counted[True], counted[False]
        step_s = statistics.median(times[name])
        results[name] = {
            "samples_per_s": round(batch / step_s, 3),
            "step_ms": round(step_s * 1000, 1),
            "step_ms_all": [round(t * 1000, 1) for t in times[name]],
            "step_ms_min_max": [round(min(times[name]) * 1000, 1), round(max(times[name]) * 1000, 1)],
            "warmup_ms": warmup_ms[name],
            "peak_memory_gib": round(peak_mem[name], 2) if args.device == "cuda" else None,
            "tflops_per_step": round(flops / 1e12, 4),
            "model_tflops_per_step": round(model_flops / 1e12, 4),
            "achieved_tflops": round(flops / step_s / 1e12, 3),
            "mfu": round(model_flops / step_s / (peak * 1e12), 4) if peak else None,
            "hfu": round(flops / step_s / (peak * 1e12), 4) if peak else None,
        }
    report = {
        "preset": args.preset, "device": args.device, "device_name": device_name, "dtype": args.dtype,
        "batch": batch, "resolution": resolution, "compile": bool(args.compile or args.compile_mode),
        "compile_mode": args.compile_mode, "channels_last": args.channels_last, "fused_adamw": args.fused_adamw,
        "gradient_checkpointing": args.gradient_checkpointing,
        "reference_checkpointing": args.reference_checkpointing == "on", "torch": torch.__version__,
        "threads": torch.get_num_threads() if args.device == "cpu" else None, "peak_tflops": peak,
        **results,
    }
    for name in ("shipped", "pixels"):
        if name in results and "reference" in results:
            report[f"speedup_{name}"] = round(results[name]["samples_per_s"] / results["reference"]["samples_per_s"],
                                              2)
    print(json.dumps(finished({**invocation, **report})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
