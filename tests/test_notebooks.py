"""The stage notebooks: jupytext sources (notebooks/NN_*.py), committed .ipynb that carry the
demo run's outputs and the same cells, and stage 07 executing them over output/demo/.

Executing them takes about a minute (skipped where stage 07 already ran over the same outputs):
deselect with ``-m "not notebooks"``.
"""
import functools
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

from tokenfocus.config import load_config
from tokenfocus.stages import notebooks as stage

REPO = Path(__file__).resolve().parents[1]
DEMO_DONE = REPO / "output" / "demo" / "leaderboard.csv"
SOURCES = stage.notebook_sources()
NAMES = [p.stem for p in SOURCES]


def _cells(nb):
    return [(c.cell_type, c.source) for c in nb.cells]


def test_every_stage_has_a_source_and_a_committed_notebook():
    assert NAMES == ["01_eda", "02_folds", "03_train", "04_infer", "05_ensemble"]
    committed = sorted(p.stem for p in stage.NOTEBOOK_DIR.glob("*.ipynb"))
    assert committed == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_its_sources_cells(name):
    """Edit the .py (or the paired notebook in Jupyter), then re-run stage 07 with --publish."""
    source = stage.read_source(stage.NOTEBOOK_DIR / f"{name}.py")
    committed = nbformat.read(stage.NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    assert _cells(committed) == _cells(source), (
        f"notebooks/{name}.ipynb differs from notebooks/{name}.py: run `bash run_all.sh` and "
        "`.venv/bin/python src/07_notebooks.py --publish`")


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_carries_the_demo_run_outputs(name):
    committed = nbformat.read(stage.NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "committed without outputs"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(o.output_type in ("display_data", "execute_result") for o in outputs)


# An absolute path into a checkout (/home/me/repo/input/...): the machine that ran the notebook.
ABSOLUTE_REPO_PATH = re.compile(r"(?:^|[\s'\"(=])/[^\s'\"]*/(?:input|output|notebooks|src)/")


@pytest.mark.parametrize("name", NAMES)
def test_committed_outputs_show_repository_relative_paths(name):
    committed = nbformat.read(stage.NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    texts = [o.get("text", "") if "text" in o else str(o.get("data", {}).get("text/plain", ""))
             for c in committed.cells if c.cell_type == "code" for o in c.outputs]
    leaks = [m.group(0) for t in texts for m in [ABSOLUTE_REPO_PATH.search(t)] if m]
    assert not leaks, f"notebooks/{name}.ipynb shows absolute paths: {leaks[:3]}"


def test_absolute_path_pattern():
    assert ABSOLUTE_REPO_PATH.search("/home/me/repo/input/demo/train_list.json: 2000 records")
    assert ABSOLUTE_REPO_PATH.search("path  '/tmp/x/output/demo'")
    assert not ABSOLUTE_REPO_PATH.search("input/demo/train_list.json: 2000 records")
    assert not ABSOLUTE_REPO_PATH.search("outputs in output/demo, see notebooks/01_eda.ipynb")


@functools.cache
def _kernel_prefix() -> str:
    """sys.prefix of the interpreter the 'python3' kernel runs on."""
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.prefix)")])
    NotebookClient(nb, timeout=120, kernel_name=stage.KERNEL).execute()
    return nb.cells[0].outputs[0]["text"].strip()


def test_the_kernel_runs_on_this_environment():
    prefix = _kernel_prefix()
    assert Path(prefix).resolve() == Path(sys.prefix).resolve(), (
        f"the python3 kernel runs on {prefix}, not on this environment ({sys.prefix}); "
        f"install it there: {sys.executable} -m ipykernel install --sys-prefix")


def test_stage_reruns_only_when_a_source_or_the_leaderboard_changes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"dataset.root={tmp_path}", f"output_root={tmp_path / 'out'}"])
    src = tmp_path / "nb"
    src.mkdir()
    (src / "01_probe.py").write_text('# %% [markdown]\n# A probe\n\n# %%\nimport os\nos.environ.get("TOKENFOCUS_CONFIG")\n')
    assert "1 executed" in stage.run_notebooks(cfg, source_dir=src)
    out = cfg.exp_dir / "notebooks"
    nb = nbformat.read(out / "01_probe.ipynb", as_version=4)
    assert nb.cells[1].outputs[0]["data"]["text/plain"] == repr(cfg.source)  # the experiment reached the kernel
    assert (out / "01_probe.html").read_text().count("A probe") >= 1
    assert stage.run_notebooks(cfg, source_dir=src) is None  # unchanged: skipped
    (cfg.exp_dir / "leaderboard.csv").write_text("method,final\nx,0.5\n")
    assert "1 executed" in stage.run_notebooks(cfg, source_dir=src)
    (src / "01_probe.py").write_text("# %%\nraise ValueError('cell four')\n")
    with pytest.raises(Exception, match="cell four"):
        stage.run_notebooks(cfg, source_dir=src)
    assert not (out / stage.DONE_MARKER).exists()  # a failed run leaves no marker: the next one redoes it


def _need_demo() -> None:
    if DEMO_DONE.is_file():
        return
    msg = (f"{DEMO_DONE.relative_to(REPO)} not found: the notebooks walk through the demo's outputs; "
           "run `bash run_all.sh` first")
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.mark.notebooks
def test_stage_executes_every_notebook_over_the_demo(monkeypatch):
    _need_demo()
    monkeypatch.delenv("TOKENFOCUS_CONFIG", raising=False)
    stage.run_notebooks(load_config(REPO / "configs" / "demo.yaml"))  # raises on a failing cell
    out = REPO / "output" / "demo" / "notebooks"
    for name in NAMES:
        nb = nbformat.read(out / f"{name}.ipynb", as_version=4)
        assert _cells(nb) == _cells(stage.read_source(stage.NOTEBOOK_DIR / f"{name}.py"))
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert outputs and not [o for o in outputs if o.output_type == "error"]
        assert (out / f"{name}.html").is_file()
