"""Shared by tests/test_cluster.py and tests/test_resume.py: the tiny study in
tests/cluster/study.yaml, how to run it through Snakemake's CLI in a temporary
working directory, and how to read what SLURM ran.

Loaded by file path (``_load_harness`` in the test modules), so it works in any
pytest import mode without making ``tests`` a package.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

log = logging.getLogger("exitbench.tests.cluster")

REPO = Path(__file__).resolve().parents[2]
# EXITBENCH_TEST_SNAKEFILE: run these tests against another workflow (debugging the tests)
SNAKEFILE = Path(os.environ.get("EXITBENCH_TEST_SNAKEFILE", REPO / "Snakefile"))
CLUSTER_DIR = REPO / "tests" / "cluster"
STUDY_TEMPLATE = CLUSTER_DIR / "study.yaml"
SLURM_PROFILE = REPO / "profiles" / "slurm"
TEST_PROFILE = CLUSTER_DIR / "profile"  # overlay on SLURM_PROFILE (--workflow-profile)
SLURM_SH = CLUSTER_DIR / "slurm.sh"
INSTALL_SLURM = REPO / ".ci" / "install-slurm.sh"
SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")
# models of the shared reference run: study model name -> kind of tests/conftest.py's
# tiny_model_dirs. One model keeps the runs short (each job starts Python + torch).
MODEL_KINDS = {"tiny-llama": "llama"}
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE)]


def cores() -> int:
    """Cores for every run: local and SLURM runs must use the same threads to be byte-identical."""
    return min(2, os.cpu_count() or 1)


def deep_update(base: dict, update: Mapping) -> dict:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def study_config(model_dirs: Mapping[str, Path], **overrides) -> dict:
    """The tiny study with ``models.<name>.path`` set from ``model_dirs`` (name -> folder)."""
    config = yaml.safe_load(STUDY_TEMPLATE.read_text())
    for name, path in model_dirs.items():
        entry = config["models"].setdefault(name, copy.deepcopy(config["models"]["tiny-gpt2"]))
        entry["path"] = str(path)
    for name in list(config["models"]):
        if name not in model_dirs:
            del config["models"][name]
    return deep_update(config, overrides)


def write_study(workdir: Path, model_dirs: Mapping[str, Path], **overrides) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    config = study_config(model_dirs, **overrides)
    (workdir / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def n_shards(config: Mapping) -> int:
    return -(-config["tokenize"]["max_sequences"] // config["extract"]["shard_sequences"])


def score_targets(config: Mapping) -> list[str]:
    return [
        f"results/scores/{model}/{workload}.parquet"
        for model in config["models"]
        for workload in config["workloads"]
    ]


def lens_targets(config: Mapping) -> list[str]:
    return [
        f"results/lens/{model}/{workload}/shard-{shard}.parquet"
        for model in config["models"]
        for workload in config["workloads"]
        for shard in range(n_shards(config))
    ]


#: The environment of every Snakemake start that does not go through SLURM. Importing the
#: SLURM executor plugin runs ``scontrol show config``; where SLURM's client is installed but
#: no controller answers (after test_cluster.py stops the one it started), that call fails
#: only after ~9 s, on every Snakemake start (README, troubleshooting 10). With SLURM_CONF at
#: an empty file it fails at once, as where no SLURM is installed: the plugin gets None either
#: way, and a local run never uses SLURM, so nothing a local run does or checks changes.
NO_SLURM = {"SLURM_CONF": os.devnull}


def env(slurm: bool = False) -> dict[str, str]:
    """The environment of a Snakemake start: SLURM's own configuration only with ``slurm``."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **({} if slurm else NO_SLURM),
    }


def command(workdir: Path, *args: str) -> list[str]:
    return [
        *SNAKEMAKE,
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "study.yaml"),
        *args,
    ]


def snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: float = 900, slurm: bool = False
) -> subprocess.CompletedProcess:
    """Run the CLI in ``workdir``; with ``check``, fail with the end of its stderr; with
    ``slurm``, in an environment that sees the SLURM configuration (see :data:`NO_SLURM`)."""
    result = subprocess.run(
        command(workdir, *args), capture_output=True, text=True, env=env(slurm), timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed (exit {result.returncode}):\n"
            f"{result.stderr[-8000:]}"
        )
    return result


def start_snakemake(workdir: Path, *args: str, output: Path) -> subprocess.Popen:
    """Start the CLI in its own process group (so the whole run can be SIGKILLed)."""
    with output.open("w") as sink:
        return subprocess.Popen(
            command(workdir, *args),
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env(),
            start_new_session=True,
        )


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the run's process group: Snakemake and every job it started."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def planned_jobs(output: str) -> dict[str, int]:
    """Jobs per rule from the "Job stats:" table a dry run prints ({} for "Nothing to be
    done")."""
    if "Job stats:" not in output:
        assert "Nothing to be done" in output, output[-3000:]
        return {}
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for rule, count in re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.M):
        if rule == "total":
            return counts
        counts[rule] = int(count)
    raise AssertionError(f"no total row in the job stats:\n{output[-3000:]}")


def digest(workdir: Path, paths: Iterable[str]) -> dict[str, str]:
    """sha256 of each path (relative to ``workdir``)."""
    return {path: hashlib.sha256((workdir / path).read_bytes()).hexdigest() for path in paths}


