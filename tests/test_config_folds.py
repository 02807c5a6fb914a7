import numpy as np
import pandas as pd
import pytest

from tokenfocus.config import ConfigError, load_config
from tokenfocus.folds import check_folds, fold_table, make_folds


def test_demo_config_loads():
    cfg = load_config()
    assert cfg.name == "demo" and cfg.folds.n_folds == 5 and cfg.demo is not None
    assert cfg.exp_dir.name == "demo"


@pytest.mark.parametrize("text, msg", [
    ("name: x\nbogus: 1\n", "unknown key(s) 'bogus'"),
    ("name: x\nfolds:\n  n_folds: five\n", "folds.n_folds: expected an integer"),
    ("name: x\ndataset:\n  rot: a\n", "dataset: unknown key(s) 'rot'"),
    ("name: [1\n", "invalid YAML"),
])
def test_config_errors(tmp_path, text, msg):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert msg in str(e.value) and str(p) in str(e.value)


def _records(n_prompts=40, per_prompt=4, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        for i in range(per_prompt):
            rows.append({"img_path": f"G{i}/{p:05d}.png", "prompt_id": f"{p:05d}", "prompt": f"prompt {p}",
                         "total_score": float(rng.integers(1, 6)), "element_keys": ["a (object)"] * (p % 3 + 1)})
    return pd.DataFrame(rows)


def test_folds_grouped_and_covering():
    rec = _records()
    folds = make_folds(rec, 5, seed=1234)
    check_folds(rec, folds)
    assert set(folds["fold"]) == set(range(5))
    assert folds.merge(rec, on="img_path").groupby("prompt")["fold"].nunique().max() == 1
    table = fold_table(rec, folds)
    assert (table["train_images"] + table["eval_images"] == len(rec)).all()
    assert table["eval_images"].sum() == len(rec)
    # deterministic from the seed, different with another seed
    assert make_folds(rec, 5, seed=1234).equals(folds)
    assert not make_folds(rec, 5, seed=7)["fold"].equals(folds["fold"])


def test_check_folds_detects_leak():
    rec = _records()
    folds = make_folds(rec, 5)
    leaked = folds.copy()
    leaked.loc[0, "fold"] = (leaked.loc[0, "fold"] + 1) % 5
    with pytest.raises(ValueError, match="appears in several folds"):
        check_folds(rec, leaked)
    with pytest.raises(ValueError, match="have no fold"):
        check_folds(rec, folds.iloc[1:])
