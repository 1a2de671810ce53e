"""Snakemake adapter: logit-lens reductions for one shard of windows."""

from exitbench import extract, logs

logs.setup(snakemake.log[0])
# speed and memory knobs come from the validated config, not params: editing them reruns nothing
knobs = snakemake.config["extract"]
extract.extract_shard(
    model_name=snakemake.wildcards.model,
    entry=snakemake.params.source,
    tokens_path=snakemake.input.tokens,
    out_path=snakemake.output[0],
    shard_index=int(snakemake.wildcards.shard),
    shard_sequences=snakemake.params.shard_sequences,
    top_k=snakemake.params.top_k,
    batch_size=knobs["batch_size"],
    token_chunk=knobs["token_chunk"],
    device=knobs["device"],
    seed=snakemake.params.seed,
    threads=snakemake.threads,
    # lenses: [logit, tuned]: the tuned lens's shard from the same forward passes
    tuned_out_path=snakemake.output.get("tuned"),
    translators_dir=snakemake.input.translators[0] if snakemake.input.translators else None,
)
