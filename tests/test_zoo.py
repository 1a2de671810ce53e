"""The model zoo: tokenizer, data, recipes, determinism, tuning, checkpoints, held-out split, and
the study's model entries derived from the zoo section."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from cluster import harness  # tests/cluster/harness.py (tests/ is on sys.path)
from transformers import AutoModelForCausalLM, AutoTokenizer

from exitbench import selection, workloads, zoo
from exitbench.config import ConfigError, validate_config
from exitbench.lens import LogitLens
from exitbench.zoo import layerskip

REPO = Path(__file__).resolve().parent.parent
SEED = 3
TINY = {"hidden_size": 16, "num_layers": 2, "num_heads": 2}
ZOO = {
    "corpora": {"python-docs": 1},
    "heldout_fraction": 0.25,
    "max_docs": 40,
    "tokenizer": {"vocab_size": 320, "max_chars": 200_000},
    "training": {"seq_len": 32, "batch_size": 2, "train_tokens": 320, "learning_rate": 0.01},
    "runs": {
        "gpt2-t": {"recipe": "gpt2", **TINY},
        "llama-t": {"recipe": "llama", **TINY, "checkpoints": [1, 3]},
        "moe-t": {"recipe": "mixtral", **TINY, "num_experts": 4, "experts_per_token": 2},
        "olmoe-t": {"recipe": "olmoe", **TINY, "num_experts": 4, "experts_per_token": 2},
        "mamba2-t": {
            "recipe": "mamba2",
            "hidden_size": 16,
            "num_layers": 2,
            "head_dim": 8,
            "state_size": 8,
            "chunk_size": 16,
        },
        "llama-t-qa": {"init_from": "llama-t", "task": "qa", "train_tokens": 128},
    },
}
WORKLOADS = {"w": {"source": "embedded", "name": "python-docs", "subset": "heldout"}}


def validated(zoo_section: dict, **config) -> dict:
    """The study config with ``zoo_section`` as exitbench.config.validate_config returns it."""
    return validate_config({"workloads": WORKLOADS, "zoo": zoo_section, **config})


#: ZOO as the single validator returns it (defaults filled): what the rules hand the library.
SETTINGS = validated(ZOO)["zoo"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Tokenizer, data and every run of ZOO, trained once for the module."""
    root = tmp_path_factory.mktemp("zoo")
    tokenizer, data = root / "tokenizer", root / "data"
    zoo.train_tokenizer(SETTINGS, SEED, tokenizer)
    zoo.build_data(SETTINGS, SEED, tokenizer, data)
    dirs = {"tokenizer": tokenizer, "data": data}
    for run, spec in ZOO["runs"].items():
        base = dirs.get(spec.get("init_from"))
        dirs[run] = root / run
        settings = zoo.rule_settings(SETTINGS, run)  # what rule zoo_train passes
        zoo.train_run(run, settings, SEED, tokenizer, data, dirs[run], base_dir=base)
    return dirs


