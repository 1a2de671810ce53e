"""Stage ``translators``: train, save and load tuned-lens translators (Belrose et al. 2023).

One affine translator per layer l = 0..L-1, applied residually, h -> h + A_l h + b_l,
then the logit lens's own decode (:class:`exitbench.lens.TunedLens`). Training follows
the tuned-lens recipe (``tuned_lens/scripts/train_loop.py``):

- the model is frozen; the hidden states come from ``LogitLens.forward_hidden_states``,
  the forward code extraction uses;
- loss per step = Σ_{l<L} mean over real positions of KL(p_L || p_l^tuned), one backward
  pass per layer (the gradients add up);
- translators start at zero (an untrained tuned lens is the logit lens);
- SGD with Nesterov momentum 0.9, weight decay 1e-3, gradient norm clipped to 1, and the
  learning rate decayed linearly from ``learning_rate`` to 0 over ``steps`` (tuned-lens's
  ``lr_scale`` 1.0 is our ``learning_rate`` 0.1 = lr_scale x (1 - momentum));
- the windows of each step are taken in the order of a seeded permutation per epoch:
  the same seed and windows give the same translators bit for bit (on CPU).

It trains only on training documents: for a zoo model, the zoo's own training windows
(``results/zoo/data``, never a held-out document); for any other model, the calibration
documents of its workloads (the split of ``score``: :func:`exitbench.metrics.split_documents`),
refusing a document that is held out in another workload.

Saved in tuned-lens's folder format, so ``tuned_lens.TunedLens.from_model_and_pretrained(
model, folder)`` loads it: ``config.json`` (``base_model_name_or_path``, ``d_model``,
``num_hidden_layers``, ``bias``, ``base_model_revision``, ``lens_type``) and ``params.pt``,
the state dict of a ``ModuleList`` of L ``Linear(d, d)`` keyed ``"{i}.weight"`` (= A_i, the
residual part) and ``"{i}.bias"`` (= b_i); translator i acts on ``hidden_states[i]``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from exitbench.lens import LogitLens, TunedLens

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.pt"
LOG_FILE = "training.json"
#: What the translators trained on ({"workloads": [...], ...}, {"zoo_data": ...} or
#: {"published": folder}), read by exitbench.score.translators_in_sample.
SOURCE_FILE = "training_source.json"
LOSS_FIGURE = "loss.png"
LENS_TYPE = "linear_tuned_lens"
PAD_ID = 0  # padded positions are masked out of the loss


class TranslatorError(ValueError):
    """Translators that do not fit the model, or a folder that is not a tuned lens."""


@dataclass(frozen=True)
class TrainingSettings:
    """The ``translators:`` config section (see the schema for each key's meaning)."""

    steps: int = 40
    tokens_per_step: int = 4096
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-3
    max_grad_norm: float = 1.0

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> TrainingSettings:
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in section.items() if key in known})


def model_shape(lens: LogitLens) -> tuple[int, int]:
    """(d_model, num_hidden_layers) of the model: the translators' width and count."""
    text_config = lens.model.config.get_text_config()
    return int(text_config.hidden_size), int(lens.num_layers)


def zero_translators(d_model: int, num_layers: int) -> torch.nn.ModuleList:
    """L float32 ``Linear(d, d)`` translators with A = 0 and b = 0 (the logit lens)."""
    translators = torch.nn.ModuleList()
    for _ in range(num_layers):
        translator = torch.nn.Linear(d_model, d_model, bias=True, dtype=torch.float32)
        torch.nn.init.zeros_(translator.weight)
        torch.nn.init.zeros_(translator.bias)
        translators.append(translator)
    return translators


# -- training ---------------------------------------------------------------------------------


