"""Synthetic 64x64 scenes: 1-3 coloured shapes at fixed slots, or one digit; drawn with PIL."""
from __future__ import annotations

import io
import hashlib
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

SIZE = 64
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 40), "blue": (30, 60, 220),
           "yellow": (235, 200, 20), "purple": (140, 40, 170), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
# slot centres; neighbouring slots are 18 px apart and shapes are at most 14 px wide, so none overlap
POSITIONS = {"left": (14, 32), "right": (50, 32), "top": (32, 14), "bottom": (32, 50), "centre": (32, 32)}
OBJECTS = [f"{c} {s}" for c in COLOURS for s in SHAPES]


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    position: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...] = ()
    digit: int | None = None
    digit_colour: str = "blue"
    background: int = 255  # grey level
    jitter: tuple[int, int] = (0, 0)


def _star(cx, cy, r):
    import math
    pts = []
    for i in range(10):  # alternate outer and inner points; the inner radius makes it read as a star at 14 px
        rad = r if i % 2 == 0 else r * 0.45
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, fill):
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r + 1, cy - r + 1, cx + r - 1, cy + r - 1], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "cross":
        w = max(2, r // 2)
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    elif shape == "star":
        d.polygon(_star(cx, cy, r + 1), fill=fill)
    else:
        raise ValueError(shape)


_FONT = None


def _font():
    global _FONT
    if _FONT is None:  # PIL's bundled font at a large size: no system font files needed
        _FONT = ImageFont.load_default(size=44)
    return _FONT


def render(scene: Scene) -> Image.Image:
    bg = scene.background
    img = Image.new("RGB", (SIZE, SIZE), (bg, bg, bg))
    d = ImageDraw.Draw(img)
    jx, jy = scene.jitter
    if scene.digit is not None:
        d.text((SIZE // 2 + jx, SIZE // 2 + jy), str(scene.digit), fill=COLOURS[scene.digit_colour],
               font=_font(), anchor="mm")
    for o in scene.objects:
        cx, cy = POSITIONS[o.position]
        _draw_shape(d, o.shape, cx + jx, cy + jy, 7, COLOURS[o.colour])
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def content_hash(img: Image.Image) -> str:
    """Hash of the pixels (not the file), so the same picture is caught however it was encoded."""
    return hashlib.sha256(img.convert("RGB").tobytes()).hexdigest()


class SceneSampler:
    """Draws scenes with a skewed object prior and pair affinities, so POPE's 'popular' and
    'adversarial' negatives differ from random ones (as objects do in real photos)."""

    def __init__(self, seed: int, digit_rate: float = 0.2):
        order = random.Random(seed).sample(OBJECTS, len(OBJECTS))  # fixed popularity ranking
        self.prior = {o: 1.0 / (1 + i) ** 0.8 for i, o in enumerate(order)}
        # each object has 4 'companions' it appears with far more often than chance
        arng = random.Random(seed + 1)
        self.companions = {o: set(arng.sample([x for x in OBJECTS if x != o], 4)) for o in OBJECTS}
        self.digit_rate = digit_rate

    def sample(self, rng: random.Random) -> Scene:
        jitter = (rng.randint(-2, 2), rng.randint(-2, 2))
        bg = rng.choice((255, 245, 235))
        if rng.random() < self.digit_rate:
            return Scene(digit=rng.randrange(10), digit_colour=rng.choice(list(COLOURS)), background=bg, jitter=jitter)
        n = rng.choice((1, 2, 2, 3, 3))
        chosen: list[str] = []
        while len(chosen) < n:
            w = {}
            for o in OBJECTS:
                if o.split()[1] in {c.split()[1] for c in chosen}:
                    continue  # one shape of each kind per image, so "the circle" is unambiguous
                boost = 6.0 if any(o in self.companions[c] for c in chosen) else 1.0
                w[o] = self.prior[o] * boost
            names = list(w)
            chosen.append(rng.choices(names, weights=[w[k] for k in names])[0])
        slots = rng.sample(list(POSITIONS), n)
        objs = tuple(Obj(*name.split(), pos) for name, pos in zip(chosen, slots))
        return Scene(objects=objs, background=bg, jitter=jitter)
