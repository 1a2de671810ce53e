"""Cluster resources of a model's extract jobs: GPUs, host memory, wall time.

The extract rule asks :func:`extract_resources` for each job, so a 70B model
gets several GPUs and a day while a 125M model gets one GPU and half an hour,
without a per-model profile entry. A model entry's ``resources`` (config key
``models.<name>.resources``: gpu, gpu_model, mem_mb, runtime, cpus_per_gpu)
overrides any derived value.

Derived values, for ``P = total_params`` and ``b`` bytes per parameter
(float32 4, bfloat16/float16/auto 2):

* accelerator memory ``M = 1.2 * b * P + activations``, activations
  ``= max(2 GB, 0.1 * 1.2 * b * P)`` (hidden states of all layers for one batch
  plus one chunk of vocabulary-wide logits);
* ``gpu = max(default_gpu, ceil(M / 80 GB))`` when the study uses GPUs
  (``default_gpu > 0``), else 0;
* host ``mem_mb``: on CPU the whole ``M``; with GPUs ``16 GB + 0.25 * b * P``
  (weights stream through host memory shard by shard while they load);
* ``runtime`` (minutes): ``30 + P / 1e9`` with GPUs (loading dominates),
  ``30 + 15 * P / 1e9`` on CPU.

``mem_mb`` and ``runtime`` are multiplied by ``attempt`` (1 on the first try),
so a job that SLURM kills for memory or time (OUT_OF_MEMORY, TIMEOUT) is
retried with more (the rule's ``retries:``). A model without ``total_params``
gets the values of a 1B-parameter model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BYTES_PER_PARAM",
    "GPU_MEMORY_GB",
    "UNKNOWN_PARAMS",
    "accelerator_memory_gb",
    "extract_resources",
]

BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}
GPU_MEMORY_GB = 80  # one A100/H100 80 GB; smaller cards need `resources.gpu` per model
UNKNOWN_PARAMS = 1e9  # assumed size of a model whose entry has no total_params
DEFAULT_CPUS_PER_GPU = 4
MIN_MEM_MB = 2000
_OVERHEAD = 1.2  # framework buffers, fragmentation, the CUDA context
_MIN_ACTIVATIONS_GB = 2.0
_GB = 1e9
_MB_PER_GB = 1000  # SLURM's --mem is in MB (10^6 bytes in Snakemake's mem_mb)


def accelerator_memory_gb(total_params: float, dtype: str = "float32") -> float:
    """Memory (GB) one copy of the model needs to run the lens.

    ``M = 1.2 * b * P + max(2, 0.1 * 1.2 * b * P)`` GB with ``b`` bytes per
    parameter of ``dtype`` and ``P = total_params``.
    """
    if dtype not in BYTES_PER_PARAM:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(BYTES_PER_PARAM)}")
    weights_gb = _OVERHEAD * BYTES_PER_PARAM[dtype] * total_params / _GB
    return weights_gb + max(_MIN_ACTIVATIONS_GB, 0.1 * weights_gb)


def extract_resources(entry: Mapping[str, Any], attempt: int = 1, default_gpu: int = 0) -> dict:
    """Resources of one extract job of the model described by ``entry``.

    ``entry`` is the model's config entry (``models.<name>``: ``total_params``,
    ``dtype``, optional ``resources``), ``attempt`` Snakemake's attempt number
    (1, 2, ...), ``default_gpu`` the study's GPUs per job (config key
    ``resources.gpu``; 0 = CPU-only study). Returns ``gpu``, ``mem_mb``,
    ``runtime`` (minutes), ``cpus_per_gpu`` and, when the entry names one and
    the job gets GPUs, ``gpu_model``. A CPU-only study always asks for 0 GPUs,
    whatever the entry says: a node without GPUs rejects any GPU request.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1 (Snakemake counts from 1), got {attempt}")
    if default_gpu < 0:
        raise ValueError(f"config key 'resources.gpu' must be >= 0, got {default_gpu}")
    given = dict(entry.get("resources") or {})
    params = float(entry.get("total_params") or UNKNOWN_PARAMS)
    dtype = entry.get("dtype", "float32")
    need_gb = accelerator_memory_gb(params, dtype)
    weights_gb = BYTES_PER_PARAM[dtype] * params / _GB

    if default_gpu > 0:
        gpu = int(given.get("gpu", max(default_gpu, math.ceil(need_gb / GPU_MEMORY_GB))))
    else:
        gpu = 0
    if gpu > 0:
        mem_gb = 16 + 0.25 * weights_gb
        runtime = 30 + params / _GB
    else:
        mem_gb = need_gb
        runtime = 30 + 15 * params / _GB
    mem_mb = int(given.get("mem_mb", max(MIN_MEM_MB, math.ceil(mem_gb * _MB_PER_GB))))
    runtime = int(given.get("runtime", math.ceil(runtime)))

    resources = {
        "gpu": gpu,
        "mem_mb": mem_mb * attempt,
        "runtime": runtime * attempt,
        "cpus_per_gpu": int(given.get("cpus_per_gpu", DEFAULT_CPUS_PER_GPU)),
    }
    # --gpus=MODEL:0 is an invalid request: only name a model when GPUs are asked for.
    if gpu > 0 and given.get("gpu_model"):
        resources["gpu_model"] = str(given["gpu_model"])
    return resources
