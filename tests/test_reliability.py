"""Bad input, kills and interrupts: clear errors naming file, record and field; nothing stale."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tokenfocus import stages
from tokenfocus.cli import INTERRUPTED, run_stage, stage_parser
from tokenfocus.config import ConfigError, load_config
from tokenfocus.data import DataError, parse_records
from tokenfocus.io import atomic_dir, clean_stale, recover_dir, write_text
from tokenfocus.submission import SubmissionError, load_submission, readme_text


@pytest.fixture(scope="module")
def demo_cfg(tmp_path_factory):
    d = tmp_path_factory.mktemp("reliable")
    path = d / "tiny.yaml"
    path.write_text(f"""
name: tiny
output_root: {d / 'output'}
dataset:
  root: {d / 'data'}
demo:
  seed: 5
  n_train_prompts: 20
  n_test_prompts: 4
  images_per_prompt: 2
""")
    cfg = load_config(path)
    stages.make_demo(cfg)
    return cfg


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------ records

@pytest.mark.parametrize("change, where, what", [
    (lambda r: r.update(total_score=None), "record 1, field 'total_score'", "null in a training file"),
    (lambda r: r["element_score"].update({"circle (object)": None}), "record 1, field 'element_score['circle (object)']'",
     "null in a training file"),
    (lambda r: r.update(element_score={}), "record 1, field 'element_score'", "empty"),
    (lambda r: r["element_score"].update({"circle (object)": [1, 0]}), "record 1, field 'element_score['circle (object)']'",
     "2 vote(s) but 3 annotators"),
    (lambda r: r.update(img_path="../../etc/passwd"), "record 1, field 'img_path'", "leaves the image folder"),
    (lambda r: r.update(img_path="/abs/x.png"), "record 1, field 'img_path'", "leaves the image folder"),
])
def test_bad_training_records_name_record_and_field(raw_train, change, where, what):
    raw_train[1]["element_score"] = {"circle (object)": [1, 1, 1]}
    raw_train[1]["total_score"] = [2, 3, 2]
    change(raw_train[1])
    with pytest.raises(DataError) as e:
        parse_records(raw_train, "train_list.json", labelled=True)
    assert f"train_list.json: {where}" in str(e.value) and what in str(e.value)


def test_unlabelled_test_records_still_pass(raw_test):
    df, report = parse_records(raw_test, "test.json")
    assert report.n_final_phase == 1 and len(df) == 1


def test_empty_record_lists_are_refused():
    with pytest.raises(DataError, match=r"x\.json: the file holds an empty list"):
        parse_records([], "x.json")


def test_rejected_training_file_leaves_nothing_behind(demo_cfg):
    cfg = demo_cfg
    good = cfg.train_path.read_bytes()
    raw = json.loads(good)
    raw[3]["total_score"] = None
    cfg.train_path.write_text(json.dumps(raw))
    try:
        for stage in (stages.validate_dataset, stages.make_fold_file):
            with pytest.raises(DataError, match="record 3, field 'total_score'"):
                stage(cfg)
        assert not (cfg.exp_dir / stages.DATA_RECORD).exists()
    finally:
        cfg.train_path.write_bytes(good)
    stages.validate_dataset(cfg)  # the validator neither records nor compares
    assert not (cfg.exp_dir / stages.DATA_RECORD).exists()
    stages.make_fold_file(cfg)    # the fixed file is accepted, and recorded
    assert (cfg.exp_dir / stages.DATA_RECORD).is_file()


def test_empty_training_file_is_a_clear_error(demo_cfg, tmp_path):
    cfg = demo_cfg
    good = cfg.train_path.read_bytes()
    cfg.train_path.write_text("[]")
    try:
        with pytest.raises(DataError, match="empty list"):
            stages.validate_dataset(cfg)
    finally:
        cfg.train_path.write_bytes(good)


# ------------------------------------------------------------------ changed settings

def test_changed_fold_settings_stop_stage_02(demo_cfg):
    cfg = demo_cfg
    stages.make_fold_file(cfg)
    cfg.folds.n_folds = 3
    try:
        with pytest.raises(ConfigError, match=r"folds\.n_folds: 5 then, 3 now"):
            stages.make_fold_file(cfg)
        stages.make_fold_file(cfg, force=True)   # --force redoes it with the new setting
        assert sorted(stages.load_folds(cfg)["fold"].unique()) == [0, 1, 2]
        stages.make_fold_file(cfg)               # and the record follows
    finally:
        cfg.folds.n_folds = 5
        stages.make_fold_file(cfg, force=True)


# ------------------------------------------------------------------ submissions

def _zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


README = readme_text(0.5, cpu=0, extra_data=0, llm=1, description="test")


@pytest.mark.parametrize("files, msg", [
    ({"output.json": "[]", "readme.txt": README, "notes.txt": "x"}, "unexpected notes.txt"),
    ({"output.json": "[]"}, "missing readme.txt"),
    ({"output.json": "[]", "readme.txt": "hello\n"}, "not in the challenge's form"),
    ({"output.json": "[]", "readme.txt": README.replace("LLM[1] / Non-LLM[0] : 1", "LLM[1] / Non-LLM[0] : yes")},
     "needs 1 or 0"),
    ({"output.json": "[]", "readme.txt": README.replace(": test", ": ")}, "is empty"),
])
def test_scored_zip_must_have_the_challenge_layout(tmp_path, files, msg):
    path = _zip(tmp_path / "submission.zip", files)
    with pytest.raises(SubmissionError, match=msg) as e:
        load_submission(path)
    assert str(path) in str(e.value)


def test_well_formed_zip_loads(tmp_path):
    assert load_submission(_zip(tmp_path / "s.zip", {"output.json": "[]", "readme.txt": README})) == []


# ------------------------------------------------------------------ kills

def test_temporaries_of_killed_writers_are_removed(tmp_path):
    target = tmp_path / "folds.csv"
    dead = tmp_path / f".folds.csv.{_dead_pid()}-abc123.tmp"
    alive = tmp_path / f".folds.csv.{subprocess.os.getppid()}-def456.tmp"
    other = tmp_path / f".other.csv.{_dead_pid()}-x.tmp"
    for p in (dead, alive, other):
        p.write_text("partial")
    write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert not dead.exists() and alive.exists() and other.exists()   # only its own, only dead ones
    assert clean_stale(tmp_path / "other.csv") == 1 and not other.exists()


def test_directory_publish_keeps_old_or_new_complete(tmp_path):
    out = tmp_path / "fold0"
    out.mkdir()
    (out / "adapter.bin").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "adapter.bin").write_text("half")
            raise RuntimeError("died while saving")
    assert (out / "adapter.bin").read_text() == "old" and len(list(tmp_path.iterdir())) == 1
    with atomic_dir(out) as tmp:
        (tmp / "adapter.bin").write_text("new")
    assert (out / "adapter.bin").read_text() == "new" and len(list(tmp_path.iterdir())) == 1
    # Killed between the two renames: the old directory is aside, the target missing.
    aside = tmp_path / f".fold0.{_dead_pid()}-aside.tmp"
    out.rename(aside)
    assert recover_dir(out) and (out / "adapter.bin").read_text() == "new" and not aside.exists()


# ------------------------------------------------------------------ interrupts and CLIs

def test_ctrl_c_prints_one_line_and_exits_130(capsys):
    def stage(cfg, force=False):
        raise KeyboardInterrupt

    args = stage_parser("x").parse_args([])
    assert run_stage(stage, args) == INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted; re-run" in err and "Traceback" not in err


def test_score_cli_names_a_malformed_pairs_file(tmp_path, capsys):
    from tokenfocus.score import main

    bad = tmp_path / "pairs.json"
    bad.write_text("[{not json")
    assert main(["--model", "qwen2_5_vl", "--pairs", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "invalid JSON" in err


def test_eda_reports_the_plots_it_wrote(demo_cfg):
    msg = stages.run_eda(demo_cfg, force=True)
    n = len(list((demo_cfg.exp_dir / "eda").glob("*.png")))
    assert n > 0 and msg.startswith(f"EDA: {n} plots")


def test_bad_input_is_one_line_but_a_bug_keeps_its_traceback(capsys):
    from tokenfocus.errors import InputError

    def bad_input(cfg, force=False):
        raise InputError("x.json: record 3, field 'total_score': null")

    def bug(cfg, force=False):
        raise ValueError("a real bug")

    args = stage_parser("x").parse_args([])
    assert run_stage(bad_input, args) == 2
    assert capsys.readouterr().err.strip() == "error: x.json: record 3, field 'total_score': null"
    with pytest.raises(ValueError, match="a real bug"):
        run_stage(bug, args)
    for cls in (ConfigError, DataError, SubmissionError):
        assert issubclass(cls, InputError)
