"""Atomic writes: a crash leaves either the old file or the new one, never half of one.

Temporaries sit beside their target as ``.<name>.<pid>-<random>.tmp``. A process killed with
``kill -9`` cannot remove its own; the next write of the same target removes those whose
process is gone (``clean_stale``), so nothing accumulates. Directories (adapters, checkpoints)
are published by ``atomic_dir``: the old directory is moved aside, the new one renamed into
place, the old one deleted; a kill between the two renames leaves the old one aside, and
``recover_dir`` (run by every publish and by the readers of finished work) puts it back.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

_ASIDE = "aside"   # the random part of a moved-aside old directory


def _owner(tmp: Path, target: str) -> str | None:
    """The '<pid>-<rest>' part of one of ``target``'s temporaries, or None if it is not one."""
    name = tmp.name
    head, tail = f".{target}.", ".tmp"
    if not (name.startswith(head) and name.endswith(tail)):
        return None
    return name[len(head):-len(tail)]


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temporaries(path: Path) -> list[tuple[Path, int | None, str]]:
    """(temporary, pid or None when unreadable, random part) of every temporary of ``path``."""
    out = []
    if not path.parent.is_dir():
        return out
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        owner = _owner(tmp, path.name)
        if owner is None:
            continue
        pid, _, rest = owner.partition("-")
        out.append((tmp, int(pid) if pid.isdigit() else None, rest))
    return out


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _dead(temporaries: list[tuple[Path, int | None, str]]) -> list[tuple[Path, str]]:
    return [(tmp, rest) for tmp, pid, rest in temporaries if pid is None or not _alive(pid)]


def _recover(path: Path, dead: list[tuple[Path, str]]) -> Path | None:
    """Move a dead publish's aside directory back to a missing ``path``; the one moved, if any."""
    if path.exists():
        return None
    for tmp, rest in dead:
        if rest == _ASIDE:
            os.replace(tmp, path)
            return tmp
    return None


def clean_stale(path: str | Path) -> int:
    """Put back what a killed publish had moved aside (``recover_dir``), then remove the other
    temporaries of ``path`` left by processes that are gone; returns how many were removed."""
    path = Path(path)
    dead = _dead(_temporaries(path))
    moved = _recover(path, dead)
    for tmp, _ in dead:
        if tmp != moved:
            _remove(tmp)
    return len(dead) - (moved is not None)


def recover_dir(path: str | Path) -> bool:
    """Put back an old directory that a killed publish had moved aside (``path`` missing)."""
    path = Path(path)
    return not path.exists() and _recover(path, _dead(_temporaries(path))) is not None


def _temp_name(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_name(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the result the usual permissions under the umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; if the block succeeds it replaces
    ``path`` so that at every instant either the old or the new directory is complete (the old
    one, while moved aside, is put back by ``recover_dir`` if the process dies there)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_name(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        aside = path.parent / f"{_temp_name(path)}{_ASIDE}.tmp"
        if path.exists():
            os.replace(path, aside)
        os.replace(tmp, path)
        _remove(aside)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_csv(path: str | Path, df, **kw) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kw)
    return Path(path)


def write_parquet(path: str | Path, df) -> Path:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
