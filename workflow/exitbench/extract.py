"""Stage 3, extract: logit-lens reductions for one shard of token windows.

For every window, position t and layer l of ``lens.layer_numbers`` the lens
distribution is p_l = softmax(decode_l(h_l)) over the vocabulary V (the
model's own final norm, head and post-head transforms; see ``lens.py``). One
row per (seq_id, pos, layer) of table ``lens``
(``workflow/schemas/lens.schema.yaml``) holds, with ŷ_L the final layer's
argmax and g the next token:

- ``top1`` = argmax_v p_l(v); ``topk_ids`` / ``topk_logprobs`` the k largest;
- ``maxprob`` = max_v p_l(v); ``margin`` = p_l(1st) - p_l(2nd);
- ``entropy`` = -Σ_v p_l(v) log p_l(v) (nats);
- ``logprob_final_top1`` = log p_l(ŷ_L); ``logprob_gold`` = log p_l(g);
- ``kl_to_final`` = KL(p_L || p_l) = Σ_v p_L(v) (log p_L(v) - log p_l(v));
- ``cos_prev`` = cos(h_l, h_{l-1}) of the un-normed hidden states in float32, like
  with like: at layer L it reads the pre-norm h_L, the final norm's input, which a
  forward pre-hook records during the same forward pass (hidden_states[-1] is
  already final-normed); for the Mamba family (no embedding entry, layers 1..L)
  layer 1 compares h_1 with the embedding output h_0, recorded by a forward hook
  on the input embeddings (see ``LogitLens.capture_cosine_states``). Null at
  layer 0 of models with an embedding entry; where the model has no final norm
  (OPT with ``do_layer_norm_before=False``) layer L reads hidden_states[-1], which
  is h_L itself, or, for OPT-350m, h_L projected to another width: null there.

How it is computed (memory is bounded by ``token_chunk`` x V, never
layers x tokens x V): one forward pass per batch keeps every layer's hidden
state; then for each chunk of ``token_chunk`` real tokens the final layer is
reduced first (its probabilities kept for that chunk only), then every other
layer. Per layer and chunk the logits are cast to float32 once and reduced
with the max-shifted form z = x - max x, s = Σ exp z, so that
log p = z - log s, maxprob = 1/s, entropy = log s - Σ exp(z) z / s and
KL(p_L || p_l) = log s_l - H(p_L) - Σ p_L z_l; this needs no log-softmax
tensor and few passes over the vocabulary, in place where possible.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm.auto import tqdm

from exitbench import fused as fused_lens
from exitbench import models, tables
from exitbench.lens import LogitLens, TunedLens
from exitbench.tokens import TokenizeError
from exitbench.translators import load_tuned_lens

log = logging.getLogger(__name__)

PAD_ID = 0  # any valid id: padded positions are masked and never emitted
# Float32 logits per chunk buffer when the chunk is sized by memory (see chunk_tokens).
CHUNK_BYTES = 128 * 2**20


def chunk_tokens(vocab: int, budget_bytes: int = CHUNK_BYTES) -> int:
    """Tokens per chunk so that one float32 [tokens, V] buffer is ``budget_bytes``: budget / (4 V).

    128 MiB gives 1048 tokens at V = 32000, 256 at V = 131072 and 128 at V = 262144.
    """
    return max(1, int(budget_bytes) // (4 * int(vocab)))


# Output arrays of reduce_layers, in table order (``row`` is the batch row, not seq_id).
FIELDS = (
    "row",
    "pos",
    "layer",
    "top1",
    "topk_ids",
    "topk_logprobs",
    "maxprob",
    "margin",
    "entropy",
    "logprob_final_top1",
    "gold",
    "logprob_gold",
    "kl_to_final",
    "cos_prev",
)


class NonFiniteLogitsError(FloatingPointError):
    """A layer's logits hold NaN or infinity."""

    def __init__(self, layer: int, message: str = "") -> None:
        self.layer = layer
        super().__init__(message or f"non-finite logits (NaN or inf) at layer {layer}")


