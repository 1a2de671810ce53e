"""benchmarks/study_time.py (the per-rule job-time table) and the default study's job threads."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from cluster import harness  # tests/cluster/harness.py (tests/ is on sys.path)

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("study_time", REPO / "benchmarks" / "study_time.py")
study_time = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study_time)

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _benchmark(root: Path, job: str, wall: float, cpu: str, end: float) -> None:
    path = root / "benchmarks" / f"{job}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{wall}\t0:00:01\t1\t1\t1\t1\t0\t0\t50\t{cpu}\n")
    os.utime(path, (end, end))


def test_rule_table_sums_jobs_per_rule_and_spans_the_run(tmp_path):
    _benchmark(tmp_path, "zoo_train/gpt2-s", 300.0, "150.5", end=1300.0)  # started at 1000
    _benchmark(tmp_path, "zoo_train/llama-s", 200.0, "120.0", end=1250.0)
    _benchmark(tmp_path, "extract/zoo-gpt2-s/python-docs/shard-0", 10.0, "NA", end=1400.0)
    table = study_time.rule_table(study_time.read_benchmarks(tmp_path))
    assert table["zoo_train"] == {"jobs": 2, "wall_s": 500.0, "max_wall_s": 300.0, "cpu_s": 270.5}
    assert table["extract"] == {"jobs": 1, "wall_s": 10.0, "max_wall_s": 10.0, "cpu_s": 0.0}
    assert table["all"]["jobs"] == 3 and table["all"]["cpu_s"] == 270.5
    assert table["all"]["span_s"] == 400.0  # 1000 (first start) to 1400 (last end)
    text = study_time.format_table(table, before=table)
    assert re.search(
        r"zoo_train\s+2 -> 2\s+500\.0\s+500\.0\s+1\.00\s+270\.5\s+270\.5\s+1\.00", text
    )
    assert "span of the run: 400 s -> span of the run: 400 s" in text


def _extract_threads(tmp_path: Path, resources: dict | None) -> set[str]:
    """Threads of the default study's extract jobs in a dry run (printed only when > 1)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    if resources is not None:
        config["resources"] = resources
    workdir = tmp_path / ("gpu" if resources else "cpu")
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    target = "results/lens/zoo-gpt2-s/python-docs/shard-0.parquet"
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "4", "-s", str(REPO / "Snakefile")]
        + [target],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            **harness.NO_SLURM,
        },
    )
    assert result.returncode == 0, result.stderr + result.stdout
    block = result.stdout.split("rule extract:")[1].split("\n\n")[0]
    return set(re.findall(r"threads: (\d+)", block)) or {"1"}


def test_extract_takes_one_thread_on_a_cpu_only_study_and_two_with_a_gpu(tmp_path):
    # two one-thread extract jobs on 2 shared cores finish well before one two-thread job
    assert _extract_threads(tmp_path, None) == {"1"}
    assert _extract_threads(tmp_path, {"gpu": 1}) == {"2"}
