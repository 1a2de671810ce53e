"""Real study configs: schema-valid, cover the study's axes, sized to their GPUs, and (once the
workflow is complete) plan the expected jobs in a Snakemake dry run."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from exitbench.config import validate_config
from exitbench.registry import fill_metadata, load_registry, registry_record

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "studies" / "paper.yaml"
SINGLE_GPU = REPO / "studies" / "single-gpu.yaml"
STUDIES = [PAPER, SINGLE_GPU]
SNAKEFILE = REPO / "Snakefile"
GPU_BYTES = 80e9
DRY_RUN_LIMIT_S = 60


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def registry():
    return load_registry(REPO / "data" / "registry.csv")


def filled(path: Path, registry) -> dict:
    config = validate_config(load(path))
    config["models"] = fill_metadata(config["models"], registry)
    return config


@pytest.mark.parametrize("study", STUDIES, ids=lambda path: path.stem)
def test_study_matches_the_config_schema(study):
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(load(study))
    validate_config(load(study))  # also the cross-references (base_model, revision)


@pytest.mark.parametrize("study", STUDIES, ids=lambda path: path.stem)
def test_study_runs_real_hub_workloads(study):
    config = load(study)
    workloads = config["workloads"]
    assert set(workloads) == {"wikitext", "humaneval", "gsm8k", "dolly"}
    assert all(spec["source"] == "hub" for spec in workloads.values())
    wikitext = workloads["wikitext"]
    assert (wikitext["dataset"], wikitext["config"], wikitext["split"]) == (
        "Salesforce/wikitext",
        "wikitext-103-raw-v1",
        "test",
    )
    gsm8k = workloads["gsm8k"]
    assert (gsm8k["dataset"], gsm8k["config"], gsm8k["split"]) == ("openai/gsm8k", "main", "test")
    assert (gsm8k["prompt_column"], gsm8k["text_column"]) == ("question", "answer")
    assert 1024 <= config["tokenize"]["seq_len"] <= 2048
    assert 100 <= config["tokenize"]["max_sequences"] <= 1000
    assert config["resources"]["gpu"] >= 1


@pytest.mark.parametrize("study", STUDIES, ids=lambda path: path.stem)
def test_study_covers_the_axes(study, registry):
    models = filled(study, registry)["models"]
    assert all(entry["dtype"] == "bfloat16" for entry in models.values())
    assert {entry["arch"] for entry in models.values()} == {"dense", "moe", "ssm", "hybrid"}
    assert len({entry["generation"] for entry in models.values()}) >= 8
    releases = sorted(entry["release"] for entry in models.values())
    assert releases[0] < "2020" and releases[-1] >= "2025"

    pairs = {name: entry["base_model"] for name, entry in models.items() if "base_model" in entry}
    assert pairs, "at least one base/tuned pair"
    for tuned, base in pairs.items():
        assert models[tuned]["tuning"] == "tuned" and models[base]["tuning"] == "base"

    runs: dict[str, list[int]] = {}
    for name, entry in models.items():
        if "checkpoint_of" in entry:
            assert entry["checkpoint_of"] in models, name
            assert entry["hf_id"] == models[entry["checkpoint_of"]]["hf_id"], name
            runs.setdefault(entry["checkpoint_of"], []).append(entry["training_step"])
            revision = entry.get("revision")
            if (
                revision is not None
            ):  # revisions name their step: step{N} / stage1-step{N}-tokens{M}B
                assert re.search(rf"(^|-)step{entry['training_step']}(-|$)", revision), name
    assert runs, "at least one training trajectory"
    for run, steps in runs.items():
        assert len(steps) == len(set(steps)) >= 4, run


def test_paper_scope(registry):
    models = filled(PAPER, registry)["models"]
    assert len(models) >= 80
    assert max(entry["total_params"] for entry in models.values()) >= 7e10
    pythia = [e for e in models.values() if e.get("checkpoint_of") == "pythia-410m"]
    assert 6 <= len(pythia) <= 8
    assert sum(1 for entry in models.values() if "base_model" in entry) >= 10
    families = {entry["family"] for entry in models.values()}
    for family in ("GPT-2", "OPT", "Pythia", "Llama", "Mistral", "Qwen", "Gemma", "Phi", "OLMo"):
        assert family in families, family
    for generation in ("Mamba-1", "Mamba-2", "Falcon-Mamba", "Jamba-1", "Zamba2", "Mixtral"):
        assert generation in {entry["generation"] for entry in models.values()}, generation


@pytest.mark.parametrize("study", STUDIES, ids=lambda path: path.stem)
def test_resources_fit_the_models(study, registry):
    """bf16 weights (2 B/param) plus headroom fit the GPUs asked for, and no more than needed."""
    for name, entry in load(study)["models"].items():
        params = registry_record(registry, entry["hf_id"])["total_params"]
        resources = entry["resources"]
        weights = 2 * params
        assert weights * 1.05 + 2e9 <= resources["gpu"] * GPU_BYTES, name
        assert resources["gpu"] == max(
            1, math.ceil((weights + max(4e9, 0.08 * weights)) / GPU_BYTES)
        )
        assert resources["mem_mb"] >= 16000 and resources["runtime"] >= 30, name
        if params >= 6.5e10:
            assert resources["gpu"] == 2, f"{name}: a 70B-class model gets 2 x 80 GB"


def test_single_gpu_subset(registry):
    paper = load(PAPER)["models"]
    single = filled(SINGLE_GPU, registry)["models"]
    for name, entry in single.items():
        assert name in paper, f"{name} is not in studies/paper.yaml"
        assert (entry["hf_id"], entry.get("revision")) == (
            paper[name]["hf_id"],
            paper[name].get("revision"),
        )
        assert entry["resources"]["gpu"] == 1, name
        assert entry["gated"] is False, f"{name}: the single-GPU study runs without an HF token"
    weights_gb = sum(2 * entry["total_params"] for entry in single.values()) / 1e9
    assert weights_gb < 120, "downloads of the single-GPU study stay small"


# --------------------------------------------------------------------------- dry run


def _included_rule_files() -> list[Path]:
    included = re.findall(r'^include:\s*"([^"]+)"', SNAKEFILE.read_text(), flags=re.MULTILINE)
    return [SNAKEFILE.parent / path for path in included]


def _workflow_complete() -> tuple[bool, str]:
    if not SNAKEFILE.exists():
        return False, f"{SNAKEFILE} does not exist yet"
    missing = [str(path) for path in _included_rule_files() if not path.exists()]
    if missing:
        return False, f"Snakefile includes missing files: {', '.join(missing)}"
    return True, ""


def parse_job_stats(output: str) -> dict[str, int]:
    """The rule -> job count table that Snakemake prints after 'Job stats:'."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    counts: dict[str, int] = {}
    for line in lines[start + 1 :]:
        fields = line.split()
        if not fields:
            if counts:
                break
            continue
        if len(fields) == 2 and fields[1].isdigit():
            counts[fields[0]] = int(fields[1])
    return counts


