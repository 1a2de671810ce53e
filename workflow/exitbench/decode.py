"""Realised decoding: full, early-exit and self-speculative greedy generation.

Everything else in exitbench measures a *potential* (teacher-forced lens
agreement, skipped layers' state assumed free). This module generates text
and counts what each method actually spends.

Methods, each greedy, one prompt at a time (batch 1):

* ``full``: the model's own forward with its cache (KV cache, or the SSM
  cache), one token per step; equals ``model.generate(do_sample=False)``.
* ``early_exit`` (CALM-style): the new token runs through the blocks one at a
  time; after block l (l < L, l an allowed exit layer) the calibrated measure
  m_l of the lens (maxprob, margin, -entropy, cos_prev, patience) is compared
  with the threshold tau (cos_prev as extraction defines it, :func:`cosine_prev`:
  block l's output against its input, so the Mamba family's layer 1 compares
  with the embedding output); at the first l with m_l >= tau the lens top-1 of
  layer l is emitted. The skipped layers l+1..L of that position:

  - ``recompute`` (exact, EE-LLM / SkipDecode-like): nothing now; when a later
    token first reaches block j, block j runs batched over every position it
    has not seen yet, from their stored hidden states, then over the new
    token. Every key/value and every SSM state is the full model's own.
  - ``propagate`` (CALM): each skipped block runs once on the exit layer's
    hidden state h_e, so attention layers cache K/V computed from h_e (their
    own norm and projections) and SSM layers advance their recurrent state with
    h_e as input. Approximate; FLOPs count only the state work
    (:func:`exitbench.flops.layer_state_flops`: K/V projections, an SSM mixer).

* ``self_speculative`` (LayerSkip / draft-and-verify): draft ``gamma`` tokens
  with the first ``k`` blocks and the lens, then run blocks k+1..L on the
  drafted positions in one pass (blocks 1..k of the drafts are the draft's own,
  exact, states: reused, not recomputed), keep the longest prefix of drafts
  that equals the full model's top-1 plus the full model's next token.
  Lossless: the output is ``full``'s. Rejected positions are rolled back: the
  KV cache is truncated; an SSM's state is restored from a snapshot taken
  before drafting and re-advanced over the accepted positions.

How blocks run one at a time, for any architecture in the table: the backbone
is called with its block list swapped for the one block to run (its
``layer_idx`` set to 0, with a cache of its own), the block's input replaced by
a forward pre-hook when it is not the embedding. The backbone then builds the
masks, positions and rotary embeddings exactly as in its own forward, for the
positions that block's cache has not seen.

Counts per generated token (decode phase; the prompt's prefill is the same for
every method and not counted): ``blocks_executed`` (block x position
evaluations, incl. recomputed ones and rollback re-runs), ``propagated_blocks``
(state-only block evaluations of ``propagate``), FLOPs from
:mod:`exitbench.flops` (``layer_l`` per block evaluation, ``state_l`` per
propagated block, ``head`` per lens check / output; cosine checks ``6 d``).
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metrics
from .architectures import (
    check_supported,
    decode_refusal,
    decoder_blocks,
    mixed_layer_types_refusal,
    module_at,
)
from .lens import LogitLens
from .score import MIN_CI_DOCUMENTS

log = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "STRATEGIES",
    "BlockRunner",
    "DecodeError",
    "ExitPolicy",
    "Generation",
    "check_decode_settings",
    "early_exit_generate",
    "full_generate",
    "self_speculative_generate",
    "speculative_passes",
    "truncated_generate",
]

METHODS: tuple[str, ...] = ("full", "early_exit", "self_speculative")
STRATEGIES: tuple[str, ...] = ("recompute", "propagate")
#: Layer plans whose every block caches keys/values only (rollback = truncate).
_CROPPABLE_PLANS = ("transformer",)


class DecodeError(ValueError):
    """Decoding cannot run as configured (names the config key or the model to fix)."""


# ---------------------------------------------------------------- policy


@dataclass(frozen=True)
class ExitPolicy:
    """A calibrated threshold policy: exit at the first allowed layer with m_l >= tau.

    ``measure`` is one of :data:`exitbench.metrics.MEASURES`; ``threshold`` is the
    score JSON's value (for ``entropy``: exit when entropy_nats <= threshold;
    None or +inf: never exit). ``exit_layers``: the layers where an exit is
    allowed (None: 1..L-1).
    """

    measure: str
    threshold: float | None
    patience: int = 1
    exit_layers: tuple[int, ...] | None = None

    def value(self, history: Sequence[Mapping[str, float]]) -> float:
        """m_l at the latest check; ``history``: the lens stats of every check so far
        (layers 1..l that the schedule checks), as :func:`metrics.measure_values` counts
        the patience rules over checks, not layers."""
        measure = metrics.MEASURE_ALIASES.get(self.measure, self.measure)
        stats = history[-1]
        if measure == "patience_maxprob":
            if len(history) < self.patience:
                return -math.inf
            return float(min(check["maxprob"] for check in history[-self.patience :]))
        if measure == "pabee":
            # consecutive earlier checks whose top-1 equals this one's (metrics.pabee_measure)
            count = 0
            for check in reversed(history[:-1]):
                if check["top1"] != stats["top1"]:
                    break
                count += 1
            return float(count)
        if measure == "entropy":
            return -stats["entropy"]
        return stats[measure]

    def passes(self, value: float) -> bool:
        if self.threshold is None or math.isnan(value):
            return False
        tau = -self.threshold if self.measure == "entropy" else self.threshold
        # float32 comparison, as metrics.exit_layer does on the lens shard's float32 values
        return bool(np.float32(value) >= np.float32(tau))

    def allowed(self, layer: int, num_layers: int) -> bool:
        if layer >= num_layers:
            return False
        return self.exit_layers is None or layer in self.exit_layers


def lens_stats(logits: torch.Tensor) -> dict[str, float]:
    """top-1, maxprob, margin and entropy (nats) of one position's float32 logits [V]."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    top_log_probs, top_ids = torch.topk(log_probs, 2)
    top = top_log_probs.exp()
    entropy = -(log_probs.exp() * log_probs).sum()
    return {
        "top1": int(top_ids[0]),
        "maxprob": float(top[0]),
        "margin": float(top[0] - top[1]),
        "entropy": float(entropy.clamp_min(0.0)),
    }


