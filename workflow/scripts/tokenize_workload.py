"""Snakemake adapter: cut one workload into token windows with one model's tokenizer."""

from exitbench import tokens

tokens.hide_torch()  # a tokenizer needs no torch; before exitbench.models imports transformers

from exitbench import logs, models, provenance  # noqa: E402

logs.setup(snakemake.log[0])
name, params = snakemake.wildcards.model, snakemake.params
model_info = provenance.read_json(snakemake.input.model_info)
stats = tokens.tokenize_workload(
    snakemake.input.workload,
    models.load_tokenizer(name, params.source),
    snakemake.output.table,
    seq_len=params.seq_len,
    max_sequences=params.max_sequences,
    mode=params.mode,
    add_bos=params.add_bos,
    max_positions=model_info["max_positions"],
    vocab_size=model_info["vocab_size"],
    model=name,
)
provenance.write_json(stats, snakemake.output.stats)
