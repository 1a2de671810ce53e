"""Logging setup shared by the workflow scripts.

Convention: every module logs through ``log = logging.getLogger(__name__)``, so its
records are named ``exitbench.<module>`` and reach the handlers that :func:`setup`
installs; scripts log through the ``exitbench`` logger that :func:`setup` returns.
"""

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


def job_failure(
    log_dir: Path, model: str, workload: str, since_ns: int | None = None, lens: str = "logit"
) -> str | None:
    """The first error line in a pair's job logs, stage by stage (describe_model,
    tokenize, [translators,] extract shards, score or score-tuned), as
    ``"<stage>: <message>"``, or None. ``lens``: ``logit`` or ``tuned`` (its
    translators and score-tuned logs; extraction writes both lenses in one job).

    Reads lines written with :data:`FORMAT` (``<time> ERROR <logger>: <message>``)
    under ``log_dir`` (the workflow's ``results/logs``, one folder per rule). With
    ``since_ns`` (a modification time in ns, say the pair's score JSON's), only logs
    written after it count: an older error was overcome by the run that wrote the JSON.
    """
    tuned = lens == "tuned"
    candidates = [
        log_dir / "describe_model" / f"{model}.log",
        log_dir / "tokenize" / model / f"{workload}.log",
        *([log_dir / "translators" / f"{model}.log"] if tuned else []),
        *sorted((log_dir / "extract" / model / workload).glob("shard-*.log")),
        log_dir / ("score-tuned" if tuned else "score") / model / f"{workload}.log",
    ]
    for path in candidates:
        if not path.is_file():
            continue
        if since_ns is not None and path.stat().st_mtime_ns <= since_ns:
            continue
        for line in path.read_text(errors="replace").splitlines():
            if " ERROR " in line:
                stage = path.relative_to(log_dir).parts[0]
                return f"{stage}: {line.split(': ', 1)[-1].strip()}"
    return None
