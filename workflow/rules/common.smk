# Config validation and input functions shared by every stage.
import math
import re
from pathlib import Path

from exitbench.config import ConfigError, resolve_path, validate_config
from exitbench.registry import fill_metadata, load_registry
from exitbench.resources import extract_resources
from exitbench.zoo import zoo_run_dir

config.update(validate_config(config))
config["models"] = fill_metadata(
    config["models"], load_registry(resolve_path(config["registry"]))
)

MODELS = list(config["models"])
WORKLOADS = list(config["workloads"])
PAIRS = [(model, workload) for model in MODELS for workload in WORKLOADS]
N_SHARDS = math.ceil(
    config["tokenize"]["max_sequences"] / config["extract"]["shard_sequences"]
)
FIGURES = [
    "agreement_curves",
    "release_trend",
    "arch_comparison",
    "params_trend",
    "base_vs_tuned",
    "checkpoints",
    "saturation_hist",
    "tradeoff",
]
LOAD_KEYS = ("path", "hf_id", "revision", "dtype")


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    workload="|".join(map(re.escape, WORKLOADS)),
    shard=r"\d+",


def model_local_input(name):
    """The local folder a model loads from (a zoo run's directory for zoo models), or None."""
    path = config["models"][name].get("path")
    if path is None:
        return None
    run_dir = zoo_run_dir(path)
    if run_dir is not None:
        return run_dir
    if not Path(path).exists():
        raise ConfigError(
            f"config key 'models.{name}.path': folder {path!r} does not exist "
            "(expected a save_pretrained folder with config.json, or a zoo output "
            "under results/zoo/<run>/)"
        )
    return path


for _name in MODELS:
    model_local_input(_name)


def model_inputs(wildcards):
    """Inputs that make a model loadable: its local folder, if it has one."""
    local = model_local_input(wildcards.model)
    return [local] if local else []


def model_source(wildcards):
    """Only the keys that decide which weights load: stable params, so metadata edits rerun nothing."""
    entry = config["models"][wildcards.model]
    return {key: entry[key] for key in LOAD_KEYS if key in entry}


def lens_shards(wildcards):
    return expand(
        "results/lens/{model}/{workload}/shard-{shard}.parquet",
        model=wildcards.model,
        workload=wildcards.workload,
        shard=range(N_SHARDS),
    )


def extract_resource(key):
    """Per-model cluster request for an extract job (exitbench.resources), by attempt."""

    def get(wildcards, attempt):
        entry = config["models"][wildcards.model]
        # None (no such resource) where the model names no GPU type
        return extract_resources(entry, attempt, config["resources"]).get(key)

    return get
