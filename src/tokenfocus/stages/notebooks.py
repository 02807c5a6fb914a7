"""Stage 07: the stage notebooks executed over the run's outputs.

The sources are jupytext percent files (``notebooks/NN_*.py``, what people edit and review);
each is executed with nbclient on the ``python3`` kernel, the experiment passed to it as
$TOKENFOCUS_CONFIG, and saved as ``<exp_dir>/notebooks/NN_*.ipynb`` and ``.html``. The done
marker (``done.json``, written last) holds the sha256 of every source and of the leaderboard
they were run over; a re-run skips while both are unchanged. ``publish`` copies the executed demo
notebooks over ``notebooks/*.ipynb``, the committed copies that show their outputs on GitHub.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

from ..config import CONFIG_ENV, REPO_ROOT, Config
from ..experiment import DONE_MARKER, is_done, made_from, mark_done
from ..io import atomic_path, write_text

log = logging.getLogger("tokenfocus")
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
KERNEL = "python3"
CELL_TIMEOUT = 300  # seconds per cell; a whole notebook takes well under a minute


def notebook_sources(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The jupytext sources, in stage order."""
    return sorted(p for p in Path(folder).glob("[0-9][0-9]_*.py"))


def read_source(path: Path) -> nbformat.NotebookNode:
    nb = jupytext.read(path)
    nb.metadata.setdefault("kernelspec", {"name": KERNEL, "display_name": "Python 3", "language": "python"})
    return nb


def execute(source: Path, config: str | None = None, timeout: int = CELL_TIMEOUT) -> nbformat.NotebookNode:
    """Run one source notebook in its own folder; raises nbclient's CellExecutionError (naming
    the cell) on the first failing cell."""
    nb = read_source(source)
    NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(source.parent)}}
                   ).execute(env={**os.environ, CONFIG_ENV: config or ""})  # the kernel's environment
    return nb


def run_notebooks(cfg: Config, force: bool = False, source_dir: Path = NOTEBOOK_DIR,
                  publish: bool = False) -> str | None:
    """Stage 07: execute every notebook source over ``cfg``'s outputs into ``<exp_dir>/notebooks/``."""
    sources = notebook_sources(source_dir)
    if not sources:
        raise FileNotFoundError(f"{source_dir}: no notebook sources (NN_*.py)")
    out = cfg.exp_dir / "notebooks"
    made = made_from([*sources, cfg.exp_dir / "leaderboard.csv"], root=REPO_ROOT)
    marker = out / DONE_MARKER
    if not force and is_done(marker, made):
        log.info("notebooks: executed over these outputs already, skipping (use --force to redo): %s", out)
        message = None
    else:
        marker.unlink(missing_ok=True)
        seconds = {}
        for source in sources:
            t0 = time.perf_counter()
            nb = execute(source, cfg.source or None)
            seconds[source.stem] = round(time.perf_counter() - t0, 1)
            with atomic_path(out / f"{source.stem}.ipynb") as tmp:
                nbformat.write(nb, tmp)
            html, _ = HTMLExporter().from_notebook_node(nb)
            write_text(out / f"{source.stem}.html", html)
            log.info("notebooks: %s executed in %.1f s", source.stem, seconds[source.stem])
        mark_done(marker, made, seconds=seconds)
        message = f"notebooks: {len(sources)} executed into {out} (ipynb + html), {sum(seconds.values()):.0f} s"
    if publish:
        for source in sources:
            shutil.copyfile(out / f"{source.stem}.ipynb", source.with_suffix(".ipynb"))
        message = (message or "") + f"\npublished {len(sources)} executed notebooks to {source_dir}"
    return message
