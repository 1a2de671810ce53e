"""Benchmark: exitbench's self-speculative decoding beside transformers' ``assistant_early_exit``.

Both draft with the first ``k`` blocks of the model itself and verify with the
full model (LayerSkip-style), greedy, on the same model, prompts and ``k``:

- **full**: ``exitbench.decode.full_generate`` (the model's own forward with cache);
- **exitbench**: ``exitbench.decode.self_speculative_generate(k, gamma)``;
- **hf**: ``model.generate(assistant_early_exit=k, num_assistant_tokens=gamma,
  num_assistant_tokens_schedule="constant")``.

transformers' version truncates ``config.num_hidden_layers`` for the draft; model
classes whose forward does not read that value (GPT-2's ``n_layer``, GPT-NeoX,
Mamba2, ...) silently draft with the *whole* model. The bench checks this
directly (the forward with ``num_hidden_layers = k`` equals the full forward)
and prints ``hf_draft_truncated``. Reported per model: tokens/s of each method
(median over ``--repeats``, after a warm-up), exitbench/hf ratio, and whether
both outputs equal ``full``'s.

Models: ``--model PATH`` (a ``save_pretrained`` folder, e.g. a zoo model in
``results/zoo/``) or, without it, random models of the zoo's shapes
(llama, gpt2, mixtral, mamba2; d=128, 8 blocks, vocab 4096). Random models' drafts
are rarely accepted: use trained models for speed-ups; random ones show the
overheads and the ignored-truncation cases.

    .venv/bin/python benchmarks/decode_bench.py --quick
    .venv/bin/python benchmarks/decode_bench.py --model results/zoo/llama-s --k 4 --gamma 4
    .venv/bin/python benchmarks/decode_bench.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    Mamba2Config,
    MixtralConfig,
)

from exitbench import decode

SHAPES = {
    "llama": lambda: LlamaConfig(
        vocab_size=4096, hidden_size=128, num_hidden_layers=8, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=352, max_position_embeddings=256,
    ),
    "gpt2": lambda: GPT2Config(vocab_size=4096, n_embd=128, n_layer=8, n_head=4, n_positions=256),
    "mixtral": lambda: MixtralConfig(
        vocab_size=4096, hidden_size=128, num_hidden_layers=8, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=176, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=256,
    ),
    "mamba2": lambda: Mamba2Config(
        vocab_size=4096, hidden_size=160, num_hidden_layers=8, expand=2, head_dim=64,
        num_heads=5, state_size=32, chunk_size=64, n_groups=1,
    ),
}  # fmt: skip


def hf_draft_truncated(model: torch.nn.Module, k: int, ids: torch.Tensor) -> str:
    """Whether the forward honours ``config.num_hidden_layers = k`` (what
    ``assistant_early_exit`` sets): ``"yes"`` when its logits then differ from the full
    model's, ``"ignored"`` when they are equal (the draft is the whole model)."""
    config = model.config.get_text_config()
    if not hasattr(config, "num_hidden_layers"):
        return "ignored"
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        saved = config.num_hidden_layers
        try:
            config.num_hidden_layers = k
            cut = model(input_ids=ids, use_cache=False).logits
        finally:
            config.num_hidden_layers = saved
    return "ignored" if torch.equal(full, cut) else "yes"


def hf_generate(model: torch.nn.Module, prompt: list[int], n: int, k: int, gamma: int) -> list[int]:
    device = next(model.parameters()).device
    out = model.generate(
        torch.tensor([prompt], device=device),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        assistant_early_exit=k,
        num_assistant_tokens=gamma,
        num_assistant_tokens_schedule="constant",
    )
    return out[0, len(prompt) :].tolist()


def timed(fn: Any, repeats: int) -> tuple[float, Any]:
    fn()  # warm-up
    times, result = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench(name: str, model: torch.nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    device = next(model.parameters()).device
    runner = decode.BlockRunner(model)
    vocab = model.get_output_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(3, vocab, (args.prompt_tokens,), generator=generator).tolist()
        for _ in range(args.prompts)
    ]
    n, k, gamma = args.new_tokens, args.k, args.gamma
    total = n * len(prompts)

    def run_all(fn: Any) -> list[list[int]]:
        return [fn(p) for p in prompts]

    full_s, full = timed(
        lambda: run_all(lambda p: decode.full_generate(model, p, n).tokens), args.repeats
    )
    ours_s, ours = timed(
        lambda: run_all(lambda p: decode.self_speculative_generate(runner, p, n, k, gamma).tokens),
        args.repeats,
    )
    row: dict[str, Any] = {
        "model": name,
        "model_type": model.config.model_type,
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "k": k,
        "gamma": gamma,
        "full_tokens_per_s": total / full_s,
        "exitbench_tokens_per_s": total / ours_s,
        "exitbench_equals_full": ours == full,
        "hf_draft_truncated": hf_draft_truncated(
            model, k, torch.tensor([prompts[0]], device=device)
        ),
    }
    try:
        hf_s, hf = timed(
            lambda: run_all(lambda p: hf_generate(model, p, n, k, gamma)), args.repeats
        )
        row.update(
            hf_tokens_per_s=total / hf_s,
            exitbench_over_hf=hf_s / ours_s,
            hf_equals_full=hf == full,
        )
    except (ValueError, TypeError, AttributeError, RuntimeError, IndexError) as err:  # unsupported
        row.update(hf_tokens_per_s=None, exitbench_over_hf=None, hf_error=str(err)[:200])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="save_pretrained folder (repeatable)")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 prompts x 8 tokens, 1 repeat")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.new_tokens, args.repeats = 2, 8, 1
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.model:
        models = {
            p: lambda p=p: AutoModelForCausalLM.from_pretrained(p, dtype=dtype) for p in args.model
        }
    else:
        torch.manual_seed(0)
        models = {k: lambda k=k: AutoModelForCausalLM.from_config(SHAPES[k]()) for k in SHAPES}
    rows = []
    for name, load in models.items():
        model = load().to(device=args.device, dtype=dtype).eval().requires_grad_(False)
        row = bench(name, model, args)
        rows.append(row)
        ratio, truncated = row.get("exitbench_over_hf"), row["hf_draft_truncated"]
        print(
            f"{name:>10} ({row['model_type']}, {row['dtype']}, {row['device']}) k={args.k} "
            f"gamma={args.gamma}: full {row['full_tokens_per_s']:.1f} tok/s, exitbench "
            f"{row['exitbench_tokens_per_s']:.1f} tok/s (== full: {row['exitbench_equals_full']}), "
            f"hf {row['hf_tokens_per_s'] or float('nan'):.1f} tok/s "
            f"(== full: {row.get('hf_equals_full')}, draft truncated: {truncated}), "
            f"exitbench/hf {ratio if ratio is None else round(ratio, 2)}"
            + (f" [hf error: {row['hf_error']}]" if "hf_error" in row else ""),
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