def reference_run(basetemp: Path, model_dirs: Mapping[str, Path]) -> tuple[Path, dict]:
    """An uninterrupted local run of the tiny study (lens shards and scores), made
    once per test session and shared by the cluster and resume tests."""
    workdir = basetemp / "reference-run"
    config = study_config(model_dirs)
    done = workdir / "DONE"
    if not done.exists():
        shutil.rmtree(workdir, ignore_errors=True)
        write_study(workdir, model_dirs)
        started = time.monotonic()
        snakemake(workdir, "--cores", str(cores()), *score_targets(config))
        log.info("reference local run: %.1f s", time.monotonic() - started)
        done.write_text(f"{time.monotonic() - started:.1f}\n")
    return workdir, config


def copy_run(source: Path, destination: Path) -> Path:
    """Copy a finished run (outputs, mtimes and .snakemake metadata) to a new workdir."""
    shutil.copytree(
        source,
        destination,
        symlinks=True,
        copy_function=shutil.copy2,
        ignore=shutil.ignore_patterns("locks", "DONE"),
    )
    return destination


def incomplete_outputs(workdir: Path) -> set[str]:
    """Outputs of jobs Snakemake started but did not finish (``.snakemake/incomplete``,
    one marker per output, named by the urlsafe base64 of its path)."""
    markers = workdir / ".snakemake" / "incomplete"
    if not markers.is_dir():
        return set()
    found = set()
    for marker in markers.iterdir():
        try:
            found.add(base64.urlsafe_b64decode(marker.name).decode())
        except (ValueError, UnicodeDecodeError):
            continue
    return found


# ---- what SLURM ran -------------------------------------------------------------------

_SUBMITTED = re.compile(r"Job (\S+) has been submitted with SLURM jobid (\d+) \(log: ([^)]+)\)\.")
_RULE_BLOCK = re.compile(
    r"^\s*(local)?rule (\w+):\n(?:\s+input: .*\n)?\s+output: (.*)$", re.MULTILINE
)


def submitted_jobs(text: str) -> list[tuple[str, str, Path]]:
    """(Snakemake job or group id, SLURM job id, SLURM log) of each submission in a log."""
    return [(job, slurm_id, Path(path)) for job, slurm_id, path in _SUBMITTED.findall(text)]


def rule_outputs(text: str) -> dict[str, set[str]]:
    """Outputs announced in a Snakemake log, by kind: 'remote' (``rule x:``, submitted
    to the executor) and 'local' (``localrule x:``, run by the main process)."""
    found: dict[str, set[str]] = {"remote": set(), "local": set()}
    for local, _rule, outputs in _RULE_BLOCK.findall(text):
        found["local" if local else "remote"].update(o.strip() for o in outputs.split(","))
    return found


def announced_outputs(text: str) -> set[str]:
    """Every output of every job a Snakemake log announced (local or submitted)."""
    found = rule_outputs(text)
    return found["remote"] | found["local"]


def error_blocks(text: str) -> list[str]:
    """The ``Error in rule ...`` blocks of a Snakemake log (one per failed job attempt)."""
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith("Error in rule") or line.startswith("Error in group"):
            current = [line]
            blocks.append(current)
        elif current is not None and line.startswith((" ", "\t")) and line.strip():
            current.append(line)
        else:
            current = None
    return ["\n".join(block) for block in blocks]


def slurm_executed_outputs(logs: Iterable[Path]) -> set[str]:
    """Every output that a Snakemake process inside a SLURM job announced."""
    executed: set[str] = set()
    for path in logs:
        executed |= announced_outputs(path.read_text(errors="replace"))
    return executed


def sbatch_calls(text: str) -> list[str]:
    """The sbatch command lines of a ``--verbose`` run."""
    return re.findall(r"sbatch call: (sbatch .*)", text)


# ---- the single-node SLURM -------------------------------------------------------------


def _which(binary: str) -> str | None:
    return shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def slurm_missing() -> list[str]:
    return [binary for binary in SLURM_BINARIES if _which(binary) is None]


def slurm_up() -> bool:
    """True when a controller answers and its node can take jobs."""
    if _which("sinfo") is None:
        return False
    try:  # a client without a controller retries for MessageTimeout (10 s)
        result = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=5
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and bool(re.match(r"(idle|mix|alloc)", result.stdout))


def slurm_skip_reason() -> str | None:
    """Why the cluster test cannot run here, or None (then it must run and pass)."""
    if slurm_up():
        return None
    if os.geteuid() != 0:
        return "single-node SLURM needs root to start munged/slurmctld/slurmd (run as root)"
    if slurm_missing() and _which("apt-get") is None:
        return (
            f"SLURM binaries missing ({', '.join(slurm_missing())}) and no apt-get to "
            "install them: install munge slurmctld slurmd slurm-client"
        )
    return None


def squeue_states(job_ids: Iterable[str]) -> dict[str, str]:
    ids = ",".join(job_ids)
    if not ids:
        return {}
    result = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i|%T", "-j", ids],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split("|", 1) for line in result.stdout.split())


def active_jobs() -> list[str]:
    result = subprocess.run(
        ["squeue", "-h", "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED", "-o", "%i"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()