def _load_and_run(path: Path) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = tokenizer("def f(x):\n    return x", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("run", ["gpt2-t", "llama-t", "moe-t", "olmoe-t", "mamba2-t", "llama-t-qa"])
def test_run_outputs_load_and_give_finite_logits(built, run):
    out = built[run]
    logits = _load_and_run(out / "final")
    assert torch.isfinite(logits).all()
    assert logits.shape[-1] == len(AutoTokenizer.from_pretrained(built["tokenizer"]))
    rows = zoo.loss_curve(out)
    steps = zoo.total_steps(SETTINGS, run)
    assert [row["step"] for row in rows] == list(range(1, steps + 1))
    assert rows[-1]["tokens"] == steps * 2 * 32
    assert all(math.isfinite(row["loss"]) and row["lr"] > 0 for row in rows)
    assert (out / "loss.png").stat().st_size > 0
    info = yaml.safe_load((out / "train.json").read_text())  # JSON is YAML
    assert info["run"] == run and info["seed"] == SEED and info["tokens_seen"] == steps * 64
    assert {"torch", "transformers", "python"} <= set(info["versions"])
    assert info["data_sources"]
    for source in info["data_sources"].values():
        assert len(source["corpus_sha256"]) == 64


def test_recipes_have_their_architecture(built):
    types = {
        run: AutoModelForCausalLM.from_pretrained(built[run] / "final").config.model_type
        for run in ("gpt2-t", "llama-t", "moe-t", "olmoe-t", "mamba2-t", "llama-t-qa")
    }
    assert types == {
        "gpt2-t": "gpt2",
        "llama-t": "llama",
        "moe-t": "mixtral",
        "olmoe-t": "olmoe",
        "mamba2-t": "mamba2",
        "llama-t-qa": "llama",
    }


def test_moe_active_parameters_count_routed_experts_only(built):
    model = AutoModelForCausalLM.from_pretrained(built["moe-t"] / "final")
    counts = zoo.count_parameters(model)
    experts = sum(
        p.numel() for name, p in model.named_parameters() if ".experts." in name
    )  # 4 experts, 2 routed: half of the expert weights are idle per token
    assert counts["total_params"] == sum(p.numel() for p in model.parameters())
    assert counts["active_params"] == counts["total_params"] - experts // 2
    dense = AutoModelForCausalLM.from_pretrained(built["llama-t"] / "final")
    dense_counts = zoo.count_parameters(dense)
    assert dense_counts["active_params"] == dense_counts["total_params"]


def test_training_is_deterministic(built, tmp_path):
    again = tmp_path / "llama-t"
    zoo.train_run("llama-t", SETTINGS, SEED, built["tokenizer"], built["data"], again)
    first = built["llama-t"]
    assert (again / "loss.csv").read_bytes() == (first / "loss.csv").read_bytes()
    for sub in ("final", "checkpoints/step-1"):
        assert (again / sub / "model.safetensors").read_bytes() == (
            first / sub / "model.safetensors"
        ).read_bytes()


def test_another_seed_changes_the_run(built, tmp_path):
    other = tmp_path / "llama-t"
    zoo.train_run("llama-t", SETTINGS, SEED + 1, built["tokenizer"], built["data"], other)
    assert (other / "loss.csv").read_bytes() != (built["llama-t"] / "loss.csv").read_bytes()


def test_tuned_run_starts_from_the_base_weights(built):
    base = AutoModelForCausalLM.from_pretrained(built["llama-t"] / "final")
    tuned_info = yaml.safe_load((built["llama-t-qa"] / "train.json").read_text())
    assert tuned_info["init_weights_sha256"] == zoo.state_sha256(base)
    assert tuned_info["final_weights_sha256"] != tuned_info["init_weights_sha256"]
    assert tuned_info["init_from"] == "llama-t" and tuned_info["task"] == "qa"
    assert list(tuned_info["data_sources"]) == ["qa"]
    scratch = yaml.safe_load((built["llama-t"] / "train.json").read_text())
    assert scratch["init_weights_sha256"] != zoo.state_sha256(base)
    # The tuned model starts where pretraining ended, not at ln(vocab).
    assert tuned_info["initial_loss"] < math.log(320) - 0.05


def test_tuned_run_rejects_a_base_with_another_tokenizer(built, tmp_path):
    other_zoo = copy.deepcopy(SETTINGS)
    other_zoo["tokenizer"]["vocab_size"] = 330
    zoo.train_tokenizer(other_zoo, SEED, tmp_path / "tok")
    with pytest.raises(zoo.ZooError, match="another tokenizer"):
        zoo.train_run(
            "llama-t-qa",
            other_zoo,
            SEED,
            tmp_path / "tok",
            built["data"],
            tmp_path / "qa",
            base_dir=built["llama-t"],
        )


def test_checkpoints_exist_at_the_configured_steps(built):
    out = built["llama-t"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-3"]
    for step in ("step-1", "step-3"):
        assert torch.isfinite(_load_and_run(out / "checkpoints" / step)).all()
    first = (out / "checkpoints/step-1/model.safetensors").read_bytes()
    assert first != (out / "checkpoints/step-3/model.safetensors").read_bytes()
    assert first != (out / "final/model.safetensors").read_bytes()
    assert not (built["gpt2-t"] / "checkpoints").exists()


def test_tokenizer_is_a_fast_bpe_with_endoftext(built):
    tokenizer = AutoTokenizer.from_pretrained(built["tokenizer"])
    assert len(tokenizer) == 320
    assert tokenizer.bos_token == tokenizer.eos_token == "<|endoftext|>"
    text = "Assignment statements bind names."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    again = built["tokenizer"].parent / "tokenizer-again"
    zoo.train_tokenizer(SETTINGS, SEED, again)
    assert (again / "tokenizer.json").read_bytes() == (
        built["tokenizer"] / "tokenizer.json"
    ).read_bytes()


def test_heldout_documents_are_never_trained_on():
    settings = SETTINGS
    texts, info = zoo.source_texts(settings, SEED)
    spec = {"source": "embedded", "name": "python-docs", "heldout_fraction": 0.25}
    heldout, _ = workloads.load_documents("docs", {**spec, "subset": "heldout"}, SEED)
    train_docs = zoo.training_documents(settings, SEED)["python-docs"][0]
    assert len(heldout) > 0 and len(train_docs) == 40
    assert set(train_docs["doc_id"]).isdisjoint(heldout["doc_id"])
    assert all(workloads.split_of(d, 0.25, SEED) == "train" for d in train_docs["doc_id"])
    training_text = "\x00".join(texts["python-docs"] + texts["qa"])
    for text in heldout["text"]:
        assert text not in training_text
        qa = zoo.qa_example(text)
        assert qa is None or qa not in texts["qa"]
    assert info["qa"]["n_pairs"] == len(texts["qa"]) > 0


def test_window_plan_is_prefix_stable_and_mixes_by_weight():
    import numpy as np

    windows = {"a": np.arange(40).reshape(10, 4), "b": 100 + np.arange(12).reshape(3, 4)}
    weights = {"a": 0.75, "b": 0.25}
    long, counts = zoo.window_plan(windows, weights, 400, seed=1)
    short, _ = zoo.window_plan(windows, weights, 50, seed=1)
    assert (long[:50] == short).all()
    assert counts["a"]["windows_used"] + counts["b"]["windows_used"] == 400
    assert 0.65 < counts["a"]["windows_used"] / 400 < 0.85
    assert counts["b"]["epochs"] > 1
    # each epoch of a source visits every window once
    first_epoch_a = long[long[:, 0] < 100][:10, 0]
    assert sorted(first_epoch_a) == list(range(0, 40, 4))


def test_qa_example_format():
    text = (
        'The "assert" statement\n**********************\n\nAssert statements are\nhandy.\n\nMore.'
    )
    assert zoo.qa_example(text) == (
        'Q: What is the "assert" statement?\nA: Assert statements are handy.'
    )
    assert zoo.qa_example("Title only\n*****\n") is None


def test_learning_rate_schedule():
    training = {
        "learning_rate": 1.0,
        "min_lr_ratio": 0.1,
        "warmup_fraction": 0.1,
        "schedule": "cosine",
    }
    assert zoo.learning_rate(1, 100, training) == pytest.approx(0.1)
    assert zoo.learning_rate(10, 100, training) == pytest.approx(1.0)
    assert zoo.learning_rate(55, 100, training) == pytest.approx(0.55)
    assert zoo.learning_rate(100, 100, training) == pytest.approx(0.1)
    linear = {**training, "schedule": "linear"}
    assert zoo.learning_rate(55, 100, linear) == pytest.approx(0.55)


def test_zoo_run_dir():
    assert zoo.zoo_run_dir("results/zoo/llama-s/final") == "results/zoo/llama-s"
    assert zoo.zoo_run_dir("./results/zoo/llama-s/checkpoints/step-50") == "results/zoo/llama-s"
    assert zoo.zoo_run_dir("results/zoo/tokenizer") is None
    assert zoo.zoo_run_dir("results/zoo/data") is None
    assert zoo.zoo_run_dir("models/gpt2") is None
    assert zoo.zoo_run_dir("/abs/results/zoo/x/final") is None


@pytest.mark.parametrize(
    ("run", "key"),
    [
        ({"recipe": "llama", "hidden_size": "big", "num_layers": 2}, "zoo.runs.bad.hidden_size"),
        ({"recipe": "llama", "hiden_size": 16, "num_layers": 2}, "zoo.runs.bad"),
        ({"recipe": "transformer", **TINY}, "zoo.runs.bad.recipe"),
        ({"num_layers": 2}, "zoo.runs.bad"),
        ({"recipe": "llama", **TINY, "checkpoints": [0]}, "zoo.runs.bad.checkpoints.0"),
    ],
)
def test_schema_rejects_a_bad_run_naming_the_key(run, key):
    """The zoo's schema is part of the config's: one validator, one error format."""
    bad = {**copy.deepcopy(ZOO), "runs": {"bad": run}}
    with pytest.raises(ConfigError, match=f"invalid study configuration:\n  config key '{key}'"):
        validated(bad)


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        ({"t": {"init_from": "nope"}}, "zoo.runs.t.init_from", "not a run"),
        ({"t": {"init_from": "llama-t", "hidden_size": 8}}, "zoo.runs.t", "remove hidden_size"),
        ({"t": {"init_from": "u"}, "u": {"init_from": "t"}}, "zoo.runs.t.init_from", "cycle"),
        ({"t": {"recipe": "llama", **TINY, "num_heads": 3}}, "zoo.runs.t.num_heads", "multiple"),
        (
            {"t": {"recipe": "llama", **TINY, "num_kv_heads": 3}},
            "zoo.runs.t.num_kv_heads",
            "multiple",
        ),
        (
            {"t": {"recipe": "llama", **TINY, "checkpoints": [99]}},
            "zoo.runs.t.checkpoints",
            "after",
        ),
        ({"t": {"recipe": "mixtral", **TINY}}, "zoo.runs.t.num_experts", "needs"),
        (
            {"t": {"recipe": "olmoe", **TINY, "num_experts": 2, "experts_per_token": 3}},
            "zoo.runs.t.experts_per_token",
            "more than",
        ),
        ({"t": {"recipe": "gpt2", "hidden_size": 16, "num_layers": 2}}, "zoo.runs.t", "num_heads"),
        ({"t": {**ZOO["runs"]["mamba2-t"], "head_dim": 5}}, "zoo.runs.t.head_dim", "multiple"),
    ],
)
def test_cross_checks_name_the_key(change, key, message):
    bad = copy.deepcopy(ZOO)
    bad["runs"].update(change)
    with pytest.raises(ConfigError, match=f"'{key}.*{message}"):
        validated(bad)


