"""Snakemake adapter: logit vs tuned lens -> figures/lens_comparison, lens_headlines and
lens_trends."""

from pathlib import Path

from exitbench import logs, plots

logs.setup(snakemake.log[0])
out_dir = Path(snakemake.output.pdf).parent
plots.lens_comparison_from_files(
    {"logit": snakemake.input.summary, "tuned": snakemake.input.summary_tuned},
    {"logit": snakemake.input.curves, "tuned": snakemake.input.curves_tuned},
    out_dir=out_dir,
)
plots.lens_trends_from_files(
    {"logit": snakemake.input.statistics, "tuned": snakemake.input.statistics_tuned},
    out_dir=out_dir,
)
