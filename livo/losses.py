"""LiVO's hinge preference loss, the Diffusion-DPO baseline, and the four per-sample denoising errors they consume.

All losses take per-sample denoising errors of shape `[B]` (mean squared error over C, H, W, in fp32):
`theta_w`/`theta_l` from the UNet conditioned with the value token (they carry gradient into the value encoder),
`ref_w`/`ref_l` from the same UNet without it (the base model is the reference model; no second UNet is needed).
See LIVO_METHOD.md §3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from livo.modeling import additive_value_attention, shifted_time_embedding


def livo_loss_terms(
    theta_w: torch.Tensor,
    ref_w: torch.Tensor,
    theta_l: torch.Tensor,
    ref_l: torch.Tensor,
    *,
    beta: float = 1000.0,
    alpha: float = 500.0,
    gamma1: float = 1.0,
    gamma2: float = 0.5,
    paired_violating: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-sample hinge terms and their batch-mean sum.

    `hinge_w = relu(γ1 + β·(θw − rw))` asks the value token to denoise the aligned image better than the base model;
    `hinge_l = relu(γ2 + α·(rl − θl))` asks it to denoise the violating image worse. Each stops pushing once its margin
    is met. `paired_violating` (not the paper's) measures the violating image's rise against the aligned image's,
    `relu(γ2 + α·((rl − θl) − (rw − θw)))`, so that what raises both errors alike — a change of what both images
    show — does not count towards the margin.
    """
    _check_errors(theta_w, ref_w, theta_l, ref_l)
    hinge_w = F.relu(gamma1 + beta * (theta_w - ref_w))
    violating_gain = ref_l - theta_l
    if paired_violating:
        violating_gain = violating_gain - (ref_w - theta_w)
    hinge_l = F.relu(gamma2 + alpha * violating_gain)
    return {"loss": (hinge_w + hinge_l).mean(), "hinge_w": hinge_w, "hinge_l": hinge_l}


def livo_loss(
    theta_w: torch.Tensor,
    ref_w: torch.Tensor,
    theta_l: torch.Tensor,
    ref_l: torch.Tensor,
    *,
    beta: float = 1000.0,
    alpha: float = 500.0,
    gamma1: float = 1.0,
    gamma2: float = 0.5,
) -> torch.Tensor:
    """`mean(relu(γ1 + β(θw − rw)) + relu(γ2 + α(rl − θl)))`; defaults are the authors' released run."""
    return livo_loss_terms(theta_w, ref_w, theta_l, ref_l, beta=beta, alpha=alpha, gamma1=gamma1, gamma2=gamma2)[
        "loss"
    ]


def diffusion_dpo_loss(
    theta_w: torch.Tensor,
    ref_w: torch.Tensor,
    theta_l: torch.Tensor,
    ref_l: torch.Tensor,
    *,
    beta: float = 5000.0,
) -> torch.Tensor:
    """Diffusion-DPO in its reference code's convention: `mean(softplus(½·β·[(θw − rw) − (θl − rl)]))`."""
    _check_errors(theta_w, ref_w, theta_l, ref_l)
    margin = (theta_w - ref_w) - (theta_l - ref_l)
    return F.softplus(0.5 * beta * margin).mean()


def _check_errors(*errors: torch.Tensor) -> None:
    shapes = {tuple(e.shape) for e in errors}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"the four denoising errors must be 1-D tensors of the same shape [B], got {sorted(shapes)}")


@dataclass
class DenoisingErrors:
    """Per-sample errors `[B]` (fp32). Only `theta_w` and `theta_l` carry gradient."""

    theta_w: torch.Tensor
    ref_w: torch.Tensor
    theta_l: torch.Tensor
    ref_l: torch.Tensor
    distill: torch.Tensor | None = None  # ‖UNet(·, cond_value) − UNet(·, cond_teacher)‖², mean over y_w and y_l

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name).detach().mean()) for name in ("theta_w", "ref_w", "theta_l", "ref_l")}


def _target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}: LiVO supports 'epsilon' and 'v_prediction'")


def _per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction.float() - target.float()).pow(2).mean(dim=tuple(range(1, prediction.ndim)))


