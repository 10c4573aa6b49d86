"""Procedural renderer of the toy world: a scene description -> a small RGB image (numpy uint8 or PIL).

A figure is a body (shape = subject, fill = attribute colour) with a head on top, on a pale background. Marks of the
toxic concepts are drawn over it: "bloody" = red splatter blobs on and around the figure, "zombie" = a green head.
Everything that is not fixed by the caption (position, size, body width, head tilt, shade, background, ground line,
number and place of blood blobs) is drawn from a seeded `numpy.random.Generator`, so a seed reproduces an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from livo.errors import ConfigError
from livo.toy import world

IMAGE_SIZE = 32
_SUPERSAMPLE = 2  # shapes are rasterised at 2x and averaged down: smooth edges, like a real (downscaled) photo


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw one image; `render(scene)` is deterministic."""

    subject: str
    colour: str
    concept: str | None = None
    background: tuple[int, int, int] = world.BACKGROUNDS[0]
    body_rgb: tuple[int, int, int] | None = None  # shaded attribute colour; None = the exact palette colour
    center_x: float = 16.0
    center_y: float = 21.0
    half_size: float = 7.0
    width_scale: float = 1.0  # horizontal stretch of the body (pose/build)
    head_radius: float = 3.5
    head_tilt: float = 0.0  # horizontal head offset (pose)
    ground_row: int | None = None  # first row of a darker ground band, or None
    blood_blobs: tuple[tuple[float, float, float], ...] = field(default=())  # (x, y, radius)

    def __post_init__(self) -> None:
        if self.subject not in world.SUBJECT_SHAPES:
            raise ConfigError(f"unknown toy subject {self.subject!r}; known: {', '.join(world.ALL_SUBJECTS)}")
        if self.colour not in world.ATTRIBUTE_COLOURS:
            raise ConfigError(f"unknown toy colour {self.colour!r}; known: {', '.join(world.ATTRIBUTE_COLOURS)}")
        if self.concept is not None and self.concept not in world.TOXIC_CONCEPTS:
            raise ConfigError(f"unknown toy concept {self.concept!r}; known: {', '.join(world.TOXIC_CONCEPTS)}")


def sample_scene(rng: np.random.Generator, subject: str, colour: str, concept: str | None = None) -> Scene:
    """A random pose/position/shade/background for the given content."""
    half_size = float(rng.uniform(6.0, 8.0))
    head_radius = float(rng.uniform(3.0, 4.0))
    center_x = float(rng.uniform(13.0, 19.0))
    # Keep the head inside the frame: its top is center_y - half_size - 2 * head_radius + 1.
    low_y = max(19.0, half_size + 2 * head_radius + 1.0)
    center_y = float(rng.uniform(low_y, min(23.0, IMAGE_SIZE - 1 - half_size)))
    base = np.array(world.ATTRIBUTE_COLOURS[colour], dtype=np.float64)
    body_rgb = tuple(int(v) for v in np.clip(base + rng.normal(0.0, 10.0, size=3), 0, 255))
    bg = np.array(world.BACKGROUNDS[int(rng.integers(len(world.BACKGROUNDS)))], dtype=np.float64)
    background = tuple(int(v) for v in np.clip(bg + rng.uniform(-6, 6, size=3), 0, 255))
    ground_row = int(rng.integers(27, 31)) if rng.random() < 0.5 else None
    width_scale = float(rng.uniform(0.85, 1.15))
    blobs: tuple[tuple[float, float, float], ...] = ()
    if concept == "bloody":
        blobs = _sample_blood(rng, subject, center_x, center_y, half_size, width_scale)
    return Scene(
        subject=subject,
        colour=colour,
        concept=concept,
        background=background,
        body_rgb=body_rgb,
        center_x=center_x,
        center_y=center_y,
        half_size=half_size,
        width_scale=width_scale,
        head_radius=head_radius,
        head_tilt=float(rng.uniform(-2.0, 2.0)),
        ground_row=ground_row,
        blood_blobs=blobs,
    )


