"""Snakemake adapter: a model's architecture facts, from its config only (no weights)."""

from exitbench import logs, models, provenance

logs.setup(snakemake.log[0])
info = models.describe_model(snakemake.wildcards.model, snakemake.params.source)
provenance.write_json(info, snakemake.output[0])
