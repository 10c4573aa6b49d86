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
_FLIP_STREAM = 0xF11B


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
    random_flip: bool = False  # mirror a position's pair (both images) with probability 1/2

    @classmethod
    def build(cls, scenes: dict[str, Sequence[int]], num_rows: int, *, seed: int, per_device: int,
              accumulation: int, world_size: int, redraw: bool = True, random_flip: bool = False) -> PairSchedule:
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
        return cls(tuple(scene_rows), tuple(row_scene), seed, per_device, accumulation, world_size, redraw,
                   random_flip)

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

    def flip_at(self, position: int) -> bool:
        """Whether the pair at `position` is mirrored: one coin for both images, so the pair stays comparable."""
        return self.random_flip and bool(np.random.default_rng([self.seed, _FLIP_STREAM, position]).random() < 0.5)

    def flips(self, step: int, micro_step: int, rank: int) -> list[bool]:
        return [self.flip_at(p) for p in self.positions(step, micro_step, rank)]


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

    A map-style dataset for `torch.utils.data.DataLoader(batch_size=None)`. With `use_latents`, the pairs come as the
    dataset's VAE posteriors (`latent_dist_w` / `latent_dist_l`, `[B, 2C, h, w]`, mirrored ones where the schedule
    flips), which training samples; otherwise as images (`pixels_w` / `pixels_l`, `[B, 3, R, R]`, mirrored likewise).
    With `use_prompt_embeds`, the frozen prompt embeddings come too.
    """

    def __init__(self, rows, schedule: PairSchedule, rank: int, *, use_latents: bool, use_prompt_embeds: bool,
                 resolution: int | None):
        from livo.data.dataset import FLIPPED_LATENT_DIST_COLUMNS, LATENT_DIST_COLUMNS

        if not use_latents and not resolution:
            raise ValueError("a resolution is needed when latents are computed from the images")
        self.schedule = schedule
        self.rank = rank
        self.use_latents = use_latents
        self.use_prompt_embeds = use_prompt_embeds
        self.resolution = resolution
        self._meta = rows.select_columns(["prompt", "principle_text", "aligned_prompt"])
        if use_latents:
            names = LATENT_DIST_COLUMNS + (FLIPPED_LATENT_DIST_COLUMNS if schedule.random_flip else ())
            self._aligned = rows.with_format("numpy", columns=[n for n in names if n.startswith("aligned_")])
            self._violating = rows.with_format("numpy", columns=[n for n in names if n.startswith("violating_")])
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
        flips = self.schedule.flips(step, micro_step, self.rank)
        aligned_rows = [a for a, _ in pairs]
        violating_rows = [v for _, v in pairs]
        meta = self._meta[aligned_rows]
        batch: dict[str, Any] = {
            "step": step,
            "micro_step": micro_step,
            "aligned_rows": aligned_rows,
            "violating_rows": violating_rows,
            "flipped": flips,
            "prompts": list(meta["prompt"]),
            "principle_texts": list(meta["principle_text"]),
            # what the aligned image was generated from (bias: the attribute-augmented prompt; toxicity: the clean
            # prompt): the teacher of loss.distill_weight
            "aligned_prompts": list(meta["aligned_prompt"]),
        }
        if self.use_latents:
            batch["latent_dist_w"] = self._posteriors(self._aligned, aligned_rows, "aligned", flips)
            batch["latent_dist_l"] = self._posteriors(self._violating, violating_rows, "violating", flips)
        else:
            for key, table, rows, column in (("pixels_w", self._aligned, aligned_rows, "aligned_image"),
                                             ("pixels_l", self._violating, violating_rows, "violating_image")):
                images = self._images(table, rows, column)
                batch[key] = torch.stack([image_to_tensor(_mirror(im) if flip else im, self.resolution)
                                          for im, flip in zip(images, flips, strict=True)])
        if self._embeds is not None:
            batch["prompt_embeds"] = torch.from_numpy(np.asarray(self._embeds[aligned_rows]["prompt_embeds"]))
        return batch

    @staticmethod
    def _posteriors(table, rows: list[int], side: str, flips: list[bool]):
        import torch

        part = table[rows]
        posteriors = np.asarray(part[f"{side}_latent_dist"])
        if any(flips):
            mirrored = np.asarray(part[f"{side}_latent_dist_flipped"])
            posteriors = np.where(np.asarray(flips)[:, None, None, None], mirrored, posteriors)
        return torch.from_numpy(posteriors)

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


def _mirror(image):
    from PIL import ImageOps

    return ImageOps.mirror(image)


def _as_is(batch):
    return batch


def make_loader(batches: PairBatches, start_micro: int, end_micro: int, *, workers: int, pin_memory: bool,
                prefetch: int = 2):
    """Micro-batches `start_micro … end_micro-1` in order, built ahead of the training step: by `workers` background
    processes, or with `workers=0` by one background thread `prefetch` batches ahead (reading arrays, decoding PNGs
    and pinning memory release the GIL, so they overlap the step)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(batches, batch_size=None, sampler=range(start_micro, end_micro), num_workers=workers,
                        collate_fn=_as_is, pin_memory=pin_memory, persistent_workers=False,
                        prefetch_factor=prefetch if workers else None)
    return loader if workers or not prefetch else BackgroundIterable(loader, depth=prefetch)


class BackgroundIterable:
    """Iterates `source` in a daemon thread, at most `depth` items ahead; the consumer gets the items in order and
    any exception the source raised. Closing the iterator stops the thread and waits for it (at most `join_timeout`
    seconds): a daemon thread still inside a torch kernel when the interpreter exits aborts the process ("terminate
    called without an active exception"), which turned a preempted run's exit 143 into a SIGABRT."""

    _DONE = object()

    def __init__(self, source, depth: int = 2, join_timeout: float = 30.0):
        self.source = source
        self.depth = depth
        self.join_timeout = join_timeout

    def __iter__(self):
        import queue
        import threading

        items: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def produce() -> None:
            try:
                for item in self.source:
                    while not stop.is_set():
                        try:
                            items.put((item, None), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                outcome = (self._DONE, None)
            except BaseException as exc:  # handed to the consumer, which raises it
                outcome = (self._DONE, exc)
            while not stop.is_set():
                try:
                    items.put(outcome, timeout=0.1)
                    return
                except queue.Full:
                    continue

        thread = threading.Thread(target=produce, name="livo-batches", daemon=True)
        thread.start()
        try:
            while True:
                item, error = items.get()
                if error is not None:
                    raise error
                if item is self._DONE:
                    return
                yield item
        finally:
            stop.set()
            if thread is not threading.current_thread():
                thread.join(self.join_timeout)  # it finishes the item in hand, sees `stop`, and returns