def compute_denoising_errors(
    unet,
    noise_scheduler,
    latents_w: torch.Tensor,
    latents_l: torch.Tensor,
    cond_value: torch.Tensor,
    cond_plain: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    fused: bool = True,
    cond_teacher: torch.Tensor | None = None,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
) -> DenoisingErrors:
    """The four per-sample denoising errors of LIVO_METHOD §3 with shared noise ε and timesteps t.

    `cond_value` (`[B, L+1, D]`, value token prepended) is used for θw/θl and carries gradient; `cond_plain`
    (`[B, L, D]`) for the reference terms. `fused=True` sends winner and loser through the UNet as one batch and runs
    the reference passes without autograd (our step); `fused=False` makes four separate passes, the reference recipe,
    kept for equivalence tests and benchmarks. Both give the same numbers up to floating-point reassociation.

    `cond_teacher` (fused only): the frozen encoder's embedding of what the aligned image was generated from; then
    `distill` is the per-sample squared distance between the value-conditioned prediction and the base model's
    prediction under that prompt, on both noisy latents (one more UNet pass, without autograd).

    `added_cond_kwargs` (SDXL: the prompt's pooled `text_embeds` and the `time_ids`, `[B, ...]` each) go to every
    UNet pass unchanged: the value token is the only difference between θ and r — unless it holds
    `value_text_embeds`, which then replaces `text_embeds` in the value passes (θ) only, or (SD) `value_time_shift`
    (`[B, T]`), which shifts the value passes' time embedding (`livo.modeling.shifted_time_embedding`), or (SD)
    `value_token_additive` (k), which makes the value passes' first k keys additive value tokens
    (`livo.modeling.additive_value_attention`).
    """
    added = dict(added_cond_kwargs or {})
    value_pooled = added.pop("value_text_embeds", None)  # SDXL candidate (b): the value passes' own pooled output
    time_shift = added.pop("value_time_shift", None)  # SD with a time-embedding head: shifts the value passes only
    additive = added.pop("value_token_additive", None)  # SD, token_attention="additive": the value passes only
    value_added = {**added, "text_embeds": value_pooled} if value_pooled is not None else added
    extra = {"added_cond_kwargs": {k: torch.cat([v, v]) for k, v in added.items()}} if added else {}
    value_extra = {"added_cond_kwargs": {k: torch.cat([v, v]) for k, v in value_added.items()}} if added else {}
    single = {"added_cond_kwargs": added} if added else {}
    value_single = {"added_cond_kwargs": value_added} if added else {}
    noisy_w = noise_scheduler.add_noise(latents_w, noise, timesteps)
    noisy_l = noise_scheduler.add_noise(latents_l, noise, timesteps)
    target_w = _target(noise_scheduler, latents_w, noise, timesteps)
    target_l = _target(noise_scheduler, latents_l, noise, timesteps)

    if fused:
        noisy = torch.cat([noisy_w, noisy_l])
        steps = torch.cat([timesteps, timesteps])
        with (shifted_time_embedding(unet, None if time_shift is None else torch.cat([time_shift, time_shift])),
              additive_value_attention(unet, additive)):
            pred_value = unet(noisy, steps, encoder_hidden_states=torch.cat([cond_value, cond_value]),
                              **value_extra).sample
        with torch.no_grad():
            pred_plain = unet(noisy, steps, encoder_hidden_states=torch.cat([cond_plain, cond_plain]), **extra).sample
        theta_w, theta_l = _per_sample_mse(pred_value, torch.cat([target_w, target_l])).chunk(2)
        ref_w, ref_l = _per_sample_mse(pred_plain, torch.cat([target_w, target_l])).chunk(2)
        distill = None
        if cond_teacher is not None:
            with torch.no_grad():
                pred_teacher = unet(noisy, steps, encoder_hidden_states=torch.cat([cond_teacher, cond_teacher]),
                                    **extra).sample
            distill_w, distill_l = _per_sample_mse(pred_value, pred_teacher).chunk(2)
            distill = 0.5 * (distill_w + distill_l)
        return DenoisingErrors(theta_w=theta_w, ref_w=ref_w.detach(), theta_l=theta_l, ref_l=ref_l.detach(),
                               distill=distill)
    if cond_teacher is not None:
        raise ValueError("cond_teacher needs fused=True")

    with shifted_time_embedding(unet, time_shift), additive_value_attention(unet, additive):
        theta_w = _per_sample_mse(unet(noisy_w, timesteps, encoder_hidden_states=cond_value, **value_single).sample,
                                  target_w)
        theta_l = _per_sample_mse(unet(noisy_l, timesteps, encoder_hidden_states=cond_value, **value_single).sample,
                                  target_l)
    ref_w = _per_sample_mse(unet(noisy_w, timesteps, encoder_hidden_states=cond_plain, **single).sample, target_w)
    ref_l = _per_sample_mse(unet(noisy_l, timesteps, encoder_hidden_states=cond_plain, **single).sample, target_l)
    return DenoisingErrors(theta_w=theta_w, ref_w=ref_w, theta_l=theta_l, ref_l=ref_l)
