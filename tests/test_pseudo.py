"""Pseudo-labels: a second training round on the test inputs, labelled by another model's test
predictions and never by a test label."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tokenfocus import pseudo, stages
from tokenfocus.config import ConfigError, load_config
from tokenfocus.dumps import dump_path, read_dump
from tokenfocus.errors import InputError
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
    sha = card["made_with"]["pseudo-label source sha256"]
    assert list(sha) == ["models/qwen/mixed/fold0/adapter_model.safetensors"] and len(sha[list(sha)[0]]) == 64
    # A re-run finds everything done and changes nothing; so does one after the source's test
    # dumps were scored again (stage 04 --force), since the source adapter is the same.
    before = (model_dir(cfg, "qwen_pl", "mixed", 0) / "train_done.json").stat().st_mtime_ns
    stages.run_training(cfg, jobs=1)
    from tokenfocus.infer import infer_model
    infer_model(cfg, cfg.model("qwen"), force=True, fold=0)
    stages.run_training(cfg, jobs=1)
    assert (model_dir(cfg, "qwen_pl", "mixed", 0) / "train_done.json").stat().st_mtime_ns == before


def test_dumps_older_than_a_retrained_source_are_scored_again(cfg, trained):
    from tokenfocus.stages.train import _stale_dumps

    assert not _stale_dumps(cfg, "qwen", 0)
    done = model_dir(cfg, "qwen", "mixed", 0) / "train_done.json"
    dump = dump_path(cfg.exp_dir / "preds", "qwen", "total", "test", 0)
    original = done.stat()
    try:
        os.utime(done, (dump.stat().st_atime + 10, dump.stat().st_mtime + 10))   # as if retrained after scoring
        assert _stale_dumps(cfg, "qwen", 0)
    finally:
        os.utime(done, ns=(original.st_atime_ns, original.st_mtime_ns))


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
    """With the true test labels written into the test file itself (and the hidden truth file
    corrupted), the second round's training questions are unchanged: its targets come from the
    source's predictions only."""
    tcfg = cfg.model("qwen_pl").training_config(cfg.training)
    train, folds = stages.load_split(cfg, "train"), stages.load_folds(cfg)

    def questions():
        return (pseudo.pseudo_questions(cfg, tcfg, 0, ("total", "element")),
                fold_questions(cfg, train, folds, 0, ("total", "element"), tcfg)[0])

    before = questions()
    files = {p: p.read_text() for p in (cfg.test_path, cfg.eval_path)}
    try:
        truth = {r["img_path"]: r for r in json.loads(files[cfg.eval_path])}
        test = json.loads(files[cfg.test_path])
        for r in test:
            r["total_score"] = truth[r["img_path"]]["total_score"]
            r["element_score"] = truth[r["img_path"]]["element_score"]
        cfg.test_path.write_text(json.dumps(test))
        assert stages.load_split(cfg, "test", record=False)["total_score"].notna().all()   # labels now readable
        cfg.eval_path.write_text(json.dumps([{**r, "total_score": 6 - float(r["total_score"])}
                                             for r in truth.values()]))
        after = questions()
    finally:
        for p, text in files.items():
            p.write_text(text)
    for b, a in zip(before, after):
        pd.testing.assert_frame_equal(b, a)


