"""THE table of per-architecture facts: one :class:`Architecture` entry per ``model_type``.

Everything exitbench needs to know about a model type, and nothing else, sits
here: how the logit lens decodes a hidden state (:mod:`exitbench.lens`), how
FLOPs and parameters are counted (:mod:`exitbench.flops`), and where the
decoder blocks are, so that a prefix of them can be run. Config keys that
mean the same thing under different names (``hidden_size`` / ``n_embd``) are
one table too, :data:`CONFIG_KEYS`, read through :func:`config_value`.

Adding an architecture is adding an entry to :data:`ARCHITECTURES` and a tiny
config to ``tests/tiny_configs.py``; the tests then check that the lens is
exact, that the blocks path resolves and that the parameter count equals the
built model's ``numel``. No other module holds a per-type ``if``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

__all__ = [
    "ARCHITECTURES",
    "CONFIG_KEYS",
    "Architecture",
    "PostHead",
    "QKNorm",
    "UnsupportedArchitecture",
    "check_layout",
    "check_supported",
    "config_value",
    "decoder_blocks",
    "module_at",
    "text_config",
]


class UnsupportedArchitecture(ValueError):
    """The model's ``model_type`` has no entry in :data:`ARCHITECTURES`."""


@dataclass(frozen=True)
class PostHead:
    """A transform the model applies to the head's output, with c = ``config.<config_key>``.

    ``softcap``: c * tanh(x / c); ``multiply``: x * c; ``divide``: x / c.
    Skipped when the config value is None (e.g. Gemma-3 without softcapping).
    """

    kind: Literal["softcap", "multiply", "divide"]
    config_key: str


@dataclass(frozen=True)
class QKNorm:
    """Norms on queries and keys inside attention.

    ``per``: ``"head"`` normalises each head (weights of size ``head_dim`` for
    q and for k); ``"width"`` normalises the whole projection (``H d_h`` for q,
    ``H_kv d_h`` for k). ``switch``: a config key that must be true for the norms
    to exist (None: always there).
    """

    per: Literal["head", "width"]
    switch: str | None = None


#: Which kind of layer each layer plan builds (see :mod:`exitbench.flops`).
LayerPlan = Literal["transformer", "mamba", "mamba2", "jamba", "zamba2", "granitemoehybrid"]