# ---------------------------------------------------------------- running blocks


class BlockRunner:
    """Run a loaded *ForCausalLM one block at a time, each block with its own cache.

    ``run(j, ids, hidden)`` runs block j (1..L) on the positions its cache has
    not seen yet (``ids``: their token ids, [1, q]; ``hidden``: h_{j-1} of those
    positions, [1, q, d], None for block 1, which embeds ``ids``) and returns
    h_j. ``lengths[j]`` is the number of positions in block j's cache.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        model_type = model.config.model_type
        self.model = model
        self.architecture = check_supported(model_type)
        refusal = decode_refusal(model_type)  # the plan already skips the known ones
        kinds = sorted(set(getattr(model.config.get_text_config(), "layer_types", None) or ()))
        if refusal is None and len(kinds) > 1:
            refusal = mixed_layer_types_refusal(model_type, kinds)
        if refusal:
            raise DecodeError(refusal)
        self.lens = LogitLens.from_model(model)
        self.blocks = decoder_blocks(model)
        self.num_layers = len(self.blocks)
        parent_path, _, self._attribute = self.architecture.blocks.rpartition(".")
        self._parent = module_at(model, parent_path) if parent_path else model
        self._singles = [torch.nn.ModuleList([block]) for block in self.blocks]
        self._layer_modules = [
            [m for m in block.modules() if isinstance(getattr(m, "layer_idx", None), int)]
            for block in self.blocks
        ]
        parameters = inspect.signature(self.lens.backbone.forward).parameters
        names = [n for n in ("cache", "past_key_values", "cache_params") if n in parameters]
        if not names:
            raise DecodeError(
                f"model_type {model_type!r}: its backbone {type(self.lens.backbone).__name__} "
                "takes no cache argument (cache / past_key_values / cache_params), which "
                "decoding one block at a time needs; decode does not support this model type"
            )
        self._cache_argument = names[0]
        self._pass_cache_position = "cache_position" in parameters
        # sliding-window KV caches drop old positions and cannot be truncated back: snapshot
        text = model.config.get_text_config()
        self.croppable = self.architecture.plan in _CROPPABLE_PLANS and not getattr(
            text, "sliding_window", None
        )
        self.device = next(model.parameters()).device
        self.reset()

    def reset(self) -> None:
        self.caches: list[Any] = [None] * (self.num_layers + 1)  # index j = block j
        self.lengths: list[int] = [0] * (self.num_layers + 1)
        self.embedding: torch.Tensor | None = None  # block 1's input of the last call

    def run(self, layer: int, ids: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
        block = self.blocks[layer - 1]
        captured: dict[str, torch.Tensor] = {}

        def pre_hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            original = args[0] if args else kwargs["hidden_states"]
            captured["input"] = original
            if hidden is None:
                return args, kwargs
            replaced = hidden.to(dtype=original.dtype, device=original.device)
            if args:
                return (replaced, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": replaced}

        def post_hook(module: Any, args: Any, output: Any) -> None:
            captured["output"] = output[0] if isinstance(output, tuple) else output

        saved = [m.layer_idx for m in self._layer_modules[layer - 1]]
        handles = [
            block.register_forward_pre_hook(pre_hook, with_kwargs=True),
            block.register_forward_hook(post_hook),
        ]
        setattr(self._parent, self._attribute, self._singles[layer - 1])
        for module in self._layer_modules[layer - 1]:
            module.layer_idx = 0
        start = self.lengths[layer]
        kwargs: dict[str, Any] = {self._cache_argument: self.caches[layer], "use_cache": True}
        if self._pass_cache_position:
            kwargs["cache_position"] = torch.arange(start, start + ids.shape[1], device=self.device)
        try:
            with torch.no_grad():
                out = self.lens.backbone(input_ids=ids.to(self.device), **kwargs)
        finally:
            setattr(self._parent, self._attribute, self.blocks)
            for module, index in zip(self._layer_modules[layer - 1], saved, strict=True):
                module.layer_idx = index
            for handle in handles:
                handle.remove()
        cache = next(
            (
                out.get(n)
                for n in ("cache", "past_key_values", "cache_params")
                if out.get(n) is not None
            ),
            None,
        )
        self.caches[layer] = cache
        self.lengths[layer] = start + ids.shape[1]
        if layer == 1:
            self.embedding = captured["input"]
        return captured["output"]

    def run_all(self, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Run every block on ``ids`` ([1, q]); returns (inputs of blocks 1..L, h_L)."""
        inputs: list[torch.Tensor] = []
        hidden = None
        for layer in range(1, self.num_layers + 1):
            hidden = self.run(layer, ids, hidden)
            inputs.append(self.embedding if layer == 1 else inputs[-1])
        return inputs, hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Lens logits post(head(proj(norm(h)))) of any layer's raw hidden state (layer L too)."""
        lens = self.lens
        if lens.norm is not None:
            hidden = lens.norm(hidden)
        if lens.pre_head is not None:
            hidden = lens.pre_head(hidden)
        return lens.decode(hidden, lens.num_layers)  # layer L: head and post-head only

    def crop(self, layer: int, length: int) -> None:
        """Truncate block ``layer``'s KV cache to its first ``length`` positions."""
        surplus = self.lengths[layer] - length
        if surplus > 0:
            # the block ran as layer 0 of its own cache: crop that layer alone, since the
            # cache's other layers stay empty and transformers 5.17 fails on empty ones;
            # a negative argument removes that many positions (transformers 5.x, all minors)
            self.caches[layer].layers[0].crop(-surplus)
            self.lengths[layer] = length

    def snapshot(self) -> tuple[list[Any], list[int]]:
        return copy.deepcopy(self.caches), list(self.lengths)

    def restore(self, snapshot: tuple[list[Any], list[int]]) -> None:
        caches, lengths = snapshot
        self.caches, self.lengths = copy.deepcopy(caches), list(lengths)


# ---------------------------------------------------------------- generation records


