"""Everything this project can only check on a GPU, in one run that prints one summary table.

Parts (each with its own time limit; the whole run stays under 8 minutes on one GPU):

1. ``bench``: ``extract_bench.py`` in bfloat16 on CUDA: floor, naive, eager and
   fused tokens/s, memory and time / floor at V = 32000, 50257, 128256, 262144;
2. ``agree-fp32`` / ``agree-bf16``: the fused (vocabulary-tiled, compiled)
   reduction against the eager one on the same model and tokens: float32 to
   1e-5, bfloat16 to 5e-2 (its logits round differently in two matmul shapes);
3. ``oom``: ``extract_shard`` under ``torch.cuda.set_per_process_memory_fraction``:
   a batch that does not fit is halved until it does, and the shard is complete;
4. ``study``: a tiny study (three tiny models built offline, as tests/conftest.py
   does) through ``snakemake --cores 4 --resources gpu=1`` with ``extract.device: cuda``;
5. ``decode``: ``benchmarks/decode_bench.py`` in bfloat16 on CUDA (``--quick`` on CPU).

    PYTHONPATH=workflow python benchmarks/gpu_check.py [--out DIR]
    PYTHONPATH=workflow python benchmarks/gpu_check.py --cpu-smoke   # the script's own flow on CPU

Installs nothing; runs offline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "workflow"), str(REPO)])}
BUDGET_S = 460  # the whole run (gpu_check.sh kills at 480); parts get what is left of it


class Check:
    """One part's outcome: status PASS / FAIL / SKIP, a one-line detail, seconds."""

    def __init__(self, part: str) -> None:
        self.part, self.status, self.detail, self.seconds = part, "SKIP", "", 0.0


def run_part(
    part: str, fn: Callable[[int], tuple[str, str]], started: float, limit_s: int
) -> Check:
    """Run one part with at most ``limit_s`` seconds, fewer where the budget has less left."""
    check = Check(part)
    left = int(BUDGET_S - (time.perf_counter() - started))
    if left < 30:
        check.detail = "skipped: the 8-minute budget is spent"
        return check
    t0 = time.perf_counter()
    try:
        check.status, check.detail = fn(min(limit_s, left))
    except Exception as err:  # noqa: BLE001 - every failure becomes a FAIL row
        check.status, check.detail = "FAIL", f"{type(err).__name__}: {err}"[:300]
        traceback.print_exc()
    check.seconds = time.perf_counter() - t0
    print(f"[{part}] {check.status} {check.detail} ({check.seconds:.0f} s)", flush=True)
    return check


def bench(out: Path, device: str, smoke: bool, limit_s: int) -> tuple[str, str]:
    rows_path = out / "extract_bench.json"
    args = ["--json", str(rows_path), "--device", device]
    if smoke:
        args += ["--quick"]
    else:
        args += ["--dtype", "bfloat16", "--tokens", "1024", "--seq-len", "512"]
        args += ["--hidden", "2048", "--repeats", "3"]
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "extract_bench.py"), *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=limit_s,
    )
    (out / "extract_bench.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        return "FAIL", f"extract_bench.py exit {result.returncode}: {result.stderr[-200:]}"
    print(result.stdout, flush=True)
    rows = json.loads(rows_path.read_text())
    parts = []
    for row in rows:
        fused = row.get("fused_time_vs_floor")
        parts.append(
            f"V={row['vocab']}: {row['speed_vs_naive']:.2f}x naive, "
            f"mem {row['memory_vs_naive']:.3f}, eager {row['time_vs_floor']:.2f}x floor"
            + (f", fused {fused:.2f}x floor" if fused is not None else "")
        )
    return "PASS", "; ".join(parts)


def agreement(device: str, dtype_name: str) -> tuple[str, str]:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from exitbench import extract
    from exitbench import fused as fused_lens
    from exitbench.lens import LogitLens

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50257,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        tie_word_embeddings=False,
    )
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config).to(dtype).eval()
    lens = LogitLens.from_model(model)
    ids = torch.randint(0, 50257, (4, 256), device=device)
    mask = torch.ones_like(ids)
    mask[1, 200:] = 0  # one padded window
    eager = extract.reduce_layers(lens, ids, mask, top_k=5, token_chunk=256, fused=False)
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2
    top1, worst = 1.0, {}
    gold = eager["gold"] >= 0
    for compile in (False, True) if device.startswith("cuda") else (False,):
        fused_lens.COMPILE_ON_CUDA = compile
        try:
            tiled = extract.reduce_layers(lens, ids, mask, top_k=5, token_chunk=256, fused=True)
        finally:
            fused_lens.COMPILE_ON_CUDA = False
        top1 = min(top1, float((eager["top1"] == tiled["top1"]).mean()))
        for name in ("maxprob", "margin", "entropy", "kl_to_final", "logprob_final_top1"):
            diff = float(abs(eager[name] - tiled[name]).max())
            worst[name] = max(worst.get(name, 0.0), diff)
        diff = float(abs(eager["logprob_gold"] - tiled["logprob_gold"])[gold].max())
        worst["logprob_gold"] = max(worst.get("logprob_gold", 0.0), diff)
    largest = max(worst, key=worst.get)
    ok = top1 >= (0.999 if dtype == torch.float32 else 0.99) and worst[largest] <= tolerance
    detail = (
        f"{dtype_name} ({'eager and compiled' if device.startswith('cuda') else 'eager'} "
        f"tiles): top1 agree {top1:.4f}, "
        f"largest |diff| {worst[largest]:.1e} "
        f"({largest}; tolerance {tolerance:.0e})"
    )
    return ("PASS" if ok else "FAIL"), detail


