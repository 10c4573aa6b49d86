"""The base model's evaluation images, kept on local disk by content hash.

An evaluation generates every image twice: with the base model and with the value token. The base half depends only
on the base model and the generation setup, not on the candidate, so re-evaluating (the next `livo run`, a
retraining, a checkpoint sweep) would redraw the same pixels. The cache keys each principle's base images by the
sha256 of everything that decides them — the base model's weight fingerprint, the scheduler and its config, the
sampler settings and batch size, the prompts, images per prompt and seed, the device type, dtype and (on CPU) thread
count, and the torch and diffusers versions — so a hit is the image the run would have drawn, and anything else is a
miss. Each entry stores the sha256 of its pixels and is verified when read; a damaged entry is regenerated.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

from livo.log import get_logger, log_event

logger = get_logger("livo.evaluation.base_cache")

FORMAT_VERSION = 1


class BaseImageCache:
    def __init__(self, directory: str | Path, identity: dict[str, Any]):
        self.directory = Path(directory)
        self.identity = {"format_version": FORMAT_VERSION, **identity}
        self.hits: list[str] = []
        self.misses: list[str] = []

    @classmethod
    def for_pipeline(cls, pipeline: Any, base_model_fingerprint: str, generation: dict[str, Any],
                     directory: str | Path | None = None) -> BaseImageCache:
        """The cache of `pipeline`'s base model (a `LiVOPipeline`) under `generation` (the kwargs of `generate`)."""
        import diffusers
        import torch

        from livo.paths import cache_dir

        base = pipeline.base
        device = base.unet.device
        identity = {
            "base_model_fingerprint": base_model_fingerprint,
            "scheduler": type(base.scheduler).__name__,
            "scheduler_config": {k: v for k, v in dict(base.scheduler.config).items() if not k.startswith("_")},
            "generation": {k: generation[k] for k in sorted(generation)},
            "device_type": device.type,
            "dtype": str(base.unet.dtype),
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        }
        return cls(directory or cache_dir("evaluation") / "base-images", identity)

    def key(self, prompts: list[str], images_per_prompt: int, seed: int) -> str:
        material = {**self.identity, "prompts": list(prompts), "images_per_prompt": images_per_prompt, "seed": seed}
        return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npz"

    def load(self, key: str, label: str = "") -> list[Any] | None:
        """The cached images of `key` (PIL), or None (absent, unreadable or damaged: then it is regenerated)."""
        import numpy as np
        from PIL import Image

        path = self._path(key)
        if not path.is_file():
            self.misses.append(label or key)
            return None
        try:
            with np.load(path, allow_pickle=False) as entry:
                pixels = entry["images"]
                recorded = str(entry["sha256"])
            if hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest() != recorded:
                raise ValueError("pixel sha256 does not match the entry")
        except (OSError, ValueError, KeyError) as exc:
            log_event(logger, "base-image cache entry ignored, regenerating", path=str(path), error=str(exc))
            self.misses.append(label or key)
            return None
        self.hits.append(label or key)
        return [Image.fromarray(image) for image in pixels]

    def store(self, key: str, images: list[Any]) -> None:
        """Write `images` atomically; a full or read-only disk only costs the cache, never the evaluation."""
        import numpy as np

        pixels = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
        path = self._path(key)
        buffer = io.BytesIO()
        np.savez(buffer, images=pixels, sha256=np.asarray(hashlib.sha256(pixels.tobytes()).hexdigest()))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            log_event(logger, "base-image cache not written", path=str(path), error=str(exc))

    def summary(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "hits": list(self.hits), "misses": list(self.misses)}
