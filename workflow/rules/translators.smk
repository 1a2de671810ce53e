# Stage translators: the tuned lens's per-layer translators of each model, in tuned-lens's
# folder format (config.json, params.pt), trained on training documents only: a zoo model
# on the zoo's training windows, any other model on its workloads' calibration documents.
# A model with `tuned_lens: <folder>` copies that published lens after checking it.
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
        gpu=translators_resource("gpu"),
        mem_mb=translators_resource("mem_mb"),
        runtime=translators_resource("runtime"),
        cpus_per_gpu=translators_resource("cpus_per_gpu"),
        gpu_model=translators_resource("gpu_model"),
    params:
        **{key: TRANSLATORS[key] for key in TRAINING_KEYS},
        source=model_source,
        tuned_lens=lambda wildcards: config["models"][wildcards.model].get("tuned_lens"),
        zoo=lambda wildcards: is_zoo_model(wildcards.model),
        corpora=list((config.get("zoo") or {}).get("corpora") or {}),
        calibration_fraction=config["score"]["calibration_fraction"],
        seed=config["seed"],
    script:
        "../scripts/translators.py"
