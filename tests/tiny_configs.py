"""Tiny configs of every architecture in exitbench.architectures.ARCHITECTURES, shared by tests.

One case per supported ``model_type`` (plus ``opt-350m``: post-LN with a
projection before the head). Dimensions are small enough to build a model in
milliseconds; logit scales are non-trivial, so a lens that forgot one fails.
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import (
    CohereConfig,
    DeepseekV2Config,
    DeepseekV3Config,
    FalconConfig,
    FalconMambaConfig,
    Gemma2Config,
    Gemma3Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    GraniteConfig,
    GraniteMoeConfig,
    GraniteMoeHybridConfig,
    JambaConfig,
    LlamaConfig,
    Mamba2Config,
    MambaConfig,
    MistralConfig,
    MixtralConfig,
    Olmo2Config,
    OlmoConfig,
    OlmoeConfig,
    OPTConfig,
    Phi3Config,
    PhiConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
    SiglipVisionConfig,
    Zamba2Config,
)

VOCAB = 128
COMMON = {"vocab_size": VOCAB, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
# Llama-style dims shared by most decoder cases.
DECODER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    **COMMON,
}
MOE = {"num_experts_per_tok": 2}
MAMBA = {"hidden_size": 32, "num_hidden_layers": 3, "state_size": 8, "expand": 2, **COMMON}

# case id -> tiny config. Non-trivial logit scales: a lens that forgot one fails.
# fmt: off
CASES: dict[str, Callable[[], PretrainedConfig]] = {
    "gpt2": lambda: GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=64, **COMMON),
    "gpt_neox": lambda: GPTNeoXConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=64, rotary_pct=0.25, **COMMON,
    ),
    # GPT-J: parallel attention and MLP under one LayerNorm, LM head with a bias, untied.
    "gptj": lambda: GPTJConfig(
        n_embd=32, n_layer=3, n_head=4, n_positions=64, rotary_dim=4, **COMMON
    ),
    # Falcon-7B's layout: parallel attention, multi-query (one key/value head), no biases, tied.
    "falcon": lambda: FalconConfig(
        hidden_size=32, ffn_hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=64, multi_query=True, parallel_attn=True, bias=False,
        new_decoder_architecture=False, alibi=False, **COMMON,
    ),
    "opt": lambda: OPTConfig(
        hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32, **COMMON,
    ),
    # opt-350m: post-LN (no final norm) and project_out 32 -> 16 before the head.
    "opt-350m": lambda: OPTConfig(
        hidden_size=32, ffn_dim=64, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=16, do_layer_norm_before=False, **COMMON,
    ),
    "llama": lambda: LlamaConfig(**DECODER),
    "mistral": lambda: MistralConfig(**DECODER),
    "qwen2": lambda: Qwen2Config(**DECODER),
    "qwen3": lambda: Qwen3Config(head_dim=8, **DECODER),
    "gemma": lambda: GemmaConfig(head_dim=8, **DECODER),
    "gemma2": lambda: Gemma2Config(
        head_dim=8, final_logit_softcapping=0.5, query_pre_attn_scalar=8, sliding_window=4,
        **DECODER,
    ),
    "gemma3_text": lambda: Gemma3TextConfig(
        head_dim=8, final_logit_softcapping=2.0, query_pre_attn_scalar=8, sliding_window=4,
        **DECODER,
    ),
    "gemma3": lambda: Gemma3Config(
        text_config=Gemma3TextConfig(
            head_dim=8, query_pre_attn_scalar=8, sliding_window=4, **DECODER
        ).to_dict(),
        vision_config=SiglipVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            image_size=16, patch_size=4,
        ).to_dict(),
        mm_tokens_per_image=4, image_token_index=VOCAB - 1, boi_token_index=VOCAB - 2,
        eoi_token_index=VOCAB - 3,
    ),
    "phi": lambda: PhiConfig(partial_rotary_factor=0.5, **DECODER),
    "phi3": lambda: Phi3Config(**DECODER),
    "olmo": lambda: OlmoConfig(**DECODER),
    "olmo2": lambda: Olmo2Config(**DECODER),
    "cohere": lambda: CohereConfig(logit_scale=0.5, **DECODER),
    "granite": lambda: GraniteConfig(
        logits_scaling=3.0, embedding_multiplier=2.0, residual_multiplier=0.5,
        attention_multiplier=0.25, **DECODER,
    ),
    "mixtral": lambda: MixtralConfig(num_local_experts=4, **MOE, **DECODER),
    "qwen2_moe": lambda: Qwen2MoeConfig(
        num_experts=4, moe_intermediate_size=16, shared_expert_intermediate_size=32, **MOE,
        **DECODER,
    ),
    "qwen3_moe": lambda: Qwen3MoeConfig(
        num_experts=4, moe_intermediate_size=16, head_dim=8, **MOE, **DECODER
    ),
    "olmoe": lambda: OlmoeConfig(num_experts=4, **MOE, **DECODER),
    "deepseek_v2": lambda: DeepseekV2Config(
        moe_intermediate_size=16, n_routed_experts=4, n_shared_experts=1, first_k_dense_replace=1,
        kv_lora_rank=16, q_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
        **MOE, **{**DECODER, "num_key_value_heads": 4},
    ),
    "deepseek_v3": lambda: DeepseekV3Config(
        moe_intermediate_size=16, n_routed_experts=4, n_shared_experts=1, first_k_dense_replace=1,
        kv_lora_rank=16, q_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
        n_group=2, topk_group=1, **MOE, **{**DECODER, "num_key_value_heads": 4},
    ),
    "granitemoe": lambda: GraniteMoeConfig(
        num_local_experts=4, logits_scaling=3.0, embedding_multiplier=2.0, **MOE, **DECODER
    ),
    "mamba": lambda: MambaConfig(conv_kernel=4, **MAMBA),
    "mamba2": lambda: Mamba2Config(
        n_groups=1, head_dim=8, num_heads=8, conv_kernel=4, chunk_size=16, **MAMBA
    ),
    "falcon_mamba": lambda: FalconMambaConfig(conv_kernel=4, **MAMBA),
    "jamba": lambda: JambaConfig(
        num_experts=4, expert_layer_period=2, expert_layer_offset=1, attn_layer_period=2,
        attn_layer_offset=1, use_mamba_kernels=False, mamba_d_state=8, mamba_dt_rank=4, **MOE,
        **{**DECODER, "num_hidden_layers": 4},
    ),
    "zamba2": lambda: Zamba2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        layers_block_type=["mamba", "hybrid", "mamba", "hybrid"], mamba_d_state=8,
        n_mamba_heads=8, chunk_size=16, adapter_rank=8, use_shared_attention_adapter=True,
        use_mem_rope=True, max_position_embeddings=64, **COMMON,
    ),
    "granitemoehybrid": lambda: GraniteMoeHybridConfig(
        layer_types=["mamba", "attention", "mamba"], mamba_n_heads=8, mamba_d_state=8,
        mamba_chunk_size=16, num_local_experts=4, shared_intermediate_size=32,
        logits_scaling=3.0, embedding_multiplier=2.0, **MOE,
        **{**DECODER, "intermediate_size": 16},
    ),
}
# fmt: on
