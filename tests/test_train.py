"""Training on the tiny bases: resume after a crash, publishing, and a two-process run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from tokenfocus import stages
from tokenfocus.prompts import question_templates
from tokenfocus.config import ConfigError, load_config
from tokenfocus.train import fold_questions, is_trained, model_dir, train_fold
from tokenfocus.trainlog import TRAIN_LOG, read_train_log

REPO = Path(__file__).resolve().parents[1]

CONFIG = """
name: tiny
output_root: {root}/output
dataset:
  root: {root}/data
demo:
  seed: 3
  n_train_prompts: 20
  n_test_prompts: 4
  images_per_prompt: 2
models:
  - name: qwen
    family: qwen2_5_vl
    path: {repo}/input/pretrained/tiny-qwen2.5-vl
  - name: qwen_nodrop        # deterministic questions: every process draws its own random drops
    family: qwen2_5_vl
    path: {repo}/input/pretrained/tiny-qwen2.5-vl
    training: {{structural_drop_rate: 0.0}}
  - name: qwen_unpacked      # one forward per question (training.packing: false)
    family: qwen2_5_vl
    path: {repo}/input/pretrained/tiny-qwen2.5-vl
    training: {{packing: false}}
  - name: qwen_qlora         # 4-bit base (bitsandbytes; its CPU backend here)
    family: qwen2_5_vl
    path: {repo}/input/pretrained/tiny-qwen2.5-vl
    training: {{qlora: true}}
training:
  lora_r: 4
  lora_alpha: 8
  lora_dropout: 0.0
  structural_drop_rate: 0.5
  lr: 1.0e-3
  vision_lr: 1.0e-4
  warmup_steps: 2
  global_batch: 8
  per_device_batch: 4
  max_steps: 6
  save_steps: 2
  eval_batch: 16
  max_train_questions: 48
