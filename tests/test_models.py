"""Model loading: sources, the hub cache, dtypes, config-only descriptions, clear errors."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
from transformers import AutoConfig, AutoModelForCausalLM, BertConfig

from exitbench import models
from exitbench.models import ModelLoadError

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty HF_HOME with hub look-ups switched off; returns the hub cache folder."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both at import time; mirror them for code paths that read the constants
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    return home / "hub"


@pytest.fixture
def cached_repo(offline_hub, tiny_model_dirs) -> str:
    """Tiny llama placed in the hub cache layout as org/tiny-llama with refs main and step10."""
    repo = offline_hub / "models--org--tiny-llama"
    shutil.copytree(tiny_model_dirs["llama"], repo / "snapshots" / SHA)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    (repo / "refs" / "step10").write_text(SHA)
    return "org/tiny-llama"


def test_path_source_loads_config_tokenizer_model(tiny_model_dirs):
    entry = {"path": str(tiny_model_dirs["gpt2"]), "dtype": "float32"}
    assert models.resolve_source("g", entry) == (str(tiny_model_dirs["gpt2"]), None)
    assert models.load_config("g", entry).model_type == "gpt2"
    tokenizer = models.load_tokenizer("g", entry)
    assert tokenizer.is_fast and tokenizer.pad_token is None
    model, dtype = models.load_model("g", entry, device="cpu")
    assert dtype == torch.float32 and not model.training


def test_missing_path_names_the_key(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match=r"models\.m\.path") as err:
        models.load_config("m", {"path": missing})
    assert missing in str(err.value) and "save_pretrained" in str(err.value)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match=r"models\.m\.path.*no config\.json"):
        models.load_config("m", {"path": str(tmp_path)})


def test_unknown_hub_id_offline(offline_hub):
    with pytest.raises(ModelLoadError) as err:
        models.load_config("m", {"hf_id": "org/not-cached"})
    message = str(err.value)
    assert "models.m.hf_id" in message and "'org/not-cached'" in message
    assert "not in the local Hugging Face cache" in message and "HF_HUB_OFFLINE" in message
    assert "hf download org/not-cached" in message


def test_cached_revision_loads_and_missing_revision_fails(cached_repo):
    entry = {"hf_id": cached_repo, "revision": "step10", "dtype": "float32"}
    assert models.load_config("m", entry).model_type == "llama"
    model, _ = models.load_model("m", entry, device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert models.load_tokenizer("m", entry).is_fast
    direct = AutoModelForCausalLM.from_pretrained(cached_repo, revision="step10")
    assert torch.equal(direct.lm_head.weight, model.lm_head.weight)
    assert models.describe_model("m", entry)["source"] == {
        "hf_id": cached_repo,
        "revision": "step10",
    }

    with pytest.raises(ModelLoadError) as err:
        models.load_config("m", {"hf_id": cached_repo, "revision": "step99"})
    message = str(err.value)
    assert "models.m.revision" in message and "'step99'" in message
    assert "not in the local Hugging Face cache" in message and "step10" in message
    assert "hf download org/tiny-llama --revision step99" in message


def test_unsupported_model_type(tmp_path):
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"models\.m\.path.*model_type 'bert'"):
        models.load_config("m", {"path": str(tmp_path)})


def _hub_error(kind: type[Exception], message: str) -> Exception:
    err = kind.__new__(kind)  # these need an HTTP response to construct normally
    Exception.__init__(err, message)
    return err


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (GatedRepoError, [r"models\.m\.hf_id", "gated", "hf auth login", "HF_TOKEN", "licence"]),
        (RevisionNotFoundError, [r"models\.m\.revision", "'v9'", "list_repo_refs"]),
        (RepositoryNotFoundError, [r"models\.m\.hf_id", "no such model"]),
    ],
)
def test_online_hub_errors_are_mapped(monkeypatch, error, expected):
    def fail(*args, **kwargs):
        raise OSError("wrapped by transformers") from _hub_error(error, "hub said no")

    monkeypatch.setattr(AutoConfig, "from_pretrained", fail)
    with pytest.raises(ModelLoadError) as err:
        models.load_config("m", {"hf_id": "org/x", "revision": "v9"})
    for pattern in expected:
        assert re.search(pattern, str(err.value)), (pattern, str(err.value))


def test_bad_dtype_and_device(tiny_model_dirs):
    with pytest.raises(ModelLoadError, match=r"models\.m\.dtype"):
        models.load_model("m", {"path": str(tiny_model_dirs["llama"]), "dtype": "int8"}, "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match=r"extract\.device"):
            models.resolve_device("cuda:0")
    assert models.resolve_device("auto") in {"cpu", "cuda"}


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors_names_the_model_and_the_file(tiny_model_dirs, tmp_path, damage):
    """Issue 10 item 4: not a bare SafetensorError from deep inside transformers."""
    folder = tmp_path / "copy"
    shutil.copytree(tiny_model_dirs["llama"], folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a model")
    with pytest.raises(ModelLoadError) as err:
        models.load_model("m", {"path": str(folder)}, "cpu")
    message = str(err.value)
    assert message.startswith(
        f"config key 'models.m.path' ({str(folder)!r}): model 'm' has a corrupt or truncated "
        f"weights file: {weights} ("
    )
    assert message.endswith("copy or save_pretrained the model again")


def test_bfloat16_on_cpu_warns(tiny_model_dirs, caplog):
    entry = {"path": str(tiny_model_dirs["llama"]), "dtype": "bfloat16"}
    with caplog.at_level(logging.WARNING, logger="exitbench.models"):
        model, dtype = models.load_model("m", entry, device="cpu")
    assert dtype == torch.bfloat16 and model.lm_head.weight.dtype == torch.bfloat16
    assert "bfloat16 weights on CPU" in caplog.text


def test_max_positions(tiny_model_dirs):
    config = {
        kind: models.load_config(kind, {"path": str(path)})
        for kind, path in tiny_model_dirs.items()
    }
    assert models.max_positions(config["llama"]) == 128
    assert models.max_positions(config["gpt2"]) == 128
    assert models.max_positions(config["mamba2"]) is None


@pytest.mark.parametrize(("kind", "layers"), [("llama", [0, 1, 2, 3]), ("mamba2", [1, 2, 3])])
def test_describe_model(tiny_model_dirs, kind, layers):
    info = models.describe_model(kind, {"path": str(tiny_model_dirs[kind])})
    assert info["name"] == kind and info["model_type"] == kind
    assert info["source"] == {"path": str(tiny_model_dirs[kind]), "revision": None}
    assert info["num_layers"] == 3 and info["layer_numbers"] == layers
    assert info["hidden_size"] == 32 and info["vocab_size"] == 384
    assert info["config"]["model_type"] == kind
    assert json.loads(json.dumps(info)) == info
