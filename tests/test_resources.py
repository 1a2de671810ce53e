"""Cluster resources of extract and translators jobs (exitbench.resources): the formula on
hand-computed models, its settings (config key `resources:`), overrides and retries."""

from __future__ import annotations

from pathlib import Path

import pytest

from exitbench.config import ConfigError, validate_config
from exitbench.registry import fill_metadata, load_registry
from exitbench.resources import (
    accelerator_memory_gb,
    extract_resources,
    loaded_params,
    translator_parameters,
    translators_resources,
)

REGISTRY = Path(__file__).resolve().parent.parent / "data" / "registry.csv"


def settings(**given) -> dict:
    """The `resources:` section as the workflow sees it: validated, schema defaults filled in."""
    config = {
        "models": {"m": {"path": "x"}},
        "workloads": {"w": {"source": "embedded", "name": "python-docs"}},
    }
    return validate_config({**config, "resources": given})["resources"]


GPU = settings(gpu=1)
CPU = settings()


def test_a_study_without_resources_is_cpu_only_with_the_default_constants():
    assert CPU["gpu"] == 0
    assert extract_resources({"total_params": 7e9, "dtype": "bfloat16"}, 1, CPU)["gpu"] == 0
    # the schema's defaults are what the formula uses when a caller passes no settings
    assert extract_resources({"total_params": 7e9}, 1, CPU) == extract_resources(
        {"total_params": 7e9}
    )


def test_accelerator_memory_by_hand():
    # 7B in bfloat16: weights 1.2 * 2 * 7 = 16.8 GB, activations max(2, 1.68) = 2 GB.
    assert accelerator_memory_gb(7e9, "bfloat16") == pytest.approx(18.8)
    # 70B in bfloat16: 168 GB weights + 16.8 GB activations.
    assert accelerator_memory_gb(70e9, "bfloat16") == pytest.approx(184.8)
    # float32 doubles the weights.
    assert accelerator_memory_gb(7e9, "float32") == pytest.approx(33.6 + 3.36)
    # memory_overhead is a setting: 1.05 x 2 x 70 = 147 GB + 14.7 GB
    assert accelerator_memory_gb(70e9, "bfloat16", {"memory_overhead": 1.05}) == pytest.approx(
        161.7
    )
    with pytest.raises(ValueError, match="unknown dtype 'int4'"):
        accelerator_memory_gb(1e9, "int4")


def test_gpt2_on_a_gpu_by_hand():
    res = extract_resources({"total_params": 124e6, "dtype": "float32"}, 1, GPU)
    # host 16 GB + 0.25 * 4 B * 0.124e9 = 16.124 GB; runtime ceil(30 + 1.2 * 0.124) = 31 min
    assert res == {"gpu": 1, "mem_mb": 16124, "runtime": 31, "cpus_per_gpu": 4}


def test_70b_by_hand_at_default_and_at_paper_settings():
    entry = {"total_params": 70e9, "dtype": "bfloat16", "arch": "dense"}
    # 184.8 GB / 80 GB -> 3 GPUs; host 16 + 35 GB; runtime 30 + 1.2 * 70 = 114 min
    assert extract_resources(entry, 1, GPU) == {
        "gpu": 3,
        "mem_mb": 51000,
        "runtime": 114,
        "cpus_per_gpu": 4,
    }
    # studies/paper.yaml's settings: 161.7 GB / 85 GB -> 2 GPUs
    paper = settings(gpu=1, gpu_memory_gb=85, memory_overhead=1.05)
    assert extract_resources(entry, 1, paper)["gpu"] == 2
    # one H200 (141 GB) per card: 184.8 GB -> 2 GPUs
    assert extract_resources(entry, 1, settings(gpu=1, gpu_memory_gb=141))["gpu"] == 2


def test_gpu_count_grows_with_model_size():
    def gpus(params, dtype="bfloat16"):
        return extract_resources({"total_params": params, "dtype": dtype}, 1, GPU)["gpu"]

    assert gpus(7e9) == 1  # 18.8 GB
    assert gpus(30e9) == 1  # 72 + 7.2 = 79.2 GB: still fits one 80 GB card
    assert gpus(34e9) == 2  # 81.6 + 8.16 GB
    assert gpus(70e9, "float32") == 5  # 369.6 GB
    # the study's gpu is a floor, never reduced
    assert extract_resources({"total_params": 1e8}, 1, settings(gpu=2))["gpu"] == 2


