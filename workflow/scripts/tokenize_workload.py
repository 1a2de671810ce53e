"""Snakemake adapter: cut one workload into token windows with one model's tokenizer."""

from exitbench import logs, models, provenance, tokens

logs.setup(snakemake.log[0])  # noqa: F821
name, source = snakemake.wildcards.model, snakemake.params.source  # noqa: F821
model_info = provenance.read_json(snakemake.input.model_info)  # noqa: F821
stats = tokens.tokenize_workload(
    snakemake.input.workload,  # noqa: F821
    models.load_tokenizer(name, source),
    snakemake.output.table,  # noqa: F821
    max_positions=model_info["max_positions"],
    **snakemake.params.tokenize,  # noqa: F821
)
provenance.write_json(stats, snakemake.output.stats)  # noqa: F821
