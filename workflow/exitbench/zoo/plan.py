"""Planning the zoo from the validated config: run specs, rule settings, and the study's model
entries derived from ``zoo.runs``, so that ``config.yaml`` never copies what the zoo knows.

:func:`derive_study` is called by :func:`exitbench.config.validate_config` once the schema
has checked the ``zoo:`` section and filled its defaults; everything else here trusts that
validated section.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePosixPath
from typing import Any

from exitbench.config import ConfigError
from exitbench.zoo.recipes import RECIPES, model_parameters

ZOO_ROOT = PurePosixPath("results/zoo")
ENDOFTEXT = "<|endoftext|>"  # the zoo tokenizer's only special token: bos = eos, no pad
DATA_NAME = "data"  # results/zoo/data holds the encoded training windows
TRAIN_INFO = "train.json"  # a run's provenance, in results/zoo/<run>/
# results/zoo/tokenizer and results/zoo/data are the shared inputs, never runs.
RESERVED_NAMES = ("tokenizer", DATA_NAME)
MODEL_PREFIX = "zoo-"  # run <run> is the study's model zoo-<run>
# Keys that fix a run's architecture; a run with init_from takes them from its base.
ARCHITECTURE_KEYS = (
    "recipe",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "intermediate_size",
    "num_experts",
    "experts_per_token",
    "expand",
    "head_dim",
    "state_size",
    "chunk_size",
    "tie_word_embeddings",
)
#: Keys of the zoo section each shared step depends on (its Snakemake params).
STEP_KEYS = {
    "tokenizer": ("corpora", "heldout_fraction", "max_docs", "tokenizer"),
    "data": ("corpora", "heldout_fraction", "max_docs", "training"),
}


class ZooError(ValueError):
    """A zoo input is invalid (data, tokenizer, base run); the message names what to fix."""


# --------------------------------------------------------------------------- paths and names


def zoo_run_dir(path: str | os.PathLike) -> str | None:
    """``results/zoo/<run>`` for a path under a zoo run's directory, else None.

    ``results/zoo/llama-s/final`` and ``results/zoo/llama-s/checkpoints/step-50``
    both map to ``results/zoo/llama-s`` (the output of rule ``zoo_train``).
    """
    parts = PurePosixPath(os.path.normpath(os.fspath(path)).replace(os.sep, "/")).parts
    if len(parts) < 3 or parts[:2] != ZOO_ROOT.parts or parts[2] in RESERVED_NAMES:
        return None
    return str(ZOO_ROOT / parts[2])


def model_name(run: str, step: int | None = None) -> str:
    """The study's model name of run ``run`` (``zoo-<run>``) or of its checkpoint at ``step``
    (``zoo-<run>-step-<step>``)."""
    return f"{MODEL_PREFIX}{run}" if step is None else f"{MODEL_PREFIX}{run}-step-{step}"


# --------------------------------------------------------------------------- the study


def derive_study(config: dict[str, Any], given: dict[str, Any]) -> None:
    """Check ``config["zoo"]`` (schema-validated, defaults filled) and derive from it, in place,
    what the study would otherwise copy by hand.

    * ``models``: the user's entries, then :func:`zoo_models`; a user model named like a
      generated one is an error naming ``zoo.runs.<run>``.
    * ``workloads.<w>.heldout_fraction`` of each embedded ``subset: heldout`` workload becomes
      ``zoo.heldout_fraction``, so the zoo never trains on the documents measured; a different
      value written by the user (``given`` is the config as written) is an error.

    Raises :class:`~exitbench.config.ConfigError` naming the key to fix.
    """
    zoo = config["zoo"]
    check_runs(zoo)
    fraction = zoo["heldout_fraction"]
    written_workloads = given.get("workloads") or {}
    for name, spec in config["workloads"].items():
        if spec["source"] != "embedded" or spec["subset"] != "heldout":
            continue
        written = (written_workloads.get(name) or {}).get("heldout_fraction")
        if written is not None and written != fraction:
            raise ConfigError(
                f"config key 'workloads.{name}.heldout_fraction': {written} differs from "
                f"config key 'zoo.heldout_fraction' {fraction}, so the zoo would train on some "
                "of the workload's documents; remove the workload's key (a held-out workload "
                "takes the zoo's fraction)"
            )
        spec["heldout_fraction"] = fraction
    models = config.get("models") or {}
    generated = _generated_models(zoo)
    for name in models:
        if name in generated:
            raise ConfigError(
                f"config key 'models.{name}': the name belongs to the model generated from "
                f"config key 'zoo.runs.{generated[name][0]}' (zoo models are named "
                f"{MODEL_PREFIX}<run> and {MODEL_PREFIX}<run>-step-<N>); rename the model"
            )
    config["models"] = {**models, **{name: entry for name, (_, entry) in generated.items()}}


def zoo_models(zoo: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The study's model entries of the zoo, derived from ``zoo.runs``.

    ``zoo-<run>`` loads ``results/zoo/<run>/final`` for every run, then
    ``zoo-<run>-step-<N>`` loads ``results/zoo/<run>/checkpoints/step-<N>`` for each of its
    checkpoints. Each carries its recipe's ``family``, ``generation``, stand-in ``release``
    and ``arch`` (:data:`~exitbench.zoo.recipes.RECIPES`; a tuned run those of its base), the
    parameter counts of the model the recipe builds (:func:`parameter_counts`),
    ``tuning: tuned`` and ``base_model: zoo-<init_from>`` for a run whose
    ``task`` is not pretraining, else ``tuning: base``; a run with checkpoints and its
    checkpoints carry ``training_step`` (the final's is the run's last step) and
    ``checkpoint_of: <run>``. A run with ``early_exit`` (LayerSkip training) is a positive
    control: ``control: true``, and ``base_model: zoo-<baseline>`` where it names a baseline.
    """
    return {name: entry for name, (_, entry) in _generated_models(zoo).items()}


