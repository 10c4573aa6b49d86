"""How does the value token act in cross-attention? A diagnostic of issue 15 (docs/convergence.md, "How the token acts").

A prepended token joins the prompt's keys in every cross-attention layer, so the softmax gives it a share of each
query's attention and takes that share from the prompt's tokens. This script samples a trained toy value encoder's
token images through an attention processor that measures that share (the mean attention on the token, conditional
branch, over layers, heads, positions and steps) and can change how the token enters:

- `method`: the token as LiVO uses it (plain attention over token + prompt; the images equal the pipeline's);
- `additive`: the prompt's attention left exactly as without the token, the token's value added with the share the
  softmax would give it — the token's content without the displacement of the prompt;
- `base`: the base model's images of the prompt (no token);
- `partner`: the token the encoder computes for the preference data's occupation of the same stereotype (the doctor's
  for the engineer, the nurse's for the teacher; a trained occupation gets its own), prepended to this occupation's
  prompt — does what turns a trained occupation carry to an unseen one in the UNet, or only through the encoder?

Per mode and occupation it reports, with the toy world's exact judges, the share of orange images, the share showing
the prompt's subject, and the token's attention share; and where each occupation's token lies on the line from the
nurse's token to the doctor's (`token_geometry`: `tau` +0.5 at the doctor's, -0.5 at the nurse's, the projection on
that axis; `cos_axis`, the cosine of the token's offset from their midpoint with the axis, signed toward the
occupation's stereotype partner). No training.

    python benchmarks/token_attention.py --value-encoder runs/study/post_d0_t0/seed0/livo/value_encoder
    # a retrained base model (the encoder must have been trained on it)
    python benchmarks/token_attention.py --value-encoder DIR --model WEIGHTS --modes method partner

Prints one JSON line (the command, the load average, and the figures).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import (  # noqa: E402
    TOY_OCCUPATIONS,
    ToyJudges,
    add_toy_token_arguments,
    context,
    finished,
    toy_occupation_prompt,
)

MODES = ("base", "method", "additive", "partner")
# the occupation of the preference data (configs/principles/toy.yaml) that shares each occupation's stereotype
STEREOTYPE_PARTNER = {"doctor": "doctor", "nurse": "nurse", "engineer": "doctor", "teacher": "nurse"}


class TokenAttention:
    """A diffusers attention processor (plain attention, as `AttnProcessor`) that, while `state["token"]` is set,
    records the value token's attention share (key 0 of the conditional half of a guided batch) and, in `additive`
    mode, keeps the prompt's attention as it would be without the token."""

    def __init__(self, state: dict):
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        from livo.modeling import additive_token_mix

        cross = encoder_hidden_states is not None
        context_states = encoder_hidden_states if cross else hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context_states), attn.to_v(context_states)
        batch, length, _ = query.shape
        heads = attn.heads
        width = query.shape[-1] // heads
        query, key, value = (t.view(batch, -1, heads, width).transpose(1, 2) for t in (query, key, value))
        logits = query @ key.transpose(-1, -2) * attn.scale
        probs = logits.softmax(-1)
        out = probs @ value
        if cross and self.state["token"]:
            cond = slice(batch // 2, batch)  # classifier-free guidance: [unconditional; conditional]
            self.state["share"].append(float(probs[cond, :, :, 0].mean()))
            if self.state["mode"] == "additive":  # as `value_token_attention=additive` trains and samples it
                out = out.clone()
                out[cond] = additive_token_mix(logits[cond], value[cond], 1)
        out = out.transpose(1, 2).reshape(batch, length, heads * width)
        return attn.to_out[1](attn.to_out[0](out))


def sample(pipe, prompt: str, principle_text: str, mode: str, state: dict, images: int, steps: int,
           guidance: float, seed: int, partner_prompt: str | None = None):
    """`images` images of `prompt` in `mode`; `partner` takes its value token(s) from `partner_prompt`."""
    import torch

    base = pipe.base
    if mode == "base":
        ids = base.tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            embeds = base.text_encoder(input_ids=ids)[0]
            empty = base.tokenizer("", padding="max_length", max_length=embeds.shape[1], return_tensors="pt").input_ids
            negative = base.text_encoder(input_ids=empty)[0]
    else:
        embeds, negative = pipe._value_embeddings(prompt, principle_text, None)
        if mode == "partner":
            tokens = pipe.value_encoder.value_tokens
            partner, _ = pipe._value_embeddings(partner_prompt, principle_text, None)
            embeds = torch.cat([partner[:, :tokens], embeds[:, tokens:]], dim=1)
    state.update(mode=mode, token=mode != "base", share=[])
    return base(prompt_embeds=embeds.repeat(images, 1, 1), negative_prompt_embeds=negative.repeat(images, 1, 1),
                num_inference_steps=steps, guidance_scale=guidance, output_type="pil",
                generator=[torch.Generator().manual_seed(seed + i) for i in range(images)]).images


def token_geometry(pipe, principle_text: str) -> dict[str, dict[str, float]]:
    """Per occupation, where the encoder's token for its prompt lies relative to the trained occupations' tokens:
    `tau` = <t - m, d - n> / |d - n|^2 with d, n the doctor's and nurse's tokens and m their midpoint (+0.5 at the
    doctor's, -0.5 at the nurse's), and `cos_axis`, the cosine of t - m with the axis pointing to the occupation's
    stereotype partner (1: the offset is the partner's direction; 0: orthogonal to the doctor-nurse line)."""
    import torch

    from livo.modeling import tokenize_value_inputs

    prompts = [toy_occupation_prompt(name) for name in TOY_OCCUPATIONS]
    ids = tokenize_value_inputs(pipe.base.tokenizer, [principle_text] * len(prompts), prompts)
    with torch.no_grad():
        out = pipe.value_encoder(ids)
    tokens = (out[0] if isinstance(out, tuple) else out).float().flatten(1)  # k value tokens: one long vector
    by_name = dict(zip(TOY_OCCUPATIONS, tokens, strict=True))
    doctor, nurse = by_name["doctor"], by_name["nurse"]
    axis, middle = doctor - nurse, (doctor + nurse) / 2
    geometry = {}
    for name, token in by_name.items():
        sign = 1.0 if STEREOTYPE_PARTNER[name] == "doctor" else -1.0
        offset = token - middle
        geometry[name] = {"tau": round(float(offset @ axis / (axis @ axis)), 3),
                          "cos_axis": round(float(torch.nn.functional.cosine_similarity(offset, sign * axis, dim=0)),
                                            3)}
    return geometry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_toy_token_arguments(parser)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--model", default=None,
                        help="base model weights folder the encoder was trained on (default: the toy preset's)")
    args = parser.parse_args(argv)

    import numpy as np

    from livo.modeling import LiVOPipeline, ValueEncoder
    from livo.presets import load_pipeline
    from livo.toy.base_model import load_toy_pipeline

    record = context("token_attention.py", argv)
    encoder = ValueEncoder.from_pretrained(args.value_encoder)
    if encoder.time_shift_dim:  # its shift acts outside the attention this script samples through
        print(f"token_attention.py: {args.value_encoder} has a time-embedding head (value_time_shift), which this "
              "diagnostic does not apply: use an encoder trained without it", file=sys.stderr)
        return 2
    base = load_toy_pipeline(weights_dir=args.model) if args.model else load_pipeline("toy")
    pipe = LiVOPipeline(base, encoder)
    pipe.base.set_progress_bar_config(disable=True)
    state: dict = {"token": False, "mode": "method", "share": []}
    pipe.base.unet.set_attn_processor({name: TokenAttention(state) for name in pipe.base.unet.attn_processors})
    judges = ToyJudges()
    results = {}
    for mode in args.modes:
        per_subject = {}
        for name in TOY_OCCUPATIONS:
            images = sample(pipe, toy_occupation_prompt(name), args.principle, mode, state, args.images, args.steps,
                            args.guidance, args.seed, toy_occupation_prompt(STEREOTYPE_PARTNER[name]))
            per_subject[name] = {**judges.shares(images, name),
                                 "token_share": round(float(np.mean(state["share"])), 3) if state["share"] else None}
        results[mode] = per_subject
    print(json.dumps(finished({**record, "value_encoder": args.value_encoder, "model": args.model or "toy preset",
                               "images": args.images, "steps": args.steps, "guidance": args.guidance,
                               "token_attention": results,
                               "token_geometry": token_geometry(pipe, args.principle)})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
