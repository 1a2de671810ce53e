# Stage 1: documents of each workload (embedded corpus, local file or hub dataset).


rule workload:
    input:
        workload_file,
    output:
        table="results/workloads/{workload}.parquet",
        provenance="results/workloads/{workload}.json",
    log:
        "results/logs/workload/{workload}.log",
    benchmark:
        "results/benchmarks/workload/{workload}.tsv"
    conda:
        "../../envs/exitbench.yaml"
    # every key of a workloads entry decides which documents it holds
    params:
        spec=lambda wildcards: config["workloads"][wildcards.workload],
        seed=config["seed"],
    script:
        "../scripts/workload.py"
