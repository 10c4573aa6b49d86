"""When does the value token act? A diagnostic of issue 15 (docs/convergence.md, "When does the token act?").

A trained toy value encoder's token is applied only from sampling step k on (the base model's prompt embedding
before it, swapped in through diffusers' `callback_on_step_end`), and the toy world's exact judges measure, per
occupation, the share of orange images and of images showing the prompt's subject. k = 0 is the method; k = the
number of steps is the base model. No training: it reads what a trained token does to the layout and the colour.

    python benchmarks/token_from_step.py --value-encoder runs/study/post_d0_t0/seed0/livo/value_encoder

Prints one JSON line (the command, the load average, and per k and occupation: orange share, subject share).
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


def token_from_step(pipe, prompt: str, principle_text: str, start: int, images: int, steps: int, guidance: float,
                    seed: int):
    """`images` images of `prompt` whose value token joins the conditioning at sampling step `start` (0: from the
    first step, as the method samples; `steps`: never)."""
    import torch

    base = pipe.base
    merged, negative = pipe._value_embeddings(prompt, principle_text, None)
    ids = base.tokenizer(prompt, truncation=True, max_length=base.tokenizer.model_max_length - 1,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        plain = base.text_encoder(input_ids=ids)[0]
        empty = base.tokenizer("", padding="max_length", max_length=plain.shape[1], return_tensors="pt").input_ids
        plain_negative = base.text_encoder(input_ids=empty)[0]

    def swap(_pipe, index, _timestep, tensors):
        if index + 1 == start:  # the embeddings of the steps from `start` on (classifier-free guidance: [uncond, cond])
            tensors["prompt_embeds"] = torch.cat([negative.repeat(images, 1, 1), merged.repeat(images, 1, 1)])
        return tensors

    first, first_negative = (merged, negative) if start == 0 else (plain, plain_negative)
    return base(prompt_embeds=first.repeat(images, 1, 1), negative_prompt_embeds=first_negative.repeat(images, 1, 1),
                num_inference_steps=steps, guidance_scale=guidance, output_type="pil",
                generator=[torch.Generator().manual_seed(seed + i) for i in range(images)],
                callback_on_step_end=swap if 0 < start < steps else None,
                callback_on_step_end_tensor_inputs=["prompt_embeds"]).images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_toy_token_arguments(parser)
    parser.add_argument("--starts", type=int, nargs="+", default=[0, 4, 8, 12, 20], help="sampling steps k")
    args = parser.parse_args(argv)

    from livo.modeling import LiVOPipeline, ValueEncoder
    from livo.presets import load_pipeline

    record = context("token_from_step.py", argv)
    pipe = LiVOPipeline(load_pipeline("toy"), ValueEncoder.from_pretrained(args.value_encoder))
    judges = ToyJudges()
    results = {}
    for start in args.starts:
        results[str(start)] = {
            name: judges.shares(token_from_step(pipe, toy_occupation_prompt(name), args.principle, start, args.images,
                                                args.steps, args.guidance, args.seed), name)
            for name in TOY_OCCUPATIONS}
    print(json.dumps(finished({**record, "value_encoder": args.value_encoder, "images": args.images,
                               "steps": args.steps, "guidance": args.guidance, "token_from_step": results})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
