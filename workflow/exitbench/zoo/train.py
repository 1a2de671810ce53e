"""Training one zoo run (``results/zoo/<run>``): AdamW with warmup and decay, deterministic on
CPU, checkpoints, loss curve and ``train.json`` provenance."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from exitbench import provenance
from exitbench.zoo.data import (
    DATA_INFO,
    load_windows,
    task_sources,
    tokenizer_sha256,
    window_plan,
)
from exitbench.zoo.layerskip import EarlyExitTraining
from exitbench.zoo.plan import ENDOFTEXT, TRAIN_INFO, ZooError, run_spec, total_steps
from exitbench.zoo.recipes import RECIPES, count_parameters, model_config

if TYPE_CHECKING:  # torch is imported where used, so Snakefiles import this module quickly
    import torch

log = logging.getLogger(__name__)


def build_model_config(spec: dict[str, Any], tokenizer: Any, seq_len: int) -> Any:
    """The transformers config of a run (``run_spec``) for ``tokenizer`` and ``seq_len``."""
    eos = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    return model_config(spec, len(tokenizer), eos, seq_len)


def state_sha256(model: torch.nn.Module) -> str:
    """sha256 over the model's state dict (names, shapes, float32 bytes, sorted by name)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


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

    spec = run_spec(zoo, run)
    training = spec["training"]
    seq_len, batch_size = training["seq_len"], training["batch_size"]
    steps = total_steps(zoo, run)
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer_sha = tokenizer_sha256(tokenizer_dir)
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
        # LayerSkip (zoo.runs.<run>.early_exit): layer dropout hooks and the early-exit loss
        early_exit = None
        if spec.get("early_exit") is not None:
            early_exit = EarlyExitTraining(model, spec["early_exit"], steps, seed)
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
            if early_exit:
                loss, lm_loss = early_exit.loss(batch, step, moe_coef)
            else:
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
        if early_exit:
            early_exit.remove_hooks()
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
    provenance.write_json(info, out_dir / TRAIN_INFO)
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
