# Stage 4: per-layer curves and early-exit headline numbers with bootstrap CIs.


rule score:
    input:
        shards=lens_shards,
        tokens="results/tokens/{model}/{workload}.parquet",
        model_info="results/models/{model}.json",
        workload="results/workloads/{workload}.json",
    output:
        curves="results/scores/{model}/{workload}.parquet",
        headline="results/scores/{model}/{workload}.json",
    log:
        "results/logs/score/{model}/{workload}.log",
    benchmark:
        "results/benchmarks/score/{model}/{workload}.tsv"
    conda:
        "../../envs/exitbench.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        source=model_source,
        score=config["score"],
        seq_len=config["tokenize"]["seq_len"],
        seed=config["seed"],
    script:
        "../scripts/score.py"
