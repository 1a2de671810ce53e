"""The lens reduction streamed over vocabulary tiles: no [tokens x V] logits tensor is written.

For one chunk of C tokens and every lens layer at once, the head is applied one
vocabulary tile [a, b) at a time (logits [layers, C, b - a]) and each layer's
statistics are kept as running sums, in the style of fused linear-cross-entropy
kernels (online softmax). With x a layer's logits, m its running maximum and
s = Σ exp(x - m), t = Σ exp(x - m)(x - m), a new tile with maximum m' > m
rescales s' = e^(m - m') s and t' = e^(m - m') (t + (m - m') s) before adding its
own terms. With the final layer's x_L, m_L, s_L the KL needs only
w = Σ exp(x_L - m_L)(x_L - x), rescaled by e^(m_L - m_L'). At the end, with
lse = m + log s: entropy = log s - t / s, maxprob = 1 / s,
KL(p_L || p_l) = w / s_L + lse_l - lse_L, log p(v) = x_v - lse; the top-k is
merged tile by tile and the first index of the maximum is kept (as
``torch.argmax``); x at the gold token and at the final layer's running argmax
are picked up in the tile that holds them.

The same function runs on any device: on CPU the eager path of ``extract`` is
the default (measured faster there); on CUDA ``extract`` uses this one, with
the per-tile update compiled by ``torch.compile`` when :data:`COMPILE_ON_CUDA`
is set. ``tests/test_extract.py`` checks it against
the eager reduction on CPU; ``benchmarks/gpu_check.sh`` on a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from exitbench.lens import LogitLens, apply_post_head

logger = logging.getLogger(__name__)

# Float32 logits per tile ([layers, tokens, tile]) when the tile is sized by memory; an
# eager update holds about six such blocks. Fewer, larger tiles mean fewer kernel launches.
TILE_BYTES = 256 * 2**20
MIN_TILE = 256
# torch.compile of the per-tile update on CUDA: off until benchmarks/gpu_check.sh shows it
# agrees and pays on a GPU (it has not run on one yet); gpu_check measures both ways.
COMPILE_ON_CUDA = False


def supported(lens: LogitLens) -> bool:
    """Whether the lens head is a plain linear layer (weight [V, d], optional bias)."""
    head = lens.head
    weight = getattr(head, "weight", None)
    return (
        isinstance(head, torch.nn.Linear)
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 2
        and weight.device.type != "meta"
    )


def head_input(lens: LogitLens, hidden: torch.Tensor, layer: int) -> torch.Tensor:
    """What ``lens.decode`` feeds its head: norm and pre-head below layer L, head dtype, device."""
    if layer != lens.num_layers:
        if lens.norm is not None:
            hidden = lens.norm(hidden.to(lens._norm_device or hidden.device))
        if lens.pre_head is not None:
            hidden = lens.pre_head(hidden.to(lens._pre_head_device or hidden.device))
    if lens._head_dtype is not None:
        hidden = hidden.to(lens._head_dtype)
    return hidden.to(lens.head.weight.device)


def tile_size(vocab: int, layers: int, tokens: int, budget_bytes: int | None = None) -> int:
    """Vocabulary entries per tile: one float32 [layers, tokens, tile] block fills the budget
    (default :data:`TILE_BYTES`), at least :data:`MIN_TILE`."""
    tile = (budget_bytes or TILE_BYTES) // max(1, 4 * layers * tokens)
    return int(min(vocab, max(MIN_TILE, tile)))


def _post(lens: LogitLens) -> Callable[[torch.Tensor], torch.Tensor]:
    if lens.spec.post_head is not None and lens.post_value is not None:
        post_head, value = lens.spec.post_head, lens.post_value
        return lambda logits: apply_post_head(post_head, logits, value)
    return lambda logits: logits


def reduce_chunk(
    lens: LogitLens,
    inputs: Sequence[torch.Tensor],
    gold: torch.Tensor,
    k: int,
    tile: int | None = None,
    compile: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Lens statistics of one chunk for every layer, streamed over vocabulary tiles.

    ``inputs`` are the head inputs [C, d] (see :func:`head_input`), the final
    layer's LAST; ``gold`` [C] holds the next token id or -1. Returns, per
    input, the dict of ``extract._reduce_logits`` (same names and meanings).
    With ``compile`` the per-tile update runs through ``torch.compile`` (falling
    back to eager, with one warning, if compiling fails).
    """
    weight, bias = lens.head.weight, lens.head.bias
    vocab = int(weight.shape[0])
    stacked = torch.stack(list(inputs))  # [Lc, C, d]
    n_layers, rows = int(stacked.shape[0]), int(stacked.shape[1])
    tile = tile or tile_size(vocab, n_layers, rows)
    k = min(k, vocab)
    post = _post(lens)
    device = stacked.device
    gold = gold.to(device)
    state = _State(n_layers, rows, k, device)
    update = (compiled_update() if compile else None) or _State.update
    for start in range(0, vocab, tile):
        stop = min(start + tile, vocab)
        logits = torch.matmul(stacked, weight[start:stop].T)
        if bias is not None:
            logits = logits + bias[start:stop]
        logits = post(logits).float()
        if update is _State.update:
            update(state, logits, start, gold)
            continue
        try:
            update(state, logits, start, gold)
        except Exception as err:  # noqa: BLE001 - a compiler failure falls back to eager
            logger.warning("compiled fused lens update failed (%s): eager tiles from now on", err)
            _compiled["update"] = None
            update = _State.update
            update(state, logits, start, gold)
    return state.finish(gold)


