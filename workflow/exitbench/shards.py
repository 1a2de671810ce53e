"""Lens shards of one (model, workload): read, validate, pivot to dense arrays.

The shards are long format, one row per (seq_id, pos, layer) (schema
``lens``); the tokens table (seq_id -> doc_id, n_tokens) fixes which rows
must exist. :func:`load_lens` pivots them into a dense layer-major
``[layers, tokens]`` :class:`LensArrays`. The token index of a row comes from
the tokens table (windows grouped by document), so no sort is needed: a shard
written in (seq_id, pos, layer) order is copied block-wise, any other order is
scattered, and every missing, duplicate or unexpected row is detected and
blamed on its shard (:class:`ShardError`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from .tables import read_table

__all__ = ["LENS_COLUMNS", "LensArrays", "ShardError", "load_lens"]

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


class ShardError(ValueError):
    """Lens shards and the tokens table disagree (names the shard or file to fix)."""


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
        raise ShardError(f"{tokens_path}: the tokens table has no windows; nothing to score")
    if np.unique(seq_ids).size != seq_ids.size:
        raise ShardError(f"{tokens_path}: seq_id values are not unique; rerun the tokenize rule")
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
    with a :class:`ShardError` naming the shard; an unreadable shard fails with
    :class:`exitbench.tables.TableError` naming it. Shards sorted by
    (seq_id, pos, layer) take a copy-only fast path; other orders are scattered.

    An empty shard (no rows: extract found no windows in its seq_id range, as
    when a workload yields fewer than ``tokenize.max_sequences`` windows) is
    valid; one that should have had rows leaves windows uncovered, which fails
    naming the empty shard(s).
    """
    tokens_path = Path(tokens_path)
    paths = [Path(p) for p in lens_paths]
    if not paths:
        raise ShardError(f"no lens shards given for {tokens_path}; run the extract rule first")
    windows = _windows(tokens_path)
    n_total = int(windows.n_tokens.sum())

    layers = None if layer_numbers is None else np.asarray(sorted(layer_numbers), dtype=np.int64)
    arrays: dict[str, np.ndarray] = {}
    owner = np.empty((0, 0), dtype=np.int32)
    gold = np.full(n_total, -1, dtype=np.int32)
    empty: list[Path] = []
    for shard_index, (path, table) in enumerate(
        tqdm(_prefetched(paths), total=len(paths), desc="lens shards", unit="shard", leave=False)
    ):
        if table.num_rows == 0:
            # a shard past the workload's windows: valid (schema-checked on read); whether
            # it should have had rows is decided below, by the windows left uncovered
            empty.append(path)
            continue
        layer = _column(table, "layer")
        if layers is None:
            start = 0 if layer.size and layer.min() == 0 else 1
            layers = np.arange(start, num_layers + 1)
        if layers[-1] != num_layers:
            raise ShardError(
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

    if not arrays or layers is None:
        raise ShardError(
            f"every lens shard of {tokens_path} is empty ({len(paths)} shards, first {paths[0]}) "
            f"but the tokens table has {windows.seq_ids.size} windows; delete the shards and "
            "rerun extract"
        )
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
            + (f"; empty shard(s): {', '.join(map(str, empty[:3]))}" if empty else "")
            + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
        )
        raise ShardError(
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
        raise ShardError(
            f"{path}: rows duplicate (seq_id, pos, layer) rows of {other}; each window must "
            "be in exactly one lens shard (delete the stale shard)"
        )
    owner[cells] = shard


def _check_layers(path: Path, layer: np.ndarray, layers: np.ndarray) -> None:
    """The shard has exactly the expected layers, each with the same row count."""
    if layer.min() < 0:
        raise ShardError(f"{path}: negative layer numbers; delete the shard and rerun extract")
    counts = np.bincount(layer, minlength=int(layers[-1]) + 1)
    present = np.flatnonzero(counts)
    absent = sorted(set(layers.tolist()) - set(present.tolist()))
    unexpected = sorted(set(present.tolist()) - set(layers.tolist()))
    if absent or unexpected:
        raise ShardError(
            f"{path}: lens shard has layers {present.tolist()}, expected {layers.tolist()} "
            "(layer_numbers of the model description): "
            + (f"missing layer(s) {absent}" if absent else f"unexpected layer(s) {unexpected}")
            + "; delete the shard and rerun extract"
        )
    per_layer = counts[layers]
    if per_layer.min() != per_layer.max():
        short = int(layers[np.argmin(per_layer)])
        raise ShardError(
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
        raise ShardError(
            f"{path}: seq_id {bad} is not in the tokens table; the shard is stale "
            "(delete it and rerun extract)"
        )
    length = windows.n_tokens[window]
    outside = (pos < 0) | (pos >= length)
    if outside.any():
        at = int(np.argmax(outside))
        raise ShardError(
            f"{path}: seq_id {int(seq_id[at])} has pos {int(pos[at])} but the window has "
            f"{int(length[at])} tokens; the shard is stale (delete it and rerun extract)"
        )
    present = np.flatnonzero(np.bincount(window, minlength=windows.seq_ids.size))
    expected_rows = int(windows.n_tokens[present].sum()) * n_layers
    if seq_id.size != expected_rows:
        raise ShardError(
            f"{path}: {seq_id.size} rows, expected {expected_rows} = tokens x {n_layers} layers "
            f"for its {present.size} window(s); the shard has missing or duplicate rows "
            "(delete it and rerun extract)"
        )
    # With the count check, duplicate rows inside the shard leave some cell of its
    # windows empty, which load_lens reports naming this shard.
    return windows.offsets[window] + pos, layer_row[layer]