@dataclass(frozen=True)
class Architecture:
    """Facts about one ``model_type``; module paths are relative to the *ForCausalLM.

    Decoding (:class:`exitbench.lens.LogitLens`):

    - ``backbone``: the module whose forward returns ``hidden_states`` without the head.
    - ``final_norm``: the final norm module. A path whose attribute is None on a
      given model means that model has no final norm (OPT with
      ``do_layer_norm_before=False``).
    - ``pre_head``: a projection between norm and head (OPT's ``project_out``,
      None on models where hidden size equals the embedding size).
    - ``post_head``: the transform applied to the head's logits.
    - ``embedding_entry``: ``hidden_states[0]`` is the embedding output, so
      ``hidden_states[l]`` = h_l; without it (Mamba family) h_l = ``hidden_states[l - 1]``.
      Either way ``hidden_states[-1]`` has already been through the final norm
      (and ``pre_head``), so layer L goes straight into the head.

    Running a prefix of blocks:

    - ``blocks``: the ``ModuleList`` of the L decoder blocks, in order.
    - ``mixed_layer_types``: its checkpoints interleave layer types (Gemma-2/3: sliding
      and full attention, Gemma-3 with a rotary base of each) that transformers picks per
      layer index from ``config.layer_types``, so a block cannot run as layer 0 of a cache
      of its own (:func:`decode_refusal`).

    Counting FLOPs and parameters (:mod:`exitbench.flops`):

    - ``plan``: which layer planner builds each layer.
    - ``gated_mlp``: the dense MLP has 3 matrices (SwiGLU/GeGLU), not 2.
    - ``head``: ``"plain"`` (d -> V) or ``"opt"`` (``word_embed_proj_dim``
      with ``project_in`` / ``project_out`` when it differs from d).
    - ``head_bias``: the LM head has a bias (Phi).
    - ``learned_positions``: rows of the learned position table beyond
      ``max_positions`` (GPT-2: 0, OPT: 2); None for rotary/no positions.
    - ``norm``: parameters of one norm of width w: ``"weight"`` (RMSNorm,
      Cohere's bias-free LayerNorm) w; ``"weight_bias"`` (LayerNorm) 2 w;
      ``"none"`` (OLMo's weightless LayerNorm) 0.
    - ``norms_per_layer``: norms in one transformer layer (Gemma-2/3: 4, parallel
      attention/MLP of Phi and Cohere: 1).
    - ``qk_norm``: norms on queries and keys, if any.
    - ``attention_bias`` / ``mlp_bias``: True (always), False (never) or the
      config key that switches the linear biases on (absent key: off).
    - ``attention_bias_on``: which attention projections carry that bias.
    - ``final_norm_switch``: a config key that must be true for the final norm to exist.
    - ``vision_tower``: a vision encoder counted in the parameters (its FLOPs are
      not per text token).
    - ``single_kv_head``: a config key that, when true, gives attention one
      key/value head whatever the head counts say (Falcon-7B's multi-query).
    - ``other_layout``: ``(config key, value)`` pairs under which a model of this
      type has a layout the other facts do not describe (:func:`check_layout`
      refuses it).
    """

    backbone: str
    final_norm: str
    blocks: str
    pre_head: str | None = None
    post_head: PostHead | None = None
    embedding_entry: bool = True
    plan: LayerPlan = "transformer"
    gated_mlp: bool = True
    head: Literal["plain", "opt"] = "plain"
    head_bias: bool = False
    learned_positions: int | None = None
    norm: Literal["weight", "weight_bias", "none"] = "weight"
    norms_per_layer: int = 2
    qk_norm: QKNorm | None = None
    attention_bias: bool | str = "attention_bias"
    attention_bias_on: Literal["qkvo", "qkv"] = "qkvo"
    mlp_bias: bool | str = "mlp_bias"
    final_norm_switch: str | None = None
    vision_tower: Literal["siglip"] | None = None
    single_kv_head: str | None = None
    other_layout: tuple[tuple[str, bool], ...] = ()
    mixed_layer_types: bool = False


_SOFTCAP = PostHead("softcap", "final_logit_softcapping")
_DIVIDE_LOGITS_SCALING = PostHead("divide", "logits_scaling")
_PER_HEAD_QK_NORM = QKNorm("head")
_WIDTH_QK_NORM = QKNorm("width")


def _decoder(
    final_norm: str = "model.norm", blocks: str = "model.layers", **facts: Any
) -> Architecture:
    """The common layout: backbone ``model``, blocks ``model.layers``, final norm ``model.norm``."""
    return Architecture(backbone="model", final_norm=final_norm, blocks=blocks, **facts)


def _gemma(**facts: Any) -> Architecture:
    """Gemma-2/3: four norms per layer (pre and post attention, pre and post MLP), sliding
    and full attention layers interleaved."""
    return _decoder(norms_per_layer=4, mixed_layer_types=True, **facts)


def _mamba(plan: LayerPlan) -> Architecture:
    """Mamba / Mamba2 / FalconMamba: no embedding entry in hidden_states."""
    return Architecture(
        backbone="backbone",
        final_norm="backbone.norm_f",
        blocks="backbone.layers",
        embedding_entry=False,
        plan=plan,
    )


