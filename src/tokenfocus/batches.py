"""Batches: the datasets (one question per item, or one image with all its questions), image
loading, and the collator that turns rows of the question table into model inputs and targets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .augment import from_training
from .config import TrainingConfig
from .packed import pack_batch
from .questions import (TASK_ID, TOTAL, LabelSet, label_set_of, question_info, question_text,
                        question_text_with_info)


class QuestionDataset(torch.utils.data.Dataset):
    """Questions with their targets; images are read when the collator needs them."""

    def __init__(self, questions: pd.DataFrame, image_dir: Path):
        self.q = questions.reset_index(drop=True)
        self.image_dir = Path(image_dir)

    def __len__(self) -> int:
        return len(self.q)

    def __getitem__(self, i: int) -> dict:
        return {**self.q.iloc[i].to_dict(), "_row": i}


def load_image(image_dir: Path, img_path: str):
    from PIL import Image

    with Image.open(Path(image_dir) / img_path) as im:
        return im.convert("RGB")


class ImageDataset(torch.utils.data.Dataset):
    """One item per image: all of its questions (packed training), in table order."""

    def __init__(self, questions: pd.DataFrame):
        q = questions.reset_index(drop=True)
        self.groups = [idx.tolist() for _, idx in q.groupby("img_path", sort=False).groups.items()]
        self.q = q

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict:
        rows = [{**self.q.iloc[j].to_dict(), "_row": j} for j in self.groups[i]]
        return {"_image": i, "rows": rows}


AUGMENT_STREAM = 1   # keeps the augmentation's draws apart from the structural dropout's


class TokenFocusCollator:
    """Builds one batch: chat inputs from the adapter, plus task ids and targets.

    Which structural fields a question loses, and how its image is augmented (``augment``, off
    by default), are drawn from (seed, epoch, row), not from a running generator, so a resumed
    run and every process of a distributed one see exactly the questions and images an
    uninterrupted single-process run sees. Evaluation never augments.
    """

    epoch = 0

    def __init__(self, adapter, image_dir: Path, tcfg: TrainingConfig, train: bool = True,
                 question_fn=question_text, label_set: LabelSet | None = None):
        self.adapter, self.image_dir, self.tcfg, self.train = adapter, Path(image_dir), tcfg, train
        self.question_fn = question_fn
        # The answer tokens and level values the questions ask for and the model is read at.
        self.label_set = label_set if label_set is not None else label_set_of(tcfg.total_levels)
        self.augment = from_training(tcfg) if train else None

    def _rng(self, row: dict):
        return np.random.default_rng((self.tcfg.seed, self.epoch, row.get("_row", 0))) if self.train else None

    def question(self, row: dict, drop_rate: float = 0.0, rng=None) -> str:
        """The question of one row as this collator asks it (its question function, structural
        setting and label set)."""
        return self.question_fn(row, self.tcfg.structural, drop_rate, rng, label_set=self.label_set)

    def _image(self, img_path: str, item: int):
        """The image of ``img_path``, augmented by the draws of (seed, epoch, item) in training."""
        image = load_image(self.image_dir, img_path)
        if self.augment is None:
            return image
        return self.augment(image, np.random.default_rng((self.tcfg.seed, self.epoch, item, AUGMENT_STREAM)))

    def __call__(self, rows: list[dict]) -> dict:
        if rows and "rows" in rows[0]:
            return self.packed(rows)
        drop = self.tcfg.structural_drop_rate if self.train else 0.0
        questions = [self.question(r, drop, self._rng(r)) for r in rows]
        images = [self._image(r["img_path"], r.get("_row", 0)) for r in rows]
        # Scoring reads the first answer position, so only training appends the answer.
        answers = [sft_answer(r, self.label_set) for r in rows] if self.train and self.tcfg.loss == "sft" else None
        batch = dict(self.adapter.encode(images, questions, answers=answers))
        batch.update(self._targets(rows))
        return batch

    def packed(self, items: list[dict]) -> dict:
        """A packed batch (``tokenfocus.packed``): one sequence per image. The structural fields a
        question loses, and the image's augmentation, are drawn once per image, from (seed,
        epoch, image), since its questions share the prefix that holds them."""
        drop = self.tcfg.structural_drop_rate if self.train else 0.0
        questions = []
        for item in items:
            rng = np.random.default_rng((self.tcfg.seed, self.epoch, item["_image"])) if self.train else None
            info = question_info(item["rows"][0], self.tcfg.structural, drop, rng)
            questions.append([question_text_with_info(r, info, self.label_set) for r in item["rows"]])
        images = [self._image(item["rows"][0]["img_path"], item["_image"]) for item in items]
        batch = pack_batch(self.adapter, images, questions)
        batch.update(self._targets([r for item in items for r in item["rows"]]))
        return batch

    @staticmethod
    def _targets(rows: list[dict]) -> dict:
        out = {"tf_task": torch.tensor([TASK_ID[r["task"]] for r in rows]),
               "tf_target": torch.tensor([float(r["target"]) for r in rows], dtype=torch.float32),
               "tf_std": torch.tensor([float(r.get("target_std", 0.0) or 0.0) for r in rows], dtype=torch.float32)}
        if any("weight" in r for r in rows):   # pseudo-labelled questions weigh less (tokenfocus.pseudo)
            out["tf_weight"] = torch.tensor([float(r.get("weight", 1.0)) for r in rows], dtype=torch.float32)
        return out


def sft_answer(row: dict, label_set: LabelSet) -> str:
    """The label a plain SFT model is taught: the level nearest the mean, as one label token."""
    if row["task"] == TOTAL:
        gaps = np.abs(np.asarray(label_set.values[TOTAL], float) - float(row["target"]))
        nearest = len(gaps) - 1 - int(np.argmin(gaps[::-1]))   # a tie goes up (2.5 -> 3 of 1-5)
        return label_set.tokens[TOTAL][nearest]
    return "1" if row["target"] >= 0.5 else "0"
