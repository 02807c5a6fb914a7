"""Token-focus losses: supervise only the score-label tokens at the first answer position.

Inputs come LEFT-padded (see ``tokenfocus.lvlm``), so the logits at the last position
predict the first answer token for every row. ``answer_label_logits`` evaluates the LM
head there only (``logits_to_keep=1``) and keeps the label-token columns: a [B, L]
tensor, never [B, S, V]. The losses below work on that tensor:

* ``token_focus_mse``: softmax over the label logits, expected label value, MSE to the
  mean human label (the method's loss);
* ``soft_label_ce``: cross-entropy to a soft label distribution built by
  ``soft_label_targets`` from the annotators' mean and std;
* ``full_vocab_sft_loss``: plain next-token SFT over the full vocabulary, the ablation
  baseline, which materialises sequence x vocabulary logits by design.

``compute_loss`` picks one by name for callers that hold a single label set.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
LOSS_KINDS = ("mse", "soft_ce", "sft")
LossKind = Literal["mse", "soft_ce", "sft"]
Reduction = Literal["mean", "sum", "none"]


# --------------------------------------------------------------------------- logits
def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP / peft wrappers (for signature checks only)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    try:
        params = inspect.signature(_unwrap(model).forward).parameters
    except (TypeError, ValueError):
        return False
    return "logits_to_keep" in params


def _output_head(model: torch.nn.Module) -> torch.nn.Module:
    base = _unwrap(model)
    for owner in (base, getattr(base, "language_model", None)):
        getter = getattr(owner, "get_output_embeddings", None)
        head = getter() if getter is not None else None
        if head is not None:
            return head
    raise TypeError(f"{type(base).__name__}: forward() takes no logits_to_keep and no output "
                    "embedding layer was found to restrict to the last position")


def last_position_logits(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """Full-vocabulary logits at the last position only: [B, V].

    Uses ``logits_to_keep=1`` (native transformers classes slice the hidden states
    before the LM head). For models whose forward lacks that argument, a pre-hook on
    the output embedding layer slices its input to the last position instead.
    """
    mask = inputs.get("attention_mask")
    if mask is not None and mask.dim() == 2 and not bool(mask[:, -1].bool().all()):
        raise ValueError("inputs must be left-padded: attention_mask[:, -1] is 0 for some row, so the "
                         "last position does not predict that row's answer")
    if _accepts_logits_to_keep(model):
        logits = model(**inputs, logits_to_keep=1).logits
    else:
        def keep_last(_module, args):
            return (args[0][:, -1:],) + tuple(args[1:])

        handle = _output_head(model).register_forward_pre_hook(keep_last)
        try:
            logits = model(**inputs).logits
        finally:
            handle.remove()
    if logits.dim() != 3 or logits.shape[1] != 1:
        raise RuntimeError(f"expected logits of shape [B, 1, V] at the last position, got {tuple(logits.shape)}")
    return logits[:, 0]


def answer_label_logits(model: torch.nn.Module, inputs: dict, label_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the label tokens at the first answer position: [B, L], float32.

    One forward; the LM head runs on the last position only, so the [B, S, V] logits
    of a plain forward never exist. ``label_ids`` is a 1-D LongTensor of token ids
    (one per label); the returned columns follow its order.
    """
    label_ids = torch.as_tensor(label_ids)
    if label_ids.dim() != 1 or label_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"label_ids must be a 1-D integer tensor, got {label_ids.dtype} {tuple(label_ids.shape)}")
    logits = last_position_logits(model, inputs)
    if int(label_ids.max()) >= logits.shape[-1] or int(label_ids.min()) < 0:
        raise ValueError(f"label_ids {label_ids.tolist()} outside the vocabulary of size {logits.shape[-1]}")
    # Upcast only the L kept columns: bf16 logits are too coarse for a softmax target.
    return logits.index_select(-1, label_ids.to(logits.device).long()).float()


