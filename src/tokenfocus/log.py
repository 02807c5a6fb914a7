"""The package's logger and the stages' log format."""
from __future__ import annotations

import logging

log = logging.getLogger("tokenfocus")


def setup_logging(verbose: bool = False, level: int | None = None) -> None:
    """The stages' log format, at DEBUG when ``verbose``, else INFO, unless ``level`` is given."""
    if level is None:
        level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
