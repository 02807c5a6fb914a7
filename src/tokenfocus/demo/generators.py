"""Simulated text-to-image generators: each turns an intended scene into the scene it draws.

Every generator has its own failure profile (one miscounts, one binds colours to the wrong
shapes, one ignores spatial relations, ...), so, as in EvalMuse, knowing which model drew an
image says something about which elements are likely to be missing.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .scene import (BACKGROUNDS, COLORS, LAYOUTS, MAX_RENDERED_COUNT, NEAR_COLORS, SHAPES, SIZES,
                    SIMILAR_BACKGROUNDS, STYLES, TEXTURES, Scene, SceneObject)


@dataclass(frozen=True)
class Generator:
    """Per-image (scene-level) or per-group failure probabilities."""

    name: str
    drop_object: float = 0.06     # per group: the group is not drawn
    shape_swap: float = 0.04      # per group: drawn as another shape
    color_wrong: float = 0.06     # per group: another colour
    color_bind: float = 0.08      # scene: colours of two groups swapped
    color_near: float = 0.08      # per group: colour drifts towards a neighbouring hue
    count_error: float = 0.12     # per group: one shape too many or too few
    spatial_error: float = 0.12   # scene: order reversed or layout turned
    size_error: float = 0.12      # per group
    texture_error: float = 0.12   # per group
    background_error: float = 0.08
    style_error: float = 0.12     # requested style lost, or an unrequested one added
    partial: float = 0.06         # per group: a shape cut off by the frame
    distortion: float = 0.08      # per group: malformed outlines
    extra_object: float = 0.05    # scene: an unrequested group appears


def _g(name: str, **rates) -> Generator:
    return Generator(name, **rates)


GENERATORS: tuple[Generator, ...] = (
    _g("Flux-dev", drop_object=0.02, shape_swap=0.02, color_wrong=0.03, color_bind=0.04,
       color_near=0.04, count_error=0.06, spatial_error=0.06, size_error=0.07, texture_error=0.07,
       background_error=0.04, style_error=0.06, partial=0.03, distortion=0.02),
    _g("DALLE-3", count_error=0.25, extra_object=0.12, distortion=0.03, color_bind=0.04,
       spatial_error=0.07),
    _g("Midjourney-6", style_error=0.45, spatial_error=0.22, count_error=0.2, background_error=0.1,
       distortion=0.02),
    _g("SD-3", count_error=0.05, spatial_error=0.04, texture_error=0.35, distortion=0.15),
    _g("SDXL", color_bind=0.35, color_near=0.1, count_error=0.18, distortion=0.1),
    _g("SDXL-Turbo", count_error=0.45, partial=0.22, distortion=0.25, drop_object=0.08),
    _g("SD-1.5", drop_object=0.22, shape_swap=0.1, color_bind=0.4, color_wrong=0.15,
       count_error=0.4, spatial_error=0.4, size_error=0.25, texture_error=0.3, distortion=0.3,
       background_error=0.15, style_error=0.25),
    _g("PixArt-Sigma", spatial_error=0.55, size_error=0.15),
    _g("Kandinsky-3", color_near=0.4, color_wrong=0.12, shape_swap=0.06),
    _g("Playground-2.5", count_error=0.32, size_error=0.3, distortion=0.02, partial=0.1),
    _g("HunyuanDiT", size_error=0.4, texture_error=0.45, background_error=0.08),
    _g("Kolors", background_error=0.4, drop_object=0.14, extra_object=0.12),
)
GENERATOR_NAMES = tuple(g.name for g in GENERATORS)
FAILURES = tuple(f.name for f in fields(Generator) if f.name != "name")


def get_generator(name: str) -> Generator:
    for g in GENERATORS:
        if g.name == name:
            return g
    raise KeyError(f"unknown generator {name!r}; known: {', '.join(GENERATOR_NAMES)}")


def _other(rng: np.random.Generator, options, current):
    choices = [o for o in options if o != current]
    return choices[int(rng.integers(len(choices)))]


def generate(intended: Scene, generator: Generator | str, rng: np.random.Generator) -> Scene:
    """The scene ``generator`` draws for ``intended`` (a new Scene; the input is not changed)."""
    g = get_generator(generator) if isinstance(generator, str) else generator
    s = intended.copy()
    s.relations = []  # the drawn scene's relations follow from its layout and order

    if len(s.objects) > 1:
        kept = [o for o in s.objects if rng.random() >= g.drop_object]
        s.objects = kept or [s.objects[int(rng.integers(len(s.objects)))]]
    for o in s.objects:
        if rng.random() < g.shape_swap:
            used = {x.shape for x in s.objects}
            free = [sh for sh in SHAPES if sh not in used]
            if free:
                o.shape = free[int(rng.integers(len(free)))]
    if len(s.objects) > 1 and rng.random() < g.color_bind:
        i, j = rng.choice(len(s.objects), 2, replace=False)
        s.objects[i].color, s.objects[j].color = s.objects[j].color, s.objects[i].color
    for o in s.objects:
        if rng.random() < g.color_wrong:
            o.color = _other(rng, list(COLORS), o.color)
        elif rng.random() < g.color_near:
            near = NEAR_COLORS[o.color]
            o.tint = near[int(rng.integers(len(near)))]
            o.tint_amount = float(np.round(rng.uniform(0.3, 0.7), 3))
        if rng.random() < g.count_error:
            step = 1 if o.count == 1 or rng.random() < 0.5 else -1
            o.count = int(min(MAX_RENDERED_COUNT, o.count + step))
        if rng.random() < g.size_error:
            o.size = _other(rng, SIZES, o.size)
        if rng.random() < g.texture_error:
            o.texture = "plain" if o.texture != "plain" and rng.random() < 0.7 else _other(rng, TEXTURES, o.texture)
        o.partial = bool(rng.random() < g.partial)
        o.distorted = bool(rng.random() < g.distortion)
    if len(s.objects) > 1 and rng.random() < g.spatial_error:
        if rng.random() < 0.6:
            s.objects.reverse()
        else:
            s.layout = _other(rng, LAYOUTS, s.layout)
    if rng.random() < g.background_error:
        similar = [b for b in BACKGROUNDS if frozenset((b, s.background)) in SIMILAR_BACKGROUNDS]
        s.background = (similar[int(rng.integers(len(similar)))] if similar and rng.random() < 0.5
                        else _other(rng, BACKGROUNDS, s.background))
    if rng.random() < g.style_error:
        if s.style != "none":
            s.style = "none" if rng.random() < 0.6 else _other(rng, STYLES[1:], s.style)
        else:
            s.style = STYLES[1 + int(rng.integers(len(STYLES) - 1))]
    if rng.random() < g.extra_object and len(s.objects) < 4:
        used = {x.shape for x in s.objects}
        free = [sh for sh in SHAPES if sh not in used]
        if free:
            extra = SceneObject(free[int(rng.integers(len(free)))], list(COLORS)[int(rng.integers(len(COLORS)))])
            s.objects.insert(int(rng.integers(len(s.objects) + 1)), extra)
    return s
