"""FLOP and parameter counts against hand calculations."""

from __future__ import annotations

import numpy as np
import pytest
import transformers

from exitbench import flops
from exitbench.architectures import UnsupportedArchitecture

SEQ_LEN = 16
CTX = (SEQ_LEN + 1) / 2  # average causal context


def llama_config(**overrides):
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 100,
        "tie_word_embeddings": False,
    }
    return {**config, **overrides}


def test_dense_llama_hand_count():
    d, heads, kv, head_dim, inter, vocab = 64, 4, 2, 16, 128, 100
    projections = 2 * (d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d)
    scores = 2 * 2 * CTX * head_dim * heads
    mlp = 2 * 3 * d * inter
    layer = projections + scores + mlp
    assert (projections, scores, mlp) == (24576, 2176, 49152)
    model = flops.flop_model(llama_config(), SEQ_LEN)
    assert model.per_layer == (layer, layer)
    assert model.head == 2 * d * vocab == 12800
    assert model.full == 2 * layer + 12800
    # cost(e) = sum_{l <= e} layer_l + e * head
    np.testing.assert_allclose(
        model.exit_cost(np.array([1, 2])), [layer + 12800, 2 * layer + 25600]
    )
    assert model.net_savings(np.array([2, 2])) == pytest.approx(
        1 - (2 * layer + 25600) / model.full
    )
    total, active = flops.parameter_counts(llama_config())
    per_layer = 12288 + 3 * d * inter + 2 * d
    assert total == active == 2 * per_layer + 2 * vocab * d + d


def test_moe_mixtral_hand_count():
    config = llama_config(
        model_type="mixtral", intermediate_size=96, num_local_experts=4, num_experts_per_tok=2
    )
    d, inter, experts, top_k = 64, 96, 4, 2
    attention = 24576 + 2176
    router = 2 * d * experts
    active_experts = top_k * 2 * 3 * d * inter
    layer = attention + router + active_experts
    assert layer == 26752 + 512 + 73728
    model = flops.flop_model(config, SEQ_LEN)
    assert model.per_layer == (layer, layer)
    total, active = flops.parameter_counts(config)
    assert total - active == 2 * (experts - top_k) * 3 * d * inter


def test_ssm_mamba2_hand_count():
    config = {
        "model_type": "mamba2",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "expand": 2,
        "num_heads": 8,
        "head_dim": 16,
        "n_groups": 1,
        "state_size": 16,
        "conv_kernel": 4,
        "vocab_size": 100,
    }
    d, d_inner, heads, groups, state, conv = 64, 128, 8, 1, 16, 4
    in_proj = 2 * d * (2 * d_inner + 2 * groups * state + heads)
    conv_flops = 2 * (d_inner + 2 * groups * state) * conv
    scan = 5 * d_inner * state + 2 * d_inner  # SSD update + read-out, D skip
    norm = 5 * d_inner
    out_proj = 2 * d_inner * d
    layer = in_proj + conv_flops + scan + norm + out_proj
    assert layer == 37888 + 1280 + 10496 + 640 + 16384
    model = flops.flop_model(config, SEQ_LEN)
    assert model.per_layer == (layer, layer)
    assert model.head == 2 * d * 100


def test_mamba1_count_and_auto_dt_rank():
    config = {
        "model_type": "mamba",
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "intermediate_size": 128,
        "state_size": 16,
        "time_step_rank": "auto",
        "conv_kernel": 4,
        "vocab_size": 100,
    }
    d, di, n, r, k = 64, 128, 16, 4, 4  # dt_rank auto = ceil(64 / 16)
    matmul = d * 2 * di + di * k + di * (r + 2 * n) + r * di + di * d
    assert flops.layer_flops(config, SEQ_LEN) == [2 * matmul + 9 * di * n + 4 * di]


