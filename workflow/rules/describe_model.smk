# Each model's architecture facts (layers, vocabulary, positions), from its config alone.


rule describe_model:
    input:
        model_files("config"),
    output:
        "results/models/{model}.json",
    log:
        "results/logs/describe_model/{model}.log",
    benchmark:
        "results/benchmarks/describe_model/{model}.tsv"
    conda:
        "../../envs/exitbench.yaml"
    params:
        source=model_source,
    script:
        "../scripts/describe_model.py"
