"""The architecture table: every supported type has every kind of fact, and the facts are true.

For each tiny config of ``tests/tiny_configs.py`` (one per supported model_type):

(a) the decode facts build a lens, the blocks path resolves to the L decoder
    blocks (whose outputs are the model's hidden states), and the FLOP plan
    gives L layers and a head;
(b) ``flops.parameter_counts`` equals ``sum(p.numel())`` of the built model
    exactly, and its active count drops exactly the unrouted experts' share;
(c) config-key synonyms and unsupported types are answered in one place.
"""

from __future__ import annotations

import pytest
import torch
from tiny_configs import CASES, VOCAB  # tests/tiny_configs.py (tests/ is on sys.path)
from transformers import AutoModelForCausalLM, FalconConfig, GPT2Config, LlamaConfig

from exitbench import flops
from exitbench.architectures import (
    ARCHITECTURES,
    CONFIG_KEYS,
    UnsupportedArchitecture,
    check_supported,
    config_value,
    decoder_blocks,
)
from exitbench.lens import LogitLens


def _meta_model(name: str) -> torch.nn.Module:
    """The case's model without weights (fast: no tensor is allocated)."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(CASES[name]())


def test_every_table_entry_has_a_tiny_config() -> None:
    assert {CASES[name]().model_type for name in CASES} == set(ARCHITECTURES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_kind_of_fact(name) -> None:
    """(a) decode, blocks and FLOP facts all hold on a model built from the config."""
    config = CASES[name]()
    num_layers = config.get_text_config().num_hidden_layers
    model = _meta_model(name)
    lens = LogitLens.from_model(model)  # decode facts: backbone, norm, pre/post head, indexing
    assert lens.num_layers == num_layers
    blocks = decoder_blocks(model)
    assert isinstance(blocks, torch.nn.ModuleList) and len(blocks) == num_layers
    inside_backbone = {id(module) for module in lens.backbone.modules()}
    assert all(id(block) in inside_backbone for block in blocks)
    per_layer = flops.layer_flops(config.to_dict(), seq_len=16)
    assert len(per_layer) == num_layers and min(per_layer) > 0
    assert flops.head_flops(config.to_dict()) > 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_blocks_are_the_ones_whose_outputs_are_the_hidden_states(name) -> None:
    """Running the blocks in order gives h_1..h_{L-1}: a prefix of them is an early exit."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CASES[name](), dtype=torch.float32).eval()
    outputs: list[torch.Tensor] = []
    for block in decoder_blocks(model):
        block.register_forward_hook(
            lambda module, args, out: outputs.append(out[0] if isinstance(out, tuple) else out)
        )
    input_ids = torch.randint(3, VOCAB - 3, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        hidden_states = model(input_ids, output_hidden_states=True).hidden_states
    lens = LogitLens.from_model(model)
    assert len(outputs) == lens.num_layers
    for layer in range(1, lens.num_layers):  # layer L is the final-normed state
        assert torch.equal(outputs[layer - 1], lens.hidden_state(hidden_states, layer)), layer


@pytest.mark.parametrize("name", sorted(CASES))
def test_parameter_counts_equal_the_built_models(name) -> None:
    """(b) total = numel of the built model; active = total minus (E - k) / E of the experts."""
    config = CASES[name]()
    model = _meta_model(name)
    total, active = flops.parameter_counts(config.to_dict())
    assert total == sum(parameter.numel() for parameter in model.parameters())
    experts = config_value(config, "num_experts", default=0)
    inactive = 0.0
    if experts > 1:
        top_k = config_value(config, "experts_per_token")
        inactive = sum(
            parameter.numel() * (experts - top_k) / experts
            for parameter_name, parameter in model.named_parameters()
            if ".experts." in parameter_name
        )
        assert inactive > 0
    assert active == total - inactive


@pytest.mark.parametrize(
    "config",
    [
        LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            attention_bias=True, mlp_bias=True, tie_word_embeddings=True, vocab_size=VOCAB,
        ),
        GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=48, n_inner=40, vocab_size=VOCAB),
        FalconConfig(
            hidden_size=32, ffn_hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
            multi_query=False, bias=True, tie_word_embeddings=False, vocab_size=VOCAB,
        ),
    ],
    ids=["llama-biases-tied", "gpt2-n_inner", "falcon-biases-multihead-untied"],
)  # fmt: skip
def test_parameter_counts_follow_config_switches(config) -> None:
    """Config switches beyond the tiny cases: biases turned on, tied head, explicit n_inner."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total, active = flops.parameter_counts(config.to_dict())
    assert total == active == sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize(
    ("changes", "key"),
    [({"new_decoder_architecture": True, "num_kv_heads": 2}, "new_decoder_architecture"),
     ({"parallel_attn": False}, "parallel_attn")],
)  # fmt: skip
def test_a_layout_the_entry_does_not_describe_is_refused(changes, key) -> None:
    """Falcon-40B/180B's layout would get Falcon-7B's counts: refused, naming the config key."""
    config = CASES["falcon"]().to_dict() | changes
    with pytest.raises(UnsupportedArchitecture, match=f"'falcon' with {key}="):
        flops.parameter_counts(config)


def test_unsupported_type_names_it_and_lists_supported() -> None:
    with pytest.raises(UnsupportedArchitecture) as error:
        check_supported("bert")
    message = str(error.value)
    assert "'bert'" in message
    assert ", ".join(sorted(ARCHITECTURES)) in message
    assert "exitbench.architectures.ARCHITECTURES" in message
    assert isinstance(error.value, ValueError)  # callers that catch ValueError still do


def test_config_value_reads_synonyms_and_text_config() -> None:
    """(c) one accessor for GPT-2's names, multimodal wrappers, dicts and config objects."""
    gpt2 = GPT2Config(n_embd=48, n_layer=5, n_positions=96)
    for config in (gpt2, gpt2.to_dict()):
        assert config_value(config, "hidden_size") == 48
        assert config_value(config, "num_layers") == 5
        assert config_value(config, "max_positions") == 96
    gemma3 = CASES["gemma3"]()
    for config in (gemma3, gemma3.to_dict()):
        assert config_value(config, "hidden_size") == 32  # from text_config, not the vision tower
        assert config_value(config, "num_layers") == 3
    mamba = CASES["mamba"]()
    assert config_value(mamba, "max_positions", default=None) is None
    with pytest.raises(KeyError, match="max_position_embeddings"):
        config_value(mamba.to_dict(), "max_positions")
    assert set(CONFIG_KEYS) >= {"hidden_size", "num_layers", "max_positions", "num_experts"}
