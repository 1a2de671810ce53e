"""Benchmark of the score stage on a synthetic lens of ~10M rows.

Builds ``--tokens`` tokens x ``--layers`` (+ layer 0) rows of plausible lens
values (each token saturates at a random layer; confidence grows with depth),
writes them as Parquet shards through ``exitbench.tables``, then times

(a) reading only the columns the score stage needs (``shards.LENS_COLUMNS``), and
(b) the full scoring (read, pivot, curves, policies, bootstrap),

and prints rows/s of both and their ratio (goal: (b) within 3x of (a)), medians of
``--repeats`` alternating repeats.

BLAS runs on one thread, as in the pipeline: the score rule is a one-thread job, and
Snakemake sets ``OPENBLAS_NUM_THREADS`` (and OMP/MKL/...) to a job's threads. With the
default (one BLAS thread per core) the bootstrap's small matrix products spin threads
for nothing on a busy machine. Set ``OPENBLAS_NUM_THREADS`` yourself to override.

    .venv/bin/python benchmarks/score_bench.py            # 400k tokens x 25 layers
    .venv/bin/python benchmarks/score_bench.py --tokens 40000   # quick
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

# the score job's environment (threads: 1), set before numpy loads its BLAS
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from exitbench import score, shards, tables  # noqa: E402
from exitbench.config import section_defaults  # noqa: E402

log = logging.getLogger("score_bench")


def synthetic_lens(
    out_dir: Path,
    n_tokens: int = 400_000,
    num_layers: int = 24,
    seq_len: int = 256,
    windows_per_doc: int = 4,
    n_shards: int = 16,
    vocab: int = 32_000,
    top_k: int = 5,
    seed: int = 0,
) -> tuple[list[Path], Path, dict]:
    """Write a tokens table, lens shards (layers 0..L) and return (shards, tokens, model_info)."""
    rng = np.random.default_rng(seed)
    n_windows = -(-n_tokens // seq_len)
    lengths = np.full(n_windows, seq_len, dtype=np.int32)
    lengths[-1] = n_tokens - seq_len * (n_windows - 1)
    seq_ids = np.arange(n_windows, dtype=np.int64)
    doc_ids = [f"doc{w // windows_per_doc:06d}" for w in range(n_windows)]
    ids = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)),
        pa.array(rng.integers(0, vocab, n_tokens, dtype=np.int32)),
    )
    tokens = pa.table({"seq_id": seq_ids, "doc_id": doc_ids, "input_ids": ids, "n_tokens": lengths})
    tokens_path = tables.write_table(tokens, out_dir / "tokens.parquet", "tokens")

    n_layers = num_layers + 1
    final = rng.integers(0, vocab, n_tokens, dtype=np.int32)
    gold = np.where(rng.random(n_tokens) < 0.4, final, rng.integers(0, vocab, n_tokens)).astype(
        np.int32
    )
    last_pos = np.zeros(n_tokens, dtype=bool)
    last_pos[np.cumsum(lengths) - 1] = True
    saturation = rng.integers(1, num_layers + 1, n_tokens)
    depth = np.arange(n_layers)[None, :]
    top1 = np.where(
        depth >= saturation[:, None], final[:, None], rng.integers(0, vocab, (n_tokens, n_layers))
    ).astype(np.int32)
    confidence = 1 / (
        1 + np.exp(-(depth - saturation[:, None] + rng.normal(0, 1.5, (n_tokens, n_layers))))
    )
    maxprob = (0.05 + 0.94 * confidence).astype(np.float32)
    margin = (maxprob * rng.uniform(0.3, 1.0, maxprob.shape)).astype(np.float32)
    entropy = (-np.log(maxprob) * 3).astype(np.float32)
    cos_prev = np.clip(0.5 + 0.5 * confidence + rng.normal(0, 0.05, maxprob.shape), -1, 1).astype(
        np.float32
    )
    pos = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
    token_seq = np.repeat(seq_ids, lengths)

    bounds = np.linspace(0, n_windows, n_shards + 1).astype(int)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    paths = []
    for shard in range(n_shards):
        lo, hi = offsets[bounds[shard]], offsets[bounds[shard + 1]]
        n = hi - lo
        rows = n * n_layers

        def flat(a: np.ndarray, lo: int = lo, hi: int = hi) -> np.ndarray:
            return a[lo:hi].reshape(-1)

        topk_ids = pa.ListArray.from_arrays(
            pa.array(np.arange(0, rows * top_k + 1, top_k, dtype=np.int32)),
            pa.array(np.repeat(flat(top1), top_k)),
        )
        topk_lp = pa.ListArray.from_arrays(
            pa.array(np.arange(0, rows * top_k + 1, top_k, dtype=np.int32)),
            pa.array(np.repeat(np.log(flat(maxprob)), top_k)),
        )
        gold_rows = np.repeat(gold[lo:hi], n_layers)
        null_gold = np.repeat(last_pos[lo:hi], n_layers)
        cos_rows = flat(cos_prev).copy()
        cos_null = np.tile(np.arange(n_layers) == 0, n)
        table = pa.table(
            {
                "seq_id": np.repeat(token_seq[lo:hi], n_layers),
                "pos": np.repeat(pos[lo:hi], n_layers),
                "layer": np.tile(np.arange(n_layers, dtype=np.int16), n),
                "top1": flat(top1),
                "topk_ids": topk_ids,
                "topk_logprobs": topk_lp,
                "maxprob": flat(maxprob),
                "margin": flat(margin),
                "entropy": flat(entropy),
                "logprob_final_top1": np.log(flat(maxprob)),
                "gold": pa.array(gold_rows, mask=null_gold),
                "logprob_gold": pa.array(np.log(flat(maxprob)), mask=null_gold),
                "kl_to_final": (1 - flat(confidence)).astype(np.float32),
                "cos_prev": pa.array(cos_rows, mask=cos_null),
            }
        )
        paths.append(tables.write_table(table, out_dir / f"shard-{shard}.parquet", "lens"))
    model_info = {
        "name": "synthetic",
        "model_type": "llama",
        "num_layers": num_layers,
        "layer_numbers": list(range(n_layers)),
        "config": {
            "model_type": "llama",
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": num_layers,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "vocab_size": vocab,
        },
    }
    return paths, tokens_path, model_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=400_000)
    parser.add_argument("--layers", type=int, default=24, help="L (layer 0 is added)")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        start = time.perf_counter()
        paths, tokens_path, model_info = synthetic_lens(
            Path(tmp), n_tokens=args.tokens, num_layers=args.layers, n_shards=args.shards
        )
        rows = args.tokens * (args.layers + 1)
        log.info(
            "wrote %d rows in %d shards in %.1f s", rows, len(paths), time.perf_counter() - start
        )
        params = {**section_defaults("score"), "bootstrap": args.bootstrap, "seq_len": 256}
        read_times, score_times = [], []
        for _ in range(args.repeats):
            read_times.append(_timed(lambda: [_read(path) for path in paths]))
            score_times.append(
                _timed(lambda: score.score_lens(paths, tokens_path, model_info, params, seed=0))
            )
        read_s, read_cpu = (statistics.median(t) for t in zip(*read_times, strict=True))
        score_s, score_cpu = (statistics.median(t) for t in zip(*score_times, strict=True))
        log.info(
            "medians of %d repeats, OPENBLAS_NUM_THREADS=%s",
            args.repeats,
            os.environ["OPENBLAS_NUM_THREADS"],
        )
        log.info(
            "(a) read needed columns: %.2f s wall, %.2f s CPU  (%.2fM rows/s)",
            read_s,
            read_cpu,
            rows / read_s / 1e6,
        )
        log.info(
            "(b) full scoring:        %.2f s wall, %.2f s CPU  (%.2fM rows/s)",
            score_s,
            score_cpu,
            rows / score_s / 1e6,
        )
        log.info(
            "ratio (b)/(a): %.2f wall, %.2f CPU (goal <= 3)", score_s / read_s, score_cpu / read_cpu
        )


def _read(path: Path) -> pa.Table:
    return tables.read_table(path, "lens", columns=shards.LENS_COLUMNS)


def _timed(function) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


if __name__ == "__main__":
    main()
