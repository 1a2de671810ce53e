"""The embedded default's model zoo: a BPE tokenizer and small causal LMs trained offline.

No weights can be downloaded on a fresh offline machine, so the default study
trains its own models (config ``zoo:``, schema ``workflow/schemas/zoo.schema.yaml``)
on the embedded corpora (:mod:`exitbench.workloads`), and then loads them
through exactly the code used for hub models.

Steps (rules in ``workflow/rules/zoo.smk``): ``zoo_tokenizer`` trains the BPE
(``results/zoo/tokenizer``), ``zoo_data`` encodes every data source once
(``results/zoo/data``), ``zoo_train`` trains one run (``results/zoo/<run>``).

Data. Only the *training* split of each corpus is used: a document is held
out iff ``int(sha256(f"{seed}:{doc_id}"), 16) / 2**256 < heldout_fraction``
(:func:`exitbench.workloads.split_of`), the rule the analysis workloads use
with ``subset: heldout``, so the zoo never sees the documents it is measured
on. Per source, documents are ordered by ``sha256(f"{seed}:zoo:{doc_id}")``,
encoded, each followed by ``<|endoftext|>``, concatenated and cut into windows
of ``seq_len`` tokens (the tail is dropped). Slot ``i`` of a run's window plan
takes source ``c`` where the i-th draw of ``Generator(PCG64(seed)).random()``
falls in ``c``'s share of the normalised ``zoo.corpora`` weights, and the
source's next window in a seeded permutation of its windows (a fresh one per
epoch). Every choice depends only on the seed and ``i``, so all runs see the
same windows in the same order, a longer budget extending a shorter one.

Task ``qa`` (a tuned run) trains on ``"Q: What is <title>?\nA: <first
paragraph>"`` pairs built from the python-docs *training* topics, packed the
same way.

Training. AdamW (decay on matrices only), ``lr(s)`` = linear warmup over ``w``
steps, then cosine (or linear) decay to ``min_lr_ratio * lr``; ``steps =
ceil(train_tokens / (batch_size * seq_len))``; next-token cross entropy (plus
``router_aux_loss_coef`` times the load-balancing loss for MoE); global
gradient-norm clipping; dropout 0. ``torch.manual_seed(seed)`` before the
model is built and ``torch.use_deterministic_algorithms(True)``: the same
config and thread count give the same loss curve and weights, bit for bit.

A run ``<run>`` writes ``results/zoo/<run>/``: ``final/`` and
``checkpoints/step-<N>/`` (``save_pretrained`` model + tokenizer), ``loss.csv``
(step, tokens, loss, lr), ``loss.png`` and ``train.json`` (provenance).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from exitbench import provenance, workloads
from exitbench.config import DefaultsValidator

if TYPE_CHECKING:  # torch is imported where used, so Snakefiles import this module quickly
    import torch

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "zoo.schema.yaml"
ZOO_ROOT = PurePosixPath("results/zoo")
ENDOFTEXT = "<|endoftext|>"
QA_CORPUS = "python-docs"  # the qa task is built from this corpus' training topics
TOKENIZER_INFO = "zoo_tokenizer.json"
DATA_INFO = "data.json"
DATA_NAME = "data"  # results/zoo/data holds the encoded training windows
QA_SOURCE = "qa"
# results/zoo/tokenizer and results/zoo/data are the shared inputs, never runs.
RESERVED_NAMES = ("tokenizer", DATA_NAME)
# Keys that fix a run's architecture; a run with init_from takes them from its base.
ARCHITECTURE_KEYS = (
    "recipe",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "intermediate_size",
    "num_experts",
    "experts_per_token",
    "expand",
    "head_dim",
    "state_size",
    "chunk_size",
    "tie_word_embeddings",
)


class ZooError(ValueError):
    """The zoo config or a zoo input is invalid; the message names the key or file to fix."""


# --------------------------------------------------------------------------- paths


def zoo_run_dir(path: str | os.PathLike) -> str | None:
    """``results/zoo/<run>`` for a path under a zoo run's directory, else None.

    ``results/zoo/llama-s/final`` and ``results/zoo/llama-s/checkpoints/step-50``
    both map to ``results/zoo/llama-s`` (the output of rule ``zoo_train``).
    """
    parts = PurePosixPath(os.path.normpath(os.fspath(path)).replace(os.sep, "/")).parts
    if len(parts) < 3 or parts[:2] != ZOO_ROOT.parts or parts[2] in RESERVED_NAMES:
        return None
    return str(ZOO_ROOT / parts[2])


# --------------------------------------------------------------------------- config


def validate_zoo(zoo: dict[str, Any]) -> dict[str, Any]:
    """A validated copy of the config's ``zoo:`` section with defaults filled in.

    Checks the schema, then what a schema cannot say: ``init_from`` names another
    run (no cycles), a tuned run does not restate the architecture, head and
    expert counts divide, and checkpoint steps lie within the run. Raises
    :class:`ZooError` naming the key (``zoo.runs.<run>.<key>``).
    """
    zoo = copy.deepcopy(dict(zoo))
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    errors = sorted(
        DefaultsValidator(schema).iter_errors(zoo), key=lambda e: list(map(str, e.path))
    )
    if errors:
        lines = []
        for error in errors[:5]:
            key = ".".join(["zoo", *map(str, error.absolute_path)])
            lines.append(f"config key '{key}': {error.message}")
        raise ZooError("invalid zoo configuration:\n  " + "\n  ".join(lines))
    runs = zoo["runs"]
    for run, spec in runs.items():
        key = f"zoo.runs.{run}"
        base = spec.get("init_from")
        if base is not None:
            if base not in runs:
                raise ZooError(
                    f"config key '{key}.init_from': {base!r} is not a run of zoo.runs "
                    f"(known: {', '.join(sorted(runs))})"
                )
            restated = [k for k in ARCHITECTURE_KEYS if k in spec]
            if restated:
                raise ZooError(
                    f"config key '{key}': a run with init_from takes its architecture from "
                    f"run {base!r}; remove {', '.join(restated)}"
                )
            seen = [run]
            while base is not None:
                if base in seen:
                    raise ZooError(
                        f"config key '{key}.init_from': runs start from each other in a cycle "
                        f"({' -> '.join([*seen, base])})"
                    )
                seen.append(base)
                base = runs[base].get("init_from")
        else:
            _check_architecture(key, spec)
        steps = total_steps(zoo, run)
        late = [step for step in spec["checkpoints"] if step > steps]
        if late:
            raise ZooError(
                f"config key '{key}.checkpoints': steps {late} are after the run's last step "
                f"{steps} (= ceil(train_tokens / (batch_size * seq_len)))"
            )
    return zoo


def _check_architecture(key: str, spec: dict[str, Any]) -> None:
    recipe = spec["recipe"]
    hidden = spec["hidden_size"]
    if recipe in ("gpt2", "llama", "mixtral", "olmoe"):
        heads = spec.get("num_heads")
        if heads is None:
            raise ZooError(f"config key '{key}.num_heads': recipe {recipe!r} needs num_heads")
        if hidden % heads:
            raise ZooError(
                f"config key '{key}.num_heads': hidden_size {hidden} is not a multiple of "
                f"num_heads {heads}"
            )
        kv_heads = spec.get("num_kv_heads", heads)
        if heads % kv_heads:
            raise ZooError(
                f"config key '{key}.num_kv_heads': num_heads {heads} is not a multiple of "
                f"num_kv_heads {kv_heads}"
            )
    if recipe in ("mixtral", "olmoe"):
        for needed in ("num_experts", "experts_per_token"):
            if needed not in spec:
                raise ZooError(f"config key '{key}.{needed}': recipe {recipe!r} needs {needed}")
        if spec["experts_per_token"] > spec["num_experts"]:
            raise ZooError(
                f"config key '{key}.experts_per_token': {spec['experts_per_token']} is more than "
                f"num_experts {spec['num_experts']}"
            )
    if recipe == "mamba2":
        inner = spec.get("expand", 2) * hidden
        head_dim = spec.get("head_dim", 32)
        if inner % head_dim:
            raise ZooError(
                f"config key '{key}.head_dim': expand * hidden_size = {inner} is not a multiple "
                f"of head_dim {head_dim}"
            )


def run_spec(zoo: dict[str, Any], run: str) -> dict[str, Any]:
    """Run ``run``'s settings: its own keys, the architecture of its ``init_from`` chain, and
    the shared ``training`` keys (the run's train_tokens / learning_rate win)."""
    runs = zoo["runs"]
    if run not in runs:
        raise ZooError(f"zoo run {run!r} is not in config key 'zoo.runs' (known: {sorted(runs)})")
    spec = dict(runs[run])
    root = run
    while runs[root].get("init_from") is not None:
        root = runs[root]["init_from"]
    architecture = {k: runs[root][k] for k in ARCHITECTURE_KEYS if k in runs[root]}
    if "router_aux_loss_coef" in runs[root]:
        architecture["router_aux_loss_coef"] = runs[root]["router_aux_loss_coef"]
    training = dict(zoo["training"])
    for key in ("train_tokens", "learning_rate"):
        if key in spec:
            training[key] = spec[key]
    return {**architecture, **spec, "training": training, "name": run}


def base_run(zoo: dict[str, Any], run: str) -> str | None:
    """The run that ``run`` starts from (its ``init_from``), or None for a run from scratch."""
    return zoo["runs"][run].get("init_from")


def base_inputs(zoo: dict[str, Any], run: str) -> list[str]:
    """``["results/zoo/<base>"]`` for a run with ``init_from``, else ``[]`` (rule zoo_train's
    input: a tuned run waits for its base run's directory)."""
    base = base_run(zoo, run)
    return [str(ZOO_ROOT / base)] if base else []


def total_steps(zoo: dict[str, Any], run: str) -> int:
    """``ceil(train_tokens / (batch_size * seq_len))`` for run ``run``."""
    training = run_spec(zoo, run)["training"]
    return math.ceil(training["train_tokens"] / (training["batch_size"] * training["seq_len"]))


def heldout_conflicts(config: dict[str, Any]) -> list[str]:
    """Messages for embedded workloads measured on documents the zoo trained on.

    A ``subset: heldout`` workload with a different ``heldout_fraction`` than
    ``zoo.heldout_fraction`` would include trained-on documents.
    """
    zoo = config.get("zoo")
    if not zoo:
        return []
    fraction = zoo.get("heldout_fraction", 0.2)
    problems = []
    for name, spec in config.get("workloads", {}).items():
        if spec.get("source") != "embedded" or spec.get("subset", "all") != "heldout":
            continue
        if spec.get("heldout_fraction", 0.2) != fraction:
            problems.append(
                f"config key 'workloads.{name}.heldout_fraction': {spec.get('heldout_fraction')} "
                f"differs from zoo.heldout_fraction {fraction}, so the zoo trained on some of its "
                "documents; use the same fraction"
            )
    return problems


#: Relative cost per parameter of a layer on CPU (mamba2's torch chunked scan is slow).
RECIPE_COST = {"gpt2": 1.0, "llama": 1.0, "mixtral": 1.2, "olmoe": 1.2, "mamba2": 3.0}


def run_cost(zoo: dict[str, Any], run: str) -> float:
    """Rough training cost of ``run`` (arbitrary units): train_tokens × (num_layers ×
    layer weights × RECIPE_COST + hidden × vocab). Only used to start the longest run first."""
    spec = run_spec(zoo, run)
    d, layers = spec["hidden_size"], spec["num_layers"]
    recipe = spec["recipe"]
    if recipe == "mamba2":
        layer = 3 * spec.get("expand", 2) * d * d
    else:
        width = spec.get("intermediate_size", 4 * d if recipe == "gpt2" else _llama_width(d))
        mlp = (2 if recipe == "gpt2" else 3) * d * width * spec.get("experts_per_token", 1)
        layer = 4 * d * d + mlp
    vocab = zoo["tokenizer"]["vocab_size"]
    return spec["training"]["train_tokens"] * (layers * layer * RECIPE_COST[recipe] + d * vocab)


def run_priorities(zoo: dict[str, Any]) -> dict[str, int]:
    """Snakemake priority of each run: its rank by :func:`run_cost` (1 = cheapest), so that
    with a few cores the longest runs start first and the zoo finishes sooner."""
    ranked = sorted(zoo["runs"], key=lambda run: (run_cost(zoo, run), run))
    return {run: rank for rank, run in enumerate(ranked, start=1)}


#: Keys of the zoo section each shared step depends on (its Snakemake params).
STEP_KEYS = {
    "tokenizer": ("corpora", "heldout_fraction", "max_docs", "tokenizer"),
    "data": ("corpora", "heldout_fraction", "max_docs", "training"),
}


def rule_settings(zoo: dict[str, Any], step: str) -> dict[str, Any]:
    """The part of the zoo section that step ``tokenizer``, ``data`` or run ``<run>`` reads.

    Used as Snakemake params, so editing one run retrains that run (and the runs
    that start from it) only. A run's part holds its ``init_from`` chain.
    """
    if step in STEP_KEYS:
        part = {key: zoo[key] for key in STEP_KEYS[step] if key in zoo}
        if step == "data":
            part["training"] = {"seq_len": zoo["training"]["seq_len"]}
        return part
    chain, run = {}, step
    while run is not None:
        chain[run] = zoo["runs"][run]
        run = zoo["runs"][run].get("init_from")
    shared = {key: value for key, value in zoo.items() if key not in ("runs", "tokenizer")}
    return {**shared, "runs": chain}


def check_study(config: dict[str, Any]) -> list[str]:
    """Problems between a study config and its zoo section, one message per key to fix.

    A ``models.<name>.path`` under ``results/zoo/<run>/`` must name a zoo run and,
    for ``checkpoints/step-<N>``, one of that run's checkpoint steps; a held-out
    embedded workload must use ``zoo.heldout_fraction`` (:func:`heldout_conflicts`).
    """
    zoo = config.get("zoo")
    if zoo is None:
        return []
    runs = zoo.get("runs", {})
    problems = heldout_conflicts(config)
    for name, entry in config.get("models", {}).items():
        path = entry.get("path")
        run_dir = zoo_run_dir(path) if path else None
        if run_dir is None:
            continue
        run = PurePosixPath(run_dir).name
        key = f"models.{name}.path"
        if run not in runs:
            problems.append(
                f"config key '{key}': {path!r} is under results/zoo/{run}/ but {run!r} is not a "
                f"run of zoo.runs (known: {', '.join(sorted(runs)) or 'none'})"
            )
            continue
        inner = PurePosixPath(os.path.normpath(path).replace(os.sep, "/")).parts[3:]
        steps = runs[run].get("checkpoints", [])
        if inner == ("final",):
            continue
        match = re.fullmatch(r"step-(\d+)", inner[1]) if len(inner) == 2 else None
        if inner[:1] != ("checkpoints",) or match is None or int(match.group(1)) not in steps:
            problems.append(
                f"config key '{key}': {path!r} is not an output of zoo run {run!r}; expected "
                f"results/zoo/{run}/final or results/zoo/{run}/checkpoints/step-<N> with N in "
                f"zoo.runs.{run}.checkpoints {steps}"
            )
    return problems


# --------------------------------------------------------------------------- data


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

    zoo = validate_zoo(zoo)
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
        "tokenizer_sha256": _file_sha256(Path(tokenizer_dir) / "tokenizer.json"),
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


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(zoo: dict[str, Any], seed: int, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Train the zoo's byte-level BPE on the corpora's training split; save it to ``out_dir``.

    Saved as a ``PreTrainedTokenizerFast`` (bos = eos = ``<|endoftext|>``, no
    pad), loadable with ``AutoTokenizer.from_pretrained(out_dir)``; provenance
    goes to ``out_dir/zoo_tokenizer.json``. Returns that provenance.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    zoo = validate_zoo(zoo)
    settings = zoo["tokenizer"]
    started = time.perf_counter()
    texts, corpora_info = [], {}
    for corpus, (frame, info) in training_documents(zoo, seed).items():
        chars = 0
        for text in frame["text"]:
            if chars >= settings["max_chars"]:
                break
            texts.append(text)
            chars += len(text)
        corpora_info[corpus] = {
            "corpus_sha256": info["corpus_sha256"],
            "train_sha256": info["workload_sha256"],
            "n_docs_train": info["n_docs"],
            "n_chars_used": chars,
        }
    log.info("training a %d-token BPE on %d documents", settings["vocab_size"], len(texts))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=settings["vocab_size"],
        min_frequency=settings["min_frequency"],
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    info = {
        "vocab_size": len(fast),
        "settings": settings,
        "seed": seed,
        "heldout_fraction": zoo["heldout_fraction"],
        "corpora": corpora_info,
        "tokenizer_sha256": _file_sha256(out_dir / "tokenizer.json"),
        "wall_time_s": time.perf_counter() - started,
        "versions": provenance.package_versions(),
    }
    provenance.write_json(info, out_dir / TOKENIZER_INFO)
    log.info("tokenizer: %d tokens, saved to %s", len(fast), out_dir)
    return info


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Recipe:
    """How one recipe builds its transformers config; ``arch`` is the registry's class."""

    arch: str
    build: Callable[[dict[str, Any], dict[str, Any]], Any]


def _llama_width(hidden: int) -> int:
    """SwiGLU width ``8/3 * hidden`` rounded up to a multiple of 8 (Llama's rule)."""
    return 8 * math.ceil(8 * hidden / 3 / 8)


def _gpt2(spec: dict[str, Any], common: dict[str, Any]) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        n_embd=spec["hidden_size"],
        n_layer=spec["num_layers"],
        n_head=spec["num_heads"],
        n_inner=spec.get("intermediate_size", 4 * spec["hidden_size"]),
        n_positions=common.pop("max_position_embeddings"),
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=spec.get("tie_word_embeddings", True),
        **common,
    )


def _llama_common(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "hidden_size": spec["hidden_size"],
        "num_hidden_layers": spec["num_layers"],
        "num_attention_heads": spec["num_heads"],
        "num_key_value_heads": spec.get("num_kv_heads", spec["num_heads"]),
        "attention_dropout": 0.0,
        "tie_word_embeddings": spec.get("tie_word_embeddings", False),
    }


def _llama(spec: dict[str, Any], common: dict[str, Any]) -> Any:
    from transformers import LlamaConfig

    width = spec.get("intermediate_size", _llama_width(spec["hidden_size"]))
    return LlamaConfig(intermediate_size=width, **_llama_common(spec), **common)


def _mixtral(spec: dict[str, Any], common: dict[str, Any]) -> Any:
    from transformers import MixtralConfig

    width = spec.get("intermediate_size", _llama_width(spec["hidden_size"]))
    return MixtralConfig(
        intermediate_size=width,
        num_local_experts=spec["num_experts"],
        num_experts_per_tok=spec["experts_per_token"],
        router_aux_loss_coef=spec.get("router_aux_loss_coef", 0.01),
        **_llama_common(spec),
        **common,
    )


def _olmoe(spec: dict[str, Any], common: dict[str, Any]) -> Any:
    from transformers import OlmoeConfig

    width = spec.get("intermediate_size", _llama_width(spec["hidden_size"]))
    return OlmoeConfig(
        intermediate_size=width,
        num_experts=spec["num_experts"],
        num_experts_per_tok=spec["experts_per_token"],
        router_aux_loss_coef=spec.get("router_aux_loss_coef", 0.01),
        **_llama_common(spec),
        **common,
    )


def _mamba2(spec: dict[str, Any], common: dict[str, Any]) -> Any:
    from transformers import Mamba2Config

    common.pop("max_position_embeddings")
    expand = spec.get("expand", 2)
    head_dim = spec.get("head_dim", 32)
    return Mamba2Config(
        hidden_size=spec["hidden_size"],
        num_hidden_layers=spec["num_layers"],
        expand=expand,
        head_dim=head_dim,
        num_heads=expand * spec["hidden_size"] // head_dim,
        state_size=spec.get("state_size", 32),
        n_groups=1,
        conv_kernel=4,
        chunk_size=spec.get("chunk_size", 64),
        tie_word_embeddings=spec.get("tie_word_embeddings", False),
        **common,
    )


#: recipe -> how to build its config. Adding a recipe is adding an entry here.
RECIPES: dict[str, Recipe] = {
    "gpt2": Recipe("dense", _gpt2),
    "llama": Recipe("dense", _llama),
    "mixtral": Recipe("moe", _mixtral),
    "olmoe": Recipe("moe", _olmoe),
    "mamba2": Recipe("ssm", _mamba2),
}


def build_model_config(spec: dict[str, Any], tokenizer: Any, seq_len: int) -> Any:
    """The transformers config of a run (``run_spec``) for ``tokenizer`` and ``seq_len``."""
    eos = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    common = {
        "vocab_size": len(tokenizer),
        "bos_token_id": eos,
        "eos_token_id": eos,
        "pad_token_id": None,  # no padding: a pad id would freeze that token's embedding
        "max_position_embeddings": seq_len,
        "use_cache": True,
    }
    return RECIPES[spec["recipe"]].build(spec, common)


def state_sha256(model: torch.nn.Module) -> str:
    """sha256 over the model's state dict (names, shapes, float32 bytes, sorted by name)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """``total_params`` (tied weights once) and ``active_params`` per token.

    active = total − Σ_MoE-layers (1 − k/E) · (expert weights), with E experts
    and k routed per token; dense and SSM models have active = total.
    """

    total = sum(parameter.numel() for parameter in model.parameters())
    top_k = getattr(model.config, "num_experts_per_tok", None)
    inactive = 0.0
    for module in model.modules():
        experts = getattr(module, "num_experts", None)
        if top_k and experts and hasattr(module, "gate_up_proj"):
            weights = sum(parameter.numel() for parameter in module.parameters(recurse=True))
            inactive += weights * (1 - top_k / experts)
    return {"total_params": int(total), "active_params": int(round(total - inactive))}


# --------------------------------------------------------------------------- training


def learning_rate(step: int, steps: int, training: dict[str, Any]) -> float:
    """lr of update ``step`` (1-based) of ``steps``.

    warmup w = max(1, round(warmup_fraction·steps)): lr·step/w for step ≤ w; then
    with p = (step − w)/(steps − w): cosine lr·(r + (1−r)·½(1 + cos πp)) or linear
    lr·(1 − (1−r)p), r = min_lr_ratio.
    """
    peak, ratio = training["learning_rate"], training["min_lr_ratio"]
    warmup = max(1, round(training["warmup_fraction"] * steps))
    if step <= warmup:
        return peak * step / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    if training["schedule"] == "linear":
        return peak * (1 - (1 - ratio) * progress)
    return peak * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Deterministic CPU torch with ``threads`` threads; restores the previous settings."""
    import torch

    fill = torch.utils.deterministic
    previous = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        fill.fill_uninitialized_memory,
    )
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    # Filling every torch.empty with NaN costs ~10% of a step and changes no result.
    fill.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])
        fill.fill_uninitialized_memory = previous[2]


