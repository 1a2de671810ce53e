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
* The head is the final norm (ignored) and the LM head, ``2 * d * V`` (plus
  OPT's ``project_out`` where the model has one). A hidden-state cosine check
  costs ``6 d`` (three dot products of length d).
* A skipped layer is not free (``state_cost``): later tokens read its keys and
  values, and an SSM's recurrent state must advance. Each block carries the
  FLOPs a skipped layer still spends under ``kv``: an attention block its K and
  V projections ``2 d_in 2 d_kv`` (``d_kv = H_kv d_h``; MLA: its compressed
  ``kv_a`` projection ``2 d (r_kv + d_rope)``), an SSM mixer its full cost.

Exit checks are allowed at the scheduled layers ``l in 1..L-1`` with
``l >= min_exit_layer`` and ``(l - min_exit_layer) % check_every == 0``
(:func:`check_schedule`); layer L is always the fallback. With ``s_l`` the
state cost of skipped layer l (0, ``kv_l`` or ``layer_l``):

    cost(e) = sum_{l <= e} layer_l + checks(e) * c + head + sum_{l > e} s_l

where the exit check of a head-based measure (maxprob, margin, entropy,
patience) costs ``c = head`` and is paid at every scheduled layer before e
(the head at e produces the output): ``checks(e) = #{scheduled l < e}``; a
cosine check costs ``c = 6 d`` at every scheduled layer up to e (below L) and
the head runs once, at the exit; the oracles and the *zero-check-cost bound*
pay ``c = 0``. ``full = sum_{l <= L} layer_l + head`` is the plain model. Net
savings of a set of exits is ``1 - E[cost(e)] / full`` (it can be negative:
checks cost more than the layers skipped). With every layer scheduled and
``state_cost: none`` a head-based exit costs the historical
``sum_{l <= e} layer_l + e * head`` (:meth:`FlopModel.exit_cost`).

Approximations, stated once: counts are per token at the window's average
context (what teacher-forced scoring of a window costs), not a batched decode
with a KV cache of another length; SSM scans use the recurrent (decode)
form; MLA (DeepSeek) is counted without weight absorption; small norms inside
Jamba's mixer, Zamba2's LoRA adapters beyond their matmuls, biases and
embedding look-ups are left out of the FLOPs.

Parameter counts are exact: :func:`parameter_counts` equals
``sum(p.numel() for p in model.parameters())`` of the model built from the
config (biases, every norm, learned positions, an untied head, shared blocks
once, a vision tower), which ``tests/test_architectures.py`` checks for every
supported type. Blocks that hold parameters but whose FLOPs are ignored
(norms, biases) carry ``flops = 0``.

Per-architecture facts (layer plan, MLP kind, head kind, biases, norms) come
from the one table, :data:`exitbench.architectures.ARCHITECTURES`; a
model_type not in it raises :class:`~exitbench.architectures.UnsupportedArchitecture`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exitbench.architectures import Architecture, check_layout, config_value, text_config

log = logging.getLogger(__name__)

__all__ = [
    "Block",
    "FlopModel",
    "FlopModelError",
    "CHECK_KINDS",
    "STATE_COSTS",
    "average_context",
    "check_schedule",
    "flop_model",
    "head_flops",
    "layer_blocks",
    "layer_flops",
    "layer_state_flops",
    "parameter_counts",
    "tuned_lens_flops",
]


#: How an exit check is paid: the LM head at each check, a cosine (6 d) per check and the
#: head once at the exit, or no check at all (oracles, the zero-check-cost bound).
CHECK_KINDS: tuple[str, ...] = ("head", "cosine", "none")
#: What a skipped layer still costs (config ``score.state_cost``).
STATE_COSTS: tuple[str, ...] = ("none", "kv", "full")


class FlopModelError(ValueError):
    """The config dict lacks a key the FLOP model needs."""


@dataclass(frozen=True)
class Block:
    """One component of a layer: ``params`` stored, ``active_params`` used per
    token, ``flops`` per token. ``shared`` names weights reused by several
    layers (Zamba2's shared transformer), counted once in parameter totals.
    ``state`` is what the block still costs per token when its layer is skipped
    under ``state_cost: kv`` (K/V projections, an SSM mixer's full cost)."""

    name: str
    params: float
    active_params: float
    flops: float
    shared: str | None = None
    state: float = 0.0


_ATTENTION_TYPES = {"attention", "full_attention", "sliding_attention", "chunked_attention"}
_NORM_WEIGHTS = {"weight": 1, "weight_bias": 2, "none": 0}  # parameters per unit of width


class _Config:
    """Key lookup over the language-model part of a config dict, naming the config in its errors.

    ``architecture`` is the table entry of the top-level ``model_type`` (for a
    multimodal wrapper such as Gemma-3, the wrapper's entry).
    """

    def __init__(self, config: Mapping[str, Any]):
        self.outer = dict(config)
        self.raw = dict(text_config(self.outer))
        self.model_type = str(self.raw.get("model_type", "?"))
        self.architecture: Architecture = check_layout(self.outer)

    def fact(self, name: str, default: Any = ...) -> Any:
        """A fact of :data:`exitbench.architectures.CONFIG_KEYS` (``hidden_size``, ...)."""
        try:
            return config_value(self.raw, name)
        except KeyError as err:
            if default is ...:
                raise FlopModelError(
                    f"{err.args[0]}, which the FLOP model needs (exitbench/flops.py)"
                ) from None
            return default

    def get(self, key: str, default: Any = ...) -> Any:
        value = self.raw.get(key)
        if value is not None:
            return value
        if default is ...:
            raise FlopModelError(
                f"config of model_type {self.model_type!r} has no key {key!r}, which the FLOP "
                "model needs (exitbench/flops.py)"
            )
        return default

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def switch(self, value: bool | str) -> bool:
        """A table fact that is always on (True), off (False) or the config key that turns it on."""
        return value if isinstance(value, bool) else bool(self.raw.get(value))

    def norm_params(self, width: float) -> float:
        """Parameters of one of this architecture's norms over ``width`` features."""
        return _NORM_WEIGHTS[self.architecture.norm] * width


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
    plus scores and weighted sum ``4 ctx d_h H``; skipped, its K and V
    projections ``2 d_in 2 H_kv d_h`` (the cache later tokens read)."""
    p = d_in * (heads + 2 * kv_heads) * head_dim + heads * head_dim * d_out
    kv = 2 * d_in * 2 * kv_heads * head_dim
    return Block("attention", p, p, 2 * p + 4 * ctx * head_dim * heads, state=kv)


def _mla_attention(cfg: _Config, d: int, ctx: float) -> Block:
    """DeepSeek multi-head latent attention (non-absorbed form): projections
    q (optionally through ``q_lora_rank``), kv_a ``d -> kv_lora + d_rope``,
    kv_b ``kv_lora -> H (d_nope + d_v)``, o ``H d_v -> d``; scores
    ``2 ctx H (d_nope + d_rope)`` and weighted sum ``2 ctx H d_v``; skipped, the
    cached latent ``kv_a`` ``2 d (kv_lora + d_rope)``."""
    heads = int(cfg.get("num_attention_heads"))
    nope, rope = int(cfg.get("qk_nope_head_dim")), int(cfg.get("qk_rope_head_dim"))
    v_dim = int(cfg.get("v_head_dim"))
    kv_rank = int(cfg.get("kv_lora_rank"))
    q_rank = cfg.get("q_lora_rank", default=None)
    q_out = heads * (nope + rope)
    q = d * q_out if q_rank is None else d * q_rank + q_rank * q_out
    p = q + d * (kv_rank + rope) + kv_rank * heads * (nope + v_dim) + heads * v_dim * d
    flops = 2 * p + 2 * ctx * heads * (nope + rope + v_dim)
    return Block("attention", p, p, flops, state=2 * d * (kv_rank + rope))


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


def _mamba1(
    d: int,
    d_inner: int,
    d_state: int,
    dt_rank: int,
    d_conv: int,
    conv_bias: bool = True,
    proj_bias: bool = False,
) -> Block:
    """Mamba-1 mixer per token: in_proj ``2 d 2 d_in``, depthwise conv
    ``2 d_in k``, x_proj ``2 d_in (r + 2 N)``, dt_proj ``2 r d_in``, selective
    scan ``9 d_in N`` (exp(Delta A) 2, Delta B x 2, state update 2, C h 2,
    +1 for the softplus/discretisation overhead: the customary 9 d_in N count),
    D skip and SiLU gate ``4 d_in``, out_proj ``2 d_in d``."""
    matmul = d * 2 * d_inner + d_inner * d_conv + d_inner * (dt_rank + 2 * d_state)
    matmul += dt_rank * d_inner + d_inner * d
    params = matmul + d_inner * d_state + 2 * d_inner  # A, D, dt bias
    params += d_inner if conv_bias else 0
    params += 2 * d_inner + d if proj_bias else 0  # in_proj and out_proj biases
    flops = 2 * matmul + 9 * d_inner * d_state + 4 * d_inner
    return Block("mamba", params, params, flops, state=flops)  # the state must advance


def _mamba2(
    d: int,
    d_inner: int,
    n_heads: int,
    n_groups: int,
    d_state: int,
    d_conv: int,
    conv_bias: bool = True,
    proj_bias: bool = False,
) -> Block:
    """Mamba-2 mixer per token (recurrent form, what one decode step costs):
    in_proj ``2 d (2 d_in + 2 G N + H)``, depthwise conv ``2 (d_in + 2 G N) k``,
    SSD state update and read-out ``5 d_in N`` (decay 1, dt x B outer product 1,
    add 1, C h 2), D skip ``2 d_in``, gated RMSNorm ``5 d_in``,
    out_proj ``2 d_in d``."""
    conv_dim = d_inner + 2 * n_groups * d_state
    in_proj = 2 * d_inner + 2 * n_groups * d_state + n_heads
    matmul = d * in_proj + conv_dim * d_conv + d_inner * d
    params = matmul + 3 * n_heads + d_inner  # A, D, dt bias, norm
    params += conv_dim if conv_bias else 0
    params += in_proj + d if proj_bias else 0
    flops = 2 * matmul + 5 * d_inner * d_state + 7 * d_inner
    return Block("mamba2", params, params, flops, state=flops)  # the state must advance


def _weights(name: str, params: float) -> Block:
    """Parameters whose FLOPs the model ignores (norms, biases, adapters' norms)."""
    return Block(name, params, params, 0.0)


def _norms(d: float, count: int = 2) -> Block:
    """``count`` RMSNorm weights of width ``d`` (parameters only; FLOPs ignored)."""
    return _weights("norms", count * d)


# ---------------------------------------------------------------- planners


def _hidden(cfg: _Config) -> int:
    return int(cfg.fact("hidden_size"))


def _num_layers(cfg: _Config) -> int:
    return int(cfg.fact("num_layers"))


def _layer_types(cfg: _Config) -> list[str] | None:
    types = cfg.fact("layer_types", default=None)
    return [str(t) for t in types] if types is not None else None


def _attention_geometry(cfg: _Config, d: int) -> tuple[int, int, int]:
    heads = int(cfg.fact("num_heads"))
    kv_heads = int(cfg.fact("num_kv_heads", default=heads))
    single = cfg.architecture.single_kv_head
    if single is not None and cfg.switch(single):
        kv_heads = 1  # multi-query attention: one key/value head shared by all query heads
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
    n_experts = int(cfg.fact("num_experts", default=0))
    if n_experts <= 1:
        return False
    if layer in (cfg.get("mlp_only_layers", default=[]) or []):
        return False
    if (layer + 1) % int(cfg.get("decoder_sparse_step", default=1)) != 0:
        return False
    if layer < int(cfg.get("first_k_dense_replace", default=0)):
        return False
    return layer % int(cfg.get("moe_layer_freq", default=1)) == 0


def _feed_forward(cfg: _Config, d: int, layer: int) -> list[Block]:
    """The MoE or dense MLP of one transformer layer (with its biases, if any)."""
    if _is_moe_layer(cfg, layer):
        n_experts = int(cfg.fact("num_experts"))
        top_k = int(cfg.fact("experts_per_token"))
        expert = int(cfg.fact("expert_size"))
        shared = float(cfg.get("shared_expert_intermediate_size", default=0))
        if cfg.has("n_shared_experts"):
            shared += int(cfg.get("n_shared_experts")) * expert
        shared += float(cfg.get("shared_intermediate_size", default=0))
        gate = cfg.has("shared_expert_intermediate_size")
        return [_moe(d, expert, n_experts, top_k, shared, gate)]
    intermediate = cfg.fact("intermediate_size", default=None)
    if intermediate is None:
        intermediate = 4 * d  # GPT-2's default when n_inner is null
    intermediate = int(intermediate)
    gated = cfg.architecture.gated_mlp
    blocks = [_mlp(d, intermediate, gated)]
    if cfg.switch(cfg.architecture.mlp_bias):
        blocks.append(_weights("mlp_bias", (2 if gated else 1) * intermediate + d))
    return blocks


def _attention_extras(cfg: _Config, d: int, heads: int, kv_heads: int, head_dim: int) -> Block:
    """Attention biases and query/key norms of one transformer layer (parameters only)."""
    architecture = cfg.architecture
    params = 0.0
    if cfg.switch(architecture.attention_bias):
        params += (heads + 2 * kv_heads) * head_dim
        params += d if architecture.attention_bias_on == "qkvo" else 0
    qk_norm = architecture.qk_norm
    if qk_norm is not None and (qk_norm.switch is None or cfg.switch(qk_norm.switch)):
        if qk_norm.per == "head":
            params += 2 * cfg.norm_params(head_dim)
        else:
            params += cfg.norm_params(heads * head_dim) + cfg.norm_params(kv_heads * head_dim)
    return _weights("attention_extras", params)


def _mla_norms(cfg: _Config) -> Block:
    """The RMSNorms on MLA's compressed query and key/value (parameters only)."""
    q_rank = cfg.get("q_lora_rank", default=None)
    return _weights("mla_norms", int(cfg.get("kv_lora_rank")) + (int(q_rank) if q_rank else 0))


def _plan_transformer(cfg: _Config, layer: int, seq_len: int) -> list[Block]:
    """Dense or MoE transformer layer: attention (GQA or MLA) + MLP or MoE + norms."""
    d = _hidden(cfg)
    ctx = average_context(seq_len, _window(cfg, layer))
    if cfg.has("kv_lora_rank"):
        attention = [_mla_attention(cfg, d, ctx), _mla_norms(cfg)]
    else:
        geometry = _attention_geometry(cfg, d)
        attention = [_attention(d, d, *geometry, ctx), _attention_extras(cfg, d, *geometry)]
    norms = _weights("norms", cfg.architecture.norms_per_layer * cfg.norm_params(d))
    return [*attention, *_feed_forward(cfg, d, layer), norms]


def _plan_mamba(cfg: _Config, layer: int, seq_len: int) -> list[Block]:
    """Mamba-1 / FalconMamba block: one mixer, no MLP."""
    d = _hidden(cfg)
    d_inner = cfg.get("intermediate_size", default=None)
    d_inner = int(d_inner) if d_inner is not None else int(float(cfg.get("expand")) * d)
    dt_rank = cfg.get("time_step_rank", default="auto")
    dt_rank = math.ceil(d / 16) if dt_rank == "auto" else int(dt_rank)
    mixer = _mamba1(
        d,
        d_inner,
        int(cfg.get("state_size")),
        dt_rank,
        int(cfg.get("conv_kernel")),
        conv_bias=cfg.switch("use_conv_bias"),
        proj_bias=cfg.switch("use_bias"),
    )
    return [mixer, _norms(d, 1)]


def _plan_mamba2(cfg: _Config, layer: int, seq_len: int) -> list[Block]:
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
        conv_bias=cfg.switch("use_conv_bias"),
        proj_bias=cfg.switch("use_bias"),
    )
    return [mixer, _norms(d, 1)]


def _plan_jamba(cfg: _Config, layer: int, seq_len: int) -> list[Block]:
    """Jamba: attention where ``layer % attn_layer_period == attn_layer_offset``,
    else a Mamba-1 mixer (with RMSNorms on dt, B and C: parameters only); MoE
    where ``layer % expert_layer_period == expert_layer_offset``, else a dense
    gated MLP."""
    d = _hidden(cfg)
    if layer % int(cfg.get("attn_layer_period")) == int(cfg.get("attn_layer_offset")):
        mixer = [_attention(d, d, *_attention_geometry(cfg, d), average_context(seq_len))]
    else:
        dt_rank = cfg.get("mamba_dt_rank", default="auto")
        dt_rank = math.ceil(d / 16) if dt_rank == "auto" else int(dt_rank)
        d_state = int(cfg.get("mamba_d_state"))
        mixer = [
            _mamba1(
                d,
                int(cfg.get("mamba_expand")) * d,
                d_state,
                dt_rank,
                int(cfg.get("mamba_d_conv")),
                conv_bias=cfg.switch("mamba_conv_bias"),
                proj_bias=cfg.switch("mamba_proj_bias"),
            ),
            _weights("mamba_norms", dt_rank + 2 * d_state),
        ]
    n_experts = int(cfg.fact("num_experts", default=1))
    if n_experts > 1 and layer % int(cfg.get("expert_layer_period")) == int(
        cfg.get("expert_layer_offset")
    ):
        mlp = _moe(
            d, int(cfg.get("intermediate_size")), n_experts, int(cfg.fact("experts_per_token"))
        )
    else:
        mlp = _mlp(d, int(cfg.get("intermediate_size")), gated=True)
    return [*mixer, mlp, _norms(d)]


def _plan_zamba2(cfg: _Config, layer: int, seq_len: int) -> list[Block]:
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
            conv_bias=cfg.switch("use_conv_bias"),
            proj_bias=cfg.switch("add_bias_linear"),
        ),
        _norms(d, 1),
    ]
    types = _layer_types(cfg) or []
    if layer < len(types) and types[layer] == "hybrid":
        hybrid_index = sum(t == "hybrid" for t in types[:layer])
        shared = f"zamba2_shared_{hybrid_index % int(cfg.get('num_mem_blocks', default=1))}"
        width = int(cfg.get("attention_hidden_size", default=2 * d))
        heads = int(cfg.fact("num_heads"))
        kv_heads = int(cfg.fact("num_kv_heads", default=heads))
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
                attention.state,
            ),
            Block("shared_mlp", mlp.params, mlp.active_params, mlp.flops, shared),
            # input norm on the 2 d concatenation, pre-MLP norm on d
            Block("shared_norms", width + d, width + d, 0.0, shared),
            _linear("hybrid_linear", d, d),
        ]
        rank = int(cfg.get("adapter_rank", default=0))
        if rank:
            blocks.append(_linear("mlp_adapter", d + 2 * intermediate, rank))
            if cfg.raw.get("use_shared_attention_adapter"):
                blocks.append(_linear("attention_adapters", 3 * 2 * width, rank))
    return blocks


