# Config validation and input functions shared by every stage.
import json
import os
import re
from pathlib import Path

from snakemake.logging import logger

from exitbench.config import (
    ConfigError,
    check_config_files,
    check_writable,
    n_lens_shards,
    resolve_path,
    section_defaults,
    validate_config,
)
from exitbench.architectures import ARCHITECTURES, decode_refusal
from exitbench.provenance import model_input_files
from exitbench.registry import fill_metadata, load_registry, registry_record
from exitbench.resources import extract_resources, translators_resources
from exitbench.zoo import zoo_run_dir

# Snakemake's YAML loader keeps the last of a key given twice: re-read them strictly
check_config_files(workflow.configfiles)
config.update(validate_config(config))
REGISTRY = load_registry(resolve_path(config["registry"]))
config["models"] = fill_metadata(config["models"], REGISTRY)

MODELS = list(config["models"])
WORKLOADS = list(config["workloads"])
PAIRS = [(model, workload) for model in MODELS for workload in WORKLOADS]
N_SHARDS = n_lens_shards(config)
FIGURES = [
    "agreement_curves",
    "release_trend",
    "arch_comparison",
    "params_trend",
    "base_vs_tuned",
    "checkpoints",
    "control_vs_base",
    "saturation_hist",
    "tradeoff",
    "decode_realised",
    "speculative_k",
]
#: lenses: [logit, tuned]: the figures of rule figures_lenses
LENS_FIGURES = ["lens_comparison", "lens_headlines", "lens_trends"]
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


def model_files(kind):
    """Input function: the files of a model's local folder that ``kind`` reads
    (``config``, ``tokenizer`` or ``weights``; exitbench.provenance.MODEL_FILE_PATTERNS),
    so that editing one in place reruns what reads it. A zoo model depends on its run's
    directory (the zoo_train output); a hub model on nothing local (its params key it).
    """

    def get(wildcards):
        local = model_local_input(wildcards.model)
        if local is None:
            return []
        if zoo_run_dir(local) is not None:
            return [local]
        return model_input_files(local, kind)

    return get


def workload_file(wildcards):
    """A ``file`` workload's file, so that editing it in place rebuilds the workload."""
    spec = config["workloads"][wildcards.workload]
    if spec["source"] != "file":
        return []
    # as written where it exists (a relative path stays relative: a copied study is the same)
    path = (
        Path(spec["path"])
        if Path(spec["path"]).is_file()
        else resolve_path(spec["path"])
    )
    if not path.is_file():
        raise ConfigError(
            f"config key 'workloads.{wildcards.workload}.path': file {spec['path']!r} does "
            "not exist (expected a .txt, .jsonl or .parquet file, relative to the working "
            "directory or the workflow)"
        )
    return [str(path)]


def unknown_name(wildcards):
    """Input function of unknown_target.smk: raise, naming the known models and workloads."""
    parts = wildcards.name.split("/")
    model = parts[0]
    workload = re.sub(r"\.(parquet|json)$", "", parts[1]) if len(parts) > 1 else ""
    section, name = (
        ("models", model) if model not in MODELS else ("workloads", workload)
    )
    raise ConfigError(
        f"target results/{wildcards.stage}/{wildcards.name}: {name!r} is not a key of the "
        f"config's {section}: section (known models: {', '.join(MODELS)}; known workloads: "
        f"{', '.join(WORKLOADS)})"
    )


# a read-only results/ fails here, naming it, not in a Snakemake traceback mid-run
if not workflow.dryrun:
    check_writable("results")


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


def translators_resource(key):
    """Per-model cluster request for a translators job: extract's formula plus the training
    state and FLOPs of the config's translators: settings (exitbench.resources)."""

    def get(wildcards, attempt):
        entry = config["models"][wildcards.model]
        settings = config["resources"]
        training = config.get("translators") or section_defaults("translators")
        return translators_resources(entry, attempt, settings, training).get(key)

    return get


# Tuned lens (translators.smk, score.smk)
LENSES = config.get("lenses") or ["logit"]
TRANSLATORS = config.get("translators") or section_defaults("translators")
# the training settings by name: each changes the translators (device is a speed knob)
TRAINING_KEYS = (
    "steps",
    "tokens_per_step",
    "learning_rate",
    "momentum",
    "weight_decay",
    "max_grad_norm",
)


def is_zoo_model(model):
    path = config["models"][model].get("path")
    return path is not None and zoo_run_dir(path) is not None


def translator_training(wildcards):
    """What the translators train on: the zoo's data, or the model's tokens per workload;
    nothing for a published lens (its files, where they exist, so an edit reruns)."""
    published = config["models"][wildcards.model].get("tuned_lens")
    if published:
        files = [Path(published) / name for name in ("config.json", "params.pt")]
        return [str(path) for path in files if path.is_file()]
    if is_zoo_model(wildcards.model):
        return ["results/zoo/data"]
    return expand(
        "results/tokens/{model}/{workload}.parquet",
        model=wildcards.model,
        workload=WORKLOADS,
    )


def tuned_lens_shards(wildcards):
    return expand(
        "results/lens-tuned/{model}/{workload}/shard-{shard}.parquet",
        model=wildcards.model,
        workload=wildcards.workload,
        shard=range(N_SHARDS),
    )


# Realised decoding (decode.smk, rule all)
def decode_pairs():
    """(model, workload) pairs to decode: every model on decode.workloads (null: all)."""
    chosen = config["decode"]["workloads"]
    unknown = sorted(set(chosen or ()) - set(WORKLOADS))
    if unknown:
        raise ValueError(
            f"config key 'decode.workloads': {unknown} are not keys of 'workloads' "
            f"(known: {', '.join(WORKLOADS)})"
        )
    return [
        (m, w)
        for m, w in PAIRS
        if (chosen is None or w in chosen) and m not in DECODE_REFUSED
    ]


def planned_model_type(name):
    """A model's model_type as known before anything runs: a hub model's registry row, a
    local folder's config.json (a zoo run's recipe is never a hybrid); None if unknown.
    """
    entry = config["models"][name]
    if entry.get("hf_id"):
        record = registry_record(REGISTRY, entry["hf_id"])
        return record.get("model_type") if record else None
    if entry.get("path") and zoo_run_dir(entry["path"]) is None:
        config_json = Path(entry["path"]) / "config.json"
        if config_json.is_file():
            return json.loads(config_json.read_text()).get("model_type")
    return None


def decode_refused():
    """{model: why} for the models decode cannot run: they get no decode job, their summary's
    decode columns stay empty, and every Snakemake invocation says so once."""
    refused = {}
    for name in MODELS:
        model_type = planned_model_type(name)
        if model_type in ARCHITECTURES and decode_refusal(model_type):
            refused[name] = decode_refusal(model_type)
    for name, why in refused.items():
        logger.warning(f"decode: no decode job for model {name!r}: {why}")
    return refused


DECODE_REFUSED = decode_refused()


def decode_outputs(wildcards=None):
    return [
        f"results/decode/{model}/{workload}.{ext}"
        for model, workload in decode_pairs()
        for ext in ("parquet", "json")
    ]
