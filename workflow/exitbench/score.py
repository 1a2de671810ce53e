"""Score stage: lens shards -> per-layer curves and early-exit headline numbers.

Inputs are the lens shards of one (model, workload) (long format, one row per
(seq_id, pos, layer)), the tokens table (seq_id -> doc_id: documents are the
bootstrap unit) and the model description written by ``models.describe_model``.
Outputs:

* ``results/scores/{model}/{workload}.parquet`` (schema ``scores``): one row
  per layer with agreement, accuracy and confidence means, each with a 95%
  bootstrap CI over documents, and the saturation / first-agreement histograms.
* ``results/scores/{model}/{workload}.json`` (JSON schema
  ``workflow/schemas/score_headline.schema.json``): headline numbers with CIs,
  per-measure threshold policies, held-out sweeps, FLOP model.

Everything is vectorised over a dense layer-major ``[layers, tokens]`` pivot
of the shards. The token index of a row comes from the tokens table (windows
grouped by document), so no sort is needed: a shard written in (seq_id, pos,
layer) order is copied block-wise, any other order is scattered, and every
missing, duplicate or unexpected row is detected and blamed on its shard.
Metric formulas: :mod:`exitbench.metrics` (exit layers, policies, bootstrap)
and :mod:`exitbench.flops` (net FLOP savings); :func:`score_arrays` lists them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from . import metrics
from .flops import FlopModel, FlopModelError, flop_model
from .provenance import clean_json, write_json
from .tables import SCHEMA_DIR, read_table, write_table

log = logging.getLogger(__name__)

__all__ = [
    "HEADLINE_TARGETS",
    "LENS_COLUMNS",
    "LensArrays",
    "SCORE_DEFAULTS",
    "ScoreError",
    "load_lens",
    "score_arrays",
    "score_files",
    "score_lens",
    "validate_headline",
    "write_scores",
]

#: Defaults of the config's ``score:`` section (workflow/schemas/config.schema.yaml).
SCORE_DEFAULTS: dict[str, Any] = {
    "bootstrap": 1000,
    "calibration_fraction": 0.5,
    "consistency_targets": [0.99, 0.95],
    "thresholds": 101,
    "patience": 2,
}
#: Consistency targets always reported (the headline contract); config targets add to them.
HEADLINE_TARGETS: tuple[float, ...] = (0.99, 0.95)
#: Lens columns the score stage reads.
LENS_COLUMNS = [
    "seq_id",
    "pos",
    "layer",
    "top1",
    "maxprob",
    "margin",
    "entropy",
    "gold",
    "kl_to_final",
    "cos_prev",
]
_FLOAT_COLUMNS = ("maxprob", "margin", "entropy", "kl_to_final", "cos_prev")
HEADLINE_SCHEMA = SCHEMA_DIR / "score_headline.schema.json"

#: How each policy's threshold is applied (copied into the JSON).
MEASURE_RULES = {
    "maxprob": "exit at the first layer l >= 1 with maxprob_l >= threshold",
    "margin": "exit at the first layer l >= 1 with margin_l >= threshold",
    "entropy": "exit at the first layer l >= 1 with entropy_nats_l <= threshold",
    "cos_prev": "exit at the first layer l >= 1 with cos_prev_l >= threshold (where defined)",
    "patience": "exit after `patience` consecutive layers (l >= 1) with maxprob >= threshold",
}


class ScoreError(ValueError):
    """Inputs of the score stage are inconsistent (names the file to fix)."""


# ---------------------------------------------------------------- loading


@dataclass
class LensArrays:
    """Dense per-token arrays of one (model, workload).

    Arrays are layer-major ``[NL, T]``: row i is layer ``layers[i]``, tokens
    in columns ordered by (document, seq_id, pos), documents ordered by their
    first seq_id. ``gold`` is -1 where the window has no next token; ``doc``
    indexes ``doc_ids``; ``cos_prev`` is NaN where it is undefined.
    """

    layers: np.ndarray
    top1: np.ndarray
    maxprob: np.ndarray
    margin: np.ndarray
    entropy: np.ndarray
    kl_to_final: np.ndarray
    cos_prev: np.ndarray
    gold: np.ndarray
    doc: np.ndarray
    doc_ids: list[str]

    @property
    def n_tokens(self) -> int:
        return int(self.top1.shape[1])


@dataclass
class _Windows:
    """Tokens-table layout: window order and the first token index of each window."""

    seq_ids: np.ndarray  # window seq_id in layout order
    n_tokens: np.ndarray  # tokens per window
    offsets: np.ndarray  # first token index of each window
    window_doc: np.ndarray  # document index of each window
    doc_ids: list[str]
    lookup: np.ndarray | None  # seq_id -> window index (dense ids), else None

    def window_of(self, seq_id: np.ndarray) -> np.ndarray:
        """Window index of each seq_id, -1 where the tokens table has none."""
        if self.lookup is not None:
            inside = (seq_id >= 0) & (seq_id < self.lookup.size)
            return np.where(inside, self.lookup[np.clip(seq_id, 0, self.lookup.size - 1)], -1)
        order = np.argsort(self.seq_ids, kind="stable")
        sorted_ids = self.seq_ids[order]
        at = np.clip(np.searchsorted(sorted_ids, seq_id), 0, sorted_ids.size - 1)
        return np.where(sorted_ids[at] == seq_id, order[at], -1)


def _windows(tokens_path: Path) -> _Windows:
    """Windows grouped by document (documents in order of their first seq_id)."""
    table = read_table(tokens_path, "tokens", columns=["seq_id", "doc_id", "n_tokens"])
    seq_ids = table.column("seq_id").to_numpy()
    if seq_ids.size == 0:
        raise ScoreError(f"{tokens_path}: the tokens table has no windows; nothing to score")
    if np.unique(seq_ids).size != seq_ids.size:
        raise ScoreError(f"{tokens_path}: seq_id values are not unique; rerun the tokenize rule")
    doc_ids = table.column("doc_id").to_pylist()
    first_seq: dict[str, int] = {}
    for doc, seq in zip(doc_ids, seq_ids.tolist(), strict=True):
        first_seq[doc] = min(seq, first_seq.get(doc, seq))
    docs = sorted(first_seq, key=first_seq.__getitem__)
    doc_index = {doc: i for i, doc in enumerate(docs)}
    window_doc = np.array([doc_index[d] for d in doc_ids], dtype=np.int64)
    order = np.lexsort((seq_ids, window_doc))
    seq_ids, window_doc = seq_ids[order], window_doc[order]
    n_tokens = table.column("n_tokens").to_numpy().astype(np.int64)[order]
    offsets = np.concatenate([[0], np.cumsum(n_tokens)[:-1]]).astype(np.int64)
    lookup = None
    if seq_ids.min() >= 0 and seq_ids.max() < 4 * seq_ids.size + 1024:
        lookup = np.full(int(seq_ids.max()) + 1, -1, dtype=np.int64)
        lookup[seq_ids] = np.arange(seq_ids.size)
    return _Windows(seq_ids, n_tokens, offsets, window_doc, docs, lookup)


def _column(table: pa.Table, name: str, fill: Any = None) -> np.ndarray:
    column = table.column(name)
    if fill is not None and column.null_count:
        column = pc.fill_null(column, fill)
    return column.to_numpy()


def load_lens(
    lens_paths: Sequence[str | Path],
    tokens_path: str | Path,
    num_layers: int,
    layer_numbers: Sequence[int] | None = None,
) -> LensArrays:
    """Read and pivot lens shards into dense layer-major ``[layers, tokens]`` arrays.

    Every window of the tokens table must have exactly one row per (pos, layer)
    for pos in 0..n_tokens-1 and layer in ``layer_numbers`` (default: 0..L if
    the first shard has layer 0, else 1..L), spread over the shards. A shard
    with a missing layer, an unknown seq_id or layer, a position outside its
    window, duplicate rows, or a row count other than tokens x layers fails
    with a :class:`ScoreError` naming the shard; an unreadable shard fails with
    :class:`exitbench.tables.TableError` naming it. Shards sorted by
    (seq_id, pos, layer) take a copy-only fast path; other orders are scattered.
    """
    tokens_path = Path(tokens_path)
    paths = [Path(p) for p in lens_paths]
    if not paths:
        raise ScoreError(f"no lens shards given for {tokens_path}; run the extract rule first")
    windows = _windows(tokens_path)
    n_total = int(windows.n_tokens.sum())

    layers = None if layer_numbers is None else np.asarray(sorted(layer_numbers), dtype=np.int64)
    arrays: dict[str, np.ndarray] = {}
    owner = np.empty((0, 0), dtype=np.int32)
    gold = np.full(n_total, -1, dtype=np.int32)
    for shard_index, (path, table) in enumerate(
        tqdm(_prefetched(paths), total=len(paths), desc="lens shards", unit="shard", leave=False)
    ):
        layer = _column(table, "layer")
        if layers is None:
            start = 0 if layer.size and layer.min() == 0 else 1
            layers = np.arange(start, num_layers + 1)
        if layers[-1] != num_layers:
            raise ScoreError(
                f"layer_numbers {layers.tolist()} of the model description do not end at "
                f"num_layers={num_layers}; rerun the describe_model rule"
            )
        n_layers = layers.size
        if not arrays:
            arrays = {
                "top1": np.empty((n_layers, n_total), dtype=np.int32),
                **{name: np.empty((n_layers, n_total), np.float32) for name in _FLOAT_COLUMNS},
            }
            owner = np.full((n_layers, n_total), -1, dtype=np.int32)
        _check_layers(path, layer, layers)
        seq_id, pos = _column(table, "seq_id"), _column(table, "pos")
        block = _canonical_block(seq_id, pos, layer, windows, layers)
        if block is not None:
            cells = (slice(None), slice(block, block + seq_id.size // n_layers))
            _claim(owner, cells, shard_index, path, paths)
            for name, values in arrays.items():
                fill = np.nan if name == "cos_prev" else None
                _transpose_into(values[cells], _column(table, name, fill).reshape(-1, n_layers))
            gold[cells[1]] = _column(table, "gold", fill=-1)[n_layers - 1 :: n_layers]
        else:
            token, li = _shard_cells(path, seq_id, pos, layer, windows, layers)
            cells = (li, token)
            _claim(owner, cells, shard_index, path, paths)
            for name, values in arrays.items():
                fill = np.nan if name == "cos_prev" else None
                values[cells] = _column(table, name, fill)
            last = li == n_layers - 1
            gold[token[last]] = _column(table, "gold", fill=-1)[last]
        del table

    assert layers is not None
    missing = owner < 0
    if missing.any():
        li, token = (int(x[0]) for x in np.nonzero(missing))
        window = int(np.searchsorted(windows.offsets, token, side="right") - 1)
        seq_id, pos = int(windows.seq_ids[window]), token - int(windows.offsets[window])
        start, stop = windows.offsets[window], windows.offsets[window] + windows.n_tokens[window]
        holders = owner[:, start:stop]
        where = (
            f"shard {paths[int(holders[holders >= 0][0])]} holds other rows of that window"
            if (holders >= 0).any()
            else "no shard has any row of that window"
        )
        raise ScoreError(
            f"lens rows missing: {int(missing.sum())} of the {n_total} tokens x {layers.size} "
            f"layers of {tokens_path} have no row, first seq_id={seq_id} pos={pos} "
            f"layer={int(layers[li])} ({where}); rerun extract for the affected shards"
        )
    return LensArrays(
        layers=layers,
        **arrays,
        gold=gold,
        doc=np.repeat(windows.window_doc, windows.n_tokens),
        doc_ids=windows.doc_ids,
    )


def _prefetched(paths: list[Path]) -> Iterator[tuple[Path, pa.Table]]:
    """``(path, lens table)`` in order, reading the next shard while the caller
    pivots the current one (Parquet decoding releases the GIL)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read_table, paths[0], "lens", LENS_COLUMNS)
        for index, path in enumerate(paths):
            table = pending.result()
            if index + 1 < len(paths):
                pending = pool.submit(read_table, paths[index + 1], "lens", LENS_COLUMNS)
            yield path, table


