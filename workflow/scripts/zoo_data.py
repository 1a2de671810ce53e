"""Snakemake adapter: encode the zoo's training windows once (see exitbench.zoo.build_data)."""

from exitbench import logs, zoo

logs.setup(snakemake.log[0])
zoo.build_data(
    zoo=snakemake.params.zoo,
    seed=snakemake.params.seed,
    tokenizer_dir=snakemake.input.tokenizer,
    out_dir=snakemake.output[0],
)
