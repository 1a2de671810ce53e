"""Benchmark: exitbench's chunked lens reduction against a naive reference, side by side.

Both run in one process on the same random, tiny-but-wide Llama (d=512, 8
blocks = 9 lens layers 0..8) and the same tokens, for each vocabulary size:

- **exitbench**: ``extract.reduce_layers`` (one forward with hidden states,
  then per chunk of ``--token-chunk`` tokens and per layer: head, float32
  reduction, never more than token_chunk x V logits alive), for each chunk
  size given (larger chunks make the head matmul more efficient: on CPU the
  head weight is streamed from memory once per chunk and layer);
- **naive**: ``model(..., output_hidden_states=True)``, then every layer's
  float32 logits for all tokens stacked into one [layers x tokens x V] tensor,
  softmax, log_softmax, top-k of the probabilities, entropy and KL to the final
  layer over the whole stack.

Reported per method: tokens/s (median of ``--repeats`` alternating runs),
peak memory above the pre-call baseline (CPU: process RSS sampled every
millisecond by a thread; CUDA: ``torch.cuda.max_memory_allocated``), and the
ratios exitbench/naive. On CUDA the model runs in bfloat16 and the forward
pass alone is timed too. A correctness check compares both methods' top-1,
entropy and KL.

    .venv/bin/python benchmarks/extract_bench.py            # full run (minutes on 2 cores)
    .venv/bin/python benchmarks/extract_bench.py --quick    # smoke run (seconds)

Goal on CPU at V=131072: exitbench >= 2x naive tokens/s at <= 1/4 of its peak memory.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import statistics
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import psutil
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from exitbench import extract
from exitbench.lens import LogitLens

logger = logging.getLogger("exitbench.bench")


def build_model(vocab: int, layers: int, hidden: int, dtype: torch.dtype, device: str):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype).eval()
    return model, LogitLens.from_model(model)


def naive_reduce(model, lens: LogitLens, input_ids, attention_mask, top_k: int) -> dict:
    """The obvious implementation: all layers' full-vocabulary float32 logits at once."""
    with torch.inference_mode():
        output = model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
        )
        hidden_states = output.hidden_states
        real = attention_mask.reshape(-1).bool()
        logits = torch.stack(
            [
                lens.decode(lens.hidden_state(hidden_states, layer), layer)
                .float()
                .reshape(-1, model.config.vocab_size)[real]
                for layer in lens.layer_numbers
            ]
        )  # [layers, tokens, V]
        probs = torch.softmax(logits, -1)
        logprobs = torch.log_softmax(logits, -1)
        top = torch.topk(probs, max(top_k, 2), dim=-1)
        entropy = -(probs * logprobs).sum(-1)
        kl = (probs[-1] * (logprobs[-1] - logprobs)).sum(-1)
        return {
            "top1": top.indices[..., 0].T.reshape(-1).cpu(),
            "maxprob": top.values[..., 0].T.reshape(-1).cpu(),
            "margin": (top.values[..., 0] - top.values[..., 1]).T.reshape(-1).cpu(),
            "entropy": entropy.T.reshape(-1).cpu(),
            "kl_to_final": kl.T.reshape(-1).cpu(),
        }


