"""Snakemake adapter: logit-lens reductions for one shard of windows."""

from exitbench import extract, logs

logs.setup(snakemake.log[0])  # noqa: F821
params = snakemake.params.extract  # noqa: F821
extract.extract_shard(
    model_name=snakemake.wildcards.model,  # noqa: F821
    entry=snakemake.params.source,  # noqa: F821
    tokens_path=snakemake.input.tokens,  # noqa: F821
    out_path=snakemake.output[0],  # noqa: F821
    shard_index=int(snakemake.wildcards.shard),  # noqa: F821
    shard_sequences=params["shard_sequences"],
    top_k=params["top_k"],
    batch_size=params["batch_size"],
    token_chunk=params["token_chunk"],
    device=params["device"],
    seed=snakemake.params.seed,  # noqa: F821
    threads=snakemake.threads,  # noqa: F821
)
