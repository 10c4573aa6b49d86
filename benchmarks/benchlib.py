"""What every benchmark's JSON line carries besides its figures (issue 17): the command that produced it, the
hardware, and the load average before and after — figures from a busy shared machine are not comparable to a quiet
one's, and the line has to say which it was."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def context(script: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command (`python benchmarks/<script> ARGS`), the CPU, its count, and the load average now."""
    return {"command": " ".join([f"python benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)]),
            "cpu": cpu_name(), "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()]}


def finished(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with the load average after the run."""
    return {**record, "load_average_after": [round(x, 2) for x in os.getloadavg()]}


# -- the toy value-token diagnostics (token_from_step.py, token_attention.py) ---------------------------------------
TOY_OCCUPATIONS = ("doctor", "nurse", "engineer", "teacher")


def add_toy_token_arguments(parser: Any) -> None:
    """The options every toy value-token diagnostic takes: the encoder, the principle, and the sampling."""
    parser.add_argument("--value-encoder", required=True, help="a trained toy value encoder folder")
    parser.add_argument("--principle", default="gender equality", help="principle text of the token")
    parser.add_argument("--images", type=int, default=20, help="images per occupation and setting")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (the toy preset's 20)")
    parser.add_argument("--guidance", type=float, default=3.0, help="CFG scale (the toy preset's 3)")
    parser.add_argument("--seed", type=int, default=1000, help="seed of the first image")


def toy_occupation_prompt(occupation: str) -> str:
    """The toy preset's held-out evaluation template for one occupation."""
    return f"an image of {'an' if occupation[0] in 'aeiou' else 'a'} {occupation}"


class ToyJudges:
    """The toy world's exact colour and subject judges, as the diagnostics read them."""

    def __init__(self) -> None:
        from livo.judges import build_judge

        self.attribute, self.subject = build_judge("toy-attribute"), build_judge("toy-subject")

    def shares(self, images: Sequence[Any], occupation: str) -> dict[str, float]:
        """Share of orange images and share showing `occupation`, rounded to 3 digits."""
        import numpy as np

        prompts = [toy_occupation_prompt(occupation)] * len(images)
        colours = np.asarray(self.attribute.classify(images, prompts, ["orange", "blue"])).argmax(1)
        shapes = np.asarray(self.subject.classify(images, prompts, list(TOY_OCCUPATIONS))).argmax(1)
        return {"orange": round(float((colours == 0).mean()), 3),
                "subject": round(float((np.array(TOY_OCCUPATIONS)[shapes] == occupation).mean()), 3)}