def _plan_granitemoehybrid(cfg: _Config, layer: int, seq_len: int) -> list[Block]:
    """Granite-4.0-H: attention or Mamba-2 mixer per ``layer_types``, then an
    MoE (if ``num_local_experts > 0``) plus an always-on shared gated MLP of
    ``shared_intermediate_size``."""
    d = _hidden(cfg)
    types = _layer_types(cfg) or []
    if layer < len(types) and types[layer] in _ATTENTION_TYPES:
        geometry = _attention_geometry(cfg, d)
        mixer = [
            _attention(d, d, *geometry, average_context(seq_len)),
            _attention_extras(cfg, d, *geometry),
        ]
    else:
        mixer = [
            _mamba2(
                d,
                int(float(cfg.get("mamba_expand")) * d),
                int(cfg.get("mamba_n_heads")),
                int(cfg.get("mamba_n_groups", default=1)),
                int(cfg.get("mamba_d_state")),
                int(cfg.get("mamba_d_conv")),
                conv_bias=cfg.switch("mamba_conv_bias"),
                proj_bias=cfg.switch("mamba_proj_bias"),
            )
        ]
    blocks = [*mixer, _norms(d)]
    n_experts = int(cfg.fact("num_experts", default=0))
    shared = float(cfg.get("shared_intermediate_size", default=0))
    if n_experts > 0:
        blocks.append(
            _moe(
                d, int(cfg.get("intermediate_size")), n_experts, int(cfg.fact("experts_per_token"))
            )
        )
    if shared:
        blocks.append(_mlp(d, shared, gated=True, name="shared_mlp"))
    return blocks


