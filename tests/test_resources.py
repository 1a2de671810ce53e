"""Cluster resources of extract jobs (exitbench.resources): derived sizes, overrides, retries."""

from __future__ import annotations

import math

import pytest

from exitbench.resources import (
    DEFAULT_CPUS_PER_GPU,
    MIN_MEM_MB,
    accelerator_memory_gb,
    extract_resources,
)


def test_accelerator_memory_formula():
    # 7B in bfloat16: weights 1.2 * 2 * 7 = 16.8 GB, activations max(2, 1.68) = 2 GB.
    assert accelerator_memory_gb(7e9, "bfloat16") == pytest.approx(18.8)
    # 70B in bfloat16: 168 GB weights + 16.8 GB activations.
    assert accelerator_memory_gb(70e9, "bfloat16") == pytest.approx(184.8)
    # float32 doubles the weights.
    assert accelerator_memory_gb(7e9, "float32") == pytest.approx(33.6 + 3.36)
    with pytest.raises(ValueError, match="unknown dtype 'int4'"):
        accelerator_memory_gb(1e9, "int4")


def test_small_model_on_gpu_gets_one_gpu():
    res = extract_resources({"total_params": 124e6, "dtype": "float32"}, 1, default_gpu=1)
    assert res == {
        "gpu": 1,
        "mem_mb": math.ceil((16 + 0.25 * 4 * 0.124) * 1000),
        "runtime": 31,  # ceil(30 + 0.124)
        "cpus_per_gpu": DEFAULT_CPUS_PER_GPU,
    }


def test_gpu_count_grows_with_model_size():
    def gpus(params, dtype="bfloat16"):
        return extract_resources({"total_params": params, "dtype": dtype}, 1, 1)["gpu"]

    assert gpus(7e9) == 1  # 18.8 GB
    assert gpus(30e9) == 1  # 72 + 7.2 = 79.2 GB: still fits one 80 GB card
    assert gpus(34e9) == 2  # 81.6 + 8.16 GB
    assert gpus(70e9) == 3  # 184.8 GB
    assert gpus(70e9, "float32") == 5  # 369.6 GB
    # the study's default is a floor, never reduced
    assert extract_resources({"total_params": 1e8}, 1, default_gpu=2)["gpu"] == 2


def test_runtime_and_host_memory_by_size():
    small = extract_resources({"total_params": 1e9, "dtype": "bfloat16"}, 1, 1)
    big = extract_resources({"total_params": 70e9, "dtype": "bfloat16"}, 1, 1)
    assert small["runtime"] == 31 and big["runtime"] == 100
    assert small["mem_mb"] == 16500 and big["mem_mb"] == 51000  # 16 GB + 0.25 * weights


def test_cpu_only_study_asks_for_no_gpu_even_if_entry_does():
    entry = {
        "total_params": 7e9,
        "dtype": "bfloat16",
        "resources": {"gpu": 2, "gpu_model": "a100"},
    }
    res = extract_resources(entry, 1, default_gpu=0)
    assert res["gpu"] == 0
    assert "gpu_model" not in res  # --gpus=a100:0 would be rejected
    # on CPU the host holds the whole model: 18.8 GB, and runtime 30 + 15 * 7 minutes
    assert res["mem_mb"] == 18800
    assert res["runtime"] == 135


def test_entry_resources_override_each_derived_value():
    entry = {
        "total_params": 70e9,
        "dtype": "bfloat16",
        "resources": {
            "gpu": 4,
            "gpu_model": "h100",
            "mem_mb": 64000,
            "runtime": 240,
            "cpus_per_gpu": 8,
        },
    }
    assert extract_resources(entry, 1, default_gpu=1) == {
        "gpu": 4,
        "gpu_model": "h100",
        "mem_mb": 64000,
        "runtime": 240,
        "cpus_per_gpu": 8,
    }
    # a partial override keeps the derived values for the rest
    partial = extract_resources(
        {"total_params": 70e9, "dtype": "bfloat16", "resources": {"gpu_model": "a100"}}, 1, 1
    )
    assert partial["gpu"] == 3 and partial["gpu_model"] == "a100" and partial["runtime"] == 100


def test_memory_and_runtime_grow_with_attempt():
    entry = {"total_params": 1e9, "dtype": "float32", "resources": {"mem_mb": 3000}}
    first, second, third = (extract_resources(entry, attempt, 1) for attempt in (1, 2, 3))
    assert [r["mem_mb"] for r in (first, second, third)] == [3000, 6000, 9000]
    assert [r["runtime"] for r in (first, second, third)] == [31, 62, 93]
    assert first["gpu"] == second["gpu"] == third["gpu"] == 1


def test_tiny_model_without_size_gets_safe_defaults():
    res = extract_resources({"path": "results/zoo/tiny"}, 1, default_gpu=0)
    # 1B float32 assumed: 4.8 + 2 GB on the host, 45 minutes
    assert res == {"gpu": 0, "mem_mb": 6800, "runtime": 45, "cpus_per_gpu": DEFAULT_CPUS_PER_GPU}
    tiny = extract_resources({"total_params": 1e5}, 1, 0)
    assert tiny["mem_mb"] == 2001  # ceil(0.00048 + 2 GB), never below MIN_MEM_MB
    assert tiny["mem_mb"] >= MIN_MEM_MB
    assert all(isinstance(value, int) for value in res.values())


@pytest.mark.parametrize(
    ("attempt", "default_gpu", "message"),
    [(0, 0, "attempt must be >= 1"), (1, -1, "'resources.gpu' must be >= 0")],
)
def test_bad_arguments_name_the_problem(attempt, default_gpu, message):
    with pytest.raises(ValueError, match=message):
        extract_resources({"total_params": 1e9}, attempt, default_gpu)
