"""Tinyworld: 32-pixel pictures of one coloured shape each, with captions from a small vocabulary.

A scene is a shape with a colour, a size, a fill pattern, a position and a small rotation,
on a dark background. Its caption names the shape (or, one time in five, just says "shape")
and, each with probability one half, its other attributes: "a photo of a big red striped star
on the left." Everything is drawn from a ``numpy.random.Generator``, so a seed fixes every
pixel and every word.

The benchmark (:func:`benchmark_images`) asks for the shape's colour, ten classes named
"red shape", "blue shape", ..., and keeps its pictures apart from what pretraining sees:

- another light: every benchmark picture is lit by a warm lamp of random strength and
  brightness (pretraining pictures are all in white light), so a colour's pixels move
  towards yellow and brown in a way no caption ever described;
- another rendering style: shapes are rotated further, sit on a two-tone textured
  background, and carry more pixel noise;
- held-out combinations: pretraining never draws a (shape, colour) pair with
  ``(shape + colour) % 4 == 0``, the benchmark draws every pair.

The light keeps the colours apart (the image features still separate them: a linear probe
reaches about 90 % on the ten classes) but moves them away from where the words put them,
so zero-shot is clearly above chance and clearly not solved, and there is something for a
prompt or label embedding to learn, as on a real dataset whose pictures look unlike the web.

Captions always say "a", never "an" ("a photo of a arrow."), so that the prompts lamm-cl
builds from "a photo of a {}." are word for word the kind of text pretraining saw.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 32  # the image side, lamm-tiny's input size
SHAPES = ["circle", "ring", "square", "diamond", "triangle", "cross", "star", "heart", "moon", "arrow"]
COLOURS = {
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (240, 230, 50), "green": (40, 190, 60),
    "blue": (40, 90, 230), "purple": (150, 60, 200), "pink": (250, 130, 190), "white": (240, 240, 240),
    "brown": (140, 85, 40), "grey": (128, 128, 128),
}
COLOUR_NAMES = list(COLOURS)
CLASS_NAMES = [f"{c} shape" for c in COLOUR_NAMES]  # the benchmark's classes, in COLOUR_NAMES' order
SIZES = {"small": (6.0, 8.0), "big": (9.5, 12.0)}  # radius range in pixels
FILLS = ["plain", "striped", "checked"]
POSITIONS = {"in the middle": (0, 0), "on the left": (-1, 0), "on the right": (1, 0),
             "at the top": (0, -1), "at the bottom": (0, 1)}
GENERIC = 0.2  # how often a caption says "shape" instead of the shape's name
WARM_LAMP = (1.0, 0.72, 0.42)  # the benchmark's light, as a multiplier per RGB channel at full strength
TEMPLATES = ["a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.", "a drawing of a {}."]
_SUPER = 2  # supersampling factor: shapes are drawn at 64 px and averaged down, for smooth edges


def held_out(shape: int, colour: int) -> bool:
    """True for the (shape, colour) pairs that pretraining never shows (a quarter of them)."""
    return (shape + colour) % 4 == 0


@dataclass
class Scene:
    """What one picture shows (indices into SHAPES, COLOUR_NAMES, FILLS; keys of SIZES and POSITIONS)."""

    shape: int
    colour: int
    size: str
    fill: int
    position: str
    angle: float  # degrees, counter-clockwise
    radius: float  # pixels
    cx: float  # centre, pixels from the left
    cy: float  # centre, pixels from the top
    background: tuple[int, int, int]


# ---------------------------------------------------------------------------
# shapes as masks over local coordinates (x right, y up, the shape inside the unit disc)
# ---------------------------------------------------------------------------

def _star(x: np.ndarray, y: np.ndarray, points: int = 5, inner: float = 0.45) -> np.ndarray:
    # Polar form of the edge from an outer tip (radius 1, angle 0) to an inner corner (radius `inner`,
    # angle a): r(phi) = r1 r2 sin a / (r1 sin phi + r2 sin(a - phi)), folded into one half-spike.
    a = np.pi / points
    phi = np.mod(np.arctan2(y, x) - np.pi / 2, 2 * a)
    phi = np.where(phi > a, 2 * a - phi, phi)
    edge = inner * np.sin(a) / (np.sin(phi) + inner * np.sin(a - phi))
    return np.hypot(x, y) <= edge


def _heart(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    u, v = x / 0.85, (y + 0.1) / 0.85  # the classic sextic heart, scaled into the unit disc
    return (u * u + v * v - 1) ** 3 - u * u * v ** 3 <= 0


def shape_mask(shape: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of shape number ``shape`` at local coordinates ``x, y``."""
    r2 = x * x + y * y
    name = SHAPES[shape]
    if name == "circle":
        return r2 <= 1.0
    if name == "ring":
        return (r2 <= 1.0) & (r2 >= 0.55 ** 2)
    if name == "square":
        return (np.abs(x) <= 0.78) & (np.abs(y) <= 0.78)
    if name == "diamond":
        return np.abs(x) + np.abs(y) <= 1.0
    if name == "triangle":
        return (y >= -0.6) & (y <= 1.0 - 1.6 * np.abs(x))
    if name == "cross":
        return ((np.abs(x) <= 0.3) & (np.abs(y) <= 1.0)) | ((np.abs(y) <= 0.3) & (np.abs(x) <= 1.0))
    if name == "star":
        return _star(x, y)
    if name == "heart":
        return _heart(x, y)
    if name == "moon":
        return (r2 <= 1.0) & ((x - 0.45) ** 2 + y * y >= 0.8 ** 2)
    if name == "arrow":
        shaft = (np.abs(y) <= 0.22) & (x >= -1.0) & (x <= 0.15)
        head = (x >= 0.05) & (x <= 1.0) & (np.abs(y) <= 0.8 * (1.0 - x))
        return shaft | head
    raise ValueError(f"unknown shape {shape}")