def expected_jobs(config: dict) -> dict[str, int]:
    tokenize = {"max_sequences": 64, **config.get("tokenize", {})}
    extract = {"shard_sequences": 32, **config.get("extract", {})}
    n_shards = math.ceil(tokenize["max_sequences"] / extract["shard_sequences"])
    n_models, n_workloads = len(config["models"]), len(config["workloads"])
    pairs = n_models * n_workloads
    return {
        "workload": n_workloads,
        "describe_model": n_models,
        "tokenize": pairs,
        "extract": pairs * n_shards,
        "score": pairs,
        "aggregate": 1,
        "figures": 1,
    }


def test_parse_job_stats():
    output = (
        "Building DAG of jobs...\nJob stats:\njob       count\n------  -------\n"
        "all           1\nextract      12\ntotal        13\n\nrule extract:\n"
    )
    assert parse_job_stats(output) == {"all": 1, "extract": 12, "total": 13}


def _snakemake_command() -> list[str]:
    script = Path(sys.executable).with_name("snakemake")
    return [str(script)] if script.exists() else [sys.executable, "-m", "snakemake"]


@pytest.mark.parametrize("study", STUDIES, ids=lambda path: path.stem)
def test_dry_run_plans_the_expected_jobs(study, tmp_path):
    complete, reason = _workflow_complete()
    if not complete:
        pytest.skip(reason)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [
        *_snakemake_command(),
        "--dry-run",
        "--snakefile",
        str(SNAKEFILE),
        "--configfile",
        str(study),
        "--directory",
        str(tmp_path),
        "--cores",
        "1",
    ]
    start = time.monotonic()
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    elapsed = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert elapsed < DRY_RUN_LIMIT_S, f"dry run took {elapsed:.0f} s"
    counts = parse_job_stats(output)
    expected = expected_jobs(load(study))
    assert {rule: counts.get(rule, 0) for rule in expected} == expected
    assert not [rule for rule in counts if "zoo" in rule or "train" in rule], counts
    assert counts["total"] == sum(counts[rule] for rule in counts if rule != "total")
