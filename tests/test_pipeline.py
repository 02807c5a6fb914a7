"""End to end on a tiny demo: every stage through the same functions the scripts call."""
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from tokenfocus.config import load_config
from tokenfocus import stages
from tokenfocus.data import DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    cfg_path = d / "tiny.yaml"
    cfg_path.write_text(f"""
name: tiny
output_root: {d / 'output'}
dataset:
  root: {d / 'data'}
  eval_file: eval.json
  noise_ceiling_file: noise_ceiling.json
demo:
  seed: 7
  n_train_prompts: 40
  n_test_prompts: 10
  images_per_prompt: 3
folds:
  n_folds: 5
""")
    return load_config(cfg_path)


def test_stages_end_to_end(tiny_cfg):
    cfg = tiny_cfg
    assert "noise ceiling" in stages.make_demo(cfg)
    assert stages.validate_dataset(cfg)["images_ok"] == 150
    stages.run_eda(cfg)
    assert (cfg.exp_dir / "eda" / "summary.md").is_file()
    assert len(list((cfg.exp_dir / "eda").glob("*.png"))) >= 10
    table = stages.make_fold_file(cfg)
    assert table["eval_images"].sum() == 120
    folds = pd.read_csv(cfg.folds_path)
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    scores = stages.run_inference(cfg).set_index("method")
    assert scores.loc["noise ceiling test", "final"] > scores.loc["prior test", "final"]
    # the prior's dumps cover every fold, its submission validates and scores the same as 06
    assert len(list((cfg.exp_dir / "preds" / "prior").rglob("*.parquet"))) == 20
    with zipfile.ZipFile(stages.final_submission(cfg)) as z:
        assert sorted(z.namelist()) == ["output.json", "readme.txt"]
    text = stages.evaluate_submission(cfg)
    saved = json.loads((cfg.exp_dir / "evaluation.json").read_text())
    assert saved["final"] == pytest.approx(scores.loc["prior test", "final"], abs=1e-4)
    assert "noise ceiling" in text


def test_rerun_skips_finished_work(tiny_cfg, caplog):
    cfg = tiny_cfg
    before = cfg.folds_path.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="tokenfocus"):
        stages.make_fold_file(cfg)
        assert stages.run_eda(cfg) is None
    assert cfg.folds_path.stat().st_mtime_ns == before
    assert "skipping" in caplog.text


def test_ensemble_reruns_only_when_one_of_its_inputs_changes(tiny_cfg, caplog):
    """The done rule: stage 05's marker records the sha256 of every dump, the folds, the records
    and the ensemble settings it was made from."""
    cfg = tiny_cfg
    stages.run_ensemble(cfg)
    marker = cfg.exp_dir / "ensemble" / "done.json"
    made = json.loads(marker.read_text())["made_from"]
    assert any(k.startswith("preds/prior/") for k in made["inputs"]) and made["settings"]["meta_models"]
    with caplog.at_level("INFO", logger="tokenfocus"):
        stages.run_ensemble(cfg)
    assert "ensemble: made from these dumps and settings already, skipping" in caplog.text
    board = cfg.exp_dir / "leaderboard.csv"
    stamp = board.stat().st_mtime_ns
    dump = next((cfg.exp_dir / "preds" / "prior").rglob("oof_fold0.parquet"))
    original = dump.read_bytes()
    df = pd.read_parquet(dump)
    df["pred"] = 1 - df["pred"]
    df.to_parquet(dump)
    caplog.clear()
    with caplog.at_level("INFO", logger="tokenfocus"):
        stages.run_ensemble(cfg)
    assert "skipping" not in caplog.text and board.stat().st_mtime_ns != stamp
    dump.write_bytes(original)


def test_outputs_of_other_labels_are_refused(tiny_cfg, tmp_path):
    """Kept folds (and so adapters and predictions) made from one training file are not joined to
    another: the check names the experiment, the file and what to do."""
    shutil.copytree(tiny_cfg.data_root, tmp_path / "data")
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(f"name: exp\noutput_root: {tmp_path / 'output'}\ndataset:\n  root: {tmp_path / 'data'}\n")
    cfg = load_config(cfg_path)
    stages.make_fold_file(cfg)
    record = json.loads((cfg.exp_dir / "data.json").read_text())
    assert record["sha256"] == hashlib.sha256(cfg.train_path.read_bytes()).hexdigest()
    stages.make_fold_file(cfg)  # same file: the kept folds are used
    records = json.loads(cfg.train_path.read_text())
    records[0]["total_score"] = [1] * len(records[0]["total_score"])
    cfg.train_path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"made from another train_list\.json .*Remove .*exp"):
        stages.make_fold_file(cfg)
    with pytest.raises(DataError, match="made from another"):
        stages.run_ensemble(cfg)
    proc = subprocess.run([sys.executable, str(REPO / "src" / "03_train.py"), "--config", str(cfg_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "made from another" in proc.stderr and "Traceback" not in proc.stderr
    # Deleting the record is the explicit way to keep the outputs: the new file is recorded.
    (cfg.exp_dir / "data.json").unlink()
    stages.make_fold_file(cfg)
    assert json.loads((cfg.exp_dir / "data.json").read_text())["sha256"] != record["sha256"]


def test_stage_script_reports_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfolds:\n  n_fold: 5\n")
    proc = subprocess.run([sys.executable, str(REPO / "src" / "02_make_folds.py"), "--config", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "folds: unknown key(s) 'n_fold'" in proc.stderr and "Traceback" not in proc.stderr
