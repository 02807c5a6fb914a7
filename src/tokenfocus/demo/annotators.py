"""Simulated human annotators: biased, noisy readers of what a rendered scene shows.

They judge as people do, not as the scene's truth says. Every departure below is shared by all
annotators (so a model can learn it from the labels), visible in the image, and was fixed from
what EvalMuse-40K shows before any model was scored on it:

Element votes. Each vote is a coin with P(yes) = sigmoid(k_kind * (2 * perceived - 1) + shift +
bias): ``perceived`` is the element's clarity (``Element.clarity``) as a person perceives it,
``k_kind`` how reliably people judge that kind of claim, ``shift`` a systematic leniency or
strictness, ``bias`` the annotator's own leniency plus a per-kind quirk.
- near-miss colours are often accepted: a colour drawn part-way towards a neighbouring hue
  counts ``NEAR_MISS_LIFT`` more, a neighbouring hue drawn outright still counts
  ``NEIGHBOUR_COLOR_CREDIT``;
- off-by-one counts of three or four are accepted by many (perceived ``OFF_BY_ONE_CREDIT``);
  small counts must be exact;
- small objects and objects that blend into the background are missed: object, colour and
  texture votes about them shift by ``SMALL_SHIFT`` / ``LOW_CONTRAST_SHIFT`` logits.

The 1-5 total. A holistic judgement that the element truth predicts only in part: the share of
the annotator's own satisfied votes under ``HOLISTIC_WEIGHT`` (objects weigh 3, not 2; location
and style little), made convex, then
- a strong penalty for visible fidelity defects: ``DISTORTION_PENALTY`` x the share of
  malformed groups, ``PARTIAL_PENALTY`` for a shape cut off by the frame, and what the
  annotator's own fidelity label adds (``FIDELITY_PENALTY``);
- clutter: ``UNREQUESTED_PENALTY`` per drawn group the prompt did not ask for, ``CLUTTER_PENALTY``
  when more than ``CLUTTER_SHAPES`` shapes are drawn;
- image style: ``STYLE_APPEAL`` (painterly pictures please, pixel art and sketches less);
- the annotator's offset and noise; 3 raters per image, some 6.

The same simulation, repeated, gives the expected labels a perfect-vision predictor would output
(the demo's noise ceiling). ``truth_labels`` gives what the scene's truth alone says, with no
annotator in it; how far it lands below the ceiling is what a fine-tune can learn from labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .prompt import KINDS, Prompt
from .scene import NEAR_COLORS, Scene, shown_color

PERCEPTION = {"object": 3.0, "color": 2.5, "count": 2.0, "size": 1.6, "texture": 2.1,
              "spatial": 2.0, "location": 2.4, "style": 1.8}
WEIGHT = {"object": 2.0}          # the truth formula's weights (truth_total)
HOLISTIC_WEIGHT = {"object": 3.0, "color": 1.0, "count": 1.0, "size": 0.6, "texture": 0.6,
                   "spatial": 1.0, "location": 0.4, "style": 0.5}
NEAR_MISS_LIFT = 0.3              # perceived colour clarity of a tint drawn part-way
NEIGHBOUR_COLOR_CREDIT = 0.4      # a neighbouring hue drawn outright
OFF_BY_ONE_CREDIT = 0.6           # three for four, four for three
SMALL_SHIFT = -2.0
LOW_CONTRAST_SHIFT = -2.5
# Colours that blend into a background (drawn colour, background).
LOW_CONTRAST = {("yellow", "desert"), ("orange", "desert"), ("yellow", "beach"), ("blue", "ocean"),
                ("green", "forest"), ("blue", "night"), ("purple", "night")}
DISTORTION_PENALTY = 1.3
PARTIAL_PENALTY = 0.6
UNREQUESTED_PENALTY = 0.6
CLUTTER_SHAPES, CLUTTER_PENALTY = 6, 0.4
STYLE_APPEAL = {"none": 0.0, "watercolor": 0.3, "Van Gogh": 0.3, "pixel art": -0.4, "sketch": -0.3}
FIDELITY_LABELS = ("normal", "minor", "severe")
FIDELITY_PENALTY = np.array([0.0, 0.3, 0.8])
ATTRIBUTE_KINDS = ("color", "size", "texture", "style")


@dataclass
class AnnotatorPool:
    leniency: np.ndarray      # (A,) logit shift of every element vote
    kind_bias: np.ndarray     # (A, len(KINDS)) per-kind quirks
    total_bias: np.ndarray    # (A,) offset of the 1-5 score
    total_noise: np.ndarray   # (A,) spread of the 1-5 score

    def __len__(self) -> int:
        return len(self.leniency)


def make_pool(rng: np.random.Generator, n: int = 24) -> AnnotatorPool:
    return AnnotatorPool(
        leniency=rng.normal(0.0, 0.35, n),
        kind_bias=rng.normal(0.0, 0.3, (n, len(KINDS))),
        total_bias=rng.normal(0.0, 0.3, n),
        total_noise=rng.uniform(0.3, 0.6, n),
    )


@dataclass
class Annotation:
    """Per-annotator labels of one image, in file order."""

    total_score: list[int]
    element_score: dict[str, list[int]]
    promt_meaningless: list[int]
    split_confidence: list[int]
    attribute_confidence: list[int]
    fidelity_label: list[str]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _perceived(e, rendered: Scene) -> tuple[float, float]:
    """(perceived clarity, systematic logit shift) of one element in the rendered scene."""
    clarity = float(e.clarity(rendered))
    groups = [o for o in rendered.objects if o.shape == e.shape]
    shift = 0.0
    if e.kind == "color" and groups:
        for g in groups:
            if g.tint and e.value in (g.color, g.tint):
                clarity = min(1.0, clarity + NEAR_MISS_LIFT)
            elif e.value in NEAR_COLORS.get(g.color, ()):
                clarity = max(clarity, NEIGHBOUR_COLOR_CREDIT)
    if e.kind == "count" and groups:
        drawn = sum(g.count for g in groups)
        if abs(drawn - e.count) == 1 and min(drawn, e.count) >= 3:
            clarity = max(clarity, OFF_BY_ONE_CREDIT)
    if e.kind in ("object", "color", "texture") and groups:
        if all(g.size == "small" for g in groups):
            shift += SMALL_SHIFT
        if all((shown_color(g), rendered.background) in LOW_CONTRAST for g in groups):
            shift += LOW_CONTRAST_SHIFT
    return clarity, shift


def _element_arrays(prompt: Prompt, rendered: Scene):
    kinds = np.array([KINDS.index(e.kind) for e in prompt.elements])
    perceived = np.array([_perceived(e, rendered) for e in prompt.elements]).reshape(-1, 2)
    k = np.array([PERCEPTION[e.kind] for e in prompt.elements])
    w = np.array([HOLISTIC_WEIGHT[e.kind] for e in prompt.elements])
    return kinds, k * (2 * perceived[:, 0] - 1) + perceived[:, 1], w


def _scene_penalty(prompt: Prompt, rendered: Scene) -> float:
    """What the image itself costs in every annotator's total: defects, clutter, style."""
    objs = rendered.objects
    if not objs:
        return 0.0
    asked = {e.shape for e in prompt.elements if e.kind == "object"}
    penalty = DISTORTION_PENALTY * float(np.mean([o.distorted for o in objs]))
    penalty += PARTIAL_PENALTY * any(o.partial for o in objs)
    penalty += UNREQUESTED_PENALTY * sum(o.shape not in asked for o in objs)
    penalty += CLUTTER_PENALTY * (sum(o.count for o in objs) > CLUTTER_SHAPES)
    return penalty - STYLE_APPEAL.get(rendered.style, 0.0)


