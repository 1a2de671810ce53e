# Stage translators: the tuned lens's per-layer translators of each model, in tuned-lens's
# folder format (config.json, params.pt), trained on training documents only: a zoo model
# on the zoo's training windows, any other model on its workloads' calibration documents.
# A model with `tuned_lens: <folder>` copies that published lens after checking it.
from pathlib import Path

from exitbench.config import section_defaults
from exitbench.zoo import zoo_run_dir

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


rule translators:
    input:
        model_info="results/models/{model}.json",
        weights=model_files("weights"),
        training=translator_training,
    output:
        directory("results/translators/{model}"),
    log:
        "results/logs/translators/{model}.log",
    benchmark:
        "results/benchmarks/translators/{model}.tsv"
    conda:
        "../../envs/exitbench.yaml"
    # one thread: on a shared 2-core machine two threads per job run several times slower
    threads: 1
    resources:
        gpu=extract_resource("gpu"),
        mem_mb=extract_resource("mem_mb"),
        runtime=extract_resource("runtime"),
        cpus_per_gpu=extract_resource("cpus_per_gpu"),
        gpu_model=extract_resource("gpu_model"),
    params:
        source=model_source,
        tuned_lens=lambda wildcards: config["models"][wildcards.model].get("tuned_lens"),
        zoo=lambda wildcards: is_zoo_model(wildcards.model),
        corpora=list((config.get("zoo") or {}).get("corpora") or {}),
        calibration_fraction=config["score"]["calibration_fraction"],
        seed=config["seed"],
        **{key: TRANSLATORS[key] for key in TRAINING_KEYS},
    script:
        "../scripts/translators.py"
