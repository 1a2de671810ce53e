"""Real study configs: schema-valid, cover the study's axes, sized to their GPUs, and (once the
workflow is complete) plan the expected jobs in a Snakemake dry run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml
from cluster import harness  # tests/cluster/harness.py (tests/ is on sys.path)

from exitbench.config import validate_config
from exitbench.registry import fill_metadata, load_registry, registry_record
from exitbench.resources import extract_resources, translators_resources
from exitbench.selection import SIZE_BANDS, size_band

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "studies" / "paper.yaml"
SINGLE_GPU = REPO / "studies" / "single-gpu.yaml"
STUDIES = [PAPER, SINGLE_GPU]
SNAKEFILE = REPO / "Snakefile"
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

    pairs = {
        name: entry["base_model"]
        for name, entry in models.items()
        if "base_model" in entry and not entry.get("control")
    }
    assert pairs, "at least one base/tuned pair"
    for tuned, base in pairs.items():
        assert models[tuned]["tuning"] == "tuned" and models[base]["tuning"] == "base"
    for name, entry in models.items():
        if entry.get("control"):  # a positive control sits beside its base
            assert models[entry["base_model"]]["tuning"] == "base", name

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


# Models of studies/paper.yaml: the dry run plans one describe_model job per model and
# (models x 4 workloads) tokenize/score jobs, x 2 shards of extract jobs.
PAPER_MODELS = 130


def test_paper_scope(registry):
    models = filled(PAPER, registry)["models"]
    assert len(models) == PAPER_MODELS
    assert max(entry["total_params"] for entry in models.values()) >= 7e10
    pythia = [e for e in models.values() if e.get("checkpoint_of") == "pythia-410m"]
    assert 6 <= len(pythia) <= 8
    assert sum(1 for entry in models.values() if "base_model" in entry) >= 10
    families = {entry["family"] for entry in models.values()}
    for family in ("GPT-2", "OPT", "Pythia", "Llama", "Mistral", "Qwen", "Gemma", "Phi", "OLMo"):
        assert family in families, family
    for generation in ("Mamba-1", "Mamba-2", "Falcon-Mamba", "Jamba-1", "Zamba2", "Mixtral"):
        assert generation in {entry["generation"] for entry in models.values()}, generation


def test_paper_positive_controls(registry):
    """Meta's LayerSkip checkpoints beside their bases, marked as controls (issue 14)."""
    models = filled(PAPER, registry)["models"]
    controls = {name: entry for name, entry in models.items() if entry.get("control")}
    assert {name: entry["base_model"] for name, entry in controls.items()} == {
        "layerskip-llama2-7b": "llama-2-7b",
        "layerskip-llama2-13b": "llama-2-13b",
        "layerskip-llama3-8b": "llama-3-8b",
        "layerskip-llama3.2-1b": "llama-3.2-1b",
    }
    for name, entry in controls.items():
        assert entry["hf_id"].startswith("facebook/layerskip-"), name
        assert entry["gated"] is True and entry["tuning"] == "base", name
        assert entry["total_params"] == models[entry["base_model"]]["total_params"], name
    assert not any(entry.get("control") for entry in load(SINGLE_GPU)["models"].values())


def test_paper_runs_both_lenses_with_the_tuned_lens_defaults(registry):
    """The paper study trains the tuned lens's translators with tuned-lens's own defaults
    (250 steps of 2^18 tokens, issue 12); the single-GPU study's two hours cannot afford
    them (the README gives its ~110 GPU-hours), so it keeps the logit lens only."""
    paper = filled(PAPER, registry)
    assert paper["lenses"] == ["logit", "tuned"]
    assert (paper["translators"]["steps"], paper["translators"]["tokens_per_step"]) == (250, 2**18)
    single = filled(SINGLE_GPU, registry)
    assert single["lenses"] == ["logit"]
    hours = sum(
        translators_resources(entry, 1, single["resources"], paper["translators"])["runtime"]
        for entry in single["models"].values()
    )
    assert hours / 60 > 2 * 20, "translators alone would exceed the single-GPU budget 20 times"


