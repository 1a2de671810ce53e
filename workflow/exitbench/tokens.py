"""Token windows: a workload cut into fixed-length windows of one model's token ids.

Writes table ``tokens`` (``results/tokens/{model}/{workload}.parquet``): one row
per window with ``seq_id``, ``doc_id``, ``input_ids`` (at most ``seq_len``
ids, never padded) and ``n_tokens``.

Rules (see :func:`tokenize_documents`):

- each document's token ids are ``encode(prompt + sep + text)`` (sep: a newline
  unless the prompt ends in whitespace) without special
  tokens; a null prompt counts as ``""``;
- BOS (policy ``add_bos``): ``auto`` prepends ``bos_token_id`` iff the
  tokenizer adds it by itself (``tokenizer("a")["input_ids"][0] ==
  bos_token_id``: Llama, Gemma yes, GPT-2 no); ``always`` prepends it (error
  without one); ``never`` does not. When used, **every** window starts with
  BOS, so every window is a valid context on its own;
- ``document`` mode: each document is cut into windows of ``seq_len - b``
  content tokens (b = 1 with BOS, else 0); a document's last window may be
  shorter and is kept iff it has at least 2 ids (BOS included);
- ``packed`` mode: documents are joined into one stream, ``EOS`` between
  consecutive documents, cut into full windows of ``seq_len - b`` stream
  tokens (the incomplete tail is dropped); a window's doc_id is the document
  of its first stream token, where the EOS before a document belongs to it
  (it opens that document's context);
- selection: windows are grouped by doc_id in document order and taken
  round-robin, i.e. sorted by (window index within its document, document
  index), and the first ``max_sequences`` are kept, numbered seq_id
  0..n-1 in that order. So with D documents, the first min(D, max_sequences)
  windows are the first windows of the first documents, and many documents
  (the bootstrap unit) are covered.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from exitbench import tables

log = logging.getLogger(__name__)

MODES = ("document", "packed")
BOS_POLICIES = ("auto", "always", "never")
ENCODE_BATCH = 64  # documents encoded per tokenizer call


class TokenizeError(ValueError):
    """Tokenization settings do not fit the model or the workload; names the config key."""


def hide_torch() -> bool:
    """Make ``torch`` unimportable in this process, before transformers is imported.

    transformers then runs as installed without PyTorch: "only tokenizers,
    configuration and file/data utilities", which is all a tokenize job uses, and the
    tokens are the same. With torch importable, loading a tokenizer imports torch
    (and, for a Llama-family config, ``torch.distributed``): 2.5 of the job's 4 CPU
    seconds. Returns False, changing nothing, where torch or transformers is imported
    already (as in a test process).
    """
    if "torch" in sys.modules or "transformers" in sys.modules:
        return False
    sys.modules["torch"] = None  # an import of torch now raises ImportError
    quiet = "TRANSFORMERS_NO_ADVISORY_WARNINGS"
    before = os.environ.get(quiet)
    os.environ[quiet] = "1"  # its import-time advice "PyTorch was not found" is expected here
    try:
        import transformers  # noqa: F401
    finally:
        if before is None:
            del os.environ[quiet]
        else:
            os.environ[quiet] = before
    return True


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer("a")`` starts with the tokenizer's own ``bos_token_id``."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def bos_to_prepend(tokenizer: Any, add_bos: str) -> int | None:
    """The id to start every window with under policy ``add_bos``, or None for no BOS."""
    if add_bos not in BOS_POLICIES:
        raise TokenizeError(
            f"config key 'tokenize.add_bos': expected one of {', '.join(BOS_POLICIES)}, "
            f"got {add_bos!r}"
        )
    if add_bos == "never":
        return None
    if add_bos == "always":
        if tokenizer.bos_token_id is None:
            raise TokenizeError(
                "config key 'tokenize.add_bos': 'always' needs a BOS token, but the tokenizer "
                f"{getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__!r} has no "
                "bos_token; use 'auto' or 'never'"
            )
        return int(tokenizer.bos_token_id)
    return int(tokenizer.bos_token_id) if tokenizer_adds_bos(tokenizer) else None


def _document_texts(docs: pd.DataFrame) -> list[str]:
    """``prompt + sep + text`` per row; sep is a newline unless the prompt already ends in
    whitespace (so a question never runs into its answer); a null prompt counts as absent."""
    texts = [str(text) for text in docs["text"]]
    if "prompt" not in docs:
        return texts
    return [
        text
        if prompt is None or (not isinstance(prompt, str) and pd.isna(prompt))
        else str(prompt) + ("" if str(prompt)[-1:].isspace() else "\n") + text
        for prompt, text in zip(docs["prompt"], texts, strict=True)
    ]


def _encoded(tokenizer: Any, texts: list[str]) -> Iterator[list[int]]:
    """Token ids of each text, without special tokens, encoded in batches."""
    for start in tqdm(
        range(0, len(texts), ENCODE_BATCH),
        desc="tokenize",
        unit="batch",
        leave=False,
        disable=len(texts) <= ENCODE_BATCH,
    ):
        batch = texts[start : start + ENCODE_BATCH]
        yield from tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]


def _document_windows(ids: list[int], seq_len: int, bos: int | None) -> list[list[int]]:
    """Windows of one document in document mode (see module docstring)."""
    prefix = [] if bos is None else [bos]
    step = seq_len - len(prefix)
    windows = [prefix + ids[start : start + step] for start in range(0, len(ids), step)]
    return [window for window in windows if len(window) >= 2]


def _windows(
    doc_ids: list[str],
    encoded: Iterator[list[int]],
    seq_len: int,
    max_sequences: int,
    mode: str,
    bos: int | None,
    eos: int | None,
) -> tuple[list[list[tuple[str, list[int]]]], int]:
    """Windows grouped per document (document order), and the number of documents encoded.

    Stops encoding once ``max_sequences`` documents have a window: round-robin
    selection then only takes first windows of those documents.
    """
    groups: dict[str, list[list[int]]] = {}
    n_encoded = 0
    prefix = [] if bos is None else [bos]
    step = seq_len - len(prefix)
    stream: list[int] = []  # packed mode: stream tokens not yet in a window
    stream_owner: list[int] = []  # index into doc_ids of each stream token
    for index, ids in enumerate(encoded):
        n_encoded += 1
        if mode == "document":
            windows = _document_windows(ids, seq_len, bos)
            if windows:
                groups[doc_ids[index]] = windows
        else:
            if index > 0:  # the EOS between two documents opens the second one
                stream.append(eos)
                stream_owner.append(index)
            stream.extend(ids)
            stream_owner.extend([index] * len(ids))
            start = 0
            while len(stream) - start >= step:
                owner = doc_ids[stream_owner[start]]
                groups.setdefault(owner, []).append(prefix + stream[start : start + step])
                start += step
            del stream[:start], stream_owner[:start]
        if len(groups) >= max_sequences:
            break
    return [[(doc_id, w) for w in windows] for doc_id, windows in groups.items()], n_encoded


def _check_ids(
    chosen: list[tuple[str, list[int]]],
    tokenizer: Any,
    vocab_size: int | None,
    model: str | None,
    bos: int | None,
    eos: int | None,
) -> None:
    """Every token id indexes the model's embedding (else a bare IndexError at extract)."""
    if vocab_size is None or not chosen:
        return
    top = max(max(window) for _, window in chosen)
    if top >= vocab_size:
        doc_id = next(doc for doc, window in chosen if max(window) == top)
        special = " (its BOS/EOS token)" if top in (bos, eos) else ""
        raise TokenizeError(
            f"model {model or '?'!r}: the tokenizer ({len(tokenizer)} tokens) gives token id "
            f"{top}{special} in document {doc_id!r}, but the model's vocabulary has "
            f"{vocab_size} ids (0..{vocab_size - 1}); the model folder's tokenizer does not "
            "belong to its weights: save the matching tokenizer beside the model"
        )