_PLANS: dict[str, Callable[[_Config, int, int], list[Block]]] = {
    "transformer": _plan_transformer,
    "mamba": _plan_mamba,
    "mamba2": _plan_mamba2,
    "jamba": _plan_jamba,
    "zamba2": _plan_zamba2,
    "granitemoehybrid": _plan_granitemoehybrid,
}


# ---------------------------------------------------------------- public API


def layer_blocks(config: Mapping[str, Any], seq_len: int) -> list[list[Block]]:
    """The blocks of each layer 1..L (list index 0 = layer 1).

    Raises :class:`~exitbench.architectures.UnsupportedArchitecture` for a
    model_type not in the table, :class:`FlopModelError` for a missing key.
    """
    cfg = _Config(config)
    plan = _PLANS[cfg.architecture.plan]
    return [plan(cfg, layer, seq_len) for layer in range(_num_layers(cfg))]


def layer_flops(config: Mapping[str, Any], seq_len: int) -> list[float]:
    """Per-token forward FLOPs of layers 1..L (see the module docstring)."""
    return [float(sum(b.flops for b in blocks)) for blocks in layer_blocks(config, seq_len)]


def layer_state_flops(config: Mapping[str, Any], seq_len: int) -> list[float]:
    """Per-token FLOPs a skipped layer 1..L still spends under ``state_cost: kv``:
    its attention K/V projections and its SSM mixer (see the module docstring)."""
    return [float(sum(b.state for b in blocks)) for blocks in layer_blocks(config, seq_len)]


