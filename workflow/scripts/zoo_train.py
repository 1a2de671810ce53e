"""Snakemake adapter: train one zoo run (see exitbench.zoo.train_run)."""

from exitbench import logs, zoo

logs.setup(snakemake.log[0])
base = snakemake.input.base
zoo.train_run(
    run=snakemake.wildcards.run,
    zoo=snakemake.params.zoo,
    seed=snakemake.params.seed,
    tokenizer_dir=snakemake.input.tokenizer,
    data_dir=snakemake.input.data,
    out_dir=snakemake.output[0],
    base_dir=(base if isinstance(base, str) else base[0]) if base else None,
    threads=snakemake.threads,
)
