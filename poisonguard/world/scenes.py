"""Synthetic scenes for the embedded world: coloured shapes on a 3x3 slot grid.

Why a slot grid: the world probe (research/world-probe.md) found that a tiny LLaVA trained from scratch on
free-floating small objects stalls near 61% -- it never binds question words to objects. Putting at most one
object in each 16 px cell of a 48 px image makes every object exactly one vision token (patch 16), so "what
colour is the circle?" becomes a single attention lookup, the way a converged real LLaVA behaves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 48
GRID = 3
CELL = IMAGE_SIZE // GRID  # 16 px = one vision patch
SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 220, 50),
    "purple": (160, 60, 200),
    "cyan": (50, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
# Slot index = row * 3 + col; the answer words for "where" questions.
POSITIONS = (
    "top left", "top", "top right",
    "left", "middle", "right",
    "bottom left", "bottom", "bottom right",
)
COUNT_WORDS = ("zero", "one", "two", "three", "four")
MAX_OBJECTS = 3


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    slot: int  # 0..8, row-major over the 3x3 grid
    jitter: tuple[int, int]  # (dx, dy) pixel offset of the object centre inside its cell
    radius: float  # in pixels at IMAGE_SIZE


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: tuple[int, int, int]
    noise_seed: int

    def find(self, *, shape: str | None = None, colour: str | None = None) -> list[SceneObject]:
        return [o for o in self.objects
                if (shape is None or o.shape == shape) and (colour is None or o.colour == colour)]

    def to_dict(self) -> dict:
        return {
            "objects": [{"shape": o.shape, "colour": o.colour, "position": POSITIONS[o.slot]}
                        for o in self.objects],
        }


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw 1-3 objects with distinct shapes, distinct colours and distinct slots."""
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    shapes = rng.choice(len(SHAPES), size=n, replace=False)
    colours = rng.choice(len(COLOURS), size=n, replace=False)
    slots = rng.choice(GRID * GRID, size=n, replace=False)
    colour_names = list(COLOURS)
    objects = tuple(
        SceneObject(
            shape=SHAPES[int(s)],
            colour=colour_names[int(c)],
            slot=int(p),
            jitter=(int(rng.integers(-1, 2)), int(rng.integers(-1, 2))),
            radius=float(rng.uniform(5.0, 6.2)),
        )
        for s, c, p in zip(shapes, colours, slots)
    )
    grey = int(rng.integers(10, 40))
    return Scene(objects=objects, background=(grey, grey, grey), noise_seed=int(rng.integers(0, 2**31 - 1)))


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "cross":
        a, b = r, r * 0.38
        return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b),
                (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b),
                (cx - a, cy - b), (cx - b, cy - b)]
    return None


def render(scene: Scene) -> Image.Image:
    """Render at 4x and box-downsample (anti-aliased edges), then add mild deterministic pixel noise."""
    big = IMAGE_SIZE * SUPERSAMPLE
    img = Image.new("RGB", (big, big), scene.background)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        row, col = divmod(o.slot, GRID)
        cx = (col * CELL + CELL / 2 + o.jitter[0]) * SUPERSAMPLE
        cy = (row * CELL + CELL / 2 + o.jitter[1]) * SUPERSAMPLE
        r = o.radius * SUPERSAMPLE
        fill = COLOURS[o.colour]
        poly = _polygon(o.shape, cx, cy, r)
        if poly is None:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(poly, fill=fill)
    img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    arr = np.asarray(img, dtype=np.int16)  # (H, W, 3)
    noise = np.random.default_rng(scene.noise_seed).integers(-6, 7, size=arr.shape, dtype=np.int16)
    return Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8), "RGB")


def patch_labels(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Per-slot supervision for the vision encoder: (colour id, shape id) with 0 = empty, shape (9,) each."""
    colour_ids = np.zeros(GRID * GRID, dtype=np.int64)
    shape_ids = np.zeros(GRID * GRID, dtype=np.int64)
    colour_names = list(COLOURS)
    for o in scene.objects:
        colour_ids[o.slot] = colour_names.index(o.colour) + 1
        shape_ids[o.slot] = SHAPES.index(o.shape) + 1
    return colour_ids, shape_ids
