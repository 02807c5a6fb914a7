"""Side-by-side work units on a CPU (tokenfocus.parallel) and the `jobs` setting."""
import os

import pytest
import torch

from tokenfocus import parallel
from tokenfocus.config import ConfigError, load_config


def test_resolve_jobs(monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 4)
    monkeypatch.setattr(parallel, "_shared_device", lambda: False)
    assert parallel.resolve_jobs("auto", 10) == 4
    assert parallel.resolve_jobs("auto", 3) == 3        # never more processes than units
    assert parallel.resolve_jobs(2, 10) == 2
    assert parallel.resolve_jobs(8, 1) == 1
    monkeypatch.setattr(parallel, "_shared_device", lambda: True)   # a GPU, or accelerate launch
    assert parallel.resolve_jobs("auto", 10) == 1


@pytest.mark.parametrize("bad", [0, -1, "two", 1.5, True])
def test_bad_jobs_value(bad):
    with pytest.raises(ValueError, match="jobs"):
        parallel.resolve_jobs(bad, 4)


def test_world_size_means_one_job(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert parallel.resolve_jobs(4, 10) == 1


def test_units_run_in_worker_processes_in_order(monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    if torch.cuda.is_available():
        pytest.skip("with a GPU units run in this process")
    calls = [(os.getpid, ()), (torch.get_num_threads, ()), (divmod, (7, 2)), (os.getpid, ())]
    pids_threads = parallel.run_units(calls, 2, desc="test")
    assert os.getpid() not in (pids_threads[0], pids_threads[3])
    assert pids_threads[1] == 1                      # 2 cores, 2 jobs: one thread each
    assert pids_threads[2] == (3, 1)                 # results in the order of the calls


def test_one_job_runs_here():
    assert parallel.run_units([(os.getpid, ()), (divmod, (9, 4))], 1, desc="test") == [os.getpid(), (2, 1)]


def test_failing_unit_raises_its_error(monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="invalid literal"):
        parallel.run_units([(int, ("seven",)), (divmod, (1, 1))], 2, desc="test", names=["bad", "good"])


def test_config_jobs_validated(tmp_path):
    src = load_config().source
    text = open(src, encoding="utf-8").read()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "\njobs: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml: jobs"):
        load_config(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text(text + "\njobs: 2\n", encoding="utf-8")
    assert load_config(ok).jobs == 2
    assert load_config().jobs == "auto"                  # the demo's setting
    plain = tmp_path / "plain.yaml"
    plain.write_text("name: plain\n", encoding="utf-8")
    assert load_config(plain).jobs == 1                  # the default: one fold at a time


def test_failing_unit_ends_the_running_ones(monkeypatch):
    """The pool is terminated at the first failure: a unit still running (here a 120 s sleep)
    is not waited for. The bound is a liveness check with a wide margin, not a speed target."""
    import time

    monkeypatch.setattr(parallel, "available_cores", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="invalid literal"):
        parallel.run_units([(time.sleep, (120,)), (int, ("seven",)), (time.sleep, (120,))], 2, desc="test")
    assert time.monotonic() - t0 < 60
