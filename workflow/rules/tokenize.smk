# Stage 2: fixed-length token windows with each model's own tokenizer.


rule tokenize:
    input:
        workload="results/workloads/{workload}.parquet",
        model_info="results/models/{model}.json",
        tokenizer=model_files("tokenizer"),
    output:
        table="results/tokens/{model}/{workload}.parquet",
        stats="results/tokens/{model}/{workload}.json",
    log:
        "results/logs/tokenize/{model}/{workload}.log",
    benchmark:
        "results/benchmarks/tokenize/{model}/{workload}.tsv"
    conda:
        "../../envs/exitbench.yaml"
    params:
        source=model_source,
        seq_len=config["tokenize"]["seq_len"],
        max_sequences=config["tokenize"]["max_sequences"],
        mode=config["tokenize"]["mode"],
        add_bos=config["tokenize"]["add_bos"],
    script:
        "../scripts/tokenize_workload.py"