def test_threshold_bagging_and_missing_dumps(cfg, trained, tmp_path):
    tcfg = cfg.model("qwen_pl").training_config(cfg.training)
    preds = cfg.exp_dir / "preds"
    # 'all' bags the source's folds: a copy of fold 0's dumps as fold 1 with every value moved.
    moved, written = {}, []
    for task in ("total", "element"):
        d = read_dump(dump_path(preds, "qwen", task, "test", 0))
        moved[task] = d
        shifted = d.copy()
        shifted["pred"] = d["pred"] * 0.5 + (0.5 if task == "element" else 1.5)
        path = dump_path(preds, "qwen", task, "test", 1)
        assert not path.exists()
        written.append(write_parquet(path, shifted.assign(fold=1)))
    try:
        bagged = pseudo.pseudo_questions(cfg, tcfg.__class__(**{**tcfg.__dict__, "pseudo_folds": "all"}),
                                         0, ("element",))
        # A dump with a hole is named, not averaged over fewer folds.
        holed = read_dump(written[1]).iloc[1:]
        write_parquet(written[1], holed)
        with pytest.raises(InputError, match=r"qwen/element/test_fold1\.parquet: covers the wrong questions"):
            pseudo.pseudo_questions(cfg, tcfg.__class__(**{**tcfg.__dict__, "pseudo_folds": "all"}), 0, ("element",))
    finally:
        for path in written:
            path.unlink(missing_ok=True)
    got = bagged.merge(moved["element"], on=["img_path", "element_key"], suffixes=("", "_dump"))
    np.testing.assert_allclose(got["target"], (got["pred"] + got["pred"] * 0.5 + 0.5) / 2, atol=1e-12)
    # A threshold keeps the confident questions only, and says how many.
    conf = pseudo.confidence("element", moved["element"])
    strict = tcfg.__class__(**{**tcfg.__dict__, "pseudo_threshold": float(np.median(conf))})
    kept = pseudo.pseudo_questions(cfg, strict, 0, ("element",))
    assert len(kept) == int((conf >= np.median(conf)).sum()) and 0 < len(kept) < len(conf)
    # A source fold without dumps is named.
    missing = tcfg.__class__(**{**tcfg.__dict__, "pseudo_labels": "qwen_other"})
    with pytest.raises(InputError, match="qwen_other/total/test_fold0.parquet"):
        pseudo._predictions(pseudo.source_dumps(cfg, missing, 0, ("total",)), "total", moved["total"])
    # Non-finite level probabilities in a dump are named with the file and the column.
    bad = moved["total"].copy()
    bad.loc[bad.index[0], "p_3"] = np.nan
    path = tmp_path / "bad_total.parquet"
    write_parquet(path, bad)
    with pytest.raises(InputError, match=r"bad_total\.parquet: non-finite values in column\(s\) \['p_3'\]"):
        pseudo._predictions([path], "total", moved["total"])


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


def test_ablation_table_scores_each_variant_on_test_where_the_truth_is_known(cfg, trained):
    """The ablation rows carry test scores (the demo knows the test truth) beside the OOF ones;
    here the pseudo-label model is the 'pl' variant of qwen."""
    import dataclasses

    from tokenfocus.config.schema import AblationConfig
    from tokenfocus.ensemble import truth_frame
    from tokenfocus.infer import infer_model, score_predictions, zeroshot_model
    from tokenfocus.stages.ablation import ablation_table

    ab = dataclasses.replace(cfg, ablation=AblationConfig(
        model="qwen", folds=[0], variants={"token_focus_mse": {}, "pl": {"pseudo_labels": "qwen", "pseudo_weight": 0.25}}))
    assert [m.name for m in ab.ablation_models()] == ["qwen_pl"]
    infer_model(ab, ab.model("qwen_pl"), fold=0)
    zeroshot_model(ab, ab.model("qwen"))
    table = ablation_table(ab, n_boot=5).set_index("variant")
    assert list(table.index) == ["zero-shot (untuned base)", "token_focus_mse", "pl"]
    assert table.loc["pl", "model"] == "qwen_pl"
    test = read_dump(dump_path(cfg.exp_dir / "preds", "qwen", "total", "test", 0))
    test = pd.concat([test, read_dump(dump_path(cfg.exp_dir / "preds", "qwen", "element", "test", 0))])
    truth = truth_frame(json.loads(cfg.eval_path.read_text()))
    want = score_predictions(test.drop(columns="target").merge(truth, on=["img_path", "task", "element_key"]))
    assert table.loc["token_focus_mse", "test_final"] == pytest.approx(want["final"], abs=1e-12)
    assert table[["test_srcc", "test_plcc", "test_acc", "test_final"]].notna().all().all()


