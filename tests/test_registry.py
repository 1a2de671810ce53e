"""Model registry: data/registry.csv loads typed and validated, every study model is in it,
bad rows are rejected naming the hf_id, and fill_metadata fills configs (config values win)."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest
import torch
import yaml
from tiny_configs import CASES  # tests/tiny_configs.py (tests/ is on sys.path)
from transformers import (
    AutoModelForCausalLM,
    FalconConfig,
    Gemma3Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    LlamaConfig,
    Qwen2Config,
    SiglipVisionConfig,
)

from exitbench import flops
from exitbench.config import validate_config
from exitbench.registry import (
    METADATA_KEYS,
    RegistryError,
    fill_metadata,
    load_registry,
    registry_record,
)

REPO = Path(__file__).resolve().parent.parent
REGISTRY = REPO / "data" / "registry.csv"
STUDIES = [REPO / "studies" / "paper.yaml", REPO / "studies" / "single-gpu.yaml"]


@pytest.fixture(scope="module")
def registry():
    return load_registry(REGISTRY)


def read_rows() -> tuple[list[str], list[dict[str, str]]]:
    with REGISTRY.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def write_rows(path: Path, fields: list[str], rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def edited_registry(tmp_path: Path, target: str, **changes: str) -> Path:
    fields, rows = read_rows()
    row = next(row for row in rows if row["hf_id"] == target)
    row.update(changes)
    return write_rows(tmp_path / "registry.csv", fields, rows)


# --------------------------------------------------------------------------- the shipped file


def test_registry_loads_typed(registry):
    assert len(registry) >= 90
    assert registry["hf_id"].str.lower().is_unique
    for column in ("release", "arch", "total_params", "family", "generation"):
        assert registry[column].notna().all(), column
    assert set(registry["arch"]) == {"dense", "moe", "ssm", "hybrid"}
    assert set(registry["tuning"].dropna()) == {"base", "tuned"}
    assert str(registry["layers"].dtype) == "Int64"
    assert str(registry["gated"].dtype) == "boolean"
    assert registry["total_params"].dtype == "float64"
    moe = registry[registry["arch"] == "moe"]
    assert (moe["active_params"] < moe["total_params"]).all()


def test_question_mark_never_leaks():
    """'?' marks an unverified lead value: no cell may hold it (source URLs aside)."""
    fields, rows = read_rows()
    for row in rows:
        for field in fields:
            if not field.startswith("source"):
                assert "?" not in row[field], (row["hf_id"], field, row[field])


def test_every_fact_has_a_source(registry):
    assert registry["source_card"].notna().all()
    assert registry["source_release"].notna().all()
    has_config_facts = registry[["layers", "hidden", "vocab"]].notna().any(axis=1)
    assert registry.loc[has_config_facts, "source_config"].notna().all()
    has_checkpoints = registry["checkpoints"].notna()
    assert registry.loc[has_checkpoints, "source_checkpoints"].notna().all()
    for verified in registry["verified"].dropna():
        assert set(verified.split(";")) <= set(registry.columns), verified


def test_verified_facts(registry):
    """Spot checks of values verified against config.json files and release posts."""
    olmo32 = registry_record(registry, "allenai/OLMo-2-0325-32B")
    assert (olmo32["layers"], olmo32["hidden"], olmo32["vocab"]) == (64, 5120, 100352)
    assert olmo32["tied_embeddings"] is False
    qwen_moe = registry_record(registry, "Qwen/Qwen3-30B-A3B-Base")
    assert (qwen_moe["arch"], qwen_moe["total_params"], qwen_moe["active_params"]) == (
        "moe",
        3.05e10,
        3.3e9,
    )
    assert registry_record(registry, "openai-community/gpt2")["total_params"] == 1.24e8
    assert registry_record(registry, "EleutherAI/pythia-410m")["release"] == "2023-04-03"
    assert registry_record(registry, "state-spaces/mamba-130m-hf")["arch"] == "ssm"
    # blanks filled where a source exists (issue 14), each with its source
    gemma270 = registry_record(registry, "google/gemma-3-270m")
    assert (gemma270["layers"], gemma270["hidden"]) == (18, 640)
    assert {"layers", "hidden"} <= set(gemma270["verified"].split(";"))
    assert registry_record(registry, "Zyphra/Zamba2-7B")["layers"] == 81
    assert registry_record(registry, "Zyphra/Zamba2-7B")["source_config"]
    # unverifiable lead values stay empty instead of guessed
    assert registry_record(registry, "Zyphra/Zamba2-7B")["gated"] is None
    # corrections: Qwen1.5-0.5B's tied head counted once; Gemma-3 >= 4B without the vision tower
    assert registry_record(registry, "Qwen/Qwen1.5-0.5B")["total_params"] == 4.64e8
    gemma4 = registry_record(registry, "google/gemma-3-4b-pt")
    assert (gemma4["total_params"], gemma4["multimodal_params"]) == (3.88e9, 4.32e9)
    gemma12 = registry_record(registry, "google/gemma-3-12b-pt")
    assert (gemma12["total_params"], gemma12["multimodal_params"]) == (1.177e10, 1.22e10)
    gemma27 = registry_record(registry, "google/gemma-3-27b-pt")
    assert (gemma27["total_params"], gemma27["multimodal_params"]) == (2.7e10, 2.74e10)
    assert registry["multimodal_params"].notna().sum() == 3


def test_tuned_rows_point_at_their_base(registry):
    tuned = registry[registry["base_hf_id"].notna() & registry["control"].isna()]
    assert len(tuned) >= 10
    for row in tuned.itertuples():
        base = registry_record(registry, row.base_hf_id)
        assert row.tuning == "tuned"
        assert base["tuning"] == "base"
        assert (base["arch"], base["total_params"]) == (row.arch, row.total_params)


def test_controls_point_at_their_base(registry):
    """LayerSkip checkpoints: continued pretraining of their base (same size and layout)."""
    controls = registry[registry["control"].fillna(False)]
    assert sorted(controls["hf_id"]) == [
        "facebook/layerskip-llama2-13B",
        "facebook/layerskip-llama2-7B",
        "facebook/layerskip-llama3-8B",
        "facebook/layerskip-llama3.2-1B",
    ]
    for row in controls.itertuples():
        base = registry_record(registry, row.base_hf_id)
        assert row.tuning == base["tuning"] == "base"
        assert row.gated and "FAIR Noncommercial" in row.notes
        for key in ("arch", "model_type", "total_params", "layers", "hidden", "vocab"):
            assert getattr(row, key) == base[key], (row.hf_id, key)
        assert row.tied_embeddings == base["tied_embeddings"]


def test_registry_lookup_is_case_insensitive(registry):
    assert (
        registry_record(registry, "META-LLAMA/llama-3.1-8b")["hf_id"] == "meta-llama/Llama-3.1-8B"
    )
    assert registry_record(registry, "nobody/nothing") is None


@pytest.mark.parametrize("study", STUDIES, ids=lambda path: path.stem)
def test_every_study_model_is_in_the_registry(study, registry):
    models = yaml.safe_load(study.read_text())["models"]
    for name, entry in models.items():
        assert "hf_id" in entry, f"{study.name}: model {name} has no hf_id"
        record = registry_record(registry, entry["hf_id"])
        assert record is not None, f"{study.name}: {name} ({entry['hf_id']}) not in the registry"
        assert record["release"] and record["arch"], name
        assert record["total_params"] > 0, name


# --------------------------------------------------------------------------- rejected rows


@pytest.mark.parametrize("field", ["release", "arch", "total_params"])
def test_row_missing_a_required_fact_is_rejected(tmp_path, field):
    path = edited_registry(tmp_path, "facebook/opt-1.3b", **{field: ""})
    with pytest.raises(RegistryError) as err:
        load_registry(path)
    message = str(err.value)
    assert "facebook/opt-1.3b" in message
    assert f"missing {field}" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"layers": "24?"}, "'layers'"),
        ({"release": "2022-05?"}, "'?' marks an unverified value"),
        ({"arch": "transformer"}, "'arch'"),
        ({"release": "2022-13"}, "'release'"),
        ({"release": "2023-02-30"}, "not a calendar date"),
        ({"gated": "yes"}, "not a boolean"),
        ({"total_params": "1.3B"}, "not a number"),
        ({"active_params": "2e9"}, "exceeds total_params"),
        ({"base_hf_id": "nobody/base"}, "not a row of the registry"),
        ({"hf_id": "facebook/OPT-125m"}, "repeats line"),
        ({"control": "true"}, "control is true but base_hf_id is empty"),
        ({"base_hf_id": "facebook/opt-125m"}, "tuning must be 'tuned' (or control true)"),
        ({"multimodal_params": "0"}, "'multimodal_params'"),
    ],
)
def test_bad_row_is_rejected_naming_the_model(tmp_path, changes, expected):
    hf_id = "facebook/opt-1.3b"
    path = edited_registry(tmp_path, hf_id, **changes)
    with pytest.raises(RegistryError) as err:
        load_registry(path)
    message = str(err.value)
    assert expected in message
    assert repr(changes.get("hf_id", hf_id)) in message


def test_unknown_column_and_missing_file_are_rejected(tmp_path):
    fields, rows = read_rows()
    for row in rows:
        row["colour"] = "red"
    with pytest.raises(RegistryError, match="unknown column.*colour"):
        load_registry(write_rows(tmp_path / "extra.csv", [*fields, "colour"], rows))
    with pytest.raises(RegistryError, match="not found"):
        load_registry(tmp_path / "absent.csv")


# --------------------------------------------------------------------------- fill_metadata


def test_fill_metadata_fills_and_config_values_win(registry):
    models = {
        "gpt2": {"hf_id": "openai-community/gpt2", "dtype": "float32"},
        "mine": {"hf_id": "openai-community/gpt2-medium", "release": "2020-01", "family": "Mine"},
        "llama-base": {"hf_id": "meta-llama/Llama-3.1-8B"},
        "llama-chat": {"hf_id": "meta-llama/Llama-3.1-8B-Instruct"},
        "olmoe": {"hf_id": "allenai/OLMoE-1B-7B-0924"},
        "local": {"path": "some/dir"},
        "unknown": {"hf_id": "someone/unknown-model"},
    }
    before = copy.deepcopy(models)
    filled = fill_metadata(models, registry)
    assert models == before, "fill_metadata must not mutate its input"

    gpt2 = filled["gpt2"]
    assert gpt2 == {
        "hf_id": "openai-community/gpt2",
        "dtype": "float32",
        "family": "GPT-2",
        "generation": "GPT-2",
        "release": "2019-02",
        "arch": "dense",
        "total_params": 1.24e8,
        "layers": 12,
        "hidden": 768,
        "vocab": 50257,
        "tuning": "base",
        "gated": False,
    }
    assert type(gpt2["total_params"]) is float and type(gpt2["gated"]) is bool
    assert type(gpt2["layers"]) is int  # the config schema's integer, not numpy's
    assert filled["mine"]["release"] == "2020-01" and filled["mine"]["family"] == "Mine"
    assert filled["mine"]["arch"] == "dense" and filled["mine"]["total_params"] == 3.55e8
    assert filled["llama-chat"]["base_model"] == "llama-base"
    assert filled["llama-chat"]["tuning"] == "tuned" and filled["llama-chat"]["gated"] is True
    assert "base_model" not in filled["llama-base"]
    assert filled["olmoe"]["arch"] == "moe" and filled["olmoe"]["active_params"] == 1.3e9
    assert filled["local"] == {"path": "some/dir"}
    assert filled["unknown"] == {"hf_id": "someone/unknown-model"}


def test_fill_metadata_base_model_rules(registry):
    chat = {"hf_id": "meta-llama/Llama-3.1-8B-Instruct"}
    # the config's base_model wins
    filled = fill_metadata({"chat": {**chat, "base_model": "x"}, "x": {"path": "p"}}, registry)
    assert filled["chat"]["base_model"] == "x"
    # the base only as an intermediate checkpoint is no pair
    checkpoint = {"hf_id": "meta-llama/Llama-3.1-8B", "revision": "abc123"}
    filled = fill_metadata({"chat": dict(chat), "ckpt": checkpoint}, registry)
    assert "base_model" not in filled["chat"]
    # hub ids are case-insensitive; revision main is the final model
    base = {"hf_id": "META-LLAMA/llama-3.1-8b", "revision": "main"}
    filled = fill_metadata({"chat": dict(chat), "base": base}, registry)
    assert filled["chat"]["base_model"] == "base"
    assert filled["base"]["release"] == "2024-07"


@pytest.mark.parametrize("study", STUDIES, ids=lambda path: path.stem)
def test_filled_studies_still_validate(study, registry):
    config = validate_config(yaml.safe_load(study.read_text()))
    models = fill_metadata(config["models"], registry)
    validate_config({**config, "models": models})
    for name, entry in models.items():
        for key in ("release", "arch", "total_params", "family", "generation"):
            assert key in entry, (name, key)
        for key in METADATA_KEYS:
            assert "?" not in str(entry.get(key, "")), (name, key)


# --------------------------------------------------------------------------- tied heads


def _tiny_types_and_ties(registry) -> list[tuple[str, bool]]:
    """(model_type, tied_embeddings) of every registry row whose type has a tiny config."""
    rows = registry[registry["model_type"].isin(set(CASES)) & registry["tied_embeddings"].notna()]
    return sorted({(row.model_type, bool(row.tied_embeddings)) for row in rows.itertuples()})


def _with_tie(model_type: str, tied: bool):
    config = CASES[model_type]()
    config.tie_word_embeddings = tied
    text = config.get_text_config()
    if text is not config:  # Gemma-3 >= 4B: the text model holds the embeddings
        text.tie_word_embeddings = tied
    return config


def test_every_tiny_type_of_the_registry_is_covered(registry):
    covered = {model_type for model_type, _ in _tiny_types_and_ties(registry)}
    assert len(covered) >= 25
    assert {"gptj", "falcon", "gpt_neox", "qwen2", "gemma3", "llama"} <= covered
    assert ("qwen2", True) in _tiny_types_and_ties(registry)


@pytest.mark.parametrize(
    ("model_type", "tied"), _tiny_types_and_ties(load_registry(REGISTRY)), ids=str
)
def test_parameter_formula_with_the_rows_tie_is_numel(model_type, tied):
    """One convention for every tied model: the head shared with the input embedding counts
    once. flops.parameter_counts with the row's tied_embeddings equals numel of the model
    built from a tiny config of the row's type with that tie."""
    config = _with_tie(model_type, tied)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    numel = sum(parameter.numel() for parameter in model.parameters())
    head = model.get_output_embeddings().weight
    assert (head is model.get_input_embeddings().weight) == tied
    assert flops.parameter_counts(config.to_dict())[0] == numel


