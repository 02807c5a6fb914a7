"""Label-preserving image augmentation for training (an option; iMatch's random lighting).

Every change keeps what an element can ask about: no hue shift (colour is an element), no flip
(left / right and above / below are elements), no crop (a crop can cut an object out, and a
cut-off shape is a fidelity defect annotators penalise). What it does, in this order:

1. shift: shrink the image by up to ``shift`` of its side and place it at a random offset on a
   canvas of its own border colour, so the content moves by up to that much and nothing leaves
   the frame;
2. brightness and contrast: each scaled by a factor in [1 - b, 1 + b] (``ImageEnhance``), which
   keeps every pixel's hue;
3. blur: a Gaussian blur of radius up to ``blur`` of the image side.

The draws come from the generator the caller passes, always in the same order and number, so a
run seeded by (seed, epoch, item) sees the same images after a resume and in every process.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


@dataclass(frozen=True)
class Augment:
    """Maximum strength of each change (0 turns it off); see the module docstring."""

    brightness: float = 0.15
    contrast: float = 0.15
    blur: float = 0.005           # radius, as a fraction of the image side
    shift: float = 0.06           # shrink-and-move, as a fraction of the image side

    def __post_init__(self):
        for name in ("brightness", "contrast", "blur", "shift"):
            value = getattr(self, name)
            if not 0.0 <= value <= 0.5:
                raise ValueError(f"augment {name}: {value} outside [0, 0.5]")

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        shrink, dx, dy, bright, contrast, radius = (float(x) for x in rng.random(6))
        out = image.convert("RGB")
        w, h = out.size
        if self.shift > 0:
            scale = 1.0 - self.shift * shrink
            sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
            canvas = Image.new("RGB", (w, h), border_colour(out))
            canvas.paste(out.resize((sw, sh), Image.BILINEAR), (round(dx * (w - sw)), round(dy * (h - sh))))
            out = canvas
        if self.brightness > 0:
            out = ImageEnhance.Brightness(out).enhance(1.0 + self.brightness * (2 * bright - 1))
        if self.contrast > 0:
            out = ImageEnhance.Contrast(out).enhance(1.0 + self.contrast * (2 * contrast - 1))
        if self.blur > 0:
            out = out.filter(ImageFilter.GaussianBlur(radius * self.blur * max(w, h)))
        return out


def border_colour(image: Image.Image) -> tuple[int, int, int]:
    """The mean colour of the image's outermost pixels (what the background continues as)."""
    a = np.asarray(image.convert("RGB"), dtype=float)
    frame = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return tuple(int(round(c)) for c in frame.mean(axis=0))


def from_training(tcfg) -> Augment | None:
    """The augmentation a training config asks for (None when ``augment`` is off)."""
    if not tcfg.augment:
        return None
    return Augment(tcfg.augment_brightness, tcfg.augment_contrast, tcfg.augment_blur, tcfg.augment_shift)
