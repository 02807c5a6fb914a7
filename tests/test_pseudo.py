"""Pseudo-labels: a second training round on the test inputs, labelled by another model's test
predictions and never by a test label."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tokenfocus import pseudo, stages
from tokenfocus.config import ConfigError, load_config
from tokenfocus.dumps import dump_path, read_dump
from tokenfocus.io import write_parquet
from tokenfocus.questions import question_frame
from tokenfocus.train import fold_questions, model_dir, token_focus_loss

REPO = Path(__file__).resolve().parents[1]

CONFIG = """
name: tiny
output_root: {root}/output
dataset:
  root: {root}/data
  eval_file: eval.json
demo:
  seed: 5
  n_train_prompts: 15
  n_test_prompts: 3
  images_per_prompt: 2
models:
  - name: qwen
    family: qwen2_5_vl
    path: {repo}/input/pretrained/tiny-qwen2.5-vl
    folds: [0, 1]
  - name: qwen_pl
    family: qwen2_5_vl
    path: {repo}/input/pretrained/tiny-qwen2.5-vl
    folds: [0]
    training: {{pseudo_labels: qwen, pseudo_weight: 0.25}}
training:
  lora_r: 4
  lora_alpha: 8
  lora_dropout: 0.0
  lr: 1.0e-3
  warmup_steps: 1
  global_batch: 8
  per_device_batch: 8
  max_steps: 3
  save_steps: 3
  eval_batch: 16
  max_train_questions: 40
"""


def _config(root: Path, extra: str = ""):
    path = root / "tiny.yaml"
    path.write_text(CONFIG.format(root=root, repo=REPO) + extra)
    return load_config(path)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("pseudo")
    cfg = _config(root)
    stages.make_demo(cfg)
    stages.make_fold_file(cfg)
    return cfg


@pytest.fixture(scope="module")
def trained(cfg):
    """Stage 03 on both models: qwen's folds first, then its dumps, then qwen_pl on them."""
    table = stages.run_training(cfg, jobs=1)
    return table


def test_stage_03_trains_the_source_scores_it_and_then_the_pseudo_label_model(cfg, trained):
    assert list(zip(trained["model"], trained["fold"])) == [("qwen", 0), ("qwen", 1), ("qwen_pl", 0)]
    for task in ("total", "element"):   # the source's test dumps were written for fold 0
        assert dump_path(cfg.exp_dir / "preds", "qwen", task, "test", 0).is_file()
    card = json.loads((model_dir(cfg, "qwen_pl", "mixed", 0) / "train_done.json").read_text())
    source = json.loads((model_dir(cfg, "qwen", "mixed", 0) / "train_done.json").read_text())
    test_questions = len(question_frame(stages.load_split(cfg, "test")))
    assert card["train_questions"] == source["train_questions"] + test_questions
    assert card["eval_questions"] == source["eval_questions"]    # the held-out fold is unchanged
    sha = card["made_with"]["pseudo-label dumps sha256"]
    assert sorted(sha) == ["preds/qwen/element/test_fold0.parquet", "preds/qwen/total/test_fold0.parquet"]
    assert all(len(v) == 64 for v in sha.values())
    # A re-run finds everything done and changes nothing.
    before = (model_dir(cfg, "qwen_pl", "mixed", 0) / "train_done.json").stat().st_mtime_ns
    stages.run_training(cfg, jobs=1)
    assert (model_dir(cfg, "qwen_pl", "mixed", 0) / "train_done.json").stat().st_mtime_ns == before


def test_pseudo_targets_are_the_source_predictions_of_the_fold_that_never_saw_it(cfg, trained):
    tcfg = cfg.model("qwen_pl").training_config(cfg.training)
    extra = pseudo.pseudo_questions(cfg, tcfg, 0, ("total", "element"))
    test = question_frame(stages.load_split(cfg, "test"))
    assert len(extra) == len(test) and set(extra["img_path"]) == set(test["img_path"])
    assert (extra["weight"] == 0.25).all()
    for task in ("total", "element"):
        dump = read_dump(dump_path(cfg.exp_dir / "preds", "qwen", task, "test", 0))
        got = extra[extra["task"] == task].merge(dump, on=["img_path", "element_key"], suffixes=("", "_dump"))
        assert len(got) == (test["task"] == task).sum()
        np.testing.assert_allclose(got["target"], got["pred"], rtol=0, atol=1e-12)
    assert extra.loc[extra["task"] == "element", "target_std"].eq(0).all()
    assert extra.loc[extra["task"] == "total", "target_std"].between(0, 2).all()
    # Fold 0's training questions: the other folds' labelled questions, then these.
    train, folds = stages.load_split(cfg, "train"), stages.load_folds(cfg)
    tr, ev = fold_questions(cfg, train, folds, 0, ("total", "element"), tcfg)
    assert not set(ev["img_path"]) & set(test["img_path"])
    assert (tr.loc[tr["weight"] == 1.0, "fold"] > 0).all() and (tr["weight"] == 0.25).sum() == len(test)


def test_pseudo_labels_never_read_a_test_label(cfg, trained):
    """Corrupting the hidden test truth (eval.json) changes nothing the second round trains on."""
    tcfg = cfg.model("qwen_pl").training_config(cfg.training)
    before = pseudo.pseudo_questions(cfg, tcfg, 0, ("total", "element"))
    path = cfg.eval_path
    original = path.read_text()
    try:
        records = json.loads(original)
        for r in records:
            r["total_score"] = 1.0 if (r.get("total_score") or 3) > 3 else 5.0
            r["element_score"] = {k: 1.0 - (v or 0) for k, v in (r.get("element_score") or {}).items()}
        path.write_text(json.dumps(records))
        after = pseudo.pseudo_questions(cfg, tcfg, 0, ("total", "element"))
    finally:
        path.write_text(original)
    pd.testing.assert_frame_equal(before, after)