# The default study's models as config.yaml listed them by hand before they were derived from
# its zoo section: the regression target of zoo.zoo_models (names, paths, metadata, counts).
DEFAULT_MODELS = yaml.safe_load(
    """
zoo-gpt2-s:
  path: results/zoo/gpt2-s/final
  family: zoo-gpt2
  generation: older recipe
  release: "2019-02"
  arch: dense
  total_params: 2651392
  active_params: 2651392
  tuning: base
zoo-llama-s:
  path: results/zoo/llama-s/final
  family: zoo-llama
  generation: newer recipe
  release: "2023-07"
  arch: dense
  total_params: 2656384
  active_params: 2656384
  tuning: base
  training_step: 800
  checkpoint_of: llama-s
zoo-llama-m:
  path: results/zoo/llama-m/final
  family: zoo-llama
  generation: newer recipe
  release: "2023-07"
  arch: dense
  total_params: 5115072
  active_params: 5115072
  tuning: base
zoo-moe-s:
  path: results/zoo/moe-s/final
  family: zoo-mixtral
  generation: newer recipe
  release: "2023-12"
  arch: moe
  total_params: 3741824
  active_params: 2660480
  tuning: base
zoo-mamba2-s:
  path: results/zoo/mamba2-s/final
  family: zoo-mamba2
  generation: newer recipe
  release: "2024-05"
  arch: ssm
  total_params: 2647320
  active_params: 2647320
  tuning: base
zoo-llama-s-tuned:
  path: results/zoo/llama-s-tuned/final
  family: zoo-llama
  generation: newer recipe
  release: "2023-07"
  arch: dense
  total_params: 2656384
  active_params: 2656384
  tuning: tuned
  base_model: zoo-llama-s
zoo-llama-s-ee:
  path: results/zoo/llama-s-ee/final
  family: zoo-llama
  generation: newer recipe
  release: "2023-07"
  arch: dense
  total_params: 2656384
  active_params: 2656384
  tuning: base
  control: true
  base_model: zoo-llama-s
zoo-llama-s-step-50:
  path: results/zoo/llama-s/checkpoints/step-50
  family: zoo-llama
  generation: newer recipe
  release: "2023-07"
  arch: dense
  total_params: 2656384
  active_params: 2656384
  tuning: base
  training_step: 50
  checkpoint_of: llama-s
zoo-llama-s-step-100:
  path: results/zoo/llama-s/checkpoints/step-100
  family: zoo-llama
  generation: newer recipe
  release: "2023-07"
  arch: dense
  total_params: 2656384
  active_params: 2656384
  tuning: base
  training_step: 100
  checkpoint_of: llama-s
zoo-llama-s-step-200:
  path: results/zoo/llama-s/checkpoints/step-200
  family: zoo-llama
  generation: newer recipe
  release: "2023-07"
  arch: dense
  total_params: 2656384
  active_params: 2656384
  tuning: base
  training_step: 200
  checkpoint_of: llama-s
zoo-llama-s-step-400:
  path: results/zoo/llama-s/checkpoints/step-400
  family: zoo-llama
  generation: newer recipe
  release: "2023-07"
  arch: dense
  total_params: 2656384
  active_params: 2656384
  tuning: base
  training_step: 400
  checkpoint_of: llama-s
"""
)