def test_paper_translators_fit_their_gpus(registry):
    """Each translators job holds the (loaded) weights, the translators' fp32 training state
    and one forward pass; 70-72B models need a third 85 GB GPU for it, nothing needs four."""
    config = filled(PAPER, registry)
    card_gb = config["resources"]["gpu_memory_gb"]
    for name, entry in config["models"].items():
        planned = translators_resources(entry, 1, config["resources"], config["translators"])
        state_gb = 12 * entry["layers"] * (entry["hidden"] ** 2 + entry["hidden"]) / 1e9
        weights_gb = 2 * (entry.get("multimodal_params") or entry["total_params"]) / 1e9
        assert weights_gb + state_gb <= planned["gpu"] * card_gb, name
        assert planned["gpu"] >= extract_resources(entry, 1, config["resources"])["gpu"], name
        if entry["total_params"] >= 6.5e10:
            assert planned["gpu"] == 3, f"{name}: a 70B-class model's translators get 3 x 85 GB"
        assert planned["gpu"] <= 3, name


def test_codestral_mamba_is_pinned_to_its_transformers_branch():
    """transformers' Mamba2 docs load Mamba-Codestral from the PR branch refs/pr/9 (the repo's
    main holds mistral-inference's files); the loader passes the revision through."""
    entry = load(PAPER)["models"]["codestral-mamba-7b"]
    assert (entry["hf_id"], entry["revision"]) == ("mistralai/Mamba-Codestral-7B-v0.1", "refs/pr/9")


def test_paper_generations_are_size_balanced(registry):
    """Qwen1.5, Qwen2, Qwen2.5 and the Llama-3.x generations each reach 70-72B; the 2021-2023
    gap holds GPT-J, GPT-NeoX-20B and Falcon-7B; every size band holds several generations."""
    models = filled(PAPER, registry)["models"]
    largest: dict[str, float] = {}
    for entry in models.values():
        if not entry.get("control") and "checkpoint_of" not in entry:
            generation = entry["generation"]
            largest[generation] = max(largest.get(generation, 0.0), entry["total_params"])
    for generation in ("Qwen1.5", "Qwen2", "Qwen2.5", "Llama-2", "Llama-3", "Llama-3.1"):
        assert largest[generation] >= 6.9e10, generation
    hub_types = {registry_record(registry, e["hf_id"])["model_type"] for e in models.values()}
    assert {"gptj", "gpt_neox", "falcon"} <= hub_types
    gap = {e["hf_id"] for e in models.values() if "2020" < e["release"] < "2023-07"}
    assert {"EleutherAI/gpt-j-6b", "EleutherAI/gpt-neox-20b", "tiiuae/falcon-7b"} <= gap
    bands: dict[str, set[str]] = {}
    for entry in models.values():
        band = size_band(entry["total_params"], entry.get("active_params"))
        bands.setdefault(band, set()).add(entry["generation"])
    assert set(bands) == {label for label, _ in SIZE_BANDS}
    assert all(len(generations) >= 5 for generations in bands.values()), bands


def lower_bound_gb(entry: dict, record: dict, config: dict) -> float:
    """What one extract job needs on its GPUs at the least: the bf16 weights plus the hidden
    states of every layer for one batch (registry layers and hidden size), in GB."""
    weights = 2 * entry["total_params"]
    tokens = config["extract"]["batch_size"] * config["tokenize"]["seq_len"]
    layers, hidden = record.get("layers"), record.get("hidden")
    states = (layers + 1) * tokens * hidden * 2 if layers and hidden else 0
    return (weights + states) / 1e9


@pytest.mark.parametrize("study", STUDIES, ids=lambda path: path.stem)
def test_resources_fit_the_models(study, registry):
    """Each model's planned request holds what it needs, and asks for more than the study's
    floor of GPUs only where fewer could not hold the weights and hidden states."""
    config = filled(study, registry)
    settings = config["resources"]
    card_gb = settings["gpu_memory_gb"]
    for name, entry in config["models"].items():
        planned = extract_resources(entry, 1, settings)
        need_gb = lower_bound_gb(entry, registry_record(registry, entry["hf_id"]), config)
        assert need_gb <= planned["gpu"] * card_gb, f"{name}: {need_gb:.0f} GB"
        if planned["gpu"] > settings["gpu"]:
            assert need_gb > (planned["gpu"] - 1) * card_gb, f"{name}: a GPU too many"
        assert planned["mem_mb"] >= 16000 and planned["runtime"] >= 30, name
        if entry["total_params"] >= 6.5e10:
            assert planned["gpu"] == 2, f"{name}: a 70B-class model gets 2 x 80 GB"


