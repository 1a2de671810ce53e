"""Snakemake adapter: train one zoo run (see exitbench.zoo.train_run)."""

from exitbench import logs, zoo

logs.setup(snakemake.log[0])  # noqa: F821
base = snakemake.input.base  # noqa: F821
zoo.train_run(
    run=snakemake.wildcards.run,  # noqa: F821
    zoo=snakemake.params.zoo,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    tokenizer_dir=snakemake.input.tokenizer,  # noqa: F821
    data_dir=snakemake.input.data,  # noqa: F821
    out_dir=snakemake.output[0],  # noqa: F821
    base_dir=(base if isinstance(base, str) else base[0]) if base else None,
    threads=snakemake.threads,  # noqa: F821
)