def test_big_vocabulary_pays_for_exit_checks():
    small, big = llama_config(vocab_size=32_000), llama_config(vocab_size=256_000)
    exits = np.array([1, 1, 2])
    small_model, big_model = flops.flop_model(small, 256), flops.flop_model(big, 256)
    assert small_model.per_layer == big_model.per_layer
    assert big_model.net_savings(exits) < small_model.net_savings(exits)


def test_published_sizes_are_matched():
    def counts(config):
        return flops.parameter_counts(config.to_dict())

    total, active = counts(transformers.LlamaConfig())  # Llama-2-7B: 6.74B
    assert total == active and total == pytest.approx(6.74e9, rel=0.01)
    total, active = counts(transformers.MixtralConfig())  # Mixtral-8x7B: 46.7B / 12.9B
    assert total == pytest.approx(46.7e9, rel=0.01) and active == pytest.approx(12.9e9, rel=0.01)
    total, _ = counts(transformers.MambaConfig(num_hidden_layers=24))  # mamba-130m
    assert total == pytest.approx(130e6, rel=0.03)
    total, _ = counts(transformers.GPT2Config())  # GPT-2 124M
    assert total == pytest.approx(124e6, rel=0.01)


def test_sliding_window_and_nested_text_config():
    assert flops.average_context(16) == CTX
    assert flops.average_context(16, window=4) == pytest.approx((4 * 5 / 2 + 12 * 4) / 16)
    config = {
        "model_type": "gemma3",
        "text_config": llama_config(
            model_type="gemma3_text",
            head_dim=16,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention"],
        ),
    }
    per_layer = flops.layer_flops(config, SEQ_LEN)
    assert per_layer[1] - per_layer[0] == pytest.approx(
        4 * 16 * 4 * (CTX - flops.average_context(SEQ_LEN, 4))
    )


@pytest.mark.parametrize(
    "config",
    [
        transformers.JambaConfig(
            num_hidden_layers=8,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_experts=4,
            mamba_dt_rank=8,
            vocab_size=100,
        ),
        transformers.Zamba2Config(
            num_hidden_layers=6,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            n_mamba_heads=4,
            mamba_headdim=32,
            mamba_d_state=16,
            vocab_size=100,
            layers_block_type=["mamba", "mamba", "hybrid"] * 2,
        ),
        transformers.GraniteMoeHybridConfig(
            num_hidden_layers=4,
            hidden_size=64,
            intermediate_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=4,
            mamba_n_heads=4,
            mamba_d_head=32,
            mamba_d_state=16,
            vocab_size=100,
            layer_types=["mamba", "attention"] * 2,
        ),
        transformers.DeepseekV2Config(
            num_hidden_layers=3,
            hidden_size=64,
            intermediate_size=128,
            moe_intermediate_size=32,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_shared_experts=1,
            num_attention_heads=4,
            kv_lora_rank=16,
            q_lora_rank=None,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=16,
            first_k_dense_replace=1,
            vocab_size=100,
        ),
        transformers.Qwen2MoeConfig(
            num_hidden_layers=3,
            hidden_size=64,
            intermediate_size=128,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=64,
            num_experts=4,
            num_experts_per_tok=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            mlp_only_layers=[0],
            vocab_size=100,
        ),
    ],
    ids=["jamba", "zamba2", "granitemoehybrid", "deepseek_v2", "qwen2_moe"],
)
def test_hybrid_and_moe_layers_differ_by_type(config):
    """Attention vs Mamba, dense vs MoE, hybrid vs plain layers cost different FLOPs.

    (That the parameter counts are exact is tests/test_architectures.py's job.)"""
    config = config.to_dict()
    per_layer = flops.layer_flops(config, SEQ_LEN)
    assert len(per_layer) == config["num_hidden_layers"]
    assert all(f > 0 for f in per_layer)
    assert len(set(per_layer)) > 1


