"""Snakemake adapter: per-layer curves and early-exit headline numbers for one pair."""

from exitbench import logs, provenance, score

# the config's score: settings, passed one by one as params (each changes the numbers)
SETTINGS = (
    "bootstrap",
    "calibration_fraction",
    "consistency_targets",
    "thresholds",
    "patience",
    "check_every",
    "min_exit_layer",
    "state_cost",
    "calibration",
)

logs.setup(snakemake.log[0])
workload_info = provenance.read_json(snakemake.input.workload)
score.score_files(
    lens_paths=snakemake.input.shards,
    tokens_path=snakemake.input.tokens,
    model_info_path=snakemake.input.model_info,
    parquet_path=snakemake.output.curves,
    json_path=snakemake.output.headline,
    # max_sequences only reports how many windows were asked for: read, not a rerun trigger
    params={
        **{key: getattr(snakemake.params, key) for key in SETTINGS},
        "seq_len": snakemake.params.seq_len,
        "max_sequences": snakemake.config["tokenize"]["max_sequences"],
        # rule score_tuned scores the tuned lens's shards (results/scores-tuned)
        "lens": snakemake.params.get("lens", "logit"),
    },
    seed=snakemake.params.seed,
    workload=snakemake.wildcards.workload,
    # score_tuned: the translators folder says what they trained on (translators_in_sample)
    translators=snakemake.input.get("translators"),
    provenance={
        "model_source": snakemake.params.source,
        "workload_sha256": workload_info.get("workload_sha256"),
        "corpus_sha256": workload_info.get("corpus_sha256"),
        "packages": provenance.package_versions(),
        "seed": snakemake.params.seed,
    },
)