def _distortion(rendered: Scene) -> float:
    if not rendered.objects:
        return 0.0
    return float(np.mean([o.distorted for o in rendered.objects]))


def _vote_probabilities(prompt: Prompt, rendered: Scene, pool: AnnotatorPool, idx: np.ndarray):
    kinds, base, w = _element_arrays(prompt, rendered)
    return _sigmoid(base + pool.leniency[idx, None] + pool.kind_bias[idx][:, kinds]), w


def _simulate(prompt: Prompt, rendered: Scene, pool: AnnotatorPool, idx: np.ndarray,
              rng: np.random.Generator):
    """Votes (len(idx), n_elements), totals (len(idx),) and fidelity label ids for annotators idx."""
    p, w = _vote_probabilities(prompt, rendered, pool, idx)
    votes = (rng.random(p.shape) < p).astype(int)
    d = _distortion(rendered)
    partial = any(o.partial for o in rendered.objects)
    flagged = rng.random(len(idx)) < 0.04 + 0.85 * d + (0.15 if partial else 0.0)
    severe = rng.random(len(idx)) < 0.15 + 0.5 * d
    fid = np.where(flagged, np.where(severe, 2, 1), 0)
    frac = votes @ w / w.sum()
    # Convex in the satisfied share: one missing element already costs people about a point.
    raw = (0.7 + 4.3 * frac ** 1.5 - _scene_penalty(prompt, rendered) + pool.total_bias[idx]
           + pool.total_noise[idx] * rng.standard_normal(len(idx)) - FIDELITY_PENALTY[fid])
    totals = np.clip(np.rint(raw), 1, 5).astype(int)
    return votes, totals, fid


