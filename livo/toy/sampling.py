"""Sampling the toy base model for its measures (`livo.toy.measure`, `livo.toy.token_ceiling`): N images of a prompt
on fixed seeds, with the pipeline's own padded encoding or as the LiVO pipeline encodes a prompt before its token."""

from __future__ import annotations

from typing import Any


def unpadded_conditioning(pipe, prompt: str) -> dict[str, Any]:
    """The pipeline keyword arguments for `prompt` under the encoding control (`LiVOPipeline.unpadded_embeddings`:
    unpadded as the value-token path encodes it, the empty negative at the same length)."""
    from livo.modeling import LiVOPipeline

    embeds = LiVOPipeline(pipe).unpadded_embeddings(prompt)
    keys = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    return dict(zip(keys[:len(embeds)], embeds, strict=True))


def generate(pipe, prompt: str, count: int, seed: int, steps: int, guidance: float, batch_size: int = 50,
             unpadded: bool = False, negative_prompt: str | None = None) -> list:
    """`count` images of `prompt`, the pipeline's own (padded) encoding or, `unpadded`, `unpadded_conditioning`;
    `negative_prompt` replaces the empty unconditional prompt of classifier-free guidance (padded encoding only)."""
    import torch

    conditioning = unpadded_conditioning(pipe, prompt) if unpadded else None
    images = []
    for start in range(0, count, batch_size):
        generator = torch.Generator(device="cpu").manual_seed(seed + start)
        n = min(batch_size, count - start)
        inputs = ({key: value.expand(n, *value.shape[1:]) for key, value in conditioning.items()}
                  if conditioning is not None else {"prompt": [prompt] * n})
        if negative_prompt is not None and conditioning is None:
            inputs["negative_prompt"] = [negative_prompt] * n
        images.extend(pipe(generator=generator, num_inference_steps=steps, guidance_scale=guidance,
                           output_type="pil", **inputs).images)
    return images
