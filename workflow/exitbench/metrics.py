"""Early-exit metrics: pure functions over per-token arrays (no I/O).

Notation: token t has one decoded prediction per layer; ``yhat_l`` is the
top-1 token of layer l and ``yhat = yhat_L`` the model's own output. Exit
policies only consider layers 1..L: layer 0 (the embeddings, where a model
has them) is a decode candidate for the per-layer curves, but exiting there
would skip the whole network, so it is never an exit or saturation layer.

Arrays are **layer-major**: ``[L, n]`` holds layers 1..L in rows 0..L-1 and
tokens in columns (contiguous per layer, which keeps the per-layer scans fast).

Documents are the bootstrap unit: per-document sums (numerators and
denominators of token means) are resampled with replacement, and every mean
over tokens is a ratio of summed numerators to summed denominators.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MEASURES",
    "bootstrap_ratio",
    "MEASURE_ALIASES",
    "bootstrap_weights",
    "choose_threshold",
    "consistency_lower_bound",
    "consistency_savings_auc",
    "exit_layer",
    "first_agreement_layer",
    "measure_values",
    "pabee_measure",
    "patience_measure",
    "percentile_ci",
    "saturation_layer",
    "split_documents",
    "SweepSteps",
    "sweep_steps",
    "sweep_thresholds",
    "threshold_rank",
    "threshold_sweep",
]

#: Measures of the exit policies, in tie-break order. ``entropy`` is swept as
#: ``-entropy`` (exit when entropy_nats <= threshold); ``patience_maxprob`` is
#: maxprob >= tau held for ``score.patience`` consecutive checks; ``pabee`` is
#: PABEE's rule (Zhou et al. 2020): the lens top-1 unchanged for p checks, p swept.
MEASURES: tuple[str, ...] = (
    "maxprob",
    "margin",
    "entropy",
    "cos_prev",
    "patience_maxprob",
    "pabee",
)
#: Old measure names, still written to the score JSON as copies of their new names.
MEASURE_ALIASES: dict[str, str] = {"patience": "patience_maxprob"}


# ---------------------------------------------------------------- exit layers


def saturation_layer(agree: np.ndarray) -> np.ndarray:
    """``e_sat = min{l >= 1 : yhat_j = yhat for all j >= l}`` per token: the layer
    from which the prediction has settled for good (Geva et al. 2022's
    saturation event; ``S_settled = 1 - E[e_sat] / L``).

    ``agree`` is ``[L, n]`` booleans ``yhat_l == yhat`` for layers 1..L (the
    last row is all True by definition, so ``e_sat <= L``). Returns layers
    1..L as int64.
    """
    disagree = ~np.asarray(agree, dtype=bool)
    n_layers = disagree.shape[0]
    # rows above the last disagreement: L - (index of last disagreeing row + 1)
    last = n_layers - np.argmax(disagree[::-1], axis=0)
    return np.where(disagree.any(axis=0), last + 1, 1).astype(np.int64)


def first_agreement_layer(agree: np.ndarray) -> np.ndarray:
    """``e_first = min{l >= 1 : yhat_l = yhat}`` per token (``agree`` as in
    :func:`saturation_layer`); layers 1..L as int64. A rule judged by per-token
    consistency ``1[yhat_e = yhat]`` is perfect when it exits at e_first, so
    ``S_first = 1 - E[e_first] / L`` bounds the savings of every such rule at
    consistency 1."""
    agree = np.asarray(agree, dtype=bool)
    first = np.argmax(agree, axis=0) + 1
    return np.where(agree.any(axis=0), first, agree.shape[0]).astype(np.int64)


# ---------------------------------------------------------------- threshold policies


def _no_nan(measure: np.ndarray) -> np.ndarray:
    m = np.asarray(measure)
    if np.issubdtype(m.dtype, np.floating) and np.isnan(m).any():
        m = np.where(np.isnan(m), np.array(-np.inf, dtype=m.dtype), m)
    return m


def exit_layer(measure: np.ndarray, threshold: float) -> np.ndarray:
    """``e(tau) = min{l in 1..L : m_l >= tau}``, else L, per token
    (``measure`` is ``[L, n]``; NaN never exits)."""
    m = np.asarray(measure)
    confident = m >= np.asarray(threshold, dtype=m.dtype)
    confident[-1] = True
    return (np.argmax(confident, axis=0) + 1).astype(np.int64)


def patience_measure(maxprob: np.ndarray, patience: int) -> np.ndarray:
    """``m_l = min_{j = l-p+1..l} maxprob_j`` for ``l >= p``, ``-inf`` before:
    a threshold on it exits after ``p`` consecutive rows (checked layers) with
    maxprob >= tau (the ``patience_maxprob`` rule)."""
    if patience < 1:
        raise ValueError(f"score.patience must be >= 1, got {patience}")
    p = _no_nan(maxprob)
    out = p.copy()
    for shift in range(1, patience):
        np.minimum(out[shift:], p[:-shift], out=out[shift:])
    out[: patience - 1] = -np.inf
    return out


def pabee_measure(top1: np.ndarray) -> np.ndarray:
    """PABEE's patience counter (Zhou et al. 2020): ``m_l`` = the number of
    consecutive rows (checked layers) just before l whose top-1 equals
    ``top1_l`` (0 where it changed). A threshold ``m_l >= p`` exits once the
    top-1 has stayed the same for p checks after it appeared (p + 1 equal
    consecutive predictions; PABEE's patience t = p). float32 ``[rows, n]``."""
    top1 = np.asarray(top1)
    out = np.zeros(top1.shape, dtype=np.float32)
    for row in range(1, top1.shape[0]):
        same = top1[row] == top1[row - 1]
        np.multiply(out[row - 1] + 1, same, out=out[row])
    return out


def measure_values(
    name: str,
    maxprob: np.ndarray,
    margin: np.ndarray,
    entropy_nats: np.ndarray,
    cos_prev: np.ndarray,
    patience: int,
    top1: np.ndarray | None = None,
    schedule: np.ndarray | None = None,
) -> np.ndarray:
    """The ``[L, n]`` array a policy thresholds (higher = more confident):
    maxprob, margin, ``-entropy``, cos_prev, the patience transform of maxprob
    (``patience_maxprob``, old name ``patience``) or PABEE's counter over ``top1``.

    ``schedule`` (``[L]`` booleans, :func:`exitbench.flops.check_schedule`)
    keeps exits to the checked layers: other rows are ``-inf`` (never exit),
    and the patience rules count consecutive *checks*, not layers.
    """
    name = MEASURE_ALIASES.get(name, name)
    sources = {"maxprob": maxprob, "margin": margin, "entropy": entropy_nats}
    sources |= {"cos_prev": cos_prev, "patience_maxprob": maxprob, "pabee": top1}
    if name not in sources:
        raise ValueError(f"unknown measure {name!r}; known: {MEASURES}")
    values = sources[name]
    if values is None:
        raise ValueError(f"measure {name!r} needs the top-1 predictions (top1=...)")
    n_rows = np.asarray(values).shape[0]
    rows = None
    if schedule is not None and not np.asarray(schedule, dtype=bool)[: n_rows - 1].all():
        rows = np.flatnonzero(np.asarray(schedule, dtype=bool)[:n_rows])
        values = np.asarray(values)[rows]
    if name == "entropy":
        values = np.negative(values)
    elif name == "patience_maxprob":
        values = patience_measure(values, patience)
    elif name == "pabee":
        values = pabee_measure(values)
    if rows is None:
        return values
    out = np.full((n_rows,) + values.shape[1:], -np.inf, dtype=np.float32)
    out[rows] = values
    return out


_RANK_BITS = 22  # lookup-table buckets: 2**22, relative width 2**-13 of a float32
_RANK_SHIFT = 32 - _RANK_BITS


def _ordered_key(values: np.ndarray) -> np.ndarray:
    """int32 keys ordered like the float32 ``values`` (-0.0 just below +0.0)."""
    bits = np.array(values, dtype=np.float32).view(np.int32)
    sign = bits >> 31
    sign &= np.int32(0x7FFFFFFF)
    bits ^= sign
    return bits


def sweep_thresholds(values: np.ndarray, n_points: int, max_values: int = 1 << 18) -> np.ndarray:
    """Sorted unique float32 thresholds: the ``k/(n_points-1)`` quantiles
    (k = 0..n_points-1, inverted-CDF, so each is an observed value) of the
    finite ``values``, plus ``+inf`` (never exit early: S = 0, C = 1).

    More than ``max_values`` values are thinned by a deterministic stride
    first, and quantiles closer than ~2**-13 relative to a lower one can be
    merged into it: thresholds are sweep points, not estimates.
    """
    v = np.asarray(values, dtype=np.float32).ravel()
    if v.size > max_values:
        v = v[:: -(-v.size // max_values)]
    v = v[np.isfinite(v)]
    inf = np.array([np.inf], dtype=np.float32)
    if v.size == 0:
        return inf
    # inverted CDF in integer arithmetic: the ceil(k n / (K - 1))-th smallest value
    k = np.arange(n_points, dtype=np.int64)
    order = np.maximum((k * v.size + n_points - 2) // (n_points - 1) - 1, 0)
    quantiles = np.partition(v, order)[order]
    tau = np.unique(np.concatenate([quantiles, inf]))
    # keep one threshold strictly inside each threshold_rank bucket (they are < 2**-13
    # relative apart), so ranking never needs its binary-search fallback
    key = _ordered_key(tau)
    bucket = key >> np.int32(32 - _RANK_BITS)
    inside = (key & np.int32((1 << (32 - _RANK_BITS)) - 1)) != 0
    keep = np.ones(tau.size, dtype=bool)
    keep[1:] = ~(inside[1:] & inside[:-1] & (bucket[1:] == bucket[:-1]))
    return tau[keep]


def threshold_rank(thresholds: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``c = #{k : tau_k <= v}`` per value: exactly
    ``np.searchsorted(thresholds, values, side="right")`` for sorted unique
    float32 thresholds and non-NaN values, several times faster on big arrays.

    Each float32 falls in one of 2**22 buckets of consecutive bit patterns (a
    contiguous interval of floats, relative width 2**-13). A lookup table
    holds, per bucket, the number of thresholds at or below the bucket's
    lowest float and the index of a threshold strictly inside it (if any), so
    ``c = below[b] + (v >= inside[b])``; the comparison is made only for the
    values in such buckets when they are few (under 1/8 of a strided sample),
    else for all. Buckets with several thresholds inside
    (:func:`sweep_thresholds` never makes them) fall back to a binary search.
    A threshold of 0 is stored as -0.0 so that -0.0 and +0.0 values both
    count it. Returns uint16.
    """
    tau = np.asarray(thresholds, dtype=np.float32)
    v = np.ascontiguousarray(values, dtype=np.float32)
    if v.size < (1 << 16) or tau.size > 254:
        return np.searchsorted(tau, v, side="right").astype(np.uint16)
    n_buckets, half = 1 << _RANK_BITS, 1 << (_RANK_BITS - 1)
    key = _ordered_key(np.where(tau == 0, np.float32(-0.0), tau)).astype(np.int64)
    bucket = (key >> _RANK_SHIFT) + half  # in float order
    inside = (key & ((1 << _RANK_SHIFT) - 1)) != 0  # strictly inside its bucket
    # low byte: thresholds at or below the bucket start; high byte: 1 + inside threshold
    table = np.repeat(
        np.arange(tau.size + 1, dtype=np.uint16),
        np.diff(np.concatenate([[0], bucket + inside, [n_buckets]])),
    )
    buckets, first, n_inside = np.unique(bucket[inside], return_index=True, return_counts=True)
    marker = np.where(n_inside > 1, 255, np.flatnonzero(inside)[first] + 1)
    table[buckets] |= (marker << 8).astype(np.uint16)
    # index by bit pattern (bits >> shift) + half: negative floats' buckets run backwards
    table = np.concatenate([table[:half][::-1], table[half:]])
    index = v.view(np.int32) >> _RANK_SHIFT
    index += np.int32(half)
    rank = table[index]
    del index
    # only values in a bucket with a threshold inside (high byte set) need a comparison:
    # compared where they are when they are few, else everywhere
    flat, values = rank.reshape(-1), v.reshape(-1)
    candidates = np.concatenate([[np.nan], tau, np.full(255 - tau.size, np.nan)])  # v >= NaN: False
    candidates = candidates.astype(np.float32)
    sample = flat[:: max(1, flat.size >> 14)]  # the share of such values, estimated
    if np.count_nonzero(sample > np.uint16(0xFF)) > sample.size // 8:
        marker = flat >> np.uint16(8)
        flat &= np.uint16(0xFF)
        flat += values >= candidates[marker]
        several = np.flatnonzero(marker == 255) if (n_inside > 1).any() else None
    else:
        at = np.flatnonzero(flat > np.uint16(0xFF))
        packed = flat[at]
        marker = packed >> np.uint16(8)
        flat[at] = (packed & np.uint16(0xFF)) + (values[at] >= candidates[marker])
        several = at[marker == 255]
    if several is not None and several.size:  # several thresholds in one bucket
        flat[several] = np.searchsorted(tau, values[several], side="right")
    return rank


@dataclass(frozen=True)
class SweepSteps:
    """Quantities prepared for :func:`threshold_sweep` (see :func:`sweep_steps`)."""

    first: dict[str, np.ndarray]  # per-unit sums of q_1
    token_names: tuple[str, ...]  # per-token 0/1 quantities, packed into ``category``
    category: np.ndarray | None  # flat (L-1)*n: sum_i (step_i + 1) * 3**i, uint8
    token_steps: dict[str, np.ndarray]  # flat int8 steps (fallback when bins are many)
    layer_steps: dict[str, np.ndarray]  # [L-1] float64 steps of per-layer constants
    linear: dict[str, float]  # per-layer constants with a constant step: q_e = q_1 + step (e - 1)


def sweep_steps(quantities: Mapping[str, np.ndarray], unit: np.ndarray, n_units: int) -> SweepSteps:
    """Prepare quantities for :func:`threshold_sweep` once for all measures.

    ``quantities`` maps names to ``[L, n]`` per-token 0/1 arrays (e.g.
    agreement) or ``[L]`` per-layer constants (e.g. the FLOP cost of exiting
    at l). Per-token steps ``q_{l+1} - q_l`` lie in {-1, 0, 1}; up to four of
    them are packed into one base-3 category so that a single unweighted
    ``bincount`` over (unit, rank, category) yields all their sums. Per-layer
    constants with equal steps (identical layers) are linear in the exit
    layer and need no ``bincount`` at all; the others share one histogram of
    (unit, rank, layer) cells, however many there are.
    """
    unit = np.asarray(unit, dtype=np.int64)
    first: dict[str, np.ndarray] = {}
    token_steps: dict[str, np.ndarray] = {}
    layer_steps: dict[str, np.ndarray] = {}
    linear: dict[str, float] = {}
    for name, q in quantities.items():
        q = np.asarray(q)
        if q.ndim == 1:
            first[name] = np.bincount(unit, minlength=n_units) * float(q[0])
            step = np.diff(q.astype(np.float64))
            if step.size == 0 or np.ptp(step) <= 1e-12 * np.abs(step).max():
                linear[name] = float(step[0]) if step.size else 0.0
                continue
            layer_steps[name] = step
            continue
        if q.dtype != bool and not np.isin(q, (0, 1)).all():
            raise ValueError(f"per-token sweep quantity {name!r} must be 0/1 (got {q.dtype})")
        first[name] = np.bincount(unit, weights=q[0].astype(np.float64), minlength=n_units)
        token_steps[name] = np.diff(q.astype(np.int8), axis=0).ravel()
    names = tuple(token_steps)
    category = None
    if 0 < len(names) <= 4:
        category = np.zeros(next(iter(token_steps.values())).size, dtype=np.uint8)
        for i, name in enumerate(names):
            category += ((token_steps[name] + 1) * 3**i).astype(np.uint8)
    return SweepSteps(first, names, category, token_steps, layer_steps, linear)


def threshold_sweep(
    measure: np.ndarray,
    thresholds: np.ndarray,
    quantities: Mapping[str, np.ndarray] | SweepSteps,
    unit: np.ndarray,
    n_units: int,
    max_bins: int = 1 << 23,
) -> dict[str, np.ndarray]:
    """Per-unit sums of ``q_{e_k}`` at every threshold ``tau_k``.

    ``e_k`` is the exit layer of the policy ``m_l >= tau_k`` (see
    :func:`exit_layer`; ``measure`` is ``[L, n]``). With
    ``c_l = #{k : tau_k <= max_{j <= l} m_j}``, a token exits at or before
    layer l exactly for ``k < c_l``, so

        q_{e_k} = q_1 + sum_{l=1}^{L-1} 1[c_l <= k] (q_{l+1} - q_l),

    accumulated with ``bincount`` over ``(unit, c_l)``: linear in the number
    of (token, layer) cells and independent of the number of thresholds.
    ``quantities`` as for :func:`sweep_steps` (raw or prepared). Returns
    ``{name: [n_units, K]}`` plus ``"exit_layer"`` (sums of e_k) and
    ``"tokens"`` (``[n_units]`` token counts).
    """
    unit = np.asarray(unit, dtype=np.int64)
    steps = (
        quantities if isinstance(quantities, SweepSteps) else sweep_steps(quantities, unit, n_units)
    )
    tau = np.asarray(thresholds, dtype=np.float32)
    k = tau.size
    width = k + 1
    rank = threshold_rank(tau, _no_nan(np.asarray(measure)[:-1]))
    for row in range(1, rank.shape[0]):  # rank of the prefix max (a row at a time: contiguous,
        np.maximum(rank[row], rank[row - 1], out=rank[row])  # 10x faster than axis-0 accumulate)
    index = (rank + (unit * width)[None, :]).ravel()
    del rank
    size = n_units * width

    def cumulate(hist: np.ndarray) -> np.ndarray:
        return np.cumsum(hist.reshape(n_units, width), axis=1, dtype=np.float64)[:, :k]

    tokens = np.bincount(unit, minlength=n_units).astype(np.float64)
    out = {"tokens": tokens}
    if steps.layer_steps:
        n_steps = next(iter(steps.layer_steps.values())).size
        if size * n_steps <= max_bins:  # one histogram over (layer, unit, rank) for all
            cells = index.reshape(n_steps, -1) + (np.arange(n_steps) * size)[:, None]
            hist = np.bincount(cells.ravel(), minlength=size * n_steps).reshape(n_steps, size)
            del cells
            for name, step in steps.layer_steps.items():
                out[name] = cumulate(step @ hist) + steps.first[name][:, None]
        else:
            for name, step in steps.layer_steps.items():
                weights = np.repeat(step, index.size // n_steps)
                out[name] = cumulate(np.bincount(index, weights=weights, minlength=size))
                out[name] += steps.first[name][:, None]
    n_cat = 3 ** len(steps.token_names)
    if steps.category is not None and size * n_cat <= max_bins:
        index *= n_cat
        index += steps.category
        hist = np.bincount(index, minlength=size * n_cat).reshape(size, n_cat)
        out["exit_layer"] = cumulate(hist.sum(axis=1))
        codes = np.arange(n_cat)
        for i, name in enumerate(steps.token_names):
            coefficient = (codes // 3**i) % 3 - 1.0  # the step of quantity i in each category
            out[name] = cumulate(hist @ coefficient)
    else:
        out["exit_layer"] = cumulate(np.bincount(index, minlength=size))
        for name in steps.token_names:
            weights = steps.token_steps[name]
            out[name] = cumulate(np.bincount(index, weights=weights, minlength=size))
    out["exit_layer"] += tokens[:, None]
    for name in steps.token_names:
        out[name] += steps.first[name][:, None]
    for name, step in steps.linear.items():  # sum q_e = n q_1 + step (sum e - n)
        out[name] = steps.first[name][:, None] + step * (out["exit_layer"] - tokens[:, None])
    return out


def choose_threshold(
    savings: np.ndarray,
    consistency: np.ndarray,
    target: float,
    consistency_bound: np.ndarray | None = None,
) -> int:
    """Index k maximising calibration savings ``S_k`` subject to ``C_k >= target``
    (``calibration: point``), or to ``LB_k >= target`` when the lower confidence
    bounds ``consistency_bound`` are given (``calibration: bound``; ties: higher
    consistency, then the larger threshold). The ``+inf`` threshold (last,
    C = 1) is always feasible."""
    savings = np.asarray(savings, dtype=np.float64)
    consistency = np.asarray(consistency, dtype=np.float64)
    gate = consistency if consistency_bound is None else np.asarray(consistency_bound, np.float64)
    feasible = np.flatnonzero(gate >= target - 1e-12)
    if feasible.size == 0:
        return int(savings.size - 1)
    order = np.lexsort((feasible, consistency[feasible], savings[feasible]))
    return int(feasible[order[-1]])


def consistency_savings_auc(savings: np.ndarray, consistency: np.ndarray) -> np.ndarray:
    """Area under the monotone consistency-vs-savings curve.

    Points ``(S_k, C_k)`` of a sweep (last axis) plus ``(0, 1)``; the curve
    is made monotone as ``C~(s) = max{C_k : S_k >= s}`` (the best consistency
    reachable with at least s savings) and integrated with the trapezoid rule
    over the sorted savings from 0 to ``S_max = max_k S_k``:
    ``AUC = int_0^{S_max} C~(s) ds`` (in units of savings, so at most S_max; a
    rule exiting every token at its first-agreement layer reaches (S_first, 1),
    so a sweep through that point scores at least S_first). Works on
    ``[..., K]`` arrays (bootstrap resamples), returning ``[...]``.
    """
    s = np.asarray(savings, dtype=np.float64)
    c = np.asarray(consistency, dtype=np.float64)
    batch = s.shape[:-1]
    s = np.concatenate([np.zeros(batch + (1,)), np.clip(s, 0.0, None)], axis=-1)
    c = np.concatenate([np.ones(batch + (1,)), c], axis=-1)
    c = np.where(np.isnan(c), 0.0, c)
    order = np.argsort(s, axis=-1, kind="stable")
    s = np.take_along_axis(s, order, axis=-1)
    c = np.take_along_axis(c, order, axis=-1)
    envelope = np.maximum.accumulate(c[..., ::-1], axis=-1)[..., ::-1]
    return np.sum(np.diff(s, axis=-1) * (envelope[..., 1:] + envelope[..., :-1]) / 2, axis=-1)


# ---------------------------------------------------------------- splits and bootstrap


def split_documents(doc_ids: Sequence[str], calibration_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of calibration documents.

    Documents are ranked by ``blake2b(f"{seed}:{doc_id}")`` and the first
    ``round(fraction * n)`` (at least 1, at most n - 1) form the calibration
    split, the rest the held-out split: deterministic, independent of order.
    """
    n = len(doc_ids)
    if not 0 < calibration_fraction < 1:
        raise ValueError(
            f"score.calibration_fraction must be in (0, 1), got {calibration_fraction}"
        )
    keys = [hashlib.blake2b(f"{seed}:{doc}".encode(), digest_size=8).digest() for doc in doc_ids]
    rank = sorted(range(n), key=keys.__getitem__)
    n_cal = min(max(int(round(calibration_fraction * n)), 1), max(n - 1, 1))
    mask = np.zeros(n, dtype=bool)
    mask[rank[:n_cal]] = True
    return mask


def bootstrap_weights(n_units: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``[B, n_units]`` multiplicities of with-replacement resamples of the
    units, drawn as ``rng.integers(0, n_units, (B, n_units))``."""
    if n_resamples == 0 or n_units == 0:
        return np.zeros((n_resamples, n_units))
    draws = rng.integers(0, n_units, size=(n_resamples, n_units))
    flat = (draws + np.arange(n_resamples)[:, None] * n_units).ravel()
    counts = np.bincount(flat, minlength=n_resamples * n_units)
    return counts.reshape(n_resamples, n_units).astype(np.float64)


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap ``samples`` along axis 0 (NaN ignored;
    NaN where there are no samples)."""
    samples = np.asarray(samples, dtype=np.float64)
    alpha = (1.0 - level) / 2 * 100
    if samples.shape[0] == 0:
        nan = np.full(samples.shape[1:], np.nan)
        return nan, nan
    if not np.isnan(samples).any():  # the same numbers, vectorised (nanpercentile loops)
        low, high = np.percentile(samples, [alpha, 100 - alpha], axis=0)
        return low, high
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN
        low, high = np.nanpercentile(samples, [alpha, 100 - alpha], axis=0)
    return low, high


def consistency_lower_bound(
    agree_sums: np.ndarray, n_tokens: np.ndarray, weights: np.ndarray, level: float = 0.95
) -> np.ndarray:
    """One-sided ``level`` lower confidence bound of ``C_k = sum_d a_dk / sum_d n_d``
    at every threshold k: the ``(1 - level)`` percentile of the document
    bootstrap ``(w @ a) / (w @ n)`` (``agree_sums`` ``[docs, K]``, ``n_tokens``
    ``[docs]``, ``weights`` ``[B, docs]``). Documents, not tokens, are
    resampled: tokens of a document are correlated, so a binomial bound over
    tokens would be too narrow. Without resamples it is the point estimate."""
    a = np.asarray(agree_sums, dtype=np.float64)
    n = np.asarray(n_tokens, dtype=np.float64)
    with np.errstate(all="ignore"):
        estimate = a.sum(axis=0) / n.sum()
        if weights.shape[0] == 0 or a.shape[0] == 0:
            return estimate
        resampled = (weights @ a) / (weights @ n)[:, None]
    percentile = np.nanpercentile if np.isnan(resampled).any() else np.percentile
    return percentile(resampled, (1.0 - level) * 100, axis=0)


def bootstrap_ratio(
    numerator: np.ndarray,
    denominator: np.ndarray,
    weights: np.ndarray,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Estimate and percentile CI of ``sum_d num_d / sum_d den_d``.

    ``numerator``/``denominator`` are per-unit sums ``[n_units, ...]`` (a
    ``[n_units]`` denominator is broadcast); ``weights`` is ``[B, n_units]``
    from :func:`bootstrap_weights`. Each resample's ratio is
    ``(w @ num) / (w @ den)``. That ratio is a weighted mean of the per-unit
    ratios, so the interval is clipped to their range: this changes nothing
    mathematically, and where the per-unit ratios agree to 1e-12 (constant
    data) the CI is exactly the estimate despite float rounding. Returns
    (estimate, low, high), NaN where the denominator is 0 (and for the CI when
    there are no resamples).
    """
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    if den.shape != num.shape:
        den = np.broadcast_to(den.reshape(den.shape + (1,) * (num.ndim - den.ndim)), num.shape)
    shape = num.shape[1:]
    num = num.reshape(num.shape[0], -1)
    den = den.reshape(den.shape[0], -1)
    with np.errstate(all="ignore"):
        estimate = num.sum(axis=0) / den.sum(axis=0)
        resampled = (weights @ num) / (weights @ den)
        unit_ratio = np.where(den > 0, num / den, np.nan)
    low, high = percentile_ci(resampled, level)
    if weights.shape[0] and num.shape[0]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            floor, ceiling = np.nanmin(unit_ratio, axis=0), np.nanmax(unit_ratio, axis=0)
        low, high = np.clip(low, floor, ceiling), np.clip(high, floor, ceiling)
        constant = (ceiling - floor) <= 1e-12 * np.maximum(1.0, np.abs(ceiling))
        low, high = np.where(constant, estimate, low), np.where(constant, estimate, high)
    return estimate.reshape(shape), np.reshape(low, shape), np.reshape(high, shape)