class PeakMemory:
    """Peak memory above the baseline at entry: RSS sampled by a thread (CPU) or CUDA's counter."""

    def __init__(self, device: str, interval_s: float = 0.001) -> None:
        self.device, self.interval_s = device, interval_s
        self.process = psutil.Process()
        self.peak_bytes = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        _malloc_trim()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
            return self
        self.baseline = self.process.memory_info().rss
        self.peak_rss = self.baseline
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            time.sleep(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self.baseline
            return
        self.running = False
        self.thread.join()
        self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
        self.peak_bytes = self.peak_rss - self.baseline


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS so each RSS baseline is honest (glibc only)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    """Wall seconds and result of ``fn()``."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def bench_vocab(
    args: argparse.Namespace, vocab: int, device: str, dtype: torch.dtype
) -> list[dict]:
    """One row per token chunk: exitbench at that chunk against the naive reference."""
    model, lens = build_model(vocab, args.layers, args.hidden, dtype, device)
    generator = torch.Generator().manual_seed(1)
    n_windows = max(1, args.tokens // args.seq_len)
    input_ids = torch.randint(0, vocab, (n_windows, args.seq_len), generator=generator).to(device)
    attention_mask = torch.ones_like(input_ids)
    n_tokens = int(attention_mask.sum())

    methods: dict[str, Callable[[], Any]] = {
        "naive": lambda: naive_reduce(model, lens, input_ids, attention_mask, args.top_k)
    }
    for chunk in args.token_chunk:
        methods[f"chunk{chunk}"] = partial(
            extract.reduce_layers, lens, input_ids, attention_mask, args.top_k, chunk
        )
    methods[f"chunk{args.token_chunk[0]}"]()  # warm-up (allocator, kernels), not measured
    runs: dict[str, dict[str, list[float]]] = {
        name: {"seconds": [], "peak_bytes": []} for name in methods
    }
    results: dict[str, Any] = {}
    for repeat in range(args.repeats):  # alternate methods so machine load hits all alike
        for name, fn in methods.items():
            with PeakMemory(device) as memory:
                seconds, results[name] = timed(fn, device)
            runs[name]["seconds"].append(seconds)
            runs[name]["peak_bytes"].append(memory.peak_bytes)
            logger.info(
                "V=%d repeat %d %s: %.2f s, peak +%.0f MiB",
                vocab,
                repeat,
                name,
                seconds,
                memory.peak_bytes / 2**20,
            )
    naive_s = statistics.median(runs["naive"]["seconds"])
    naive_peak = max(runs["naive"]["peak_bytes"]) / 2**20
    forward_s = None
    if device.startswith("cuda"):
        forward_s = statistics.median(
            timed(lambda: lens.forward_hidden_states(input_ids, attention_mask), device)[0]
            for _ in range(args.repeats)
        )
    rows = []
    for chunk in args.token_chunk:
        run = runs[f"chunk{chunk}"]
        seconds = statistics.median(run["seconds"])
        peak = max(run["peak_bytes"]) / 2**20
        rows.append(
            {
                "vocab": vocab,
                "tokens": n_tokens,
                "layers": len(lens.layer_numbers),
                "token_chunk": chunk,
                "exitbench_s": seconds,
                "naive_s": naive_s,
                "exitbench_tok_s": n_tokens / seconds,
                "naive_tok_s": n_tokens / naive_s,
                "speedup": naive_s / seconds,
                "exitbench_peak_mib": peak,
                "naive_peak_mib": naive_peak,
                "memory_ratio": peak / max(naive_peak, 1e-9),
                "forward_s": forward_s,
                **_agreement(results[f"chunk{chunk}"], results["naive"]),
            }
        )
    return rows


def _agreement(ours: dict, naive: dict) -> dict[str, float]:
    return {
        "top1_agree": float(
            (torch.from_numpy(ours["top1"]).long() == naive["top1"]).float().mean()
        ),
        "max_abs_diff_entropy": float(
            (torch.from_numpy(ours["entropy"]) - naive["entropy"]).abs().max()
        ),
        "max_abs_diff_kl": float(
            (torch.from_numpy(ours["kl_to_final"]) - naive["kl_to_final"]).abs().max()
        ),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small vocab and tokens")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per window")
    parser.add_argument("--layers", type=int, default=8, help="transformer blocks (lens: +1)")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument(
        "--token-chunk", type=int, nargs="+", default=[64, 256], help="exitbench chunk sizes"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.vocab, args.tokens, args.seq_len, args.layers, args.repeats = [8192], 64, 32, 4, 1
        args.token_chunk = args.token_chunk[:1]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    logger.info("device %s, dtype %s, %d torch threads", device, dtype, torch.get_num_threads())
    rows = [row for vocab in args.vocab for row in bench_vocab(args, vocab, device, dtype)]
    header = (
        f"{'vocab':>7} {'tokens':>6} {'layers':>6} {'chunk':>5} | {'ours tok/s':>10} "
        f"{'naive tok/s':>11} {'speedup':>7} | {'ours MiB':>8} {'naive MiB':>9} {'mem ratio':>9}"
        + (f" | {'forward s':>9}" if device.startswith("cuda") else "")
        + f" | {'top1 agree':>10} {'dH max':>8} {'dKL max':>8}"
    )
    print(header)
    for row in rows:
        print(
            f"{row['vocab']:>7} {row['tokens']:>6} {row['layers']:>6} {row['token_chunk']:>5} | "
            f"{row['exitbench_tok_s']:>10.1f} {row['naive_tok_s']:>11.1f} "
            f"{row['speedup']:>6.2f}x | "
            f"{row['exitbench_peak_mib']:>8.0f} {row['naive_peak_mib']:>9.0f} "
            f"{row['memory_ratio']:>9.3f}"
            + (f" | {row['forward_s']:>9.4f}" if row["forward_s"] is not None else "")
            + f" | {row['top1_agree']:>10.4f} {row['max_abs_diff_entropy']:>8.1e} "
            f"{row['max_abs_diff_kl']:>8.1e}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
