"""Snakemake adapter: realised decoding of one (model, workload) beside the lens's potential."""

import torch

from exitbench import decode, logs, provenance

SETTINGS = (
    "prompts",
    "prompt_tokens",
    "new_tokens",
    "methods",
    "state_strategy",
    "target",
    "k",
    "gamma",
)

logs.setup(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
decode.decode_files(
    model_name=snakemake.wildcards.model,
    model_entry=snakemake.params.source,
    tokens_path=snakemake.input.tokens,
    score_json=snakemake.input.headline,
    scores_parquet=snakemake.input.scores,
    parquet_path=snakemake.output.table,
    json_path=snakemake.output.summary,
    # device is a speed knob: read from the config, not a rerun trigger
    params={
        **{key: getattr(snakemake.params, key) for key in SETTINGS},
        "device": snakemake.config["decode"]["device"],
    },
    calibration_fraction=snakemake.params.calibration_fraction,
    bootstrap=snakemake.params.bootstrap,
    seed=snakemake.params.seed,
    workload=snakemake.wildcards.workload,
    provenance={
        "model_source": snakemake.params.source,
        "packages": provenance.package_versions(),
        "seed": snakemake.params.seed,
    },
)
