# exitbench: how much early-exit potential do causal language models leave?
# Stages (one file each in workflow/rules): workload -> tokenize -> extract -> score
# -> aggregate -> figures; describe_model reads each model's config, zoo trains the
# embedded default's models.
from exitbench.aggregate import write_failure_summary
from snakemake.utils import min_version

min_version("9.0")


# A study given with --configfile replaces the default study instead of being
# merged into it (Snakemake would otherwise add config.yaml's zoo models to it).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/zoo.smk"
include: "workflow/rules/workload.smk"
include: "workflow/rules/describe_model.smk"
include: "workflow/rules/tokenize.smk"
include: "workflow/rules/translators.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/decode.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/unknown_target.smk"


report: "workflow/report/workflow.rst"


# after a failed run (say, --keep-going with a gated model), still write the summary:
# every finished pair with its numbers, every failed one with its first error line
onerror:
    write_failure_summary(config)


rule all:
    default_target: True
    input:
        "results/summary.parquet",
        "results/summary.csv",
        expand("figures/{figure}.{ext}", figure=FIGURES, ext=["pdf", "png"]),
        expand("figures/{figure}.{ext}", figure=LENS_FIGURES, ext=["pdf", "png"])
        if TUNED_LENS
        else [],
        decode_outputs(),
