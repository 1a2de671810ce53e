"""Snakemake adapter: encode the zoo's training windows once (see exitbench.zoo.build_data)."""

from exitbench import logs, zoo

logs.setup(snakemake.log[0])  # noqa: F821
zoo.build_data(
    zoo=snakemake.params.zoo,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    tokenizer_dir=snakemake.input.tokenizer,  # noqa: F821
    out_dir=snakemake.output[0],  # noqa: F821
)
