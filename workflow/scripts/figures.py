"""Snakemake adapter: the study's files -> figures/<stem>.pdf and .png for every figure."""

from pathlib import Path

from exitbench import logs, plots

logs.setup(snakemake.log[0])
plots.figures_from_files(
    snakemake.input.summary,
    snakemake.input.curves,
    snakemake.input.headlines,
    snakemake.input.statistics,
    out_dir=Path(snakemake.output.pdfs[0]).parent,
    stems=snakemake.params.figures,
    decode_paths=snakemake.input.decode,
)
