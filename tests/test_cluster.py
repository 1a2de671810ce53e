"""The tiny study through a real single-node SLURM and snakemake-executor-plugin-slurm.

Installs SLURM when missing (.ci/install-slurm.sh), starts it with
tests/cluster/slurm.sh (and stops it again if it started it), runs the study
with profiles/slurm overlaid by tests/cluster/profile (no GPUs, no
slurmdbd, quick status checks), and checks that every job went
through SLURM and that the scores are byte-identical to a local run.
"""

from __future__ import annotations

import logging
import subprocess
import time

import pytest
from cluster import harness  # tests/cluster/harness.py (tests/ is on sys.path)

log = logging.getLogger(__name__)
pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def slurm():
    """A running single-node SLURM; stopped afterwards if this fixture started it."""
    reason = harness.slurm_skip_reason()
    if reason:
        pytest.skip(reason)
    started_here = False
    if not harness.slurm_up():
        if harness.slurm_missing():
            install = subprocess.run(
                ["bash", str(harness.INSTALL_SLURM)], capture_output=True, text=True, timeout=900
            )
            if install.returncode == 2:
                pytest.skip(install.stderr.strip())
            assert install.returncode == 0, install.stderr[-4000:]
        start = subprocess.run(
            ["bash", str(harness.SLURM_SH), "start"], capture_output=True, text=True, timeout=180
        )
        assert start.returncode == 0, f"slurm.sh start failed:\n{start.stderr[-4000:]}"
        started_here = True
    yield
    if started_here:
        subprocess.run(["bash", str(harness.SLURM_SH), "stop"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def reference(tiny_model_dirs, tmp_path_factory):
    model_dirs = {name: tiny_model_dirs[kind] for name, kind in harness.MODEL_KINDS.items()}
    return harness.reference_run(tmp_path_factory.getbasetemp(), model_dirs), model_dirs


def test_study_runs_through_slurm_byte_identical_to_local(slurm, reference, tmp_path):
    (ref_dir, config), model_dirs = reference
    workdir = tmp_path / "slurm-run"
    harness.write_study(workdir, model_dirs)
    targets = harness.score_targets(config)

    started = time.monotonic()
    result = harness.snakemake(
        workdir,
        "--profile",
        str(harness.SLURM_PROFILE),
        "--workflow-profile",
        str(harness.TEST_PROFILE),
        "--cores",
        str(harness.cores()),
        "--verbose",
        *targets,
        slurm=True,
    )
    wall_s = time.monotonic() - started
    output = result.stdout + result.stderr

    submitted = harness.submitted_jobs(output)
    assert submitted, "no job was submitted to SLURM"
    states = harness.squeue_states(slurm_id for _, slurm_id, _ in submitted)
    assert set(states.values()) == {"COMPLETED"}, states

    # every job that Snakemake sent to the executor ran inside a SLURM job
    announced = harness.rule_outputs(output)
    executed = harness.slurm_executed_outputs(log_path for _, _, log_path in submitted)
    assert set(harness.lens_targets(config)) <= announced["remote"]
    assert set(targets) <= announced["remote"]
    assert announced["remote"] <= executed, announced["remote"] - executed
    # lens shards are grouped: one SLURM job per model, not one per shard
    assert len(submitted) < len(announced["remote"])
    # the node has no GPUs: no job may ask for one
    calls = harness.sbatch_calls(output)
    assert len(calls) == len(submitted)
    assert not [call for call in calls if "--gpus" in call]

    assert harness.digest(workdir, targets) == harness.digest(ref_dir, targets)
    lens = harness.lens_targets(config)
    assert harness.digest(workdir, lens) == harness.digest(ref_dir, lens)
    assert harness.active_jobs() == [], "jobs left in the queue"
    log.info(
        "SLURM run: %.1f s wall, %d SLURM jobs for %d Snakemake jobs (%d local: %s)",
        wall_s,
        len(submitted),
        len(announced["remote"]),
        len(announced["local"]),
        sorted(announced["local"]),
    )
