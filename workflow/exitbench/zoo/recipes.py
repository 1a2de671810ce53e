"""The zoo's recipes: per recipe, the transformers config it builds, the checks a run's
architecture must pass, its training cost, and the metadata its models carry in the study.

Adding a recipe is adding an entry to :data:`RECIPES` (and its name to the ``recipe`` enum of
``workflow/schemas/zoo.schema.yaml``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from exitbench.config import ConfigError

if TYPE_CHECKING:  # torch is imported where used, so Snakefiles import this module quickly
    import torch


@dataclass(frozen=True)
class Recipe:
    """One recipe. ``arch`` is the registry's class (dense | moe | ssm); ``family``,
    ``generation`` and ``release`` are the study metadata of every model it trains."""

    arch: str
    family: str
    generation: str
    release: str
    build: Callable[[dict[str, Any], dict[str, Any]], Any]
    check: Callable[[str, dict[str, Any]], None]
    #: weights one token passes through in one layer (active experts only); for the cost
    layer_weights: Callable[[dict[str, Any]], int]
    #: relative cost per weight on CPU (mamba2's torch chunked scan is slow)
    cost_per_weight: float


def _llama_width(hidden: int) -> int:
    """SwiGLU width ``8/3 * hidden`` rounded up to a multiple of 8 (Llama's rule)."""
    return 8 * math.ceil(8 * hidden / 3 / 8)


# --------------------------------------------------------------------------- configs


def _gpt2(spec: dict[str, Any], common: dict[str, Any]) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        n_embd=spec["hidden_size"],
        n_layer=spec["num_layers"],
        n_head=spec["num_heads"],
        n_inner=spec.get("intermediate_size", 4 * spec["hidden_size"]),
        n_positions=common.pop("max_position_embeddings"),
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=spec.get("tie_word_embeddings", True),
        **common,
    )


def _llama_common(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "hidden_size": spec["hidden_size"],
        "num_hidden_layers": spec["num_layers"],
        "num_attention_heads": spec["num_heads"],
        "num_key_value_heads": spec.get("num_kv_heads", spec["num_heads"]),
        "attention_dropout": 0.0,
        "tie_word_embeddings": spec.get("tie_word_embeddings", False),
    }


def _llama(spec: dict[str, Any], common: dict[str, Any]) -> Any:
    from transformers import LlamaConfig

    width = spec.get("intermediate_size", _llama_width(spec["hidden_size"]))
    return LlamaConfig(intermediate_size=width, **_llama_common(spec), **common)


def _mixtral(spec: dict[str, Any], common: dict[str, Any]) -> Any:
    from transformers import MixtralConfig

    width = spec.get("intermediate_size", _llama_width(spec["hidden_size"]))
    return MixtralConfig(
        intermediate_size=width,
        num_local_experts=spec["num_experts"],
        num_experts_per_tok=spec["experts_per_token"],
        router_aux_loss_coef=spec.get("router_aux_loss_coef", 0.01),
        **_llama_common(spec),
        **common,
    )


def _olmoe(spec: dict[str, Any], common: dict[str, Any]) -> Any:
    from transformers import OlmoeConfig

    width = spec.get("intermediate_size", _llama_width(spec["hidden_size"]))
    return OlmoeConfig(
        intermediate_size=width,
        num_experts=spec["num_experts"],
        num_experts_per_tok=spec["experts_per_token"],
        router_aux_loss_coef=spec.get("router_aux_loss_coef", 0.01),
        **_llama_common(spec),
        **common,
    )


def _mamba2(spec: dict[str, Any], common: dict[str, Any]) -> Any:
    from transformers import Mamba2Config

    common.pop("max_position_embeddings")
    expand = spec.get("expand", 2)
    head_dim = spec.get("head_dim", 32)
    return Mamba2Config(
        hidden_size=spec["hidden_size"],
        num_hidden_layers=spec["num_layers"],
        expand=expand,
        head_dim=head_dim,
        num_heads=expand * spec["hidden_size"] // head_dim,
        state_size=spec.get("state_size", 32),
        n_groups=1,
        conv_kernel=4,
        chunk_size=spec.get("chunk_size", 64),
        tie_word_embeddings=spec.get("tie_word_embeddings", False),
        **common,
    )


# --------------------------------------------------------------------------- checks
# Each raises ConfigError naming the key of run ``key`` (``zoo.runs.<run>``) to fix.


def _check_attention(key: str, spec: dict[str, Any]) -> None:
    heads = spec.get("num_heads")
    if heads is None:
        raise ConfigError(
            f"config key '{key}.num_heads': recipe {spec['recipe']!r} needs num_heads"
        )
    if spec["hidden_size"] % heads:
        raise ConfigError(
            f"config key '{key}.num_heads': hidden_size {spec['hidden_size']} is not a multiple "
            f"of num_heads {heads}"
        )
    kv_heads = spec.get("num_kv_heads", heads)
    if heads % kv_heads:
        raise ConfigError(
            f"config key '{key}.num_kv_heads': num_heads {heads} is not a multiple of "
            f"num_kv_heads {kv_heads}"
        )