def _batch(windows: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` (int64) of a list of windows."""
    length = max(len(window) for window in windows)
    input_ids = torch.full((len(windows), length), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(windows), length), dtype=torch.long)
    for row, window in enumerate(windows):
        input_ids[row, : len(window)] = torch.from_numpy(np.asarray(window, dtype=np.int64))
        attention_mask[row, : len(window)] = 1
    return input_ids, attention_mask


def step_windows(n_windows: int, windows_per_step: int, steps: int, seed: int) -> list[np.ndarray]:
    """Window indices of each step: a fresh ``PCG64([seed, epoch])`` permutation per epoch."""
    needed = windows_per_step * steps
    epochs = -(-needed // n_windows)
    order = np.concatenate(
        [
            np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n_windows)
            for epoch in range(epochs)
        ]
    )
    return [order[step * windows_per_step : (step + 1) * windows_per_step] for step in range(steps)]


def layer_losses(
    tuned: TunedLens,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    backward: bool,
    weight: float = 1.0,
) -> dict[int, float]:
    """KL(p_L || p_l^tuned) per layer l < L, mean over the batch's real positions, times
    ``weight`` (a forward pass's share of its step's tokens under gradient accumulation).

    With ``backward`` each layer's weighted loss is back-propagated at once (into the
    translators only), so one layer's logits are alive at a time.
    """
    lens = tuned.logit
    hidden_states = lens.forward_hidden_states(input_ids, attention_mask)
    real = attention_mask.reshape(-1).to(torch.bool)

    def flat(state: torch.Tensor) -> torch.Tensor:
        return state.reshape(-1, state.shape[-1])[real.to(state.device)]

    with torch.no_grad():
        final_layer = lens.num_layers
        final = lens.decode(flat(lens.hidden_state(hidden_states, final_layer)), final_layer)
        log_final = torch.log_softmax(final.float(), dim=-1)
        final_prob = log_final.exp()
    losses = {}
    for layer in lens.layer_numbers[:-1]:
        hidden = flat(lens.hidden_state(hidden_states, layer))
        with torch.set_grad_enabled(backward):
            log_layer = torch.log_softmax(tuned.decode(hidden, layer).float(), dim=-1)
            log_layer = log_layer.to(log_final.device)
            loss = (final_prob * (log_final - log_layer)).sum(-1).mean() * weight
            if backward:
                loss.backward()
        losses[layer] = float(loss.detach())
    return losses


def forward_passes(
    windows: Sequence[np.ndarray], indices: np.ndarray, batch_tokens: int | None
) -> list[np.ndarray]:
    """A step's window ``indices`` split, in order, into forward passes of at most
    ``batch_tokens`` tokens each (at least one window a pass); one pass when None."""
    if batch_tokens is None:
        return [indices]
    passes: list[list[int]] = [[]]
    tokens = 0
    for index in indices:
        length = len(windows[int(index)])
        if passes[-1] and tokens + length > batch_tokens:
            passes.append([])
            tokens = 0
        passes[-1].append(int(index))
        tokens += length
    return [np.asarray(group, dtype=indices.dtype) for group in passes]


def train_translators(
    lens: LogitLens,
    windows: Sequence[np.ndarray],
    settings: TrainingSettings,
    seed: int,
    description: str = "translators",
    batch_tokens: int | None = None,
) -> tuple[torch.nn.ModuleList, list[dict[str, Any]]]:
    """Trained translators for ``lens``'s model and the per-step training log.

    ``windows`` are token-id arrays of training documents only. The model is frozen
    (its ``requires_grad`` flags are restored afterwards). A step of more than
    ``batch_tokens`` tokens accumulates its gradient over forward passes of at most that
    many (each pass's loss weighted by its share of the step's tokens): the same step as
    one pass up to float rounding, in a fraction of the memory.
    """
    if len(windows) == 0:
        raise TranslatorError("translators: no training windows (no training documents)")
    d_model, num_layers = model_shape(lens)
    torch.manual_seed(seed)
    translators = zero_translators(d_model, num_layers)
    translators.to(_device_of(lens))
    tuned = TunedLens(lens, translators)
    mean_length = float(np.mean([len(window) for window in windows]))
    windows_per_step = max(1, math.ceil(settings.tokens_per_step / mean_length))
    schedule = step_windows(len(windows), windows_per_step, settings.steps, seed)
    optimizer = torch.optim.SGD(
        translators.parameters(),
        lr=settings.learning_rate,
        momentum=settings.momentum,
        nesterov=True,
        weight_decay=settings.weight_decay,
    )
    decay = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1.0 - step / settings.steps)
    )
    frozen = {name: p.requires_grad for name, p in lens.model.named_parameters()}
    lens.model.requires_grad_(False)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    log: list[dict[str, Any]] = []
    started = time.perf_counter()
    progress = tqdm(total=settings.steps, unit="step", desc=description)
    try:
        for step, indices in enumerate(schedule):
            batches = [
                _batch([windows[int(i)] for i in group])
                for group in forward_passes(windows, indices, batch_tokens)
            ]
            step_tokens = sum(int(mask.sum()) for _, mask in batches)
            learning_rate = optimizer.param_groups[0]["lr"]
            losses: dict[int, float] = {}
            for input_ids, attention_mask in batches:
                share = int(attention_mask.sum()) / step_tokens if len(batches) > 1 else 1.0
                for layer, value in layer_losses(
                    tuned, input_ids, attention_mask, backward=True, weight=share
                ).items():
                    losses[layer] = losses.get(layer, 0.0) + value
            grad_norm = torch.nn.utils.clip_grad_norm_(
                translators.parameters(), settings.max_grad_norm
            )
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)
            decay.step()
            log.append(
                {
                    "step": step,
                    "learning_rate": learning_rate,
                    "tokens": step_tokens,
                    "loss": sum(losses.values()),
                    "grad_norm": float(grad_norm),
                    "kl_per_layer": {str(layer): value for layer, value in losses.items()},
                    "seconds": round(time.perf_counter() - started, 3),
                }
            )
            progress.update(1)
            elapsed = time.perf_counter() - started
            progress.set_postfix(
                {"loss": f"{log[-1]['loss']:.3f}", "steps/s": f"{(step + 1) / elapsed:.2f}"}
            )
    finally:
        progress.close()
        torch.use_deterministic_algorithms(deterministic)
        for name, parameter in lens.model.named_parameters():
            parameter.requires_grad_(frozen[name])
    if log:
        logger.info(
            "translators: %d steps of %d windows in %.1f s, loss %.4f -> %.4f (sum over layers)",
            settings.steps,
            windows_per_step,
            time.perf_counter() - started,
            log[0]["loss"],
            log[-1]["loss"],
        )
    return translators.cpu(), log


def _device_of(lens: LogitLens) -> torch.device:
    return next(lens.model.parameters()).device


# -- training documents ---------------------------------------------------------------------


def zoo_windows(data_dir: str | os.PathLike, corpora: Sequence[str]) -> list[np.ndarray]:
    """The zoo's encoded training windows of ``corpora`` (``results/zoo/data/<corpus>.npy``):
    the training split only, by construction (:mod:`exitbench.zoo.data`)."""
    from exitbench.zoo.data import load_windows

    loaded = load_windows(data_dir, list(corpora))
    return [window for corpus in corpora for window in loaded[corpus]]


def calibration_windows(
    tokens_paths: dict[str, str | os.PathLike], calibration_fraction: float, seed: int
) -> tuple[list[np.ndarray], dict[str, int]]:
    """Windows of each workload's calibration documents (``score``'s split) and counts.

    Raises :class:`TranslatorError` when a calibration document of one workload is a
    held-out document of another (the split ranks each workload's documents apart).
    """
    from exitbench import metrics, tables

    windows: list[np.ndarray] = []
    training: dict[str, str] = {}
    heldout: dict[str, str] = {}
    for workload, path in tokens_paths.items():
        table = tables.read_table(path, "tokens", columns=["seq_id", "doc_id", "input_ids"])
        table = table.sort_by("seq_id")
        doc_ids = table["doc_id"].to_pylist()
        documents = list(dict.fromkeys(doc_ids))
        if len(documents) < 2:
            logger.warning(
                "workload %r has %d document(s): no calibration split, no translator windows",
                workload,
                len(documents),
            )
            for doc in documents:
                heldout.setdefault(doc, workload)
            continue
        calibration = metrics.split_documents(documents, float(calibration_fraction), seed)
        chosen = {doc for doc, is_cal in zip(documents, calibration, strict=True) if is_cal}
        for doc in documents:
            (training if doc in chosen else heldout).setdefault(doc, workload)
        for doc, ids in zip(doc_ids, table["input_ids"].to_pylist(), strict=True):
            if doc in chosen and len(ids) > 1:
                windows.append(np.asarray(ids, dtype=np.int64))
    check_disjoint(training, heldout)
    return windows, {"windows": len(windows), "documents": len(training)}


def check_disjoint(training: dict[str, str], heldout: dict[str, str]) -> None:
    """Refuse training documents that a score reports on (held out in some workload)."""
    overlap = sorted(set(training) & set(heldout))
    if overlap:
        doc = overlap[0]
        raise TranslatorError(
            f"translators: {len(overlap)} held-out document(s) in the training split, e.g. "
            f"doc_id {doc!r} (calibration in workload {training[doc]!r}, held out in "
            f"{heldout[doc]!r}); the tuned lens must not train on documents a score reports "
            "on: give each workload its own documents (e.g. subset: train / heldout)"
        )


# -- tuned-lens folder format -----------------------------------------------------------------


def lens_config(
    d_model: int, num_layers: int, base_model: str, revision: str | None = None
) -> dict[str, Any]:
    """tuned-lens's ``TunedLensConfig`` as a dict."""
    return {
        "base_model_name_or_path": base_model,
        "d_model": int(d_model),
        "num_hidden_layers": int(num_layers),
        "bias": True,
        "base_model_revision": revision,
        "lens_type": LENS_TYPE,
    }


def save_translators(
    translators: torch.nn.ModuleList,
    config: dict[str, Any],
    folder: str | os.PathLike,
    log: list[dict[str, Any]] | None = None,
) -> Path:
    """Write ``config.json`` and ``params.pt`` (plus ``training.json``) atomically to ``folder``.

    Everything is written to a temporary sibling folder first and renamed, so a killed job
    leaves no half lens.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        state = {
            key: value.detach().cpu().contiguous()
            for key, value in translators.state_dict().items()
        }
        torch.save(state, staging / PARAMS_FILE)
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if log is not None:
            (staging / LOG_FILE).write_text(json.dumps(log, indent=1) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def load_translators(
    folder: str | os.PathLike, lens: LogitLens, model_name: str, key: str | None = None
) -> torch.nn.ModuleList:
    """The translators of a tuned-lens folder, checked against ``lens``'s model.

    ``key`` names the config key the folder came from (``models.<name>.tuned_lens``), for
    the messages. Raises :class:`TranslatorError` for a missing folder or file, another
    lens type, or a d_model / num_hidden_layers / parameter shape that is not the model's.
    """
    folder = Path(folder)
    where = f"config key {key!r}: " if key else ""
    if not folder.is_dir():
        raise TranslatorError(f"{where}tuned-lens folder {str(folder)!r} does not exist")
    for name in (CONFIG_FILE, PARAMS_FILE):
        if not (folder / name).is_file():
            raise TranslatorError(
                f"{where}tuned-lens folder {str(folder)!r} has no {name} (a tuned lens is a "
                f"folder with {CONFIG_FILE} and {PARAMS_FILE}, as tuned_lens.TunedLens.save "
                "writes it)"
            )
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TranslatorError(f"{where}{folder / CONFIG_FILE} is not valid JSON: {err}") from err
    lens_type = config.get("lens_type", LENS_TYPE)
    if lens_type != LENS_TYPE:
        raise TranslatorError(
            f"{where}{folder / CONFIG_FILE}: lens_type {lens_type!r}, expected {LENS_TYPE!r}"
        )
    d_model, num_layers = model_shape(lens)
    check_shape(
        config.get("d_model"),
        config.get("num_hidden_layers"),
        d_model,
        num_layers,
        model_name,
        folder,
    )
    try:
        state = torch.load(folder / PARAMS_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: name it
        raise TranslatorError(f"{where}{folder / PARAMS_FILE} cannot be read: {err}") from err
    bias = bool(config.get("bias", True))
    translators = zero_translators(d_model, num_layers)
    expected = {f"{i}.weight" for i in range(num_layers)}
    if bias:
        expected |= {f"{i}.bias" for i in range(num_layers)}
    if not isinstance(state, dict) or set(state) != expected:
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise TranslatorError(
            f"{where}{folder / PARAMS_FILE} holds {str(found)[:120]}, expected the keys "
            f"0.weight .. {num_layers - 1}.weight{' and biases' if bias else ''} of "
            f"{num_layers} Linear({d_model}, {d_model}) translators"
        )
    for name, tensor in state.items():
        want = (d_model, d_model) if name.endswith("weight") else (d_model,)
        if tuple(tensor.shape) != want:
            raise TranslatorError(
                f"{where}{folder / PARAMS_FILE}: {name} has shape {tuple(tensor.shape)}, "
                f"expected {want} for model {model_name!r} (hidden size {d_model})"
            )
    with torch.no_grad():
        for index, translator in enumerate(translators):
            translator.weight.copy_(state[f"{index}.weight"].float())
            if bias:
                translator.bias.copy_(state[f"{index}.bias"].float())
    return translators


def check_shape(
    d_model: Any, num_layers: Any, model_d: int, model_layers: int, model_name: str, folder: Path
) -> None:
    """Refuse translators made for another hidden size or layer count, naming both."""
    if d_model != model_d or num_layers != model_layers:
        raise TranslatorError(
            f"translators in {str(folder)!r} were made for d_model={d_model}, "
            f"num_hidden_layers={num_layers}, but model {model_name!r} has d_model={model_d}, "
            f"num_hidden_layers={model_layers}; train them for this model (delete the folder) "
            "or point models.<name>.tuned_lens at a lens of this model"
        )


def load_tuned_lens(
    folder: str | os.PathLike, lens: LogitLens, model_name: str, key: str | None = None
) -> TunedLens:
    """:class:`TunedLens` of ``lens``'s model with the translators of ``folder``, on its device."""
    translators = load_translators(folder, lens, model_name, key)
    return TunedLens(lens, translators.to(_device_of(lens)))


# -- the stage ------------------------------------------------------------------------------


def loss_figure(log: list[dict[str, Any]], path: str | os.PathLike, title: str) -> None:
    """Training loss (KL summed over layers) per step, and the last step's KL per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    left.plot([row["step"] for row in log], [row["loss"] for row in log])
    left.set_xlabel("step")
    left.set_ylabel("Σ_l KL(p_L ‖ p_l) (nats)")
    first, last = log[0]["kl_per_layer"], log[-1]["kl_per_layer"]
    layers = [int(layer) for layer in first]
    right.plot(layers, list(first.values()), marker="o", label="step 0 (= logit lens)")
    right.plot(layers, list(last.values()), marker="o", label=f"step {log[-1]['step']}")
    right.set_xlabel("layer")
    right.set_ylabel("KL to final (nats)")
    right.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)


def build_translators(
    model_name: str,
    entry: dict[str, Any],
    out_dir: str | os.PathLike,
    settings: TrainingSettings,
    seed: int,
    zoo_data: str | os.PathLike | None = None,
    zoo_corpora: Sequence[str] = (),
    tokens_paths: dict[str, str | os.PathLike] | None = None,
    calibration_fraction: float = 0.5,
    device: str = "auto",
    threads: int | None = None,
    batch_tokens: int | None = None,
) -> dict[str, Any]:
    """The ``translators`` stage for one model: copy a published lens (``tuned_lens:``) after
    checking it, or train on the training documents; write the folder; return a summary."""
    from exitbench import models

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    model, _ = models.load_model(model_name, entry, device)
    lens = LogitLens.from_model(model)
    d_model, num_layers = model_shape(lens)
    if entry.get("tuned_lens"):
        key = f"models.{model_name}.tuned_lens"
        translators = load_translators(entry["tuned_lens"], lens, model_name, key)
        config = json.loads((Path(entry["tuned_lens"]) / CONFIG_FILE).read_text())
        folder = save_translators(translators, config, out_dir)
        # score_tuned reads what they trained on (score.translators_in_sample): unknown here
        source = {"published": str(entry["tuned_lens"])}
        (folder / SOURCE_FILE).write_text(json.dumps(source, indent=1) + "\n")
        return {"model": model_name, "source": str(entry["tuned_lens"])}
    if zoo_data is not None:
        windows = zoo_windows(zoo_data, zoo_corpora)
        source = {"zoo_data": str(zoo_data), "corpora": list(zoo_corpora)}
    else:
        windows, counts = calibration_windows(tokens_paths or {}, calibration_fraction, seed)
        source = {"workloads": sorted(tokens_paths or {}), **counts}
    translators, log = train_translators(
        lens,
        windows,
        settings,
        seed,
        description=f"translators {model_name}",
        batch_tokens=batch_tokens,
    )
    base = entry.get("hf_id") or entry.get("path") or model_name
    config = lens_config(d_model, num_layers, base, entry.get("revision"))
    folder = save_translators(translators, config, out_dir, log)
    loss_figure(log, folder / LOSS_FIGURE, f"tuned-lens translators: {model_name}")
    # score_tuned reads which workloads' documents they trained on (translators_in_sample)
    (folder / SOURCE_FILE).write_text(json.dumps(source, indent=1) + "\n")
    return {
        "model": model_name,
        "settings": asdict(settings),
        "seed": seed,
        "source": source,
        "windows": len(windows),
        "seconds": log[-1]["seconds"] if log else 0.0,
        "loss_first": log[0]["loss"] if log else None,
        "loss_last": log[-1]["loss"] if log else None,
    }