def test_default_study_models_are_derived_from_its_zoo():
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    assert "models" not in raw  # nothing copied by hand
    config = validate_config(raw)
    assert list(config["models"]) == list(DEFAULT_MODELS)
    assert config["models"] == {
        name: {**entry, "dtype": "float32"} for name, entry in DEFAULT_MODELS.items()
    }
    assert zoo.zoo_models(config["zoo"]) == DEFAULT_MODELS
    for name, spec in config["workloads"].items():
        assert "heldout_fraction" not in raw["workloads"][name]
        assert spec["heldout_fraction"] == raw["zoo"]["heldout_fraction"]


def test_derived_parameter_counts_are_what_training_counts(built):
    """The counts derived at validation (meta device) equal train.json's (the trained model)."""
    models = validated(ZOO)["models"]
    for run in ZOO["runs"]:
        info = yaml.safe_load((built[run] / "train.json").read_text())
        entry = models[f"zoo-{run}"]
        assert (entry["total_params"], entry["active_params"]) == (
            info["total_params"],
            info["active_params"],
        )
    moe = models["zoo-moe-t"]
    assert moe["active_params"] < moe["total_params"]


def test_parameter_counts_read_a_matching_train_json(built, tmp_path, monkeypatch):
    """A trained run's counts come from its train.json (no torch at plan time), but only
    when that file describes the run as configured now."""
    info = yaml.safe_load((built["moe-t"] / "train.json").read_text())
    architecture = {k: v for k, v in info["spec"].items() if k in zoo.ARCHITECTURE_KEYS}
    counted = zoo.model_parameters(architecture, 320, 32)
    run_dir = tmp_path / "results" / "zoo" / "moe-t"
    run_dir.mkdir(parents=True)
    marked = {**info, "total_params": 7, "active_params": 5}  # to see which source was read
    (run_dir / "train.json").write_text(json.dumps(marked))
    monkeypatch.chdir(tmp_path)
    assert zoo.parameter_counts("moe-t", architecture, 320, 32) == {
        "total_params": 7,
        "active_params": 5,
    }
    assert validated(ZOO)["models"]["zoo-moe-t"]["total_params"] == 7
    # another vocabulary, seq_len or architecture than trained: counted from the recipe
    for vocab_size, seq_len in ((330, 32), (320, 64)):
        assert zoo.parameter_counts(
            "moe-t", architecture, vocab_size, seq_len
        ) == zoo.model_parameters(architecture, vocab_size, seq_len)
    wider = {**architecture, "hidden_size": 32}
    assert zoo.parameter_counts("moe-t", wider, 320, 32) == zoo.model_parameters(wider, 320, 32)
    assert zoo.parameter_counts("gpt2-t", architecture, 320, 32) == counted  # no train.json


