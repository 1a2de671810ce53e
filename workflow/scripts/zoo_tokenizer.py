"""Snakemake adapter: train the zoo's BPE tokenizer (see exitbench.zoo.train_tokenizer)."""

from exitbench import logs, zoo

logs.setup(snakemake.log[0])  # noqa: F821
zoo.train_tokenizer(
    zoo=snakemake.params.zoo,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    out_dir=snakemake.output[0],  # noqa: F821
)