def _transpose_into(out: np.ndarray, rows: np.ndarray, block: int = 2048) -> None:
    """``out[:] = rows.T`` in cache-sized blocks of tokens (about 2x faster)."""
    for start in range(0, rows.shape[0], block):
        out[:, start : start + block] = rows[start : start + block].T


def _claim(owner: np.ndarray, cells: Any, shard: int, path: Path, paths: list[Path]) -> None:
    """Mark ``cells`` as read from ``shard``; fail if another shard had them."""
    taken = owner[cells]
    if (taken >= 0).any():
        other = paths[int(taken[taken >= 0].flat[0])]
        raise ScoreError(
            f"{path}: rows duplicate (seq_id, pos, layer) rows of {other}; each window must "
            "be in exactly one lens shard (delete the stale shard)"
        )
    owner[cells] = shard


def _check_layers(path: Path, layer: np.ndarray, layers: np.ndarray) -> None:
    """The shard has exactly the expected layers, each with the same row count."""
    if layer.size == 0:
        raise ScoreError(f"{path}: lens shard has no rows; delete it and rerun extract")
    if layer.min() < 0:
        raise ScoreError(f"{path}: negative layer numbers; delete the shard and rerun extract")
    counts = np.bincount(layer, minlength=int(layers[-1]) + 1)
    present = np.flatnonzero(counts)
    absent = sorted(set(layers.tolist()) - set(present.tolist()))
    unexpected = sorted(set(present.tolist()) - set(layers.tolist()))
    if absent or unexpected:
        raise ScoreError(
            f"{path}: lens shard has layers {present.tolist()}, expected {layers.tolist()} "
            "(layer_numbers of the model description): "
            + (f"missing layer(s) {absent}" if absent else f"unexpected layer(s) {unexpected}")
            + "; delete the shard and rerun extract"
        )
    per_layer = counts[layers]
    if per_layer.min() != per_layer.max():
        short = int(layers[np.argmin(per_layer)])
        raise ScoreError(
            f"{path}: layers have different row counts ({per_layer.min()} rows at layer {short}, "
            f"{per_layer.max()} at others): some tokens lack layers; delete the shard and "
            "rerun extract"
        )