def test_ablation_seeds_average_each_variant_over_its_training_runs(cfg, trained, tmp_path):
    """ablation.seeds: every fine-tuned variant gets one more run per seed (the first run's
    settings reused where they equal the model's own); its row is the mean over the runs, with
    the runs' sd, and the run-to-run noise widens delta_sd beyond the paired bootstrap's."""
    import dataclasses

    from tokenfocus.config.schema import AblationConfig
    from tokenfocus.infer import score_predictions, zeroshot_model
    from tokenfocus.stages.ablation import ablation_table

    ab = dataclasses.replace(cfg, ablation=AblationConfig(
        model="qwen", folds=[0], variants={"token_focus_mse": {}, "soft": {"loss": "soft_ce"}}, seeds=[7]))
    runs = {m.name: m.training_config(ab.training).seed for m in ab.ablation_models()}
    own = ab.model("qwen").training_config(ab.training).seed
    assert runs == {"qwen_token_focus_mse_seed7": 7, "qwen_soft": own, "qwen_soft_seed7": 7}
    assert ab.ablation_sources() == {"token_focus_mse": ["qwen", "qwen_token_focus_mse_seed7"],
                                     "soft": ["qwen_soft", "qwen_soft_seed7"]}
    # Stand-in dumps for the three runs: qwen's fold 0, its totals reversed in the seed-7 runs.
    preds = cfg.exp_dir / "preds"
    for name in runs:
        for src in sorted((preds / "qwen").glob("*/*_fold0.parquet")):
            df = pd.read_parquet(src).assign(model=name)
            if name.endswith("_seed7") and src.parent.name == "total":
                df["pred"] = 6.0 - df["pred"]
            out = preds / name / src.parent.name / src.name
            out.parent.mkdir(parents=True, exist_ok=True)
            write_parquet(out, df)
    if not (preds / "zeroshot_qwen").is_dir():
        zeroshot_model(ab, ab.model("qwen"))
    table = ablation_table(ab, n_boot=20).set_index("variant")
    finals = {m: score_predictions(pd.concat([pd.read_parquet(f) for f in (preds / m).glob("*/oof_fold0.parquet")]))["final"]
              for m in ["qwen", "qwen_token_focus_mse_seed7"]}
    assert finals["qwen"] != pytest.approx(finals["qwen_token_focus_mse_seed7"])
    mse = table.loc["token_focus_mse"]
    assert mse["runs"] == 2 and mse["model"] == "qwen qwen_token_focus_mse_seed7"
    assert mse["final"] == pytest.approx(np.mean(list(finals.values())), abs=1e-12)
    assert mse["run_sd"] == pytest.approx(np.std(list(finals.values()), ddof=1), abs=1e-12)
    soft = table.loc["soft"]
    # The soft runs are copies of the MSE runs: the same Finals, no paired bootstrap difference,
    # so delta_sd is the run-to-run part alone: sqrt(2 * run_sd^2 / 2).
    assert soft["final"] == pytest.approx(mse["final"], abs=1e-12) and soft["delta"] == pytest.approx(0, abs=1e-12)
    assert soft["delta_sd"] == pytest.approx(mse["run_sd"], abs=1e-9)
    zs = table.loc["zero-shot (untuned base)"]
    assert zs["runs"] == 1 and np.isnan(zs["run_sd"])
    assert table["test_final"].notna().all()


def test_ablation_seeds_must_differ_from_each_other_and_the_first_run(tmp_path):
    for seeds in ("[1234]", "[3, 3]"):
        root = tmp_path / seeds.strip("[]").replace(", ", "_")
        root.mkdir()
        with pytest.raises(ConfigError, match=r"ablation\.seeds .*distinct"):
            _config(root, f"ablation:\n  model: qwen\n  seeds: {seeds}\n  variants:\n    mse: {{}}\n")
