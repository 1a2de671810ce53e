"""Fault matrix: the cheapest faults a new user meets, on one tiny model and one finished run.

Each case copies the finished study (outputs, mtimes, .snakemake metadata), applies one
fault, runs Snakemake and checks the first line of what the user is told, and that
``results/`` then holds nothing partial or stale: no half-written file, and no score
output of a pair that failed in this run.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from cluster import harness  # tests/cluster/harness.py (tests/ is on sys.path)

from exitbench import aggregate
from exitbench.config import ConfigError, check_writable

log = logging.getLogger(__name__)
pytestmark = pytest.mark.slow

SUMMARY = ["results/summary.parquet", "results/summary.csv"]
SCORES = ["results/scores/m/docs.json", "results/scores/m/docs.parquet"]
PARAGRAPH = (
    "The {n}th section explains how a module reads its configuration, checks every key "
    "and reports the first error with the path of the offending value and a hint."
)


def _study(workdir: Path) -> dict:
    """Model ``m`` in ``model/``, workload ``docs`` from ``docs.txt``: paths relative to
    the working directory, so that a copied run is the same study."""
    config = harness.study_config(
        {"m": "model"},
        workloads={"docs": {"source": "file", "path": "docs.txt"}},
        tokenize={"seq_len": 32, "max_sequences": 4},
        extract={"shard_sequences": 2},
    )
    del config["workloads"]["docs"]["name"], config["workloads"]["docs"]["max_docs"]
    (workdir / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


@pytest.fixture(scope="module")
def finished(tiny_model_dirs, tmp_path_factory) -> Path:
    """One finished run (summary written) of model ``m`` on the file workload ``docs``."""
    workdir = tmp_path_factory.mktemp("faults") / "finished"
    workdir.mkdir()
    shutil.copytree(tiny_model_dirs["llama"], workdir / "model")
    (workdir / "docs.txt").write_text("\n\n".join(PARAGRAPH.format(n=n) for n in range(12)))
    config = _study(workdir)
    harness.snakemake(workdir, "--cores", str(harness.cores()), *SUMMARY)
    # a finished run is current: nothing is stale
    cwd = os.getcwd()
    try:
        os.chdir(workdir)
        assert aggregate.pair_failure(config, "m", "docs") is None
    finally:
        os.chdir(cwd)
    return workdir


def _case(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run, its own model folder and workload file included."""
    return harness.copy_run(finished, tmp_path / "run")


def _edit(path: Path, **changes) -> None:
    config = yaml.safe_load(path.read_text())
    harness.deep_update(config, changes)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _planned(workdir: Path, *targets: str) -> dict[str, int]:
    """Jobs per rule of a dry run (empty when Snakemake has nothing to do)."""
    result = harness.snakemake(workdir, "-n", *(targets or SUMMARY))
    return harness.planned_jobs(result.stdout + result.stderr)


def _said(result) -> str:
    """What Snakemake told the user (a dry run's errors go to stdout)."""
    return result.stdout + result.stderr


