import re

import numpy as np
import pandas as pd
import pytest

from tokenfocus.config import ConfigError, load_config
from tokenfocus.folds import check_folds, fold_table, make_folds


def test_demo_config_loads():
    cfg = load_config()
    assert cfg.name == "demo" and cfg.folds.n_folds == 5 and cfg.demo is not None
    assert cfg.exp_dir.name == "demo"


def test_second_seed_demo_overrides_its_base_config():
    from tokenfocus.config import REPO_ROOT

    seed2, demo = load_config(REPO_ROOT / "configs" / "demo_seed2.yaml"), load_config()
    assert (seed2.name, seed2.dataset.root, seed2.demo.seed) == ("demo_seed2", "input/demo_seed2", 4321)
    # Everything it does not set comes from demo.yaml, nested sections merged key by key.
    assert seed2.training == demo.training and seed2.models == demo.models
    assert seed2.dataset.train_file == demo.dataset.train_file and seed2.demo.n_train_prompts == demo.demo.n_train_prompts


def test_full_budget_demo_configs_change_only_the_budget_and_the_ablation():
    """configs/demo_full.yaml: every question of each fold at lr 1e-3 and the iMatch ablation rows;
    its second-seed twin reads the second seed's data; the models and the folds are the demo's."""
    import dataclasses

    from tokenfocus.config import REPO_ROOT

    demo = load_config()
    full, full2 = (load_config(REPO_ROOT / "configs" / f) for f in ("demo_full.yaml", "demo_full_seed2.yaml"))
    seed2 = load_config(REPO_ROOT / "configs" / "demo_seed2.yaml")
    assert (full.name, full2.name) == ("demo_full", "demo_full_seed2")
    assert full.training.max_train_questions is None and full.training.lr == 1e-3
    assert full.training == dataclasses.replace(demo.training, max_train_questions=None, lr=1e-3)
    assert full2.training == full.training and full.models == demo.models and full.folds == demo.folds
    assert full.dataset == demo.dataset and full2.dataset == seed2.dataset and full2.demo == seed2.demo
    assert set(demo.ablation.variants) < set(full.ablation.variants) == set(full2.ablation.variants)
    assert {"pseudo_labels", "augment", "total_levels_15"} <= set(full.ablation.variants)


def test_base_config_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: a.yaml\nname: a\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml not found"):
        load_config(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="c.yaml: expected a mapping"):
        load_config(tmp_path / "c.yaml")


REAL_CONFIGS = ["qwen2_5_vl_7b", "internvl3_8b", "internvl3_38b", "evalmuse_paper"]


@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_real_experiment_configs(name):
    """The real experiments name hub checkpoints of the native families and the paper's Table 2."""
    from tokenfocus.config import REPO_ROOT

    cfg = load_config(REPO_ROOT / "configs" / f"{name}.yaml")
    assert cfg.dataset.root == "input/evalmuse" and cfg.demo is None and cfg.folds.n_folds == 5
    for m in cfg.models:
        t = m.training_config(cfg.training)
        assert m.hub and "/" in m.path and not m.trust_remote_code, m.name
        assert (t.lora_r, t.lora_alpha, t.lr, t.vision_lr, t.global_batch, t.epochs) == (64, 128, 1e-4, 1e-5, 64, 3.0)
        assert (t.adam_beta1, t.adam_beta2, t.weight_decay, t.warmup_steps) == (0.9, 0.95, 0.05, 200)
    assert cfg.ensemble.base_models == [m.name for m in cfg.models]


def test_qlora_keeps_the_vision_tower_unquantised():
    """QLoRA quantises the language model only: the vision tower and projector are trained."""
    from tokenfocus.config import REPO_ROOT
    from tokenfocus.models import qlora_config
    from transformers.quantizers.quantizers_utils import should_convert_module

    pytest.importorskip("bitsandbytes")
    cfg = load_config(REPO_ROOT / "configs" / "internvl3_38b.yaml")
    q = qlora_config(cfg.models[0])
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4"
    skip = q.llm_int8_skip_modules
    assert not should_convert_module("model.vision_tower.encoder.layer.0.attention.q_proj", skip)
    assert not should_convert_module("model.multi_modal_projector.linear_1", skip)
    assert not should_convert_module("lm_head", skip)
    assert should_convert_module("model.language_model.layers.0.self_attn.q_proj", skip)


@pytest.mark.parametrize("text, msg", [
    ("name: x\nbogus: 1\n", "unknown key(s) 'bogus'"),
    ("name: x\nfolds:\n  n_folds: five\n", "folds.n_folds: expected an integer"),
    ("name: x\ndataset:\n  rot: a\n", "dataset: unknown key(s) 'rot'"),
    ("name: [1\n", "invalid YAML"),
    ("name: x\nfolds:\n  n_folds: 0\n", "folds.n_folds: 0 (needs at least 2"),
    ("- a\n- b\n", "expected a mapping of settings at the top level, got list"),
    ("just text\n", "expected a mapping of settings at the top level, got str"),
    ("name: x\nmodels:\n  - {name: q, family: qwen2_5_vl, path: checkpoints/qwen-ft}\n",
     "checkpoint directory not found"),
    ("name: x\nmodels:\n  - {name: q, family: qwen2_5_vl, path: ./ckpt, hub: true}\n", "not a hub id"),
    ("name: x\ntraining: {total_levels: 30}\nmodels:\n  - {name: q, family: qwen2_5_vl, path: input/pretrained/tiny-qwen2.5-vl}\n",
     "training.total_levels: total levels: 30 (2..26)"),
    ("name: x\ntraining: {augment_shift: 0.8}\nmodels:\n  - {name: q, family: qwen2_5_vl, path: input/pretrained/tiny-qwen2.5-vl}\n",
     "training.augment_shift: 0.8 outside [0, 0.5]"),
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


def test_command_line_overrides_are_validated_like_the_file():
    cfg = load_config(None, ["training.lr=2e-4", "folds.n_folds=3", "name=other"])
    assert (cfg.training.lr, cfg.folds.n_folds, cfg.name) == (2e-4, 3, "other")
    assert cfg.models[0].path == load_config().models[0].path          # the rest as in the file
    for bad, msg in (("training.lr", "expected KEY=VALUE"), ("training.bogus=1", "unknown key(s) 'bogus'"),
                     ("folds.n_folds=0", "folds.n_folds: 0"), ("training.lr=abc", "training.lr")):
        with pytest.raises(ConfigError, match=re.escape(msg)):
            load_config(None, [bad])


def test_table2_lives_in_one_shared_file_the_real_configs_extend():
    """configs/base/paper.yaml holds Table 2 (equal to the TrainingConfig defaults); every real
    experiment extends it and none restates a Table-2 key with another value."""
    import dataclasses

    import yaml

    from tokenfocus.config import REPO_ROOT
    from tokenfocus.config.schema import TrainingConfig

    shared = yaml.safe_load((REPO_ROOT / "configs" / "base" / "paper.yaml").read_text())["training"]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainingConfig)}
    assert shared and {k: defaults[k] for k in shared} == shared
    for name in REAL_CONFIGS:
        raw = yaml.safe_load((REPO_ROOT / "configs" / f"{name}.yaml").read_text())
        assert raw["base"] == "base/paper.yaml", name
        overrides = [raw.get("training") or {}] + [m.get("training") or {} for m in raw["models"]]
        restated = {k: v for o in overrides for k, v in o.items() if k in shared and v != shared[k]}
        assert not restated, f"{name} changes Table 2 settings: {restated}"
