"""Training batches from a preference dataset, as a pure function of (seed, step, micro-step, rank).

Every optimizer step consumes `global_batch` consecutive positions of an endless stream made of per-epoch
permutations of the rows: position p is row `perm(epoch = p // N)[p % N]`, and rank r's micro-step k of step s takes
positions `s·G + k·W·B + r·B … + B` (G global batch, W world size, B per-device batch). The row gives the prompt,
the principle and the aligned image; the violating image is re-drawn at every position from the rows of the same
scene (LIVO_METHOD §4: "re-drawn at random from the same scene at every step"), with a generator seeded by
(seed, p). Nothing here keeps state, so resuming at step s reproduces the uninterrupted run's batches exactly, and
DataLoader workers can build batches in any order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from livo.errors import DataError

_ORDER_STREAM = 0x0DE7
_VIOLATING_STREAM = 0x0B1D


@dataclass(frozen=True)
class PairSchedule:
    """Which (aligned row, violating row) pairs each rank trains on at each micro-step."""

    scene_rows: tuple[tuple[int, ...], ...]   # rows of each scene
    row_scene: tuple[int, ...]                # scene index of each row
    seed: int
    per_device: int
    accumulation: int
    world_size: int
    redraw: bool = True  # False: a row's own violating image (matched pairs), never a draw from the scene

    @classmethod
    def build(cls, scenes: dict[str, Sequence[int]], num_rows: int, *, seed: int, per_device: int,
              accumulation: int, world_size: int, redraw: bool = True) -> PairSchedule:
        if num_rows <= 0:
            raise DataError("the preference dataset has no rows; regenerate it with more candidates per scene")
        row_scene = [-1] * num_rows
        scene_rows = []
        for index, name in enumerate(sorted(scenes)):
            rows = tuple(int(r) for r in scenes[name])
            scene_rows.append(rows)
            for row in rows:
                if not 0 <= row < num_rows:
                    raise DataError(f"scene {name!r} lists row {row}, but the dataset has {num_rows} rows")
                row_scene[row] = index
        orphans = [r for r, s in enumerate(row_scene) if s < 0]
        if orphans:
            raise DataError(f"{len(orphans)} row(s) belong to no scene (first: {orphans[0]}); the dataset is corrupted")
        return cls(tuple(scene_rows), tuple(row_scene), seed, per_device, accumulation, world_size, redraw)

    @property
    def num_rows(self) -> int:
        return len(self.row_scene)

    @property
    def global_batch(self) -> int:
        return self.per_device * self.accumulation * self.world_size

    def epoch_order(self, epoch: int) -> np.ndarray:
        return _permutation(self.seed, epoch, self.num_rows)

    def positions(self, step: int, micro_step: int, rank: int) -> range:
        start = step * self.global_batch + (micro_step * self.world_size + rank) * self.per_device
        return range(start, start + self.per_device)

    def pair_at(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.num_rows)
        aligned = int(self.epoch_order(epoch)[offset])
        if not self.redraw:
            return aligned, aligned
        candidates = self.scene_rows[self.row_scene[aligned]]
        draw = np.random.default_rng([self.seed, _VIOLATING_STREAM, position]).integers(len(candidates))
        return aligned, candidates[int(draw)]

    def pairs(self, step: int, micro_step: int, rank: int) -> list[tuple[int, int]]:
        return [self.pair_at(p) for p in self.positions(step, micro_step, rank)]


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, _ORDER_STREAM, epoch]).permutation(n)


def image_to_tensor(image: Any, resolution: int):
    """A PIL image -> `[3, R, R]` float tensor in [-1, 1]: shorter side resized to R (bilinear), then centre crop."""
    import torch
    from PIL import Image

    image = image.convert("RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    if (width, height) != (resolution, resolution):
        new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        image = image.resize(new_size, Image.BILINEAR)
        left = (image.width - resolution) // 2
        top = (image.height - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


class PairBatches:
    """`batches[micro_index]` -> the batch of micro-step `micro_index` (= step · accumulation + k) for one rank.

    A map-style dataset for `torch.utils.data.DataLoader(batch_size=None)`. Uses the dataset's precomputed latents and
    prompt embeddings when `use_latents` / `use_prompt_embeds`; otherwise returns images as `[B, 3, R, R]` tensors.
    """

    def __init__(self, rows, schedule: PairSchedule, rank: int, *, use_latents: bool, use_prompt_embeds: bool,
                 resolution: int | None):
        if not use_latents and not resolution:
            raise ValueError("a resolution is needed when latents are computed from the images")
        self.schedule = schedule
        self.rank = rank
        self.use_latents = use_latents
        self.use_prompt_embeds = use_prompt_embeds
        self.resolution = resolution
        self._meta = rows.select_columns(["prompt", "principle_text", "aligned_prompt"])
        if use_latents:
            self._aligned = rows.with_format("numpy", columns=["aligned_latents"])
            self._violating = rows.with_format("numpy", columns=["violating_latents"])
        else:
            self._aligned = rows.select_columns(["aligned_image"])
            self._violating = rows.select_columns(["violating_image"])
        self._embeds = rows.with_format("numpy", columns=["prompt_embeds"]) if use_prompt_embeds else None

    def __len__(self) -> int:  # endless stream; the sampler bounds it
        return 2**62

    def __getitem__(self, micro_index: int) -> dict[str, Any]:
        import torch

        step, micro_step = divmod(int(micro_index), self.schedule.accumulation)
        pairs = self.schedule.pairs(step, micro_step, self.rank)
        aligned_rows = [a for a, _ in pairs]
        violating_rows = [v for _, v in pairs]
        meta = self._meta[aligned_rows]
        batch: dict[str, Any] = {
            "step": step,
            "micro_step": micro_step,
            "aligned_rows": aligned_rows,
            "violating_rows": violating_rows,
            "prompts": list(meta["prompt"]),
            "principle_texts": list(meta["principle_text"]),
            # what the aligned image was generated from (bias: the attribute-augmented prompt; toxicity: the clean
            # prompt): the teacher of loss.distill_weight
            "aligned_prompts": list(meta["aligned_prompt"]),
        }
        if self.use_latents:
            batch["latents_w"] = torch.from_numpy(np.asarray(self._aligned[aligned_rows]["aligned_latents"]))
            batch["latents_l"] = torch.from_numpy(np.asarray(self._violating[violating_rows]["violating_latents"]))
        else:
            batch["pixels_w"] = torch.stack([image_to_tensor(im, self.resolution)
                                             for im in self._images(self._aligned, aligned_rows, "aligned_image")])
            batch["pixels_l"] = torch.stack([image_to_tensor(im, self.resolution) for im in
                                             self._images(self._violating, violating_rows, "violating_image")])
        if self._embeds is not None:
            batch["prompt_embeds"] = torch.from_numpy(np.asarray(self._embeds[aligned_rows]["prompt_embeds"]))
        return batch


    @staticmethod
    def _images(table, rows: list[int], column: str) -> list[Any]:
        """Decoded images of `rows`; an undecodable one is a one-line `DataError` naming its row."""
        try:
            return [image.convert("RGB") for image in table[rows][column]]
        except Exception:  # PIL / datasets raise several types for broken bytes
            for row in rows:
                try:
                    table[row][column].load()
                except Exception as exc:
                    raise DataError(f"dataset row {row} {column} does not decode ({type(exc).__name__}: {exc}); run "
                                    "`livo data verify` on the dataset and replace that image") from None
            raise


def _as_is(batch):
    return batch


def make_loader(batches: PairBatches, start_micro: int, end_micro: int, *, workers: int, pin_memory: bool):
    """Micro-batches `start_micro … end_micro-1` in order (with `workers` background processes)."""
    from torch.utils.data import DataLoader

    return DataLoader(batches, batch_size=None, sampler=range(start_micro, end_micro), num_workers=workers,
                      collate_fn=_as_is, pin_memory=pin_memory, persistent_workers=False,
                      prefetch_factor=2 if workers else None)
