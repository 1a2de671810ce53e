# Stage 8: realised decoding (full, early-exit, self-speculative) beside the lens's potential.


def decode_pairs():
    """(model, workload) pairs to decode: every model on decode.workloads (null: all)."""
    chosen = config["decode"]["workloads"]
    unknown = sorted(set(chosen or ()) - set(WORKLOADS))
    if unknown:
        raise ValueError(
            f"config key 'decode.workloads': {unknown} are not keys of 'workloads' "
            f"(known: {', '.join(WORKLOADS)})"
        )
    return [(m, w) for m, w in PAIRS if chosen is None or w in chosen]


def decode_outputs(wildcards=None):
    return [
        f"results/decode/{model}/{workload}.{ext}"
        for model, workload in decode_pairs()
        for ext in ("parquet", "json")
    ]


rule decode:
    input:
        tokens="results/tokens/{model}/{workload}.parquet",
        scores="results/scores/{model}/{workload}.parquet",
        headline="results/scores/{model}/{workload}.json",
        model_info="results/models/{model}.json",
        weights=model_files("weights"),
    output:
        table="results/decode/{model}/{workload}.parquet",
        summary="results/decode/{model}/{workload}.json",
    log:
        "results/logs/decode/{model}/{workload}.log",
    benchmark:
        "results/benchmarks/decode/{model}/{workload}.tsv"
    conda:
        "../../envs/exitbench.yaml"
    threads: 1
    resources:
        gpu=extract_resource("gpu"),
        mem_mb=extract_resource("mem_mb"),
        runtime=extract_resource("runtime"),
        cpus_per_gpu=extract_resource("cpus_per_gpu"),
        gpu_model=extract_resource("gpu_model"),
    # what changes the generated ids and counts; device is a speed knob read from the config
    params:
        source=model_source,
        prompts=config["decode"]["prompts"],
        prompt_tokens=config["decode"]["prompt_tokens"],
        new_tokens=config["decode"]["new_tokens"],
        methods=config["decode"]["methods"],
        state_strategy=config["decode"]["state_strategy"],
        target=config["decode"]["target"],
        k=config["decode"]["k"],
        gamma=config["decode"]["gamma"],
        calibration_fraction=config["score"]["calibration_fraction"],
        bootstrap=config["score"]["bootstrap"],
        seed=config["seed"],
    script:
        "../scripts/decode.py"
