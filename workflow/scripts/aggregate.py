"""Snakemake adapter: every pair's score JSON -> results/summary.* and results/statistics.*."""

from exitbench import aggregate, logs

logs.setup(snakemake.log[0])  # noqa: F821
pairs = [tuple(pair) for pair in snakemake.params.pairs]  # noqa: F821
aggregate.aggregate_files(
    dict(zip(pairs, snakemake.input.scores, strict=True)),  # noqa: F821
    snakemake.params.metadata,  # noqa: F821
    dict(zip(snakemake.params.models, snakemake.input.models, strict=True)),  # noqa: F821
    summary_parquet=snakemake.output.summary,  # noqa: F821
    summary_csv=snakemake.output.summary_csv,  # noqa: F821
    statistics_csv=snakemake.output.statistics,  # noqa: F821
    statistics_json=snakemake.output.statistics_json,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    log_dir=snakemake.params.log_dir,  # noqa: F821
)