def _sample_blood(rng: np.random.Generator, subject: str, center_x: float, center_y: float, half_size: float,
                  width_scale: float) -> tuple[tuple[float, float, float], ...]:
    """5-7 red blobs splattered around the figure. They may touch the head but never cover the body, so the body's
    silhouette (the subject) stays readable under the mark."""
    x, y = _grid()
    u = (x - center_x) / (half_size * width_scale)
    v = (y - center_y) / half_size
    body = shape_mask(world.SUBJECT_SHAPES[subject], u, v)
    blobs: list[tuple[float, float, float]] = []
    wanted = int(rng.integers(5, 8))
    for _ in range(200):
        if len(blobs) == wanted:
            break
        bx = float(center_x + rng.uniform(-half_size - 4, half_size + 4))
        by = float(center_y + rng.uniform(-half_size - 5, half_size + 1))
        radius = float(rng.uniform(1.3, 2.0))
        disc = (x - bx) ** 2 + (y - by) ** 2 <= (radius + 0.75) ** 2
        inside = 0.5 <= bx <= IMAGE_SIZE - 0.5 and 0.5 <= by <= IMAGE_SIZE - 0.5
        if inside and not (disc & body).any():
            blobs.append((bx, by, radius))
    return tuple(blobs)


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a unit shape in normalised coordinates (u right, v down, both in [-1, 1])."""
    if shape == "square":
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "triangle":
        return (v >= -1.0) & (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "hourglass":  # two triangles meeting at a waist 0.3 wide, so the body stays one piece at 32x32
        return (np.abs(v) <= 1.0) & (np.abs(u) <= np.maximum(np.abs(v), 0.3))
    if shape == "inverted_triangle":
        return (v >= -1.0) & (v <= 1.0) & (np.abs(u) <= (1.0 - v) / 2.0)
    raise ConfigError(f"unknown toy shape {shape!r}")


def _grid(size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    n = size * _SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / _SUPERSAMPLE
    return np.meshgrid(coords, coords)  # x, y in pixel units


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw `scene` as a `[size, size, 3]` uint8 array."""
    x, y = _grid(size)
    canvas = np.empty(x.shape + (3,), dtype=np.float64)
    canvas[:] = scene.background
    if scene.ground_row is not None:
        canvas[y >= scene.ground_row] = np.array(scene.background, dtype=np.float64) * 0.88

    u = (x - scene.center_x) / (scene.half_size * scene.width_scale)
    v = (y - scene.center_y) / scene.half_size
    body = shape_mask(world.SUBJECT_SHAPES[scene.subject], u, v)
    canvas[body] = scene.body_rgb or world.ATTRIBUTE_COLOURS[scene.colour]

    head_x = scene.center_x + scene.head_tilt
    head_y = scene.center_y - scene.half_size - scene.head_radius + 1.0
    head = (x - head_x) ** 2 + (y - head_y) ** 2 <= scene.head_radius**2
    canvas[head] = world.ZOMBIE_COLOUR if scene.concept == "zombie" else world.HEAD_COLOUR

    for bx, by, radius in scene.blood_blobs:
        canvas[(x - bx) ** 2 + (y - by) ** 2 <= radius**2] = world.BLOOD_COLOUR

    image = canvas.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_pil(scene: Scene, size: int = IMAGE_SIZE):
    from PIL import Image

    return Image.fromarray(render(scene, size), mode="RGB")


def render_caption(caption: str, rng: np.random.Generator, default_colour: str | None = None) -> tuple[Scene, np.ndarray]:
    """Render what a caption asks for; an unspecified colour is `default_colour` (else the subject's stereotype)."""
    wanted = world.parse_caption(caption)
    if wanted["subject"] is None:
        raise ConfigError(f"caption {caption!r} names no toy subject; known: {', '.join(world.ALL_SUBJECTS)}")
    subject = str(wanted["subject"])
    colour = wanted["colour"] or default_colour or world.STEREOTYPE[subject]
    scene = sample_scene(rng, subject, str(colour), wanted["concept"])
    return scene, render(scene)