#: model_type -> its facts. THE one table of architecture facts.
# fmt: off
ARCHITECTURES: dict[str, Architecture] = {
    # Older recipes: LayerNorm with biases, plain 2-matrix MLP with biases.
    "gpt2": Architecture(
        backbone="transformer", final_norm="transformer.ln_f", blocks="transformer.h",
        gated_mlp=False, learned_positions=0, norm="weight_bias",
        attention_bias=True, mlp_bias=True,
    ),
    "gpt_neox": Architecture(
        backbone="gpt_neox", final_norm="gpt_neox.final_layer_norm", blocks="gpt_neox.layers",
        gated_mlp=False, norm="weight_bias", mlp_bias=True,
    ),
    # GPT-J: parallel attention and MLP under one LayerNorm, rotary positions, LM head with bias.
    "gptj": Architecture(
        backbone="transformer", final_norm="transformer.ln_f", blocks="transformer.h",
        gated_mlp=False, head_bias=True, norm="weight_bias", norms_per_layer=1,
        attention_bias=False, mlp_bias=True,
    ),
    # Falcon-7B (RefinedWeb layout): parallel attention and MLP under one LayerNorm, multi-query
    # attention (one key/value head), biases only where `bias` is set. Falcon-40B/180B's
    # new_decoder_architecture (two norms, grouped key/value heads) is another layout.
    "falcon": Architecture(
        backbone="transformer", final_norm="transformer.ln_f", blocks="transformer.h",
        gated_mlp=False, norm="weight_bias", norms_per_layer=1, attention_bias="bias",
        mlp_bias="bias", single_kv_head="multi_query",
        other_layout=(("new_decoder_architecture", True), ("parallel_attn", False)),
    ),
    # OPT-350m: post-LN (final_layer_norm is None) and project_out 1024 -> 512 before the head;
    # its hidden_states[-1] is the projected 512-d state.
    "opt": _decoder(
        final_norm="model.decoder.final_layer_norm", blocks="model.decoder.layers",
        pre_head="model.decoder.project_out", gated_mlp=False, head="opt", learned_positions=2,
        norm="weight_bias", attention_bias="enable_bias", mlp_bias="enable_bias",
        final_norm_switch="do_layer_norm_before",
    ),
    # Phi-1/2: parallel attention and MLP under one LayerNorm; every linear map has a bias.
    "phi": _decoder(
        final_norm="model.final_layernorm", gated_mlp=False, head_bias=True, norm="weight_bias",
        norms_per_layer=1, qk_norm=QKNorm("head", switch="qk_layernorm"),
        attention_bias=True, mlp_bias=True,
    ),
    # Llama-style decoders: RMSNorm (Gemma: x * (1 + w); OLMo: weightless LayerNorm).
    "llama": _decoder(),
    "mistral": _decoder(),
    "qwen2": _decoder(attention_bias=True, attention_bias_on="qkv"),
    "qwen3": _decoder(qk_norm=_PER_HEAD_QK_NORM),
    "phi3": _decoder(),
    "olmo": _decoder(norm="none"),
    "olmo2": _decoder(qk_norm=_WIDTH_QK_NORM),
    "gemma": _decoder(),
    "gemma2": _gemma(post_head=_SOFTCAP),
    "gemma3_text": _gemma(post_head=_SOFTCAP, qk_norm=_PER_HEAD_QK_NORM),
    # Gemma-3 >= 4B loads as Gemma3ForConditionalGeneration, whose forward applies no softcap.
    "gemma3": _gemma(
        final_norm="model.language_model.norm", blocks="model.language_model.layers",
        qk_norm=_PER_HEAD_QK_NORM, vision_tower="siglip",
    ),
    # Cohere: parallel attention and MLP under one bias-free LayerNorm.
    "cohere": _decoder(
        post_head=PostHead("multiply", "logit_scale"), norms_per_layer=1,
        qk_norm=QKNorm("width", switch="use_qk_norm"),
    ),
    "granite": _decoder(post_head=_DIVIDE_LOGITS_SCALING),
    # Mixture of experts (which layers are MoE is read from the config).
    "mixtral": _decoder(),
    "qwen2_moe": _decoder(attention_bias="qkv_bias", attention_bias_on="qkv"),
    "qwen3_moe": _decoder(qk_norm=_PER_HEAD_QK_NORM),
    "olmoe": _decoder(qk_norm=_WIDTH_QK_NORM),
    "deepseek_v2": _decoder(),
    "deepseek_v3": _decoder(),
    "granitemoe": _decoder(post_head=_DIVIDE_LOGITS_SCALING),
    # State-space models.
    "mamba": _mamba("mamba"),
    "mamba2": _mamba("mamba2"),
    "falcon_mamba": _mamba("mamba"),
    # Hybrids: every layer (attention or Mamba) records its output; hidden_states[0] = embeddings.
    "jamba": _decoder(final_norm="model.final_layernorm", plan="jamba"),
    "zamba2": _decoder(final_norm="model.final_layernorm", plan="zamba2"),
    "granitemoehybrid": _decoder(post_head=_DIVIDE_LOGITS_SCALING, plan="granitemoehybrid"),
}
# fmt: on


