"""Snakemake adapter: every pair's score JSON -> results/summary.* and results/statistics.*."""

from exitbench import aggregate, logs

logs.setup(snakemake.log[0])
pairs = [tuple(pair) for pair in snakemake.params.pairs]
aggregate.aggregate_files(
    dict(zip(pairs, snakemake.input.scores, strict=True)),
    snakemake.params.metadata,
    dict(zip(snakemake.params.models, snakemake.input.models, strict=True)),
    summary_parquet=snakemake.output.summary,
    summary_csv=snakemake.output.summary_csv,
    statistics_csv=snakemake.output.statistics,
    statistics_json=snakemake.output.statistics_json,
    seed=snakemake.params.seed,
    log_dir=snakemake.params.log_dir,
    decode_jsons={
        tuple(pair): path
        for pair, path in zip(snakemake.params.decode_pairs, snakemake.input.decode, strict=True)
    },
)
if "summary_tuned" in snakemake.output.keys():  # lenses: [logit, tuned]
    aggregate.aggregate_files(
        dict(zip(pairs, snakemake.input.tuned_scores, strict=True)),
        snakemake.params.metadata,
        dict(zip(snakemake.params.models, snakemake.input.models, strict=True)),
        summary_parquet=snakemake.output.summary_tuned,
        summary_csv=snakemake.output.summary_tuned_csv,
        statistics_csv=snakemake.output.statistics_tuned,
        statistics_json=snakemake.output.statistics_tuned_json,
        seed=snakemake.params.seed,
        log_dir=snakemake.params.log_dir,
        lens="tuned",
    )
