"""Benchmark: exitbench's lens reduction beside its floor and a naive reference, side by side.

All methods run in one process on the same random, tiny-but-wide Llama (d=512,
8 blocks = 9 lens layers 0..8) and the same tokens, for each vocabulary size:

- **floor**: the work no lens can avoid: one forward pass with hidden states,
  then each lens layer's head (final norm, head matmul, post-head transform)
  over all tokens, results discarded (``2 d V`` FLOPs per token and layer);
- **exitbench**: ``extract.reduce_layers`` (one forward with hidden states,
  then per chunk of tokens and per layer: head, float32 reduction, never more
  than a chunk x V of logits alive); the chunk is ``extract.chunk_tokens`` of
  the vocabulary unless ``--token-chunk`` fixes it;
- **naive**: ``model(..., output_hidden_states=True)``, then every layer's
  float32 logits for all tokens stacked into one [layers x tokens x V] tensor,
  softmax, log_softmax, top-k of the probabilities, entropy and KL to the final
  layer over the whole stack;
- **fused** (CUDA only): ``exitbench.fused``, the vocabulary-tiled reduction
  that never writes a [tokens x V] logits tensor.

Reported per vocabulary (median of ``--repeats`` alternating runs): tokens/s of
each method, exitbench/naive speed, exitbench/naive peak memory (above the
pre-call baseline; CPU: process RSS sampled every millisecond by a thread;
CUDA: ``torch.cuda.max_memory_allocated``) and exitbench time / floor time.
On CUDA the model runs in bfloat16. A correctness check compares exitbench's
(and fused's) top-1, entropy and KL with naive's.

    .venv/bin/python benchmarks/extract_bench.py            # full run (minutes on 2 cores)
    .venv/bin/python benchmarks/extract_bench.py --quick    # smoke run (seconds)
    .venv/bin/python benchmarks/extract_bench.py --json rows.json

Goals on CPU at every vocabulary: exitbench >= 1.5x naive tokens/s, <= 1/4 of
its peak memory, <= 1.5x the floor time; on a GPU the fused path <= 1.2x floor.
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
from exitbench import fused as fused_lens
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
    with torch.device(device):  # initialise on the device: a 262k x 2048 head is slow on CPU
        model = AutoModelForCausalLM.from_config(config).to(dtype=dtype).eval()
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


def floor_pass(lens: LogitLens, input_ids, attention_mask) -> None:
    """The floor: forward with hidden states, then every lens layer's head over all tokens."""
    with torch.inference_mode():
        hidden_states = lens.forward_hidden_states(input_ids, attention_mask)
        real = attention_mask.reshape(-1).bool()
        for layer in lens.layer_numbers:
            hidden = lens.hidden_state(hidden_states, layer)
            lens.decode(hidden.reshape(-1, hidden.shape[-1])[real], layer)  # discarded