OOM_SNIPPET = r"""
import gc, json, sys, torch, numpy as np, pyarrow as pa
from transformers import AutoModelForCausalLM, LlamaConfig
from exitbench import extract, tables
work = sys.argv[1]
torch.manual_seed(0)
config = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=2048,
                     num_hidden_layers=4, num_attention_heads=8, tie_word_embeddings=False)
AutoModelForCausalLM.from_config(config).save_pretrained(work + "/model")
rng = np.random.default_rng(0)
windows = [rng.integers(0, 32000, size=512).tolist() for _ in range(64)]
table = pa.table({"seq_id": np.arange(64, dtype=np.int64), "doc_id": [f"d{i}" for i in range(64)],
                  "input_ids": windows, "n_tokens": np.full(64, 512, dtype=np.int32)})
tables.write_table(table, work + "/tokens.parquet", "tokens")

def peak(batch, name):
    gc.collect(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    stats = extract.extract_shard("oom-check", {"path": work + "/model"}, work + "/tokens.parquet",
                                  work + f"/{name}.parquet", 0, 64, 5, batch, 256, "cuda")
    return torch.cuda.max_memory_allocated(), stats

one, _ = peak(1, "one")          # uncapped peaks calibrate the cap
full, _ = peak(64, "full")
cap = one + (full - one) / 4     # batch 1 fits, batch 64 does not
gc.collect(); torch.cuda.empty_cache()
torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(0).total_memory)
_, stats = peak(64, "capped")
same = tables.read_table(work + "/capped.parquet", "lens").num_rows
print(json.dumps({"batch_size": stats["batch_size"], "rows": same, "cap_mib": cap / 2**20,
                  "peak1_mib": one / 2**20, "peak64_mib": full / 2**20}))
"""


def out_of_memory(device: str, limit_s: int) -> tuple[str, str]:
    if not device.startswith("cuda"):
        return "SKIP", "needs CUDA (torch.cuda.set_per_process_memory_fraction)"
    with tempfile.TemporaryDirectory() as work:
        result = subprocess.run(
            [sys.executable, "-c", OOM_SNIPPET, work],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=limit_s,
        )
    if result.returncode != 0:
        return "FAIL", f"exit {result.returncode}: {result.stderr[-250:]}"
    found = json.loads(result.stdout.strip().splitlines()[-1])
    halved = "retrying with batch_size" in result.stderr
    ok = halved and found["batch_size"] < 64 and found["rows"] == 64 * 512 * 5
    return ("PASS" if ok else "FAIL"), (
        f"peaks uncapped: batch 1 {found['peak1_mib']:.0f} MiB, batch 64 "
        f"{found['peak64_mib']:.0f} MiB; cap {found['cap_mib']:.0f} MiB: batch 64 -> "
        f"{found['batch_size']}, "
        f"{found['rows']} rows (expected {64 * 512 * 5}), halving logged: {halved}"
    )


