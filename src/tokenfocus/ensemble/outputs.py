"""What stage 05 writes: per-method predictions, the submission of the chosen method,
ensemble.json, the category accuracy table, the plots, and leaderboard.csv last."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from ..config import EnsembleSettings
from ..data import records_to_json
from ..features import KEY
from ..io import write_csv, write_json, write_parquet
from .common import Frames, Method
from .leaderboard import _best_base, category_accuracy_table


def write_outputs(exp_dir: Path, fr: Frames, s: EnsembleSettings, test: pd.DataFrame, methods: list[Method],
                   lb: pd.DataFrame, chosen: Method, blend_info: dict, elapsed: float) -> Path:
    """Per-method predictions, the submission of the chosen method, ensemble.json, the category
    accuracy table, the plots and leaderboard.csv (last: its presence means the stage finished)."""
    out_dir = exp_dir / "ensemble"
    truth_test = fr.test if fr.truth else None
    _write_predictions(out_dir, fr.oof, fr.test, methods, fr.truth)
    sub = _write_submission(exp_dir / "submission", test, fr.test, chosen, s, elapsed)
    write_json(out_dir / "ensemble.json", {
        "best_method": chosen.name, "base_models": fr.base, "baselines": fr.baselines,
        "structural_features": fr.struct_cols, "structural_mode": s.structural,
        "record_features": fr.record_cols, "blend": blend_info, "settings": dataclasses.asdict(s),
        "submission": str(sub)})
    write_csv(exp_dir / "category_accuracy.csv", category_accuracy_table(methods, fr.oof, truth_test),
              float_format="%.4f")
    if s.plots:
        from .. import plots
        plots.write_plots(out_dir, lb, fr.oof, truth_test, {chosen.name: (chosen.oof, chosen.test)} | _best_base(lb, methods))
        # Every base model and baseline beside the chosen method, on test where there is truth.
        split, frame = ("test", fr.test) if fr.truth else ("oof", fr.oof)
        shown = {m.name: plots.element_frame(frame, m.test if split == "test" else m.oof)
                 for m in methods if m.kind in ("base", "baseline") or m is chosen}
        plots.save_figure(plots.category_accuracy(shown, title=f"Element accuracy per category ({split})"),
                          out_dir / "category_accuracy_methods.png")
    write_csv(exp_dir / "leaderboard.csv", lb, float_format="%.4f")
    return sub


def _write_predictions(out_dir: Path, oof_m: pd.DataFrame, test_m: pd.DataFrame,
                       methods: list[Method], with_truth: bool) -> None:
    oof = oof_m[[*KEY, "category", "fold", "target"]].copy()
    test = test_m[[*KEY, "category"]].copy()
    oof["category"] = oof["category"].astype(object)
    test["category"] = test["category"].astype(object)
    if with_truth:
        test["target"] = test_m["target"].to_numpy(float)
    for m in methods:
        oof[m.name] = m.oof
        test[m.name] = m.test
    write_parquet(out_dir / "oof_predictions.parquet", oof)
    write_parquet(out_dir / "test_predictions.parquet", test)


def _write_submission(sub_dir: Path, test: pd.DataFrame, test_m: pd.DataFrame, chosen: Method,
                      s: EnsembleSettings, elapsed: float) -> Path:
    from ..submission import build_records, readme_text, write_submission

    is_total = (test_m["task"] == "total").to_numpy()
    total = dict(zip(test_m.loc[is_total, "img_path"], chosen.test[is_total]))
    element = dict(zip(zip(test_m.loc[~is_total, "img_path"], test_m.loc[~is_total, "element_key"]),
                       chosen.test[~is_total]))
    reference = records_to_json(test)
    records = build_records(reference, total, element)
    uses_llm = chosen.kind != "metadata" and any(m not in s.non_llm_models for m in chosen.models)
    runtime = s.runtime_per_image if s.runtime_per_image is not None else elapsed / max(1, len(test))
    used = ", ".join(chosen.models) or "record features"
    if uses_llm:
        how = ("base models: LVLMs fine-tuned on the label-token probabilities at the first answer "
               "position; 5-fold out-of-fold predictions aggregated with prompt-grouped nested CV.")
    else:
        how = "no LVLM predictions (prompt-only prior or record features)."
    description = f"TokenFocus-VQA, method '{chosen.name}' ({chosen.kind}) over {used}; {how}"
    readme = readme_text(runtime, cpu=int(not _cuda_available()), extra_data=0, llm=int(uses_llm),
                         description=description)
    return write_submission(sub_dir, records, reference, readme)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