def check_supported(model_type: str) -> Architecture:
    """The table entry for ``model_type``; :class:`UnsupportedArchitecture` if there is none."""
    architecture = ARCHITECTURES.get(model_type)
    if architecture is None:
        raise UnsupportedArchitecture(
            f"model_type {model_type!r} is not supported by exitbench; supported model "
            f"types: {', '.join(sorted(ARCHITECTURES))}. Pick a model of a supported type, or "
            "add an Architecture entry to exitbench.architectures.ARCHITECTURES with a tiny "
            "config in tests/tiny_configs.py"
        )
    return architecture


#: Layer plans that mix attention and SSM blocks: decode cannot run them one block at a time.
HYBRID_PLANS: tuple[LayerPlan, ...] = ("jamba", "zamba2", "granitemoehybrid")


def decode_refusal(model_type: str) -> str | None:
    """Why the decode stage cannot run ``model_type`` one block at a time, or None if it can.

    Hybrids (:data:`HYBRID_PLANS`) and types whose layers interleave kinds
    (``mixed_layer_types``: Gemma-2/3) are refused: decode gives each block a cache of its
    own as its layer 0, and transformers takes a layer's cache, mask (and a hybrid's state)
    from the config by layer index, not from the block. A model of another type whose
    ``config.layer_types`` still mixes kinds (Qwen2 with ``use_sliding_window``) is refused
    when it is loaded (:class:`exitbench.decode.BlockRunner`). A type outside the table is
    refused by :func:`check_supported`.
    """
    architecture = check_supported(model_type)
    if architecture.plan in HYBRID_PLANS:
        return (
            f"model_type {model_type!r} mixes attention and SSM layers: decode runs each "
            "block with a cache of its own, and transformers builds a hybrid cache's layer "
            "types from the config, not from the block; decode does not support hybrids yet"
        )
    if architecture.mixed_layer_types:
        return mixed_layer_types_refusal(model_type, ("sliding_attention", "full_attention"))
    return None


def mixed_layer_types_refusal(model_type: str, layer_types: Sequence[str]) -> str:
    """The refusal of a model whose layers are of several ``layer_types``."""
    return (
        f"model_type {model_type!r} interleaves layer types ({', '.join(layer_types)}): decode "
        "runs each block as layer 0 of a cache of its own, and transformers picks a layer's "
        "mask, cache and rotary embedding by its index in config.layer_types, so every block "
        "would run as the first layer's type; decode does not support mixed layer types yet"
    )


