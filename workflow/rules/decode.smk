# Stage 8: realised decoding (full, early-exit, self-speculative) beside the lens's potential.


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
