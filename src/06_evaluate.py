"""Score a submission against a truth file with the challenge's metrics.

    python src/06_evaluate.py --truth input/demo/eval.json --submission output/demo/submission/submission.zip

Exit status 0 when scored, 1 when the submission or truth is refused (the reason goes to stderr).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokenfocus.io import write_json
from tokenfocus.metrics import evaluate_files, format_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", required=True, type=Path,
                        help="truth records (output.json shape), e.g. input/demo/eval.json")
    parser.add_argument("--submission", required=True, type=Path,
                        help="submission.zip, a folder holding output.json, or output.json itself")
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)

    try:
        result = evaluate_files(args.truth, args.submission)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_table(result))
    if args.json is not None:
        write_json(args.json, {"truth": str(args.truth), "submission": str(args.submission), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
