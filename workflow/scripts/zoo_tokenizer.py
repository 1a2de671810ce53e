"""Snakemake adapter: train the zoo's BPE tokenizer (see exitbench.zoo.train_tokenizer)."""

from exitbench import logs, zoo

logs.setup(snakemake.log[0])
zoo.train_tokenizer(
    zoo=snakemake.params.zoo,
    seed=snakemake.params.seed,
    out_dir=snakemake.output[0],
)
