# Stage 3: the logit lens, one shard of windows per job (GPU where present); with
# `lenses: [logit, tuned]` the tuned lens's shard too, from the same forward passes.
TUNED_LENS = "tuned" in config["lenses"]


rule extract:
    input:
        tokens="results/tokens/{model}/{workload}.parquet",
        model_info="results/models/{model}.json",
        weights=model_files("weights"),
        translators=lambda wildcards: (
            [f"results/translators/{wildcards.model}"] if TUNED_LENS else []
        ),
    output:
        "results/lens/{model}/{workload}/shard-{shard}.parquet",
        **(
            {"tuned": "results/lens-tuned/{model}/{workload}/shard-{shard}.parquet"}
            if TUNED_LENS
            else {}
        ),
    log:
        "results/logs/extract/{model}/{workload}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/extract/{model}/{workload}/shard-{shard}.tsv"
    conda:
        "../../envs/exitbench.yaml"
    # one thread per job on a CPU-only study: two one-thread jobs finish sooner than one
    # two-thread job (the same shard either way), and they share cores with training
    threads: lambda wildcards, attempt: 2 if extract_resource("gpu")(wildcards, attempt) else 1
    resources:
        gpu=extract_resource("gpu"),
        mem_mb=extract_resource("mem_mb"),
        runtime=extract_resource("runtime"),
        cpus_per_gpu=extract_resource("cpus_per_gpu"),
        gpu_model=extract_resource("gpu_model"),
    # only what changes the shard's values: a rerun trigger; batch_size, token_chunk,
    # device and threads are speed and memory knobs the script reads from the config
    params:
        source=model_source,
        top_k=config["extract"]["top_k"],
        shard_sequences=config["extract"]["shard_sequences"],
        # seeds torch before loading, for any weight a checkpoint lacks
        seed=config["seed"],
    script:
        "../scripts/extract.py"