def test_zoo_models_of_a_tuned_run_and_checkpoints():
    models = validated(ZOO)["models"]
    assert list(models) == [
        *(f"zoo-{run}" for run in ZOO["runs"]),
        "zoo-llama-t-step-1",
        "zoo-llama-t-step-3",
    ]
    tuned = models["zoo-llama-t-qa"]
    assert (tuned["tuning"], tuned["base_model"], tuned["family"]) == (
        "tuned",
        "zoo-llama-t",
        "zoo-llama",
    )
    assert "training_step" not in tuned and "training_step" not in models["zoo-gpt2-t"]
    assert (models["zoo-llama-t"]["training_step"], models["zoo-llama-t"]["checkpoint_of"]) == (
        5,  # ceil(320 / (2 * 32))
        "llama-t",
    )
    step = models["zoo-llama-t-step-3"]
    assert step["path"] == "results/zoo/llama-t/checkpoints/step-3"
    assert (step["training_step"], step["checkpoint_of"], step["tuning"]) == (3, "llama-t", "base")
    assert models["zoo-olmoe-t"]["family"] == "zoo-olmoe"
    assert models["zoo-mamba2-t"]["arch"] == "ssm"


def test_user_models_come_first_and_a_name_collision_names_the_run():
    config = validated(ZOO, models={"hub": {"hf_id": "org/model"}})
    assert list(config["models"])[0] == "hub"
    assert config["models"]["hub"] == {"hf_id": "org/model", "dtype": "float32"}
    for name, run in (("zoo-gpt2-t", "gpt2-t"), ("zoo-llama-t-step-3", "llama-t")):
        with pytest.raises(ConfigError, match=rf"'models\.{name}'.*'zoo\.runs\.{run}'"):
            validated(ZOO, models={name: {"path": "elsewhere"}})