@dataclass
class Generation:
    """One prompt's generation by one method, with what it spent (decode phase only)."""

    tokens: list[int]
    wall_s: float = 0.0
    blocks_executed: int = 0
    recomputed_blocks: int = 0
    propagated_blocks: int = 0
    rollback_blocks: int = 0
    lens_checks: int = 0
    flops: float = 0.0
    exit_layers: list[int] = field(default_factory=list)
    verification_passes: int | None = None
    drafted_tokens: int | None = None
    accepted_tokens: int | None = None


@dataclass(frozen=True)
class Costs:
    """Per-token FLOPs of each block (``layer``), of its state-only work (``state``),
    of a head call and of a cosine check (index j - 1 = block j)."""

    layer: tuple[float, ...]
    state: tuple[float, ...]
    head: float
    cosine: float

    @classmethod
    def zero(cls, num_layers: int) -> Costs:
        return cls((0.0,) * num_layers, (0.0,) * num_layers, 0.0, 0.0)


def _check_prompt(prompt: Sequence[int], new_tokens: int, model: torch.nn.Module) -> None:
    from .models import max_positions

    if len(prompt) < 1:
        raise DecodeError("decode.prompt_tokens must be >= 1: a prompt has no tokens")
    if new_tokens < 1:
        raise DecodeError(f"decode.new_tokens must be >= 1, got {new_tokens}")
    limit = max_positions(model.config)
    if limit is not None and len(prompt) + new_tokens > limit:
        raise DecodeError(
            f"decode.prompt_tokens + decode.new_tokens = {len(prompt) + new_tokens} exceeds the "
            f"{limit} positions of model_type {model.config.model_type!r}; lower them"
        )


