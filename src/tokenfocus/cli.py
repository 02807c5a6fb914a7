"""Shared command-line plumbing for the numbered stage scripts."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from .config import check_jobs, load_config
from .errors import InputError
from .log import setup_logging

# Errors a user can fix: print the message, not a traceback (anything else is a bug and keeps it).
USER_ERRORS = (InputError, FileNotFoundError, FileExistsError)


def stage_parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="experiment YAML (default: configs/demo.yaml)")
    p.add_argument("--force", action="store_true", help="redo work whose outputs already exist")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config setting, e.g. --set training.lr=2e-4 (repeatable; validated like the file)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def add_jobs_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=_jobs, default=None,
                   help="folds run side by side on a CPU: a number or 'auto' (default: the config's 'jobs', itself 1 unless set)")


def _jobs(text: str):
    value = int(text) if text.lstrip("-").isdigit() else text
    try:
        check_jobs(value, "")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


INTERRUPTED = 130   # the shell's code for a SIGINT


def interrupted() -> int:
    """Ctrl-C: one line, no traceback; finished work is on disk and a re-run resumes from it."""
    print("\ninterrupted; re-run the same command to resume (finished work is kept)", file=sys.stderr)
    return INTERRUPTED


def run_stage(fn: Callable, args: argparse.Namespace, **kwargs) -> int:
    setup_logging(args.verbose)
    try:
        cfg = load_config(args.config, getattr(args, "set", None))
        result = fn(cfg, force=args.force, **kwargs)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return interrupted()
    if isinstance(result, dict):
        print(json.dumps(result, indent=1, default=str))
    elif result is not None:
        print(result.to_string(index=False) if hasattr(result, "to_string") else result)
    return 0


def stage_main(doc: str, fn: Callable) -> None:
    sys.exit(run_stage(fn, stage_parser(doc).parse_args()))