def check_schedule(num_layers: int, check_every: int = 1, min_exit_layer: int = 1) -> np.ndarray:
    """``[L]`` booleans (index l - 1 = layer l): exit checks run at layers
    ``l in 1..L-1`` with ``l >= min_exit_layer`` and
    ``(l - min_exit_layer) % check_every == 0``; layer L, the fallback, is never a
    check (the model's own output is used there)."""
    if check_every < 1 or min_exit_layer < 1:
        raise ValueError(
            f"score.check_every and score.min_exit_layer must be >= 1, got {check_every} "
            f"and {min_exit_layer}"
        )
    layer = np.arange(1, num_layers + 1)
    on = (layer >= min_exit_layer) & ((layer - min_exit_layer) % check_every == 0)
    on[-1] = False
    return on


def _head_input_width(cfg: _Config) -> int:
    """Width of the head's input: d, or OPT's ``word_embed_proj_dim``."""
    d = _hidden(cfg)
    if cfg.architecture.head == "opt":
        return int(cfg.get("word_embed_proj_dim", default=d))
    return d


def head_flops(config: Mapping[str, Any]) -> float:
    """Per-token FLOPs of one exit check: ``2 d V`` for the LM head; OPT with
    ``word_embed_proj_dim != d`` adds ``project_out``: ``2 d d_p + 2 d_p V``."""
    cfg = _Config(config)
    d, d_head, vocab = _hidden(cfg), _head_input_width(cfg), int(cfg.fact("vocab_size"))
    if d_head != d:
        return float(2 * d * d_head + 2 * d_head * vocab)
    return float(2 * d * vocab)