# --------------------------------------------------------------------------- label losses
def _values_like(values, ref: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(values, dtype=ref.dtype, device=ref.device)
    if v.dim() != 1 or v.shape[0] != ref.shape[-1]:
        raise ValueError(f"{ref.shape[-1]} label logits but label values {v.tolist()}")
    return v


def _reduce(per_row: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return per_row.mean()
    if reduction == "sum":
        return per_row.sum()
    if reduction == "none":
        return per_row
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def label_probabilities(label_logits: torch.Tensor) -> torch.Tensor:
    """Softmax among the label tokens only: [B, L]."""
    return torch.softmax(label_logits.float(), dim=-1)


def expected_value(label_logits: torch.Tensor, values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Expected label value under the softmax of the label logits: [B].

    The paper's eq. 2 writes the softmax over the label *probabilities*; the method
    intends (and this computes) the softmax over the label *logits*, i.e. the model's
    distribution renormalised to the label tokens.
    """
    probs = label_probabilities(label_logits)
    return probs @ _values_like(values, probs)


def token_focus_mse(label_logits: torch.Tensor, values: Sequence[float] | torch.Tensor,
                    target: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """MSE between the expected label value and the mean human label (not bucketed)."""
    pred = expected_value(label_logits, values)
    target = torch.as_tensor(target, dtype=pred.dtype, device=pred.device)
    if target.shape != pred.shape:
        raise ValueError(f"target shape {tuple(target.shape)} does not match batch {tuple(pred.shape)}")
    return _reduce((pred - target) ** 2, reduction)


def soft_label_ce(label_logits: torch.Tensor, target_probs: torch.Tensor,
                  reduction: Reduction = "mean") -> torch.Tensor:
    """Cross-entropy from a target distribution over the label tokens to their softmax."""
    logp = torch.log_softmax(label_logits.float(), dim=-1)
    target_probs = torch.as_tensor(target_probs, dtype=logp.dtype, device=logp.device)
    if target_probs.shape != logp.shape:
        raise ValueError(f"target_probs shape {tuple(target_probs.shape)} does not match logits {tuple(logp.shape)}")
    return _reduce(-(target_probs * logp).sum(-1), reduction)


# --------------------------------------------------------------------------- soft labels
def _log_bin_mass(lower: torch.Tensor, upper: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor):
    """log P(lower < X < upper) for X ~ N(centre, scale), stable far in either tail."""
    a = (lower - centre[:, None]) / scale[:, None]
    b = (upper - centre[:, None]) / scale[:, None]
    # Work in the tail the bin lies in, so neither CDF value rounds to 1.
    right = (a + b) > 0
    hi = torch.where(right, torch.special.log_ndtr(-a), torch.special.log_ndtr(b))
    lo = torch.where(right, torch.special.log_ndtr(-b), torch.special.log_ndtr(a))
    return hi + torch.log(-torch.expm1(lo - hi))


def _neighbour_split(mean: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """All mass on the two levels around the mean, linearly, so the expectation is the mean."""
    upper = torch.searchsorted(levels, mean, right=True).clamp(1, len(levels) - 1)
    lower = upper - 1
    w_up = ((mean - levels[lower]) / (levels[upper] - levels[lower])).clamp(0, 1)
    probs = torch.zeros(len(mean), len(levels), dtype=mean.dtype, device=mean.device)
    probs.scatter_(1, lower[:, None], (1 - w_up)[:, None])
    probs.scatter_add_(1, upper[:, None], w_up[:, None])
    return probs


def soft_label_targets(mean: torch.Tensor, std: torch.Tensor | float, levels: Sequence[float] | torch.Tensor,
                       min_std: float = 0.05, iters: int = 80) -> torch.Tensor:
    """Soft label distributions over ``levels`` with expectation equal to ``mean``: [B, L].

    As in DeQA-Score: a Gaussian with the annotators' std is discretised over the
    levels (bins between the midpoints of neighbouring levels); with a std below
    ``min_std`` (or with two levels, e.g. the binary (0, 1) task, where the answer is
    simply (1 - m, m)) the mass is split between the two levels around the mean.
    DeQA-Score corrects the mean with an affine map of the probabilities and clips
    negatives, which leaves it only approximately right; here the Gaussian's centre
    is moved instead (found by bisection; the bin mean rises monotonically with the
    centre), so the probabilities stay non-negative and the expectation equals the
    mean to float precision. Float64 inside; the result has ``mean``'s float dtype
    (float32 for other inputs).
    """
    out_dtype = mean.dtype if torch.is_tensor(mean) and mean.is_floating_point() else torch.float32
    device = mean.device if torch.is_tensor(mean) else None
    m = torch.as_tensor(mean, dtype=torch.float64, device=device).reshape(-1)
    lv = torch.as_tensor(levels, dtype=torch.float64, device=m.device).reshape(-1)
    if len(lv) < 2 or not bool((lv[1:] > lv[:-1]).all()):
        raise ValueError(f"levels must be at least two strictly increasing values, got {lv.tolist()}")
    s = torch.as_tensor(std, dtype=torch.float64, device=m.device).reshape(-1)
    if len(s) not in (1, len(m)):
        raise ValueError(f"soft_label_targets: {len(s)} stds for {len(m)} means")
    s = s.expand(len(m)).clone()
    if not bool(torch.isfinite(m).all()) or not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise ValueError("soft_label_targets: mean and std must be finite and std >= 0")
    tol = 1e-9 * float(lv[-1] - lv[0])
    if bool((m < lv[0] - tol).any()) or bool((m > lv[-1] + tol).any()):
        bad = m[(m < lv[0] - tol) | (m > lv[-1] + tol)]
        raise ValueError(f"soft_label_targets: means {bad.tolist()[:5]} outside the levels {lv.tolist()}")
    m = m.clamp(float(lv[0]), float(lv[-1]))

    probs = _neighbour_split(m, lv)
    gauss = (s >= min_std) & (m > lv[0]) & (m < lv[-1])
    if len(lv) > 2 and bool(gauss.any()):
        mg, sg = m[gauss], s[gauss]
        gaps = lv[1:] - lv[:-1]
        mids = (lv[1:] + lv[:-1]) / 2
        lower = torch.cat([lv[:1] - gaps[:1] / 2, mids])
        upper = torch.cat([mids, lv[-1:] + gaps[-1:] / 2])
        # Far enough out that the bin mean is within e^-40 of the end level.
        reach = float(lv[-1] - lv[0]) + 40 * sg ** 2 / float(gaps.min()) + 1
        lo_c, hi_c = lv[0] - reach, lv[-1] + reach
        for _ in range(iters):
            c = (lo_c + hi_c) / 2
            bin_mean = torch.softmax(_log_bin_mass(lower, upper, c, sg), -1) @ lv
            below = bin_mean < mg
            lo_c = torch.where(below, c, lo_c)
            hi_c = torch.where(below, hi_c, c)
        probs[gauss] = torch.softmax(_log_bin_mass(lower, upper, (lo_c + hi_c) / 2, sg), -1)
    return probs.to(out_dtype)


# --------------------------------------------------------------------------- SFT baseline
def full_vocab_sft_loss(model: torch.nn.Module, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
    """Plain next-token cross-entropy over the full vocabulary on the labelled tokens.

    ``labels`` is aligned with ``input_ids`` (the answer tokens, -100 elsewhere) and
    shifted here. This computes all [B, S, V] logits, as ordinary SFT does.
    """
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    logits = model(**inputs).logits
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match the sequence {tuple(logits.shape[:2])}")
    target = labels[:, 1:].to(logits.device)
    if not bool((target != IGNORE_INDEX).any()):
        raise ValueError("full_vocab_sft_loss: no labelled token in the batch")
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), target.flatten(), ignore_index=IGNORE_INDEX)


# --------------------------------------------------------------------------- dispatch
@dataclass
class LossOutput:
    loss: torch.Tensor
    label_logits: torch.Tensor | None  # [B, L]; None for the SFT baseline


def compute_loss(kind: LossKind, model: torch.nn.Module, inputs: dict, *, label_ids: torch.Tensor,
                 values: Sequence[float] | torch.Tensor, target: torch.Tensor | None = None,
                 std: torch.Tensor | float | None = None, labels: torch.Tensor | None = None,
                 reduction: Reduction = "mean") -> LossOutput:
    """One training loss for a batch that shares one label set.

    ``mse`` needs ``target`` (mean human labels); ``soft_ce`` needs ``target`` and
    ``std`` (annotator std; 0 where unknown); ``sft`` needs ``labels`` aligned with
    ``input_ids`` (the inputs then include the answer tokens).
    """
    if kind == "sft":
        if labels is None:
            raise ValueError("loss 'sft' needs labels aligned with input_ids")
        return LossOutput(full_vocab_sft_loss(model, inputs, labels), None)
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss {kind!r}; expected one of {LOSS_KINDS}")
    if target is None:
        raise ValueError(f"loss {kind!r} needs target (the mean human label per row)")
    label_logits = answer_label_logits(model, inputs, label_ids)
    target = torch.as_tensor(target, device=label_logits.device)
    if kind == "mse":
        loss = token_focus_mse(label_logits, values, target, reduction=reduction)
    else:
        if std is None:
            raise ValueError("loss 'soft_ce' needs std (the annotators' std per row; 0 where unknown)")
        probs = soft_label_targets(target.double(), torch.as_tensor(std).to(target.device), values)
        loss = soft_label_ce(label_logits, probs, reduction=reduction)
    return LossOutput(loss, label_logits)
