"""Logging setup shared by the workflow scripts."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(log_path: str | Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log to ``log_path`` (a rule's ``log:`` file) and to stderr; return the exitbench logger.

    Uncaught exceptions are logged too, so a failed job's log says why.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=level, format=FORMAT, handlers=handlers, force=True)

    def log_uncaught(exc_type, exc, tb):
        logging.getLogger("exitbench").error("failed: %s", exc, exc_info=(exc_type, exc, tb))

    sys.excepthook = log_uncaught
    return logging.getLogger("exitbench")
