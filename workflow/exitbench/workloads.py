"""Workloads: the documents a study measures (``results/workloads/{workload}.parquet``).

A workload comes from one of three sources (config ``workloads.<name>.source``):

- ``embedded``: a corpus every Python install carries, so the default study runs
  offline. ``python-docs`` is every topic of ``pydoc_data.topics.topics``
  (doc_id = topic key). ``python-code`` is the standard library's own ``.py``
  files (doc_id = path relative to the stdlib folder), without tests
  (``test/``, ``tests/``, ``idle_test/`` folders and ``test_*.py`` files),
  ``site-packages``, build-specific files (``config-*/``,
  ``_sysconfigdata_*.py``), ``pydoc_data/topics.py`` (it is the python-docs
  corpus itself, so held-out docs would leak into code training) and files
  that are not UTF-8.
- ``file``: a local ``.txt``, ``.jsonl`` or ``.parquet`` file (see
  :func:`read_file_documents` for how each is split into documents).
- ``hub``: ``datasets.load_dataset(dataset, config, split=split)``, from the
  local cache when offline.

Then, in this order:

1. documents whose text is empty or whitespace are dropped;
2. ``subset`` keeps ``all``, ``train`` or ``heldout`` documents, where a
   document is held out iff ``int(sha256(f"{seed}:{doc_id}"), 16) / 2**256 <
   heldout_fraction`` (:func:`split_of`), so the split of a document never
   depends on which other documents exist;
3. ``max_docs`` keeps the ``max_docs`` documents with the smallest
   ``sha256(f"{seed}:sample:{doc_id}")`` (:func:`sample_documents`), a sample
   that does not depend on input order;
4. rows are sorted by ``doc_id``.

With ``split_into`` (``sections``, ``paragraphs`` or ``definitions``; default
``none``), step 2 is followed by cutting each kept document into pieces
(:func:`split_documents`), and ``max_docs`` then samples pieces: a piece is
one document of the workload (the bootstrap unit), with doc_id
``{source doc_id}#{index:04d}``. The held-out/train split is taken on whole
source documents before the cut, so no piece of a held-out workload comes
from a document the zoo trained on.

The corpus hash (``corpus_sha256``) is taken over all loaded documents before
steps 1-4: sha256 of, for each document sorted by doc_id,
``doc_id + "\\x1f" + (prompt or "") + "\\x1f" + text + "\\x1e"`` (UTF-8).
``workload_sha256`` is the same hash over the final rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from exitbench import tables
from exitbench.config import resolve_path

log = logging.getLogger(__name__)

EMBEDDED_CORPORA = ("python-docs", "python-code")
SUBSETS = ("all", "train", "heldout")
SPLIT_INTO = ("none", "sections", "paragraphs", "definitions")
FILE_FORMATS = (".txt", ".jsonl", ".parquet")
ID_FIELDS = ("doc_id", "id")  # first one present names the documents of jsonl/parquet/hub data
# With max_docs, a hub split is read only up to its first max_docs * HUB_ROWS_PER_DOC rows.
HUB_ROWS_PER_DOC = 10
# Folders of the standard library that hold tests, not library code.
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})
COLUMNS = ("doc_id", "text", "prompt")


class WorkloadError(ValueError):
    """A workload cannot be built; the message names the config key to fix."""


# --------------------------------------------------------------------------- subsets


def _unit_hash(key: str) -> float:
    """``int(sha256(key), 16) / 2**256``: a uniform number in [0, 1) for ``key``."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) / 2**256


def split_of(doc_id: str, fraction: float, seed: int) -> str:
    """``"heldout"`` iff ``int(sha256(f"{seed}:{doc_id}"), 16) / 2**256 < fraction``, else train."""
    return "heldout" if _unit_hash(f"{seed}:{doc_id}") < fraction else "train"