def test_unknown_model_type_is_refused_and_missing_keys_are_named():
    with pytest.raises(UnsupportedArchitecture, match="'brand_new'.*supported model types: "):
        flops.layer_flops(llama_config(model_type="brand_new"), SEQ_LEN)
    with pytest.raises(UnsupportedArchitecture, match="'brand_new'"):
        flops.parameter_counts(llama_config(model_type="brand_new"))
    with pytest.raises(flops.FlopModelError, match="hidden_size"):
        flops.layer_flops({"model_type": "llama", "num_hidden_layers": 2}, SEQ_LEN)


def test_check_schedule_layers():
    assert flops.check_schedule(6).tolist() == [True] * 5 + [False]  # L is never a check
    # checks every 2 layers from layer 2: layers 2 and 4 (6 = L is the fallback)
    assert np.flatnonzero(flops.check_schedule(6, 2, 2)).tolist() == [1, 3]
    assert np.flatnonzero(flops.check_schedule(8, 3, 2)).tolist() == [1, 4]  # layers 2, 5
    with pytest.raises(ValueError, match="check_every and score.min_exit_layer must be >= 1"):
        flops.check_schedule(4, 0)


def test_policy_costs_per_check_kind_schedule_and_state_hand_computed():
    # L = 4: layers 10, 20, 30, 40 FLOPs; head 5; cosine 0.5; skipped-layer K/V 1, 2, 3, 4
    model = flops.FlopModel(
        (10.0, 20.0, 30.0, 40.0), 5.0, state_kv=(1.0, 2.0, 3.0, 4.0), cosine=0.5
    )
    assert model.full == 105
    assert model.skipped_state("kv").tolist() == [10, 9, 7, 4, 0]
    assert model.skipped_state("full").tolist() == [100, 90, 70, 40, 0]
    assert model.skipped_state("none").tolist() == [0] * 5
    # head checks at every layer, no state: the historical sum_{l<=e} F_l + e H
    head = model.policy_costs("head")
    assert head[1:].tolist() == model.exit_cost(np.arange(1, 5)).tolist() == [15, 40, 75, 120]
    # kv state: exit at 1 = 10 + 5 + (2 + 3 + 4); at 2 = 30 + 2 * 5 + 7
    assert model.policy_costs("head", state_cost="kv")[1:].tolist() == [24, 47, 79, 120]
    # cosine: 0.5 per check up to e (checks at 1..3), head once
    assert model.policy_costs("cosine")[1:].tolist() == [15.5, 36.0, 66.5, 106.5]
    # oracle / zero-check-cost bound: one head call
    assert model.policy_costs("none", state_cost="kv")[1:].tolist() == [24, 42, 69, 105]
    # full state cost: an oracle saves nothing (exact recomputation)
    assert model.policy_costs("none", state_cost="full")[1:].tolist() == [105] * 4
    # checks only at layer 2 (min_exit_layer 2, check_every 2): head paid at layer 2 only
    schedule = flops.check_schedule(4, 2, 2)
    assert model.policy_costs("head", schedule)[1:].tolist() == [15, 35, 70, 110]
    assert model.policy_costs("cosine", schedule)[1:].tolist() == [15, 35.5, 65.5, 105.5]
    with pytest.raises(ValueError, match="state_cost must be one of"):
        model.skipped_state("bogus")


def test_skipped_layer_state_costs_by_architecture():
    # dense: K and V projections 2 d 2 d_kv = 2 * 64 * 2 * (2 * 16)
    model = flops.flop_model(llama_config(), SEQ_LEN)
    assert model.state_kv == (8192.0, 8192.0) and model.cosine == 6 * 64
    # an SSM mixer's state must advance: a skipped Mamba-2 layer pays its whole mixer
    config = {
        "model_type": "mamba2",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "expand": 2,
        "num_heads": 8,
        "head_dim": 16,
        "n_groups": 1,
        "state_size": 16,
        "conv_kernel": 4,
        "vocab_size": 100,
    }
    mamba = flops.flop_model(config, SEQ_LEN)
    assert mamba.state_kv == mamba.per_layer
    assert mamba.to_dict()["state_kv"] == list(mamba.per_layer)