def _siglip_so400m() -> SiglipVisionConfig:
    """Gemma-3's vision tower (config.json vision_config of gemma-3-4b/12b/27b-pt)."""
    return SiglipVisionConfig(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
        image_size=896, patch_size=14, vision_use_head=False,
    )  # fmt: skip


def _gemma3(hidden: int, inner: int, layers: int, heads: int, kv: int, head_dim: int):
    text = Gemma3TextConfig(
        hidden_size=hidden, intermediate_size=inner, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim, vocab_size=262208,
    )  # fmt: skip
    return Gemma3Config(text_config=text.to_dict(), vision_config=_siglip_so400m().to_dict())


# hf_id -> its config.json (the registry row's source_config), written out with the keys that
# size the model. Tied rows among them check the tie convention at full size.
FULL_CONFIGS = {
    "openai-community/gpt2": lambda: GPT2Config(),
    "Qwen/Qwen1.5-0.5B": lambda: Qwen2Config(
        hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
        num_key_value_heads=16, vocab_size=151936, tie_word_embeddings=True,
    ),
    "Qwen/Qwen2.5-0.5B": lambda: Qwen2Config(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "meta-llama/Llama-3.2-1B": lambda: LlamaConfig(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
    ),
    "google/gemma-3-270m": lambda: Gemma3TextConfig(
        hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
        num_key_value_heads=1, head_dim=256, vocab_size=262144,
    ),
    "EleutherAI/gpt-j-6b": lambda: GPTJConfig(
        n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, vocab_size=50400
    ),
    "EleutherAI/gpt-neox-20b": lambda: GPTNeoXConfig(
        hidden_size=6144, intermediate_size=24576, num_hidden_layers=44, num_attention_heads=64,
        vocab_size=50432, rotary_pct=0.25, tie_word_embeddings=False,
    ),
    "tiiuae/falcon-7b": lambda: FalconConfig(
        hidden_size=4544, num_hidden_layers=32, num_attention_heads=71, vocab_size=65024,
        multi_query=True, parallel_attn=True, bias=False, new_decoder_architecture=False,
    ),
    "google/gemma-3-4b-pt": lambda: _gemma3(2560, 10240, 34, 8, 4, 256),
    "google/gemma-3-12b-pt": lambda: _gemma3(3840, 15360, 48, 16, 8, 256),
    "google/gemma-3-27b-pt": lambda: _gemma3(5376, 21504, 62, 32, 16, 128),
}  # fmt: skip


@pytest.mark.parametrize("hf_id", sorted(FULL_CONFIGS))
def test_registry_total_is_the_formula_at_full_size(hf_id, registry):
    """total_params (rounded to 2-4 digits) is parameter_counts of the text model, a tied head
    counted once; multimodal_params adds the vision tower."""
    record = registry_record(registry, hf_id)
    config = FULL_CONFIGS[hf_id]().to_dict()
    assert config["model_type"] == record["model_type"]
    text = config.get("text_config", config)
    assert bool(text.get("tie_word_embeddings", True)) == record["tied_embeddings"], hf_id
    assert text.get("num_hidden_layers", text.get("n_layer")) == record["layers"], hf_id
    total, _ = flops.parameter_counts(config)
    if record["multimodal_params"] is not None:
        assert total == pytest.approx(record["multimodal_params"], rel=0.01)
        text_only = {**text, "model_type": "gemma3_text", "final_logit_softcapping": None}
        total, _ = flops.parameter_counts(text_only)
    assert total == pytest.approx(record["total_params"], rel=0.01), total
