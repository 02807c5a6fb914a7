"""The data check between stages 00 and 01: every record parses, every image decodes."""
from __future__ import annotations

from ..config import Config, check_inputs
from ..data import DataError, iter_bad, validate_images
from ..experiment import load_split


def validate_dataset(cfg: Config, force: bool = False) -> dict:
    """Parse both record files and decode every image; fail listing every bad path at once."""
    check_inputs(cfg, need_images=True)
    counts = {}
    bad: list[str] = []
    for split in ("train", "test"):
        df = load_split(cfg, split, record=False)
        counts[split] = len(df)
        bad += validate_images(df, cfg.image_dir)
    if bad:
        raise DataError(f"{cfg.image_dir}: {iter_bad(bad)}")
    return {"records": counts, "images_ok": sum(counts.values())}
