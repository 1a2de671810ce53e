"""Per-token forward FLOPs and parameter counts from a transformers config dict.

The model is deliberately simple and the same for every architecture, so that
net savings are comparable across models:

* A linear map ``d_in -> d_out`` costs ``2 * d_in * d_out`` FLOPs per token (one
  multiply and one add per weight). Biases, norms, activations, rotary
  embeddings, softmax and residual adds are ignored (they are O(d), not
  O(d^2)), except where noted for state-space models, whose element-wise scan
  is the point of the architecture.
* Attention at position ``i`` of a causal window of ``S`` tokens reads
  ``min(i, w)`` keys (``w`` = sliding window, infinite for full attention); we
  charge the average context ``ctx = mean_{i=1..S} min(i, w)``, i.e.
  ``(S + 1) / 2`` for full attention. Scores ``Q K^T`` and the weighted sum
  ``A V`` then cost ``2 * 2 * ctx * head_dim * n_heads`` per token.
* MoE layers pay for the router and only the ``top_k`` active experts, plus
  any always-on shared experts. Every expert is a gated (SwiGLU) MLP.
* The exit check ("head") is the final norm (ignored) and the LM head,
  ``2 * d * V`` (plus OPT's ``project_out`` where the model has one).

``cost(exit at e) = sum_{l <= e} layer_l + e * head``: an early-exit model runs
the head at every layer it visits and the check at the exit layer produces the
output. ``full = sum_{l <= L} layer_l + head`` is the plain model. Net savings
of a set of exits is ``1 - E[cost(e)] / full`` (it can be negative: checks cost
more than the layers skipped).

Approximations, stated once: counts are per token at the window's average
context (what teacher-forced scoring of a window costs), not a batched decode
with a KV cache of another length; SSM scans use the recurrent (decode)
form; MLA (DeepSeek) is counted without weight absorption; small norms inside
Jamba's mixer, Zamba2's LoRA adapters beyond their matmuls, biases and
embedding look-ups are left out; parameter counts ignore biases.

Architecture differences sit in one table, :data:`ARCHITECTURES`
(model_type -> layer plan, MLP kind, head kind). Unknown model types fall
back to a generic transformer plan with a logged warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURES",
    "Block",
    "FlopModel",
    "FlopModelError",
    "average_context",
    "flop_model",
    "head_flops",
    "layer_blocks",
    "layer_flops",
    "parameter_counts",
    "text_config",
]


class FlopModelError(ValueError):
    """The config dict lacks a key the FLOP model needs."""


@dataclass(frozen=True)
class Block:
    """One component of a layer: ``params`` stored, ``active_params`` used per
    token, ``flops`` per token. ``shared`` names weights reused by several
    layers (Zamba2's shared transformer), counted once in parameter totals."""

    name: str
    params: float
    active_params: float
    flops: float
    shared: str | None = None


@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture's layers.

    plan: layer planner (key of :data:`_PLANS`); gated_mlp: dense MLP has 3
    matrices (SwiGLU/GeGLU) instead of 2; head: ``"plain"`` (2 d V) or
    ``"opt"`` (project_out d -> word_embed_proj_dim before the head).
    """

    plan: str = "transformer"
    gated_mlp: bool = True
    head: str = "plain"


# The one table of per-architecture facts. Add an entry (and a test) per new model_type.
ARCHITECTURES: dict[str, ArchSpec] = {
    # dense transformers, plain 2-matrix MLP
    "gpt2": ArchSpec(gated_mlp=False),
    "gpt_neox": ArchSpec(gated_mlp=False),
    "gptj": ArchSpec(gated_mlp=False),
    "gpt_neo": ArchSpec(gated_mlp=False),
    "gpt_bigcode": ArchSpec(gated_mlp=False),
    "opt": ArchSpec(gated_mlp=False, head="opt"),
    "phi": ArchSpec(gated_mlp=False),
    "falcon": ArchSpec(gated_mlp=False),
    "bloom": ArchSpec(gated_mlp=False),
    "starcoder2": ArchSpec(gated_mlp=False),
    # dense transformers, gated MLP
    "llama": ArchSpec(),
    "mistral": ArchSpec(),
    "qwen2": ArchSpec(),
    "qwen3": ArchSpec(),
    "gemma": ArchSpec(),
    "gemma2": ArchSpec(),
    "gemma3": ArchSpec(),
    "gemma3_text": ArchSpec(),
    "olmo": ArchSpec(),
    "olmo2": ArchSpec(),
    "olmo3": ArchSpec(),
    "phi3": ArchSpec(),
    "cohere": ArchSpec(),
    "cohere2": ArchSpec(),
    "granite": ArchSpec(),
    "smollm3": ArchSpec(),
    # MoE transformers (gated experts; membership rules read from the config)
    "mixtral": ArchSpec(),
    "olmoe": ArchSpec(),
    "qwen2_moe": ArchSpec(),
    "qwen3_moe": ArchSpec(),
    "granitemoe": ArchSpec(),
    "phimoe": ArchSpec(),
    "deepseek_v2": ArchSpec(),
    "deepseek_v3": ArchSpec(),
    # state-space models and hybrids
    "mamba": ArchSpec(plan="mamba"),
    "falcon_mamba": ArchSpec(plan="mamba"),
    "mamba2": ArchSpec(plan="mamba2"),
    "jamba": ArchSpec(plan="jamba"),
    "zamba2": ArchSpec(plan="zamba2"),
    "granitemoehybrid": ArchSpec(plan="granitemoehybrid"),
}

_ATTENTION_TYPES = {"attention", "full_attention", "sliding_attention", "chunked_attention"}


class _Config:
    """Key lookup over a config dict that names the config in its errors."""

    def __init__(self, config: Mapping[str, Any]):
        self.raw = dict(config)
        self.model_type = str(self.raw.get("model_type", "?"))

    def get(self, *keys: str, default: Any = ...) -> Any:
        for key in keys:
            value = self.raw.get(key)
            if value is not None:
                return value
        if default is ...:
            raise FlopModelError(
                f"config of model_type {self.model_type!r} has none of the keys {list(keys)} "
                "that the FLOP model needs (exitbench/flops.py ARCHITECTURES)"
            )
        return default

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None


def text_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The language-model part of a config dict: ``text_config`` of multimodal
    wrappers (Gemma-3 >= 4B, Llava-style), else the dict itself."""
    sub = config.get("text_config")
    if isinstance(sub, Mapping) and not any(
        config.get(k) is not None for k in ("hidden_size", "n_embd", "d_model")
    ):
        return dict(sub)
    return dict(config)


def _spec(cfg: _Config) -> ArchSpec:
    spec = ARCHITECTURES.get(cfg.model_type)
    if spec is None:
        log.warning(
            "FLOP model: unknown model_type %r, using a generic transformer with a gated MLP "
            "(add it to exitbench.flops.ARCHITECTURES)",
            cfg.model_type,
        )
        return ArchSpec()
    return spec


def average_context(seq_len: int, window: int | None = None) -> float:
    """Average keys attended per token in a causal window of ``S = seq_len``
    tokens: ``mean_{i=1..S} min(i, w)``; ``(S + 1) / 2`` without a window."""
    s = int(seq_len)
    if s < 1:
        raise FlopModelError(f"seq_len must be >= 1 for attention FLOPs, got {seq_len}")
    if window is None or window >= s:
        return (s + 1) / 2
    w = int(window)
    return (w * (w + 1) / 2 + (s - w) * w) / s


# ---------------------------------------------------------------- components


def _linear(name: str, d_in: float, d_out: float) -> Block:
    """``2 * d_in * d_out`` FLOPs per token."""
    p = d_in * d_out
    return Block(name, p, p, 2 * p)


def _attention(
    d_in: float, d_out: float, heads: int, kv_heads: int, head_dim: int, ctx: float
) -> Block:
    """GQA attention: q, k, v, o projections ``2 (d_in (H + 2 H_kv) d_h + H d_h d_out)``
    plus scores and weighted sum ``4 ctx d_h H``."""
    p = d_in * (heads + 2 * kv_heads) * head_dim + heads * head_dim * d_out
    return Block("attention", p, p, 2 * p + 4 * ctx * head_dim * heads)


def _mla_attention(cfg: _Config, d: int, ctx: float) -> Block:
    """DeepSeek multi-head latent attention (non-absorbed form): projections
    q (optionally through ``q_lora_rank``), kv_a ``d -> kv_lora + d_rope``,
    kv_b ``kv_lora -> H (d_nope + d_v)``, o ``H d_v -> d``; scores
    ``2 ctx H (d_nope + d_rope)`` and weighted sum ``2 ctx H d_v``."""
    heads = int(cfg.get("num_attention_heads"))
    nope, rope = int(cfg.get("qk_nope_head_dim")), int(cfg.get("qk_rope_head_dim"))
    v_dim = int(cfg.get("v_head_dim"))
    kv_rank = int(cfg.get("kv_lora_rank"))
    q_rank = cfg.get("q_lora_rank", default=None)
    q_out = heads * (nope + rope)
    q = d * q_out if q_rank is None else d * q_rank + q_rank * q_out
    p = q + d * (kv_rank + rope) + kv_rank * heads * (nope + v_dim) + heads * v_dim * d
    return Block("attention", p, p, 2 * p + 2 * ctx * heads * (nope + rope + v_dim))


def _mlp(d: float, intermediate: float, gated: bool, name: str = "mlp") -> Block:
    """Dense MLP: ``2 * 3 d I`` (gated) or ``2 * 2 d I`` FLOPs."""
    p = (3 if gated else 2) * d * intermediate
    return Block(name, p, p, 2 * p)


def _moe(
    d: float,
    expert_size: float,
    n_experts: int,
    top_k: int,
    shared_size: float = 0.0,
    shared_gate: bool = False,
) -> Block:
    """MoE MLP: router ``d E``, ``top_k`` of ``E`` gated experts ``3 d I_e``,
    always-on shared expert(s) ``3 d I_s`` (+ a ``d -> 1`` gate for Qwen2-MoE).
    FLOPs = 2 * active parameters."""
    router = d * n_experts
    shared = 3 * d * shared_size + (d if shared_gate else 0)
    expert = 3 * d * expert_size
    params = router + n_experts * expert + shared
    active = router + top_k * expert + shared
    return Block("moe", params, active, 2 * active)


def _mamba1(d: int, d_inner: int, d_state: int, dt_rank: int, d_conv: int) -> Block:
    """Mamba-1 mixer per token: in_proj ``2 d 2 d_in``, depthwise conv
    ``2 d_in k``, x_proj ``2 d_in (r + 2 N)``, dt_proj ``2 r d_in``, selective
    scan ``9 d_in N`` (exp(Delta A) 2, Delta B x 2, state update 2, C h 2,
    +1 for the softplus/discretisation overhead: the customary 9 d_in N count),
    D skip and SiLU gate ``4 d_in``, out_proj ``2 d_in d``."""
    matmul = d * 2 * d_inner + d_inner * d_conv + d_inner * (dt_rank + 2 * d_state)
    matmul += dt_rank * d_inner + d_inner * d
    params = matmul + d_inner * d_state + 3 * d_inner  # A, D, dt bias, conv bias
    return Block("mamba", params, params, 2 * matmul + 9 * d_inner * d_state + 4 * d_inner)


def _mamba2(d: int, d_inner: int, n_heads: int, n_groups: int, d_state: int, d_conv: int) -> Block:
    """Mamba-2 mixer per token (recurrent form, what one decode step costs):
    in_proj ``2 d (2 d_in + 2 G N + H)``, depthwise conv ``2 (d_in + 2 G N) k``,
    SSD state update and read-out ``5 d_in N`` (decay 1, dt x B outer product 1,
    add 1, C h 2), D skip ``2 d_in``, gated RMSNorm ``5 d_in``,
    out_proj ``2 d_in d``."""
    conv_dim = d_inner + 2 * n_groups * d_state
    matmul = d * (2 * d_inner + 2 * n_groups * d_state + n_heads)
    matmul += conv_dim * d_conv + d_inner * d
    params = matmul + 3 * n_heads + d_inner + conv_dim  # A, D, dt bias, norm, conv bias
    return Block("mamba2", params, params, 2 * matmul + 5 * d_inner * d_state + 7 * d_inner)


def _norms(d: float, count: int = 2) -> Block:
    """Norm weights (parameters only; FLOPs ignored)."""
    return Block("norms", count * d, count * d, 0.0)


# ---------------------------------------------------------------- planners


def _hidden(cfg: _Config) -> int:
    return int(cfg.get("hidden_size", "n_embd", "d_model", "dim"))


def _num_layers(cfg: _Config) -> int:
    return int(cfg.get("num_hidden_layers", "n_layer", "num_layers", "n_layers"))


def _layer_types(cfg: _Config) -> list[str] | None:
    types = cfg.get("layer_types", "layers_block_type", default=None)
    return [str(t) for t in types] if types is not None else None


def _attention_geometry(cfg: _Config, d: int) -> tuple[int, int, int]:
    heads = int(cfg.get("num_attention_heads", "n_head", "num_heads"))
    if cfg.has("num_key_value_heads"):
        kv_heads = int(cfg.get("num_key_value_heads"))
    elif cfg.has("num_kv_heads"):
        kv_heads = int(cfg.get("num_kv_heads"))
    elif cfg.raw.get("multi_query"):
        kv_heads = 1
    else:
        kv_heads = heads
    head_dim = int(cfg.get("head_dim", default=d // heads))
    return heads, kv_heads, head_dim


def _window(cfg: _Config, layer: int) -> int | None:
    """Sliding window of layer ``layer`` (0-based) or None for full attention."""
    window = cfg.get("sliding_window", default=None)
    if not window or cfg.raw.get("use_sliding_window") is False:
        return None
    types = _layer_types(cfg)
    if types is not None and layer < len(types):
        return int(window) if types[layer] == "sliding_attention" else None
    return int(window)


def _is_moe_layer(cfg: _Config, layer: int) -> bool:
    n_experts = int(cfg.get("num_local_experts", "num_experts", "n_routed_experts", default=0))
    if n_experts <= 1:
        return False
    if layer in (cfg.get("mlp_only_layers", default=[]) or []):
        return False
    if (layer + 1) % int(cfg.get("decoder_sparse_step", default=1)) != 0:
        return False
    if layer < int(cfg.get("first_k_dense_replace", default=0)):
        return False
    return layer % int(cfg.get("moe_layer_freq", default=1)) == 0


def _feed_forward(cfg: _Config, d: int, layer: int, gated: bool) -> Block:
    if _is_moe_layer(cfg, layer):
        n_experts = int(cfg.get("num_local_experts", "num_experts", "n_routed_experts"))
        top_k = int(cfg.get("num_experts_per_tok", "top_k", "moe_top_k"))
        expert = int(cfg.get("moe_intermediate_size", "intermediate_size"))
        shared = float(cfg.get("shared_expert_intermediate_size", default=0))
        if cfg.has("n_shared_experts"):
            shared += int(cfg.get("n_shared_experts")) * expert
        shared += float(cfg.get("shared_intermediate_size", default=0))
        gate = cfg.has("shared_expert_intermediate_size")
        return _moe(d, expert, n_experts, top_k, shared, gate)
    intermediate = cfg.get(
        "intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", default=None
    )
    if intermediate is None:
        intermediate = 4 * d  # GPT-2 / Falcon default when n_inner is null
    return _mlp(d, int(intermediate), gated)


def _plan_transformer(cfg: _Config, spec: ArchSpec, layer: int, seq_len: int) -> list[Block]:
    """Dense or MoE transformer layer: attention (GQA or MLA) + MLP or MoE."""
    d = _hidden(cfg)
    ctx = average_context(seq_len, _window(cfg, layer))
    if cfg.has("kv_lora_rank"):
        attention = _mla_attention(cfg, d, ctx)
    else:
        attention = _attention(d, d, *_attention_geometry(cfg, d), ctx)
    return [attention, _feed_forward(cfg, d, layer, spec.gated_mlp), _norms(d)]


def _plan_mamba(cfg: _Config, spec: ArchSpec, layer: int, seq_len: int) -> list[Block]:
    """Mamba-1 / FalconMamba block: one mixer, no MLP."""
    d = _hidden(cfg)
    d_inner = cfg.get("intermediate_size", default=None)
    d_inner = int(d_inner) if d_inner is not None else int(float(cfg.get("expand")) * d)
    dt_rank = cfg.get("time_step_rank", default="auto")
    dt_rank = math.ceil(d / 16) if dt_rank == "auto" else int(dt_rank)
    mixer = _mamba1(d, d_inner, int(cfg.get("state_size")), dt_rank, int(cfg.get("conv_kernel")))
    return [mixer, _norms(d, 1)]


def _plan_mamba2(cfg: _Config, spec: ArchSpec, layer: int, seq_len: int) -> list[Block]:
    """Mamba-2 block: one SSD mixer, no MLP."""
    d = _hidden(cfg)
    d_inner = int(float(cfg.get("expand")) * d)
    mixer = _mamba2(
        d,
        d_inner,
        int(cfg.get("num_heads")),
        int(cfg.get("n_groups", default=1)),
        int(cfg.get("state_size")),
        int(cfg.get("conv_kernel")),
    )
    return [mixer, _norms(d, 1)]


def _plan_jamba(cfg: _Config, spec: ArchSpec, layer: int, seq_len: int) -> list[Block]:
    """Jamba: attention where ``layer % attn_layer_period == attn_layer_offset``,
    else a Mamba-1 mixer; MoE where ``layer % expert_layer_period ==
    expert_layer_offset``, else a dense gated MLP. (The small RMSNorms on
    dt, B, C inside Jamba's mixer are ignored.)"""
    d = _hidden(cfg)
    if layer % int(cfg.get("attn_layer_period")) == int(cfg.get("attn_layer_offset")):
        mixer = _attention(d, d, *_attention_geometry(cfg, d), average_context(seq_len))
    else:
        dt_rank = cfg.get("mamba_dt_rank", default="auto")
        dt_rank = math.ceil(d / 16) if dt_rank == "auto" else int(dt_rank)
        mixer = _mamba1(
            d,
            int(cfg.get("mamba_expand")) * d,
            int(cfg.get("mamba_d_state")),
            dt_rank,
            int(cfg.get("mamba_d_conv")),
        )
    n_experts = int(cfg.get("num_experts", default=1))
    if n_experts > 1 and layer % int(cfg.get("expert_layer_period")) == int(
        cfg.get("expert_layer_offset")
    ):
        mlp = _moe(
            d, int(cfg.get("intermediate_size")), n_experts, int(cfg.get("num_experts_per_tok"))
        )
    else:
        mlp = _mlp(d, int(cfg.get("intermediate_size")), gated=True)
    return [mixer, mlp, _norms(d)]


def _plan_zamba2(cfg: _Config, spec: ArchSpec, layer: int, seq_len: int) -> list[Block]:
    """Zamba2: every layer a Mamba-2 mixer; "hybrid" layers first run a shared
    transformer block on ``concat(h, embeddings)`` (width ``2 d``: q, k, v from
    2 d, o to d), its gated MLP on d, optional per-layer LoRA adapters
    (rank r: ``2 (2d r + r 2d)`` per q/k/v, ``2 (d r + r 2 I)`` for the MLP)
    and a ``d -> d`` linear. Shared weights are counted once per memory block in
    the parameter total; their FLOPs are paid at every hybrid layer."""
    d = _hidden(cfg)
    d_inner = int(float(cfg.get("mamba_expand")) * d)
    blocks = [
        _mamba2(
            d,
            d_inner,
            int(cfg.get("n_mamba_heads")),
            int(cfg.get("mamba_ngroups", default=1)),
            int(cfg.get("mamba_d_state")),
            int(cfg.get("mamba_d_conv")),
        ),
        _norms(d, 1),
    ]
    types = _layer_types(cfg) or []
    if layer < len(types) and types[layer] == "hybrid":
        hybrid_index = sum(t == "hybrid" for t in types[:layer])
        shared = f"zamba2_shared_{hybrid_index % int(cfg.get('num_mem_blocks', default=1))}"
        width = int(cfg.get("attention_hidden_size", default=2 * d))
        heads = int(cfg.get("num_attention_heads"))
        kv_heads = int(cfg.get("num_key_value_heads", default=heads))
        head_dim = int(cfg.get("attention_head_dim", default=width // heads))
        intermediate = int(cfg.get("intermediate_size"))
        attention = _attention(width, d, heads, kv_heads, head_dim, average_context(seq_len))
        mlp = _mlp(d, intermediate, gated=True)
        blocks += [
            Block(
                "shared_attention",
                attention.params,
                attention.active_params,
                attention.flops,
                shared,
            ),
            Block("shared_mlp", mlp.params, mlp.active_params, mlp.flops, shared),
            Block("shared_norms", 2 * width, 2 * width, 0.0, shared),
            _linear("hybrid_linear", d, d),
        ]
        rank = int(cfg.get("adapter_rank", default=0))
        if rank:
            blocks.append(_linear("mlp_adapter", d + 2 * intermediate, rank))
            if cfg.raw.get("use_shared_attention_adapter"):
                blocks.append(_linear("attention_adapters", 3 * 2 * width, rank))
    return blocks


def _plan_granitemoehybrid(cfg: _Config, spec: ArchSpec, layer: int, seq_len: int) -> list[Block]:
    """Granite-4.0-H: attention or Mamba-2 mixer per ``layer_types``, then an
    MoE (if ``num_local_experts > 0``) plus an always-on shared gated MLP of
    ``shared_intermediate_size``."""
    d = _hidden(cfg)
    types = _layer_types(cfg) or []
    if layer < len(types) and types[layer] in _ATTENTION_TYPES:
        mixer = _attention(d, d, *_attention_geometry(cfg, d), average_context(seq_len))
    else:
        mixer = _mamba2(
            d,
            int(float(cfg.get("mamba_expand")) * d),
            int(cfg.get("mamba_n_heads")),
            int(cfg.get("mamba_n_groups", default=1)),
            int(cfg.get("mamba_d_state")),
            int(cfg.get("mamba_d_conv")),
        )
    blocks = [mixer, _norms(d)]
    n_experts = int(cfg.get("num_local_experts", default=0))
    shared = float(cfg.get("shared_intermediate_size", default=0))
    if n_experts > 0:
        blocks.append(
            _moe(
                d, int(cfg.get("intermediate_size")), n_experts, int(cfg.get("num_experts_per_tok"))
            )
        )
    if shared:
        blocks.append(_mlp(d, shared, gated=True, name="shared_mlp"))
    return blocks


_PLANS: dict[str, Callable[[_Config, ArchSpec, int, int], list[Block]]] = {
    "transformer": _plan_transformer,
    "mamba": _plan_mamba,
    "mamba2": _plan_mamba2,
    "jamba": _plan_jamba,
    "zamba2": _plan_zamba2,
    "granitemoehybrid": _plan_granitemoehybrid,
}


# ---------------------------------------------------------------- public API


def layer_blocks(config: Mapping[str, Any], seq_len: int) -> list[list[Block]]:
    """The blocks of each layer 1..L (list index 0 = layer 1)."""
    cfg = _Config(text_config(config))
    spec = _spec(cfg)
    plan = _PLANS[spec.plan]
    return [plan(cfg, spec, layer, seq_len) for layer in range(_num_layers(cfg))]


def layer_flops(config: Mapping[str, Any], seq_len: int) -> list[float]:
    """Per-token forward FLOPs of layers 1..L (see the module docstring)."""
    return [float(sum(b.flops for b in blocks)) for blocks in layer_blocks(config, seq_len)]


def head_flops(config: Mapping[str, Any]) -> float:
    """Per-token FLOPs of one exit check: ``2 d V`` for the LM head; OPT with
    ``word_embed_proj_dim != d`` adds ``project_out``: ``2 d d_p + 2 d_p V``."""
    cfg = _Config(text_config(config))
    d, vocab = _hidden(cfg), int(cfg.get("vocab_size"))
    if _spec(cfg).head == "opt":
        d_proj = int(cfg.get("word_embed_proj_dim", default=d))
        if d_proj != d:
            return float(2 * d * d_proj + 2 * d_proj * vocab)
    return float(2 * d * vocab)


@dataclass(frozen=True)
class FlopModel:
    """Per-token FLOPs of layers 1..L and of one exit check (the head)."""

    per_layer: tuple[float, ...]
    head: float
    cumulative: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cumulative", np.concatenate([[0.0], np.cumsum(self.per_layer)]))

    @property
    def num_layers(self) -> int:
        return len(self.per_layer)

    @property
    def full(self) -> float:
        """``sum_{l <= L} layer_l + head``: the plain model, one head call."""
        return float(self.cumulative[-1] + self.head)

    def exit_cost(self, exit_layer: np.ndarray | int) -> np.ndarray:
        """``cost(e) = sum_{l <= e} layer_l + e * head`` for exit layers 1..L."""
        e = np.asarray(exit_layer)
        return self.cumulative[e] + e * self.head

    def costs_by_layer(self) -> np.ndarray:
        """``cost(e)`` for e = 0..L (index = exit layer; cost(0) = 0, unused)."""
        return self.exit_cost(np.arange(self.num_layers + 1))

    def net_savings(self, exit_layer: np.ndarray) -> float:
        """``1 - E[cost(e)] / full`` over the given exit layers."""
        return float(1.0 - np.mean(self.exit_cost(exit_layer)) / self.full)

    def to_dict(self) -> dict[str, Any]:
        return {"per_layer": list(self.per_layer), "head": self.head, "full": self.full}


def flop_model(config: Mapping[str, Any], seq_len: int) -> FlopModel:
    """:class:`FlopModel` of a transformers config dict at window length ``seq_len``."""
    return FlopModel(tuple(layer_flops(config, seq_len)), head_flops(config))


def parameter_counts(config: Mapping[str, Any]) -> tuple[int, int]:
    """Estimated ``(total, active)`` parameters from a config dict.

    total = embeddings (+ learned positions for GPT-2/OPT, + untied head)
    + every layer's weights (all experts, shared blocks once) + final norm;
    active = the same with only ``top_k`` experts per MoE layer. Biases are
    ignored, so expect agreement with published sizes to within a few percent.
    """
    cfg = _Config(text_config(config))
    d, vocab = _hidden(cfg), int(cfg.get("vocab_size"))
    spec = _spec(cfg)
    embed = float(vocab * d)
    if spec.head == "opt":
        d_proj = int(cfg.get("word_embed_proj_dim", default=d))
        embed = float(vocab * d_proj) + (2 * d * d_proj if d_proj != d else 0)
    if cfg.model_type == "gpt2":
        embed += int(cfg.get("n_positions")) * d
    elif cfg.model_type == "opt":
        embed += (int(cfg.get("max_position_embeddings")) + 2) * d
    tied = cfg.raw.get("tie_word_embeddings", True)
    head = (
        0.0
        if tied
        else float(vocab * (d if spec.head != "opt" else cfg.get("word_embed_proj_dim", default=d)))
    )
    total = active = embed + head + d  # + final norm
    seen_shared: set[tuple[str, str]] = set()
    for blocks in layer_blocks(config, seq_len=1):
        for block in blocks:
            if block.shared is not None:
                if (block.shared, block.name) in seen_shared:
                    continue
                seen_shared.add((block.shared, block.name))
            total += block.params
            active += block.active_params
    return int(round(total)), int(round(active))