def test_scan_models_get_extra_time():
    dense = {"total_params": 2.8e9, "dtype": "bfloat16", "arch": "dense"}
    # ceil(30 + 1.2 * 2.8) = 34 min; an SSM or hybrid model adds scan_runtime_min = 30
    assert extract_resources(dense, 1, GPU)["runtime"] == 34
    for arch in ("ssm", "hybrid"):
        assert extract_resources({**dense, "arch": arch}, 1, GPU)["runtime"] == 64
    no_scan_time = settings(gpu=1, scan_runtime_min=0)
    assert extract_resources({**dense, "arch": "ssm"}, 1, no_scan_time)["runtime"] == 34


def test_cpu_only_study_asks_for_no_gpu_even_if_entry_does():
    entry = {
        "total_params": 7e9,
        "dtype": "bfloat16",
        "resources": {"gpu": 2, "gpu_model": "a100"},
    }
    res = extract_resources(entry, 1, CPU)
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
    assert extract_resources(entry, 1, GPU) == {
        "gpu": 4,
        "gpu_model": "h100",
        "mem_mb": 64000,
        "runtime": 240,
        "cpus_per_gpu": 8,
    }
    # an override wins over the study's settings too, and a partial one keeps the rest derived
    partial = extract_resources(
        {"total_params": 70e9, "dtype": "bfloat16", "resources": {"gpu": 2}},
        1,
        settings(gpu=1, cpus_per_gpu=6),
    )
    assert partial == {"gpu": 2, "mem_mb": 51000, "runtime": 114, "cpus_per_gpu": 6}


def test_memory_and_runtime_grow_with_attempt():
    entry = {"total_params": 1e9, "dtype": "float32", "resources": {"mem_mb": 3000}}
    first, second, third = (extract_resources(entry, attempt, GPU) for attempt in (1, 2, 3))
    assert [r["mem_mb"] for r in (first, second, third)] == [3000, 6000, 9000]
    assert [r["runtime"] for r in (first, second, third)] == [32, 64, 96]  # ceil(31.2) = 32
    assert first["gpu"] == second["gpu"] == third["gpu"] == 1


def test_model_without_size_gets_a_1b_request_and_tiny_ones_the_floor():
    res = extract_resources({"path": "results/zoo/tiny"}, 1, CPU)
    # 1B float32 assumed: 4.8 + 2 GB on the host, 30 + 15 minutes
    assert res == {"gpu": 0, "mem_mb": 6800, "runtime": 45, "cpus_per_gpu": 4}
    assert extract_resources({"total_params": 1e5}, 1, CPU)["mem_mb"] == 2001  # 0.00048 + 2 GB
    assert extract_resources({"total_params": 1e5}, 1, settings(min_mem_mb=3000))["mem_mb"] == 3000
    assert all(isinstance(value, int) for value in res.values())


def test_unknown_or_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="resources"):
        settings(gpu_mem=80)
    with pytest.raises(ConfigError, match="resources.memory_overhead"):
        settings(memory_overhead=0.5)


@pytest.mark.parametrize("sized", [extract_resources, translators_resources])
@pytest.mark.parametrize(
    ("attempt", "gpu", "message"),
    [(0, 0, "attempt must be >= 1"), (1, -1, "'resources.gpu' must be >= 0")],
)
def test_bad_arguments_name_the_problem(sized, attempt, gpu, message):
    with pytest.raises(ValueError, match=message):
        sized({"total_params": 1e9}, attempt, {"gpu": gpu})


# --------------------------------------------------------------------------- multimodal


def test_gemma3_jobs_are_sized_by_the_checkpoint_the_loader_reads():
    """Gemma-3 >= 4B loads as Gemma3ForConditionalGeneration, vision tower included: its jobs
    get the memory and time of the multimodal total, not of the text model the lens reads."""
    (entry,) = fill_metadata(
        {"g": {"hf_id": "google/gemma-3-4b-pt", "dtype": "bfloat16"}}, load_registry(REGISTRY)
    ).values()
    assert (entry["total_params"], entry["multimodal_params"]) == (3.88e9, 4.32e9)
    assert (entry["layers"], entry["hidden"], entry["vocab"]) == (34, 2560, 262208)
    assert loaded_params(entry) == 4.32e9
    assert loaded_params({"total_params": 3.88e9}) == 3.88e9
    # GPU: host 16 + 0.25 * 2 B * 4.32e9 = 18.16 GB; runtime ceil(30 + 1.2 * 4.32) = 36
    assert extract_resources(entry, 1, GPU) == {
        "gpu": 1,
        "mem_mb": 18160,
        "runtime": 36,
        "cpus_per_gpu": 4,
    }
    # CPU: the whole model, 1.2 * 2 * 4.32 = 10.368 GB + 2 GB (the text model alone: 11312)
    assert extract_resources(entry, 1, CPU)["mem_mb"] == 12368
    text_only = {key: value for key, value in entry.items() if key != "multimodal_params"}
    assert extract_resources(text_only, 1, CPU)["mem_mb"] == 11312


