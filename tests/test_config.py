"""Config validation: wrong keys and types fail with the key's path, defaults are filled."""

import pytest

from exitbench.config import ConfigError, section_defaults, validate_config


def minimal(**overrides):
    config = {
        "models": {"tiny": {"path": "some/dir"}},
        "workloads": {"docs": {"source": "embedded", "name": "python-docs"}},
    }
    config.update(overrides)
    return config


def test_defaults_are_filled():
    config = validate_config(minimal())
    assert config["seed"] == 0
    assert config["tokenize"] == {
        "seq_len": 256,
        "max_sequences": 64,
        "mode": "document",
        "add_bos": "auto",
    }
    assert config["extract"]["top_k"] == 5
    assert config["extract"]["shard_sequences"] == 32
    assert config["models"]["tiny"]["dtype"] == "float32"
    assert config["workloads"]["docs"]["subset"] == "all"
    assert config["score"]["consistency_targets"] == [0.99, 0.95]


def test_input_is_not_mutated():
    config = minimal()
    validate_config(config)
    assert "tokenize" not in config


@pytest.mark.parametrize(
    ("change", "path", "expected"),
    [
        (lambda c: c["models"]["tiny"].update(dtype="float64"), "models.tiny.dtype", "float64"),
        (lambda c: c["models"]["tiny"].update(colour="red"), "models.tiny", "colour"),
        (lambda c: c.update(tokenize={"seq_len": "long"}), "tokenize.seq_len", "'long'"),
        (lambda c: c.update(extract={"topk": 5}), "extract", "allowed keys"),
        (lambda c: c["workloads"]["docs"].update(source="web"), "workloads.docs.source", "web"),
        (lambda c: c.update(surprise=1), "<top level>", "surprise"),
        (lambda c: c["models"].update(both={"path": "a", "hf_id": "o/m"}), "models.both", "one of"),
        (lambda c: c["models"].update(neither={"dtype": "auto"}), "models.neither", "one of"),
        (lambda c: c["workloads"].update(f={"source": "file"}), "workloads.f", "'path'"),
        # the zoo section is part of the same schema pass, with the same key paths
        (lambda c: c.update(zoo={"heldout_fraction": 2}), "zoo.heldout_fraction", "2"),
        (lambda c: c.update(zoo={"training": {"seq_len": 4}}), "zoo.training.seq_len", "4"),
        (lambda c: c.update(zoo={"runs": {"x": {"num_layers": 2}}}), "zoo.runs.x", "recipe"),
        (
            lambda c: c.update(zoo={"runs": {"x": {"recipe": "llama", "hidden_size": 1.5}}}),
            "zoo.runs.x.hidden_size",
            "1.5",
        ),
        (lambda c: c.update(zoo={"tokenizers": {}}), "zoo", "allowed keys"),
        # issue 10 item 4: draft 2020-12 counts 48.0 as an integer; we do not
        (
            lambda c: c.update(tokenize={"seq_len": 48.0}),
            "tokenize.seq_len",
            "expected an integer, got the float 48.0 (write 48)",
        ),
        (lambda c: c.update(extract={"top_k": 5.0}), "extract.top_k", "float 5.0"),
        (lambda c: c["workloads"]["docs"].update(max_docs=1e3), "workloads.docs.max_docs", "1000"),
        (lambda c: c.update(seed=True), "seed", "True"),
        (
            lambda c: c.update(zoo={"training": {"seq_len": 64.0}}),
            "zoo.training.seq_len",
            "float 64.0",
        ),
    ],
)
def test_bad_config_names_key(change, path, expected):
    config = minimal()
    change(config)
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    message = str(err.value)
    assert f"config key '{path}'" in message
    assert expected in message


def test_base_model_must_exist():
    config = minimal()
    config["models"]["tiny"]["base_model"] = "nope"
    with pytest.raises(ConfigError, match=r"models\.tiny\.base_model.*'nope'"):
        validate_config(config)


def test_revision_needs_hub_id():
    config = minimal()
    config["models"]["tiny"]["revision"] = "step1"
    with pytest.raises(ConfigError, match=r"models\.tiny\.revision"):
        validate_config(config)


def test_zoo_defaults_are_filled_in_the_same_pass():
    config = validate_config(minimal(zoo={"runs": {}}))
    assert config["zoo"]["heldout_fraction"] == 0.2
    assert config["zoo"]["tokenizer"] == {
        "vocab_size": 4096,
        "min_frequency": 2,
        "max_chars": 4000000,
    }
    assert config["zoo"]["training"]["seq_len"] == 128
    assert "zoo" not in validate_config(minimal())  # no zoo section, no zoo


def test_models_may_be_empty_only_with_a_zoo():
    with pytest.raises(ConfigError, match=r"config key 'models': .*non-empty"):
        validate_config(minimal(models={}))
    zoo = {"runs": {"t": {"recipe": "llama", "hidden_size": 16, "num_layers": 1, "num_heads": 2}}}
    config = validate_config({"workloads": minimal()["workloads"], "zoo": zoo})
    assert list(config["models"]) == ["zoo-t"]
    assert config["models"]["zoo-t"]["dtype"] == "float32"


def test_section_defaults_are_the_schema_defaults():
    assert section_defaults("score") == validate_config(minimal())["score"]
    assert section_defaults("tokenize") == {
        "seq_len": 256,
        "max_sequences": 64,
        "mode": "document",
        "add_bos": "auto",
    }
    zoo = section_defaults("zoo")  # through $ref: zoo.schema.yaml
    assert (zoo["heldout_fraction"], zoo["runs"], zoo["training"]["batch_size"]) == (0.2, {}, 16)