def test_two_runs_generating_one_model_name_is_an_error():
    runs = {"a": {"recipe": "llama", **TINY, "checkpoints": [1]}, "a-step-1": ZOO["runs"]["gpt2-t"]}
    with pytest.raises(ConfigError, match=r"'zoo\.runs\.a'.*'zoo-a-step-1'.*zoo\.runs\.a-step-1"):
        validated({**ZOO, "runs": runs})


def test_heldout_workloads_take_the_zoo_fraction():
    config = validated(ZOO)
    assert config["workloads"]["w"]["heldout_fraction"] == 0.25  # zoo.heldout_fraction
    same = {"w": {**WORKLOADS["w"], "heldout_fraction": 0.25}}
    assert validated(ZOO, workloads=same)["workloads"] == config["workloads"]
    other = {"w": {**WORKLOADS["w"], "heldout_fraction": 0.2}}
    with pytest.raises(
        ConfigError,
        match=r"'workloads\.w\.heldout_fraction': 0\.2 differs from config key "
        r"'zoo\.heldout_fraction' 0\.25",
    ):
        validated(ZOO, workloads=other)
    # Without a zoo a workload keeps its own fraction; other subsets are left alone.
    alone = {"w": {**WORKLOADS["w"], "heldout_fraction": 0.3}}
    no_zoo = validate_config({"models": {"m": {"path": "p"}}, "workloads": alone})
    assert no_zoo["workloads"]["w"]["heldout_fraction"] == 0.3
    train = {"w": {**WORKLOADS["w"], "subset": "train", "heldout_fraction": 0.3}}
    assert validated(ZOO, workloads=train)["workloads"]["w"]["heldout_fraction"] == 0.3


def test_a_study_needs_models_or_zoo_runs():
    with pytest.raises(ConfigError, match=r"config key 'models': the study has no models"):
        validated({**ZOO, "runs": {}})
    with pytest.raises(ConfigError, match=r"'models' is a required property"):
        validate_config({"workloads": WORKLOADS})


def test_rule_settings_keep_runs_independent():
    settings = SETTINGS
    tuned = zoo.rule_settings(settings, "llama-t-qa")
    assert set(tuned["runs"]) == {"llama-t-qa", "llama-t"}
    edited = copy.deepcopy(settings)
    edited["runs"]["gpt2-t"]["hidden_size"] = 32
    assert zoo.rule_settings(edited, "llama-t") == zoo.rule_settings(settings, "llama-t")
    assert zoo.rule_settings(edited, "tokenizer") == zoo.rule_settings(settings, "tokenizer")
    assert zoo.rule_settings(edited, "data") == zoo.rule_settings(settings, "data")


def test_run_priorities_start_the_longest_runs_first():
    settings = SETTINGS
    priorities = zoo.run_priorities(settings)
    assert sorted(priorities.values()) == list(range(1, len(ZOO["runs"]) + 1))
    assert priorities["llama-t-qa"] == 1  # 128 tokens: the cheapest
    assert priorities["mamba2-t"] > priorities["llama-t"]
    assert zoo.base_inputs(settings, "llama-t-qa") == ["results/zoo/llama-t"]
    assert zoo.base_inputs(settings, "llama-t") == []