def test_threshold_bagging_and_missing_dumps(cfg, trained, tmp_path):
    tcfg = cfg.model("qwen_pl").training_config(cfg.training)
    preds = cfg.exp_dir / "preds"
    # 'all' bags the source's folds: a copy of fold 0's dumps as fold 1 with every value moved.
    moved = {}
    for task in ("total", "element"):
        d = read_dump(dump_path(preds, "qwen", task, "test", 0))
        moved[task] = d
        shifted = d.copy()
        shifted["pred"] = d["pred"] * 0.5 + (0.5 if task == "element" else 1.5)
        write_parquet(dump_path(preds, "qwen", task, "test", 1), shifted.assign(fold=1))
    bagged = pseudo.pseudo_questions(cfg, tcfg.__class__(**{**tcfg.__dict__, "pseudo_folds": "all"}),
                                     0, ("element",))
    got = bagged.merge(moved["element"], on=["img_path", "element_key"], suffixes=("", "_dump"))
    np.testing.assert_allclose(got["target"], (got["pred"] + got["pred"] * 0.5 + 0.5) / 2, atol=1e-12)
    # A threshold keeps the confident questions only, and says how many.
    conf = pseudo.confidence("element", moved["element"])
    strict = tcfg.__class__(**{**tcfg.__dict__, "pseudo_threshold": float(np.median(conf))})
    kept = pseudo.pseudo_questions(cfg, strict, 0, ("element",))
    assert len(kept) == int((conf >= np.median(conf)).sum()) and 0 < len(kept) < len(conf)
    # A source fold without dumps is named.
    missing = tcfg.__class__(**{**tcfg.__dict__, "pseudo_labels": "qwen_other"})
    with pytest.raises(Exception, match="qwen_other/total/test_fold0.parquet"):
        pseudo._predictions(pseudo.source_dumps(cfg, missing, 0, ("total",)), "total")


def test_confidence_of_totals_and_elements():
    el = pd.DataFrame({"p_0": [0.5, 0.0, 0.9], "p_1": [0.5, 1.0, 0.1]})
    np.testing.assert_allclose(pseudo.confidence("element", el), [0.0, 1.0, 0.8])
    tot = pd.DataFrame({"p_1": [0.0, 0.5], "p_2": [0.0, 0.0], "p_3": [1.0, 0.0], "p_4": [0.0, 0.0], "p_5": [0.0, 0.5]})
    np.testing.assert_allclose(pseudo.confidence("total", tot), [1.0, 0.0])   # sd 0, and sd 2 (the most)


def test_weighted_loss_counts_each_question_its_weight():
    torch.manual_seed(0)
    logits = torch.randn(4, 7)
    task = torch.tensor([0, 1, 0, 1])
    target = torch.tensor([4.0, 1.0, 2.0, 0.0])
    std = torch.zeros(4)
    cols = {"total": torch.tensor([0, 1, 2, 3, 4]), "element": torch.tensor([5, 6])}
    for kind in ("mse", "soft_ce"):
        plain = token_focus_loss(logits, task, target, std, cols, kind)
        ones = token_focus_loss(logits, task, target, std, cols, kind, weight=torch.ones(4))
        torch.testing.assert_close(plain, ones)
        # Weight 0 on the last two rows leaves the first two's losses over the same batch size.
        half = token_focus_loss(logits, task, target, std, cols, kind, weight=torch.tensor([1.0, 1.0, 0.0, 0.0]))
        first = token_focus_loss(logits[:2], task[:2], target[:2], std[:2], cols, kind)
        torch.testing.assert_close(half, first / 2)


@pytest.mark.parametrize("training, message", [
    ("{pseudo_labels: nobody}", "pseudo_labels: 'nobody' must name another of the models"),
    ("{pseudo_labels: qwen2}", "must name another of the models"),
    ("{pseudo_labels: qwen, loss: sft}", "needs a token-focus loss"),
    ("{pseudo_labels: qwen, pseudo_threshold: 1.0}", r"pseudo_threshold: 1.0 outside \[0, 1\)"),
    ("{pseudo_labels: qwen, pseudo_weight: 0}", r"models\[2\]\.training\.pseudo_weight: 0\.0 must be positive"),
    ("{pseudo_labels: qwen, pseudo_folds: some}", "pseudo_folds: 'some' not one of"),
])
def test_config_errors_name_the_field(tmp_path, training, message):
    extra = f"""  - name: qwen2
    family: qwen2_5_vl
    path: {REPO}/input/pretrained/tiny-qwen2.5-vl
    training: {training}
"""
    text = CONFIG.format(root=tmp_path, repo=REPO).replace("training:\n  lora_r", extra + "training:\n  lora_r")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_unseen_needs_the_source_to_train_the_fold(tmp_path):
    text = CONFIG.format(root=tmp_path, repo=REPO).replace("    folds: [0]\n    training: {pseudo_labels",
                                                           "    folds: [2]\n    training: {pseudo_labels")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"folds \[2\] are not trained by 'qwen'"):
        load_config(path)