"""


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    path = root / "tiny.yaml"
    path.write_text(CONFIG.format(root=root, repo=REPO))
    cfg = load_config(path)
    stages.make_demo(cfg)
    stages.make_fold_file(cfg)
    return cfg


def _questions(cfg):
    train, folds = stages.load_split(cfg, "train"), stages.load_folds(cfg)
    mcfg = cfg.model("qwen")
    tr, ev = fold_questions(cfg, train, folds, 0, ("total", "element"), mcfg.training_config(cfg.training))
    return mcfg, tr, ev.head(20)


def _weights(path):
    return load_file(str(path / "adapter_model.safetensors"))


class Crash(TrainerCallback):
    """Dies right after the step-4 checkpoint, as a killed job would."""

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 5:
            raise KeyboardInterrupt("simulated kill")


def test_resume_after_crash_matches_uninterrupted(cfg, tmp_path):
    mcfg, tr, ev = _questions(cfg)
    out = train_fold(cfg, mcfg, "mixed", 0, tr, ev)
    card = json.loads((out / "train_done.json").read_text())
    assert card["global_step"] == 6
    reference = _weights(out)
    assert any("lora_" in k for k in reference) and any("visual" in k for k in reference)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    # Held-out scores, and the same scores on a sample of the images it trained on (fit check).
    assert {"srcc", "plcc", "acc", "final", "train_srcc", "train_acc", "train_final"} <= set(json.loads(lines[-1]))
    assert json.loads(lines[-1])["train_n_images"] > 0
    curve = read_train_log(out / TRAIN_LOG)
    assert curve["step"].tolist() == [2, 4, 6]
    # The language model's rate (1e-3 peak) and the vision tower's (1e-4 peak), told apart.
    assert curve["lr"].max() == pytest.approx(1e-3) and curve["vision_lr"].max() == pytest.approx(1e-4)
    np.testing.assert_allclose(curve["lr"], 10 * curve["vision_lr"], rtol=1e-6)
    assert card["constant_loss"] > 0

    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg, mcfg, "mixed", 0, tr, ev, force=True, callbacks=(Crash(),))
    assert not is_trained(out) and not out.exists()   # nothing half-published
    work = out.parent / ".work_fold0"
    assert (work / "checkpoint-4").is_dir()
    # A step the killed run logged after its last checkpoint is logged again on resume, once.
    with open(work / TRAIN_LOG, "a") as f:
        f.write(json.dumps({"step": 6, "epoch": 0.0, "loss": 999.0}) + "\n" + '{"step": 7, "los')   # + a torn line
    with open(work / "metrics.jsonl", "a") as f:    # an epoch-end score written after the last checkpoint
        f.write(json.dumps({"epoch": 1.0, "step": 6, "final": -1.0}) + "\n")
    resumed_dir = train_fold(cfg, mcfg, "mixed", 0, tr, ev)
    resumed = _weights(resumed_dir)
    assert resumed.keys() == reference.keys()
    for k in reference:
        torch.testing.assert_close(resumed[k], reference[k], atol=1e-5, rtol=1e-4)
    again = read_train_log(resumed_dir / TRAIN_LOG)
    assert again["step"].tolist() == [2, 4, 6]
    scores = [json.loads(x) for x in (resumed_dir / "metrics.jsonl").read_text().splitlines()]
    reference_scores = [json.loads(x) for x in lines]
    assert [m["step"] for m in scores] == [m["step"] for m in reference_scores]
    assert -1.0 not in [m["final"] for m in scores]
    np.testing.assert_allclose(again["loss"], curve["loss"], rtol=1e-4)


def test_a_separate_question_group_trains_and_scores_its_own_kind(cfg):
    """task_mode: separate: the total-only model's epoch-end scores are the total's (SRCC,
    PLCC), with no Final; its constant answer is the mean total."""
    train, folds = stages.load_split(cfg, "train"), stages.load_folds(cfg)
    base = cfg.model("qwen")
    mcfg = base.__class__(**{**base.__dict__, "name": "qwen_separate",
                             "training": {**base.training, "task_mode": "separate"}})
    tr, ev = fold_questions(cfg, train, folds, 0, ("total",), mcfg.training_config(cfg.training))
    out = train_fold(cfg, mcfg, "total", 0, tr, ev)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"srcc", "plcc", "train_srcc"} <= set(last) and not {"acc", "final", "train_acc"} & set(last)
    card = json.loads((out / "train_done.json").read_text())
    expect = float(((tr["target"] - tr["target"].mean()) ** 2).mean()) / 16
    assert card["constant_loss"] == pytest.approx(expect, rel=1e-6)


def test_constant_loss_is_the_best_answer_blind_to_the_inputs():
    """The flat reference of the training log: each task's mean (mse) or mean label distribution
    (soft_ce) through the training loss itself; any other constant answer does no better."""
    import pandas as pd
    from tokenfocus.questions import label_set_of
    from tokenfocus.train import TASK_RANGE, constant_loss, token_focus_loss
    from tokenfocus.questions import TASK_ID

    rng = np.random.default_rng(0)
    n_tot, n_el = 30, 70
    q = pd.DataFrame({"task": ["total"] * n_tot + ["element"] * n_el,
                      "target": np.r_[rng.uniform(1, 5, n_tot), rng.integers(0, 2, n_el) * 1.0],
                      "target_std": np.r_[rng.uniform(0, 1, n_tot), np.zeros(n_el)]})
    labels = label_set_of(5)
    cols = {"total": torch.arange(5), "element": torch.arange(5, 7)}
    mse = constant_loss(q, "mse", cols, labels.values)
    expect = sum(((g.target - g.target.mean()) ** 2).sum() / TASK_RANGE[t] ** 2 for t, g in q.groupby("task")) / len(q)
    assert mse == pytest.approx(expect, rel=1e-6)   # the loss works in float32
    task = torch.tensor([TASK_ID[t] for t in q["task"]])
    target = torch.tensor(q["target"].to_numpy())
    std = torch.tensor(q["target_std"].to_numpy())
    for kind in ("mse", "soft_ce"):
        best = constant_loss(q, kind, cols, labels.values)
        for _ in range(20):   # other constant answers, one per task
            logits = torch.tensor(rng.normal(0, 2, 7))[None].expand(len(q), -1)
            assert best <= float(token_focus_loss(logits, task, target, std, cols, kind, labels.values)) + 1e-6
    assert constant_loss(q, "sft", cols, labels.values) is None



def test_resume_with_augmentation_ends_at_the_same_weights(cfg, tmp_path):
    """training.augment: the images a step sees are drawn from (seed, epoch, image), so a run
    killed after a checkpoint and resumed ends where an uninterrupted one does; and the
    augmentation is really applied (other weights than without it)."""
    mcfg, tr, ev = _questions(cfg)
    plain = _weights(_trained_fold0(cfg)[3])
    aug = mcfg.__class__(**{**mcfg.__dict__, "name": "qwen_aug", "training": {**mcfg.training, "augment": True}})
    out = train_fold(cfg, aug, "mixed", 0, tr, ev)
    reference = _weights(out)
    assert any(not torch.allclose(reference[k], plain[k], atol=1e-6) for k in reference)
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg, aug, "mixed", 0, tr, ev, force=True, callbacks=(Crash(),))
    resumed = _weights(train_fold(cfg, aug, "mixed", 0, tr, ev))
    for k in reference:
        torch.testing.assert_close(resumed[k], reference[k], atol=1e-5, rtol=1e-4)


def test_scoring_refuses_an_adapter_trained_on_other_questions(cfg, tmp_path):
    """Stage 04 and score.py load fold adapters through load_trained: one whose record names
    another wording is refused before anything is loaded, naming the adapter and the question."""
    from tokenfocus.models import check_adapter_questions, load_trained
    from tokenfocus.prompts import FIRST_RECORDED_TEMPLATES

    mcfg = cfg.model("qwen")
    now = question_templates()
    adir = tmp_path / "fold0"
    adir.mkdir()
    other = {**now, "element": now["element"].replace("Answer 1 if present", "Say 1 if present")}
    (adir / "train_done.json").write_text(json.dumps({"made_with": {"question templates": other}}))
    with pytest.raises(ConfigError, match=r"fold0: trained on other element question wording"):
        load_trained(cfg, mcfg, adir)
    (adir / "train_done.json").write_text(json.dumps({"made_with": {"question templates": now}}))
    check_adapter_questions(cfg, mcfg, adir)
    # An adapter recorded before the templates were: trained on the first recorded wording.
    (adir / "train_done.json").write_text(json.dumps({"made_with": {"training.lr": 1e-3}}))
    if FIRST_RECORDED_TEMPLATES == now:
        check_adapter_questions(cfg, mcfg, adir)
    else:
        with pytest.raises(ConfigError, match="question wording"):
            check_adapter_questions(cfg, mcfg, adir)


def test_fifteen_total_levels_train_and_score_through_the_same_path(cfg, tmp_path):
    """training.total_levels: 15 (A..O mapped onto 1..5): the same packed training and scoring
    code, one p_<level> column per level in the dumps, the expected value in 1..5."""
    from tokenfocus.batches import TokenFocusCollator
    from tokenfocus.dumps import dump_path, read_dump
    from tokenfocus.infer import predict_questions_fast, write_fold_dumps
    from tokenfocus.models import load_trained
    from tokenfocus.questions import label_set_of

    mcfg, tr, ev = _questions(cfg)
    fine = mcfg.__class__(**{**mcfg.__dict__, "name": "qwen_l15", "training": {**mcfg.training, "total_levels": 15}})
    out = train_fold(cfg, fine, "mixed", 0, tr, ev)
    card = json.loads((out / "train_done.json").read_text())
    assert card["training"]["total_levels"] == 15
    assert "Rate from A (not at all) to O (perfectly)" in card["made_with"]["question templates"]["total"]
    tcfg = fine.training_config(cfg.training)
    adapter, model = load_trained(cfg, fine, out)
    collator = TokenFocusCollator(adapter, cfg.image_dir, tcfg, train=False)
    assert "Rate from A (not at all) to O (perfectly)" in collator.question(ev[ev["task"] == "total"].iloc[0].to_dict())
    pred = predict_questions_fast(adapter, model, ev, cfg.image_dir, 8, collator, progress=False)
    names = [f"p_{n}" for n in label_set_of(15).names("total")]
    assert len(names) == 15 and names[0] == "p_1" and names[-1] == "p_5"
    tot = pred[pred["task"] == "total"]
    np.testing.assert_allclose(tot[names].sum(axis=1), 1.0, atol=1e-6)   # a float32 softmax
    assert tot["pred"].between(1, 5).all() and not tot[names].isna().any().any()
    write_fold_dumps(tmp_path, "qwen_l15", 0, {"oof": pred}, {"oof": ev}, "ablation")
    dump = read_dump(dump_path(tmp_path, "qwen_l15", "total", "oof", 0))
    assert [c for c in dump if c.startswith("p_")] == names

def test_budget_takes_whole_images_and_packing_can_be_switched_off(cfg):
    mcfg, tr, ev = _questions(cfg)
    train, folds = stages.load_split(cfg, "train"), stages.load_folds(cfg)
    everything, _ = fold_questions(cfg, train, folds, 0, ("total", "element"),
                                   mcfg.training_config(cfg.training).__class__(**{
                                       **mcfg.training_config(cfg.training).__dict__, "max_train_questions": None}))
    assert len(tr) <= 48 and set(tr["img_path"]) < set(everything["img_path"])
    per_image = everything.groupby("img_path").size()
    kept = tr.groupby("img_path").size()
    assert (kept == per_image[kept.index]).all()   # no image split
    unpacked = cfg.model("qwen_unpacked")
    assert not unpacked.training_config(cfg.training).packing and mcfg.training_config(cfg.training).packing
    out = train_fold(cfg, unpacked, "mixed", 0, tr, ev)
    assert json.loads((out / "train_done.json").read_text())["global_step"] == 6


def _trained_fold0(cfg):
    """(model config, train and held-out questions, adapter dir, its train_done.json mtime) of
    qwen fold 0, trained here unless an earlier test did."""
    mcfg, tr, ev = _questions(cfg)
    out = model_dir(cfg, "qwen", "mixed", 0)
    if not is_trained(out):
        train_fold(cfg, mcfg, "mixed", 0, tr, ev)
    return mcfg, tr, ev, out, (out / "train_done.json").stat().st_mtime_ns


def test_finished_fold_is_skipped(cfg):
    mcfg, tr, ev, out, before = _trained_fold0(cfg)
    train_fold(cfg, mcfg, "mixed", 0, tr, ev)
    assert (out / "train_done.json").stat().st_mtime_ns == before


def test_changed_training_setting_stops_instead_of_reusing_the_adapter(cfg):
    mcfg, tr, ev, out, before = _trained_fold0(cfg)
    changed = mcfg.__class__(**{**mcfg.__dict__, "training": {"lr": 5e-4}})
    with pytest.raises(ConfigError, match=r"training\.lr: 0\.001 then, 0\.0005 now"):
        train_fold(cfg, changed, "mixed", 0, tr, ev)
    assert (out / "train_done.json").stat().st_mtime_ns == before
    # Settings that do not change the result (the scoring batch) keep the adapter.
    train_fold(cfg, mcfg.__class__(**{**mcfg.__dict__, "training": {"eval_batch": 4}}), "mixed", 0, tr, ev)
    assert (out / "train_done.json").stat().st_mtime_ns == before
    # Nor does the size of the epoch-end fit check.
    train_fold(cfg, mcfg.__class__(**{**mcfg.__dict__, "training": {"fit_check_images": 0}}), "mixed", 0, tr, ev)
    assert (out / "train_done.json").stat().st_mtime_ns == before


def test_adapter_recorded_before_an_option_existed_is_kept_while_the_option_is_off(cfg):
    """An adapter whose record lacks a later training option (here pseudo_weight, augment_shift) is
    reused while that option is at its default, and stops the run once it is not (total_weight
    also missing: kept)."""
    mcfg, tr, ev, out, before = _trained_fold0(cfg)
    card_path = out / "train_done.json"
    original = card_path.read_text()
    try:
        card = json.loads(original)
        for key in ("training.pseudo_weight", "training.augment_shift", "training.total_weight"):
            del card["made_with"][key]
        card_path.write_text(json.dumps(card))
        train_fold(cfg, mcfg, "mixed", 0, tr, ev)                       # kept: both at their defaults
        assert json.loads(card_path.read_text()) == card
        shifted = mcfg.__class__(**{**mcfg.__dict__, "training": {**mcfg.training, "augment_shift": 0.1}})
        with pytest.raises(ConfigError, match=r"training\.augment_shift: None then, 0\.1 now"):
            train_fold(cfg, shifted, "mixed", 0, tr, ev)
    finally:
        card_path.write_text(original)


def test_adapter_trained_on_another_question_wording_is_not_reused(cfg):
    """The scoring questions' templates are recorded with the adapter: one recorded with other
    words stops the run; one recorded before the templates were (same wording) is kept."""
    mcfg, tr, ev, out, before = _trained_fold0(cfg)
    card_path = out / "train_done.json"
    original = card_path.read_text()
    try:
        card = json.loads(original)
        assert card["made_with"]["question templates"] == question_templates()
        del card["made_with"]["question templates"]
        card_path.write_text(json.dumps(card))
        train_fold(cfg, mcfg, "mixed", 0, tr, ev)                       # kept: the wording is unchanged
        assert json.loads(card_path.read_text()) == card
        card["made_with"]["question templates"] = {**question_templates(), "total": "Rate it."}
        card_path.write_text(json.dumps(card))
        with pytest.raises(ConfigError, match=r"question templates: .*'Rate it\.'.* then"):
            train_fold(cfg, mcfg, "mixed", 0, tr, ev)
    finally:
        card_path.write_text(original)


def test_qlora_path_trains_and_scores_on_a_4bit_base(cfg):
    """training.qlora: the base is loaded in 4-bit NF4 (bitsandbytes), LoRA trains on top, and
    the fold scores with its LoRA kept unmerged (the same code path as a GPU run)."""
    from tokenfocus.infer import predict_questions_fast
    from tokenfocus.models import load_model_adapter, load_trained
    from tokenfocus.train import TokenFocusCollator

    pytest.importorskip("bitsandbytes")
    _, tr, ev = _questions(cfg)
    mcfg = cfg.model("qwen_qlora")
    out = train_fold(cfg, mcfg, "mixed", 0, tr, ev)
    card = json.loads((out / "train_done.json").read_text())
    assert card["global_step"] == 6 and card["training"]["qlora"] is True
    assert any("lora_" in k for k in _weights(out))
    base = load_model_adapter(cfg, mcfg)
    assert getattr(base.model, "is_quantized", False)
    adapter, model = load_trained(cfg, mcfg, out, base)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    tcfg = mcfg.training_config(cfg.training)
    preds = predict_questions_fast(adapter, model, ev, cfg.image_dir, 8,
                                   TokenFocusCollator(adapter, cfg.image_dir, tcfg, train=False), progress=False)
    assert len(preds) == len(ev) and preds["pred"].notna().all()


# Two CPU processes over gloo. accelerate launch runs multi-CPU jobs through mpirun only (without a
# hostfile it starts one process); on GPUs it starts torchrun, which is what runs here.
TWO_CPU_PROCESSES = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.mark.skipif(os.name != "posix", reason="gloo processes")
def test_two_processes_match_one(cfg, tmp_path):
    """Two CPU processes (gloo, data parallel) train one fold: the global batch keeps its size
    (half the accumulation per process; each process takes every other micro-batch of the same
    order), so the run takes the same optimizer steps and ends at the same weights."""
    mcfg = cfg.model("qwen_nodrop")
    single = train_fold(cfg, mcfg, "mixed", 1, *_fold1(cfg))
    single_card = json.loads((single / "train_done.json").read_text())
    before = _weights(single)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [*TWO_CPU_PROCESSES,
           str(REPO / "src" / "03_train.py"), "--config", cfg.source, "--model", "qwen_nodrop", "--fold", "1",
           "--force"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = model_dir(cfg, "qwen_nodrop", "mixed", 1)
    card = json.loads((out / "train_done.json").read_text())
    assert (single_card["processes"], card["processes"]) == (1, 2)
    assert card["global_step"] == single_card["global_step"] == 6
    double = _weights(out)
    assert double.keys() == before.keys()
    for k in before:
        torch.testing.assert_close(double[k], before[k], atol=1e-4, rtol=1e-3)


def _fold1(cfg):
    train, folds = stages.load_split(cfg, "train"), stages.load_folds(cfg)
    mcfg = cfg.model("qwen_nodrop")
    return fold_questions(cfg, train, folds, 1, ("total", "element"), mcfg.training_config(cfg.training))


def test_merged_adapter_scores_like_unmerged(cfg):
    """Inference folds the LoRA into the base: same label logits as the PEFT-wrapped model."""
    from tokenfocus.infer import label_logit_table
    from tokenfocus.loss import answer_label_logits
    from tokenfocus.models import load_trained
    from tokenfocus.train import TokenFocusCollator

    mcfg, tr, ev = _questions(cfg)
    out = model_dir(cfg, "qwen", "mixed", 0)
    if not is_trained(out):
        train_fold(cfg, mcfg, "mixed", 0, tr, ev)
    tcfg = mcfg.training_config(cfg.training)
    logits = {}
    for merge in (False, True):
        adapter, model = load_trained(cfg, mcfg, out, merge=merge)
        assert (type(model).__name__.startswith("PeftModel")) != merge
        batch = TokenFocusCollator(adapter, cfg.image_dir, tcfg, train=False)(ev.head(8).to_dict("records"))
        ids, _ = label_logit_table(adapter)
        inputs = {k: v for k, v in batch.items() if not k.startswith("tf_")}
        with torch.no_grad():
            logits[merge] = answer_label_logits(model, inputs, ids)
    torch.testing.assert_close(logits[True], logits[False], atol=1e-4, rtol=1e-4)
    # The trained weights change the answers: the comparison is not between two bare bases.
    from tokenfocus.models import load_model_adapter

    bare = load_model_adapter(cfg, mcfg)
    with torch.no_grad():
        untuned = answer_label_logits(bare.model, inputs, ids)
    assert (untuned - logits[True]).abs().max() > 1e-3


def test_folds_side_by_side_match_one_by_one(cfg):
    """Stage 03 with jobs=2 trains two folds in two worker processes: the same adapters as
    training each fold here, and the same per-fold table."""
    from tokenfocus.stages import run_training

    if torch.cuda.is_available():
        pytest.skip("with a GPU folds train one after another")
    train, folds = stages.load_split(cfg, "train"), stages.load_folds(cfg)
    mcfg = cfg.model("qwen_nodrop")
    here = {}
    for k in (2, 3):
        tr, ev = fold_questions(cfg, train, folds, k, ("total", "element"), mcfg.training_config(cfg.training))
        here[k] = _weights(train_fold(cfg, mcfg, "mixed", k, tr, ev, force=True))
    for k in (2, 3):
        (model_dir(cfg, "qwen_nodrop", "mixed", k) / "train_done.json").unlink()
    table = run_training(cfg, model="qwen_nodrop", jobs=2)
    assert sorted(table["fold"]) == [0, 1, 2, 3, 4] and table["final"].notna().all()
    for k in (2, 3):
        side = _weights(model_dir(cfg, "qwen_nodrop", "mixed", k))
        assert json.loads((model_dir(cfg, "qwen_nodrop", "mixed", k) / "train_done.json").read_text())["fold"] == k
        for name in here[k]:
            torch.testing.assert_close(side[name], here[k][name], atol=1e-4, rtol=1e-3)


@pytest.mark.skipif(os.name != "posix", reason="gloo processes")
def test_inference_shared_over_two_processes_matches_one(cfg, tmp_path):
    """accelerate launch src/04_infer.py with 2 CPU processes: the (model, fold) units are split
    between them and the dumps equal those of one process."""
    import pandas as pd

    path = tmp_path / "infer2.yaml"
    path.write_text(f"""