def test_zoo_rules_dry_run(tmp_path):
    """The zoo rules' DAG: tokenizer -> data -> runs, the tuned run after its base; the study's
    models come from the zoo section (no models: key)."""
    config = {"seed": SEED, "workloads": WORKLOADS, "zoo": ZOO}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "Snakefile").write_text(
        textwrap.dedent(
            f"""
            configfile: "config.yaml"
            include: "{REPO}/workflow/rules/common.smk"
            include: "{REPO}/workflow/rules/zoo.smk"
            rule all:
                input: sorted({{model_local_input(m) for m in MODELS}})
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--quiet", "rules"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **harness.NO_SLURM},
    )
    assert result.returncode == 0, result.stderr + result.stdout
    counts = harness.planned_jobs(result.stdout)
    assert counts == {"all": 1, "zoo_data": 1, "zoo_tokenizer": 1, "zoo_train": 6}


# --------------------------------------------------------------------------- LayerSkip training

EE_SETTINGS = {  # zoo.runs.<run>.early_exit with the schema's defaults written out
    "layer_dropout": 0.1,
    "dropout_depth_scale": "exponential",
    "dropout_time_scale": "exponential",
    "loss_scale": 1.0,
    "curriculum": "none",
    "rotation": 2,
}


def test_layer_dropout_rates_rise_with_depth():
    assert layerskip.dropout_rates(5, 0.2, depth_scale="linear") == pytest.approx(
        [0.0, 0.05, 0.1, 0.15, 0.2]
    )
    # D(l) = 2^(l/(L-1)) - 1: 0, 2^(1/4) - 1, sqrt 2 - 1, 2^(3/4) - 1, 1
    exponential = [0.0, 2**0.25 - 1, 2**0.5 - 1, 2**0.75 - 1, 1.0]
    assert layerskip.dropout_rates(5, 0.2) == pytest.approx([0.2 * d for d in exponential])
    # S(t) = 2^((t-1)/(T-1)) - 1: no dropout at the first step, p_max at the last
    timed = {"steps": 11, "depth_scale": "linear", "time_scale": "exponential"}
    assert layerskip.dropout_rates(3, 0.4, step=1, **timed) == [0.0, 0.0, 0.0]
    assert layerskip.dropout_rates(3, 0.4, step=6, **timed) == pytest.approx(
        [0.0, 0.2 * (2**0.5 - 1), 0.4 * (2**0.5 - 1)]
    )
    assert layerskip.dropout_rates(3, 0.4, step=11, **timed) == pytest.approx([0.0, 0.2, 0.4])


def test_early_exit_weights_are_layerskips_e_scale():
    # L = 4, e_scale 1: e = 0, 1, 3 for blocks 0..2, the last 3 + 3 = 6; sum 10
    assert layerskip.early_exit_weights(4, 1.0) == pytest.approx([0.0, 0.1, 0.3, 0.6])
    # e_scale 0.5: 0, 0.5, 1.5 and 3 + 1.5 = 4.5; sum 6.5
    assert layerskip.early_exit_weights(4, 0.5) == pytest.approx(
        [0, 0.5 / 6.5, 1.5 / 6.5, 4.5 / 6.5]
    )
    assert layerskip.early_exit_weights(4, 0.0) == [0.0, 0.0, 0.0, 1.0]  # e_scale 0: plain training
    # rotational R = 2 at step 1: blocks with (l + 1) mod 2 = 0, i.e. block 1, and the last
    assert layerskip.early_exit_weights(4, 1.0, 1, "rotational", 2) == pytest.approx(
        [0, 1 / 7, 0, 6 / 7]
    )
    assert layerskip.early_exit_weights(4, 1.0, 2, "rotational", 2) == pytest.approx(
        [0, 0, 3 / 9, 6 / 9]
    )


def _tiny_llama(layers: int = 4, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=16,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def test_layer_dropout_skips_a_block_per_sample_in_training_only():
    model = _tiny_llama()
    ids = torch.randint(0, 64, (64, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(input_ids=ids, output_hidden_states=True).hidden_states
    generator = torch.Generator().manual_seed(1)
    model.train()
    with (
        torch.no_grad(),
        layerskip.layer_dropout(model.model.layers, lambda i: ([0, 1, 0.5, 0][i], generator)),
    ):
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        model.eval()
        evaluated = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.equal(hidden[1], plain[1])  # block 0: p = 0
    assert torch.equal(hidden[2], hidden[1])  # block 1: p = 1, every sample skips (h stays)
    skipped = (hidden[3] == hidden[2]).flatten(1).all(1)  # block 2: p = 0.5, per sample
    assert 16 < int(skipped.sum()) < 48
    assert torch.equal(skipped, (hidden[3] == hidden[2]).flatten(1).any(1))  # whole samples
    for a, b in zip(evaluated, plain, strict=True):  # eval mode: no dropout
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():  # the hooks are gone after the block
        after = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert all(torch.equal(a, b) for a, b in zip(after, plain, strict=True))


def test_early_exit_loss_is_the_lens_cross_entropy_weighted_by_depth():
    """J = 0.1 CE_2 + 0.3 CE_3 + 0.6 CE_4 for L = 4, e_scale 1, with CE_l the cross entropy of
    the logit lens (exitbench.lens.LogitLens: the model's own final norm and head) at layer l."""
    model = _tiny_llama()
    ids = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(2))
    lens = LogitLens.from_model(model)
    hidden = lens.forward_hidden_states(ids)

    @torch.no_grad()
    def lens_ce(layer: int) -> float:
        logits = lens.decode(hidden[layer], layer)[:, :-1]
        return float(
            torch.nn.functional.cross_entropy(logits.reshape(-1, 64), ids[:, 1:].flatten())
        )

    settings = {**EE_SETTINGS, "layer_dropout": 0.0}
    training = layerskip.EarlyExitTraining(model, settings, steps=10, seed=0)
    model.train()
    with torch.no_grad():
        loss, final = training.loss(ids, step=1)
    training.remove_hooks()
    expected = 0.0 * lens_ce(1) + 0.1 * lens_ce(2) + 0.3 * lens_ce(3) + 0.6 * lens_ce(4)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
    plain = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), ids[:, 1:].flatten())
    assert float(final) == float(plain) == pytest.approx(lens_ce(4), rel=1e-6)