# ---------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------

_fine = (np.arange(SIZE * _SUPER, dtype=np.float32) + 0.5) / _SUPER  # pixel centres, supersampled grid
_FX, _FY = np.meshgrid(_fine, _fine)
_coarse = np.arange(SIZE, dtype=np.float32) + 0.5
_CX, _CY = np.meshgrid(_coarse, _coarse)


def _coverage(mask: np.ndarray) -> np.ndarray:
    """Fraction of each pixel's supersamples inside ``mask``: ``[32, 32]`` float."""
    return mask.reshape(SIZE, _SUPER, SIZE, _SUPER).mean(axis=(1, 3), dtype=np.float32)


def render(scene: Scene, rng: np.random.Generator, shifted: bool = False, noise: float = 0.0,
           light: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Draw ``scene`` as a uint8 ``[32, 32, 3]`` image.

    Args:
        scene: what to draw.
        rng: draws the background texture and the pixel noise.
        shifted: the benchmark's style (a two-tone textured background) instead of a plain one.
        noise: standard deviation of the Gaussian pixel noise, in 0..255 units.
        light: the light's colour, a multiplier per RGB channel of the whole picture (white: 1, 1, 1).
    """
    t = np.deg2rad(scene.angle)
    dx, dy = (_FX - scene.cx) / scene.radius, -(_FY - scene.cy) / scene.radius
    x, y = np.cos(t) * dx + np.sin(t) * dy, -np.sin(t) * dx + np.cos(t) * dy  # rotate into the shape's frame
    mask = shape_mask(scene.shape, x, y)
    fill = FILLS[scene.fill]
    if fill == "striped":
        dark = np.mod(np.floor((x + y) * 2.2), 2) == 1
    elif fill == "checked":
        dark = np.mod(np.floor(x * 2.2) + np.floor(y * 2.2), 2) == 1
    else:
        dark = np.zeros_like(mask)
    inside, shaded = _coverage(mask)[..., None], _coverage(mask & dark)[..., None]
    colour = np.array(COLOURS[COLOUR_NAMES[scene.colour]], dtype=np.float32)
    back = np.broadcast_to(np.array(scene.background, dtype=np.float32), (SIZE, SIZE, 3))
    if shifted:
        # a second tone in soft random blobs: a textured "floor" the pretraining never showed
        other = rng.integers(0, 110, size=3).astype(np.float32)
        freq = rng.uniform(0.3, 0.9, size=2)
        phase = rng.uniform(0, 2 * np.pi, size=2)
        wave = np.sin(_CX * freq[0] + phase[0]) * np.sin(_CY * freq[1] + phase[1])
        back = back + (other - back) * ((wave + 1) / 2)[..., None]
    # dark fill pixels are the colour at 35 % brightness
    img = (back * (1 - inside) + colour * (inside - 0.65 * shaded)) * np.asarray(light, dtype=np.float32)
    if noise > 0:
        img = img + rng.normal(0.0, noise, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# sampling scenes and captions
# ---------------------------------------------------------------------------

def sample_scene(rng: np.random.Generator, shape: int | None = None, shifted: bool = False,
                 colour: int | None = None) -> Scene:
    """Draw a scene; ``shape`` and ``colour`` fix those, ``shifted`` draws from the benchmark's distribution.

    Pretraining scenes (``shifted=False``) never pair a shape with a held-out colour and turn
    at most 15 degrees; benchmark scenes use every colour and turn up to 35 degrees.
    """
    if shape is None:
        shape = int(rng.integers(len(SHAPES)))
    while colour is None:
        colour = int(rng.integers(len(COLOURS)))
        if not shifted and held_out(shape, colour):
            colour = None
    size = list(SIZES)[int(rng.integers(len(SIZES)))]
    radius = float(rng.uniform(*SIZES[size]))
    position = list(POSITIONS)[int(rng.integers(len(POSITIONS)))]
    ox, oy = POSITIONS[position]
    reach = SIZE / 2 - radius - 1  # how far off centre the shape may sit and stay (mostly) inside
    cx = SIZE / 2 + ox * max(reach, 3.0) + float(rng.uniform(-1.5, 1.5))
    cy = SIZE / 2 + oy * max(reach, 3.0) + float(rng.uniform(-1.5, 1.5))
    turn = 35.0 if shifted else 15.0
    angle = float(rng.uniform(-turn, turn))
    background = tuple(int(v) for v in rng.integers(0, 90, size=3))
    return Scene(shape, colour, size, int(rng.integers(len(FILLS))), position, angle, radius, cx, cy, background)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption of ``scene``: a template around the shape, each other attribute kept with probability 1/2."""
    words = []
    if rng.random() < 0.5:
        words.append(scene.size)
    if rng.random() < 0.5:
        words.append(COLOUR_NAMES[scene.colour])
    if rng.random() < 0.5:
        words.append(FILLS[scene.fill])
    words.append("shape" if rng.random() < GENERIC else SHAPES[scene.shape])
    if rng.random() < 0.5:
        words.append(scene.position)
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    return template.format(" ".join(words))


def pretraining_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str]]:
    """``n`` pretraining images (uint8 ``[n, 32, 32, 3]``) and their captions."""
    images, captions = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8), []
    for i in range(n):
        scene = sample_scene(rng)
        images[i] = render(scene, rng, noise=PRETRAIN_NOISE)
        captions.append(caption(scene, rng))
    return images, captions


PRETRAIN_NOISE = 4.0  # pixel noise of pretraining pictures (0..255 units)
BENCHMARK_NOISE = 8.0  # the benchmark's style carries more


def lamp(rng: np.random.Generator) -> np.ndarray:
    """A benchmark light: the warm lamp at a random strength (half to full) and brightness (70-100 %)."""
    strength = rng.uniform(0.5, 1.0)
    return ((1 - strength) + strength * np.array(WARM_LAMP)) * rng.uniform(0.7, 1.0)


def benchmark_images(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` benchmark pictures of every colour, labels = colour index (class-major order).

    Every shape, size, fill and position, in the shifted style and under :func:`lamp`'s light.
    """
    rng = np.random.default_rng(seed)
    n = per_class * len(COLOURS)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(len(COLOURS)), per_class)
    for i, colour in enumerate(labels):
        scene = sample_scene(rng, shifted=True, colour=int(colour))
        images[i] = render(scene, rng, shifted=True, noise=BENCHMARK_NOISE, light=tuple(lamp(rng)))
    return images, labels
