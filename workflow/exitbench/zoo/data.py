"""The zoo's training data: the training split of each embedded corpus, the QA pairs of the
``qa`` task, their encoding into windows (``results/zoo/data``), and the seeded window plan
every run reads.

Only the *training* split of each corpus is used: a document is held out iff
``int(sha256(f"{seed}:{doc_id}"), 16) / 2**256 < heldout_fraction``
(:func:`exitbench.workloads.split_of`), the rule the analysis workloads use with
``subset: heldout``, so the zoo never sees the documents it is measured on.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from exitbench import provenance, workloads
from exitbench.zoo.plan import ENDOFTEXT, ZooError

log = logging.getLogger(__name__)

QA_CORPUS = "python-docs"  # the qa task is built from this corpus' training topics
QA_SOURCE = "qa"
DATA_INFO = "data.json"


def tokenizer_sha256(tokenizer_dir: str | os.PathLike) -> str:
    """sha256 of ``tokenizer_dir/tokenizer.json`` (which tokenizer encoded the data)."""
    return hashlib.sha256((Path(tokenizer_dir) / "tokenizer.json").read_bytes()).hexdigest()


def training_documents(
    zoo: dict[str, Any], seed: int, corpora: list[str] | None = None
) -> dict[str, tuple[Any, dict[str, Any]]]:
    """The training split of each corpus: ``{corpus: (documents frame, workload provenance)}``.

    Documents are those of ``workloads.load_documents`` with ``subset: train``
    (and ``zoo.max_docs``), ordered by ``sha256(f"{seed}:zoo:{doc_id}")``.
    """
    result = {}
    for corpus in corpora if corpora is not None else list(zoo["corpora"]):
        spec = {
            "source": "embedded",
            "name": corpus,
            "subset": "train",
            "heldout_fraction": zoo["heldout_fraction"],
        }
        if zoo.get("max_docs") is not None:
            spec["max_docs"] = zoo["max_docs"]
        documents, info = workloads.load_documents(f"zoo-{corpus}", spec, seed)
        order = documents["doc_id"].map(
            lambda doc_id: hashlib.sha256(f"{seed}:zoo:{doc_id}".encode()).hexdigest()
        )
        documents = documents.loc[order.sort_values(kind="stable").index].reset_index(drop=True)
        result[corpus] = (documents, info)
    return result


def qa_example(text: str) -> str | None:
    """``"Q: What is <title>?\\nA: <first paragraph>"`` for a python-docs topic, or None.

    The title is the topic's first line (a leading "The " lower-cased); the first
    paragraph is the first block of non-blank lines after the title's underline,
    joined with spaces.
    """
    lines = text.strip("\n").split("\n")
    title = lines[0].strip()
    if not title:
        return None
    body = lines[1:]
    if body and body[0].strip() and set(body[0].strip()) <= set("*=-~^#"):
        body = body[1:]
    paragraph: list[str] = []
    for line in body:
        if line.strip():
            paragraph.append(line.strip())
        elif paragraph:
            break
    if not paragraph:
        return None
    if title.startswith("The "):
        title = "the " + title[4:]
    return f"Q: What is {title}?\nA: {' '.join(paragraph)}"


def source_texts(zoo: dict[str, Any], seed: int) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Training texts of every data source and their provenance.

    Sources: each pretraining corpus (``zoo.corpora``) and ``qa`` (QA pairs from
    the python-docs training topics, see :func:`qa_example`).
    """
    corpora = list(dict.fromkeys([*zoo["corpora"], QA_CORPUS]))
    documents = training_documents(zoo, seed, corpora)
    texts, info = {}, {}

    def describe(corpus: str, frame: Any, corpus_info: dict[str, Any]) -> dict[str, Any]:
        return {
            "corpus": corpus,
            "n_documents": len(frame),
            "doc_ids_sha256": hashlib.sha256("\n".join(frame["doc_id"]).encode()).hexdigest(),
            "corpus_sha256": corpus_info["corpus_sha256"],
            "train_sha256": corpus_info["workload_sha256"],
            "n_docs_corpus": corpus_info["n_docs_corpus"],
        }

    for corpus in zoo["corpora"]:
        frame, corpus_info = documents[corpus]
        texts[corpus] = list(frame["text"])
        info[corpus] = describe(corpus, frame, corpus_info)
    frame, corpus_info = documents[QA_CORPUS]
    pairs = [qa_example(text) for text in frame["text"]]
    texts[QA_SOURCE] = [pair for pair in pairs if pair is not None]
    info[QA_SOURCE] = {**describe(QA_CORPUS, frame, corpus_info), "n_pairs": len(texts["qa"])}
    return texts, info


