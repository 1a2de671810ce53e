"""Snakemake adapter: build one workload table (see exitbench.workloads)."""

from exitbench import logs, provenance, workloads

logs.setup(snakemake.log[0])  # noqa: F821
info = workloads.build_workload(
    name=snakemake.wildcards.workload,  # noqa: F821
    spec=snakemake.params.spec,  # noqa: F821
    seed=snakemake.params.seed,  # noqa: F821
    out_path=snakemake.output.table,  # noqa: F821
)
provenance.write_json(info, snakemake.output.provenance)  # noqa: F821
