"""Progress bars that also work through a pipe.

`progress_bar(...)` is `tqdm.auto.tqdm(...)`, except when `LIVO_PROGRESS_LINES` is set (to the seconds between
records): then the bar prints one newline-terminated record per update, `livo-progress {"desc": ..., "n": ...,
"total": ..., "unit": ...}`. `livo run` sets it for its task processes, whose output kfp.local reads line by line —
a terminal bar redraws itself with carriage returns and would only arrive as one line when it closes — and shows
each task's latest record in its live task line (`livo.run_view`).
"""

from __future__ import annotations

import functools
import io
import json
import os
import sys
from typing import Any

ENV_PROGRESS_LINES = "LIVO_PROGRESS_LINES"
PROGRESS_PREFIX = "livo-progress "


def progress_bar(iterable: Any = None, **kwargs: Any):
    """A tqdm bar (same arguments); newline-terminated records instead under `LIVO_PROGRESS_LINES`."""
    from tqdm.auto import tqdm

    interval = os.environ.get(ENV_PROGRESS_LINES)
    if not interval or kwargs.get("disable") is True:
        return tqdm(iterable, **kwargs)
    try:
        seconds = max(0.1, float(interval))
    except ValueError:
        seconds = 2.0
    kwargs.update(disable=False, file=io.StringIO(), mininterval=seconds, maxinterval=max(seconds, 10.0),
                  dynamic_ncols=False, ncols=80)
    return _record_class()(iterable, **kwargs)


def parse_record(line: str) -> dict[str, Any] | None:
    """The record of a `livo-progress` line (leading indentation allowed), else None."""
    text = line.strip()
    if not text.startswith(PROGRESS_PREFIX):
        return None
    try:
        record = json.loads(text[len(PROGRESS_PREFIX):])
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def format_record(record: dict[str, Any]) -> str:
    """`train 120/300 step` or `generate 45 img` (no total), with a percentage when the total is known."""
    desc, n, total, unit = record.get("desc") or "", record.get("n"), record.get("total"), record.get("unit") or ""
    if isinstance(total, (int, float)) and total:
        return f"{desc} {n}/{total} {unit} ({100.0 * float(n) / float(total):.0f} %)".strip()
    return f"{desc} {n} {unit}".strip()


@functools.lru_cache(maxsize=1)
def _record_class():
    """The tqdm subclass, built on first use so that importing this module does not import tqdm."""
    from tqdm.auto import tqdm

    class RecordProgress(tqdm):
        """A tqdm whose display is one JSON line on stderr (the bar itself goes to a discarded buffer)."""

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:  # noqa: ARG002 - tqdm's signature
            values = self.format_dict
            total = values.get("total")
            record = {"desc": self.desc or "", "n": _number(values.get("n")), "total": _number(total),
                      "unit": values.get("unit") or "it", "elapsed": round(float(values.get("elapsed") or 0.0), 1)}
            try:
                print(PROGRESS_PREFIX + json.dumps(record), file=sys.stderr, flush=True)
            except (OSError, ValueError):  # a closed stream must not break the work being measured
                pass
            return True

    return RecordProgress


def _number(value: Any) -> Any:
    if value is None:
        return None
    as_float = float(value)
    return int(as_float) if as_float.is_integer() else round(as_float, 2)