def _canonical_block(
    seq_id: np.ndarray, pos: np.ndarray, layer: np.ndarray, windows: _Windows, layers: np.ndarray
) -> int | None:
    """First token index if the shard's rows are whole windows in (seq_id, pos,
    layer) order that are consecutive in the token layout, else None."""
    n_layers = layers.size
    if seq_id.size % n_layers:
        return None
    n = seq_id.size // n_layers
    if not (layer.reshape(n, n_layers) == layers[None, :]).all():
        return None
    seq, position = seq_id[::n_layers], pos[::n_layers].astype(np.int64)
    if not (
        (seq_id.reshape(n, n_layers) == seq[:, None]).all()
        and (pos.reshape(n, n_layers) == pos[::n_layers, None]).all()
    ):
        return None
    window = windows.window_of(seq)
    if (window < 0).any() or (position < 0).any():
        return None
    if (position >= windows.n_tokens[window]).any():
        return None
    token = windows.offsets[window] + position
    first, last = int(token[0]), int(window[-1])
    if not (token == first + np.arange(n)).all():
        return None
    whole = position[0] == 0 and first + n == windows.offsets[last] + windows.n_tokens[last]
    return first if whole else None


def _shard_cells(
    path: Path,
    seq_id: np.ndarray,
    pos: np.ndarray,
    layer: np.ndarray,
    windows: _Windows,
    layers: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Token index and layer row of every row of a shard in any order; validates it."""
    n_layers = layers.size
    pos = pos.astype(np.int64)
    layer_row = np.full(int(layers[-1]) + 1, -1, dtype=np.int64)
    layer_row[layers] = np.arange(n_layers)
    window = windows.window_of(seq_id)
    if (window < 0).any():
        bad = int(seq_id[np.argmax(window < 0)])
        raise ScoreError(
            f"{path}: seq_id {bad} is not in the tokens table; the shard is stale "
            "(delete it and rerun extract)"
        )
    length = windows.n_tokens[window]
    outside = (pos < 0) | (pos >= length)
    if outside.any():
        at = int(np.argmax(outside))
        raise ScoreError(
            f"{path}: seq_id {int(seq_id[at])} has pos {int(pos[at])} but the window has "
            f"{int(length[at])} tokens; the shard is stale (delete it and rerun extract)"
        )
    present = np.flatnonzero(np.bincount(window, minlength=windows.seq_ids.size))
    expected_rows = int(windows.n_tokens[present].sum()) * n_layers
    if seq_id.size != expected_rows:
        raise ScoreError(
            f"{path}: {seq_id.size} rows, expected {expected_rows} = tokens x {n_layers} layers "
            f"for its {present.size} window(s); the shard has missing or duplicate rows "
            "(delete it and rerun extract)"
        )
    # With the count check, duplicate rows inside the shard leave some cell of its
    # windows empty, which load_lens reports naming this shard.
    return windows.offsets[window] + pos, layer_row[layer]


# ---------------------------------------------------------------- scoring


def _score_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = {**SCORE_DEFAULTS, **(dict(params) if params else {})}
    if int(merged["thresholds"]) < 2:
        raise ScoreError(f"score.thresholds must be >= 2, got {merged['thresholds']}")
    if int(merged["bootstrap"]) < 0:
        raise ScoreError(f"score.bootstrap must be >= 0, got {merged['bootstrap']}")
    targets = {float(t) for t in merged["consistency_targets"]} | set(HEADLINE_TARGETS)
    if any(not 0 < t <= 1 for t in targets):
        raise ScoreError(f"score.consistency_targets must lie in (0, 1], got {sorted(targets)}")
    merged["targets"] = sorted(targets, reverse=True)
    return merged


def _target_key(target: float) -> str:
    """``0.99 -> "0.99"`` (keys of policies and best_measure)."""
    return f"{target:g}"


def _target_suffix(target: float) -> str:
    """``0.99 -> "99"``, ``0.999 -> "99.9"`` (headline names savings_at_99, ...)."""
    return f"{round(target * 100, 6):g}"


def _ci(estimate: Any, low: Any, high: Any) -> dict[str, float]:
    return {"estimate": float(estimate), "ci_low": float(low), "ci_high": float(high)}


def score_arrays(
    arrays: LensArrays,
    num_layers: int,
    flops: FlopModel | None,
    params: Mapping[str, Any] | None,
    seed: int,
    model: str = "",
    workload: str = "",
) -> tuple[pa.Table, dict[str, Any]]:
    """Per-layer curves (schema ``scores``) and the headline summary dict.

    Formulas are in :mod:`exitbench.metrics` and :mod:`exitbench.flops`. In
    short, over tokens t (all positions; accuracy over tokens with a gold next
    token) and documents d (the bootstrap unit):

    * curves: ``agreement_l = mean_t 1[yhat_l = yhat]``, ``accuracy_l =
      mean_t 1[yhat_l = gold]``, means of maxprob, margin, entropy (nats),
      KL(p_L || p_l) and cos_prev per layer, with 95% percentile CIs from
      ``bootstrap`` resamples of documents;
    * ``oracle_savings = 1 - E[e_sat] / L``; ``mean_saturation_layer``,
      ``mean_first_agreement_layer``; ``final_accuracy``;
    * threshold policies per measure: thresholds swept over quantiles of the
      calibration documents' values, chosen on calibration as the max-savings
      threshold with consistency >= target, reported on held-out documents
      (CI: held-out documents resampled at that fixed threshold);
      ``savings_at_99/95`` come from the measure with the highest calibration
      savings; ``consistency_savings_auc`` from the measure with the highest
      calibration AUC, evaluated held-out;
    * net FLOP savings ``1 - E[cost(e)] / full`` for the oracle exit and the
      chosen policies.

    The summary is JSON-ready (floats to 10 significant digits, NaN and inf
    as None; :func:`write_scores` checks it against the JSON schema); its
    ``provenance`` is left empty for the caller.
    """
    p = _score_params(params)
    n_boot = int(p["bootstrap"])
    L = int(num_layers)
    layers = np.asarray(arrays.layers)
    first_exit = int(np.searchsorted(layers, 1))
    if layers[first_exit:].tolist() != list(range(1, L + 1)):
        raise ScoreError(f"lens layers {layers.tolist()} do not cover 1..{L} exactly")
    if flops is not None and flops.num_layers != L:
        raise ScoreError(f"FLOP model has {flops.num_layers} layers, the lens {L}")

    # documents: tokens are grouped by document; units are the documents present
    doc = np.asarray(arrays.doc)
    if doc.size == 0:
        raise ScoreError(f"no tokens to score for model {model!r}, workload {workload!r}")
    change = np.diff(doc) != 0
    if np.count_nonzero(np.bincount(doc)) != 1 + change.sum():
        raise ScoreError("tokens must be grouped by document (LensArrays.doc contiguous)")
    starts = np.concatenate([[0], np.flatnonzero(change) + 1])
    unit = np.concatenate([[0], np.cumsum(change)])
    doc_ids = [arrays.doc_ids[int(doc[s])] for s in starts]
    n_docs = len(doc_ids)
    calibration = metrics.split_documents(doc_ids, float(p["calibration_fraction"]), seed)
    heldout = ~calibration
    if not heldout.any():
        log.warning(
            "only %d document(s) in workload %r: calibration and held-out splits are the same "
            "document(s), so held-out numbers are in-sample",
            n_docs,
            workload,
        )
        heldout = calibration.copy()
    rng = np.random.default_rng(seed)
    w_all = metrics.bootstrap_weights(n_docs, n_boot, rng)
    w_held = metrics.bootstrap_weights(int(heldout.sum()), n_boot, rng)

    gold = np.asarray(arrays.gold)
    has_gold = gold >= 0
    agree = arrays.top1 == arrays.top1[-1]
    correct = arrays.top1 == np.where(has_gold, gold, -1)[None, :]
    n_tok = np.bincount(unit, minlength=n_docs).astype(np.float64)
    n_gold = np.bincount(unit, weights=has_gold.astype(np.float64), minlength=n_docs)

    def per_doc(values: np.ndarray) -> np.ndarray:
        """[layers, T] -> [documents, layers] float64 sums."""
        return np.add.reduceat(values, starts, axis=1, dtype=np.float64).T

    # ---- per-layer curves
    curves: dict[str, np.ndarray] = {}

    def curve(name: str, num: np.ndarray, den: np.ndarray) -> None:
        est, low, high = metrics.bootstrap_ratio(num, den, w_all)
        curves[name], curves[f"{name}_ci_low"], curves[f"{name}_ci_high"] = est, low, high

    curve("agreement", per_doc(agree), n_tok)
    curve("accuracy", per_doc(correct), n_gold)
    for column, name in [
        ("maxprob", "maxprob_mean"),
        ("margin", "margin_mean"),
        ("entropy", "entropy_nats_mean"),
        ("kl_to_final", "kl_to_final_mean"),
    ]:
        curve(name, per_doc(getattr(arrays, column)), n_tok)
    cos_valid = ~np.isnan(arrays.cos_prev)
    cos_x = np.where(cos_valid, arrays.cos_prev, np.float32(-np.inf))[first_exit:]
    curve("cos_prev_mean", per_doc(np.where(cos_valid, arrays.cos_prev, 0)), per_doc(cos_valid))

    # ---- exit layers (layers 1..L only)
    agree_x, correct_x = agree[first_exit:], correct[first_exit:]
    saturation = metrics.saturation_layer(agree_x)
    first_agreement = metrics.first_agreement_layer(agree_x)
    saturation_hist = np.bincount(saturation, minlength=L + 1)
    first_hist = np.bincount(first_agreement, minlength=L + 1)

    def doc_sum(values: np.ndarray) -> np.ndarray:
        return np.bincount(unit, weights=values.astype(np.float64), minlength=n_docs)

    def ratio(num: np.ndarray, den: np.ndarray, weights: np.ndarray = w_all) -> dict[str, float]:
        return _ci(*metrics.bootstrap_ratio(num, den, weights))

    nan_ci = _ci(math.nan, math.nan, math.nan)
    sat_sum = doc_sum(saturation)
    headline: dict[str, Any] = {
        "oracle_savings": ratio(n_tok * L - sat_sum, n_tok * L),
        "mean_saturation_layer": ratio(sat_sum, n_tok),
        "mean_first_agreement_layer": ratio(doc_sum(first_agreement), n_tok),
        "final_accuracy": ratio(doc_sum(correct_x[-1]), n_gold),
        "oracle_net_flop_savings": nan_ci,
    }
    costs = None
    if flops is not None:
        costs = flops.costs_by_layer()
        headline["oracle_net_flop_savings"] = ratio(
            n_tok * flops.full - doc_sum(costs[saturation]), n_tok * flops.full
        )

    # ---- threshold policies
    quantities: dict[str, np.ndarray] = {"agree": agree_x, "correct": correct_x}
    if costs is not None:
        quantities["cost"] = costs[1:]
    steps = metrics.sweep_steps(quantities, unit, n_docs)
    del agree, correct
    calibration_tokens = calibration[unit]
    calibration_sample = _strided_subset(calibration_tokens, 1 << 18, L - 1)
    n_held = n_tok[heldout]
    policies: dict[str, Any] = {}
    sweeps: dict[str, Any] = {}
    aucs: dict[str, Any] = {}
    chosen: dict[str, dict[str, tuple[float, float]]] = {}  # target -> measure -> (S, C) cal
    for name in tqdm(metrics.MEASURES, desc="exit policies", unit="measure", leave=False):
        m = metrics.measure_values(
            name,
            arrays.maxprob[first_exit:],
            arrays.margin[first_exit:],
            arrays.entropy[first_exit:],
            cos_x,
            int(p["patience"]),
        )
        thresholds = metrics.sweep_thresholds(m[:-1, calibration_sample], int(p["thresholds"]))
        sums = metrics.threshold_sweep(m, thresholds, steps, unit, n_docs)
        del m
        cal, held = (
            _rates(sums, calibration, n_tok, n_gold, L, flops),
            _rates(sums, heldout, n_tok, n_gold, L, flops),
        )
        shown = -thresholds if name == "entropy" else thresholds  # entropy: exit if <= threshold
        sweeps[name] = [
            {"threshold": float(shown[k]), **{key: float(v[k]) for key, v in held.items()}}
            for k in range(thresholds.size)
        ]
        # AUC, bootstrapped over held-out documents at the fixed sweep thresholds
        auc_low = auc_high = math.nan
        if n_boot:
            with np.errstate(all="ignore"):
                boot_n = (w_held @ n_held)[:, None]
                boot_s = 1 - (w_held @ sums["exit_layer"][heldout]) / (boot_n * L)
                boot_c = (w_held @ sums["agree"][heldout]) / boot_n
            auc_low, auc_high = metrics.percentile_ci(
                metrics.consistency_savings_auc(boot_s, boot_c)
            )
        aucs[name] = {
            "heldout": _ci(
                metrics.consistency_savings_auc(held["savings"], held["consistency"]),
                auc_low,
                auc_high,
            ),
            "calibration": float(
                metrics.consistency_savings_auc(cal["savings"], cal["consistency"])
            ),
        }
        policies[name] = {}
        for target in p["targets"]:
            k = metrics.choose_threshold(cal["savings"], cal["consistency"], target)
            key = _target_key(target)
            chosen.setdefault(key, {})[name] = (
                float(cal["savings"][k]),
                float(cal["consistency"][k]),
            )
            col = {q: v[heldout, k] for q, v in sums.items() if q != "tokens"}
            policies[name][key] = {
                "threshold": float(shown[k]),
                "calibration": {q: float(v[k]) for q, v in cal.items()},
                "savings": ratio(n_held * L - col["exit_layer"], n_held * L, w_held),
                "consistency": ratio(col["agree"], n_held, w_held),
                "accuracy": ratio(col["correct"], n_gold[heldout], w_held),
                "net_flop_savings": (
                    ratio(n_held * flops.full - col["cost"], n_held * flops.full, w_held)
                    if flops is not None
                    else nan_ci
                ),
            }

    def order(name: str) -> int:
        return -metrics.MEASURES.index(name)  # ties go to the earlier measure

    best_measure: dict[str, str] = {}
    for target in p["targets"]:
        key, suffix = _target_key(target), _target_suffix(target)
        best = max(metrics.MEASURES, key=lambda n: (*chosen[key][n], order(n)))
        best_measure[key] = best
        headline[f"savings_at_{suffix}"] = policies[best][key]["savings"]
        headline[f"net_flop_savings_at_{suffix}"] = policies[best][key]["net_flop_savings"]
    best_auc = max(metrics.MEASURES, key=lambda n: (aucs[n]["calibration"], order(n)))
    best_measure["auc"] = best_auc
    headline["consistency_savings_auc"] = aucs[best_auc]["heldout"]

    # ---- outputs
    n_layers = layers.size
    counts = {"saturation_count": saturation_hist, "first_agreement_count": first_hist}
    table = pa.table(
        {
            "model": pa.array([model] * n_layers, pa.string()),
            "workload": pa.array([workload] * n_layers, pa.string()),
            "layer": pa.array(layers, pa.int16()),
            "layer_fraction": pa.array(layers / L, pa.float64()),
            "n_tokens": pa.array(np.full(n_layers, arrays.n_tokens), pa.int64()),
            "n_gold_tokens": pa.array(np.full(n_layers, int(has_gold.sum())), pa.int64()),
            **{
                name: pa.array(values, pa.float64(), from_pandas=True)
                for name, values in curves.items()
            },
            **{
                name: pa.array(np.concatenate([np.zeros(first_exit, np.int64), hist[1:]]))
                for name, hist in counts.items()
            },
        }
    )
    summary = {
        "model": model,
        "workload": workload,
        "num_layers": L,
        "layers": layers.tolist(),
        "n_tokens": arrays.n_tokens,
        "n_gold_tokens": int(has_gold.sum()),
        "n_documents": n_docs,
        "n_calibration_documents": int(calibration.sum()),
        "n_heldout_documents": int(heldout.sum()),
        "headline": headline,
        "best_measure": best_measure,
        "policies": policies,
        "auc": aucs,
        "sweeps": sweeps,
        "measures": {name: MEASURE_RULES[name] for name in metrics.MEASURES},
        "distributions": {
            "layers": list(range(1, L + 1)),
            **{name: hist[1:].tolist() for name, hist in counts.items()},
        },
        "flops": None if flops is None else flops.to_dict(),
        "params": {
            "bootstrap": n_boot,
            "calibration_fraction": float(p["calibration_fraction"]),
            "consistency_targets": [float(t) for t in p["targets"]],
            "thresholds": int(p["thresholds"]),
            "patience": int(p["patience"]),
            "seed": int(seed),
            "seq_len": None if p.get("seq_len") is None else int(p["seq_len"]),
        },
        "provenance": {},
    }
    return table, clean_json(summary, 10)


def _strided_subset(mask: np.ndarray, max_count: int, n_rows: int) -> np.ndarray:
    """Indices of ``mask``'s True entries, thinned by a stride so that
    ``n_rows`` rows of them hold at most about ``max_count`` values."""
    index = np.flatnonzero(mask)
    stride = max(1, -(-index.size * max(n_rows, 1) // max_count))
    return index[::stride]


def _rates(
    sums: Mapping[str, np.ndarray],
    mask: np.ndarray,
    n_tok: np.ndarray,
    n_gold: np.ndarray,
    num_layers: int,
    flops: FlopModel | None,
) -> dict[str, np.ndarray]:
    """Savings, consistency, accuracy (and net FLOP savings) of a sweep over the
    documents in ``mask``: ``S = 1 - sum e / (n L)``, ``C = sum 1[yhat_e = yhat] / n``,
    ``A = sum 1[yhat_e = gold] / n_gold``, ``N = 1 - sum cost(e) / (n full)``."""
    n = n_tok[mask].sum()
    with np.errstate(all="ignore"):
        out = {
            "savings": 1 - sums["exit_layer"][mask].sum(0) / (n * num_layers),
            "consistency": sums["agree"][mask].sum(0) / n,
            "accuracy": sums["correct"][mask].sum(0) / n_gold[mask].sum(),
        }
        out["net_flop_savings"] = (
            1 - sums["cost"][mask].sum(0) / (n * flops.full)
            if flops is not None
            else np.full(out["savings"].shape, np.nan)
        )
    return out


def score_lens(
    lens_paths: Sequence[str | Path],
    tokens_path: str | Path,
    model_info: Mapping[str, Any],
    params: Mapping[str, Any] | None,
    seed: int,
    workload: str | None = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """Score one (model, workload): returns the ``scores`` table and the summary.

    ``model_info`` is ``results/models/{model}.json`` (name, num_layers,
    layer_numbers, config); ``params`` the config's ``score:`` section plus an
    optional ``seq_len`` (``tokenize.seq_len``, for attention FLOPs; default:
    the longest window); ``workload`` defaults to the tokens file's stem.
    """
    tokens_path = Path(tokens_path)
    num_layers = int(model_info["num_layers"])
    arrays = load_lens(lens_paths, tokens_path, num_layers, model_info.get("layer_numbers"))
    params = dict(params or {})
    if params.get("seq_len") is None:
        lengths = read_table(tokens_path, "tokens", columns=["n_tokens"]).column("n_tokens")
        params["seq_len"] = int(pc.max(lengths).as_py())
    flops = None
    config = model_info.get("config")
    try:
        if not isinstance(config, Mapping):
            raise FlopModelError("the model description has no `config` dict")
        flops = flop_model(config, int(params["seq_len"]))
        if flops.num_layers != num_layers:
            raise FlopModelError(
                f"config gives {flops.num_layers} layers, the model description {num_layers}"
            )
    except (FlopModelError, TypeError, ValueError, KeyError) as err:  # odd configs: still score
        name = model_info.get("name")
        log.warning("no FLOP model for %s (%s): net FLOP savings are null", name, err)
        flops = None
    return score_arrays(
        arrays,
        num_layers,
        flops,
        params,
        seed,
        model=str(model_info.get("name", "")),
        workload=workload if workload is not None else tokens_path.stem,
    )


# ---------------------------------------------------------------- writing


@cache
def _headline_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(HEADLINE_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate_headline(summary: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready copy of ``summary`` (floats to 10 significant digits, NaN to
    null), checked against ``score_headline.schema.json``."""
    clean = clean_json(dict(summary), 10)
    errors = sorted(_headline_validator().iter_errors(clean), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(x) for x in first.path) or "(root)"
        raise ScoreError(
            f"score summary does not match {HEADLINE_SCHEMA.name} at {where}: {first.message}"
        )
    return clean


def write_scores(
    table: pa.Table,
    summary: Mapping[str, Any],
    parquet_path: str | Path,
    json_path: str | Path,
    provenance: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write the curves (schema ``scores``) and the headline JSON (validated,
    sorted keys, rounded floats: byte-identical across reruns). ``provenance``
    is merged into the summary's ``provenance`` key."""
    summary = dict(summary)
    summary["provenance"] = {**summary.get("provenance", {}), **dict(provenance or {})}
    clean = validate_headline(summary)
    parquet = write_table(table, parquet_path, "scores")
    return parquet, write_json(clean, json_path)


def score_files(
    lens_paths: Sequence[str | Path],
    tokens_path: str | Path,
    model_info_path: str | Path,
    parquet_path: str | Path,
    json_path: str | Path,
    params: Mapping[str, Any] | None,
    seed: int,
    provenance: Mapping[str, Any] | None = None,
    workload: str | None = None,
) -> dict[str, Any]:
    """File-to-file entry point for the score rule; returns the summary."""
    model_info = json.loads(Path(model_info_path).read_text())
    table, summary = score_lens(lens_paths, tokens_path, model_info, params, seed, workload)
    write_scores(table, summary, parquet_path, json_path, provenance)
    log.info(
        "%s / %s: oracle savings %.3f, savings@99 %.3f, @95 %.3f over %d tokens, %d documents",
        summary["model"],
        summary["workload"],
        summary["headline"]["oracle_savings"]["estimate"],
        summary["headline"]["savings_at_99"]["estimate"],
        summary["headline"]["savings_at_95"]["estimate"],
        summary["n_tokens"],
        summary["n_documents"],
    )
    return summary
