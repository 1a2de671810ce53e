"""End to end through Snakemake's CLI in a temporary working directory, on tiny models."""

from __future__ import annotations

import copy
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from cluster import harness  # tests/cluster/harness.py (tests/ is on sys.path)

from exitbench import plots, tables

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]

pytestmark = pytest.mark.slow


def study_config(model_dirs: dict[str, Path]) -> dict:
    return {
        "seed": 0,
        "models": {
            "tiny-llama": {
                "path": str(model_dirs["llama"]),
                "family": "test-llama",
                "release": "2023-07",
                "arch": "dense",
                "total_params": 1e5,
            },
            "tiny-gpt2": {
                "path": str(model_dirs["gpt2"]),
                "family": "test-gpt2",
                "release": "2019-02",
                "arch": "dense",
                "total_params": 1e5,
            },
            "tiny-mamba2": {
                "path": str(model_dirs["mamba2"]),
                "family": "test-mamba",
                "release": "2024-05",
                "arch": "ssm",
                "total_params": 1e5,
            },
        },
        "workloads": {"docs": {"source": "embedded", "name": "python-docs", "max_docs": 12}},
        "tokenize": {"seq_len": 32, "max_sequences": 6},
        "extract": {"top_k": 3, "batch_size": 4, "shard_sequences": 4},
        "score": {"bootstrap": 50, "thresholds": 11},
    }


