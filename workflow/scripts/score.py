"""Snakemake adapter: per-layer curves and early-exit headline numbers for one pair."""

from exitbench import logs, provenance, score

logs.setup(snakemake.log[0])  # noqa: F821
workload_info = provenance.read_json(snakemake.input.workload)  # noqa: F821
score.score_files(
    lens_paths=snakemake.input.shards,  # noqa: F821
    tokens_path=snakemake.input.tokens,  # noqa: F821
    model_info_path=snakemake.input.model_info,  # noqa: F821
    parquet_path=snakemake.output.curves,  # noqa: F821
    json_path=snakemake.output.headline,  # noqa: F821
    params={**snakemake.params.score, "seq_len": snakemake.params.seq_len},  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    workload=snakemake.wildcards.workload,  # noqa: F821
    provenance={
        "model_source": snakemake.params.source,  # noqa: F821
        "workload_sha256": workload_info.get("workload_sha256"),
        "corpus_sha256": workload_info.get("corpus_sha256"),
        "packages": provenance.package_versions(),
        "seed": snakemake.params.seed,  # noqa: F821
    },
)