def _check_moe(key: str, spec: dict[str, Any]) -> None:
    _check_attention(key, spec)
    for needed in ("num_experts", "experts_per_token"):
        if needed not in spec:
            raise ConfigError(
                f"config key '{key}.{needed}': recipe {spec['recipe']!r} needs {needed}"
            )
    if spec["experts_per_token"] > spec["num_experts"]:
        raise ConfigError(
            f"config key '{key}.experts_per_token': {spec['experts_per_token']} is more than "
            f"num_experts {spec['num_experts']}"
        )


def _check_mamba2(key: str, spec: dict[str, Any]) -> None:
    inner = spec.get("expand", 2) * spec["hidden_size"]
    head_dim = spec.get("head_dim", 32)
    if inner % head_dim:
        raise ConfigError(
            f"config key '{key}.head_dim': expand * hidden_size = {inner} is not a multiple "
            f"of head_dim {head_dim}"
        )


# --------------------------------------------------------------------------- cost


def _gpt2_layer(spec: dict[str, Any]) -> int:
    d = spec["hidden_size"]
    return 4 * d * d + 2 * d * spec.get("intermediate_size", 4 * d)


def _llama_layer(spec: dict[str, Any]) -> int:
    d = spec["hidden_size"]
    width = spec.get("intermediate_size", _llama_width(d))
    return 4 * d * d + 3 * d * width * spec.get("experts_per_token", 1)


def _mamba2_layer(spec: dict[str, Any]) -> int:
    d = spec["hidden_size"]
    return 3 * spec.get("expand", 2) * d * d


# --------------------------------------------------------------------------- the table

# `release` dates are SYNTHETIC STAND-INS: they place each recipe on the paper's time axis at
# the release of the model that introduced it (GPT-2 2019-02, Llama 2 2023-07, Mixtral
# 2023-12, OLMoE 2024-09, Mamba-2 2024-05), not when the zoo's models were trained. A tuned
# run and every checkpoint carry the release of their run's recipe.
#: recipe -> how it builds, checks and costs its models, and their study metadata.
RECIPES: dict[str, Recipe] = {
    "gpt2": Recipe(
        "dense", "zoo-gpt2", "older recipe", "2019-02", _gpt2, _check_attention, _gpt2_layer, 1.0
    ),
    "llama": Recipe(
        "dense", "zoo-llama", "newer recipe", "2023-07", _llama, _check_attention, _llama_layer, 1.0
    ),
    "mixtral": Recipe(
        "moe", "zoo-mixtral", "newer recipe", "2023-12", _mixtral, _check_moe, _llama_layer, 1.2
    ),
    "olmoe": Recipe(
        "moe", "zoo-olmoe", "newer recipe", "2024-09", _olmoe, _check_moe, _llama_layer, 1.2
    ),
    "mamba2": Recipe(
        "ssm", "zoo-mamba2", "newer recipe", "2024-05", _mamba2, _check_mamba2, _mamba2_layer, 3.0
    ),
}


def model_config(spec: dict[str, Any], vocab_size: int, eos_token_id: int, seq_len: int) -> Any:
    """The transformers config of a run's architecture (``spec``, see ``plan.run_spec``)."""
    common = {
        "vocab_size": vocab_size,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": None,  # no padding: a pad id would freeze that token's embedding
        "max_position_embeddings": seq_len,
        "use_cache": True,
    }
    return RECIPES[spec["recipe"]].build(spec, common)


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """``total_params`` (tied weights once) and ``active_params`` per token.

    active = total − Σ_MoE-layers (1 − k/E) · (expert weights), with E experts
    and k routed per token; dense and SSM models have active = total.
    """

    total = sum(parameter.numel() for parameter in model.parameters())
    top_k = getattr(model.config, "num_experts_per_tok", None)
    inactive = 0.0
    for module in model.modules():
        experts = getattr(module, "num_experts", None)
        if top_k and experts and hasattr(module, "gate_up_proj"):
            weights = sum(parameter.numel() for parameter in module.parameters(recurse=True))
            inactive += weights * (1 - top_k / experts)
    return {"total_params": int(total), "active_params": int(round(total - inactive))}


def model_parameters(spec: dict[str, Any], vocab_size: int, seq_len: int) -> dict[str, int]:
    """:func:`count_parameters` of the model ``spec`` builds, counted on the meta device
    (no memory, no weights): what ``train.json`` reports once the run is trained, provided the
    BPE reaches ``vocab_size`` tokens."""
    frozen = tuple(
        sorted((k, v) for k, v in spec.items() if isinstance(v, (bool, int, float, str)))
    )
    return dict(_meta_parameters(frozen, vocab_size, seq_len))


@lru_cache(maxsize=256)
def _meta_parameters(spec: tuple, vocab_size: int, seq_len: int) -> tuple:
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(dict(spec), vocab_size, 0, seq_len)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return tuple(count_parameters(model).items())
