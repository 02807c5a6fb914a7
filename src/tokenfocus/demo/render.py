"""Draw a ``Scene`` as a small RGB image with PIL (well under 5 ms at 112 px).

Groups sit in equal slots along the layout axis, in ``Scene.objects`` order, so the picture shows
exactly the spatial relations the scene implies; the shapes of one group stack across that axis.
Sprites and backgrounds are cached, so drawing is mostly pasting.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .scene import COLORS, Scene, SceneObject

SIZE_FRACTION = {"small": 0.15, "medium": 0.24, "big": 0.34}
PAPER = (245, 240, 228)


def _mix(a, b, t: float) -> tuple[int, int, int]:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))


def object_rgb(obj: SceneObject) -> tuple[int, int, int]:
    """The drawn colour: the named colour, pulled part-way to ``tint`` for a near miss."""
    rgb = COLORS[obj.color]
    if obj.tint:
        rgb = _mix(rgb, COLORS[obj.tint], obj.tint_amount)
    return rgb


def _outline(shape: str, variant: int) -> list[tuple[float, float]] | None:
    """Unit polygon in [-1, 1]^2 (None: an ellipse); variant > 0 jitters it into a malformed shape."""
    if shape == "circle":
        pts = None if variant == 0 else [(np.cos(a), np.sin(a)) for a in np.linspace(0, 2 * np.pi, 20, endpoint=False)]
    elif shape == "square":
        pts = [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)]
    elif shape == "triangle":
        pts = [(0.0, -0.95), (0.97, 0.8), (-0.97, 0.8)]
    elif shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = [(r * np.cos(a), r * np.sin(a)) for r, a in zip(radii, angles)]
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 28, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = [(xi / 17.0, (yi + 2.5) / 15.5) for xi, yi in zip(x, y)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    if variant and pts is not None:
        jitter = np.random.default_rng(variant).uniform(0.55, 1.15, size=len(pts))
        pts = [(x * j, y * j) for (x, y), j in zip(pts, jitter)]
    return pts


@lru_cache(maxsize=4096)
def _sprite(shape: str, rgb: tuple, px: int, texture: str, outline_only: bool, variant: int) -> Image.Image:
    mask = Image.new("L", (px, px), 0)
    d = ImageDraw.Draw(mask)
    pts = _outline(shape, variant)
    half = (px - 1) / 2
    width = max(2, px // 9)
    if pts is None:
        d.ellipse([0, 0, px - 1, px - 1], fill=255, outline=255 if outline_only else None,
                  width=width if outline_only else 1)
        if outline_only:
            d.ellipse([width, width, px - 1 - width, px - 1 - width], fill=0)
    else:
        xy = [(half + x * half, half + y * half) for x, y in pts]
        if outline_only:
            d.polygon(xy, outline=255, width=width)
        else:
            d.polygon(xy, fill=255)
    fill = Image.new("RGB", (px, px), rgb)
    if texture != "plain" and not outline_only:
        fd = ImageDraw.Draw(fill)
        dark = _mix(rgb, (0, 0, 0), 0.55)
        period = max(4, px // 4)
        if texture == "striped":
            for y0 in range(-px, px, period):
                fd.line([(0, y0), (px, y0 + px)], fill=dark, width=max(2, period // 2))
        elif texture == "dotted":
            r = max(1.5, period / 4)
            for cy in range(period // 2, px, period):
                for cx in range(period // 2, px, period):
                    fd.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_mix(rgb, (255, 255, 255), 0.75))
        elif texture == "checkered":
            for cy in range(0, px, period):
                for cx in range(0, px, period):
                    if (cx // period + cy // period) % 2:
                        fd.rectangle([cx, cy, cx + period - 1, cy + period - 1], fill=dark)
        else:
            raise ValueError(f"unknown texture {texture!r}")
    sprite = fill.convert("RGBA")
    sprite.putalpha(mask)
    return sprite


@lru_cache(maxsize=64)
def _background(name: str, size: int) -> Image.Image:
    s = size
    im = Image.new("RGB", (s, s))
    d = ImageDraw.Draw(im)
    if name == "desert":
        d.rectangle([0, 0, s, s], fill=(214, 178, 112))
        d.rectangle([0, 0, s, s // 5], fill=(236, 214, 168))
        for k in range(3):
            y = s // 3 + k * s // 4
            d.arc([-s // 2, y, s, y + s // 3], 200, 340, fill=(190, 150, 90), width=2)
    elif name == "beach":
        d.rectangle([0, 0, s, s], fill=(232, 214, 165))
        d.rectangle([0, 0, s, int(s * 0.35)], fill=(140, 195, 235))
        d.rectangle([0, int(s * 0.35), s, int(s * 0.45)], fill=(60, 140, 190))
    elif name == "forest":
        d.rectangle([0, 0, s, s], fill=(38, 82, 46))
        for k in range(6):
            x = int((k + 0.3) * s / 6)
            d.rectangle([x, 0, x + max(2, s // 28), s], fill=(72, 52, 30))
    elif name == "ocean":
        d.rectangle([0, 0, s, s], fill=(28, 105, 140))
        for y in range(s // 8, s, s // 6):
            d.line([(0, y), (s, y + s // 16)], fill=(70, 150, 180), width=2)
    elif name == "snow":
        d.rectangle([0, 0, s, s], fill=(236, 241, 247))
        d.rectangle([0, int(s * 0.7), s, s], fill=(210, 220, 235))
    elif name == "room":
        d.rectangle([0, 0, s, s], fill=(160, 150, 138))
        d.rectangle([0, int(s * 0.72), s, s], fill=(112, 86, 62))
    elif name == "city":
        d.rectangle([0, 0, s, s], fill=(150, 160, 175))
        rng = np.random.default_rng(3)
        x = 0
        while x < s:
            w = int(rng.integers(s // 10, s // 5))
            h = int(rng.integers(s // 5, s // 2))
            d.rectangle([x, s - h, x + w - 2, s], fill=(85, 88, 98))
            x += w
    elif name == "night":
        d.rectangle([0, 0, s, s], fill=(16, 20, 58))
        rng = np.random.default_rng(5)
        for x, y in rng.integers(0, s, size=(s // 4, 2)):
            d.point((int(x), int(y)), fill=(230, 230, 200))
    else:
        raise ValueError(f"unknown background {name!r}")
    return im


@lru_cache(maxsize=8)
def _brush_strokes(size: int) -> Image.Image:
    """A fixed swirl of short strokes laid over 'Van Gogh' pictures."""
    rng = np.random.default_rng(11)
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    palette = [(20, 40, 120, 110), (245, 210, 40, 110), (255, 255, 255, 90)]
    for _ in range(int(size * 1.2)):
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(size / 30, size / 12)
        a0 = rng.uniform(0, 360)
        d.arc([x - r, y - r, x + r, y + r], a0, a0 + 110, fill=palette[int(rng.integers(3))], width=2)
    return layer


def _apply_style(im: Image.Image, style: str) -> Image.Image:
    s = im.size[0]
    if style in ("none", "sketch"):
        return im
    if style == "pixel art":
        block = max(2, s // 16)
        small = im.resize((s // block, s // block), Image.Resampling.BOX)
        return small.resize((s, s), Image.Resampling.NEAREST)
    if style == "watercolor":
        im = im.filter(ImageFilter.GaussianBlur(radius=s / 70))
        return Image.blend(im, Image.new("RGB", im.size, PAPER), 0.25)
    if style == "Van Gogh":
        out = im.convert("RGBA")
        out.alpha_composite(_brush_strokes(s))
        return out.convert("RGB")
    raise ValueError(f"unknown style {style!r}")


def render_scene(scene: Scene, size: int = 112, rng: np.random.Generator | None = None,
                 aligned: bool = False, snap: int = 0) -> Image.Image:
    """The scene as an RGB ``size`` x ``size`` image; ``rng`` jitters positions (default: fixed).

    ``aligned`` (an experimental layout, not the demo's): every shape inside one cell of an
    ``ALIGNED_CELLS`` x ``ALIGNED_CELLS`` grid, at ``ALIGNED_FRACTION`` of the cell, groups in
    distinct cells along the layout axis (in scene order) and a group's shapes in distinct cells
    across it, so that a vision model's 16 px token at 112 px sees a shape whole."""
    if rng is None:
        rng = np.random.default_rng(0)
    if scene.layout not in ("row", "column"):
        raise ValueError(f"unknown layout {scene.layout!r}")
    sketch = scene.style == "sketch"
    bg = _background(scene.background, size)
    im = Image.blend(bg, Image.new("RGB", bg.size, PAPER), 0.7) if sketch else bg.copy()
    if aligned:
        _place_aligned(im, scene, size, rng, sketch)
        return _apply_style(im, scene.style)
    n = len(scene.objects)
    for gi, obj in enumerate(scene.objects):
        slot = size / n
        count = max(1, int(obj.count))
        cell = size / count
        px = int(min(SIZE_FRACTION[obj.size] * size, 0.9 * slot, 0.9 * cell))
        px = max(px, 6)
        if snap:
            px = max(2 * snap, px // snap * snap)
        rgb = object_rgb(obj)
        for k in range(count):
            variant = 1 + int(rng.integers(3)) if obj.distorted else 0
            sprite = _sprite(obj.shape, rgb, px, obj.texture, sketch, variant)
            along = (gi + 0.5) * slot + rng.uniform(-0.5, 0.5) * max(0.0, slot - px) * 0.5
            across = (k + 0.5) * cell + rng.uniform(-0.5, 0.5) * max(0.0, cell - px) * 0.5
            if obj.partial and k == count - 1:
                across = size + px * 0.15  # most of the last shape falls outside the frame
            cx, cy = (along, across) if scene.layout == "row" else (across, along)
            x0, y0 = int(round(cx - px / 2)), int(round(cy - px / 2))
            if snap:
                x0, y0 = (int(round(v / snap)) * snap for v in (x0, y0))
            im.paste(sprite, (x0, y0), sprite)
    return _apply_style(im, scene.style)


ALIGNED_CELLS = 7
ALIGNED_FRACTION = {"small": 0.6, "medium": 0.78, "big": 0.96}


def _place_aligned(im: Image.Image, scene: Scene, size: int, rng: np.random.Generator, sketch: bool) -> None:
    cell = size / ALIGNED_CELLS
    along_cells = np.sort(rng.choice(ALIGNED_CELLS, size=min(len(scene.objects), ALIGNED_CELLS), replace=False))
    for gi, obj in enumerate(scene.objects):
        count = min(max(1, int(obj.count)), ALIGNED_CELLS)
        px = max(6, int(round(ALIGNED_FRACTION[obj.size] * cell)))
        rgb = object_rgb(obj)
        across_cells = np.sort(rng.choice(ALIGNED_CELLS, size=count, replace=False))
        for k in range(count):
            variant = 1 + int(rng.integers(3)) if obj.distorted else 0
            sprite = _sprite(obj.shape, rgb, px, obj.texture, sketch, variant)
            wobble = rng.uniform(-1, 1, 2) * max(0.0, cell - px) * 0.4
            along = (along_cells[gi % len(along_cells)] + 0.5) * cell + wobble[0]
            across = (across_cells[k] + 0.5) * cell + wobble[1]
            if obj.partial and k == count - 1:
                across = size + px * 0.15  # most of the last shape falls outside the frame
            cx, cy = (along, across) if scene.layout == "row" else (across, along)
            im.paste(sprite, (int(round(cx - px / 2)), int(round(cy - px / 2))), sprite)
