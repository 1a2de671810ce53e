"""Resilience of a local run: SIGKILL mid-extraction and resume, a truncated
shard on disk, a model whose weights are corrupt (--keep-going)."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
from cluster import harness  # tests/cluster/harness.py (tests/ is on sys.path)

log = logging.getLogger(__name__)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tiny_model_dirs, tmp_path_factory):
    model_dirs = {name: tiny_model_dirs[kind] for name, kind in harness.MODEL_KINDS.items()}
    return harness.reference_run(tmp_path_factory.getbasetemp(), model_dirs), model_dirs


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def _shard_states(workdir: Path, shards: list[str]) -> tuple[set[str], set[str]]:
    """(finished, in flight): shards on disk whose job Snakemake recorded as done, and
    shards whose job it had started but not finished (its .snakemake/incomplete marker,
    even if the shard file is already on disk)."""
    in_flight = harness.incomplete_outputs(workdir) & set(shards)
    finished = {s for s in shards if (workdir / s).exists()} - in_flight
    return finished, in_flight


def test_killed_run_resumes_only_unfinished_shards(reference, tmp_path):
    (ref_dir, config), _ = reference
    targets = harness.score_targets(config)
    shards = harness.lens_targets(config)
    # start from the reference's workloads and tokens: the run below is all extraction
    workdir = harness.copy_run(ref_dir, tmp_path / "killed")
    for path in shards + targets:
        (workdir / path).unlink()
    args = ("--cores", str(harness.cores()), *targets)

    process = harness.start_snakemake(workdir, *args, output=tmp_path / "killed.log")
    deadline = time.monotonic() + 600
    # kill once Snakemake has finished a shard and started another
    while time.monotonic() < deadline and process.poll() is None:
        finished, in_flight = _shard_states(workdir, shards)
        if finished and in_flight:
            break
        time.sleep(0.02)
    harness.kill_group(process)
    finished, in_flight = _shard_states(workdir, shards)
    assert 0 < len(finished) < len(shards), (
        f"could not interrupt extraction midway ({len(finished)}/{len(shards)} shards):\n"
        + (tmp_path / "killed.log").read_text()[-4000:]
    )
    before = {s: _stamp(workdir / s) for s in finished}
    written_in_flight = sum((workdir / s).exists() for s in in_flight)

    # a SIGKILLed Snakemake leaves its lock behind; the next run refuses to start and
    # tells the user to run --unlock
    assert any((workdir / ".snakemake" / "locks").iterdir())
    harness.snakemake(workdir, "--unlock")
    started = time.monotonic()
    resumed = harness.snakemake(workdir, "--rerun-incomplete", *args)
    resume_s = time.monotonic() - started

    assert {s for s in finished if _stamp(workdir / s) == before[s]} == finished, (
        "a shard that Snakemake had finished was recomputed"
    )
    recomputed = harness.announced_outputs(resumed.stderr) & set(shards)
    assert recomputed == set(shards) - finished
    assert harness.digest(workdir, shards + targets) == harness.digest(ref_dir, shards + targets)
    leftovers = sorted(p.name for p in (workdir / "results" / "lens").rglob(".*.tmp"))
    log.info(
        "killed with %d/%d shards finished and %d in flight (%d of them already on disk); "
        "resume recomputed %d shards in %.1f s; temp files left by the killed job: %s",
        len(finished),
        len(shards),
        len(in_flight),
        written_in_flight,
        len(recomputed),
        resume_s,
        leftovers,
    )


def test_truncated_shard_fails_score_naming_file_and_fix(reference, tmp_path):
    (ref_dir, config), _ = reference
    workdir = harness.copy_run(ref_dir, tmp_path / "truncated")
    model, workload = next(iter(config["models"])), next(iter(config["workloads"]))
    shard = f"results/lens/{model}/{workload}/shard-1.parquet"
    target = f"results/scores/{model}/{workload}.parquet"
    data = (workdir / shard).read_bytes()
    (workdir / shard).write_bytes(data[: len(data) // 2])

    failed = harness.snakemake(workdir, "--cores", "1", target, check=False)
    assert failed.returncode != 0
    score_log = workdir / f"results/logs/score/{model}/{workload}.log"
    message = failed.stderr + (score_log.read_text() if score_log.exists() else "")
    assert "shard-1.parquet" in message and "not a readable Parquet file" in message
    assert "delete it" in message

    # doing what the message says recomputes exactly that shard, identically
    (workdir / shard).unlink()
    rerun = harness.snakemake(workdir, "--cores", "1", target)
    assert harness.announced_outputs(rerun.stderr) & set(harness.lens_targets(config)) == {shard}
    assert harness.digest(workdir, [shard, target]) == harness.digest(ref_dir, [shard, target])


def _corrupt_copy(model_dir: Path, destination: Path) -> Path:
    shutil.copytree(model_dir, destination)
    weights = destination / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    return destination


def test_corrupt_weights_fail_only_that_model(tiny_model_dirs, tmp_path):
    broken = _corrupt_copy(tiny_model_dirs["gpt2"], tmp_path / "broken-gpt2")
    model_dirs = {"tiny-llama": tiny_model_dirs["llama"], "tiny-broken": broken}
    workdir = tmp_path / "keep-going"
    # one shard per model: the broken model's extract job fails once (no local retries)
    harness.write_study(
        workdir, model_dirs, tokenize={"max_sequences": 4}, extract={"shard_sequences": 4}
    )
    targets = ["results/summary.parquet", "results/summary.csv"]
    started = time.monotonic()
    result = harness.snakemake(
        workdir, "--cores", str(harness.cores()), "--keep-going", *targets, check=False
    )
    keep_going_s = time.monotonic() - started

    assert result.returncode != 0
    assert (workdir / "results/scores/tiny-llama/docs.parquet").exists()
    assert (workdir / "results/scores/tiny-llama/docs.json").exists()
    assert not (workdir / "results/scores/tiny-broken/docs.parquet").exists()
    failures = harness.error_blocks(result.stderr)
    assert failures, result.stderr[-4000:]
    assert all("tiny-broken" in block and "tiny-llama" not in block for block in failures), failures
    # the workflow's onerror handler still writes the summary, naming the failed pair
    summary = pd.read_csv(workdir / "results/summary.csv").set_index("model")
    assert summary.loc["tiny-llama", "status"] == "ok"
    assert summary.loc["tiny-broken", "status"] == "failed"
    assert "extract" in summary.loc["tiny-broken", "error"]
    assert "tiny-broken / docs" in result.stderr
    log.info(
        "--keep-going with a corrupt model: %.1f s, %d failed attempts; summary error: %s",
        keep_going_s,
        len(failures),
        summary.loc["tiny-broken", "error"],
    )