def _nothing_partial(workdir: Path) -> None:
    leftovers = [p for p in (workdir / "results").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def test_failed_pair_is_not_reported_ok_with_stale_numbers(finished, tmp_path):
    """Item 1: the old score JSON of a pair whose extract fails in this run is not 'ok'."""
    workdir = _case(finished, tmp_path)
    weights = workdir / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    old_json = (workdir / SCORES[0]).read_text()

    result = harness.snakemake(workdir, "--cores", "1", "--keep-going", *SUMMARY, check=False)

    assert result.returncode != 0
    assert "1 of 1 (model, workload) pairs failed" in result.stderr
    summary = pd.read_csv(workdir / "results/summary.csv")
    assert summary.loc[0, "status"] == "failed"
    assert summary.loc[0, "error"].startswith("extract: ")
    assert pd.isna(summary.loc[0, "oracle_savings"])
    # stale outputs moved aside, never presented as current
    assert not any((workdir / path).exists() for path in SCORES)
    assert (workdir / "results/stale/scores/m/docs.json").read_text() == old_json
    # a corrupt file fails the same way again: no local retries, one failed attempt per shard
    failures = harness.error_blocks(result.stderr)
    assert len(failures) == harness.n_shards(yaml.safe_load((workdir / "study.yaml").read_text()))
    _nothing_partial(workdir)


def test_failed_extract_without_changed_inputs_marks_pair_failed(finished, tmp_path):
    """Item 1: an upstream job that fails in this run (its log is newer than the score JSON)
    fails the pair, though no input is newer than the old score JSON: here extraction
    forced to rerun with ``extract.device: cuda`` on a machine without CUDA."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: device cuda does not fail")
    workdir = _case(finished, tmp_path)
    _edit(workdir / "study.yaml", extract={"device": "cuda"})

    result = harness.snakemake(
        workdir, "--cores", "1", "--keep-going", "--forcerun", "extract", *SUMMARY, check=False
    )

    assert result.returncode != 0
    assert "1 of 1 (model, workload) pairs failed" in result.stderr
    summary = pd.read_csv(workdir / "results/summary.csv")
    assert summary.loc[0, "status"] == "failed"
    assert summary.loc[0, "error"].startswith("extract: ")
    assert not any((workdir / path).exists() for path in SCORES)
    _nothing_partial(workdir)


@pytest.mark.parametrize(
    ("edited", "expected"),
    [
        # the file workload: every stage after it reruns, the model's description does not
        (
            "docs.txt",
            {"workload": 1, "tokenize": 1, "extract": 2, "score": 1, "decode": 1, "aggregate": 1},
        ),
        # the weights: extraction onwards; tokens and description stay
        ("model/model.safetensors", {"extract": 2, "score": 1, "decode": 1, "aggregate": 1}),
        # the tokenizer: tokens onwards
        (
            "model/tokenizer.json",
            {"tokenize": 1, "extract": 2, "score": 1, "decode": 1, "aggregate": 1},
        ),
    ],
)
def test_edited_input_reruns_exactly_what_reads_it(finished, tmp_path, edited, expected):
    """Item 3: an input edited in place is noticed, and reruns only what depends on it."""
    workdir = _case(finished, tmp_path)
    assert _planned(workdir) == {}
    path = workdir / edited
    data = path.read_bytes()
    if edited.endswith(".safetensors"):  # another value of the last weight
        data = data[:-1] + bytes([data[-1] ^ 1])
    else:  # text: a paragraph more, or JSON whitespace
        data += (
            b"\n\nOne more paragraph, added after the run.\n" if edited.endswith(".txt") else b" "
        )
    path.write_bytes(data)  # Snakemake reruns on a newer mtime only where the content changed
    assert _planned(workdir) == expected


def test_unknown_model_target_lists_known_names(finished, tmp_path):
    """Item 4: a target for a model not in the config names the known models and workloads."""
    workdir = _case(finished, tmp_path)
    result = harness.snakemake(workdir, "-n", "results/scores/nope/docs.parquet", check=False)
    assert result.returncode != 0
    assert (
        "target results/scores/nope/docs.parquet: 'nope' is not a key of the config's "
        "models: section (known models: m; known workloads: docs)"
    ) in _said(result)


def test_duplicate_yaml_key_is_rejected_with_its_lines(finished, tmp_path):
    """Item 4: a key given twice in the study YAML is named with both lines, not overwritten."""
    workdir = _case(finished, tmp_path)
    study = workdir / "study.yaml"
    study.write_text(study.read_text().replace("seed: 0\n", "seed: 0\nseed: 1\n", 1))
    result = harness.snakemake(workdir, "-n", *SUMMARY, check=False)
    assert result.returncode != 0
    assert f"{study}: key 'seed' is given twice in one mapping (lines 1 and 2)" in _said(result)


def test_float_integer_setting_is_rejected_before_any_job(finished, tmp_path):
    """Item 4 (schema): seq_len: 48.0 names the key instead of a TypeError in tokenize."""
    workdir = _case(finished, tmp_path)
    _edit(workdir / "study.yaml", tokenize={"seq_len": 48.0})
    result = harness.snakemake(workdir, "-n", *SUMMARY, check=False)
    assert result.returncode != 0
    assert "tokenize.seq_len" in _said(result)
    assert "TypeError" not in _said(result)


def test_unwritable_results_is_named_before_any_job(tmp_path):
    """Item 4: a read-only results/ is named once, before any job starts."""
    results = tmp_path / "results"
    results.mkdir()
    check_writable(results)  # writable: nothing said
    results.chmod(0o555)
    try:
        if os.access(results, os.W_OK):  # root writes anywhere: nothing to check
            pytest.skip("running as root: a read-only directory is still writable")
        with pytest.raises(ConfigError, match=rf"directory {results} is not writable"):
            check_writable(results)
    finally:
        results.chmod(0o755)
