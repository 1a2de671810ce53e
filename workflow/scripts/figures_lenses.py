"""Snakemake adapter: logit vs tuned lens -> figures/lens_comparison.pdf and .png."""

from pathlib import Path

from exitbench import logs, plots

logs.setup(snakemake.log[0])
plots.lens_comparison_from_files(
    {"logit": snakemake.input.summary, "tuned": snakemake.input.summary_tuned},
    {"logit": snakemake.input.curves, "tuned": snakemake.input.curves_tuned},
    out_dir=Path(snakemake.output.pdf).parent,
)
