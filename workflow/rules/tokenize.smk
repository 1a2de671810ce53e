# Stage 2: fixed-length token windows with each model's own tokenizer.


rule describe_model:
    input:
        model_inputs,
    output:
        "results/models/{model}.json",
    log:
        "results/logs/describe_model/{model}.log",
    conda:
        "../../envs/exitbench.yaml"
    params:
        source=model_source,
    script:
        "../scripts/describe_model.py"


rule tokenize:
    input:
        workload="results/workloads/{workload}.parquet",
        model_info="results/models/{model}.json",
        weights=model_inputs,
    output:
        table="results/tokens/{model}/{workload}.parquet",
        stats="results/tokens/{model}/{workload}.json",
    log:
        "results/logs/tokenize/{model}/{workload}.log",
    conda:
        "../../envs/exitbench.yaml"
    params:
        source=model_source,
        tokenize=config["tokenize"],
    script:
        "../scripts/tokenize_workload.py"
