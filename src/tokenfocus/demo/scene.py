"""The demo grammar: scenes of coloured shapes (the prompts that ask for them are ``demo.prompt``).

A ``Scene`` describes a picture completely: a background, an optional style and 1-4 groups of
identical shapes laid out along one axis (``layout``); ``objects`` is in spatial order (left to
right for ``"row"``, top to bottom for ``"column"``), so spatial relations follow from the order.
The same class describes what a prompt asked for (the intended scene) and what a simulated
generator drew (the rendered scene, which may carry defects such as a near-miss colour).

``demo.prompt.write_prompt`` turns an intended scene into prompt text plus EvalMuse-style
elements, each of which grades itself against a rendered scene.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

# Few, large, saturated cues: a tiny vision model must learn them from ~2K images.
SHAPES = ("circle", "square", "triangle", "star", "heart")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
          "heart": "hearts"}
SHAPE_CATEGORY = {"circle": "object", "square": "object", "triangle": "object",
                  "star": "object-symbol&sign", "heart": "object-symbol&sign"}
COLORS = {
    "red": (225, 30, 40),
    "orange": (255, 135, 0),
    "yellow": (255, 225, 20),
    "green": (40, 190, 50),
    "blue": (35, 85, 235),
    "purple": (145, 45, 205),
    "pink": (255, 110, 190),
}
# Colours a generator drifts towards when it nearly gets one right.
NEAR_COLORS = {"red": ("orange", "pink"), "orange": ("red", "yellow"), "yellow": ("orange", "green"),
               "green": ("yellow", "blue"), "blue": ("purple", "green"), "purple": ("blue", "pink"),
               "pink": ("red", "purple")}
SIZES = ("small", "medium", "big")          # "medium" is the unstated default
TEXTURES = ("plain", "striped", "dotted", "checkered")   # "plain" is the unstated default
BACKGROUNDS = ("desert", "beach", "forest", "ocean", "snow", "room", "city", "night")
# How a prompt places the scene; the element text is the background word itself.
LOCATION_PHRASES = {
    "desert": ("in the desert", "in a desert"),
    "beach": ("on the beach", "on a sunny beach"),
    "forest": ("in a forest", "in the forest"),
    "ocean": ("in the ocean", "under the ocean"),
    "snow": ("in the snow", "on a snow field"),
    "room": ("in a room", "in an empty room"),
    "city": ("in the city", "in a city street"),
    "night": ("at night", "under the night sky"),
}
# Backgrounds a viewer may take for one another (annotators split on these).
SIMILAR_BACKGROUNDS = {frozenset(p) for p in (("desert", "beach"), ("beach", "ocean"),
                                              ("night", "city"), ("snow", "room"))}
STYLES = ("none", "pixel art", "watercolor", "sketch", "Van Gogh")
STYLE_CATEGORY = {"pixel art": "attribute-style", "watercolor": "attribute-style",
                  "sketch": "attribute-style", "Van Gogh": "attribute-style-artist/works"}
STYLE_PHRASES = {"pixel art": ("pixel art", "in pixel art style"),
                 "watercolor": ("watercolor", "a watercolor painting"),
                 "sketch": ("pencil sketch", "a sketch"),
                 "Van Gogh": ("in the style of Van Gogh", "by Van Gogh")}
SIMILAR_STYLES = {frozenset(("watercolor", "Van Gogh")), frozenset(("sketch", "watercolor"))}
LAYOUTS = ("row", "column")
RELATIONS = {"row": ("left of", "right of"), "column": ("above", "below")}
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of",
                    "above": "above", "below": "below"}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
MAX_INTENDED_COUNT = 3
MAX_RENDERED_COUNT = 4
# Words users add that no element checks ("meaningless" for alignment), as in real prompts.
FLUFF = ("masterpiece", "best quality", "highly detailed", "8k", "4k wallpaper",
         "trending on artstation", "octane render", "cinematic lighting", "ultra realistic",
         "award winning", "beautiful", "epic composition", "sharp focus", "hd")
REAL_OPENERS = ("", "", "a photo of ", "an image of ", "a picture of ", "digital art of ")


@dataclass
class SceneObject:
    """One group of identical shapes; the defect fields stay at their defaults in intended scenes."""

    shape: str
    color: str
    count: int = 1
    size: str = "medium"
    texture: str = "plain"
    tint: str | None = None      # near-miss colour: drawn part-way towards this colour
    tint_amount: float = 0.0     # 0 = the named colour, 1 = the tint colour
    partial: bool = False        # one shape cut off by the frame edge
    distorted: bool = False      # malformed outline (a fidelity defect)


@dataclass
class Relation:
    """``objects[subject]`` is ``relation`` ``objects[reference]`` (indices into ``Scene.objects``)."""

    subject: int
    relation: str
    reference: int


@dataclass
class Scene:
    background: str
    objects: list[SceneObject]
    layout: str = "row"
    style: str = "none"
    relations: list[Relation] = field(default_factory=list)

    def copy(self) -> "Scene":
        return Scene(self.background, [replace(o) for o in self.objects], self.layout, self.style,
                     [replace(r) for r in self.relations])


def shown_color(o: SceneObject) -> str:
    """The colour name a viewer reads off a group: its tint once it is drawn more than half-way."""
    return o.tint if o.tint and o.tint_amount > 0.5 else o.color


def relation_holds(scene: Scene, subject: int, relation: str, reference: int) -> bool:
    """Whether the spatial relation is true of the scene's layout and order."""
    if relation in RELATIONS["row"]:
        if scene.layout != "row":
            return False
    elif relation in RELATIONS["column"]:
        if scene.layout != "column":
            return False
    else:
        raise ValueError(f"unknown relation {relation!r}")
    before = subject < reference
    return before if relation in ("left of", "above") else not before


def pick(rng: np.random.Generator, options, p=None):
    return options[int(rng.choice(len(options), p=p))]


def sample_scene(rng: np.random.Generator) -> Scene:
    """A random intended scene: 1-3 groups with distinct shapes and distinct colours."""
    n = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    shapes = [SHAPES[i] for i in rng.choice(len(SHAPES), n, replace=False)]
    colors = list(COLORS)
    colors = [colors[i] for i in rng.choice(len(colors), n, replace=False)]
    objects = []
    for shape, color in zip(shapes, colors):
        count = int(rng.choice([1, 2, 3], p=[0.55, 0.27, 0.18]))
        size = pick(rng, SIZES, p=[0.15, 0.7, 0.15])
        texture = pick(rng, TEXTURES, p=[0.76, 0.08, 0.08, 0.08])
        objects.append(SceneObject(shape, color, count, size, texture))
    layout = pick(rng, LAYOUTS)
    style = pick(rng, STYLES, p=[0.7, 0.08, 0.08, 0.07, 0.07])
    background = pick(rng, BACKGROUNDS)
    relations = []
    if n >= 2 and rng.random() < 0.6:
        a, b = (int(i) for i in rng.choice(n, 2, replace=False))
        rel = RELATIONS[layout][0] if a < b else RELATIONS[layout][1]
        relations.append(Relation(a, rel, b))
    return Scene(background, objects, layout, style, relations)
