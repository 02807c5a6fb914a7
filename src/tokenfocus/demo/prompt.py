"""The prompts of the demo: text plus EvalMuse-style elements, written for an intended scene.

``write_prompt`` turns an intended ``Scene`` into prompt text plus elements keyed as EvalMuse
keys them; every ``Element`` grades itself against a rendered scene (``Element.clarity``), which
is what the simulated annotators perceive. ``demo_vocabulary`` lists every token a prompt, key or
scene field can hold.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .scene import (BACKGROUNDS, COLORS, COUNT_WORDS, FLUFF, LAYOUTS, LOCATION_PHRASES, PLURAL,
                    REAL_OPENERS, RELATION_PHRASES, SHAPES, SHAPE_CATEGORY, SIMILAR_BACKGROUNDS,
                    SIMILAR_STYLES, SIZES, STYLES, STYLE_CATEGORY, STYLE_PHRASES, Scene,
                    SceneObject, TEXTURES, pick, relation_holds)


# ----------------------------------------------------------------------------------------------
# Elements


@dataclass(frozen=True)
class Element:
    """One checkable claim of a prompt, keyed byte-exactly as EvalMuse keys it."""

    key: str            # "<text> (<category>)", possibly with a trailing space
    kind: str           # object | color | count | size | texture | spatial | location | style
    shape: str = ""     # the group this claim is about (for spatial: the subject)
    value: str = ""     # the claimed colour / size / texture / background / style / relation
    count: int = 0
    other: str = ""     # spatial reference shape

    @property
    def category(self) -> str:
        return self.key.rstrip()[self.key.rstrip().rindex("(") + 1:-1]

    def clarity(self, rendered: Scene) -> float:
        """How clearly the rendered scene shows this claim: 1 plainly yes, 0 plainly no."""
        return _CLARITY[self.kind](self, rendered)


def _groups(scene: Scene, shape: str) -> list[SceneObject]:
    return [o for o in scene.objects if o.shape == shape]


def _clarity_object(e: Element, s: Scene) -> float:
    best = 0.0
    for g in _groups(s, e.shape):
        c = 1.0
        if g.distorted:
            c = 0.55
        if g.partial and g.count == 1:
            c = min(c, 0.6)
        best = max(best, c)
    return best


def _clarity_color(e: Element, s: Scene) -> float:
    groups = _groups(s, e.shape)
    if not groups:
        # The colour shows on some other shape: a few viewers still credit it.
        return 0.15 if any(o.color == e.value for o in s.objects) else 0.0
    best = 0.0
    for g in groups:
        if g.color == e.value:
            c = 1.0 - g.tint_amount
        elif g.tint == e.value:
            c = g.tint_amount
        else:
            c = 0.0
        if s.style == "sketch":
            c *= 0.85  # colour only on the outline
        best = max(best, c)
    return best


def _clarity_count(e: Element, s: Scene) -> float:
    groups = _groups(s, e.shape)
    if not groups:
        return 0.0
    total = sum(g.count for g in groups)
    partial = any(g.partial for g in groups)
    if total == e.count:
        return 0.45 if partial else 1.0
    if partial and total - 1 == e.count:
        return 0.5
    return 0.0


def _clarity_size(e: Element, s: Scene) -> float:
    best = 0.0
    for g in _groups(s, e.shape):
        if g.size == e.value:
            best = max(best, 1.0)
        elif "medium" in (g.size, e.value):
            best = max(best, 0.3)
    return best


def _clarity_texture(e: Element, s: Scene) -> float:
    best = 0.0
    for g in _groups(s, e.shape):
        if g.texture == e.value:
            c = 0.65 if g.size == "small" else 1.0
            if s.style in ("pixel art", "watercolor"):
                c *= 0.7  # the filter washes fine patterns out
            best = max(best, c)
    return best


def _clarity_spatial(e: Element, s: Scene) -> float:
    subj = [i for i, o in enumerate(s.objects) if o.shape == e.shape]
    ref = [i for i, o in enumerate(s.objects) if o.shape == e.other]
    for i in subj:
        for j in ref:
            if relation_holds(s, i, e.value, j):
                return 1.0
    return 0.0


def _clarity_location(e: Element, s: Scene) -> float:
    if s.background == e.value:
        return 1.0
    return 0.3 if frozenset((s.background, e.value)) in SIMILAR_BACKGROUNDS else 0.0


def _clarity_style(e: Element, s: Scene) -> float:
    if s.style == e.value:
        return 1.0
    return 0.35 if frozenset((s.style, e.value)) in SIMILAR_STYLES else 0.0


_CLARITY = {"object": _clarity_object, "color": _clarity_color, "count": _clarity_count,
            "size": _clarity_size, "texture": _clarity_texture, "spatial": _clarity_spatial,
            "location": _clarity_location, "style": _clarity_style}
KINDS = tuple(_CLARITY)


# ----------------------------------------------------------------------------------------------
# Prompts


@dataclass
class Prompt:
    text: str
    type: str                   # "real" (user-like, with filler words) or "synthetic" (templated)
    elements: list[Element]
    n_fluff: int = 0            # filler words no element checks


def _key(text: str, category: str, rng: np.random.Generator, trailing_space_rate: float) -> str:
    key = f"{text} ({category})"
    return key + " " if rng.random() < trailing_space_rate else key


def write_prompt(scene: Scene, rng: np.random.Generator, prompt_type: str = "synthetic",
                 trailing_space_rate: float = 0.05, alt_case_rate: float = 0.1) -> Prompt:
    """Prompt text and its ordered elements for an intended scene.

    Colour, a count of one, and the location are stated only sometimes; size and texture
    whenever they differ from the default. ``alt_case_rate`` is the chance that this prompt's
    elements use the capitalised ``"Red (Color)"`` dialect; each key independently ends with a
    space with probability ``trailing_space_rate``.
    """
    if prompt_type not in ("real", "synthetic"):
        raise ValueError(f"prompt_type must be 'real' or 'synthetic', got {prompt_type!r}")
    alt = rng.random() < alt_case_rate
    n = len(scene.objects)
    rel = scene.relations[0] if scene.relations else None
    if rel is not None:
        rest = [i for i in rng.permutation(n) if i not in (rel.subject, rel.reference)]
        order = [rel.subject, rel.reference] + [int(i) for i in rest]
    else:
        order = [int(i) for i in rng.permutation(n)]

    elements: list[Element] = []
    seen: set[tuple[str, str]] = set()

    def add(text: str, category: str, **kw) -> None:
        ident = (text.lower(), category.lower())
        if ident in seen:  # EvalMuse element dicts cannot hold the same key twice
            return
        seen.add(ident)
        elements.append(Element(_key(text, category, rng, trailing_space_rate), **kw))

    phrases = []
    for i in order:
        o = scene.objects[i]
        words = []
        state_count = o.count > 1 or rng.random() < 0.2
        if state_count:
            words.append(COUNT_WORDS[o.count])
            add(COUNT_WORDS[o.count], "counting", kind="count", shape=o.shape, count=o.count)
        else:
            words.append("a")  # becomes "an" below when the next word starts with a vowel
        if o.size != "medium":
            words.append(o.size)
            add(o.size, "attribute-size", kind="size", shape=o.shape, value=o.size)
        if rng.random() < 0.7:
            words.append(o.color)
            if alt:
                add(o.color.capitalize(), "Color", kind="color", shape=o.shape, value=o.color)
            else:
                add(o.color, "attribute-color", kind="color", shape=o.shape, value=o.color)
        if o.texture != "plain":
            words.append(o.texture)
            add(o.texture, "attribute-texture", kind="texture", shape=o.shape, value=o.texture)
        noun = PLURAL[o.shape] if o.count > 1 else o.shape
        words.append(noun)
        if words[0] == "a" and words[1][0] in "aeiou":
            words[0] = "an"
        add(noun, SHAPE_CATEGORY[o.shape], kind="object", shape=o.shape)
        phrases.append(" ".join(words))
        if rel is not None and i == rel.reference and len(phrases) == 2:
            subj = scene.objects[rel.subject].shape
            add(rel.relation, "spatial", kind="spatial", shape=subj, value=rel.relation, other=o.shape)

    if rel is not None:
        body = f"{phrases[0]} {RELATION_PHRASES[rel.relation]} {phrases[1]}"
        tail = phrases[2:]
    else:
        body, tail = phrases[0], phrases[1:]
    if tail:
        body = (f"{body} and {tail[0]}" if len(tail) == 1 and rel is None
                else ", ".join([body] + tail[:-1]) + f" and {tail[-1]}")

    if rng.random() < 0.5:
        body += " " + pick(rng, LOCATION_PHRASES[scene.background])
        add(scene.background, "location", kind="location", value=scene.background)
    style_phrase = ""
    if scene.style != "none":
        style_phrase = pick(rng, STYLE_PHRASES[scene.style])
        add(scene.style, STYLE_CATEGORY[scene.style], kind="style", value=scene.style)

    n_fluff = 0
    if prompt_type == "synthetic":
        text = body + (f", {style_phrase}" if style_phrase else "")
        text = text[0].upper() + text[1:] + "."
    else:
        n_fluff = int(rng.choice([0, 1, 2, 3, 4], p=[0.15, 0.25, 0.3, 0.2, 0.1]))
        fluff = [FLUFF[i] for i in rng.choice(len(FLUFF), n_fluff, replace=False)]
        parts = [pick(rng, REAL_OPENERS) + body] + ([style_phrase] if style_phrase else []) + fluff
        text = ", ".join(parts)
    return Prompt(text, prompt_type, elements, n_fluff)


# ----------------------------------------------------------------------------------------------
# Vocabulary

WORD_RE = re.compile(r"\w+|[^\w\s]")


def demo_vocabulary() -> list[str]:
    """Every token that can appear in a demo prompt, element key or scene field, sorted.

    Tokens are what ``WORD_RE`` (``\\w+|[^\\w\\s]``) finds: words keep their case
    (``"Red"``, ``"Color"``); punctuation marks are tokens of their own.
    """
    texts = list(SHAPES) + list(PLURAL.values()) + list(SHAPE_CATEGORY.values())
    texts += list(COLORS) + [c.capitalize() for c in COLORS] + ["Color", "attribute-color"]
    texts += list(SIZES) + list(TEXTURES) + list(BACKGROUNDS) + list(STYLES) + list(LAYOUTS)
    texts += [p for ps in LOCATION_PHRASES.values() for p in ps]
    texts += [p for ps in STYLE_PHRASES.values() for p in ps] + list(STYLE_CATEGORY.values())
    texts += list(RELATION_PHRASES) + list(RELATION_PHRASES.values())
    texts += list(COUNT_WORDS.values()) + [str(d) for d in range(10)]
    texts += list(FLUFF) + list(REAL_OPENERS)
    texts += ["a an and , . ( )", "counting attribute-size attribute-texture spatial location"]
    # Synthetic prompts capitalise their first word, which is an article or a count word.
    texts += ["A", "An"] + [w.capitalize() for w in COUNT_WORDS.values()]
    return sorted({w for t in texts for w in WORD_RE.findall(t)})