def check_layout(config: Any) -> Architecture:
    """The table entry of ``config``'s model_type, refusing a layout its facts do not describe.

    Raises :class:`UnsupportedArchitecture` naming the config key when the
    config sets one of the entry's ``other_layout`` values (Falcon-40B's
    ``new_decoder_architecture``).
    """
    text = text_config(config)
    outer_type = config.get("model_type") if isinstance(config, Mapping) else config.model_type
    architecture = check_supported(outer_type)
    for key, value in architecture.other_layout:
        found = text.get(key) if isinstance(text, Mapping) else getattr(text, key, None)
        if found is not None and bool(found) == value:
            raise UnsupportedArchitecture(
                f"model_type {outer_type!r} with {key}={found!r} has a layout that the "
                f"exitbench.architectures.ARCHITECTURES entry for {outer_type!r} does not describe "
                "(its parameter and FLOP counts would be wrong); add an entry for that layout"
            )
    return architecture


# ---------------------------------------------------------------- config keys

#: fact -> the config keys that hold it, first match wins (GPT-2 and OPT name things their way).
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "hidden_size": ("hidden_size", "n_embd"),
    "num_layers": ("num_hidden_layers", "n_layer"),
    "num_heads": ("num_attention_heads", "n_head"),
    "num_kv_heads": ("num_key_value_heads",),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size"),
    "num_experts": ("num_local_experts", "num_experts", "n_routed_experts"),
    "experts_per_token": ("num_experts_per_tok",),
    "expert_size": ("moe_intermediate_size", "intermediate_size"),
    "layer_types": ("layer_types", "layers_block_type"),
    "max_positions": ("max_position_embeddings", "n_positions"),
    "vocab_size": ("vocab_size",),
}

_REQUIRED = object()


def text_config(config: Any) -> Any:
    """The language-model part of a config (dict or ``PretrainedConfig``).

    ``text_config`` of multimodal wrappers (Gemma-3 >= 4B, Llava-style) when
    the top level has no hidden size of its own, else the config itself.
    """
    if not isinstance(config, Mapping):
        return config.get_text_config()
    sub = config.get("text_config")
    if isinstance(sub, Mapping) and not any(
        config.get(key) is not None for key in CONFIG_KEYS["hidden_size"]
    ):
        return sub
    return config


def config_value(config: Any, fact: str, default: Any = _REQUIRED) -> Any:
    """The value of ``fact`` (a :data:`CONFIG_KEYS` key) in a config dict or ``PretrainedConfig``.

    Reads the language-model part (:func:`text_config`) and returns the first
    of the fact's keys that is set (not None). Without a ``default`` a missing
    fact raises ``KeyError`` naming the keys looked for.
    """
    text = text_config(config)
    for key in CONFIG_KEYS[fact]:
        value = text.get(key) if isinstance(text, Mapping) else getattr(text, key, None)
        if value is not None:
            return value
    if default is _REQUIRED:
        model_type = text.get("model_type") if isinstance(text, Mapping) else text.model_type
        raise KeyError(
            f"config of model_type {model_type!r} has none of the keys {list(CONFIG_KEYS[fact])} "
            f"({fact})"
        )
    return default


# ---------------------------------------------------------------- modules


def module_at(model: torch.nn.Module, path: str) -> torch.nn.Module | None:
    """The submodule at dotted ``path`` (None if the model sets that attribute to None)."""
    module: Any = model
    for part in path.split("."):
        if not hasattr(module, part):
            raise UnsupportedArchitecture(
                f"{type(model).__name__} (model_type {model.config.model_type!r}) has no module "
                f"{path!r} that exitbench.architectures.ARCHITECTURES names; this transformers "
                "version lays the model out differently: fix the table entry"
            )
        module = getattr(module, part)
    return module


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's L decoder blocks, in order (the ``blocks`` path of its table entry)."""
    import torch

    architecture = check_supported(model.config.model_type)
    blocks = module_at(model, architecture.blocks)
    if not isinstance(blocks, torch.nn.ModuleList):
        raise UnsupportedArchitecture(
            f"{type(model).__name__}: {architecture.blocks!r} is a {type(blocks).__name__}, not "
            f"a ModuleList; fix the entry for {model.config.model_type!r} in "
            "exitbench.architectures.ARCHITECTURES"
        )
    return blocks