name: infer2
output_root: {tmp_path / 'output'}
dataset:
  root: {cfg.data_root}
models:
  - name: qwen
    family: qwen2_5_vl
    path: {REPO}/input/pretrained/tiny-qwen2.5-vl
    folds: [0, 1]
zeroshot: false
training: {{lora_r: 4, lora_alpha: 8, structural_drop_rate: 0.0, warmup_steps: 1, global_batch: 8,
           per_device_batch: 4, max_steps: 2, save_steps: 2, eval_batch: 16, max_train_questions: 16}}
""")
    two = load_config(path)
    stages.make_fold_file(two)
    from tokenfocus.stages import run_training

    run_training(two)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [*TWO_CPU_PROCESSES,
           str(REPO / "src" / "04_infer.py"), "--config", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "process 0 of 2 runs 1 of 2 units" in proc.stderr and "process 1 of 2 runs 1 of 2 units" in proc.stderr, proc.stderr[-6000:]
    preds = two.exp_dir / "preds" / "qwen"
    shared = {p.relative_to(preds): pd.read_parquet(p) for p in sorted(preds.rglob("*.parquet"))}
    assert len(shared) == 8 and (two.exp_dir / "oof_scores.csv").is_file()
    import shutil

    shutil.rmtree(preds)
    stages.run_inference(two)
    for rel, df in shared.items():
        pd.testing.assert_frame_equal(pd.read_parquet(preds / rel), df, atol=1e-5)


def test_total_weight_counts_each_total_question_that_many_times():
    from tokenfocus.train import token_focus_loss

    torch.manual_seed(0)
    logits = torch.randn(5, 7)
    task = torch.tensor([0, 1, 1, 0, 1])
    target = torch.tensor([4.0, 1.0, 0.0, 2.0, 1.0])
    std = torch.zeros(5)
    cols = {"total": torch.arange(5), "element": torch.tensor([5, 6])}
    for kind in ("mse", "soft_ce"):
        plain = token_focus_loss(logits, task, target, std, cols, kind)
        heavy = token_focus_loss(logits, task, target, std, cols, kind, total_weight=3.0)
        totals = token_focus_loss(logits, task, target, std, cols, kind, weight=(task == 0).float())
        torch.testing.assert_close(heavy, plain + 2 * totals)


def test_fit_sample_takes_whole_labelled_images_only():
    import pandas as pd
    from tokenfocus.trainlog import fit_sample

    q = pd.DataFrame({"img_path": ["a", "a", "b", "c", "c", "t", "t"], "fold": [1, 1, 2, 3, 3, -1, -1],
                      "task": ["total", "element"] * 3 + ["total"]})
    for n in (1, 2, 3, 10):
        fit = fit_sample(q, n, seed=0)
        assert "t" not in set(fit["img_path"]) and fit["img_path"].nunique() == min(n, 3)
        assert all((fit["img_path"] == p).sum() == (q["img_path"] == p).sum() for p in fit["img_path"])
    assert fit_sample(q, 0, seed=0).empty


@pytest.mark.parametrize("override, message", [
    ("training.fit_check_images=-1", r"training\.fit_check_images: -1 must be 0"),
    ("training.total_weight=0", r"training\.total_weight: 0(\.0)? must be positive"),
    ("training.loss=sft", None),
])
def test_total_weight_config_is_checked(override, message):
    overrides = [override] + (["training.total_weight=2"] if message is None else [])
    with pytest.raises(ConfigError, match=message or "1 with loss 'sft'"):
        load_config(REPO / "configs" / "demo.yaml", overrides=overrides)