def encode_windows(texts: list[str], tokenizer: Any, seq_len: int) -> np.ndarray:
    """``texts`` encoded in order, each followed by ``<|endoftext|>``, concatenated and cut
    into windows [n, seq_len] (the tail shorter than a window is dropped)."""
    eos = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    stream: list[int] = []
    for start in range(0, len(texts), 64):
        for ids in tokenizer(texts[start : start + 64], add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
    usable = len(stream) // seq_len * seq_len
    return np.asarray(stream[:usable], dtype=np.int32).reshape(-1, seq_len)


def build_data(
    zoo: dict[str, Any], seed: int, tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike
) -> dict[str, Any]:
    """Encode every data source once into ``out_dir/<source>.npy`` (int32 windows
    [n, seq_len]) plus ``out_dir/data.json`` (provenance); return the provenance."""
    from transformers import AutoTokenizer

    seq_len = zoo["training"]["seq_len"]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts, info = source_texts(zoo, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, source in texts.items():
        windows = encode_windows(source, tokenizer, seq_len)
        if len(windows) == 0:
            raise ZooError(
                f"zoo data source {name!r} has less than one window of {seq_len} tokens; "
                "raise config key 'zoo.max_docs' or lower 'zoo.training.seq_len'"
            )
        np.save(out_dir / f"{name}.npy", windows, allow_pickle=False)
        info[name].update(
            windows=len(windows),
            tokens=int(windows.size),
            windows_sha256=hashlib.sha256(windows.astype("<i4").tobytes()).hexdigest(),
        )
        log.info("zoo data %s: %d windows of %d tokens", name, len(windows), seq_len)
    result = {
        "seed": seed,
        "seq_len": seq_len,
        "heldout_fraction": zoo["heldout_fraction"],
        "tokenizer_sha256": tokenizer_sha256(tokenizer_dir),
        "sources": info,
    }
    provenance.write_json(result, out_dir / DATA_INFO)
    return result


def task_sources(zoo: dict[str, Any], task: str) -> dict[str, float]:
    """Data sources of ``task`` and their normalised weights."""
    if task == "qa":
        return {QA_SOURCE: 1.0}
    total = sum(zoo["corpora"].values())
    return {corpus: weight / total for corpus, weight in zoo["corpora"].items()}


def window_plan(
    windows: dict[str, np.ndarray], weights: dict[str, float], n_windows: int, seed: int
) -> tuple[np.ndarray, dict[str, dict[str, int]]]:
    """The first ``n_windows`` training windows [n_windows, seq_len] in order, and per-source
    counts (windows used and available, epochs started).

    Slot i takes source c where the i-th draw of ``Generator(PCG64(seed)).random()``
    falls in c's share of the cumulative weights; a source's windows are taken in
    the order of a fresh permutation ``PCG64([seed, c's index, epoch])`` per
    epoch. Every choice depends only on the seed and i, so a longer run extends a
    shorter one.
    """
    names = list(weights)
    cumulative = np.cumsum([weights[name] for name in names])
    draws = np.random.Generator(np.random.PCG64(seed)).random(n_windows)
    source = np.searchsorted(cumulative / cumulative[-1], draws, side="right")
    source = np.minimum(source, len(names) - 1)  # guards a rounding error at u close to 1
    seq_len = next(iter(windows.values())).shape[1]
    plan = np.empty((n_windows, seq_len), dtype=np.int64)
    counts = {}
    for index, name in enumerate(names):
        slots = np.flatnonzero(source == index)
        available = len(windows[name])
        epochs = -(-len(slots) // available)
        order = np.concatenate(
            [
                np.random.Generator(np.random.PCG64([seed, index, epoch])).permutation(available)
                for epoch in range(epochs)
            ]
            or [np.empty(0, dtype=np.int64)]
        )
        plan[slots] = windows[name][order[: len(slots)]]
        counts[name] = {
            "windows_used": int(len(slots)),
            "windows_available": int(available),
            "epochs": int(epochs),
        }
    return plan, counts


def load_windows(data_dir: str | os.PathLike, sources: list[str]) -> dict[str, np.ndarray]:
    """The encoded windows of ``sources`` from ``data_dir`` (written by :func:`build_data`)."""
    result = {}
    for name in sources:
        path = Path(data_dir) / f"{name}.npy"
        if not path.is_file():
            raise ZooError(
                f"zoo data source {name!r} is missing: {path} not found; rerun rule zoo_data"
            )
        result[name] = np.load(path, allow_pickle=False)
    return result
