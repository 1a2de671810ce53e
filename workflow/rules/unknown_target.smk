# A target naming a model or workload that the config does not list: every model and
# workload wildcard is constrained to the config's names, so such a target gets this
# rule, whose input function (common.smk: unknown_name) says which names exist, instead
# of Snakemake's bare "No rule to produce".
import re

_KNOWN_PAIR = (
    f"(?:{'|'.join(map(re.escape, MODELS))})/(?:{'|'.join(map(re.escape, WORKLOADS))})"
    r"(?:\.parquet|\.json|/shard-\d+\.parquet)$"
)


rule unknown_target:
    input:
        unknown_name,
    output:
        "results/{stage}/{name}",
    log:
        "results/logs/unknown_target/{stage}/{name}.log",
    wildcard_constraints:
        stage="tokens|lens|scores",
        name=f"(?!{_KNOWN_PAIR}).+",