# --------------------------------------------------------------------------- translators

LLAMA2_7B = {
    "total_params": 6.7e9,
    "dtype": "bfloat16",
    "arch": "dense",
    "layers": 32,
    "hidden": 4096,
    "vocab": 32000,
}
TUNED_LENS_DEFAULTS = {"steps": 250, "tokens_per_step": 2**18, "batch_tokens": 8192}


def test_translators_of_a_7b_model_by_hand():
    assert translator_parameters(LLAMA2_7B) == 32 * (4096**2 + 4096)
    res = translators_resources(LLAMA2_7B, 1, GPU, TUNED_LENS_DEFAULTS)
    # memory: weights 1.2 * 2 * 6.7 = 16.08 GB, translators' fp32 weights + gradients +
    # momentum 12 * 32 * (4096^2 + 4096) B = 6.44 GB, one pass of 8192 tokens
    # 8192 * (16 * 32000 + 2 * 33 * 4096) B = 6.41 GB: 28.9 GB, one GPU
    # runtime: 250 * 2^18 tokens * (2 * 6.7e9 + 3 * 32 * (2 * 4096^2 + 2 * 4096 * 32000))
    # FLOPs = 2.7386e18 at 100 TFLOP/s = 456.4 min, + 30 min
    assert res == {"gpu": 1, "mem_mb": 19350, "runtime": 487, "cpus_per_gpu": 4}
    # the defaults of translators: are tuned-lens's, so no section means the same request
    assert translators_resources(LLAMA2_7B, 1, GPU) == res
    # twice the sustained throughput halves the training part
    assert translators_resources(LLAMA2_7B, 1, settings(gpu=1, gpu_tflops=200))["runtime"] == 259
    # memory and time grow with the attempt, as extract's
    assert translators_resources(LLAMA2_7B, 2, GPU)["runtime"] == 2 * 487


def test_translators_of_a_70b_model_need_a_gpu_more_than_its_extract():
    """Llama-3-70B at the paper study's settings: extract fits 2 x 85 GB, the translators'
    64 GB of training state and a 28 GB pass do not."""
    paper = settings(gpu=1, gpu_memory_gb=85, memory_overhead=1.05)
    entry = {
        "total_params": 7.06e10,
        "dtype": "bfloat16",
        "layers": 80,
        "hidden": 8192,
        "vocab": 128256,
    }
    assert extract_resources(entry, 1, paper)["gpu"] == 2
    res = translators_resources(entry, 1, paper, TUNED_LENS_DEFAULTS)
    # 148.26 GB weights + 64.43 GB state + 27.68 GB pass = 240.4 GB -> 3 x 85 GB
    assert res["gpu"] == 3
    # 65.5M tokens x 677.7 GFLOP at 100 TFLOP/s: 7,402 min (about 5 days) + 30
    assert res["runtime"] == 7433


def test_translators_of_a_tiny_model_on_cpu_and_without_shape():
    zoo = {"path": "results/zoo/llama-s", "total_params": 2.7e6, "layers": 8, "hidden": 128}
    res = translators_resources(zoo, 1, CPU, {"steps": 20, "tokens_per_step": 512})
    # no vocab: the registry's largest, 262144, bounds a pass of min(8192, 512) tokens:
    # 512 * (16 * 262144 + 4 * 9 * 128) B = 2.150 GB + weights 1.2 * 4 * 2.7e6 B = 0.013 GB
    # + state 12 * 8 * (128^2 + 128) B = 0.0016 GB on the host; F = 6 * 2.7e6 FLOPs per
    # token x 10240 tokens at 0.03 TFLOP/s = 5.5 s, + 30 min
    assert res == {"gpu": 0, "mem_mb": 2165, "runtime": 31, "cpus_per_gpu": 4}
    # no layers or hidden: translators of total_params / 6 parameters (an upper bound)
    assert translator_parameters({"total_params": 6e9}) == 1e9
