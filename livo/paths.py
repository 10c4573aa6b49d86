"""Where livo finds its shipped configs and where local runs write."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def config_dir() -> Path:
    """`LIVO_CONFIG_DIR`, else `configs/` of the source checkout, else the container image's `/opt/livo/configs`."""
    for candidate in (os.environ.get("LIVO_CONFIG_DIR"), REPO_DIR / "configs", "/opt/livo/configs"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise FileNotFoundError(
        "livo's configs/ directory was not found: set LIVO_CONFIG_DIR to the configs/ folder of the livo checkout"
    )


def cache_dir(kind: str) -> Path:
    """Where livo keeps `kind` (datasets, models, retrieval) between processes: `$LIVO_CACHE_DIR/<kind>`, else
    `~/.cache/livo/<kind>`."""
    return Path(os.environ.get("LIVO_CACHE_DIR", Path.home() / ".cache" / "livo")).expanduser() / kind


def runs_dir() -> Path:
    """Root of local run directories (`LIVO_RUNS_DIR`, default `./runs`)."""
    return Path(os.environ.get("LIVO_RUNS_DIR", "runs")).resolve()
