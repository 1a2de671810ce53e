"""Snakemake adapter: the study's files -> figures/<stem>.pdf and .png for every figure."""

from pathlib import Path

from exitbench import logs, plots

logs.setup(snakemake.log[0])  # noqa: F821
plots.figures_from_files(
    snakemake.input.summary,  # noqa: F821
    snakemake.input.curves,  # noqa: F821
    snakemake.input.headlines,  # noqa: F821
    snakemake.input.statistics,  # noqa: F821
    out_dir=Path(snakemake.output.pdfs[0]).parent,  # noqa: F821
    stems=snakemake.params.figures,  # noqa: F821
)