def select_subset(df: pd.DataFrame, subset: str, fraction: float, seed: int) -> pd.DataFrame:
    """Rows of ``df`` whose ``doc_id`` is in ``subset`` (``all``, ``train`` or ``heldout``).

    ``train`` and ``heldout`` are complementary (see :func:`split_of`).
    """
    if subset not in SUBSETS:
        raise WorkloadError(f"subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    if subset == "all":
        return df
    splits = df["doc_id"].map(lambda doc_id: split_of(doc_id, fraction, seed))
    return df.loc[(splits == subset).astype(bool)]


def sample_documents(df: pd.DataFrame, max_docs: int, seed: int) -> pd.DataFrame:
    """The ``max_docs`` rows with the smallest ``sha256(f"{seed}:sample:{doc_id}")``, by doc_id.

    The sample depends only on the doc ids and the seed, not on row order.
    """
    keys = df["doc_id"].map(
        lambda doc_id: hashlib.sha256(f"{seed}:sample:{doc_id}".encode()).hexdigest()
    )
    chosen = keys.sort_values(kind="stable").index[:max_docs]
    return df.loc[chosen].sort_values("doc_id", kind="stable")


def documents_sha256(df: pd.DataFrame) -> str:
    """sha256 over ``doc_id \\x1f prompt \\x1f text \\x1e`` of each row, rows sorted by doc_id."""
    digest = hashlib.sha256()
    rows = df.sort_values("doc_id", kind="stable")
    prompts = rows["prompt"] if "prompt" in rows else [None] * len(rows)
    for doc_id, prompt, text in zip(rows["doc_id"], prompts, rows["text"], strict=True):
        prompt = (
            "" if prompt is None or (not isinstance(prompt, str) and pd.isna(prompt)) else prompt
        )
        digest.update(f"{doc_id}\x1f{prompt}\x1f{text}\x1e".encode())
    return digest.hexdigest()


def _frame(doc_ids: list[str], texts: list, prompts: list | None = None) -> pd.DataFrame:
    """A documents frame with string columns doc_id, text and prompt (nullable)."""
    return pd.DataFrame(
        {
            "doc_id": pd.Series(doc_ids, dtype=object),
            "text": pd.Series(texts, dtype=object),
            "prompt": pd.Series(
                prompts if prompts is not None else [None] * len(doc_ids), dtype=object
            ),
        }
    )


# --------------------------------------------------------------------------- pieces

# A heading: a line of text underlined by a line of one repeated punctuation character
# (reStructuredText / pydoc topics: "*****", "=====", "-----", ...).
_HEADING = re.compile(r"^[^\n]*\S[^\n]*\n([*=\-~^\"#+'`])\1{2,}[ \t]*$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")
_DEFINITIONS = ("FunctionDef", "AsyncFunctionDef", "ClassDef")


def _section_starts(text: str) -> list[int]:
    """Offsets where a section starts: each heading's title line."""
    return [match.start() for match in _HEADING.finditer(text)]


def _paragraph_starts(text: str) -> list[int]:
    """Offsets where a paragraph (a block after one or more blank lines) starts."""
    return [match.end() for match in _BLANK_LINES.finditer(text)]


def _definition_starts(text: str) -> list[int]:
    """Offsets of each top-level ``def``/``class`` of Python source (its first decorator
    included); none when the text does not parse as Python."""
    import ast
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    line_offsets = [0]
    for line in text.split("\n")[:-1]:
        line_offsets.append(line_offsets[-1] + len(line) + 1)
    starts = []
    for node in tree.body:
        if type(node).__name__ in _DEFINITIONS:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if first - 1 < len(line_offsets):
                starts.append(line_offsets[first - 1])
    return starts


def split_text(text: str, split_into: str, min_chars: int = 0) -> list[str]:
    """Pieces of one document (see :func:`split_documents` for the rules)."""
    if split_into == "none":
        return [text]
    finder = {
        "sections": _section_starts,
        "paragraphs": _paragraph_starts,
        "definitions": _definition_starts,
    }.get(split_into)
    if finder is None:
        raise WorkloadError(
            f"split_into must be one of {', '.join(SPLIT_INTO)}, got {split_into!r}"
        )
    cuts = sorted({0, *(start for start in finder(text) if 0 < start < len(text)), len(text)})
    pieces: list[str] = []
    pending = ""
    for start, end in zip(cuts[:-1], cuts[1:], strict=True):
        pending += text[start:end]
        if len(pending.strip()) >= min_chars:
            pieces.append(pending)
            pending = ""
    if pending:  # a short tail joins the piece before it
        if pieces:
            pieces[-1] += pending
        else:
            pieces.append(pending)
    return [piece.strip("\n") for piece in pieces if piece.strip()]


def split_documents(df: pd.DataFrame, split_into: str, min_chars: int = 0) -> pd.DataFrame:
    """Each document cut into pieces, each piece a document ``{doc_id}#{index:04d}``.

    - ``sections``: cut before each heading (a text line underlined by a line of
      one repeated punctuation character, as in the Python docs);
    - ``paragraphs``: cut after each run of blank lines;
    - ``definitions``: cut before each top-level ``def``/``class`` of Python
      source (decorators included), so a piece is one definition with the
      module-level code after it, and the code before the first one (docstring,
      imports) is a piece of its own; text that does not parse stays whole;
    - a piece shorter than ``min_chars`` characters (blank lines aside) is
      joined to the next one (the last to the one before it); pieces keep the
      document's text, blank lines at their ends stripped, and its prompt.

    ``none`` returns ``df`` unchanged.
    """
    if split_into == "none":
        return df
    doc_ids, texts, prompts = [], [], []
    has_prompt = "prompt" in df
    for row in df.itertuples(index=False):
        pieces = split_text(row.text, split_into, min_chars)
        doc_ids += [f"{row.doc_id}#{index:04d}" for index in range(len(pieces))]
        texts += pieces
        prompts += [row.prompt if has_prompt else None] * len(pieces)
    return _frame(doc_ids, texts, prompts)


# --------------------------------------------------------------------------- embedded


def _python_docs() -> pd.DataFrame:
    from pydoc_data.topics import topics

    keys = sorted(topics)
    return _frame(keys, [topics[key] for key in keys])


def _is_library_code(relative: Path) -> bool:
    """Whether a ``.py`` file of the stdlib (path relative to it) belongs to python-code."""
    parts = relative.parts
    if parts[0] in ("site-packages", "dist-packages") or parts[0].startswith("config-"):
        return False
    if _TEST_DIRS.intersection(parts[:-1]) or parts[-1].startswith("test_"):
        return False
    if parts[-1].startswith("_sysconfigdata_") or relative.as_posix() == "pydoc_data/topics.py":
        return False
    return True


def _python_code() -> pd.DataFrame:
    root = Path(sysconfig.get_paths()["stdlib"])
    doc_ids, texts, skipped = [], [], 0
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for file in sorted(files):
            path = Path(folder) / file
            relative = path.relative_to(root)
            if not file.endswith(".py") or not _is_library_code(relative):
                continue
            try:
                texts.append(path.read_bytes().decode("utf-8"))
            except (UnicodeDecodeError, OSError):
                skipped += 1
                continue
            doc_ids.append(relative.as_posix())
    if skipped:
        log.info("python-code: skipped %d files that are not readable UTF-8", skipped)
    return _frame(doc_ids, texts).sort_values("doc_id", kind="stable").reset_index(drop=True)


def embedded_corpus(corpus: str) -> pd.DataFrame:
    """All documents of embedded corpus ``python-docs`` or ``python-code``, sorted by doc_id."""
    if corpus == "python-docs":
        return _python_docs()
    if corpus == "python-code":
        return _python_code()
    raise WorkloadError(
        f"unknown embedded corpus {corpus!r}; expected one of {', '.join(EMBEDDED_CORPORA)}"
    )


# --------------------------------------------------------------------------- files


def _numbered(prefix: str, numbers: list[int]) -> list[str]:
    """``prefix`` + zero-padded numbers (at least 5 digits), so ids sort in number order."""
    width = max(5, len(str(max(numbers, default=0))))
    return [f"{prefix}{number:0{width}d}" for number in numbers]


def _split_txt(text: str) -> list[str]:
    """Documents of a .txt file: parts between lines holding only a form feed, else paragraphs."""
    if re.search(r"^\f$", text, flags=re.MULTILINE):
        parts = re.split(r"^\f$\n?", text, flags=re.MULTILINE)
    else:
        parts = re.split(r"\n[ \t]*\n", text)
    return [part.strip("\n") for part in parts if part.strip()]


def _column_error(key: str, value: str, path: Path, available: list[str]) -> WorkloadError:
    return WorkloadError(
        f"config key '{key}': column {value!r} is not in {path}; "
        f"available columns: {', '.join(map(str, available)) or '(none)'}"
    )


def _records_frame(
    records: list[dict],
    default_ids: list[str],
    text_column: str,
    prompt_column: str | None,
    where: str,
    key: str,
    path: Path,
) -> pd.DataFrame:
    """Documents from record dicts: text/prompt columns, doc_id from an id field if any."""
    available = sorted({field for record in records for field in record})
    if records and text_column not in available:
        raise _column_error(f"{key}.text_column", text_column, path, available)
    if prompt_column is not None and records and prompt_column not in available:
        raise _column_error(f"{key}.prompt_column", prompt_column, path, available)
    id_field = next((field for field in ID_FIELDS if field in available), None)
    if id_field is not None:
        missing = sum(1 for record in records if record.get(id_field) is None)
        if missing:
            raise WorkloadError(
                f"{where}: {missing} of {len(records)} records lack the id field {id_field!r}; "
                f"give every record a {id_field!r} or none (then row numbers are used)"
            )
        doc_ids = [str(record[id_field]) for record in records]
    else:
        doc_ids = default_ids
    texts, prompts = [], []
    for doc_id, record in zip(doc_ids, records, strict=True):
        text = record.get(text_column)
        if text is not None and not isinstance(text, str):
            raise WorkloadError(
                f"config key '{key}.text_column': column {text_column!r} of {where} holds "
                f"{type(text).__name__} values (document {doc_id!r}), expected strings"
            )
        texts.append(text if text is not None else "")
        prompt = record.get(prompt_column) if prompt_column is not None else None
        prompts.append(None if prompt is None else str(prompt))
    frame = _frame(doc_ids, texts, prompts)
    duplicated = frame["doc_id"][frame["doc_id"].duplicated()].unique()
    if len(duplicated):
        raise WorkloadError(
            f"{where}: field {id_field!r} is not unique (e.g. {list(duplicated[:3])}); "
            "doc ids must be unique within a workload"
        )
    return frame


def read_file_documents(
    path: Path, text_column: str = "text", prompt_column: str | None = None, key: str = "workload"
) -> pd.DataFrame:
    """Documents of a local file.

    - ``.txt``: documents are separated by lines holding only a form feed
      (``\\f``); a file without such a line has one document per paragraph
      (blocks separated by blank lines). doc_id = ``{file stem}-{index:05d}``.
    - ``.jsonl``: one JSON object per line (blank lines skipped), text in
      ``text_column``; doc_id from a ``doc_id`` or ``id`` field when present,
      else ``line-{line number:05d}`` (1-based).
    - ``.parquet``: text in ``text_column``; doc_id from a ``doc_id`` or
      ``id`` column when present, else ``row-{row:05d}`` (0-based).

    ``key`` is the config key of the workload (``workloads.<name>``) for messages.
    """
    try:
        return _read_file_documents(path, text_column, prompt_column, key)
    except UnicodeDecodeError as err:
        raise WorkloadError(
            f"config key '{key}.path': {path} is not UTF-8 text (byte {err.object[err.start]:#04x} "
            f"at offset {err.start} cannot be decoded); re-encode the file as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name}`"
        ) from err


def _read_file_documents(
    path: Path, text_column: str, prompt_column: str | None, key: str
) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        parts = _split_txt(path.read_text(encoding="utf-8"))
        return _frame(_numbered(f"{path.stem}-", list(range(len(parts)))), parts)
    if suffix == ".jsonl":
        records, lines = [], []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise WorkloadError(
                        f"config key '{key}.path': {path} line {number} is not valid JSON: {err}"
                    ) from err
                if not isinstance(record, dict):
                    raise WorkloadError(
                        f"config key '{key}.path': {path} line {number} is not a JSON object"
                    )
                records.append(record)
                lines.append(number)
        return _records_frame(
            records, _numbered("line-", lines), text_column, prompt_column, str(path), key, path
        )
    if suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as err:
            raise WorkloadError(
                f"config key '{key}.path': {path} is not a readable Parquet file: {err}"
            ) from err
        return _table_documents(table, text_column, prompt_column, str(path), key, path, "row-")
    raise WorkloadError(
        f"config key '{key}.path': unsupported file type {path.suffix!r} of {path}; "
        f"expected one of {', '.join(FILE_FORMATS)}"
    )


def _table_documents(
    table: pa.Table,
    text_column: str,
    prompt_column: str | None,
    where: str,
    key: str,
    path: Any,
    prefix: str,
) -> pd.DataFrame:
    """Documents from an Arrow table (a Parquet file or a hub split)."""
    available = table.column_names
    if text_column not in available:
        raise _column_error(f"{key}.text_column", text_column, path, available)
    if prompt_column is not None and prompt_column not in available:
        raise _column_error(f"{key}.prompt_column", prompt_column, path, available)
    keep = [text_column] + ([prompt_column] if prompt_column else [])
    keep += [field for field in ID_FIELDS if field in available][:1]
    records = table.select(list(dict.fromkeys(keep))).to_pylist()
    default_ids = _numbered(prefix, list(range(len(records))))
    return _records_frame(records, default_ids, text_column, prompt_column, where, key, path)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- hub


def _hub_revision(dataset: Any) -> str | None:
    """The hub commit a cached dataset was built from: its cache folder's name when a sha."""
    for cache_file in getattr(dataset, "cache_files", None) or []:
        folder = Path(cache_file.get("filename", "")).parent.name
        if re.fullmatch(r"[0-9a-f]{40}", folder):
            return folder
    return None


def _load_hub(name: str, spec: dict) -> tuple[pd.DataFrame, dict]:
    key = f"workloads.{name}"
    dataset_name, config_name = spec["dataset"], spec.get("config")
    split = spec.get("split", "train")
    max_docs = spec.get("max_docs")
    # A prefix slice is deterministic for a fixed dataset revision, and keeps a huge split
    # from being converted in full; a split that already has a slice is used as given.
    split_read = split
    if max_docs is not None and "[" not in split:
        split_read = f"{split}[:{max_docs * HUB_ROWS_PER_DOC}]"
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is a dependency
        raise WorkloadError(f"config key '{key}.source': hub needs the 'datasets' package") from err
    log.info("loading hub dataset %s (config %s, split %s)", dataset_name, config_name, split_read)
    try:
        dataset = datasets.load_dataset(dataset_name, config_name, split=split_read)
    except Exception as err:  # datasets raises ConnectionError, FileNotFoundError, ValueError, ...
        offline = any(
            os.environ.get(var, "").lower() in ("1", "true", "yes", "on")
            for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
        )
        mode = (
            "offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)"
            if offline
            else ("the hub was unreachable or the dataset does not exist")
        )
        raise WorkloadError(
            f"config key '{key}.dataset': cannot load {dataset_name!r} "
            f"(config {config_name!r}, split {split_read!r}): it is not in the local datasets "
            f"cache and {mode}. Fix: check the name, config and split, then run once online "
            "to populate the cache (or copy a populated HF_DATASETS_CACHE) and rerun with "
            f"HF_DATASETS_OFFLINE=1. Cause: {type(err).__name__}: {err}"
        ) from err
    text_column = spec.get("text_column", "text")
    documents = _table_documents(
        dataset.with_format("arrow")[:],  # an Arrow table of the rows, memory-mapped
        text_column,
        spec.get("prompt_column"),
        f"hub dataset {dataset_name!r} split {split_read!r}",
        key,
        f"hub dataset {dataset_name!r} split {split_read!r}",
        "row-",
    )
    info = {
        "dataset": dataset_name,
        "config": config_name,
        "split": split,
        "split_read": split_read,
        "revision": _hub_revision(dataset),
        "fingerprint": getattr(dataset, "_fingerprint", None),
        "datasets_version": datasets.__version__,
    }
    return documents, info


# --------------------------------------------------------------------------- workloads


def _load_source(name: str, spec: dict) -> tuple[pd.DataFrame, dict]:
    key = f"workloads.{name}"
    source = spec.get("source")
    if source == "embedded":
        corpus = spec.get("name")
        if corpus not in EMBEDDED_CORPORA:
            raise WorkloadError(
                f"config key '{key}.name': unknown embedded corpus {corpus!r}; "
                f"expected one of {', '.join(EMBEDDED_CORPORA)}"
            )
        return embedded_corpus(corpus), {"name": corpus, "python_version": sys.version}
    if source == "file":
        if not spec.get("path"):
            raise WorkloadError(f"config key '{key}.path': a file workload needs a path")
        path = resolve_path(spec["path"])
        if not path.is_file():
            raise WorkloadError(
                f"config key '{key}.path': file {spec['path']!r} not found "
                f"(looked for {path}); expected a {', '.join(FILE_FORMATS)} file"
            )
        documents = read_file_documents(
            path, spec.get("text_column", "text"), spec.get("prompt_column"), key
        )
        info = {"path": spec["path"], "resolved_path": str(path), "file_sha256": _file_sha256(path)}
        return documents, info
    if source == "hub":
        if not spec.get("dataset"):
            raise WorkloadError(f"config key '{key}.dataset': a hub workload needs a dataset")
        return _load_hub(name, spec)
    raise WorkloadError(
        f"config key '{key}.source': expected one of embedded, file, hub; got {source!r}"
    )


def load_documents(name: str, spec: dict, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """The documents of workload ``name`` (config ``workloads.<name>`` = ``spec``) and provenance.

    Returns a frame with columns doc_id, text, prompt (None where absent), sorted
    by doc_id, and a dict recording the source, the corpus hash and the document
    counts at each step (see the module docstring for the rules).
    """
    subset = spec.get("subset", "all")
    fraction = spec.get("heldout_fraction", 0.2)
    max_docs = spec.get("max_docs")
    split_into = spec.get("split_into", "none")
    min_chars = spec.get("min_chars", 0)
    key = f"workloads.{name}"
    if split_into not in SPLIT_INTO:
        raise WorkloadError(
            f"config key '{key}.split_into': expected one of {', '.join(SPLIT_INTO)}, "
            f"got {split_into!r}"
        )
    if not isinstance(min_chars, int) or isinstance(min_chars, bool) or min_chars < 0:
        raise WorkloadError(
            f"config key '{key}.min_chars': expected a non-negative integer, got {min_chars!r}"
        )
    if subset not in SUBSETS:
        raise WorkloadError(
            f"config key '{key}.subset': expected one of {', '.join(SUBSETS)}, got {subset!r}"
        )
    if not 0 < fraction < 1:
        raise WorkloadError(
            f"config key '{key}.heldout_fraction': expected a number in (0, 1), got {fraction!r}"
        )
    if max_docs is not None and (not isinstance(max_docs, int) or max_docs < 1):
        raise WorkloadError(
            f"config key '{key}.max_docs': expected a positive integer, got {max_docs!r}"
        )

    corpus, source_info = _load_source(name, spec)
    nonempty = corpus.loc[corpus["text"].map(lambda text: bool(text.strip())).astype(bool)]
    chosen = select_subset(nonempty, subset, fraction, seed)
    pieces = split_documents(chosen, split_into, min_chars)
    documents = pieces if max_docs is None else sample_documents(pieces, max_docs, seed)
    documents = documents.sort_values("doc_id", kind="stable").reset_index(drop=True)
    counts = {
        "n_docs_corpus": len(corpus),
        "n_docs_nonempty": len(nonempty),
        "n_docs_subset": len(chosen),
        "n_docs": len(documents),
    }
    if split_into != "none":
        counts["n_pieces"] = len(pieces)
        counts["n_source_docs"] = len({doc_id.rpartition("#")[0] for doc_id in documents["doc_id"]})
    if documents.empty:
        raise WorkloadError(
            f"workload {name!r}: no documents left ({counts['n_docs_corpus']} loaded, "
            f"{counts['n_docs_nonempty']} with non-empty text, {counts['n_docs_subset']} in "
            f"subset {subset!r} with heldout_fraction {fraction} and seed {seed}); "
            f"check config keys '{key}.subset', '{key}.heldout_fraction' and the source's text"
        )
    provenance = {
        "workload": name,
        "source": spec["source"],
        **source_info,
        "subset": subset,
        "heldout_fraction": fraction,
        "max_docs": max_docs,
        "split_into": split_into,
        "min_chars": min_chars,
        "seed": seed,
        "corpus_sha256": documents_sha256(corpus),
        "workload_sha256": documents_sha256(documents),
        **counts,
    }
    log.info(
        "workload %s: %d documents (%d loaded, %d non-empty, %d in subset %s)",
        name,
        counts["n_docs"],
        counts["n_docs_corpus"],
        counts["n_docs_nonempty"],
        counts["n_docs_subset"],
        subset,
    )
    return documents, provenance


def to_table(documents: pd.DataFrame) -> pa.Table:
    """The ``workload`` Arrow table of a documents frame (doc_id, text, prompt)."""
    prompts = documents["prompt"] if "prompt" in documents else [None] * len(documents)
    return pa.table(
        {
            "doc_id": pa.array(list(documents["doc_id"]), pa.string()),
            "text": pa.array(list(documents["text"]), pa.string()),
            "prompt": pa.array(
                [
                    None if p is None or (not isinstance(p, str) and pd.isna(p)) else p
                    for p in prompts
                ],
                pa.string(),
            ),
        }
    )


def build_workload(name: str, spec: dict, seed: int, out_path: str | os.PathLike) -> dict:
    """Load workload ``name``, write it to ``out_path`` (table ``workload``), return provenance."""
    documents, provenance = load_documents(name, spec, seed)
    tables.write_table(to_table(documents), out_path, "workload")
    return provenance