def test_early_exit_training_is_seeded():

    ids = torch.randint(0, 64, (32, 8), generator=torch.Generator().manual_seed(3))
    settings = {**EE_SETTINGS, "layer_dropout": 0.5, "dropout_time_scale": "constant"}

    def losses(seed: int) -> list[float]:
        model = _tiny_llama()
        training = layerskip.EarlyExitTraining(model, settings, steps=3, seed=seed)
        model.train()
        with torch.no_grad():
            return [float(training.loss(ids, step)[0]) for step in (1, 2, 3)]

    assert losses(0) == losses(0)
    assert losses(0) != losses(1)


def test_an_early_exit_run_is_a_control_beside_its_baseline():
    runs = {
        "llama-t": ZOO["runs"]["llama-t"],
        "llama-t-ee": {"recipe": "llama", **TINY, "early_exit": {"baseline": "llama-t"}},
    }
    models = validated({**ZOO, "runs": runs})["models"]
    control = models["zoo-llama-t-ee"]
    assert (control["control"], control["base_model"], control["tuning"]) == (
        True,
        "zoo-llama-t",
        "base",
    )
    assert "control" not in models["zoo-llama-t"]
    filled = validated({**ZOO, "runs": runs})["zoo"]["runs"]["llama-t-ee"]["early_exit"]
    assert filled == {**EE_SETTINGS, "baseline": "llama-t"}


@pytest.mark.parametrize(
    ("early_exit", "extra", "message"),
    [
        ({"baseline": "nope"}, {}, "'nope' is not another run"),
        ({"baseline": "t"}, {}, "'t' is not another run"),
        (
            {"baseline": "llama-t"},
            {"hidden_size": 32},
            "differs from its baseline 'llama-t' in hidden_size",
        ),
        ({"baseline": "llama-t"}, {"train_tokens": 64}, "in train_tokens"),
        ({"baseline": "gpt2-t"}, {}, "in recipe"),
    ],
)
def test_an_early_exit_baseline_must_match_naming_the_key(early_exit, extra, message):
    bad = copy.deepcopy(ZOO)
    bad["runs"]["t"] = {"recipe": "llama", **TINY, **extra, "early_exit": early_exit}
    with pytest.raises(ConfigError, match=f"'zoo.runs.t.early_exit.baseline'.*{message}"):
        validated(bad)


def test_default_study_has_its_positive_control():
    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    run = config["zoo"]["runs"]["llama-s-ee"]
    assert run["early_exit"]["baseline"] == "llama-s"
    plain = config["zoo"]["runs"]["llama-s"]
    assert {k: run[k] for k in zoo.ARCHITECTURE_KEYS if k in run} == {
        k: plain[k] for k in zoo.ARCHITECTURE_KEYS if k in plain
    }
    entry = config["models"]["zoo-llama-s-ee"]
    assert (entry["control"], entry["base_model"]) == (True, "zoo-llama-s")
    rows = pd.DataFrame(
        [{"model": name, "status": "ok", **entry} for name, entry in config["models"].items()]
    )
    assert ("zoo-llama-s-ee", "zoo-llama-s") in selection.control_pairs(rows)
    assert "zoo-llama-s-ee" not in set(selection.independent_models(rows)["model"])