def test_single_gpu_subset(registry):
    paper = load(PAPER)["models"]
    config = filled(SINGLE_GPU, registry)
    single = config["models"]
    for name, entry in single.items():
        assert name in paper, f"{name} is not in studies/paper.yaml"
        assert (entry["hf_id"], entry.get("revision")) == (
            paper[name]["hf_id"],
            paper[name].get("revision"),
        )
        assert extract_resources(entry, 1, config["resources"])["gpu"] == 1, name
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


def planned_jobs(output: str) -> list[dict]:
    """The jobs of a dry run's log: rule, wildcards and resources of each `rule NAME:` block."""
    jobs: list[dict] = []
    for line in output.splitlines():
        header = re.fullmatch(r"(?:local)?rule (\S+):", line)
        if header:
            jobs.append({"rule": header.group(1), "wildcards": {}, "resources": {}})
            continue
        field = re.fullmatch(r"    (wildcards|resources): (.*)", line)
        if jobs and field:
            pairs = (item.split("=", 1) for item in field.group(2).split(", "))
            jobs[-1][field.group(1)] = dict(pairs)
    return jobs


# Shards per (model, workload), as each study's comments promise: 256 / 128 and 128 / 128 windows.
SHARDS = {PAPER: 2, SINGLE_GPU: 1}


def _snakemake_command() -> list[str]:
    script = Path(sys.executable).with_name("snakemake")
    return [str(script)] if script.exists() else [sys.executable, "-m", "snakemake"]


@pytest.mark.parametrize("study", STUDIES, ids=lambda path: path.stem)
def test_dry_run_plans_the_expected_jobs(study, registry, tmp_path):
    complete, reason = _workflow_complete()
    if not complete:
        pytest.skip(reason)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **harness.NO_SLURM}
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
    config = filled(study, registry)
    models, workloads = list(config["models"]), list(config["workloads"])
    pairs = {(model, workload) for model in models for workload in workloads}
    jobs = planned_jobs(output)
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        by_rule.setdefault(job["rule"], []).append(job)
    assert not [rule for rule in by_rule if "zoo" in rule or "train" in rule], sorted(by_rule)

    def keys(rule: str, *names: str) -> list[tuple]:
        return [tuple(job["wildcards"][name] for name in names) for job in by_rule[rule]]

    # exactly one job per model, pair and shard: no duplicates, none missing
    assert sorted(keys("workload", "workload")) == sorted((w,) for w in workloads)
    assert sorted(keys("describe_model", "model")) == sorted((m,) for m in models)
    assert sorted(keys("tokenize", "model", "workload")) == sorted(pairs)
    assert sorted(keys("score", "model", "workload")) == sorted(pairs)
    shards = [(m, w, str(k)) for m, w in pairs for k in range(SHARDS[study])]
    assert sorted(keys("extract", "model", "workload", "shard")) == sorted(shards)
    assert len(by_rule["aggregate"]) == len(by_rule["figures"]) == 1
    if "tuned" in config["lenses"]:  # one translators job per model, a tuned score per pair
        assert sorted(keys("translators", "model")) == sorted((m,) for m in models)
        assert sorted(keys("score_tuned", "model", "workload")) == sorted(pairs)
        assert len(by_rule["figures_lenses"]) == 1
    else:
        assert not {"translators", "score_tuned", "figures_lenses"} & set(by_rule)
    if study == PAPER:  # the job count, written out: 130 models x 4 workloads x 2 shards
        assert len(models) == PAPER_MODELS
        assert len(by_rule["extract"]) == PAPER_MODELS * 4 * 2 == 1040
        assert len(by_rule["score"]) == len(by_rule["tokenize"]) == PAPER_MODELS * 4
        assert len(by_rule["translators"]) == PAPER_MODELS == 130
        assert len(by_rule["score_tuned"]) == PAPER_MODELS * 4 == 520

    # each extract job asks for what exitbench.resources derives from the study's settings
    for job in by_rule["extract"]:
        entry = config["models"][job["wildcards"]["model"]]
        derived = extract_resources(entry, 1, config["resources"])
        planned = {key: int(job["resources"][key]) for key in ("gpu", "mem_mb", "runtime")}
        assert planned == {key: derived[key] for key in planned}, job["wildcards"]
    # ... and each translators job what it derives from the same settings and translators:
    for job in by_rule.get("translators", []):
        entry = config["models"][job["wildcards"]["model"]]
        derived = translators_resources(entry, 1, config["resources"], config["translators"])
        planned = {key: int(job["resources"][key]) for key in ("gpu", "mem_mb", "runtime")}
        assert planned == {key: derived[key] for key in planned}, job["wildcards"]
