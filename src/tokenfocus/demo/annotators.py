"""Simulated human annotators: noisy, biased readers of what a rendered scene shows.

Each element vote is a coin with P(yes) = sigmoid(k_kind * (2 * clarity - 1) + bias), where
``clarity`` is how plainly the image shows the claim (``Element.clarity``), ``k_kind`` how
reliably people judge that kind of claim (counting and size are harder than objects), and the
bias is the annotator's leniency plus a per-kind quirk. The overall 1-5 score follows the share
of elements the annotator saw satisfied (objects weigh double), their own offset and noise, and a
penalty for malformed shapes. The same simulation, repeated, gives the expected labels a
perfect-vision predictor would output (the demo's noise ceiling). ``truth_labels`` gives what
the scene's truth alone says, with no annotator in it: the answers the tiny bases are pre-trained
on (``src/tools/make_tiny_bases.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scene import KINDS, Prompt, Scene

PERCEPTION = {"object": 3.0, "color": 2.5, "count": 2.0, "size": 1.6, "texture": 2.1,
              "spatial": 2.0, "location": 2.4, "style": 1.8}
WEIGHT = {"object": 2.0}
FIDELITY_LABELS = ("normal", "minor", "severe")
FIDELITY_PENALTY = np.array([0.0, 0.4, 1.0])
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
        total_noise=rng.uniform(0.3, 0.7, n),
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


def _element_arrays(prompt: Prompt, rendered: Scene):
    kinds = np.array([KINDS.index(e.kind) for e in prompt.elements])
    clarity = np.array([e.clarity(rendered) for e in prompt.elements])
    k = np.array([PERCEPTION[e.kind] for e in prompt.elements])
    w = np.array([WEIGHT.get(e.kind, 1.0) for e in prompt.elements])
    return kinds, clarity, k, w


def _distortion(rendered: Scene) -> float:
    if not rendered.objects:
        return 0.0
    return float(np.mean([o.distorted for o in rendered.objects]))


def _simulate(prompt: Prompt, rendered: Scene, pool: AnnotatorPool, idx: np.ndarray,
              rng: np.random.Generator):
    """Votes (len(idx), n_elements), totals (len(idx),) and fidelity label ids for annotators idx."""
    kinds, clarity, k, w = _element_arrays(prompt, rendered)
    logits = k * (2 * clarity - 1) + pool.leniency[idx, None] + pool.kind_bias[idx][:, kinds]
    votes = (rng.random(logits.shape) < _sigmoid(logits)).astype(int)
    d = _distortion(rendered)
    partial = any(o.partial for o in rendered.objects)
    flagged = rng.random(len(idx)) < 0.04 + 0.85 * d + (0.15 if partial else 0.0)
    severe = rng.random(len(idx)) < 0.15 + 0.5 * d
    fid = np.where(flagged, np.where(severe, 2, 1), 0)
    frac = votes @ w / w.sum()
    # Convex in the satisfied share: one missing element already costs people about a point.
    raw = (0.6 + 4.4 * frac ** 1.3 + pool.total_bias[idx] + pool.total_noise[idx] * rng.standard_normal(len(idx))
           - FIDELITY_PENALTY[fid])
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
    _, clarity, _, _ = _element_arrays(prompt, rendered)
    attr = [c for e, c in zip(prompt.elements, clarity) if e.kind in ATTRIBUTE_KINDS]
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
    kinds, clarity, k, _ = _element_arrays(prompt, rendered)
    logits = k * (2 * clarity - 1) + pool.leniency[:, None] + pool.kind_bias[:, kinds]
    p = _sigmoid(logits).mean(axis=0)
    idx = rng.integers(0, len(pool), n_sim)
    _, totals, _ = _simulate(prompt, rendered, pool, idx, rng)
    return float(totals.mean()), {e.key: float(p[j]) for j, e in enumerate(prompt.elements)}
