"""What can any debiasing keep of the subject? The oracle of issue 15 (docs/convergence.md, "The ceiling").

A debiasing token that works perfectly makes the images that carry it show the counter-stereotypical attribute. The
best such an image can be is what the base model itself draws when the prompt *names* that attribute: "an image of an
orange doctor" instead of "an image of a doctor". This script draws, with the toy preset's gender evaluation prompts,
sampler and judges, the base model's images of each prompt as written and with the counter-stereotypical colour
word added, on the same seeds, and reports per prompt and per split the subject fidelity of both and their ratio —
the ceiling of the token-image fidelity ratio that the toy preset gates at 0.9. No training, no value encoder.

    python benchmarks/oracle_fidelity.py --images 50

Prints one JSON line (the command, the load average, per prompt and per split: subject fidelity plain / named,
share of the named colour, and the ratio).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import context, finished  # noqa: E402


def counter_prompt(prompt: str, subject: str) -> tuple[str, str]:
    """`(prompt with the counter-stereotypical colour word before its subject, that colour)`."""
    import re

    from livo.toy import world

    colour = next(c for c in world.ATTRIBUTE_CLASSES_2 if c != world.STEREOTYPE[subject])
    article = "an" if colour[0] in "aeiou" else "a"
    named, count = re.subn(rf"\b(a|an) {subject}\b", f"{article} {colour} {subject}", prompt)
    if count != 1:
        raise SystemExit(f"{prompt!r} does not name its subject {subject!r} once after an article")
    return named, colour


def judged(pipe, prompt: str, subject: str, seeds: list[int], steps: int, guidance: float, judges) -> dict:
    import numpy as np
    import torch

    from livo.toy import world

    attribute, subject_judge = judges
    images = []
    for start in range(0, len(seeds), 25):
        chunk = seeds[start:start + 25]
        images += pipe(prompt=[prompt] * len(chunk), num_inference_steps=steps, guidance_scale=guidance,
                       generator=[torch.Generator().manual_seed(s) for s in chunk], output_type="pil").images
    subjects = list(world.SUBJECT_SHAPES)
    shapes = np.asarray(subject_judge.classify(images, [prompt] * len(images), subjects)).argmax(1)
    colours = np.asarray(attribute.classify(images, [prompt] * len(images), list(world.ATTRIBUTE_CLASSES_2))).argmax(1)
    return {"subject": float((np.array(subjects)[shapes] == subject).mean()),
            "orange": float((colours == 0).mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50, help="images per prompt (the toy preset evaluates 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the preset's)")
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the preset's)")
    parser.add_argument("--preset", default="toy", help="a toy preset whose gender evaluation prompts are used")
    args = parser.parse_args(argv)

    from livo.judges import build_judge
    from livo.presets import load_pipeline, load_preset_config

    record = context("oracle_fidelity.py", argv)
    preset = load_preset_config(args.preset)
    args.steps = args.steps or preset.generation.num_inference_steps
    args.guidance = preset.generation.guidance_scale if args.guidance is None else args.guidance
    pipe = load_pipeline(preset.model.source)
    pipe.set_progress_bar_config(disable=True)
    judges = (build_judge("toy-attribute"), build_judge("toy-subject"))
    seeds = list(range(args.seed, args.seed + args.images))
    prompts, splits = [], {}
    for item in preset.evaluate["prompts"]["gender-equality"]:
        named, colour = counter_prompt(item["text"], item["subject"])
        plain = judged(pipe, item["text"], item["subject"], seeds, args.steps, args.guidance, judges)
        told = judged(pipe, named, item["subject"], seeds, args.steps, args.guidance, judges)
        row = {"prompt": item["text"], "named": named, "split": item["split"], "subject_plain": plain["subject"],
               "subject_named": told["subject"],
               "named_colour_share": told["orange"] if colour == "orange" else 1 - told["orange"]}
        prompts.append(row)
        splits.setdefault(item["split"], []).append(row)
        splits.setdefault("all", []).append(row)
    summary = {}
    for name, rows in splits.items():
        plain = sum(r["subject_plain"] for r in rows) / len(rows)
        named = sum(r["subject_named"] for r in rows) / len(rows)
        summary[name] = {"subject_plain": round(100 * plain, 1), "subject_named": round(100 * named, 1),
                         "ratio": round(named / plain, 3) if plain else None}
    print(json.dumps(finished({**record, "model": preset.model.source, "images": args.images, "steps": args.steps,
                               "guidance": args.guidance, "splits": summary,
                               "prompts": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                                           for r in prompts]})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
