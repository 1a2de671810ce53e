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
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=30,
    # the score settings by name: every one changes the numbers
    params:
        source=model_source,
        bootstrap=config["score"]["bootstrap"],
        calibration_fraction=config["score"]["calibration_fraction"],
        consistency_targets=config["score"]["consistency_targets"],
        thresholds=config["score"]["thresholds"],
        patience=config["score"]["patience"],
        check_every=config["score"]["check_every"],
        min_exit_layer=config["score"]["min_exit_layer"],
        state_cost=config["score"]["state_cost"],
        calibration=config["score"]["calibration"],
        seq_len=config["tokenize"]["seq_len"],
        seed=config["seed"],
    script:
        "../scripts/score.py"


# The same scoring of the tuned lens's shards (lenses: [logit, tuned]), beside the logit
# lens's: its head checks also pay the translator, 2 d^2 FLOPs each; its JSON says whether
# the translators trained on this workload's documents (translators_in_sample).
use rule score as score_tuned with:
    input:
        shards=tuned_lens_shards,
        tokens="results/tokens/{model}/{workload}.parquet",
        model_info="results/models/{model}.json",
        workload="results/workloads/{workload}.json",
        # its training_source.json: did they train on this workload's documents?
        translators="results/translators/{model}",
    output:
        curves="results/scores-tuned/{model}/{workload}.parquet",
        headline="results/scores-tuned/{model}/{workload}.json",
    log:
        "results/logs/score-tuned/{model}/{workload}.log",
    benchmark:
        "results/benchmarks/score-tuned/{model}/{workload}.tsv"
    params:
        lens="tuned",