def tuned_lens_flops(config: Mapping[str, Any]) -> float:
    """Per-token FLOPs of one tuned-lens translator, h + A h + b: ``2 d^2``."""
    d = _hidden(_Config(config))
    return float(2 * d * d)


@dataclass(frozen=True)
class FlopModel:
    """Per-token FLOPs of layers 1..L, of the head, of a cosine check, and what
    each layer still costs when skipped under ``state_cost: kv`` (``state_kv``;
    None = nothing)."""

    per_layer: tuple[float, ...]
    head: float
    state_kv: tuple[float, ...] | None = None
    cosine: float = 0.0
    # the tuned lens's translator h + A h + b before each head check: 2 d^2 (0: logit lens)
    translator: float = 0.0
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

    def skipped_state(self, state_cost: str) -> np.ndarray:
        """``sum_{l > e} s_l`` for e = 0..L: what the layers after an exit at e
        still cost, with ``s_l`` = 0 (``none``), the K/V and SSM-mixer FLOPs
        (``kv``) or the whole layer (``full``)."""
        if state_cost == "none":
            per = np.zeros(self.num_layers)
        elif state_cost == "kv":
            per = np.asarray(self.state_kv or np.zeros(self.num_layers), dtype=np.float64)
        elif state_cost == "full":
            per = np.asarray(self.per_layer, dtype=np.float64)
        else:
            raise ValueError(f"score.state_cost must be one of {STATE_COSTS}, got {state_cost!r}")
        after = np.concatenate([np.cumsum(per[::-1])[::-1], [0.0]])  # after[e] = sum_{l > e}
        return after

    def policy_costs(
        self, check: str, schedule: np.ndarray | None = None, state_cost: str = "none"
    ) -> np.ndarray:
        """``cost(e)`` for e = 0..L (index = exit layer; index 0 unused):
        ``sum_{l <= e} layer_l + checks(e) c + head + sum_{l > e} s_l``.

        ``check`` is one of :data:`CHECK_KINDS`: ``head`` pays ``c = head`` at
        each scheduled layer before e; ``cosine`` pays ``c = 6 d`` at each
        scheduled layer up to e (below L); ``none`` pays no check (oracles, the
        zero-check-cost bound). ``schedule`` is :func:`check_schedule`'s mask
        (default: every layer below L)."""
        L = self.num_layers
        if schedule is None:
            schedule = check_schedule(L)
        checked = np.concatenate([[0], np.cumsum(np.asarray(schedule, dtype=np.int64))])
        if check == "head":
            checks = np.concatenate([[0], checked[:-1]])  # scheduled layers l < e
            c = self.head + self.translator
        elif check == "cosine":
            checks = checked  # scheduled layers l <= e (layer L is never scheduled)
            c = self.cosine
        elif check == "none":
            checks, c = np.zeros(L + 1), 0.0
        else:
            raise ValueError(f"exit check must be one of {CHECK_KINDS}, got {check!r}")
        costs = self.cumulative + checks * c + self.head + self.skipped_state(state_cost)
        costs[0] = 0.0
        return costs

    def exit_cost(self, exit_layer: np.ndarray | int) -> np.ndarray:
        """``cost(e) = sum_{l <= e} layer_l + e * head`` for exit layers 1..L: the
        head at every layer, no state cost (``policy_costs("head")`` with every
        layer scheduled and ``state_cost: none``)."""
        e = np.asarray(exit_layer)
        return self.cumulative[e] + e * self.head

    def costs_by_layer(self) -> np.ndarray:
        """``cost(e)`` for e = 0..L (index = exit layer; cost(0) = 0, unused)."""
        return self.exit_cost(np.arange(self.num_layers + 1))

    def net_savings(self, exit_layer: np.ndarray) -> float:
        """``1 - E[cost(e)] / full`` over the given exit layers."""
        return float(1.0 - np.mean(self.exit_cost(exit_layer)) / self.full)

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_layer": list(self.per_layer),
            "head": self.head,
            "full": self.full,
            "cosine": self.cosine,
            "state_kv": None if self.state_kv is None else list(self.state_kv),
            **({"translator": self.translator} if self.translator else {}),
        }


