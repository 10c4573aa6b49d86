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
