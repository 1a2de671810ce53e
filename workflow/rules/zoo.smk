# The embedded default's model zoo (exitbench.zoo): a byte-level BPE tokenizer, the encoded
# training windows, then one job per run; the held-out documents are never trained on.
# common.smk has validated the config; its models already include the zoo's (zoo-<run>).
import re

from exitbench.config import section_defaults
from exitbench.zoo import base_inputs, rule_settings, run_priorities

ZOO = config.get("zoo") or section_defaults("zoo")
ZOO_PRIORITY = run_priorities(ZOO)  # longest runs first: they bound the zoo's wall time


rule zoo_tokenizer:
    output:
        directory("results/zoo/tokenizer"),
    log:
        "results/logs/zoo_tokenizer/tokenizer.log",
    benchmark:
        "results/benchmarks/zoo_tokenizer/tokenizer.tsv"
    conda:
        "../../envs/exitbench.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        zoo=rule_settings(ZOO, "tokenizer"),
        seed=config["seed"],
    script:
        "../scripts/zoo_tokenizer.py"


rule zoo_data:
    input:
        tokenizer="results/zoo/tokenizer",
    output:
        directory("results/zoo/data"),
    log:
        "results/logs/zoo_data/data.log",
    benchmark:
        "results/benchmarks/zoo_data/data.tsv"
    conda:
        "../../envs/exitbench.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        zoo=rule_settings(ZOO, "data"),
        seed=config["seed"],
    script:
        "../scripts/zoo_data.py"


rule zoo_train:
    input:
        tokenizer="results/zoo/tokenizer",
        data="results/zoo/data",
        base=lambda wildcards: base_inputs(ZOO, wildcards.run),
    output:
        directory("results/zoo/{run}"),
    log:
        "results/logs/zoo_train/{run}.log",
    benchmark:
        "results/benchmarks/zoo_train/{run}.tsv"
    wildcard_constraints:
        run="|".join(map(re.escape, ZOO["runs"])) or "(?!x)x",
    priority: lambda wildcards: ZOO_PRIORITY[wildcards.run]
    conda:
        "../../envs/exitbench.yaml"
    # one thread: on 2 cores two one-thread runs at once beat a two-thread run, which spins
    # whenever another job shares the cores (steps up to 14x slower, issue 13)
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        zoo=lambda wildcards: rule_settings(ZOO, wildcards.run),
        seed=config["seed"],
    script:
        "../scripts/zoo_train.py"
