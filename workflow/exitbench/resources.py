"""Cluster resources of a model's GPU jobs: GPUs, host memory, wall time.

One formula sizes every extract job from the model entry (``total_params``,
``dtype``, ``arch``), so a 70B model gets several GPUs and a longer run while
a 125M model gets one GPU and half an hour, without a per-model block (decode
jobs ask for the same). Translators jobs (the tuned lens's training) are sized
by :func:`translators_resources`: the same formula, plus the translators'
training state in memory and a runtime from the training FLOPs. Its
constants are settings: the config's ``resources:`` section, whose defaults
and meaning live in ``workflow/schemas/config.schema.yaml`` (the validated
config carries every key). A model entry's ``resources`` (config key
``models.<name>.resources``: gpu, gpu_model, mem_mb, runtime, cpus_per_gpu)
overrides any derived value.

For ``P`` the parameters the loader reads (``multimodal_params`` where the entry
has one, else ``total_params``: a Gemma-3 >= 4B checkpoint loads as
``Gemma3ForConditionalGeneration`` with its vision tower, although the lens
reads only the text model), ``b`` bytes per parameter (float32 4,
bfloat16/float16/auto 2) and the settings ``s``:

* accelerator memory ``M = s.memory_overhead * b * P + activations``, with
  activations ``= max(2 GB, 0.1 * s.memory_overhead * b * P)`` (hidden states
  of all layers for one batch plus one chunk of vocabulary-wide logits);
* ``gpu = max(s.gpu, ceil(M / s.gpu_memory_gb))`` when the study uses GPUs
  (``s.gpu > 0``), else 0;
* host ``mem_mb``: on CPU the whole ``M``; with GPUs ``s.host_mem_gb + b * P / 4``
  (weights stream through host memory shard by shard while they load); never
  below ``s.min_mem_mb``;
* ``runtime`` (minutes): ``s.runtime_min + s.gpu_minutes_per_billion_params * P / 1e9``
  with GPUs (``cpu_minutes_per_billion_params`` on CPU), plus
  ``s.scan_runtime_min`` for SSM and hybrid models.

``mem_mb`` and ``runtime`` are multiplied by ``attempt`` (1 on the first try),
so a job that SLURM kills for memory or time (OUT_OF_MEMORY, TIMEOUT) is
retried with more (the rule's ``retries:``). A model without ``total_params``
gets the values of a 1B-parameter model.

Translators jobs (:func:`translators_resources`), with ``L`` layers, hidden size
``d`` and vocabulary ``V`` (registry ``layers``, ``hidden``, ``vocab``), the
``translators:`` settings ``t`` and ``N = t.steps * t.tokens_per_step``
training tokens:

* memory ``M + 12 * L * (d^2 + d)`` bytes (each translator's fp32 weights,
  gradients and momentum) ``+ n * (16 * V + b * (L + 1) * d)`` bytes with
  ``n = min(t.batch_tokens, t.tokens_per_step)`` (one forward pass of the
  step's gradient accumulation: the final and one layer's log-probabilities
  with their gradients, all hidden states), in place of extract's activation
  term where that is larger;
* ``runtime = s.runtime_min + N * F / (s.gpu_tflops * 1e12) / 60`` minutes
  (``s.cpu_tflops`` on CPU), ``F = 2 * active + 3 * L * (2 d^2 + 2 d V)``
  FLOPs per token (the frozen forward, then each layer's translator and head,
  forward and backward), plus ``s.scan_runtime_min`` for SSM and hybrid models.

Where the entry lacks ``L``, ``d`` or ``V``: translators of ``P_text / 6``
parameters (a block holds at least ``6 d^2``), ``V = 262144`` (the largest
vocabulary in the registry) and ``F = 6 * active``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .config import section_defaults

__all__ = [
    "BYTES_PER_PARAM",
    "UNKNOWN_PARAMS",
    "accelerator_memory_gb",
    "extract_resources",
    "loaded_params",
    "translator_parameters",
    "translators_resources",
]

BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}
UNKNOWN_PARAMS = 1e9  # assumed size of a model whose entry has no total_params
SCAN_ARCHS = ("ssm", "hybrid")  # registry `arch` values whose layers run a sequential scan
_MIN_ACTIVATIONS_GB = 2.0
_ACTIVATION_FRACTION = 0.1
_HOST_WEIGHT_FRACTION = 0.25  # the largest checkpoint shard, plus pinned staging buffers
_GB = 1e9
_MB_PER_GB = 1000  # SLURM's --mem is in MB (10^6 bytes in Snakemake's mem_mb)
_TRAINING_BYTES_PER_PARAM = 12  # fp32 translator weight + gradient + SGD momentum buffer
_LOGPROB_BYTES_PER_VOCAB = 16  # fp32 log p_L, p_L, log p_l and its gradient per token
_MIN_BLOCK_SQUARES = 6  # a block holds >= 6 d^2 parameters (Mamba 6, attention + MLP ~12)
_LARGEST_VOCAB = 262144  # Gemma-3's, the registry's largest: the bound for an unknown one


@functools.cache
def _defaults(section: str = "resources") -> Mapping[str, Any]:
    return MappingProxyType(section_defaults(section))  # read once: a dry run asks per job


def _settings(settings: Mapping[str, Any] | None, section: str = "resources") -> dict[str, Any]:
    """A config section's settings with the schema's defaults under any given ones."""
    return {**_defaults(section), **(settings or {})}


def loaded_params(entry: Mapping[str, Any]) -> float:
    """Parameters the loader reads for the model ``entry`` describes.

    ``multimodal_params`` where the entry has one: transformers loads a Gemma-3 >= 4B
    checkpoint (model_type ``gemma3``) with ``AutoModelForCausalLM`` as
    ``Gemma3ForConditionalGeneration``, vision tower and projector included, although
    the lens reads only the text model (``total_params``). Else ``total_params``, else
    :data:`UNKNOWN_PARAMS`.
    """
    return float(entry.get("multimodal_params") or entry.get("total_params") or UNKNOWN_PARAMS)


def _ceil(value: float) -> int:
    """Round up, ignoring float noise (30 + 1.2 * 70 is 114.00000000000001)."""
    return math.ceil(round(value, 6))


def accelerator_memory_gb(
    total_params: float, dtype: str = "float32", settings: Mapping[str, Any] | None = None
) -> float:
    """Memory (GB) one copy of the model needs to run the lens.

    ``M = o * b * P + max(2, 0.1 * o * b * P)`` GB with ``b`` bytes per
    parameter of ``dtype``, ``P = total_params`` and ``o`` the setting
    ``resources.memory_overhead`` (``settings``; schema default where absent).
    """
    if dtype not in BYTES_PER_PARAM:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(BYTES_PER_PARAM)}")
    overhead = _settings(settings)["memory_overhead"]
    weights_gb = overhead * BYTES_PER_PARAM[dtype] * total_params / _GB
    return weights_gb + max(_MIN_ACTIVATIONS_GB, _ACTIVATION_FRACTION * weights_gb)


def extract_resources(
    entry: Mapping[str, Any], attempt: int = 1, settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Resources of one extract job of the model described by ``entry``.

    ``entry`` is the model's config entry (``models.<name>``: ``total_params``,
    ``dtype``, ``arch``, optional ``resources``), ``attempt`` Snakemake's
    attempt number (1, 2, ...), ``settings`` the config's ``resources:``
    section (schema defaults for any key it lacks; ``gpu: 0`` = CPU-only
    study). Returns ``gpu``, ``mem_mb``, ``runtime`` (minutes),
    ``cpus_per_gpu`` and, when the entry names one and the job gets GPUs,
    ``gpu_model``. A CPU-only study always asks for 0 GPUs, whatever the entry
    says: a node without GPUs rejects any GPU request.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1 (Snakemake counts from 1), got {attempt}")
    s = _settings(settings)
    params = loaded_params(entry)
    billions = params / _GB
    return _request(
        entry,
        attempt,
        s,
        need_gb=accelerator_memory_gb(params, entry.get("dtype", "float32"), s),
        gpu_minutes=s["gpu_minutes_per_billion_params"] * billions,
        cpu_minutes=s["cpu_minutes_per_billion_params"] * billions,
    )


def translator_parameters(entry: Mapping[str, Any]) -> float:
    """Parameters of a model's tuned-lens translators: ``L (d^2 + d)``, one affine map per
    layer below the last (registry ``layers`` and ``hidden``); ``total_params / 6`` where
    either is unknown (an upper bound: a block holds at least ``6 d^2`` parameters)."""
    layers, hidden = entry.get("layers"), entry.get("hidden")
    if layers and hidden:
        return float(layers) * (float(hidden) ** 2 + float(hidden))
    return float(entry.get("total_params") or UNKNOWN_PARAMS) / _MIN_BLOCK_SQUARES


def _training_flops_per_token(entry: Mapping[str, Any]) -> float:
    """FLOPs per training token: the frozen forward ``2 * active`` plus, at each of the
    ``L`` layers, the translator and the head forward and backward
    (``3 * (2 d^2 + 2 d V)``); ``6 * active`` where ``L``, ``d`` or ``V`` is unknown."""
    active = float(entry.get("active_params") or entry.get("total_params") or UNKNOWN_PARAMS)
    layers, hidden, vocab = (entry.get(key) for key in ("layers", "hidden", "vocab"))
    if not (layers and hidden and vocab):
        return 6 * active
    return 2 * active + 3 * layers * (2 * hidden**2 + 2 * hidden * vocab)


def translators_resources(
    entry: Mapping[str, Any],
    attempt: int = 1,
    settings: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Resources of the translators job (the tuned lens's training) of ``entry``'s model.

    Like :func:`extract_resources` (same keys, settings, overrides and retries), with
    the translators' fp32 training state and one forward pass of gradient accumulation
    (``training["batch_tokens"]`` tokens) in memory, and a runtime from the training
    FLOPs of ``training["steps"] * training["tokens_per_step"]`` tokens at the setting
    ``resources.gpu_tflops`` (``cpu_tflops`` on CPU). ``training`` is the config's
    ``translators:`` section (schema defaults for any key it lacks).
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1 (Snakemake counts from 1), got {attempt}")
    s = _settings(settings)
    t = _settings(training, "translators")
    params = loaded_params(entry)
    dtype = entry.get("dtype", "float32")
    if dtype not in BYTES_PER_PARAM:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(BYTES_PER_PARAM)}")
    weights_gb = s["memory_overhead"] * BYTES_PER_PARAM[dtype] * params / _GB
    extract_activations_gb = accelerator_memory_gb(params, dtype, s) - weights_gb
    layers = entry.get("layers")
    hidden = entry.get("hidden")
    vocab = entry.get("vocab") or _LARGEST_VOCAB
    hidden_states = (layers + 1) * hidden * BYTES_PER_PARAM[dtype] if layers and hidden else 0
    pass_tokens = min(t["batch_tokens"], t["tokens_per_step"])  # a pass never exceeds its step
    batch_gb = pass_tokens * (_LOGPROB_BYTES_PER_VOCAB * vocab + hidden_states) / _GB
    state_gb = _TRAINING_BYTES_PER_PARAM * translator_parameters(entry) / _GB
    need_gb = weights_gb + state_gb + max(extract_activations_gb, batch_gb)
    tera_flops = t["steps"] * t["tokens_per_step"] * _training_flops_per_token(entry) / 1e12
    return _request(
        entry,
        attempt,
        s,
        need_gb=need_gb,
        gpu_minutes=tera_flops / s["gpu_tflops"] / 60,
        cpu_minutes=tera_flops / s["cpu_tflops"] / 60,
    )


def _request(
    entry: Mapping[str, Any],
    attempt: int,
    s: Mapping[str, Any],
    need_gb: float,
    gpu_minutes: float,
    cpu_minutes: float,
) -> dict[str, Any]:
    """A job's request from its accelerator memory ``need_gb`` and size-dependent minutes
    (on GPUs or on CPUs): GPUs, host memory, runtime, overrides and the attempt factor."""
    if s["gpu"] < 0:
        raise ValueError(f"config key 'resources.gpu' must be >= 0, got {s['gpu']}")
    given = dict(entry.get("resources") or {})
    dtype = entry.get("dtype", "float32")
    weights_gb = BYTES_PER_PARAM[dtype] * loaded_params(entry) / _GB

    if s["gpu"] > 0:
        gpu = int(given.get("gpu", max(s["gpu"], _ceil(need_gb / s["gpu_memory_gb"]))))
    else:
        gpu = 0
    if gpu > 0:
        mem_gb = s["host_mem_gb"] + _HOST_WEIGHT_FRACTION * weights_gb
        runtime = s["runtime_min"] + gpu_minutes
    else:
        mem_gb = need_gb
        runtime = s["runtime_min"] + cpu_minutes
    if entry.get("arch") in SCAN_ARCHS:
        runtime += s["scan_runtime_min"]
    mem_mb = int(given.get("mem_mb", max(s["min_mem_mb"], _ceil(mem_gb * _MB_PER_GB))))
    runtime = int(given.get("runtime", _ceil(runtime)))

    resources = {
        "gpu": gpu,
        "mem_mb": mem_mb * attempt,
        "runtime": runtime * attempt,
        "cpus_per_gpu": int(given.get("cpus_per_gpu", s["cpus_per_gpu"])),
    }
    # --gpus=MODEL:0 is an invalid request: only name a model when GPUs are asked for.
    if gpu > 0 and given.get("gpu_model"):
        resources["gpu_model"] = str(given["gpu_model"])
    return resources