def _ids(tokens: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor([list(tokens)], dtype=torch.long, device=device)


# ---------------------------------------------------------------- full


def full_generate(
    model: torch.nn.Module, prompt: Sequence[int], new_tokens: int, costs: Costs | None = None
) -> Generation:
    """Greedy decoding with the model's own forward and cache (the reference)."""
    _check_prompt(prompt, new_tokens, model)
    num_layers = len(decoder_blocks(model))
    costs = costs or Costs.zero(num_layers)
    device = next(model.parameters()).device

    def cache_of(out: Any) -> Any:
        names = ("past_key_values", "cache", "cache_params")
        return next(out.get(n) for n in names if out.get(n) is not None)

    with torch.no_grad():
        # the prompt but its last token fills the cache before the clock starts, as in
        # early_exit_generate and self_speculative_generate: all methods time the same work
        cached: dict[str, Any] = {}
        if len(prompt) > 1:
            out = model(input_ids=_ids(prompt[:-1], device), use_cache=True)
            cached = _cache_kwargs(model, cache_of(out), len(prompt) - 1)
        start = time.perf_counter()
        out = model(input_ids=_ids(prompt[-1:], device), use_cache=True, **cached)
        tokens = [int(out.logits[0, -1].argmax())]
        for _ in range(new_tokens - 1):
            out = model(
                input_ids=_ids(tokens[-1:], device),
                use_cache=True,
                **_cache_kwargs(model, cache_of(out), len(prompt) + len(tokens) - 1),
            )
            tokens.append(int(out.logits[0, -1].argmax()))
    wall = time.perf_counter() - start
    return Generation(
        tokens=tokens,
        wall_s=wall,
        blocks_executed=new_tokens * num_layers,
        lens_checks=0,
        flops=new_tokens * (sum(costs.layer) + costs.head),
        exit_layers=[num_layers] * new_tokens,
    )


def _cache_kwargs(model: torch.nn.Module, cache: Any, position: int) -> dict[str, Any]:
    parameters = inspect.signature(model.forward).parameters
    name = next(n for n in ("cache", "past_key_values", "cache_params") if n in parameters)
    kwargs: dict[str, Any] = {name: cache}
    if "cache_position" in parameters:
        kwargs["cache_position"] = torch.tensor([position], device=next(model.parameters()).device)
    return kwargs


# ---------------------------------------------------------------- early exit


def check_decode_settings(
    num_layers: int, ks: Sequence[int] = (), gammas: Sequence[int] = (), strategy: str = "recompute"
) -> None:
    """Fail before any work on ``decode.k`` outside 1..L-1, ``decode.gamma`` < 1 or an
    unknown ``decode.state_strategy``."""
    for k in ks:
        if not 1 <= int(k) <= num_layers - 1:
            raise DecodeError(
                f"config key 'decode.k': {k} is outside 1..L-1 = 1..{num_layers - 1} for a model "
                f"with {num_layers} blocks"
            )
    for gamma in gammas:
        if int(gamma) < 1:
            raise DecodeError(f"config key 'decode.gamma': {gamma} must be >= 1")
    if strategy not in STRATEGIES:
        raise DecodeError(
            f"config key 'decode.state_strategy': {strategy!r} is not one of {list(STRATEGIES)}"
        )


def cosine_prev(hidden: torch.Tensor, previous: torch.Tensor) -> float:
    """cos_prev of the new token (the last position), as extraction defines it
    (:meth:`exitbench.lens.LogitLens.cosine_states`): cos(h_l, h_{l-1}) in float32 of
    block l's output and input, so layer L reads the pre-norm h_L and layer 1 the
    embedding output (block 1's input), for the Mamba family too."""
    return float(
        torch.nn.functional.cosine_similarity(
            hidden[0, -1].float(), previous[0, -1].float(), dim=-1
        )
    )


def early_exit_generate(
    runner: BlockRunner,
    prompt: Sequence[int],
    new_tokens: int,
    policy: ExitPolicy,
    strategy: str = "recompute",
    costs: Costs | None = None,
    forced: Sequence[int] | None = None,
) -> Generation:
    """CALM-style greedy decoding (see the module docstring).

    ``forced`` (teacher forcing): the next input is ``forced[i]`` instead of the
    emitted token, so exit layers can be compared with the lens on a fixed
    sequence. The prompt's last token is the first decoded position (the rest of
    the prompt is prefilled through every block).
    """
    L = runner.num_layers
    check_decode_settings(L, strategy=strategy)
    _check_prompt(prompt, new_tokens, runner.model)
    costs = costs or Costs.zero(L)
    device = runner.device
    runner.reset()
    gen = Generation(tokens=[])
    pending: dict[int, torch.Tensor] = {}  # position -> its deepest hidden state (depth < L)
    with torch.no_grad():
        if len(prompt) > 1:
            runner.run_all(_ids(prompt[:-1], device))
        sequence = list(prompt)
        start = time.perf_counter()
        for step in range(new_tokens):
            position = len(sequence) - 1
            token = sequence[-1]
            hidden: torch.Tensor | None = None
            previous: torch.Tensor | None = None
            history: list[dict[str, float]] = []
            exit_at = L
            for layer in range(1, L + 1):
                behind = list(range(runner.lengths[layer], position))
                ids = _ids([*(sequence[p] for p in behind), token], device)
                inputs = [pending[p] for p in behind] if layer > 1 else []
                if layer > 1:
                    inputs.append(hidden)
                out = runner.run(layer, ids, torch.cat(inputs, dim=1) if layer > 1 else None)
                if behind:
                    gen.recomputed_blocks += len(behind)
                    gen.flops += len(behind) * costs.layer[layer - 1]
                    for i, p in enumerate(behind):
                        pending[p] = out[:, i : i + 1]
                        if layer == L:
                            del pending[p]
                gen.blocks_executed += len(behind) + 1
                gen.flops += costs.layer[layer - 1]
                previous = runner.embedding[:, -1:] if layer == 1 else hidden
                hidden = out[:, -1:]
                if not policy.allowed(layer, L):
                    continue
                logits = runner.logits(hidden)[0, -1]
                gen.lens_checks += 1
                stats = lens_stats(logits)
                history.append(stats)
                if policy.measure == "cos_prev":
                    gen.flops += costs.cosine
                    stats["cos_prev"] = cosine_prev(hidden, previous)
                else:
                    gen.flops += costs.head
                if policy.passes(policy.value(history)):
                    exit_at = layer
                    if policy.measure == "cos_prev":
                        gen.flops += costs.head  # the exit layer's head produces the token
                    emitted = int(logits.argmax())
                    break
            if exit_at == L:
                emitted = int(runner.logits(hidden)[0, -1].argmax())
                gen.flops += costs.head
            else:
                pending[position] = hidden
                if strategy == "propagate":
                    for layer in range(exit_at + 1, L + 1):
                        runner.run(layer, _ids([token], device), hidden)
                        gen.propagated_blocks += 1
                        gen.flops += costs.state[layer - 1]
                    del pending[position]
            gen.exit_layers.append(exit_at)
            gen.tokens.append(emitted)
            sequence.append(int(forced[step]) if forced is not None else emitted)
        gen.wall_s = time.perf_counter() - start
    return gen


def truncated_generate(
    model: torch.nn.Module, prompt: Sequence[int], new_tokens: int, k: int
) -> list[int]:
    """Greedy decoding of the model cut to its first ``k`` blocks plus final norm and head
    (no cache: the whole sequence each step; a reference for tests)."""
    lens = LogitLens.from_model(model)
    device = next(model.parameters()).device
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            hidden_states = lens.forward_hidden_states(_ids(sequence, device))
            hidden = lens.hidden_state(hidden_states, k)
            sequence.append(int(lens.decode(hidden, k)[0, -1].argmax()))
    return sequence[len(prompt) :]


# ---------------------------------------------------------------- self-speculative


def self_speculative_generate(
    runner: BlockRunner,
    prompt: Sequence[int],
    new_tokens: int,
    k: int,
    gamma: int,
    costs: Costs | None = None,
) -> Generation:
    """Draft with blocks 1..k and the lens, verify with blocks k+1..L (see the module docstring).

    Each round drafts ``g = min(gamma, tokens still needed - 1)`` tokens, then one
    verification pass; the round emits the m accepted drafts and the full model's
    next token. ``verification_passes`` counts rounds; ``drafted_tokens`` and
    ``accepted_tokens`` sum g and m.
    """
    L = runner.num_layers
    check_decode_settings(L, ks=[k], gammas=[gamma])
    _check_prompt(prompt, new_tokens, runner.model)
    costs = costs or Costs.zero(L)
    device = runner.device
    runner.reset()
    gen = Generation(tokens=[], verification_passes=0, drafted_tokens=0, accepted_tokens=0)
    with torch.no_grad():
        if len(prompt) > 1:
            runner.run_all(_ids(prompt[:-1], device))
        sequence = list(prompt)
        start = time.perf_counter()
        while len(gen.tokens) < new_tokens:
            base = len(sequence) - 1  # position of the last token, not yet in any cache
            g = min(gamma, new_tokens - len(gen.tokens) - 1)
            snapshot = None if runner.croppable else runner.snapshot()
            inputs: list[list[torch.Tensor]] = [[] for _ in range(L + 1)]  # block j's inputs
            drafts: list[int] = []
            fed = [sequence[-1]]
            # draft: blocks 1..k on the last token, then on each draft but the last
            for i in range(g + 1):
                token = fed[-1]
                hidden = None
                for layer in range(1, k + 1):
                    hidden_in = hidden
                    hidden = runner.run(layer, _ids([token], device), hidden_in)
                    inputs[layer].append(runner.embedding if layer == 1 else hidden_in)
                gen.blocks_executed += k
                gen.flops += sum(costs.layer[:k])
                inputs[k + 1].append(hidden)
                if i == g:
                    break  # the last draft only needs its blocks 1..k for verification
                drafts.append(int(runner.logits(hidden)[0, -1].argmax()))
                gen.flops += costs.head
                fed.append(drafts[-1])
            # verify: blocks k+1..L on all g + 1 positions in one pass
            ids = _ids(fed, device)
            hidden = torch.cat(inputs[k + 1], dim=1)
            for layer in range(k + 1, L + 1):
                inputs[layer] = [hidden]
                hidden = runner.run(layer, ids, hidden)
            gen.blocks_executed += (L - k) * (g + 1)
            gen.flops += (g + 1) * (sum(costs.layer[k:]) + costs.head)
            final = runner.logits(hidden)[0].argmax(-1).tolist()
            accepted = 0
            while accepted < g and drafts[accepted] == final[accepted]:
                accepted += 1
            emitted = [*drafts[:accepted], int(final[accepted])]
            gen.verification_passes += 1
            gen.drafted_tokens += g
            gen.accepted_tokens += accepted
            keep = base + accepted + 1  # positions base..base+accepted stay in the caches
            if accepted < g:
                _roll_back(runner, snapshot, inputs, fed, keep, base, gen, costs)
            gen.tokens.extend(emitted)
            sequence.extend(emitted)
        gen.wall_s = time.perf_counter() - start
    gen.exit_layers = []
    return gen


def _roll_back(
    runner: BlockRunner,
    snapshot: Any,
    inputs: list[list[torch.Tensor]],
    fed: list[int],
    keep: int,
    base: int,
    gen: Generation,
    costs: Costs,
) -> None:
    """Drop the rejected positions (>= ``keep``) from every block's state.

    KV caches are truncated; recurrent (SSM) states are restored from the
    pre-draft ``snapshot`` and re-advanced over the kept positions from their
    recorded block inputs (counted as ``rollback_blocks``).
    """
    if snapshot is None:
        for layer in range(1, runner.num_layers + 1):
            runner.crop(layer, keep)
        return
    runner.restore(snapshot)
    n_keep = keep - base
    ids = _ids(fed[:n_keep], runner.device)
    for layer in range(1, runner.num_layers + 1):
        if layer == 1:
            runner.run(1, ids, None)
        else:
            runner.run(layer, ids, torch.cat(inputs[layer], dim=1)[:, :n_keep])
        gen.rollback_blocks += n_keep
        gen.blocks_executed += n_keep
        gen.flops += n_keep * costs.layer[layer - 1]


def speculative_passes(agree: Sequence[bool], new_tokens: int, gamma: int) -> tuple[int, int, int]:
    """Verification passes, drafted and accepted tokens of self-speculative decoding, from
    ``agree[i]`` = whether layer k's lens top-1 equals the final top-1 at the position
    that predicts new token i (teacher-forced along the generated sequence).

    Each round drafts ``g = min(gamma, remaining - 1)`` tokens and accepts the run of
    agreements from its first position, at most g, plus one full-model token.
    """
    position = passes = drafted = accepted = 0
    while position < new_tokens:
        g = min(gamma, new_tokens - position - 1)
        m = 0
        while m < g and agree[position + m]:
            m += 1
        passes, drafted, accepted = passes + 1, drafted + g, accepted + m
        position += m + 1
    return passes, drafted, accepted


# ---------------------------------------------------------------- the decode stage


def _target_key(target: float) -> str:
    return f"{target:g}"


def calibrated_policy(summary: Mapping[str, Any], target: float, path: str = "") -> ExitPolicy:
    """The score JSON's policy for consistency ``target``: its best measure, that
    measure's calibrated threshold, and the check schedule it was calibrated with."""
    from .flops import check_schedule

    key = _target_key(target)
    try:
        measure = summary["best_measure"][key]
        policy = summary["policies"][measure][key]
        threshold = policy["threshold"]
        params = summary["params"]
        num_layers = int(summary["num_layers"])
    except (KeyError, TypeError) as err:
        raise DecodeError(
            f"score file {path or '(summary)'} has no calibrated policy for consistency target "
            f"{key} (config key 'decode.target'; missing {err}); add {key} to "
            "score.consistency_targets or rerun the score stage"
        ) from None
    schedule = check_schedule(
        num_layers, int(params.get("check_every", 1)), int(params.get("min_exit_layer", 1))
    )
    return ExitPolicy(
        measure=str(measure),
        threshold=None if threshold is None else float(threshold),
        patience=int(params.get("patience", 1)),
        exit_layers=tuple(int(i) + 1 for i in np.flatnonzero(schedule)),
    )


@dataclass
class Prompt:
    doc_id: str
    ids: list[int]


def heldout_prompts(
    tokens_path: str | Path,
    n_prompts: int,
    prompt_tokens: int,
    calibration_fraction: float,
    seed: int,
) -> list[Prompt]:
    """The first ``prompt_tokens`` ids of the first window of held-out documents, in
    table order, at most ``n_prompts`` of them. The split is the score stage's own
    (:func:`exitbench.metrics.split_documents` over the table's documents), so no
    calibration document is ever a prompt."""
    from .tables import read_table

    table = read_table(tokens_path, "tokens", columns=["doc_id", "input_ids"]).to_pydict()
    doc_ids = list(dict.fromkeys(table["doc_id"]))
    if len(doc_ids) < 2:
        raise DecodeError(
            f"{tokens_path}: {len(doc_ids)} document(s): decode needs held-out documents that "
            "calibration never saw; use more documents (workloads.<name>.max_docs)"
        )
    heldout = set(
        np.asarray(doc_ids)[~metrics.split_documents(doc_ids, calibration_fraction, seed)]
    )
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for doc, ids in zip(table["doc_id"], table["input_ids"], strict=True):
        if doc in heldout and doc not in seen and len(ids) >= prompt_tokens:
            seen.add(doc)
            prompts.append(Prompt(doc, [int(i) for i in ids[:prompt_tokens]]))
            if len(prompts) == n_prompts:
                break
    if not prompts:
        raise DecodeError(
            f"{tokens_path}: no held-out document has {prompt_tokens} tokens in its first window; "
            "lower decode.prompt_tokens"
        )
    return prompts


def model_costs(config: Mapping[str, Any], seq_len: int) -> Costs:
    """Per-token FLOPs from :mod:`exitbench.flops` at context ``seq_len``."""
    from .architectures import config_value
    from .flops import head_flops, layer_flops, layer_state_flops

    return Costs(
        layer=tuple(layer_flops(config, seq_len)),
        state=tuple(layer_state_flops(config, seq_len)),
        head=head_flops(config),
        cosine=6.0 * float(config_value(config, "hidden_size")),
    )


def default_ks(num_layers: int) -> list[int]:
    """``decode.k: null``: k = L/4 and L/2 (rounded down, at least 1, at most L - 1)."""
    return sorted({min(max(1, num_layers * f // 4), num_layers - 1) for f in (1, 2)})


@dataclass(frozen=True)
class Variant:
    method: str
    strategy: str | None = None
    k: int | None = None
    gamma: int | None = None

    @property
    def name(self) -> str:
        if self.method == "early_exit":
            return f"early_exit/{self.strategy}"
        if self.method == "self_speculative":
            return f"self_speculative/k={self.k}/gamma={self.gamma}"
        return self.method


def variants(params: Mapping[str, Any], num_layers: int) -> list[Variant]:
    """Every (method, setting) the ``decode:`` section asks for, ``full`` first; checks
    ``decode.k`` / ``decode.gamma`` / ``decode.state_strategy`` before any work."""
    methods = list(params.get("methods", METHODS))
    strategies = params.get("state_strategy", ["recompute"])
    strategies = [strategies] if isinstance(strategies, str) else list(strategies)
    ks = params.get("k") or default_ks(num_layers)
    gammas = list(params.get("gamma", [4]))
    for strategy in strategies:
        check_decode_settings(num_layers, ks, gammas, strategy)
    out = [Variant("full")]
    if "early_exit" in methods:
        out += [Variant("early_exit", strategy=s) for s in strategies]
    if "self_speculative" in methods:
        out += [Variant("self_speculative", k=int(k), gamma=int(g)) for k in ks for g in gammas]
    return out


def _run(
    variant: Variant,
    model: torch.nn.Module,
    runner: BlockRunner,
    prompt: Sequence[int],
    new_tokens: int,
    policy: ExitPolicy,
    costs: Costs,
) -> Generation:
    if variant.method == "full":
        return full_generate(model, prompt, new_tokens, costs)
    if variant.method == "early_exit":
        return early_exit_generate(runner, prompt, new_tokens, policy, variant.strategy, costs)
    return self_speculative_generate(runner, prompt, new_tokens, variant.k, variant.gamma, costs)


def _first_divergence(tokens: Sequence[int], reference: Sequence[int]) -> int | None:
    for i, (a, b) in enumerate(zip(tokens, reference, strict=True)):
        if a != b:
            return i
    return None


def decode_prompts(
    model: torch.nn.Module,
    prompts: Sequence[Prompt],
    new_tokens: int,
    policy: ExitPolicy,
    run_variants: Sequence[Variant],
    costs: Costs,
) -> list[dict[str, Any]]:
    """Rows of the decode table: every variant on every prompt, after one warm-up each."""
    runner = BlockRunner(model)
    for variant in run_variants:  # warm-up: first calls allocate and compile kernels
        _run(variant, model, runner, prompts[0].ids, min(new_tokens, 4), policy, costs)
    rows = []
    full_per_token = sum(costs.layer) + costs.head
    for index, prompt in enumerate(prompts):
        reference: list[int] | None = None
        for variant in run_variants:
            gen = _run(variant, model, runner, prompt.ids, new_tokens, policy, costs)
            if reference is None:
                reference = gen.tokens
            n = len(gen.tokens)
            agree = sum(a == b for a, b in zip(gen.tokens, reference, strict=True))
            rows.append(
                {
                    "prompt_index": index,
                    "doc_id": prompt.doc_id,
                    "method": variant.method,
                    "variant": variant.name,
                    "state_strategy": variant.strategy,
                    "k": variant.k,
                    "gamma": variant.gamma,
                    "measure": policy.measure if variant.method == "early_exit" else None,
                    "threshold": policy.threshold if variant.method == "early_exit" else None,
                    "prompt_ids": list(prompt.ids),
                    "generated_ids": gen.tokens,
                    "n_new_tokens": n,
                    "wall_s": gen.wall_s,
                    "tokens_per_s": n / gen.wall_s if gen.wall_s > 0 else math.nan,
                    "blocks_executed": gen.blocks_executed,
                    "recomputed_blocks": gen.recomputed_blocks,
                    "propagated_blocks": gen.propagated_blocks,
                    "rollback_blocks": gen.rollback_blocks,
                    "blocks_per_token": gen.blocks_executed / n,
                    "lens_checks": gen.lens_checks,
                    "flops": gen.flops,
                    "flops_full": n * full_per_token,
                    "mean_exit_layer": float(np.mean(gen.exit_layers)) if gen.exit_layers else None,
                    "agreement": agree / n,
                    "first_divergence": _first_divergence(gen.tokens, reference),
                    "verification_passes": gen.verification_passes,
                    "drafted_tokens": gen.drafted_tokens,
                    "accepted_tokens": gen.accepted_tokens,
                    "acceptance_rate": (
                        gen.accepted_tokens / gen.drafted_tokens if gen.drafted_tokens else None
                    ),
                }
            )
    return rows


def speculative_prediction(alpha: float, gamma: int, k: int, costs: Costs) -> dict[str, float]:
    """Leviathan et al.'s expected tokens per verification pass ``(1 - a^(g+1)) / (1 - a)``
    and the speed-up ``tokens_per_pass * c_L / (g c_k + c_L)``, with ``c_k`` the k-block
    draft incl. head and ``c_L`` the full model for one token.

    That speed-up prices a verification pass of g + 1 positions at c_L, one token's cost: the
    memory-bound regime speculative decoding is built for, not a FLOP count (in FLOPs a
    pass costs (g + 1) c_L and self-speculative decoding never saves). It is
    ``pass_cost_speedup``; ``flop_speedup`` is the same number under its first name. The
    realised counterpart is :func:`pass_cost_speedup` of the counted passes and drafts."""
    alpha = float(alpha)
    tokens = gamma + 1.0 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)
    c_k, c_full = draft_and_pass_costs(k, costs)
    speedup = tokens * c_full / (gamma * c_k + c_full)
    return {
        "alpha": alpha,
        "tokens_per_pass": tokens,
        "flop_speedup": speedup,
        "pass_cost_speedup": speedup,
    }


def draft_and_pass_costs(k: int, costs: Costs) -> tuple[float, float]:
    """(c_k, c_L): FLOPs of one drafted token (blocks 1..k and the head) and of the full
    model for one token, the prices of the speculative cost model."""
    return sum(costs.layer[:k]) + costs.head, sum(costs.layer) + costs.head


def pass_cost_speedup(
    tokens: Sequence[float],
    drafted: Sequence[float],
    passes: Sequence[float],
    k: int,
    costs: Costs,
    weights: np.ndarray,
) -> dict[str, float]:
    """The realised speed-up under the prediction's cost model, per prompt sums:
    ``Σ n c_L / Σ (drafted c_k + passes c_L)``, with its bootstrap CI over prompts."""
    from .score import _ci

    c_k, c_full = draft_and_pass_costs(k, costs)
    spent = np.asarray(drafted, float) * c_k + np.asarray(passes, float) * c_full
    return _ci(*metrics.bootstrap_ratio(np.asarray(tokens, float) * c_full, spent, weights))


def _headline(
    rows: Sequence[Mapping[str, Any]], num_layers: int, weights: np.ndarray, costs: Costs
) -> dict[str, Any]:
    """Per-variant numbers, each a ratio of per-prompt sums with its bootstrap CI over prompts."""
    from .score import _ci

    by_variant: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    full_rows = by_variant["full"]
    out: dict[str, Any] = {}

    def ratio(num: Sequence[float], den: Sequence[float]) -> dict[str, float]:
        return _ci(
            *metrics.bootstrap_ratio(np.asarray(num, float), np.asarray(den, float), weights)
        )

    for name, group in by_variant.items():
        n = [r["n_new_tokens"] for r in group]
        entry = {
            "method": group[0]["method"],
            "tokens_per_s": ratio(n, [r["wall_s"] for r in group]),
            "wall_speedup": ratio([r["wall_s"] for r in full_rows], [r["wall_s"] for r in group]),
            "block_savings": ratio(
                [t * num_layers - r["blocks_executed"] for t, r in zip(n, group, strict=True)],
                [t * num_layers for t in n],
            ),
            "flop_savings": ratio(
                [r["flops_full"] - r["flops"] for r in group], [r["flops_full"] for r in group]
            ),
            "agreement": ratio([r["agreement"] * t for t, r in zip(n, group, strict=True)], n),
            "exact_prompts": int(sum(r["first_divergence"] is None for r in group)),
        }
        if entry["method"] == "early_exit":
            entry["mean_exit_layer"] = ratio(
                [r["mean_exit_layer"] * t for t, r in zip(n, group, strict=True)], n
            )
            entry["state_strategy"] = group[0]["state_strategy"]
        if entry["method"] == "self_speculative":
            entry["acceptance_rate"] = ratio(
                [r["accepted_tokens"] for r in group], [r["drafted_tokens"] for r in group]
            )
            entry["tokens_per_pass"] = ratio(n, [r["verification_passes"] for r in group])
            entry["k"], entry["gamma"] = group[0]["k"], group[0]["gamma"]
            entry["pass_cost_speedup"] = pass_cost_speedup(
                n,
                [r["drafted_tokens"] for r in group],
                [r["verification_passes"] for r in group],
                int(entry["k"]),
                costs,
                weights,
            )
        out[name] = entry
    return out


def prompt_warnings(n_prompts: int) -> list[str]:
    """The decode JSON's ``warnings``: CIs over prompts rest on the prompts as resampling
    units, and fewer than :data:`~exitbench.score.MIN_CI_DOCUMENTS` of them (the score
    stage's bar for documents) cannot support a percentile bootstrap."""
    if n_prompts >= MIN_CI_DOCUMENTS:
        return []
    return [
        f"only {n_prompts} prompt(s) (fewer than {MIN_CI_DOCUMENTS}): bootstrap CIs over "
        "prompts are unreliable; use more (decode.prompts, held-out documents permitting)"
    ]


def decode_summary(
    rows: Sequence[Mapping[str, Any]],
    score_summary: Mapping[str, Any],
    agreement_by_layer: Mapping[int, float],
    policy: ExitPolicy,
    costs: Costs,
    params: Mapping[str, Any],
    bootstrap: int,
    seed: int,
    model: str,
    workload: str,
) -> dict[str, Any]:
    """The decode JSON: realised numbers per variant (``realised``) beside what the lens
    scores predicted (``predicted``)."""
    num_layers = len(costs.layer)
    n_prompts = len({r["prompt_index"] for r in rows})
    weights = metrics.bootstrap_weights(n_prompts, int(bootstrap), np.random.default_rng(seed))
    target = float(params.get("target", 0.99))
    suffix = f"{round(target * 100, 6):g}"
    headline = score_summary.get("headline", {})
    speculative = {}
    for row in rows:
        if row["method"] == "self_speculative" and row["variant"] not in speculative:
            k, gamma = int(row["k"]), int(row["gamma"])
            alpha = agreement_by_layer.get(k, math.nan)
            speculative[row["variant"]] = {
                "k": k,
                "gamma": gamma,
                **speculative_prediction(alpha, gamma, k, costs),
            }
    return {
        "model": model,
        "workload": workload,
        "num_layers": num_layers,
        "n_prompts": n_prompts,
        "few_prompts": n_prompts < MIN_CI_DOCUMENTS,
        "warnings": prompt_warnings(n_prompts),
        "prompt_tokens": int(params.get("prompt_tokens", 0)),
        "new_tokens": int(params.get("new_tokens", 0)),
        "policy": {
            "target": target,
            "measure": policy.measure,
            "threshold": policy.threshold,
            "patience": policy.patience,
            "exit_layers": list(policy.exit_layers or range(1, num_layers)),
        },
        "realised": _headline(rows, num_layers, weights, costs),
        "predicted": {
            "oracle_savings": headline.get("oracle_savings"),
            "policy_savings": headline.get(f"savings_at_{suffix}"),
            "policy_net_flop_savings": headline.get(f"net_flop_savings_at_{suffix}"),
            "self_speculative": speculative,
        },
        "flops": {"per_layer": list(costs.layer), "state": list(costs.state), "head": costs.head},
        "params": {
            "bootstrap": int(bootstrap),
            "seed": int(seed),
            **{key: params[key] for key in sorted(params) if key not in ("device",)},
        },
        "provenance": {},
    }


TABLE = "decode"


def decode_files(
    model_name: str,
    model_entry: Mapping[str, Any],
    tokens_path: str | Path,
    score_json: str | Path,
    scores_parquet: str | Path,
    parquet_path: str | Path,
    json_path: str | Path,
    params: Mapping[str, Any],
    calibration_fraction: float,
    bootstrap: int,
    seed: int,
    workload: str,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """File-to-file entry point of the decode rule; ``params`` is the config's ``decode:``
    section. Every check (settings, policy, prompts, model support) runs before any
    generation, and both outputs are written only at the end (atomically)."""
    import json

    import pyarrow as pa

    from .flops import FlopModelError
    from .models import load_model
    from .provenance import write_json
    from .tables import write_table

    score_summary = json.loads(Path(score_json).read_text())
    target = float(params.get("target", 0.99))
    policy = calibrated_policy(score_summary, target, str(score_json))
    prompts = heldout_prompts(
        tokens_path,
        int(params["prompts"]),
        int(params["prompt_tokens"]),
        calibration_fraction,
        seed,
    )
    model, _ = load_model(model_name, dict(model_entry), str(params.get("device", "auto")))
    try:
        runner = BlockRunner(model)
    except (DecodeError, ValueError) as err:
        raise DecodeError(f"model {model_name!r}: {err}") from None
    num_layers = runner.num_layers
    run_variants = variants(params, num_layers)
    new_tokens = int(params["new_tokens"])
    _check_prompt(prompts[0].ids, new_tokens, model)
    try:
        costs = model_costs(model.config.to_dict(), len(prompts[0].ids) + new_tokens)
    except (FlopModelError, KeyError, TypeError, ValueError) as err:
        log.warning("no FLOP model for %s (%s): FLOPs are zero", model_name, err)
        costs = Costs.zero(num_layers)
    del runner
    rows = decode_prompts(model, prompts, new_tokens, policy, run_variants, costs)
    agreement = _read_agreement(scores_parquet)
    summary = decode_summary(
        rows, score_summary, agreement, policy, costs, params, bootstrap, seed, model_name, workload
    )
    summary["provenance"] = dict(provenance or {})
    table = pa.Table.from_pylist(
        [{"model": model_name, "workload": workload, **row} for row in rows]
    )
    summary = validate_summary(summary)
    write_table(table, parquet_path, TABLE)
    write_json(summary, json_path)
    for warning in summary["warnings"]:
        log.warning("%s / %s: %s", model_name, workload, warning)
    for name, entry in summary["realised"].items():
        log.info(
            "%s / %s %s: %.1f tokens/s, block savings %.3f, FLOP savings %.3f, agreement %.3f",
            model_name,
            workload,
            name,
            entry["tokens_per_s"]["estimate"],
            entry["block_savings"]["estimate"],
            entry["flop_savings"]["estimate"],
            entry["agreement"]["estimate"],
        )
    return summary


def _read_agreement(scores_parquet: str | Path) -> dict[int, float]:
    """Layer -> lens agreement with the final top-1 (the score stage's curves): alpha_k."""
    from .tables import read_table

    curves = read_table(scores_parquet, "scores", columns=["layer", "agreement"]).to_pydict()
    return dict(zip(curves["layer"], curves["agreement"], strict=True))


def validate_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready copy of the decode summary, checked against ``decode.schema.json``."""
    import json

    import jsonschema

    from .provenance import clean_json
    from .tables import SCHEMA_DIR

    clean = clean_json(dict(summary), 10)
    schema = json.loads((SCHEMA_DIR / "decode.schema.json").read_text())
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(clean), key=lambda e: list(e.path)
    )
    if errors:
        where = "/".join(str(x) for x in errors[0].path) or "(root)"
        raise DecodeError(
            f"decode summary does not match decode.schema.json at {where}: {errors[0].message}"
        )
    return clean


# ---------------------------------------------------------------- into the study summary

#: Summary columns from the decode JSON (schema ``summary``): realised beside predicted.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "decode_full_tokens_per_s",
    "decode_recompute_block_savings",
    "decode_recompute_flop_savings",
    "decode_recompute_wall_speedup",
    "decode_recompute_agreement",
    "decode_propagate_block_savings",
    "decode_propagate_flop_savings",
    "decode_propagate_wall_speedup",
    "decode_propagate_agreement",
    "decode_speculative_variant",
    "decode_speculative_wall_speedup",
    "decode_speculative_flop_speedup",
    "decode_speculative_predicted_flop_speedup",
    "decode_speculative_acceptance_rate",
    "decode_speculative_pass_cost_speedup",
)


def summary_columns(path: str | Path | None) -> dict[str, Any]:
    """The :data:`SUMMARY_COLUMNS` of one decode JSON (all None when it is absent).

    ``decode_<strategy>_*``: the early-exit variant's block and FLOP savings,
    wall-clock speed-up over ``full`` and agreement with it;
    ``decode_speculative_*``: the self-speculative variant with the highest
    realised FLOP speed-up ``1 / (1 - flop_savings)``, its wall-clock speed-up,
    the speed-up the lens predicted for it (the pass-cost model, under its first name
    ``..._predicted_flop_speedup``), its acceptance rate, and its realised pass-cost
    speed-up (``pass_cost_speedup``: the prediction's own cost model on the counted drafts
    and passes, the number to read beside the prediction).
    """
    import json

    out: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
    if path is None or not Path(path).exists():
        return out
    data = json.loads(Path(path).read_text())
    realised = data.get("realised", {})

    def estimate(entry: Mapping[str, Any], key: str) -> float | None:
        value = entry.get(key)
        return value.get("estimate") if isinstance(value, Mapping) else None

    out["decode_full_tokens_per_s"] = estimate(realised.get("full", {}), "tokens_per_s")
    for strategy in STRATEGIES:
        entry = realised.get(f"early_exit/{strategy}", {})
        for key in ("block_savings", "flop_savings", "wall_speedup", "agreement"):
            out[f"decode_{strategy}_{key}"] = estimate(entry, key)
    speculative = {k: v for k, v in realised.items() if v.get("method") == "self_speculative"}

    def flop_speedup(entry: Mapping[str, Any]) -> float:
        savings = estimate(entry, "flop_savings")
        return -math.inf if savings is None or savings >= 1 else 1 / (1 - savings)

    if speculative:
        name = max(sorted(speculative), key=lambda k: flop_speedup(speculative[k]))
        entry = speculative[name]
        predicted = data.get("predicted", {}).get("self_speculative", {}).get(name, {})
        out["decode_speculative_variant"] = name
        out["decode_speculative_wall_speedup"] = estimate(entry, "wall_speedup")
        out["decode_speculative_flop_speedup"] = flop_speedup(entry)
        out["decode_speculative_predicted_flop_speedup"] = predicted.get("flop_speedup")
        out["decode_speculative_acceptance_rate"] = estimate(entry, "acceptance_rate")
        out["decode_speculative_pass_cost_speedup"] = estimate(entry, "pass_cost_speedup")
    return out
