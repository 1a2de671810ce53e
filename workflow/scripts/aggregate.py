"""Snakemake adapter: every pair's score JSON -> results/summary.* and results/statistics.*
(and, with lenses: [logit, tuned], the tuned lens's -tuned tables beside them)."""

from exitbench import aggregate, logs

logs.setup(snakemake.log[0])
pairs = [tuple(pair) for pair in snakemake.params.pairs]
outputs = snakemake.output
lenses = {
    "logit": (snakemake.input.scores, ""),
    **(
        {"tuned": (snakemake.input.tuned_scores, "_tuned")}
        if "summary_tuned" in outputs.keys()
        else {}
    ),
}
for lens, (scores, suffix) in lenses.items():
    aggregate.aggregate_files(
        dict(zip(pairs, scores, strict=True)),
        snakemake.params.metadata,
        dict(zip(snakemake.params.models, snakemake.input.models, strict=True)),
        summary_parquet=getattr(outputs, f"summary{suffix}"),
        summary_csv=getattr(outputs, f"summary{suffix}_csv"),
        statistics_csv=getattr(outputs, f"statistics{suffix}"),
        statistics_json=getattr(outputs, f"statistics{suffix}_json"),
        seed=snakemake.params.seed,
        log_dir=snakemake.params.log_dir,
        # realised decoding joins the logit lens's summary (its policies are the logit lens's)
        decode_jsons={
            tuple(pair): path
            for pair, path in zip(
                snakemake.params.decode_pairs, snakemake.input.decode, strict=True
            )
        }
        if lens == "logit"
        else None,
        lens=lens,
    )
