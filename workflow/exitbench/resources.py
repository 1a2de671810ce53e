"""Cluster resources of a model's extract jobs: GPUs, host memory, wall time.

One formula sizes every extract job from the model entry (``total_params``,
``dtype``, ``arch``), so a 70B model gets several GPUs and a longer run while
a 125M model gets one GPU and half an hour, without a per-model block. Its
constants are settings: the config's ``resources:`` section, whose defaults
and meaning live in ``workflow/schemas/config.schema.yaml`` (the validated
config carries every key). A model entry's ``resources`` (config key
``models.<name>.resources``: gpu, gpu_model, mem_mb, runtime, cpus_per_gpu)
overrides any derived value.

For ``P = total_params``, ``b`` bytes per parameter (float32 4,
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
]

BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}
UNKNOWN_PARAMS = 1e9  # assumed size of a model whose entry has no total_params
SCAN_ARCHS = ("ssm", "hybrid")  # registry `arch` values whose layers run a sequential scan
_MIN_ACTIVATIONS_GB = 2.0
_ACTIVATION_FRACTION = 0.1
_HOST_WEIGHT_FRACTION = 0.25  # the largest checkpoint shard, plus pinned staging buffers
_GB = 1e9
_MB_PER_GB = 1000  # SLURM's --mem is in MB (10^6 bytes in Snakemake's mem_mb)


@functools.cache
def _defaults() -> Mapping[str, Any]:
    return MappingProxyType(section_defaults("resources"))  # read once: a dry run asks per job


def _settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``resources:`` settings with the schema's defaults under any given ones."""
    return {**_defaults(), **(settings or {})}


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
    if s["gpu"] < 0:
        raise ValueError(f"config key 'resources.gpu' must be >= 0, got {s['gpu']}")
    given = dict(entry.get("resources") or {})
    params = float(entry.get("total_params") or UNKNOWN_PARAMS)
    dtype = entry.get("dtype", "float32")
    need_gb = accelerator_memory_gb(params, dtype, s)
    weights_gb = BYTES_PER_PARAM[dtype] * params / _GB
    billions = params / _GB

    if s["gpu"] > 0:
        gpu = int(given.get("gpu", max(s["gpu"], _ceil(need_gb / s["gpu_memory_gb"]))))
    else:
        gpu = 0
    if gpu > 0:
        mem_gb = s["host_mem_gb"] + _HOST_WEIGHT_FRACTION * weights_gb
        runtime = s["runtime_min"] + s["gpu_minutes_per_billion_params"] * billions
    else:
        mem_gb = need_gb
        runtime = s["runtime_min"] + s["cpu_minutes_per_billion_params"] * billions
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
