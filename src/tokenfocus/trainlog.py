"""What a fine-tune records about itself while it trains (stage 03), so that a reader can tell
whether it learns: the loss curve with both learning rates (``train_log.jsonl``), the held-out and
fit-check scores after every epoch (``metrics.jsonl``), and the fit-check sample of training images.
The loss of the best constant answer, the curve's reference line, is ``train.constant_loss``."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from .config import TrainingConfig

log = logging.getLogger("tokenfocus")


def fit_sample(train_q: pd.DataFrame, n_images: int, seed: int) -> pd.DataFrame:
    """The questions of ``n_images`` training images (labelled ones, not pseudo-labelled), drawn
    with ``seed``: what the epoch-end fit check scores beside the held-out fold."""
    labelled = train_q[train_q["fold"] >= 0] if "fold" in train_q else train_q
    images = labelled["img_path"].drop_duplicates()
    keep = images.sample(min(n_images, len(images)), random_state=seed)
    return labelled[labelled["img_path"].isin(set(keep))].reset_index(drop=True)


# The training loss curve, one line per logging step: step, epoch, loss, grad_norm and the
# learning rates of the language model (LoRA) and of the vision tower (the Trainer's own log shows
# only the first parameter group's, which is the vision tower's).
TRAIN_LOG = "train_log.jsonl"
METRICS_LOG = "metrics.jsonl"   # one line per epoch: held-out and fit-check scores (EpochEvalCallback)


def group_rates(optimizer, tcfg: TrainingConfig) -> dict:
    """The current learning rate of stage 03's two parameter groups (``optimizer_groups``)."""
    if optimizer is None:
        return {}
    rates = {}
    for g in optimizer.param_groups:
        key = "vision_lr" if g.get("initial_lr", g["lr"]) == tcfg.vision_lr != tcfg.lr else "lr"
        rates.setdefault(key, g["lr"])
    return rates


def append_log(path: Path, line: dict) -> None:
    """One JSON line onto a per-step log (``TRAIN_LOG``, ``METRICS_LOG``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def log_lines(path: Path) -> list[dict]:
    """The whole JSON lines of a log, none when it is missing (a line torn by a kill mid-write is
    left out)."""
    out = []
    if not Path(path).is_file():
        return out
    for x in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(x))
        except ValueError:
            continue
    return out


def trim_log(path: Path, step: int) -> None:
    """Drop the lines after ``step`` from a per-step log (``train_log.jsonl``, ``metrics.jsonl``):
    what a run wrote after its last checkpoint, which the resumed run writes again."""
    if path.is_file():
        path.write_text("".join(json.dumps(x) + "\n" for x in log_lines(path) if x.get("step", 0) <= step),
                        encoding="utf-8")


def read_train_log(path: Path) -> pd.DataFrame:
    """A published or in-progress ``train_log.jsonl`` as a frame (empty when there is none)."""
    if not Path(path).is_file():
        return pd.DataFrame(columns=["step", "epoch", "loss", "grad_norm", "lr"])
    return pd.DataFrame(log_lines(path))


class EpochEvalCallback:
    """Scores the held-out fold (and the fit-check sample of training images, as ``train_*``)
    after every epoch and appends a line to ``METRICS_LOG``."""

    def __init__(self, evaluate, path: Path):
        self.evaluate, self.path = evaluate, path

    def __call__(self, args, state, control, model=None, **kw):
        if not state.is_world_process_zero:
            return
        metrics = self.evaluate(model)
        line = {"epoch": round(state.epoch or 0, 3), "step": state.global_step, **metrics}
        append_log(self.path, line)
        for label, pre in (("held-out", ""), ("training images", "train_")):
            part = {k[len(pre):]: v for k, v in metrics.items()
                    if isinstance(v, float) and k.startswith(pre) and (pre or not k.startswith("train_"))}
            if part:
                log.info("epoch %.2f %s: %s", line["epoch"], label, ", ".join(f"{k} {v:.4f}" for k, v in part.items()))
