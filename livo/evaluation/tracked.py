"""What an evaluation hands to experiment tracking (`livo.tracking`) and to its report about training.

`tracking_metrics(metrics)`: flat `<principle>.<metric>` numbers (the candidate's value; `.base` and `.improvement`
beside it), `quality.<name>` likewise and `passed`; `judge_params(metrics)`: `judge.<principle>` = the judge id
that produced that principle's numbers. `training_log(location)`: the records of train_log.jsonl written by the
training run that produced the value encoder (local directory or s3:// URI), [] when there is none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from livo.evaluation.report import finite_number
from livo.log import get_logger, log_event

logger = get_logger(__name__)

TRAIN_LOG_FILE = "train_log.jsonl"  # livo.training.checkpoint.TRAIN_LOG_FILE (evaluation does not import training)
VALUE_ENCODER_DIR = "value_encoder"


def tracking_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Flat metric name -> number of an evaluation's metrics (finite numbers only)."""
    from livo.evaluation.report import metric_rows

    flat: dict[str, float] = {}
    for row in metric_rows(metrics):
        if "unavailable" in row or row.get("metric") is None:
            continue
        name = f"{row['section']}.{row['metric'].replace(' (', '.').rstrip(')')}"  # "D1 (seen)" -> "D1.seen"
        for suffix, value in (("", row.get("aligned")), (".base", row.get("base")),
                              (".improvement", None if row.get("change") is None else -row["change"])):
            number = finite_number(value)
            if number is not None:
                flat[name + suffix] = number
    flat["passed"] = 1.0 if metrics.get("passed") else 0.0
    return flat


def judge_params(metrics: dict[str, Any]) -> dict[str, str]:
    """`judge.<principle or quality.name>` -> the judge id (or `unavailable: <reason>`)."""
    params = {}
    for name, entry in (metrics.get("judges") or {}).items():
        judge = entry.get("judge")
        params[f"judge.{name}"] = str(judge) if judge else f"unavailable: {entry.get('reason', '')}"[:500]
    return params


def _log_text(location: str) -> str | None:
    """train_log.jsonl beside or inside `location` (the value encoder directory or the training output)."""
    location = location.rstrip("/")
    if location.startswith("s3://"):
        from livo.store import ObjectStore, parse_s3_uri

        store = ObjectStore.for_uri(location)
        _, prefix = parse_s3_uri(location)
        prefix = prefix.strip("/")
        parent = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        for key in (f"{prefix}/{TRAIN_LOG_FILE}", f"{parent}/{TRAIN_LOG_FILE}".lstrip("/")):
            if store.exists(key):
                return store.get_bytes(key).decode("utf-8")
        return None
    path = Path(location)
    for candidate in (path / TRAIN_LOG_FILE, path.parent / TRAIN_LOG_FILE):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    return None


def training_log(location: str | Path | None) -> list[dict[str, Any]]:
    """The records of the training log that produced the value encoder at `location`; [] when there is none or it
    cannot be read (the evaluation never fails for it: one warning line)."""
    if not location:
        return []
    try:
        text = _log_text(str(location))
    except Exception as exc:  # noqa: BLE001 - an unreadable log only leaves the report without training curves
        log_event(logger, "training log not read", 30, location=str(location), error=" ".join(str(exc).split())[:200])
        return []
    records = []
    for line in (text or "").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