def flop_model(config: Mapping[str, Any], seq_len: int) -> FlopModel:
    """:class:`FlopModel` of a transformers config dict at window length ``seq_len``
    (cosine check ``6 d``)."""
    blocks = layer_blocks(config, seq_len)
    return FlopModel(
        tuple(float(sum(b.flops for b in layer)) for layer in blocks),
        head_flops(config),
        state_kv=tuple(float(sum(b.state for b in layer)) for layer in blocks),
        cosine=6.0 * _hidden(_Config(config)),
    )


def _embedding_params(cfg: _Config) -> float:
    """Token embeddings, learned positions, OPT's project_in/out, the head if untied, final norm."""
    architecture = cfg.architecture
    d, d_head, vocab = _hidden(cfg), _head_input_width(cfg), int(cfg.fact("vocab_size"))
    params = float(vocab * d_head)
    if d_head != d:
        params += 2 * d * d_head  # project_in and project_out
    if architecture.learned_positions is not None:
        params += (int(cfg.fact("max_positions")) + architecture.learned_positions) * d
    tied = cfg.raw.get("tie_word_embeddings", cfg.outer.get("tie_word_embeddings", True))
    params += 0 if tied else vocab * d_head
    params += vocab if architecture.head_bias else 0
    switch = architecture.final_norm_switch
    params += cfg.norm_params(d) if switch is None or cfg.switch(switch) else 0
    return params