def bench_vocab(
    args: argparse.Namespace, vocab: int, device: str, dtype: torch.dtype
) -> list[dict]:
    """One row per token chunk: exitbench beside the floor, naive (and fused on CUDA)."""
    model, lens = build_model(vocab, args.layers, args.hidden, dtype, device)
    generator = torch.Generator().manual_seed(1)
    n_windows = max(1, args.tokens // args.seq_len)
    input_ids = torch.randint(0, vocab, (n_windows, args.seq_len), generator=generator).to(device)
    attention_mask = torch.ones_like(input_ids)
    n_tokens = int(attention_mask.sum())
    chunks = args.token_chunk or [extract.chunk_tokens(vocab)]

    methods: dict[str, Callable[[], Any]] = {
        "floor": partial(floor_pass, lens, input_ids, attention_mask),
        "naive": lambda: naive_reduce(model, lens, input_ids, attention_mask, args.top_k),
    }
    for chunk in chunks:
        methods[f"chunk{chunk}"] = partial(
            extract.reduce_layers, lens, input_ids, attention_mask, args.top_k, chunk
        )
    if device.startswith("cuda"):
        fused_run = partial(
            extract.reduce_layers,
            lens,
            input_ids,
            attention_mask,
            args.top_k,
            chunks[0],
            fused=True,
        )
        methods["fused"] = partial(_with_compile, False, fused_run)
        methods["fused_compiled"] = partial(_with_compile, True, fused_run)
    for name, fn in methods.items():  # warm-up (allocator, kernels, compilation), not measured
        if name != "naive":
            fn()
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
    median_s = {name: statistics.median(run["seconds"]) for name, run in runs.items()}
    peak_mib = {name: max(run["peak_bytes"]) / 2**20 for name, run in runs.items()}
    rows = []
    for chunk in chunks:
        name = f"chunk{chunk}"
        seconds = median_s[name]
        row = {
            "vocab": vocab,
            "tokens": n_tokens,
            "layers": len(lens.layer_numbers),
            "token_chunk": chunk,
            "floor_s": median_s["floor"],
            "exitbench_s": seconds,
            "naive_s": median_s["naive"],
            "floor_tok_s": n_tokens / median_s["floor"],
            "exitbench_tok_s": n_tokens / seconds,
            "naive_tok_s": n_tokens / median_s["naive"],
            "speed_vs_naive": median_s["naive"] / seconds,
            "floor_peak_mib": peak_mib["floor"],
            "exitbench_peak_mib": peak_mib[name],
            "naive_peak_mib": peak_mib["naive"],
            "memory_vs_naive": peak_mib[name] / max(peak_mib["naive"], 1e-9),
            "time_vs_floor": seconds / median_s["floor"],
            "fused_tok_s": None,
            "fused_time_vs_floor": None,
            "fused_peak_mib": None,
            **_agreement(results[name], results["naive"]),
        }
        for fused in ("fused", "fused_compiled"):
            if fused in runs:
                row[f"{fused}_tok_s"] = n_tokens / median_s[fused]
                row[f"{fused}_time_vs_floor"] = median_s[fused] / median_s["floor"]
                row[f"{fused}_peak_mib"] = peak_mib[fused]
                agree = _agreement(results[fused], results[name])
                row.update({f"{fused}_vs_eager_{key}": value for key, value in agree.items()})
        rows.append(row)
    return rows


def _with_compile(compile: bool, run: Callable[[], Any]) -> Any:
    """``run()`` with ``fused.COMPILE_ON_CUDA`` set to ``compile`` (the CUDA fused path)."""
    previous, fused_lens.COMPILE_ON_CUDA = fused_lens.COMPILE_ON_CUDA, compile
    try:
        return run()
    finally:
        fused_lens.COMPILE_ON_CUDA = previous


def _agreement(ours: dict, other: dict) -> dict[str, float]:
    """Top-1 agreement and largest entropy / KL differences of two methods' results."""

    def column(result: dict, name: str) -> torch.Tensor:
        value = result[name]
        return torch.as_tensor(value).cpu().double()

    return {
        "top1_agree": float((column(ours, "top1") == column(other, "top1")).double().mean()),
        "max_abs_diff_entropy": float(
            (column(ours, "entropy") - column(other, "entropy")).abs().max()
        ),
        "max_abs_diff_kl": float(
            (column(ours, "kl_to_final") - column(other, "kl_to_final")).abs().max()
        ),
    }


VOCABS = [32000, 50257, 128256, 262144]  # Llama-2/Mistral, GPT-2/Pythia, Llama-3, Gemma


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small vocab and tokens")
    parser.add_argument("--vocab", type=int, nargs="+", default=VOCABS)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per window")
    parser.add_argument("--layers", type=int, default=8, help="transformer blocks (lens: +1)")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument(
        "--token-chunk",
        type=int,
        nargs="+",
        default=None,
        help="exitbench chunk sizes (default: extract.chunk_tokens of each vocabulary)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, else float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.vocab, args.tokens, args.seq_len, args.layers, args.repeats = [8192], 64, 32, 4, 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    default_dtype = "bfloat16" if device.startswith("cuda") else "float32"
    dtype = getattr(torch, args.dtype or default_dtype)
    logger.info("device %s, dtype %s, %d torch threads", device, dtype, torch.get_num_threads())
    rows = [row for vocab in args.vocab for row in bench_vocab(args, vocab, device, dtype)]
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width table, one line per (vocab, chunk)."""
    fused = any(row["fused_tok_s"] is not None for row in rows)
    compiled = any(row.get("fused_compiled_tok_s") is not None for row in rows)
    lines = [
        f"{'vocab':>7} {'tokens':>6} {'chunk':>5} | {'floor tok/s':>11} {'ours tok/s':>10} "
        f"{'naive tok/s':>11} | {'speed':>6} {'memory':>6} {'vs floor':>8}"
        + (f" | {'fused tok/s':>11} {'vs floor':>8}" if fused else "")
        + (f" | {'compiled tok/s':>14} {'vs floor':>8}" if compiled else "")
        + f" | {'top1 agree':>10} {'dH max':>8} {'dKL max':>8}"
    ]
    for row in rows:
        lines.append(
            f"{row['vocab']:>7} {row['tokens']:>6} {row['token_chunk']:>5} | "
            f"{row['floor_tok_s']:>11.1f} {row['exitbench_tok_s']:>10.1f} "
            f"{row['naive_tok_s']:>11.1f} | {row['speed_vs_naive']:>5.2f}x "
            f"{row['memory_vs_naive']:>6.3f} {row['time_vs_floor']:>7.2f}x"
            + (
                f" | {row['fused_tok_s']:>11.1f} {row['fused_time_vs_floor']:>7.2f}x"
                if row["fused_tok_s"] is not None
                else (f" | {'-':>11} {'-':>8}" if fused else "")
            )
            + (
                f" | {row['fused_compiled_tok_s']:>14.1f} "
                f"{row['fused_compiled_time_vs_floor']:>7.2f}x"
                if row.get("fused_compiled_tok_s") is not None
                else ""
            )
            + f" | {row['top1_agree']:>10.4f} {row['max_abs_diff_entropy']:>8.1e} "
            f"{row['max_abs_diff_kl']:>8.1e}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
