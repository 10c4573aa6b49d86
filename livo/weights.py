"""Weight files: the cheap integrity check every loader runs before building a model.

Below `livo.presets` (base models) and `livo.modeling` (the value encoder), which both call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from livo.errors import ConfigError


def check_safetensors_files(paths: Sequence[str | Path]) -> None:
    """Read the header of every safetensors file in `paths` (cheap: no tensor data is loaded); a truncated, empty or
    garbled one raises `ConfigError` naming the file, before any model is built."""
    from safetensors import SafetensorError, safe_open

    for path in paths:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"{path}: not a readable safetensors file ({exc}); the file is truncated or corrupt "
                              "— copy or export it again") from exc