def _siglip_params(vision: Mapping[str, Any], text_width: int) -> float:
    """A SigLIP vision tower (Gemma-3) and the projector into the text model.

    Patch embedding ``3 p^2 C + C``, positions ``(image/p)^2 C``; per layer two
    LayerNorms ``4 C``, q/k/v/o with biases ``4 (C^2 + C)``, MLP ``2 C I + I + C``;
    post LayerNorm ``2 C``; the optional attention-pooling head; projector
    ``C d + C`` (its RMSNorm)."""
    width, inner = int(vision["hidden_size"]), int(vision["intermediate_size"])
    patch, image = int(vision["patch_size"]), int(vision["image_size"])
    channels = int(vision.get("num_channels", 3))
    mlp = 2 * width * inner + inner + width
    layer = 4 * width + 4 * (width * width + width) + mlp
    params = channels * patch * patch * width + width + (image // patch) ** 2 * width
    params += int(vision["num_hidden_layers"]) * layer + 2 * width
    if vision.get("vision_use_head", True):
        params += width + 3 * width * width + 3 * width + width * width + width + 2 * width + mlp
    return params + width * text_width + width


def parameter_counts(config: Mapping[str, Any]) -> tuple[int, int]:
    """``(total, active)`` parameters of the model a config dict builds.

    total = embeddings (+ learned positions, + untied head, + head bias) + final
    norm + every layer's weights, biases and norms (all experts, shared blocks
    once) + a vision tower; equal to ``sum(p.numel())`` of the built model.
    active = the same with only ``top_k`` routed experts (plus shared experts)
    per MoE layer.
    """
    cfg = _Config(config)
    total = active = _embedding_params(cfg)
    if cfg.architecture.vision_tower == "siglip":
        vision = cfg.outer.get("vision_config")
        if not isinstance(vision, Mapping):
            raise FlopModelError(
                f"config of model_type {cfg.outer.get('model_type')!r} has no 'vision_config', "
                "which the parameter count needs (exitbench/flops.py)"
            )
        total = active = total + _siglip_params(vision, _hidden(cfg))
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