def _round_robin(groups: list[list[Any]], limit: int) -> list[Any]:
    """Items sorted by (index within group, group index), at most ``limit`` of them."""
    chosen, level = [], 0
    while len(chosen) < limit:
        layer = [group[level] for group in groups if len(group) > level]
        if not layer:
            break
        chosen.extend(layer[: limit - len(chosen)])
        level += 1
    return chosen


def _tokenize(
    docs: pd.DataFrame,
    tokenizer: Any,
    seq_len: int,
    max_sequences: int,
    mode: str = "document",
    add_bos: str = "auto",
    max_positions: int | None = None,
    workload: str | None = None,
    vocab_size: int | None = None,
    model: str | None = None,
) -> tuple[pa.Table, dict]:
    if mode not in MODES:
        raise TokenizeError(
            f"config key 'tokenize.mode': expected one of {', '.join(MODES)}, got {mode!r}"
        )
    if max_positions is not None and seq_len > max_positions:
        raise TokenizeError(
            f"config key 'tokenize.seq_len': {seq_len} is longer than the model's maximum "
            f"of {max_positions} positions; set tokenize.seq_len <= {max_positions}"
        )
    if seq_len < 2:
        raise TokenizeError(f"config key 'tokenize.seq_len': expected at least 2, got {seq_len}")
    if max_sequences < 1:
        raise TokenizeError(
            f"config key 'tokenize.max_sequences': expected at least 1, got {max_sequences}"
        )
    bos = bos_to_prepend(tokenizer, add_bos)
    eos = tokenizer.eos_token_id
    if mode == "packed" and eos is None:
        raise TokenizeError(
            "config key 'tokenize.mode': 'packed' joins documents with EOS, but the tokenizer "
            f"{getattr(tokenizer, 'name_or_path', '')!r} has no eos_token; use 'document'"
        )
    doc_ids = [str(doc_id) for doc_id in docs["doc_id"]]
    groups, n_encoded = _windows(
        doc_ids,
        _encoded(tokenizer, _document_texts(docs)),
        seq_len,
        max_sequences,
        mode,
        bos,
        None if eos is None else int(eos),
    )
    chosen = _round_robin(groups, max_sequences)
    _check_ids(chosen, tokenizer, vocab_size, model, bos, eos)
    if not chosen:
        raise TokenizeError(
            f"workload {workload or '?'!r}: no token windows ({len(doc_ids)} documents, "
            f"tokenize.mode {mode!r}, tokenize.seq_len {seq_len}): every document is shorter "
            "than 2 tokens"
            + (" or the stream than one window" if mode == "packed" else "")
            + "; use more or longer documents, or a smaller tokenize.seq_len"
        )
    table = pa.table(
        {
            "seq_id": pa.array(range(len(chosen)), pa.int64()),
            "doc_id": pa.array([doc_id for doc_id, _ in chosen], pa.string()),
            "input_ids": pa.array([window for _, window in chosen], pa.list_(pa.int32())),
            "n_tokens": pa.array([len(window) for _, window in chosen], pa.int32()),
        }
    )
    stats = {
        "n_docs": len(doc_ids),
        "n_docs_encoded": n_encoded,
        "n_docs_windowed": len(groups),
        "n_docs_kept": len({doc_id for doc_id, _ in chosen}),
        "n_windows": table.num_rows,
        "n_tokens": sum(len(window) for _, window in chosen),
        "seq_len": seq_len,
        "max_sequences": max_sequences,
        "mode": mode,
        "add_bos": add_bos,
        "bos_token_id": bos,
        "eos_token_id": None if eos is None else int(eos),
    }
    return table, stats