def run(
    workdir: Path, *args: str, check: bool = True, configfile: str = "study.yaml"
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **harness.NO_SLURM}
    result = subprocess.run(
        [
            *SNAKEMAKE,
            "--directory",
            str(workdir),
            "--configfile",
            str(workdir / configfile),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stderr[-6000:]}")
    return result


def digest(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in sorted(paths)}


@pytest.fixture(scope="module")
def study(tiny_model_dirs, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("study")
    (workdir / "study.yaml").write_text(yaml.safe_dump(study_config(tiny_model_dirs)))
    run(workdir, "--cores", "2")
    return workdir


def test_every_stage_writes_its_contract(study):
    results = study / "results"
    assert (results / "workloads" / "docs.parquet").exists()
    for model, layers in [
        ("tiny-llama", range(0, 4)),
        ("tiny-gpt2", range(0, 4)),
        ("tiny-mamba2", range(1, 4)),
    ]:
        tokens = tables.read_table(results / "tokens" / model / "docs.parquet", "tokens")
        assert 0 < tokens.num_rows <= 6
        shards = sorted((results / "lens" / model / "docs").glob("shard-*.parquet"))
        assert [s.name for s in shards] == ["shard-0.parquet", "shard-1.parquet"]
        lens = pq.read_table(shards).to_pandas()
        assert sorted(lens["layer"].unique()) == list(layers)
        assert len(lens) == sum(tokens.column("n_tokens").to_pylist()) * len(layers)
        final = lens[lens["layer"] == max(layers)]
        assert (final["kl_to_final"].abs() < 1e-5).all()
        assert (results / "scores" / model / "docs.parquet").exists()
        assert (results / "scores" / model / "docs.json").exists()
    summary = pq.read_table(results / "summary.parquet").to_pandas()
    assert sorted(summary["model"]) == ["tiny-gpt2", "tiny-llama", "tiny-mamba2"]
    # realised decoding joins the summary: every pair was decoded (decode.workloads: all)
    assert summary["decode_full_tokens_per_s"].gt(0).all()
    assert summary["decode_speculative_pass_cost_speedup"].notna().all()
    for stem in ("agreement_curves", "tradeoff", "saturation_hist"):
        assert (study / "figures" / f"{stem}.png").stat().st_size > 0
        assert (study / "figures" / f"{stem}.pdf").stat().st_size > 0


def test_second_run_has_nothing_to_do(study):
    result = run(study, "--cores", "2", "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def planned_jobs(workdir: Path, config: dict, *args: str) -> dict[str, int]:
    """Jobs per rule that ``snakemake -n`` plans in ``workdir`` under ``config``, from the
    "Job stats:" table it prints ({} when it says there is nothing to be done)."""
    (workdir / "edited.yaml").write_text(yaml.safe_dump(config))
    result = run(workdir, "-n", "--quiet", "rules", *args, configfile="edited.yaml")
    return harness.planned_jobs(result.stdout)


def edited(config: dict, path: str, value) -> dict:
    """A copy of ``config`` with the key at dotted ``path`` (e.g. ``extract.top_k``) set."""
    config = copy.deepcopy(config)
    *parents, key = path.split(".")
    section = config
    for name in parents:
        section = section.setdefault(name, {})
    section[key] = value
    return config


# settings that change only speed or memory; each differs from the study's (or the default)
@pytest.mark.parametrize(
    "path, value",
    [
        ("extract.batch_size", 1),
        ("extract.token_chunk", 5),
        ("extract.device", "cpu"),
        ("models.tiny-gpt2.resources", {"mem_mb": 1000, "runtime": 5}),
        ("resources.gpu", 1),
    ],
)
def test_performance_settings_rerun_nothing(study, path, value):
    config = yaml.safe_load((study / "study.yaml").read_text())
    assert planned_jobs(study, edited(config, path, value)) == {}


def test_thread_counts_rerun_nothing(study):
    config = yaml.safe_load((study / "study.yaml").read_text())
    assert planned_jobs(study, config, "--set-threads", "extract=1", "tokenize=2") == {}


def test_result_settings_rerun_what_they_change(study):
    config = yaml.safe_load((study / "study.yaml").read_text())
    downstream = {"aggregate": 1, "figures": 1, "all": 1}
    # 3 models x 2 shards (6 windows, 4 per shard)
    assert planned_jobs(study, edited(config, "extract.top_k", 4)) == {
        "extract": 6,
        "score": 3,
        "decode": 3,
        **downstream,
    }
    assert planned_jobs(study, edited(config, "extract.shard_sequences", 3)) == {
        "extract": 6,
        "score": 3,
        "decode": 3,
        **downstream,
    }
    # one model's weights: only its chain, from the facts read off its config
    assert planned_jobs(study, edited(config, "models.tiny-gpt2.dtype", "bfloat16")) == {
        "describe_model": 1,
        "tokenize": 1,
        "extract": 2,
        "score": 1,
        "decode": 1,
        **downstream,
    }
    assert planned_jobs(study, edited(config, "tokenize.mode", "packed")) == {
        "tokenize": 3,
        "extract": 6,
        "score": 3,
        "decode": 3,
        **downstream,
    }


def test_rerunning_one_model_reruns_only_its_chain(study):
    target = study / "results" / "scores" / "tiny-gpt2" / "docs.parquet"
    before = digest([target])
    target.unlink()
    result = run(study, "--cores", "2", str(target.relative_to(study)))
    log = result.stdout + result.stderr
    assert "rule score:" in log and "rule extract:" not in log
    assert digest([target]) == before


def test_scores_are_byte_identical_across_reruns(study):
    outputs = list((study / "results" / "lens").rglob("*.parquet"))
    outputs += list((study / "results" / "scores").rglob("*.*"))
    before = digest(outputs)
    run(study, "--cores", "2", "--forcerun", "extract", "--until", "score")
    assert digest(outputs) == before


def test_report_embeds_every_figure(study):
    run(study, "--report", str(study / "report.html"))
    html = (study / "report.html").read_text()
    assert len(html) > 100_000
    assert sorted(plots.FIGURES) == sorted(rule_figures())  # the figures rule draws each
    for stem in plots.FIGURES:
        assert f"{stem}.png" in html, stem


def rule_figures() -> list[str]:
    """The FIGURES list of workflow/rules/common.smk (the figures rule's outputs)."""
    text = (REPO / "workflow" / "rules" / "common.smk").read_text()
    block = text[text.index("FIGURES = [") : text.index("]", text.index("FIGURES = ["))]
    return re.findall(r'"(\w+)"', block)


def test_missing_model_path_fails_before_any_job(tmp_path, tiny_model_dirs):
    config = study_config(tiny_model_dirs)
    config["models"]["tiny-llama"]["path"] = str(tmp_path / "nowhere")
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    result = run(tmp_path, "--cores", "1", check=False)
    assert result.returncode != 0
    assert "models.tiny-llama.path" in result.stderr and "nowhere" in result.stderr
    assert not (tmp_path / "results").exists()


def test_lint_and_format_are_clean():
    lint = subprocess.run(
        [*SNAKEMAKE, "--lint", "-n"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **harness.NO_SLURM},
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "."], cwd=REPO, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
