"""Which models get a decode job: hybrids (attention + SSM) are refused when the study is planned.

A decode job that failed at run time would hold back the aggregate job and with it the
whole study's summary, so a model whose type decode cannot run gets no decode job, the plan
says why once, and its summary's decode columns stay empty.
"""

from __future__ import annotations

import pytest
import yaml
from cluster import harness
from test_pipeline import run, study_config
from tiny_configs import CASES

from exitbench.architectures import ARCHITECTURES, HYBRID_PLANS, decode_refusal

pytestmark = pytest.mark.slow


def test_decode_refuses_exactly_the_hybrid_and_mixed_layer_types() -> None:
    refused = {t for t in ARCHITECTURES if decode_refusal(t)}
    assert refused == {
        t for t, a in ARCHITECTURES.items() if a.plan in HYBRID_PLANS or a.mixed_layer_types
    }
    assert refused == {"jamba", "zamba2", "granitemoehybrid", "gemma2", "gemma3", "gemma3_text"}
    assert "'zamba2'" in decode_refusal("zamba2") and "hybrids" in decode_refusal("zamba2")
    assert "'gemma3' interleaves layer types" in decode_refusal("gemma3")


def test_a_hybrid_model_gets_no_decode_job(tmp_path, tiny_model_dirs) -> None:
    hybrid = tmp_path / "tiny-jamba"
    CASES["jamba"]().save_pretrained(hybrid)  # planning reads only config.json
    config = study_config(tiny_model_dirs)
    config["models"]["tiny-jamba"] = {
        "path": str(hybrid),
        "family": "test-jamba",
        "release": "2024-03",
        "arch": "hybrid",
        "total_params": 1e5,
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    result = run(tmp_path, "-n", "--quiet", "rules")
    jobs = harness.planned_jobs(result.stdout)
    assert jobs["score"] == 4  # the hybrid is still scored
    assert jobs["decode"] == 3  # tiny-llama, tiny-gpt2, tiny-mamba2 on the one workload
    said = result.stdout + result.stderr
    assert said.count("no decode job for model 'tiny-jamba'") == 1, said[-3000:]
    assert "model_type 'jamba' mixes attention and SSM layers" in said


def test_an_empty_decode_workload_list_plans_no_decode_stage(tmp_path, tiny_model_dirs) -> None:
    config = study_config(tiny_model_dirs)
    config["decode"] = {"workloads": []}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    jobs = harness.planned_jobs(run(tmp_path, "-n", "--quiet", "rules").stdout)
    assert "decode" not in jobs and jobs["score"] == 3 and jobs["figures"] == 1