class _State:
    """Running sums of the online softmax for [layers, tokens]; the final layer is the last."""

    def __init__(self, n_layers: int, rows: int, k: int, device: torch.device) -> None:
        shape = (n_layers, rows)
        self.k = k
        self.max = torch.full(shape, -torch.inf, device=device)
        self.sum_exp = torch.zeros(shape, device=device)
        self.sum_exp_z = torch.zeros(shape, device=device)
        self.kl_sum = torch.zeros(shape, device=device)  # w = Σ exp(x_L - m_L)(x_L - x)
        self.best = torch.full(shape, -torch.inf, device=device)  # argmax (first index) value
        self.best_id = torch.zeros(shape, dtype=torch.long, device=device)
        self.top_values = torch.empty((n_layers, rows, 0), device=device)
        self.top_ids = torch.empty((n_layers, rows, 0), dtype=torch.long, device=device)
        self.at_gold = torch.full(shape, torch.nan, device=device)
        self.at_final_top1 = torch.full(shape, torch.nan, device=device)
        self.first = True

    def update(self, logits: torch.Tensor, start: int, gold: torch.Tensor) -> None:
        """Fold one tile of float32 logits [Lc, C, T] (vocabulary ids start..start+T) in."""
        width = logits.shape[-1]
        tile_max, tile_arg = logits.max(-1)  # first index of the maximum, as argmax
        new_max = torch.maximum(self.max, tile_max)
        z = logits - new_max[..., None]
        exp = torch.exp(z)
        kl_terms = (exp[-1] * (logits[-1] - logits)).sum(-1)
        if self.first:
            self.sum_exp = exp.sum(-1)
            self.sum_exp_z = (exp * z).sum(-1)
            self.kl_sum = kl_terms
            self.first = False
        else:
            shift = self.max - new_max  # <= 0
            scale = torch.exp(shift)
            self.sum_exp_z = scale * (self.sum_exp_z + shift * self.sum_exp) + (exp * z).sum(-1)
            self.sum_exp = scale * self.sum_exp + exp.sum(-1)
            self.kl_sum = scale[-1] * self.kl_sum + kl_terms
        self.max = new_max
        # first index of the maximum: a later tile wins only with a strictly larger value
        better = tile_max > self.best
        self.best = torch.where(better, tile_max, self.best)
        self.best_id = torch.where(better, tile_arg + start, self.best_id)
        # x of every layer at the final layer's argmax, when that argmax moves into this tile
        final_better = better[-1]
        picked = logits.gather(-1, tile_arg[-1][None, :, None].expand(len(logits), -1, 1))
        self.at_final_top1 = torch.where(final_better, picked[..., 0], self.at_final_top1)
        in_tile = (gold >= start) & (gold < start + width)
        index = (gold - start).clamp(0, width - 1)
        at_gold = logits.gather(-1, index[None, :, None].expand(len(logits), -1, 1))[..., 0]
        self.at_gold = torch.where(in_tile, at_gold, self.at_gold)
        # running top-k: the k best of the kept ones and this tile's
        values, ids = torch.topk(logits, min(self.k, width), dim=-1)
        values = torch.cat([self.top_values, values], -1)
        ids = torch.cat([self.top_ids, ids + start], -1)
        keep = min(self.k, values.shape[-1])
        self.top_values, order = torch.topk(values, keep, dim=-1)
        self.top_ids = ids.gather(-1, order)

    def finish(self, gold: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        log_total = torch.log(self.sum_exp)  # log s
        lse = self.max + log_total
        entropy = (log_total - self.sum_exp_z / self.sum_exp).clamp_min(0.0)
        kl = (self.kl_sum / self.sum_exp[-1] + lse - lse[-1]).clamp_min(0.0)
        kl[-1] = 0.0
        topk_logprobs = self.top_values - lse[..., None]
        maxprob = torch.exp(-log_total)
        ids = torch.where(
            self.top_ids == self.best_id[..., None], self.top_ids[..., :1], self.top_ids
        )
        ids[..., 0] = self.best_id
        logprob_gold = torch.where(gold >= 0, self.at_gold - lse, torch.nan)
        out = []
        for index in range(len(self.max)):
            out.append(
                {
                    "top1": self.best_id[index],
                    "topk_ids": ids[index],
                    "topk_logprobs": topk_logprobs[index],
                    "maxprob": maxprob[index],
                    "margin": maxprob[index] - torch.exp(topk_logprobs[index, :, 1]),
                    "entropy": entropy[index],
                    "logprob_final_top1": self.at_final_top1[index] - lse[index],
                    "logprob_gold": logprob_gold[index],
                    "kl_to_final": kl[index],
                }
            )
        return out


_compiled: dict[str, Callable | None] = {}


def compiled_update() -> Callable | None:
    """``_State.update`` compiled by ``torch.compile`` (CUDA), or None where compiling fails."""
    if "update" not in _compiled:
        try:
            _compiled["update"] = torch.compile(_State.update, dynamic=True)
        except Exception as err:  # noqa: BLE001 - any failure falls back to eager
            logger.warning("torch.compile of the fused lens update failed (%s): eager tiles", err)
            _compiled["update"] = None
    return _compiled["update"]
