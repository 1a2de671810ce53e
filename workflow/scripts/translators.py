"""Snakemake adapter: the tuned lens's translators of one model (exitbench.translators)."""

from exitbench import logs, translators

logs.setup(snakemake.log[0])
params = snakemake.params
entry = dict(params.source, **({"tuned_lens": params.tuned_lens} if params.tuned_lens else {}))
training = list(snakemake.input.training)
trains = not params.tuned_lens  # a published lens is copied, not trained
translators.build_translators(
    model_name=snakemake.wildcards.model,
    entry=entry,
    out_dir=snakemake.output[0],
    settings=translators.TrainingSettings.from_config(
        {key: getattr(params, key) for key in translators.TrainingSettings.__dataclass_fields__}
    ),
    seed=params.seed,
    zoo_data=training[0] if trains and params.zoo else None,
    zoo_corpora=params.corpora,
    tokens_paths=(
        dict(zip(snakemake.config["workloads"], training, strict=True))
        if trains and not params.zoo
        else None
    ),
    calibration_fraction=params.calibration_fraction,
    # a speed knob from the validated config, not a param: editing it reruns nothing
    device=snakemake.config["translators"]["device"],
    threads=snakemake.threads,
    batch_tokens=snakemake.config["translators"]["batch_tokens"],  # memory knob, like device
)