def annotate(prompt: Prompt, rendered: Scene, pool: AnnotatorPool, n_annotators: int,
             rng: np.random.Generator) -> Annotation:
    """Labels from ``n_annotators`` distinct annotators drawn from the pool."""
    idx = rng.choice(len(pool), n_annotators, replace=False)
    votes, totals, fid = _simulate(prompt, rendered, pool, idx, rng)
    n = n_annotators
    meaningless = rng.random(n) < 0.02 + 0.07 * prompt.n_fluff
    n_el = len(prompt.elements)
    split_doubt = rng.random(n) < 0.04 + 0.04 * max(0, n_el - 6) + (0.06 if prompt.type == "real" else 0.0)
    attr = [e.clarity(rendered) for e in prompt.elements if e.kind in ATTRIBUTE_KINDS]
    ambiguity = float(np.mean([1 - abs(2 * c - 1) for c in attr])) if attr else 0.0
    attr_sure = rng.random(n) >= 0.05 + 0.5 * ambiguity
    return Annotation(
        total_score=[int(t) for t in totals],
        element_score={e.key: [int(v) for v in votes[:, j]] for j, e in enumerate(prompt.elements)},
        promt_meaningless=[int(x) for x in meaningless],
        split_confidence=[int(x) for x in split_doubt],
        attribute_confidence=[int(x) for x in attr_sure],
        fidelity_label=[FIDELITY_LABELS[i] for i in fid],
    )


TRUTH_THRESHOLD = 0.5   # an element counts as shown from this clarity on


def truth_total(kinds, clarity) -> float:
    """The overall score a scene earns from its truth on a 1-5 scale: 1 + 4 x the weighted mean
    clarity of its elements (objects weigh double, as annotators weigh them)."""
    w = np.array([WEIGHT.get(k, 1.0) for k in kinds])
    return float(1 + 4 * (w @ np.asarray(clarity, dtype=float)) / w.sum())


def truth_labels(prompt: Prompt, rendered: Scene) -> tuple[float, dict[str, float]]:
    """Labels from the rendered scene's truth alone: ``truth_total`` and each element 1 where its
    clarity is at least ``TRUTH_THRESHOLD``. No leniency, no noise, no penalty for malformed
    shapes: how far this lands from the annotators shows what they add to the truth."""
    clarity = [e.clarity(rendered) for e in prompt.elements]
    elements = {e.key: float(c >= TRUTH_THRESHOLD) for e, c in zip(prompt.elements, clarity)}
    return truth_total([e.kind for e in prompt.elements], clarity), elements


def expected_labels(prompt: Prompt, rendered: Scene, pool: AnnotatorPool, rng: np.random.Generator,
                    n_sim: int = 512) -> tuple[float, dict[str, float]]:
    """What a predictor that sees the true rendered scene expects annotators to say.

    Element vote rates are exact (averaged over the pool); the total is a Monte Carlo mean over
    ``n_sim`` simulated annotators.
    """
    p, _ = _vote_probabilities(prompt, rendered, pool, np.arange(len(pool)))
    p = p.mean(axis=0)
    idx = rng.integers(0, len(pool), n_sim)
    _, totals, _ = _simulate(prompt, rendered, pool, idx, rng)
    return float(totals.mean()), {e.key: float(p[j]) for j, e in enumerate(prompt.elements)}