def _optimizer(model: torch.nn.Module, training: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW; decay only on matrices that are not embeddings (norm gains and biases are 1-D)."""
    import torch

    embeddings = {
        id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()
    }
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.ndim >= 2 and id(parameter) not in embeddings:
            decay.append(parameter)
        else:
            no_decay.append(parameter)
    groups = [
        {"params": decay, "weight_decay": training["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=training["learning_rate"], betas=(training["beta1"], training["beta2"])
    )


def _loss(model: torch.nn.Module, batch: torch.Tensor, moe_coef: float | None) -> tuple:
    """(training loss, next-token cross entropy in nats) of one batch."""
    import torch

    kwargs = {"output_router_logits": True} if moe_coef is not None else {}
    outputs = model(input_ids=batch, use_cache=False, **kwargs)
    logits = outputs.logits[:, :-1]
    lm_loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1)
    )
    if moe_coef is not None and getattr(outputs, "aux_loss", None) is not None:
        return lm_loss + moe_coef * outputs.aux_loss, lm_loss
    return lm_loss, lm_loss


def _save(model: Any, tokenizer: Any, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def train_run(
    run: str,
    zoo: dict[str, Any],
    seed: int,
    tokenizer_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    base_dir: str | os.PathLike | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """Train zoo run ``run`` and write ``out_dir`` (see the module docstring); return train.json.

    ``final_loss`` in train.json is the mean training loss of the last 5% of steps
    (``final_loss_steps`` of them); ``data_sources`` gives, per source, the corpus
    hashes, the windows used and available, and the epochs started.

    A run with ``init_from`` starts from ``base_dir/final`` (the base run's
    output directory) and must use the same tokenizer.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    zoo = validate_zoo(zoo)
    spec = run_spec(zoo, run)
    training = spec["training"]
    seq_len, batch_size = training["seq_len"], training["batch_size"]
    steps = total_steps(zoo, run)
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer_sha = _file_sha256(Path(tokenizer_dir) / "tokenizer.json")
    base_final = None
    if spec.get("init_from"):
        if base_dir is None:
            raise ZooError(f"zoo run {run!r} starts from {spec['init_from']!r}: pass base_dir")
        base_final = Path(base_dir) / "final"
        base_tokenizer = AutoTokenizer.from_pretrained(base_final)
        if base_tokenizer.backend_tokenizer.to_str() != tokenizer.backend_tokenizer.to_str():
            raise ZooError(
                f"zoo run {run!r}: base {base_final} was trained with another tokenizer "
                f"than {tokenizer_dir}; retrain run {spec['init_from']!r}"
            )

    data_info = provenance.read_json(Path(data_dir) / DATA_INFO)
    if data_info["tokenizer_sha256"] != tokenizer_sha or data_info["seq_len"] != seq_len:
        raise ZooError(
            f"zoo data {data_dir} was encoded with another tokenizer or seq_len than "
            f"{tokenizer_dir} and zoo.training.seq_len {seq_len}; rerun rule zoo_data"
        )
    weights = task_sources(zoo, spec["task"])
    windows = load_windows(data_dir, list(weights))
    plan, counts = window_plan(windows, weights, steps * batch_size, seed)
    sources = {
        name: {**data_info["sources"][name], **counts[name], "weight": weight}
        for name, weight in weights.items()
    }
    data_sha = hashlib.sha256(plan.astype("<i4").tobytes()).hexdigest()

    started = time.perf_counter()
    with deterministic(threads):
        torch.manual_seed(seed)
        if spec.get("init_from"):
            model = AutoModelForCausalLM.from_pretrained(base_final, dtype=torch.float32)
        else:
            config = build_model_config(spec, tokenizer, seq_len)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        params = count_parameters(model)
        init_sha = state_sha256(model)
        moe_coef = getattr(model.config, "router_aux_loss_coef", None)
        if not getattr(model.config, "num_experts_per_tok", None):
            moe_coef = None
        log.info(
            "run %s: %s (%s), %d params (%d active), %d steps x %d x %d tokens, task %s",
            run,
            model.config.model_type,
            spec["recipe"],
            params["total_params"],
            params["active_params"],
            steps,
            batch_size,
            seq_len,
            spec["task"],
        )
        optimizer = _optimizer(model, training)
        model.train()
        checkpoints = set(spec["checkpoints"])
        rows = []
        tokens = 0
        bar = tqdm(range(1, steps + 1), desc=f"zoo {run}", unit="step", mininterval=2.0)
        for step in bar:
            lr = learning_rate(step, steps, training)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = torch.from_numpy(plan[(step - 1) * batch_size : step * batch_size])
            loss, lm_loss = _loss(model, batch, moe_coef)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if training["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), training["grad_clip"])
            optimizer.step()
            tokens += batch.numel()
            value = float(lm_loss.detach())
            if not math.isfinite(value):
                raise ZooError(
                    f"zoo run {run!r}: loss is {value} at step {step}; lower "
                    f"'zoo.runs.{run}.learning_rate' or 'zoo.training.learning_rate'"
                )
            rows.append((step, tokens, value, lr))
            elapsed = time.perf_counter() - started
            bar.set_postfix(
                loss=f"{value:.3f}", tok_s=f"{tokens / max(elapsed, 1e-9):.0f}", refresh=False
            )
            if step == 1 or step % max(1, steps // 10) == 0 or step == steps:
                log.info(
                    "run %s step %d/%d: loss %.4f, lr %.2e, %.0f tok/s",
                    run,
                    step,
                    steps,
                    value,
                    lr,
                    tokens / max(elapsed, 1e-9),
                )
            if step in checkpoints:
                model.eval()
                _save(model, tokenizer, out_dir / "checkpoints" / f"step-{step}")
                model.train()
        wall = time.perf_counter() - started
        model.eval()
        _save(model, tokenizer, out_dir / "final")

    _write_loss_csv(rows, out_dir / "loss.csv")
    plot_loss(rows, out_dir / "loss.png", title=f"zoo run {run}")
    tail = [row[2] for row in rows[-max(1, len(rows) // 20) :]]
    info = {
        "run": run,
        "recipe": spec["recipe"],
        "arch": RECIPES[spec["recipe"]].arch,
        "model_type": model.config.model_type,
        "task": spec["task"],
        "init_from": spec.get("init_from"),
        "seed": seed,
        "threads": threads,
        "steps": steps,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "tokens_seen": tokens,
        "checkpoints": sorted(checkpoints),
        "training": training,
        "spec": {k: v for k, v in spec.items() if k != "training"},
        "model_config": model.config.to_dict(),
        **params,
        "initial_loss": rows[0][2],
        "final_loss": float(np.mean(tail)),
        "final_loss_steps": len(tail),
        "wall_time_s": wall,
        "tokens_per_s": tokens / max(wall, 1e-9),
        "data_sha256": data_sha,
        "init_weights_sha256": init_sha,
        "final_weights_sha256": state_sha256(model),
        "tokenizer_sha256": tokenizer_sha,
        "data_sources": sources,
        "versions": provenance.package_versions(),
    }
    provenance.write_json(info, out_dir / "train.json")
    log.info(
        "run %s done: loss %.3f -> %.3f over %d tokens in %.0f s (%.0f tok/s)",
        run,
        info["initial_loss"],
        info["final_loss"],
        tokens,
        wall,
        info["tokens_per_s"],
    )
    return info


def _write_loss_csv(rows: list[tuple], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["step", "tokens", "loss", "lr"])
        for step, tokens, loss, lr in rows:
            writer.writerow([step, tokens, repr(loss), repr(lr)])


def plot_loss(rows: list[tuple], path: str | os.PathLike, title: str = "") -> None:
    """Training loss (nats/token; per step, and its mean over the last 5% of steps) and the
    learning rate against tokens seen, to ``path``."""
    from matplotlib.figure import Figure

    tokens = np.array([row[1] for row in rows])
    loss = np.array([row[2] for row in rows])
    width = max(1, len(rows) // 20)
    smooth = np.convolve(loss, np.ones(width) / width, mode="valid")
    figure = Figure(figsize=(6, 3.5), dpi=100)
    axis = figure.add_subplot()
    axis.plot(tokens, loss, color="C0", linewidth=0.6, alpha=0.35, label="per step")
    axis.plot(tokens[width - 1 :], smooth, color="C0", linewidth=1.5, label=f"mean of {width}")
    axis.set_xlabel("tokens seen")
    axis.set_ylabel("loss (nats/token)", color="C0")
    axis.legend(loc="upper right", frameon=False)
    rate = axis.twinx()
    rate.plot(tokens, [row[3] for row in rows], color="C1", linewidth=0.8, alpha=0.7)
    rate.set_ylabel("learning rate", color="C1")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})


def loss_curve(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of ``run_dir/loss.csv`` as dicts (step, tokens, loss, lr)."""
    with (Path(run_dir) / "loss.csv").open() as handle:
        return [
            {
                "step": int(row["step"]),
                "tokens": int(row["tokens"]),
                "loss": float(row["loss"]),
                "lr": float(row["lr"]),
            }
            for row in csv.DictReader(handle)
        ]
