"""Snakemake adapter: build one workload table (see exitbench.workloads)."""

from exitbench import logs, provenance, workloads

logs.setup(snakemake.log[0])
info = workloads.build_workload(
    name=snakemake.wildcards.workload,
    spec=snakemake.params.spec,
    seed=snakemake.params.seed,
    out_path=snakemake.output.table,
)
provenance.write_json(info, snakemake.output.provenance)
