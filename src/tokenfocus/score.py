"""Score your own images with a trained model (all its folds averaged).

    python -m tokenfocus.score --config configs/demo.yaml --model qwen2_5_vl \\
        --image out.png --prompt "a red circle" --element "circle (object)" --element "red (color)"
    python -m tokenfocus.score --config configs/demo.yaml --model qwen2_5_vl --pairs pairs.json --out scores.json

``pairs.json`` is a list of {"img_path", "prompt", "element_score": {key: null} or "elements": [key, ...]}
(image paths relative to the file); a CSV with columns img_path, prompt, elements ('|'-separated)
works too. The output is in the submission's shape: total_score and element_score per image.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from .data import DataError, parse_records, read_json


def pairs_from_file(path: Path) -> tuple[list[dict], Path]:
    """Raw records (test.json shape) from a JSON list or a CSV, and the folder images are relative to."""
    if path.suffix.lower() == ".csv":
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = {"img_path", "prompt", "elements"} - set(df.columns)
        if missing:
            raise DataError(f"{path}: missing column(s) {sorted(missing)}")
        raw = [{"img_path": r.img_path, "prompt": r.prompt, "elements": [e for e in r.elements.split("|") if e]}
               for r in df.itertuples()]
    else:
        raw = read_json(path)
        if not isinstance(raw, list):
            raise DataError(f"{path}: expected a JSON list of pairs")
    return [_as_record(r, i, str(path)) for i, r in enumerate(raw)], path.parent


def _as_record(r: dict, i: int, where: str) -> dict:
    if not isinstance(r, dict) or "img_path" not in r or "prompt" not in r:
        raise DataError(f"{where}: record {i}: needs 'img_path' and 'prompt'")
    elements = r.get("element_score") or {k: None for k in r.get("elements", [])}
    return {"prompt_id": str(r.get("prompt_id", i)), "prompt": r["prompt"], "img_path": r["img_path"],
            "total_score": None, "element_score": elements,
            **{k: r[k] for k in ("type", "promt_meaningless", "split_confidence", "attribute_confidence") if k in r}}


def score_pairs(cfg, model_name: str, raw: list[dict], image_dir: Path, progress: bool = True,
                where: str = "pairs") -> list[dict]:
    """Every fold of ``model_name`` scores every question; fold predictions are averaged."""
    from .infer import predict_questions_fast
    from .models import load_model_adapter, load_trained
    from .questions import TOTAL, question_frame
    from .batches import TokenFocusCollator
    from .experiment import is_trained, model_dir, model_folds
    from .questions import task_groups

    mcfg = cfg.model(model_name)
    tcfg = mcfg.training_config(cfg.training)
    records, _ = parse_records(raw, where, require_elements=False)
    for p in records["img_path"]:
        if not (image_dir / p).is_file():
            raise DataError(f"{image_dir / p}: image not found")
    q = question_frame(records)
    preds = []
    for group, tasks in task_groups(tcfg.task_mode).items():
        part = q[q["task"].isin(tasks)]
        for k in model_folds(cfg, mcfg):
            adir = model_dir(cfg, mcfg.name, group, k)
            if not is_trained(adir):
                raise FileNotFoundError(f"{adir}: no trained adapter (run stage 03 first)")
            adapter, model = load_trained(cfg, mcfg, adir, load_model_adapter(cfg, mcfg))
            collator = TokenFocusCollator(adapter, image_dir, tcfg, train=False)
            preds.append(predict_questions_fast(adapter, model, part, image_dir, tcfg.eval_batch, collator,
                                                progress=progress, desc=f"{group} fold{k}"))
    mean = pd.concat(preds).groupby(["img_path", "task", "element_key"], sort=False)["pred"].mean()
    out = []
    for rec in records.itertuples():
        out.append({"prompt": rec.prompt, "img_path": rec.img_path,
                    "total_score": float(mean[(rec.img_path, TOTAL, "")]),
                    "element_score": {k: float(mean[(rec.img_path, "element", k)]) for k in rec.element_keys}})
    return out


def main(argv: list[str] | None = None) -> int:
    from .cli import USER_ERRORS, interrupted
    from .config import load_config
    from .log import setup_logging

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="experiment YAML whose trained folds to use (default: demo)")
    p.add_argument("--model", required=True, help="a model name from the config")
    p.add_argument("--pairs", type=Path, help="JSON or CSV of pairs to score")
    p.add_argument("--image", type=Path, help="one image (with --prompt and --element)")
    p.add_argument("--prompt")
    p.add_argument("--element", action="append", default=[], help='"<text> (<category>)", repeatable')
    p.add_argument("--out", type=Path, help="write the scores as JSON here (default: print)")
    a = p.parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(a.config)
        where = "args"
        if a.pairs:
            raw, image_dir = pairs_from_file(a.pairs)
            where = str(a.pairs)
        elif a.image and a.prompt:
            raw = [_as_record({"img_path": a.image.name, "prompt": a.prompt, "elements": a.element}, 0, "args")]
            image_dir = a.image.resolve().parent
        else:
            p.error("give --pairs, or --image with --prompt (and --element ...)")
        scores = score_pairs(cfg, a.model, raw, image_dir, where=where)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return interrupted()
    text = json.dumps(scores, indent=1, ensure_ascii=False)
    if a.out:
        from .io import write_text

        write_text(a.out, text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
