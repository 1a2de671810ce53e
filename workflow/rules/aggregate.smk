# Stage 5: one table of the whole study, and the statistics behind its claims.
from exitbench.aggregate import model_metadata


localrules:
    aggregate,


rule aggregate:
    input:
        scores=[f"results/scores/{model}/{workload}.json" for model, workload in PAIRS],
        models=expand("results/models/{model}.json", model=MODELS),
        # realised decoding (workflow/rules/decode.smk) joins the summary's decode_* columns
        decode=[f"results/decode/{m}/{w}.json" for m, w in decode_pairs()],
        # lenses: [logit, tuned]: the tuned lens's scores, summarised apart (same columns)
        tuned_scores=[
            f"results/scores-tuned/{model}/{workload}.json"
            for model, workload in (PAIRS if TUNED_LENS else [])
        ],
    output:
        **(
            {
                "summary_tuned": "results/summary-tuned.parquet",
                "summary_tuned_csv": "results/summary-tuned.csv",
                "statistics_tuned": "results/statistics-tuned.csv",
                "statistics_tuned_json": "results/statistics-tuned.json",
            }
            if TUNED_LENS
            else {}
        ),
        summary="results/summary.parquet",
        summary_csv=report(
            "results/summary.csv",
            caption="../report/summary.rst",
            category="Tables",
        ),
        statistics=report(
            "results/statistics.csv",
            caption="../report/statistics.rst",
            category="Tables",
        ),
        statistics_json="results/statistics.json",
    log:
        "results/logs/aggregate/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate/aggregate.tsv"
    conda:
        "../../envs/exitbench.yaml"
    params:
        pairs=PAIRS,
        decode_pairs=decode_pairs(),
        log_dir="results/logs",
        models=MODELS,
        # only what the summary shows: editing a model's resources reruns nothing here
        metadata=model_metadata(config["models"]),
        seed=config["seed"],
    script:
        "../scripts/aggregate.py"