class _Buffers:
    """Reusable [token_chunk, V] float32 buffers (re-allocating them costs page faults on CPU)."""

    def __init__(self) -> None:
        self.exp: torch.Tensor | None = None
        self.final_prob: torch.Tensor | None = None

    def get(self, name: str, rows: int, like: torch.Tensor) -> torch.Tensor:
        buffer = getattr(self, name)
        if (
            buffer is None
            or buffer.shape[0] < rows
            or buffer.shape[1] != like.shape[1]
            or buffer.device != like.device
        ):
            buffer = torch.empty(
                (max(rows, 1), like.shape[1]), dtype=torch.float32, device=like.device
            )
            setattr(self, name, buffer)
        return buffer[:rows]


def topk_blockwise(
    logits: torch.Tensor, k: int, block: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(logits, k, dim=-1)`` for [C, V] rows, several times faster on CPU.

    The k largest values of a row lie in the k blocks (of ``block`` entries)
    with the largest block maxima, so one cheap max pass over V picks k * block
    candidates and the exact top-k runs over those (plus the ragged tail).
    Values equal ``torch.topk``'s. Ties are broken like ``torch.argmax``:
    ``ids[:, 0]`` is the lowest index of the maximum (so the final layer's top-1
    equals ``model(...).logits.argmax(-1)`` even with bfloat16 ties); among
    other tied values the order is unspecified.
    """
    rows, vocab = logits.shape
    n_blocks = vocab // block
    if n_blocks < 4 * k:
        values, ids = torch.topk(logits, k, dim=-1)
        return values, _first_max_first(ids, logits.argmax(-1))
    body = logits[:, : n_blocks * block].view(rows, n_blocks, block)
    block_max, best_blocks = torch.topk(body.amax(-1), k, dim=-1)  # [C, k]
    candidates = body.gather(1, best_blocks[:, :, None].expand(rows, k, block)).reshape(rows, -1)
    candidate_ids = best_blocks[:, :, None] * block + torch.arange(block, device=logits.device)
    candidate_ids = candidate_ids.reshape(rows, -1)
    if n_blocks * block < vocab:  # the tail that does not fill a block
        candidates = torch.cat([candidates, logits[:, n_blocks * block :]], dim=1)
        tail_ids = torch.arange(n_blocks * block, vocab, device=logits.device)
        candidate_ids = torch.cat([candidate_ids, tail_ids.expand(rows, -1)], dim=1)
    values, picked = torch.topk(candidates, k, dim=-1)
    # Lowest index of the maximum: every block holding the maximum is a candidate unless
    # all k chosen blocks peak at it (then fall back to a full argmax for that row).
    is_max = candidates == values[:, :1]
    top1 = torch.where(is_max, candidate_ids, vocab).amin(-1)
    crowded = block_max[:, -1] == values[:, 0]
    if bool(crowded.any()):
        top1[crowded] = logits[crowded].argmax(-1)
    return values, _first_max_first(candidate_ids.gather(1, picked), top1)


def _first_max_first(ids: torch.Tensor, top1: torch.Tensor) -> torch.Tensor:
    """``ids`` (sorted top-k of one row each) with ``top1``, a tied maximum, moved to column 0."""
    ids = torch.where(ids == top1[:, None], ids[:, :1], ids)
    ids[:, 0] = top1
    return ids


def _reduce_logits(
    logits: torch.Tensor,
    k: int,
    exp_out: torch.Tensor,
    gold: torch.Tensor,
    final_top1: torch.Tensor | None,
    final_prob: torch.Tensor | None,
    final_entropy: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """Reduce one layer's float32 logits [C, V] (overwritten) to per-token statistics.

    With ``final_prob`` None this is the final layer: ``exp_out`` is left
    holding p_L, and KL is 0. ``gold`` holds the next token id or -1.
    """
    values, ids = topk_blockwise(logits, k)  # sorted, on logits (softmax is monotone)
    z = logits.sub_(values[:, :1])  # z = x - max x <= 0
    top1 = ids[:, 0]
    if final_top1 is None:
        final_top1 = top1
    z_final_top1 = z.gather(1, final_top1[:, None]).squeeze(1)
    z_gold = z.gather(1, gold.clamp_min(0)[:, None]).squeeze(1)
    torch.exp(z, out=exp_out)
    total = exp_out.sum(-1)  # s >= 1: the max term is exp(0)
    log_total = torch.log(total)
    if final_prob is None:
        prob = exp_out.div_(total[:, None])
        entropy = log_total - z.mul_(prob).sum(-1)
        kl = torch.zeros_like(entropy)
    else:
        entropy = log_total - exp_out.mul_(z).sum(-1) / total
        kl = (log_total - final_entropy - z.mul_(final_prob).sum(-1)).clamp_min_(0.0)
    topk_logprobs = values - values[:, :1] - log_total[:, None]
    maxprob = torch.exp(-log_total)
    return {
        "top1": top1,
        "topk_ids": ids,
        "topk_logprobs": topk_logprobs,
        "maxprob": maxprob,
        "margin": maxprob - torch.exp(topk_logprobs[:, 1]),
        "entropy": entropy.clamp_min_(0.0),  # clamp keeps NaN: the finiteness check sees it
        "logprob_final_top1": z_final_top1 - log_total,
        "logprob_gold": z_gold - log_total,
        "kl_to_final": kl,
    }


def _allocate_stats(
    n_tokens: int, n_layers: int, k: int, device: torch.device
) -> dict[str, torch.Tensor]:
    stats = {
        "top1": torch.empty((n_tokens, n_layers), dtype=torch.long, device=device),
        "topk_ids": torch.empty((n_tokens, n_layers, k), dtype=torch.long, device=device),
        "topk_logprobs": torch.empty((n_tokens, n_layers, k), device=device),
    }
    for name in (
        "maxprob",
        "margin",
        "entropy",
        "logprob_final_top1",
        "logprob_gold",
        "kl_to_final",
    ):
        stats[name] = torch.empty((n_tokens, n_layers), device=device)
    stats["cos_prev"] = torch.full((n_tokens, n_layers), math.nan, device=device)
    return stats


def reduce_hidden_states(
    lens: LogitLens,
    hidden_states: Sequence[torch.Tensor],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    top_k: int,
    token_chunk: int | None = None,
    fused: bool | None = None,
    captured: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, np.ndarray]:
    """Lens statistics for the real (unmasked) positions of a right-padded batch.

    ``token_chunk`` tokens are reduced at a time (None: :func:`chunk_tokens` of
    the vocabulary). ``fused`` streams each chunk over vocabulary tiles
    (:mod:`exitbench.fused`); None uses it on CUDA, where the head is linear.
    ``captured``: the states :meth:`LogitLens.capture_cosine_states` recorded during
    the forward pass that gave ``hidden_states`` (pre-norm h_L; the Mamba family's
    embedding output), which ``cos_prev`` reads (:meth:`LogitLens.cosine_states`);
    without them cos_prev at layer L compares the final-normed hidden_states[-1] and
    is NaN at the Mamba family's layer 1. No other column depends on them.

    Returns :data:`FIELDS` as numpy arrays with one entry per (row, pos, layer),
    sorted by row, pos, layer; ``topk_ids`` / ``topk_logprobs`` are [n, top_k].
    Missing values: ``gold`` = -1 and ``logprob_gold`` = NaN at a window's last
    position, ``cos_prev`` = NaN at layer 0 (and wherever it has no previous state).
    Raises :class:`NonFiniteLogitsError` naming the first layer with NaN/inf logits.
    """
    layers = [int(layer) for layer in lens.layer_numbers]
    final_layer = int(lens.num_layers)
    if layers[-1] != final_layer:
        raise ValueError(f"lens.layer_numbers {layers} must end at num_layers={final_layer}")
    batch, length = input_ids.shape
    mask = attention_mask.to(torch.bool)
    real = mask.reshape(-1).nonzero().squeeze(1).cpu()  # flat (row, pos) order
    n_tokens, n_layers = int(real.numel()), len(layers)
    if n_tokens == 0:
        return _empty_result(top_k)
    next_ids = torch.full_like(input_ids, -1)
    next_ids[:, :-1] = torch.where(mask[:, 1:], input_ids[:, 1:], -1)
    gold = next_ids.reshape(-1).cpu()[real]

    # With device_map="auto" layers live on different GPUs: keep index copies per device.
    copies: dict[tuple[str, torch.device], torch.Tensor] = {}

    def on(name: str, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        if (name, device) not in copies:
            copies[(name, device)] = tensor.to(device)
        return copies[(name, device)]

    k = max(top_k, 2)  # the margin needs the runner-up
    stats: dict[str, torch.Tensor] = {}
    buffers = _Buffers()
    flat_hidden = {
        layer: lens.hidden_state(hidden_states, layer).reshape(batch * length, -1)
        for layer in layers
    }
    flat_cosine = {
        layer: state.reshape(batch * length, -1)
        for layer, state in lens.cosine_states(hidden_states, captured).items()
    }
    order = [final_layer] + [layer for layer in layers if layer != final_layer]
    head_device = lens.head.weight.device if fused_lens.supported(lens) else None
    if fused is None:
        fused = head_device is not None and head_device.type == "cuda"
    if fused and head_device is None:
        raise ValueError(f"the fused lens needs a linear head; {lens.model_type!r} has none")
    if token_chunk is None:
        token_chunk = chunk_tokens(_vocabulary(lens))
    for start in range(0, n_tokens, token_chunk):
        stop = min(start + token_chunk, n_tokens)
        hidden = {
            layer: states[on("real", real, states.device)[start:stop]]
            for layer, states in flat_hidden.items()
        }
        chunk_gold = on("gold", gold, head_device or gold.device)[start:stop]
        if fused:
            outs = _reduce_chunk_fused(lens, hidden, order, chunk_gold, k)
        else:
            outs = _reduce_chunk_eager(lens, hidden, order, chunk_gold, k, buffers)
        if not stats:  # the vocabulary size (and so k) is known from the first chunk
            first = outs[final_layer]["topk_ids"]
            k = int(first.shape[-1])
            stats = _allocate_stats(n_tokens, n_layers, k, first.device)
        for layer, out in outs.items():
            column = layers.index(layer)
            for name, value in out.items():
                stats[name][start:stop, column] = value
        # cos_prev_l = cos(s_l, s_{l-1}) of the states LogitLens.cosine_states names
        states = {
            layer: hidden[layer]
            if layer in hidden and flat is flat_hidden[layer]
            else flat[on("real", real, flat.device)[start:stop]]
            for layer, flat in flat_cosine.items()
        }
        for column, layer in enumerate(layers):
            if layer - 1 not in states:
                continue
            current, previous = states[layer].float(), states[layer - 1].float()
            # OPT-350m's last state is already projected to the head width: no cosine (null)
            if current.shape[-1] == previous.shape[-1]:
                cosine = torch.nn.functional.cosine_similarity(
                    current, previous.to(current.device), dim=-1
                )
                stats["cos_prev"][start:stop, column] = cosine.to(stats["cos_prev"].device)

    # NaN anywhere in a layer's logits, or +-inf, makes its entropy non-finite.
    finite = torch.isfinite(stats["entropy"]).all(dim=0).cpu()
    if not bool(finite.all()):
        raise NonFiniteLogitsError(layers[int((~finite).nonzero()[0, 0])])

    def per_row(values: torch.Tensor) -> np.ndarray:
        values = values.cpu().numpy()
        return values.reshape(n_tokens * n_layers, *values.shape[2:])

    real_np = real.numpy()
    result = {
        "row": np.repeat(real_np // length, n_layers),
        "pos": np.repeat(real_np % length, n_layers).astype(np.int32),
        "layer": np.tile(np.asarray(layers, dtype=np.int16), n_tokens),
        "gold": np.repeat(gold.numpy(), n_layers),
    }
    for name in FIELDS:
        if name not in result:
            result[name] = per_row(stats[name])
    result["top1"] = result["top1"].astype(np.int32)
    result["topk_ids"] = result["topk_ids"][:, :top_k].astype(np.int32)
    result["topk_logprobs"] = result["topk_logprobs"][:, :top_k]
    result["logprob_gold"] = np.where(result["gold"] >= 0, result["logprob_gold"], np.nan)
    return {name: result[name] for name in FIELDS}


def _reduce_chunk_eager(
    lens: LogitLens,
    hidden: dict[int, torch.Tensor],
    order: list[int],
    gold: torch.Tensor,
    k: int,
    buffers: _Buffers,
) -> dict[int, dict[str, torch.Tensor]]:
    """Per layer (final first): decode the chunk's [C, V] logits and reduce them in float32."""
    final: dict[str, torch.Tensor] = {}
    outs: dict[int, dict[str, torch.Tensor]] = {}
    final_layer = order[0]
    for layer in order:
        logits = lens.decode(hidden[layer], layer).float()
        rows = logits.shape[0]
        k = min(k, logits.shape[-1])
        is_final = layer == final_layer
        out = _reduce_logits(
            logits,
            k,
            buffers.get("final_prob" if is_final else "exp", rows, logits),
            gold.to(logits.device),
            final_top1=None if is_final else final["top1"],
            final_prob=None if is_final else final["prob"],
            final_entropy=None if is_final else final["entropy"],
        )
        if is_final:
            final = {
                "top1": out["top1"],
                "prob": buffers.final_prob[:rows],
                "entropy": out["entropy"],
            }
        outs[layer] = out
        del logits
    return outs


def _reduce_chunk_fused(
    lens: LogitLens,
    hidden: dict[int, torch.Tensor],
    order: list[int],
    gold: torch.Tensor,
    k: int,
) -> dict[int, dict[str, torch.Tensor]]:
    """All layers of the chunk at once, streamed over vocabulary tiles (:mod:`exitbench.fused`)."""
    streamed = [*order[1:], order[0]]  # the final layer last
    inputs = [fused_lens.head_input(lens, hidden[layer], layer) for layer in streamed]
    compile = fused_lens.COMPILE_ON_CUDA and gold.device.type == "cuda"
    outs = fused_lens.reduce_chunk(lens, inputs, gold, k, compile=compile)
    return dict(zip(streamed, outs, strict=True))


def _vocabulary(lens: LogitLens) -> int:
    """V: the head's output size (the model config's vocab_size where the head has no weight)."""
    weight = getattr(lens.head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    return int(lens.model.config.get_text_config().vocab_size)


def _empty_result(top_k: int) -> dict[str, np.ndarray]:
    result = {name: np.zeros(0, dtype=np.float32) for name in FIELDS}
    for name in ("row", "gold"):
        result[name] = np.zeros(0, dtype=np.int64)
    result["pos"], result["top1"] = np.zeros(0, np.int32), np.zeros(0, np.int32)
    result["layer"] = np.zeros(0, np.int16)
    result["topk_ids"] = np.zeros((0, top_k), np.int32)
    result["topk_logprobs"] = np.zeros((0, top_k), np.float32)
    return result


def reduce_layers(
    lens: LogitLens,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    top_k: int,
    token_chunk: int | None = None,
    fused: bool | None = None,
) -> dict[str, np.ndarray]:
    """One forward pass of a right-padded batch (recording the states ``cos_prev`` reads),
    then :func:`reduce_hidden_states`."""
    with torch.inference_mode():
        with lens.capture_cosine_states() as captured:
            hidden_states = lens.forward_hidden_states(input_ids, attention_mask)
        return reduce_hidden_states(
            lens, hidden_states, input_ids, attention_mask, top_k, token_chunk, fused, captured
        )


def reduce_both_lenses(
    lens: LogitLens,
    tuned: TunedLens,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    top_k: int,
    token_chunk: int | None = None,
    fused: bool | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Logit-lens and tuned-lens statistics of a batch from ONE forward pass.

    The tuned lens is the logit lens on the translated states
    (:meth:`TunedLens.translate_states`), so both go through the same reduction.
    ``cos_prev`` is a property of the hidden states, not of the lens: the tuned
    result carries the logit result's (cosines of the untranslated states, with the
    pre-norm h_L at layer L: :meth:`LogitLens.cosine_states`).
    """
    with torch.inference_mode():
        with lens.capture_cosine_states() as captured:
            hidden_states = lens.forward_hidden_states(input_ids, attention_mask)
        logit = reduce_hidden_states(
            lens, hidden_states, input_ids, attention_mask, top_k, token_chunk, fused, captured
        )
        del captured
        translated = tuned.translate_states(hidden_states)
        del hidden_states
        result = reduce_hidden_states(
            lens, translated, input_ids, attention_mask, top_k, token_chunk, fused
        )
    result["cos_prev"] = logit["cos_prev"]
    return logit, result


def _window_batches(windows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` (int64) for a list of windows."""
    length = max(len(window) for window in windows)
    input_ids = torch.full((len(windows), length), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(windows), length), dtype=torch.long)
    for row, window in enumerate(windows):
        input_ids[row, : len(window)] = torch.from_numpy(window.astype(np.int64))
        attention_mask[row, : len(window)] = 1
    return input_ids, attention_mask


def read_shard_windows(
    tokens_path: str | Path, shard_index: int, shard_sequences: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """seq_ids and token ids of the windows with seq_id in [k*n, (k+1)*n), by seq_id."""
    table = tables.read_table(tokens_path, "tokens", columns=["seq_id", "input_ids"])
    first = shard_index * shard_sequences
    keep = pc.and_(
        pc.greater_equal(table["seq_id"], first),
        pc.less(table["seq_id"], first + shard_sequences),
    )
    table = table.filter(keep).sort_by("seq_id")
    seq_ids = table["seq_id"].to_numpy()
    windows = [np.asarray(ids, dtype=np.int64) for ids in table["input_ids"].to_pylist()]
    return seq_ids, windows


def to_table(result: dict[str, np.ndarray], seq_ids: np.ndarray) -> pa.Table:
    """The ``lens`` table of a :func:`reduce_layers` result; batch rows mapped to ``seq_ids``."""
    top_k = result["topk_ids"].shape[1]
    offsets = pa.array(np.arange(0, len(result["layer"]) * top_k + 1, top_k, dtype=np.int32))
    gold_missing = result["gold"] < 0
    columns = {
        "seq_id": pa.array(np.asarray(seq_ids, dtype=np.int64)[result["row"]]),
        "pos": pa.array(result["pos"], pa.int32()),
        "layer": pa.array(result["layer"], pa.int16()),
        "top1": pa.array(result["top1"], pa.int32()),
        "topk_ids": pa.ListArray.from_arrays(
            offsets, pa.array(result["topk_ids"].reshape(-1), pa.int32())
        ),
        "topk_logprobs": pa.ListArray.from_arrays(
            offsets, pa.array(result["topk_logprobs"].reshape(-1), pa.float32())
        ),
        "gold": pa.array(result["gold"], pa.int32(), mask=gold_missing),
        "logprob_gold": pa.array(result["logprob_gold"], pa.float32(), mask=gold_missing),
        "cos_prev": pa.array(result["cos_prev"], pa.float32(), mask=np.isnan(result["cos_prev"])),
    }
    for name in ("maxprob", "margin", "entropy", "logprob_final_top1", "kl_to_final"):
        columns[name] = pa.array(result[name], pa.float32())
    return pa.table(columns)


def _concat(results: list[dict[str, np.ndarray]], top_k: int) -> dict[str, np.ndarray]:
    if not results:
        return _empty_result(top_k)
    return {name: np.concatenate([result[name] for result in results]) for name in FIELDS}


def extract_shard(
    model_name: str,
    entry: dict[str, Any],
    tokens_path: str | Path,
    out_path: str | Path,
    shard_index: int,
    shard_sequences: int,
    top_k: int,
    batch_size: int,
    token_chunk: int,
    device: str = "auto",
    seed: int = 0,
    threads: int | None = None,
    tuned_out_path: str | Path | None = None,
    translators_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Write the ``lens`` table of shard ``shard_index`` of a tokens table; return run statistics.

    With ``tuned_out_path`` and ``translators_dir`` (a tuned-lens folder) the tuned
    lens's table of the same windows is written there too, from the same forward
    passes (:func:`reduce_both_lenses`).

    The shard holds the windows with seq_id in
    [shard_index * shard_sequences, (shard_index + 1) * shard_sequences); a
    shard without windows is written as an empty table. Batches are
    right-padded; on CUDA out-of-memory the batch size is halved (down to 1).
    Same inputs give a byte-identical file.
    """
    out_path = Path(out_path)
    started = time.perf_counter()
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    seq_ids, windows = read_shard_windows(tokens_path, shard_index, shard_sequences)
    n_tokens = int(sum(len(window) for window in windows))
    if not windows:
        log.info("shard %d of %s has no windows: writing an empty table", shard_index, tokens_path)
        tables.write_table(to_table(_empty_result(top_k), seq_ids), out_path, "lens")
        if tuned_out_path is not None:
            tables.write_table(to_table(_empty_result(top_k), seq_ids), tuned_out_path, "lens")
        return _stats(model_name, shard_index, 0, 0, 0, 0, batch_size, started, None, None)

    model, dtype = models.load_model(model_name, entry, device)
    lens = LogitLens.from_model(model)
    tuned = None
    if tuned_out_path is not None:
        tuned = load_tuned_lens(translators_dir, lens, model_name)
    _check_vocabulary(model_name, model, windows, seq_ids, top_k)
    on_cpu = _model_device(model).type == "cpu"
    deterministic = torch.are_deterministic_algorithms_enabled()
    if on_cpu:
        torch.use_deterministic_algorithms(True, warn_only=True)
    log.info(
        "extract %s shard %d: %d windows, %d tokens, %d layers (%s) -> %s",
        model_name,
        shard_index,
        len(windows),
        n_tokens,
        len(lens.layer_numbers),
        f"{lens.layer_numbers[0]}..{lens.layer_numbers[-1]}",
        out_path,
    )
    results: list[dict[str, np.ndarray]] = []
    tuned_results: list[dict[str, np.ndarray]] = []
    loop_started = time.perf_counter()
    done_tokens = 0
    start = 0
    progress = tqdm(
        total=len(windows), unit="win", desc=f"extract {model_name} shard {shard_index}"
    )
    try:
        while start < len(windows):
            batch = windows[start : start + batch_size]
            input_ids, attention_mask = _window_batches(batch)
            target = _model_device(model)
            out_of_memory = False
            try:
                if tuned is None:
                    result = reduce_layers(
                        lens, input_ids.to(target), attention_mask.to(target), top_k, token_chunk
                    )
                else:
                    result, tuned_result = reduce_both_lenses(
                        lens,
                        tuned,
                        input_ids.to(target),
                        attention_mask.to(target),
                        top_k,
                        token_chunk,
                    )
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                out_of_memory = True
            except NonFiniteLogitsError as err:
                raise NonFiniteLogitsError(
                    err.layer,
                    f"model {model_name!r}: NaN or inf in the lens logits at layer {err.layer} "
                    f"while writing {out_path} (windows seq_id {int(seq_ids[start])}.."
                    f"{int(seq_ids[start + len(batch) - 1])}, dtype "
                    f"{str(dtype).removeprefix('torch.')}); " + _non_finite_hint(model_name, dtype),
                ) from err
            if out_of_memory:  # outside the except block, so the failed batch's tensors are freed
                batch_size //= 2
                log.warning("CUDA out of memory: retrying with batch_size=%d", batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            result["row"] = result["row"] + start
            results.append(result)
            if tuned is not None:
                tuned_result["row"] = tuned_result["row"] + start
                tuned_results.append(tuned_result)
            start += len(batch)
            done_tokens += int(attention_mask.sum())
            progress.update(len(batch))
            elapsed = time.perf_counter() - loop_started
            progress.set_postfix({"tok/s": f"{done_tokens / max(elapsed, 1e-9):.0f}"})
    finally:
        progress.close()
        if on_cpu:
            torch.use_deterministic_algorithms(deterministic)
    tables.write_table(to_table(_concat(results, top_k), seq_ids), out_path, "lens")
    if tuned_out_path is not None:
        tables.write_table(to_table(_concat(tuned_results, top_k), seq_ids), tuned_out_path, "lens")
    return _stats(
        model_name,
        shard_index,
        len(windows),
        n_tokens,
        len(lens.layer_numbers),
        n_tokens * len(lens.layer_numbers),
        batch_size,
        started,
        str(_model_device(model)),
        str(dtype).removeprefix("torch."),
    )


def _non_finite_hint(model_name: str, dtype: torch.dtype) -> str:
    """What to try after NaN/inf logits: float32 unless the model already runs in it."""
    if dtype == torch.float32:
        return (
            "the model already runs in float32, so its weights (or a layer's arithmetic) "
            "produce them: check the checkpoint, e.g. load it and run one forward pass"
        )
    return f"try models.{model_name}.dtype: float32"


def _check_vocabulary(
    model_name: str,
    model: torch.nn.Module,
    windows: list[np.ndarray],
    seq_ids: np.ndarray,
    top_k: int,
) -> None:
    """Token ids must index the embedding (else a bare IndexError deep in the forward pass);
    ``top_k`` above the vocabulary is cut to it, with one warning."""
    vocab = int(model.get_input_embeddings().weight.shape[0])
    for seq_id, window in zip(seq_ids.tolist(), windows, strict=True):
        if window.size and int(window.max()) >= vocab:
            raise TokenizeError(
                f"model {model_name!r}: window seq_id {seq_id} holds token id "
                f"{int(window.max())} but the model's vocabulary has {vocab} ids; the tokens "
                "table was made with another tokenizer: rerun the tokenize rule"
            )
    head = model.get_output_embeddings()
    head_vocab = int(head.weight.shape[0]) if head is not None else vocab
    if top_k > head_vocab:
        log.warning(
            "extract.top_k = %d is larger than model %r's vocabulary of %d: topk_ids and "
            "topk_logprobs hold %d entries per row",
            top_k,
            model_name,
            head_vocab,
            head_vocab,
        )


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _stats(
    model_name: str,
    shard_index: int,
    windows: int,
    tokens: int,
    layers: int,
    rows: int,
    batch_size: int,
    started: float,
    device: str | None,
    dtype: str | None,
) -> dict[str, Any]:
    seconds = time.perf_counter() - started
    stats = {
        "model": model_name,
        "shard": shard_index,
        "windows": windows,
        "tokens": tokens,
        "layers": layers,
        "rows": rows,
        "batch_size": batch_size,
        "device": device,
        "dtype": dtype,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
    }
    log.info("extract done: %s", stats)
    return stats