def tokenize_documents(
    docs: pd.DataFrame,
    tokenizer: Any,
    seq_len: int,
    max_sequences: int,
    mode: str = "document",
    add_bos: str = "auto",
    max_positions: int | None = None,
    workload: str | None = None,
    vocab_size: int | None = None,
    model: str | None = None,
) -> pa.Table:
    """Cut documents (columns doc_id, text, optional prompt) into the ``tokens`` table.

    Windows hold at most ``seq_len`` ids; see the module docstring for the BOS,
    document/packed and round-robin selection rules. ``max_positions`` is the
    model's longest context (None: unknown, not checked); ``workload`` names
    the workload in errors; ``vocab_size`` the model's vocabulary (None: not
    checked) and ``model`` its name. Raises :class:`TokenizeError` when
    ``seq_len`` > ``max_positions``, no window results, or a token id is
    ``>= vocab_size``.
    """
    table, _ = _tokenize(
        docs,
        tokenizer,
        seq_len,
        max_sequences,
        mode,
        add_bos,
        max_positions,
        workload,
        vocab_size,
        model,
    )
    return table


def tokenize_workload(
    workload_path: str | os.PathLike,
    tokenizer: Any,
    out_path: str | os.PathLike,
    seq_len: int = 256,
    max_sequences: int = 64,
    mode: str = "document",
    add_bos: str = "auto",
    max_positions: int | None = None,
    vocab_size: int | None = None,
    model: str | None = None,
) -> dict:
    """Tokenize the ``workload`` table at ``workload_path`` into ``out_path`` (table ``tokens``).

    Returns stats: n_docs (in the workload), n_docs_encoded, n_docs_windowed
    (encoded documents with a window), n_docs_kept (in the output), n_windows,
    n_tokens, and the settings used (seq_len, max_sequences, mode, add_bos,
    bos_token_id actually prepended or None, eos_token_id). ``vocab_size`` and
    ``model``: see :func:`tokenize_documents`.
    """
    workload = Path(workload_path).stem
    docs = tables.read_table(workload_path, "workload").to_pandas()
    table, stats = _tokenize(
        docs,
        tokenizer,
        seq_len,
        max_sequences,
        mode,
        add_bos,
        max_positions,
        workload,
        vocab_size,
        model,
    )
    tables.write_table(table, out_path, "tokens")
    log.info(
        "workload %s: %d windows, %d tokens from %d of %d documents",
        workload,
        stats["n_windows"],
        stats["n_tokens"],
        stats["n_docs_kept"],
        stats["n_docs"],
    )
    return stats