def study(device: str, smoke: bool, limit_s: int) -> tuple[str, str]:
    import yaml

    sys.path.insert(0, str(REPO))
    from tests.conftest import save_tiny_model

    with tempfile.TemporaryDirectory() as work:
        workdir = Path(work)
        models = {}
        for kind, arch in (("llama", "dense"), ("gpt2", "dense"), ("mamba2", "ssm")):
            path = save_tiny_model(kind, workdir / "models" / kind)
            models[f"tiny-{kind}"] = {
                "path": str(path),
                "family": f"test-{kind}",
                "release": "2024-01",
                "arch": arch,
                "total_params": 1e5,
            }
        config = {
            "seed": 0,
            "models": models,
            "workloads": {"docs": {"source": "embedded", "name": "python-docs", "max_docs": 12}},
            "tokenize": {"seq_len": 32, "max_sequences": 6},
            "extract": {"top_k": 3, "batch_size": 4, "shard_sequences": 4, "device": device},
            "score": {"bootstrap": 50, "thresholds": 11},
        }
        (workdir / "study.yaml").write_text(yaml.safe_dump(config))
        command = [
            sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
            "--directory", str(workdir), "--configfile", str(workdir / "study.yaml"),
            "--cores", "4", "--resources", "gpu=1",
        ]  # fmt: skip
        result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=limit_s)
        shards = sorted((workdir / "results" / "lens").rglob("shard-*.parquet"))
        summary = (workdir / "results" / "summary.parquet").exists()
        logs = " ".join(p.read_text(errors="replace") for p in workdir.rglob("*.log"))
        on_device = f"'device': '{device}" in logs
    if result.returncode != 0:
        return "FAIL", f"snakemake exit {result.returncode}: {result.stderr[-250:]}"
    ok = summary and len(shards) == 6 and (on_device or smoke)
    return ("PASS" if ok else "FAIL"), (
        f"{len(shards)} lens shards, summary.parquet {summary}, extract logs name {device}: "
        f"{on_device}"
    )


def decode(out: Path, smoke: bool, limit_s: int) -> tuple[str, str]:
    script = REPO / "benchmarks" / "decode_bench.py"
    # on the GPU: zoo-shaped models in bfloat16, as the decode issue asks
    device = ["--quick"] if smoke else ["--device", "cuda", "--dtype", "bfloat16"]
    result = subprocess.run(
        [sys.executable, str(script), "--json", str(out / "decode_bench.json"), *device],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=limit_s,
    )
    (out / "decode_bench.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        return "FAIL", f"decode_bench.py exit {result.returncode}: {result.stderr[-200:]}"
    return "PASS", result.stdout.strip().splitlines()[-1][:200] if result.stdout.strip() else ""


def summary_table(checks: list[Check], device: str) -> str:
    width = max(len(check.part) for check in checks)
    lines = [f"gpu_check on {device}", f"{'part':<{width}}  status  seconds  detail"]
    for check in checks:
        lines.append(
            f"{check.part:<{width}}  {check.status:<6}  {check.seconds:>7.0f}  {check.detail}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check_out", help="folder for JSON rows and logs")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="run the flow on CPU, small (no GPU claims)"
    )
    parser.add_argument("--parts", nargs="+", default=None, help="only these parts")
    args = parser.parse_args(argv)
    import torch

    if args.cpu_smoke:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); use --cpu-smoke")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    parts: dict[str, tuple[Callable[[int], tuple[str, str]], int]] = {
        "bench": (lambda limit: bench(out, device, args.cpu_smoke, limit), 180),
        "agree-fp32": (lambda limit: agreement(device, "float32"), 60),
        "agree-bf16": (lambda limit: agreement(device, "bfloat16"), 60),
        "oom": (lambda limit: out_of_memory(device, limit), 100),
        "study": (lambda limit: study(device, args.cpu_smoke, limit), 240),
        "decode": (lambda limit: decode(out, args.cpu_smoke, limit), 100),
    }
    checks = [
        run_part(name, fn, started, limit)
        for name, (fn, limit) in parts.items()
        if args.parts is None or name in args.parts
    ]
    table = summary_table(checks, device)
    if device == "cuda":
        table += f"\n({torch.cuda.get_device_name(0)}, torch {torch.__version__})"
    print(table)
    (out / "summary.txt").write_text(table + "\n")
    return 1 if any(check.status == "FAIL" for check in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