def _generated_models(zoo: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """:func:`zoo_models` as ``{name: (run, entry)}``; two runs generating one name is an error."""
    vocab_size, seq_len = zoo["tokenizer"]["vocab_size"], zoo["training"]["seq_len"]
    finals, checkpoints = [], []
    for run in zoo["runs"]:
        spec = run_spec(zoo, run)
        recipe = RECIPES[spec["recipe"]]
        architecture = {key: spec[key] for key in ARCHITECTURE_KEYS if key in spec}
        tuned = spec["task"] != "pretrain"
        entry = {
            "path": str(ZOO_ROOT / run / "final"),
            "family": recipe.family,
            "generation": recipe.generation,
            "release": recipe.release,
            "arch": recipe.arch,
            **parameter_counts(run, architecture, vocab_size, seq_len),
            "tuning": "tuned" if tuned else "base",
        }
        if tuned and spec.get("init_from"):
            entry["base_model"] = model_name(spec["init_from"])
        if spec.get("early_exit") is not None:
            entry["control"] = True  # trained for early exit: in no trend, beside its baseline
            if spec["early_exit"].get("baseline"):
                entry["base_model"] = model_name(spec["early_exit"]["baseline"])
        if spec["checkpoints"]:
            entry.update(training_step=total_steps(zoo, run), checkpoint_of=run)
        finals.append((model_name(run), run, entry))
        for step in sorted(spec["checkpoints"]):
            path = str(ZOO_ROOT / run / "checkpoints" / f"step-{step}")
            checkpoint = {**entry, "path": path, "training_step": step, "checkpoint_of": run}
            checkpoints.append((model_name(run, step), run, checkpoint))
    generated: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, run, entry in finals + checkpoints:
        if name in generated:
            raise ConfigError(
                f"config key 'zoo.runs.{run}': its model {name!r} has the name of a model of "
                f"zoo.runs.{generated[name][0]}; rename one of the runs"
            )
        generated[name] = (run, entry)
    return generated


def parameter_counts(
    run: str, architecture: dict[str, Any], vocab_size: int, seq_len: int
) -> dict[str, int]:
    """``total_params`` and ``active_params`` of run ``run``'s model: what training counted
    (``results/zoo/<run>/train.json``) where that file describes this architecture, vocabulary
    and seq_len, else counted on the meta device (:func:`~exitbench.zoo.recipes.
    model_parameters`; equal, and tested so). Reading the file spares a trained study's
    every plan the seconds torch and transformers take to import."""
    try:
        info = json.loads((Path(ZOO_ROOT) / run / TRAIN_INFO).read_text())
        trained = {key: info["spec"][key] for key in ARCHITECTURE_KEYS if key in info["spec"]}
        if (trained, info["model_config"]["vocab_size"], info["seq_len"]) == (
            architecture,
            vocab_size,
            seq_len,
        ):
            return {key: int(info[key]) for key in ("total_params", "active_params")}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not trained yet (or unreadable): count the model the recipe builds
    return model_parameters(architecture, vocab_size, seq_len)


# --------------------------------------------------------------------------- runs


def check_runs(zoo: dict[str, Any]) -> None:
    """What the schema cannot say about ``zoo.runs``: ``init_from`` names another run (no
    cycles), a tuned run does not restate the architecture, each recipe's own checks (head and
    expert counts divide, ...), checkpoint steps lie within the run, and an early-exit run's
    ``baseline`` is another run of the same architecture, tokens and steps. Raises
    :class:`~exitbench.config.ConfigError` naming the key (``zoo.runs.<run>.<key>``)."""
    runs = zoo["runs"]
    for run, spec in runs.items():
        key = f"zoo.runs.{run}"
        base = spec.get("init_from")
        if base is not None:
            if base not in runs:
                raise ConfigError(
                    f"config key '{key}.init_from': {base!r} is not a run of zoo.runs "
                    f"(known: {', '.join(sorted(runs))})"
                )
            restated = [k for k in ARCHITECTURE_KEYS if k in spec]
            if restated:
                raise ConfigError(
                    f"config key '{key}': a run with init_from takes its architecture from "
                    f"run {base!r}; remove {', '.join(restated)}"
                )
            seen = [run]
            while base is not None:
                if base in seen:
                    raise ConfigError(
                        f"config key '{key}.init_from': runs start from each other in a cycle "
                        f"({' -> '.join([*seen, base])})"
                    )
                seen.append(base)
                base = runs[base].get("init_from")
        else:
            RECIPES[spec["recipe"]].check(key, spec)
        _check_baseline(zoo, run)
        steps = total_steps(zoo, run)
        late = [step for step in spec["checkpoints"] if step > steps]
        if late:
            raise ConfigError(
                f"config key '{key}.checkpoints': steps {late} are after the run's last step "
                f"{steps} (= ceil(train_tokens / (batch_size * seq_len)))"
            )


def _check_baseline(zoo: dict[str, Any], run: str) -> None:
    """A control is compared with its ``early_exit.baseline``: a plain run with the same
    architecture, task, train_tokens and learning rate, so that only the training method
    differs."""
    runs = zoo["runs"]
    baseline = (runs[run].get("early_exit") or {}).get("baseline")
    if baseline is None:
        return
    key = f"zoo.runs.{run}.early_exit.baseline"
    if baseline == run or baseline not in runs:
        raise ConfigError(
            f"config key '{key}': {baseline!r} is not another run of zoo.runs "
            f"(known: {', '.join(sorted(set(runs) - {run}))})"
        )
    if runs[baseline].get("early_exit") is not None:
        raise ConfigError(
            f"config key '{key}': run {baseline!r} trains for early exit too; the baseline is "
            "the plain run the control is compared with"
        )
    if any(runs[other].get("init_from") not in (None, *runs) for other in (run, baseline)):
        return  # check_runs names the bad init_from
    mine, theirs = run_spec(zoo, run), run_spec(zoo, baseline)
    differ = [k for k in (*ARCHITECTURE_KEYS, "task", "init_from") if mine.get(k) != theirs.get(k)]
    differ += [
        k for k in ("train_tokens", "learning_rate") if mine["training"][k] != theirs["training"][k]
    ]
    if differ:
        raise ConfigError(
            f"config key '{key}': run {run!r} differs from its baseline {baseline!r} in "
            f"{', '.join(differ)}; a control changes only the training method (early_exit)"
        )


def run_spec(zoo: dict[str, Any], run: str) -> dict[str, Any]:
    """Run ``run``'s settings: its own keys, the architecture of its ``init_from`` chain, and
    the shared ``training`` keys (the run's train_tokens / learning_rate win)."""
    runs = zoo["runs"]
    if run not in runs:
        raise ZooError(f"zoo run {run!r} is not in config key 'zoo.runs' (known: {sorted(runs)})")
    spec = dict(runs[run])
    root = run
    while runs[root].get("init_from") is not None:
        root = runs[root]["init_from"]
    architecture = {k: runs[root][k] for k in ARCHITECTURE_KEYS if k in runs[root]}
    if "router_aux_loss_coef" in runs[root]:
        architecture["router_aux_loss_coef"] = runs[root]["router_aux_loss_coef"]
    training = dict(zoo["training"])
    for key in ("train_tokens", "learning_rate"):
        if key in spec:
            training[key] = spec[key]
    return {**architecture, **spec, "training": training, "name": run}


def base_run(zoo: dict[str, Any], run: str) -> str | None:
    """The run that ``run`` starts from (its ``init_from``), or None for a run from scratch."""
    return zoo["runs"][run].get("init_from")


def base_inputs(zoo: dict[str, Any], run: str) -> list[str]:
    """``["results/zoo/<base>"]`` for a run with ``init_from``, else ``[]`` (rule zoo_train's
    input: a tuned run waits for its base run's directory)."""
    base = base_run(zoo, run)
    return [str(ZOO_ROOT / base)] if base else []


def total_steps(zoo: dict[str, Any], run: str) -> int:
    """``ceil(train_tokens / (batch_size * seq_len))`` for run ``run``."""
    training = run_spec(zoo, run)["training"]
    return math.ceil(training["train_tokens"] / (training["batch_size"] * training["seq_len"]))


def run_cost(zoo: dict[str, Any], run: str) -> float:
    """Rough training cost of ``run`` (arbitrary units): train_tokens × (num_layers × the
    recipe's layer weights × its cost per weight + hidden × vocab × head calls per token, which
    an early-exit run makes at every layer its curriculum enables). Only used to start the
    longest run first."""
    spec = run_spec(zoo, run)
    recipe = RECIPES[spec["recipe"]]
    layers = spec["num_layers"] * recipe.layer_weights(spec) * recipe.cost_per_weight
    head = spec["hidden_size"] * zoo["tokenizer"]["vocab_size"]
    early_exit = spec.get("early_exit")
    if early_exit is not None:
        share = 1 / early_exit["rotation"] if early_exit["curriculum"] == "rotational" else 1
        head *= 1 + (spec["num_layers"] - 1) * share
    return spec["training"]["train_tokens"] * (layers + head)


def run_priorities(zoo: dict[str, Any]) -> dict[str, int]:
    """Snakemake priority of each run: its rank by :func:`run_cost` (1 = cheapest), so that
    with a few cores the longest runs start first and the zoo finishes sooner."""
    ranked = sorted(zoo["runs"], key=lambda run: (run_cost(zoo, run), run))
    return {run: rank for rank, run in enumerate(ranked, start=1)}


def rule_settings(zoo: dict[str, Any], step: str) -> dict[str, Any]:
    """The part of the zoo section that step ``tokenizer``, ``data`` or run ``<run>`` reads.

    Used as Snakemake params, so editing one run retrains that run (and the runs
    that start from it) only. A run's part holds its ``init_from`` chain.
    """
    if step in STEP_KEYS:
        part = {key: zoo[key] for key in STEP_KEYS[step] if key in zoo}
        if step == "data":
            part["training"] = {"seq_len": zoo["training"]["seq_len"]}
        return part
    chain, run = {}, step
    while run is not None:
        chain[run] = zoo["runs"][run]
        run = zoo["runs"][run].get("init_from")
    shared = {key: value for key, value in zoo.items() if key not in ("runs", "tokenizer")}
    return {**shared, "runs": chain}
