"""Where a study's time went: the per-rule job-time table from Snakemake's benchmark files.

Every rule writes ``results/benchmarks/<rule>/...tsv`` (Snakemake's ``benchmark:``
directive: wall seconds ``s`` and ``cpu_time`` of the job's processes). This
prints, per rule: jobs, the sum and the largest of their wall seconds, the sum of
their CPU seconds, and the span of the run (last job's end minus first job's
start, from the files' modification times). With ``--before OTHER_RESULTS`` it
prints both runs side by side and after/before ratios.

    .venv/bin/python benchmarks/study_time.py                       # results/
    .venv/bin/python benchmarks/study_time.py results --before /tmp/old/results
    .venv/bin/python benchmarks/study_time.py results --json times.json

On a shared machine the wall seconds are noise (a job waits for the CPU);
CPU seconds are the steadier measure of the work a rule did.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any


def read_benchmarks(results: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per benchmark file under ``results/benchmarks``: rule, job, wall_s, cpu_s, end.

    ``rule`` is the first folder below ``benchmarks``; ``end`` the file's mtime (the job's
    end); ``cpu_s`` is 0.0 where Snakemake could not sample the process ("NA").
    """
    root = Path(results) / "benchmarks"
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        with path.open(newline="") as handle:
            records = list(csv.DictReader(handle, delimiter="\t"))
        if not records:
            continue
        last = records[-1]  # a job benchmarked with repeats writes one line per repeat
        rows.append(
            {
                "rule": path.relative_to(root).parts[0],
                "job": str(path.relative_to(root).with_suffix("")),
                "wall_s": float(last["s"]),
                "cpu_s": _number(last.get("cpu_time")),
                "end": path.stat().st_mtime,
            }
        )
    return rows


def _number(value: str | None) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def rule_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per rule: jobs, wall_s (sum), max_wall_s, cpu_s (sum); plus ``all`` over every job
    and ``span_s``: last job's end minus the first job's start (end - wall_s)."""
    table: dict[str, dict[str, float]] = {}
    for row in rows:
        entry = table.setdefault(
            row["rule"], {"jobs": 0, "wall_s": 0.0, "max_wall_s": 0.0, "cpu_s": 0.0}
        )
        entry["jobs"] += 1
        entry["wall_s"] += row["wall_s"]
        entry["max_wall_s"] = max(entry["max_wall_s"], row["wall_s"])
        entry["cpu_s"] += row["cpu_s"]
    if rows:
        table["all"] = {
            "jobs": len(rows),
            "wall_s": sum(r["wall_s"] for r in rows),
            "max_wall_s": max(r["wall_s"] for r in rows),
            "cpu_s": sum(r["cpu_s"] for r in rows),
            "span_s": max(r["end"] for r in rows) - min(r["end"] - r["wall_s"] for r in rows),
        }
    return table


def format_table(after: dict[str, dict], before: dict[str, dict] | None = None) -> str:
    """The table as aligned text; with ``before``, both runs and after/before ratios."""
    rules = sorted(set(after) | set(before or {}), key=lambda r: (r == "all", r))
    if before is None:
        lines = [f"{'rule':<16}{'jobs':>6}{'job s':>10}{'max s':>9}{'cpu s':>10}"]
        for rule in rules:
            e = after[rule]
            lines.append(
                f"{rule:<16}{e['jobs']:>6}{e['wall_s']:>10.1f}{e['max_wall_s']:>9.1f}"
                f"{e['cpu_s']:>10.1f}"
            )
    else:
        lines = [
            f"{'rule':<16}{'jobs':>11}{'job s before':>14}{'after':>9}{'ratio':>7}"
            f"{'cpu s before':>14}{'after':>9}{'ratio':>7}"
        ]
        empty = {"jobs": 0, "wall_s": 0.0, "cpu_s": 0.0}
        for rule in rules:
            b, a = before.get(rule, empty), after.get(rule, empty)
            lines.append(
                f"{rule:<16}{b['jobs']:>5} -> {a['jobs']:<3}{b['wall_s']:>14.1f}"
                f"{a['wall_s']:>9.1f}{_ratio(a['wall_s'], b['wall_s']):>7}"
                f"{b['cpu_s']:>14.1f}{a['cpu_s']:>9.1f}{_ratio(a['cpu_s'], b['cpu_s']):>7}"
            )
    span = [f"span of the run: {t['all']['span_s']:.0f} s" for t in (before, after) if t]
    if span:
        lines.append(" -> ".join(span) if before else span[0])
    return "\n".join(lines)


def _ratio(after: float, before: float) -> str:
    return f"{after / before:.2f}" if before > 0 else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default="results")
    parser.add_argument("--before", help="another run's results folder, shown beside")
    parser.add_argument("--json", help="write the table(s) to this file")
    args = parser.parse_args(argv)
    after = rule_table(read_benchmarks(args.results))
    if not after:
        print(f"no benchmark files under {Path(args.results) / 'benchmarks'}", file=sys.stderr)
        return 1
    before = rule_table(read_benchmarks(args.before)) if args.before else None
    print(format_table(after, before))
    if args.json:
        Path(args.json).write_text(json.dumps({"after": after, "before": before}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
