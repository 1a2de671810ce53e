"""Aggregate stage: summary table and claim statistics on a synthetic study.

``write_fake_study`` builds score JSONs (valid against the score headline
schema), score Parquets and model descriptions for a study of 10 models (dense,
MoE, SSM, hybrid; release dates; a base/tuned pair; a training run with 4
checkpoints) on two workloads, one pair of which failed. tests/test_plots.py
renders its figures from the same study.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from exitbench import aggregate, logs
from exitbench.provenance import write_json
from exitbench.tables import read_table, write_table

MEASURES = ("maxprob", "margin", "entropy", "cos_prev", "patience")

#: name -> (config entry, num_layers, oracle_savings on workload "docs")
FAKE_MODELS: dict[str, tuple[dict[str, Any], int, float]] = {
    "gpt2-small": (
        {
            "family": "GPT-2",
            "release": "2019-02",
            "arch": "dense",
            "total_params": 124e6,
            "tuning": "base",
            "hf_id": "openai-community/gpt2",
        },
        12,
        0.40,
    ),
    "gpt2-xl": (
        {
            "family": "GPT-2",
            "release": "2019-11",
            "arch": "dense",
            "total_params": 1.56e9,
            "tuning": "base",
            "hf_id": "openai-community/gpt2-xl",
        },
        48,
        0.37,
    ),
    "llama-7b": (
        {
            "family": "Llama",
            "generation": "Llama-2",
            "release": "2023-07-18",
            "arch": "dense",
            "total_params": 6.7e9,
            "tuning": "base",
            "path": "zoo/llama",
        },
        32,
        0.30,
    ),
    "llama-7b-chat": (
        {
            "family": "Llama",
            "generation": "Llama-2",
            "release": "2023-07-18",
            "arch": "dense",
            "total_params": 6.7e9,
            "tuning": "tuned",
            "base_model": "llama-7b",
            "path": "zoo/chat",
        },
        32,
        0.26,
    ),
    "llama-8b": (
        {
            "family": "Llama",
            "generation": "Llama-3",
            "release": "2024-04",
            "arch": "dense",
            "total_params": 8.0e9,
            "tuning": "base",
            "path": "zoo/llama3",
        },
        32,
        0.25,
    ),
    "mixtral": (
        {
            "family": "Mixtral",
            "release": "2023-12",
            "arch": "moe",
            "total_params": 46.7e9,
            "active_params": 12.9e9,
            "tuning": "base",
            "hf_id": "mistralai/Mixtral-8x7B-v0.1",
        },
        32,
        0.28,
    ),
    "mamba": (
        {
            "family": "Mamba",
            "release": "2023-12",
            "arch": "ssm",
            "total_params": 2.8e9,
            "tuning": "base",
            "hf_id": "state-spaces/mamba-2.8b-hf",
        },
        64,
        0.33,
    ),
    "jamba": (
        {
            "family": "Jamba",
            "release": "?",
            "arch": "hybrid",
            "total_params": 52e9,
            "active_params": 12e9,
            "hf_id": "ai21labs/Jamba-v0.1",
        },
        32,
        0.27,
    ),
    **{
        f"pythia-step{step}": (
            {
                "family": "Pythia",
                "release": "2023-02",
                "arch": "dense",
                "total_params": 160e6,
                "tuning": "base",
                "hf_id": "EleutherAI/pythia-160m",
                "revision": f"step{step}",
                "training_step": step,
                "checkpoint_of": "pythia-160m",
            },
            12,
            savings,
        )
        for step, savings in [(0, 0.05), (1000, 0.20), (10000, 0.30), (143000, 0.35)]
    },
}
WORKLOADS = ("docs", "code")
WORKLOAD_SHIFT = {"docs": 0.0, "code": 0.05}
FAILED = (("mamba", "code"),)


@dataclass
class FakeStudy:
    models: dict[str, dict[str, Any]]
    score_jsons: dict[tuple[str, str], Path]
    curves: dict[tuple[str, str], Path]
    model_infos: dict[str, Path]
    root: Path
    failed: list[tuple[str, str]] = field(default_factory=list)


def _ci(estimate: float | None, half: float = 0.02) -> dict[str, float | None]:
    if estimate is None:
        return {"estimate": None, "ci_low": None, "ci_high": None}
    return {"estimate": estimate, "ci_low": estimate - half, "ci_high": estimate + half * 1.5}


def _sweep(oracle: float, n: int = 21) -> list[dict[str, float | None]]:
    """Held-out sweep: consistency = 1 - (s / s_max)^3 * 0.3 for savings s in [0, s_max]."""
    s_max = min(0.95, oracle * 1.6 + 0.05)
    points = []
    for k in range(n):
        s = s_max * (1 - k / (n - 1))  # thresholds ascending -> savings descending
        c = 1 - 0.3 * (s / s_max) ** 3
        points.append(
            {
                "threshold": None if k == n - 1 else 0.05 * k,
                "savings": s,
                "consistency": c,
                "accuracy": 0.3 * c,
                "net_flop_savings": 0.9 * s,
            }
        )
    return points


def _at_consistency(sweep: list[dict[str, Any]], target: float) -> dict[str, Any]:
    ok = [p for p in sweep if p["consistency"] >= target]
    return max(ok, key=lambda p: p["savings"])


def _agreement(layers: np.ndarray, num_layers: int, oracle: float) -> np.ndarray:
    """A sigmoid in layer / L that reaches 1 at layer L; later rise for smaller savings."""
    x = layers / num_layers
    mid = 1 - oracle - 0.1
    curve = 1 / (1 + np.exp(-(x - mid) * 12))
    curve = curve / curve[-1]
    curve[-1] = 1.0
    return np.clip(curve, 0, 1)


def fake_score(
    model: str, workload: str, num_layers: int, oracle: float, has_embeddings: bool = True
) -> tuple[pa.Table, dict[str, Any]]:
    """A scores table and a headline JSON (valid against the score schema) for one pair."""
    layers = np.arange(0 if has_embeddings else 1, num_layers + 1)
    agreement = _agreement(layers, num_layers, oracle)
    exit_layers = np.arange(1, num_layers + 1)
    weights = np.exp(-((exit_layers / num_layers - (1 - oracle)) ** 2) / 0.02)
    weights[-1] += weights.sum() * 0.3
    n_tokens = 4096
    counts = np.floor(weights / weights.sum() * n_tokens).astype(np.int64)
    counts[-1] += n_tokens - counts.sum()
    n = layers.size
    sat = np.zeros(n, dtype=np.int64)
    sat[n - num_layers :] = counts
    columns: dict[str, Any] = {
        "model": [model] * n,
        "workload": [workload] * n,
        "layer": pa.array(layers, pa.int16()),
        "layer_fraction": layers / num_layers,
        "n_tokens": [n_tokens] * n,
        "n_gold_tokens": [n_tokens - 16] * n,
        "agreement": agreement,
        "agreement_ci_low": np.clip(agreement - 0.03, 0, 1),
        "agreement_ci_high": np.clip(agreement + 0.03, 0, 1),
    }
    for name, values in [
        ("accuracy", 0.35 * agreement),
        ("maxprob_mean", 0.2 + 0.5 * agreement),
        ("margin_mean", 0.4 * agreement),
        ("entropy_nats_mean", 5 - 3 * agreement),
        ("kl_to_final_mean", 4 * (1 - agreement)),
        ("cos_prev_mean", 0.5 + 0.4 * agreement),
    ]:
        columns[name] = values
        columns[f"{name}_ci_low"] = values - 0.01
        columns[f"{name}_ci_high"] = values + 0.01
    columns["saturation_count"] = sat
    columns["first_agreement_count"] = sat
    columns["lens"] = ["logit"] * n
    table = pa.table(columns)

    sweep = _sweep(oracle)
    at99, at95 = _at_consistency(sweep, 0.99), _at_consistency(sweep, 0.95)
    policy = {
        key: {
            "threshold": point["threshold"],
            "calibration": {k: point[k] for k in ("savings", "consistency", "accuracy")},
            **{k: _ci(point[k], 0.01) for k in ("savings", "consistency", "accuracy")},
            "net_flop_savings": _ci(point["net_flop_savings"], 0.01),
        }
        for key, point in [("0.99", at99), ("0.95", at95)]
    }
    mean_sat = float((exit_layers * counts).sum() / n_tokens)
    headline = {
        "oracle_savings": _ci(oracle),
        "savings_at_99": _ci(at99["savings"]),
        "savings_at_95": _ci(at95["savings"]),
        "consistency_savings_auc": _ci(0.8 * oracle + 0.1),
        "oracle_net_flop_savings": _ci(0.9 * oracle),
        "net_flop_savings_at_99": _ci(at99["net_flop_savings"]),
        "net_flop_savings_at_95": _ci(at95["net_flop_savings"]),
        "mean_saturation_layer": _ci(mean_sat, 0.5),
        "mean_first_agreement_layer": _ci(mean_sat - 0.5, 0.5),
        "final_accuracy": _ci(0.35),
    }
    summary = {
        "model": model,
        "workload": workload,
        "document_sums": fake_document_sums(model, headline),
        "num_layers": num_layers,
        "layers": layers.tolist(),
        "n_tokens": n_tokens,
        "n_gold_tokens": n_tokens - 16,
        "n_documents": 40,
        "n_calibration_documents": 20,
        "n_heldout_documents": 20,
        "headline": headline,
        "best_measure": {"0.99": "maxprob", "0.95": "margin", "auc": "maxprob"},
        "policies": {m: policy for m in MEASURES},
        "auc": {
            m: {"heldout": headline["consistency_savings_auc"], "calibration": 0.5}
            for m in MEASURES
        },
        "sweeps": {m: sweep for m in MEASURES},
        "measures": dict.fromkeys(MEASURES, "exit rule"),
        "distributions": {
            "layers": exit_layers.tolist(),
            "saturation_count": counts.tolist(),
            "first_agreement_count": counts.tolist(),
        },
        "flops": {"per_layer": [1e6] * num_layers, "head": 2e5, "full": 1e6 * num_layers + 2e5},
        "params": {
            "bootstrap": 100,
            "calibration_fraction": 0.5,
            "consistency_targets": [0.99, 0.95],
            "thresholds": 21,
            "patience": 2,
            "seed": 0,
            "seq_len": 128,
        },
        "provenance": {},
    }
    return table, summary


def fake_document_sums(model: str, headline: dict[str, Any], n_docs: int = 40) -> dict[str, Any]:
    """Per-document sums of 40 documents (20 held out) that reproduce ``headline``'s ratios:
    denominators 100..139 tokens, numerators ``estimate * den`` plus a per-model zero-sum
    wobble (so two models differ document by document)."""
    held = [d % 2 == 1 for d in range(n_docs)]
    wobble = np.sin(np.arange(n_docs) * (1 + zlib.crc32(model.encode()) % 7)) * 2.0
    metrics = {}
    for name, entry in headline.items():
        if name == "consistency_savings_auc" or entry["estimate"] is None:
            continue
        split = "heldout" if "_at_" in name else "all"
        keep = np.array(held) if split == "heldout" else np.ones(n_docs, bool)
        den = 100.0 + np.arange(n_docs)[keep]
        noise = wobble[keep] - wobble[keep].mean() * den / den.mean()
        metrics[name] = {
            "split": split,
            "numerator": (entry["estimate"] * den + noise).tolist(),
            "denominator": den.tolist(),
        }
    return {
        "documents": [f"doc{d:02d}" for d in range(n_docs)],
        "heldout": held,
        "metrics": metrics,
    }


def write_fake_study(
    root: Path,
    models: dict[str, tuple[dict[str, Any], int, float]] | None = None,
    workloads: tuple[str, ...] = WORKLOADS,
    failed: tuple[tuple[str, str], ...] = FAILED,
) -> FakeStudy:
    """Write results/{scores,models}/ of a synthetic study under ``root``."""
    models = FAKE_MODELS if models is None else models
    study = FakeStudy({}, {}, {}, {}, root, list(failed))
    for name, (entry, num_layers, oracle) in models.items():
        study.models[name] = dict(entry)
        info = root / "results" / "models" / f"{name}.json"
        write_json(
            {
                "name": name,
                "model_type": "mamba2" if entry.get("arch") == "ssm" else "llama",
                "num_layers": num_layers,
                "hidden_size": 64,
                "vocab_size": 384,
            },
            info,
        )
        study.model_infos[name] = info
        for workload in workloads:
            json_path = root / "results" / "scores" / name / f"{workload}.json"
            curves_path = json_path.with_suffix(".parquet")
            study.score_jsons[(name, workload)] = json_path
            study.curves[(name, workload)] = curves_path
            if (name, workload) in failed:
                continue
            table, summary = fake_score(
                name,
                workload,
                num_layers,
                oracle + WORKLOAD_SHIFT.get(workload, 0.0),
                has_embeddings=entry.get("arch") != "ssm",
            )
            write_table(table, curves_path, "scores")
            write_json(summary, json_path)
    return study


@pytest.fixture
def fake_study(tmp_path: Path) -> FakeStudy:
    return write_fake_study(tmp_path)


def _fake_summary(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A summary frame from partial rows (other columns null), through the schema's dtypes."""
    base = {"status": "ok", "workload": "w"}
    return aggregate._typed(pd.DataFrame([{**base, **row} for row in rows]))


# ---------------------------------------------------------------- summary


def test_summary_row_copies_a_real_score_json(tmp_path: Path):
    """The score stage's own output (not a fake) lands in the summary value for value."""
    from test_score import hand_case, params

    from exitbench import score

    paths, tokens, info = hand_case(tmp_path)
    table, headline = score.score_lens(paths, tokens, info, params(bootstrap=30), seed=0)
    json_path = tmp_path / "scores" / "tiny" / "work.json"
    score.write_scores(table, headline, json_path.with_suffix(".parquet"), json_path)
    entry = {"family": "F", "arch": "dense", "release": "2024-01", "resources": {"gpu": 1}}
    summary = aggregate.build_summary({("tiny", "work"): json_path}, {"tiny": entry})
    row = summary.iloc[0]
    written = json.loads(json_path.read_text())
    assert row["status"] == "ok" and row["n_tokens"] == 6 and row["n_documents"] == 2
    for metric in aggregate.HEADLINE_METRICS:
        value = written["headline"][metric]
        for column, key in [(metric, "estimate"), (f"{metric}_ci_low", "ci_low")]:
            if value[key] is None:
                assert pd.isna(row[column]), column
            else:
                assert row[column] == value[key], column
    assert row["oracle_savings"] == pytest.approx(1 - 15 / 6 / 4)
    assert row["best_measure_99"] == written["best_measure"]["0.99"]
    assert row["flops_per_token"] == written["flops"]["full"]
    assert row["family"] == "F" and row["release_year"] == 2024.0
    # issue 10 item 5: the too-few-documents flag and the warnings travel into the summary
    assert bool(row["few_documents"]) is True and row["n_windows"] == 2
    assert pd.isna(row["n_windows_requested"])
    assert row["warnings"] == "; ".join(written["warnings"])
    assert row["warnings"].startswith("only 1 held-out document(s)")


def test_model_metadata_keeps_only_what_the_summary_shows():
    models = {
        "a": {"path": "zoo/a", "arch": "dense", "resources": {"gpu": 1}, "dtype": "float32"},
        "b": {"hf_id": "org/b", "tuning": "tuned", "base_model": "a"},
    }
    assert aggregate.model_metadata(models) == {
        "a": {"arch": "dense", "path": "zoo/a", "dtype": "float32"},
        "b": {"tuning": "tuned", "base_model": "a", "hf_id": "org/b"},
    }


def write_job_log(path: Path, *messages: tuple[int, str]) -> None:
    """A job log as workflow scripts write it (exitbench.logs.FORMAT)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter(logs.FORMAT))
    logger = logging.getLogger("exitbench.test_job")
    logger.addHandler(handler)
    try:
        for level, message in messages:
            logger.log(level, message)
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_failed_pair_error_is_its_first_job_error_line(fake_study: FakeStudy, tmp_path: Path):
    log_dir = fake_study.root / "results" / "logs"
    write_job_log(log_dir / "tokenize" / "mamba" / "code.log", (logging.INFO, "tokenized: 3"))
    write_job_log(
        log_dir / "extract" / "mamba" / "code" / "shard-1.log",
        (logging.INFO, "loading model"),
        (logging.ERROR, "failed: CUDA out of memory: tried 2 GiB"),
        (logging.ERROR, "a later error"),
    )
    assert logs.job_failure(log_dir, "mamba", "code") == (
        "extract: failed: CUDA out of memory: tried 2 GiB"
    )
    assert logs.job_failure(log_dir, "mamba", "docs") is None
    out = tmp_path / "out"
    summary = aggregate.aggregate_files(
        fake_study.score_jsons,
        fake_study.models,
        fake_study.model_infos,
        out / "s.parquet",
        out / "s.csv",
        out / "t.csv",
        out / "t.json",
        n_boot=50,
        log_dir=log_dir,
    )
    failed = summary[summary["status"] == "failed"]
    assert failed["error"].tolist() == ["extract: failed: CUDA out of memory: tried 2 GiB"]


def test_write_failure_summary_after_a_failed_run(
    fake_study: FakeStudy, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.chdir(fake_study.root)
    config = {
        "models": {
            name: {**entry, "resources": {"gpu": 1}} for name, entry in fake_study.models.items()
        },
        "workloads": {name: {"source": "embedded"} for name in WORKLOADS},
        "seed": 0,
    }
    write_job_log(
        Path("results/logs/score/mamba/code.log"), (logging.ERROR, "failed: no lens shards")
    )
    with caplog.at_level(logging.WARNING, logger="exitbench"):
        aggregate.write_failure_summary(config)
    summary = read_table("results/summary.parquet", "summary").to_pandas()
    assert len(summary) == len(FAKE_MODELS) * len(WORKLOADS)
    failed = summary[summary["status"] == "failed"]
    assert failed[["model", "workload", "error"]].values.tolist() == [
        ["mamba", "code", "score: failed: no lens shards"]
    ]
    assert f"1 of {len(summary)} (model, workload) pairs failed" in caplog.text
    assert "mamba / code: score: failed: no lens shards" in caplog.text
    statistics = json.loads(Path("results/statistics.json").read_text())
    assert statistics["params"]["seed"] == 0 and statistics["rows"]
    assert Path("results/summary.csv").exists() and Path("results/statistics.csv").exists()
    # dated to the epoch: the next run rebuilds them, never takes them as a finished aggregate
    assert [Path(p).stat().st_mtime for p in aggregate.FAILURE_SUMMARY_FILES] == [0, 0, 0, 0]
    # its own failure is a warning, never an exception that would hide the run's error
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="exitbench"):
        aggregate.write_failure_summary({"models": {}, "workloads": {}, "seed": 0})
    assert "could not write a partial logit-lens summary" in caplog.text


def test_write_failure_summary_covers_the_tuned_lens(
    fake_study: FakeStudy, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """With lenses: [logit, tuned], the pairs whose tuned scores are older than their model's
    retrained translators are failed in summary-tuned, its stale tuned scores moved aside; the logit
    lens's tables are untouched by it, and both lenses' tables are dated to the epoch."""
    monkeypatch.chdir(fake_study.root)
    for (model, workload), path in fake_study.score_jsons.items():
        if not Path(path).exists():  # the fake study's failed pair
            continue
        tuned = Path("results/scores-tuned") / model / f"{workload}.json"
        tuned.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, tuned)  # as new as the logit lens's JSON
    model, workload = next(iter(fake_study.score_jsons))
    translators = Path("results/translators") / model / "params.pt"
    translators.parent.mkdir(parents=True)
    translators.write_bytes(b"retrained")  # newer than every tuned score JSON
    config = {
        "models": fake_study.models,
        "workloads": {name: {"source": "embedded"} for name in WORKLOADS},
        "seed": 0,
        "lenses": ["logit", "tuned"],
    }
    with caplog.at_level(logging.WARNING, logger="exitbench"):
        aggregate.write_failure_summary(config)
    tuned = read_table("results/summary-tuned.parquet", "summary").to_pandas()
    failed = tuned[tuned["status"] == "failed"]
    pairs = zip(failed["model"], failed["workload"], strict=True)
    reasons = dict(zip(pairs, failed["error"], strict=True))
    # the translators serve every workload of the model
    assert set(reasons) == {*((model, w) for w in WORKLOADS), *fake_study.failed}
    assert f"older than its input {translators}" in reasons[model, workload]
    assert (Path("results/stale/scores-tuned") / model / f"{workload}.json").exists()
    assert not (Path("results/scores-tuned") / model / f"{workload}.json").exists()
    logit = read_table("results/summary.parquet", "summary").to_pandas()
    assert logit[logit["status"] == "failed"][["model", "workload"]].values.tolist() == [
        list(pair) for pair in fake_study.failed
    ]
    tables = [*aggregate.FAILURE_SUMMARY_FILES, *aggregate.LENS_RESULTS["tuned"]["tables"]]
    assert [Path(p).stat().st_mtime for p in tables] == [0] * 8
    assert (
        f"tuned lens: {len(reasons)} of {len(tuned)} (model, workload) pairs failed" in caplog.text
    )


def test_summary_rows_columns_and_values(fake_study: FakeStudy, tmp_path: Path):
    summary = aggregate.build_summary(
        fake_study.score_jsons, fake_study.models, fake_study.model_infos
    )
    assert len(summary) == len(FAKE_MODELS) * len(WORKLOADS)
    assert list(summary[["model", "workload"]].itertuples(index=False, name=None)) == list(
        fake_study.score_jsons
    )
    for metric in aggregate.HEADLINE_METRICS:
        assert {metric, f"{metric}_ci_low", f"{metric}_ci_high"} <= set(summary.columns)
    row = summary.set_index(["model", "workload"]).loc[("llama-7b", "docs")]
    assert row["status"] == "ok" and pd.isna(row["error"])
    assert row["oracle_savings"] == pytest.approx(0.30)
    assert row["oracle_savings_ci_low"] == pytest.approx(0.28)
    assert row["oracle_savings_ci_high"] == pytest.approx(0.33)
    assert row["release"] == "2023-07-18"
    assert row["release_year"] == pytest.approx(2023 + 198 / 365)
    assert row["num_layers"] == 32 and row["n_tokens"] == 4096 and row["n_documents"] == 40
    assert row["family"] == "Llama" and row["arch"] == "dense" and row["tuning"] == "base"
    assert row["path"] == "zoo/llama" and pd.isna(row["hf_id"])
    assert row["model_type"] == "llama" and row["vocab_size"] == 384
    assert row["best_measure_99"] == "maxprob" and row["best_measure_95"] == "margin"
    assert row["flops_per_token"] == pytest.approx(32e6 + 2e5)
    chat = summary.set_index(["model", "workload"]).loc[("llama-7b-chat", "code")]
    assert chat["base_model"] == "llama-7b" and chat["tuning"] == "tuned"
    assert chat["oracle_savings"] == pytest.approx(0.31)
    step = summary.set_index(["model", "workload"]).loc[("pythia-step1000", "docs")]
    assert step["training_step"] == 1000 and step["checkpoint_of"] == "pythia-160m"
    assert step["revision"] == "step1000"
    # the registry's "?" is never presented as a fact
    jamba = summary.set_index(["model", "workload"]).loc[("jamba", "docs")]
    assert pd.isna(jamba["release"]) and pd.isna(jamba["release_year"])
    assert pd.isna(jamba["tuning"]) and jamba["active_params"] == 12e9

    aggregate.write_summary(summary, tmp_path / "s.parquet", tmp_path / "s.csv")
    back = read_table(tmp_path / "s.parquet", "summary").to_pandas()
    assert list(back.columns) == list(summary.columns)
    assert back["oracle_savings"].tolist() == pytest.approx(
        summary["oracle_savings"].tolist(), nan_ok=True
    )
    csv = pd.read_csv(tmp_path / "s.csv")
    assert list(csv.columns) == list(summary.columns) and len(csv) == len(summary)


def test_failed_pairs_are_listed_as_failed(fake_study: FakeStudy):
    marked = fake_study.score_jsons[("gpt2-xl", "code")]
    marked.write_text(json.dumps({"status": "failed", "error": "CUDA out of memory"}))
    fake_study.score_jsons[("jamba", "code")].write_text("{ truncated")
    summary = aggregate.build_summary(
        fake_study.score_jsons, fake_study.models, fake_study.model_infos
    )
    failed = summary[summary["status"] == "failed"].set_index(["model", "workload"])
    assert set(failed.index) == {("mamba", "code"), ("gpt2-xl", "code"), ("jamba", "code")}
    assert failed.loc[("gpt2-xl", "code"), "error"] == "CUDA out of memory"
    assert "missing" in failed.loc[("mamba", "code"), "error"]
    assert "unreadable" in failed.loc[("jamba", "code"), "error"]
    for metric in aggregate.HEADLINE_METRICS:
        assert failed[metric].isna().all()
    # metadata and the model description still fill a failed row
    assert failed.loc[("mamba", "code"), "arch"] == "ssm"
    assert failed.loc[("mamba", "code"), "num_layers"] == 64
    # statistics skip failed rows instead of failing
    stats = aggregate.claim_statistics(summary, n_boot=200)
    code = stats[(stats["workload"] == "code") & (stats["analysis"] == "class_mean")]
    assert "mamba" not in ";".join(code["models"].dropna())


def test_unknown_model_names_the_config_key(fake_study: FakeStudy):
    models = dict(fake_study.models)
    del models["mamba"]
    with pytest.raises(aggregate.AggregateError, match="mamba.*models:"):
        aggregate.build_summary(fake_study.score_jsons, models)


def test_decimal_year():
    assert aggregate.decimal_year("2019-02") == pytest.approx(2019 + 31 / 365)
    assert aggregate.decimal_year("2024-12-31") == pytest.approx(2024 + 365 / 366)
    assert aggregate.decimal_year("2020-01") == 2020.0
    assert aggregate.decimal_year(None) is None
    assert aggregate.decimal_year("?") is None
    assert aggregate.decimal_year("2020-13") is None


# ---------------------------------------------------------------- statistics


def test_perfect_linear_trend_is_exact():
    years = [2019.0, 2020.5, 2022.0, 2023.0, 2024.25]
    rows = [
        {
            "model": f"m{i}",
            "release_year": y,
            "oracle_savings": 0.5 - 0.04 * (y - 2019),
            "total_params": 10.0 ** (8 + i),
            "savings_at_99": 0.1 + 0.02 * i,
            "family": "F",
            "arch": "dense",
        }
        for i, y in enumerate(years)
    ]
    stats = aggregate.claim_statistics(_fake_summary(rows), n_boot=100)
    trend = stats.set_index(["analysis", "metric", "group"])
    row = trend.loc[("release_trend", "oracle_savings", "all")]
    assert row["n"] == 5
    assert row["estimate"] == pytest.approx(-0.04, abs=1e-12)
    assert row["ci_low"] == pytest.approx(-0.04, abs=1e-9)
    assert row["ci_high"] == pytest.approx(-0.04, abs=1e-9)
    assert row["intercept"] == pytest.approx(0.5 + 0.04 * 2019, abs=1e-9)
    assert row["spearman_rho"] == pytest.approx(-1.0)
    assert row["unit"] == "per year"
    family = trend.loc[("release_trend", "oracle_savings", "family=F")]
    assert family["estimate"] == pytest.approx(-0.04, abs=1e-12)
    params = trend.loc[("params_trend", "savings_at_99", "all")]
    assert params["estimate"] == pytest.approx(0.02, abs=1e-12)
    assert params["spearman_rho"] == pytest.approx(1.0)


def test_linear_trend_ci_matches_t_formula():
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    y = np.array([0.0, 1.2, 1.9, 3.1, 4.0])
    result = aggregate.linear_trend(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    residuals = y - (intercept + slope * x)
    se = math.sqrt((residuals**2).sum() / 3 / ((x - x.mean()) ** 2).sum())
    assert result["estimate"] == pytest.approx(slope)
    assert result["ci_high"] - result["estimate"] == pytest.approx(3.182446305 * se, rel=1e-6)
    assert result["spearman_rho"] == pytest.approx(1.0)


def test_small_n_rows_say_so_instead_of_failing():
    rows = [
        {"model": "a", "release_year": 2020.0, "oracle_savings": 0.3, "arch": "dense"},
        {"model": "b", "release_year": 2021.0, "oracle_savings": 0.2, "arch": "moe"},
    ]
    stats = aggregate.claim_statistics(_fake_summary(rows), n_boot=100)
    trend = stats[(stats["analysis"] == "release_trend") & (stats["metric"] == "oracle_savings")]
    assert trend["n"].tolist() == [2]
    assert trend["estimate"].isna().all() and "n=2 < 3" in trend["note"].iloc[0]
    mean = stats[(stats["analysis"] == "class_mean") & (stats["metric"] == "oracle_savings")]
    assert mean.set_index("group")["estimate"].to_dict() == {"dense": 0.3, "moe": 0.2}
    assert mean["note"].str.startswith("n too small").all()
    paired = stats[(stats["analysis"] == "base_vs_tuned") & (stats["metric"] == "oracle_savings")]
    assert paired["n"].tolist() == [0] and "pairs" in paired["note"].iloc[0]
    # a single-model study and one without any metadata still give rows
    single = aggregate.claim_statistics(_fake_summary([{"model": "x", "oracle_savings": 0.1}]))
    assert len(single) and (single["n"].fillna(0) <= 1).all()


def test_paired_differences_by_hand():
    rows = [
        {
            "model": "b1",
            "tuning": "base",
            "oracle_savings": 0.30,
            "arch": "dense",
            "oracle_savings_ci_low": 0.28,
            "oracle_savings_ci_high": 0.33,
        },
        {
            "model": "t1",
            "tuning": "tuned",
            "base_model": "b1",
            "oracle_savings": 0.25,
            "arch": "dense",
            "oracle_savings_ci_low": 0.22,
            "oracle_savings_ci_high": 0.26,
        },
        {"model": "b2", "tuning": "base", "oracle_savings": 0.40, "arch": "dense"},
        {
            "model": "t2",
            "tuning": "tuned",
            "base_model": "b2",
            "oracle_savings": 0.38,
            "arch": "dense",
        },
        {"model": "b3", "tuning": "base", "oracle_savings": 0.10, "arch": "dense"},
        {
            "model": "t3",
            "tuning": "tuned",
            "base_model": "b3",
            "oracle_savings": 0.02,
            "arch": "dense",
        },
        # a tuned model whose base is not in the study is an ordinary model
        {
            "model": "t4",
            "tuning": "tuned",
            "base_model": "elsewhere",
            "oracle_savings": 0.5,
            "arch": "dense",
        },
    ]
    stats = aggregate.claim_statistics(_fake_summary(rows), n_boot=100)
    os_ = stats[stats["metric"] == "oracle_savings"].set_index(["analysis", "group"])
    diffs = np.array([-0.05, -0.02, -0.08])
    pair = os_.loc[("base_vs_tuned_pair", "t1 - b1")]
    assert pair["estimate"] == pytest.approx(-0.05)
    # low: d - hypot(t - t_low, b_high - b); high: d + hypot(t_high - t, b - b_low)
    assert pair["ci_low"] == pytest.approx(-0.05 - math.hypot(0.03, 0.03))
    assert pair["ci_high"] == pytest.approx(-0.05 + math.hypot(0.01, 0.02))
    assert os_.loc[("base_vs_tuned_pair", "t3 - b3"), "estimate"] == pytest.approx(-0.08)
    mean = os_.loc[("base_vs_tuned", "all")]
    half = 4.302652730 * diffs.std(ddof=1) / math.sqrt(3)  # t_{0.975, 2}
    assert mean["n"] == 3 and mean["estimate"] == pytest.approx(diffs.mean())
    assert mean["ci_low"] == pytest.approx(diffs.mean() - half, rel=1e-6)
    assert mean["ci_high"] == pytest.approx(diffs.mean() + half, rel=1e-6)
    # cross-model analyses count tuned models with a base in the study once (as the base)
    dense = os_.loc[("class_mean", "dense")]
    assert dense["n"] == 4 and set(dense["models"].split(";")) == {"b1", "b2", "b3", "t4"}


def test_class_comparison_and_checkpoints(fake_study: FakeStudy):
    summary = aggregate.build_summary(fake_study.score_jsons, fake_study.models)
    stats = aggregate.claim_statistics(summary, n_boot=500, seed=3)
    docs = stats[(stats["workload"] == "docs") & (stats["metric"] == "oracle_savings")]
    by = docs.set_index(["analysis", "group"])
    dense = by.loc[("class_mean", "dense")]
    # dense independent models: gpt2-small, gpt2-xl, llama-7b, llama-8b, latest pythia checkpoint
    assert set(dense["models"].split(";")) == {
        "gpt2-small",
        "gpt2-xl",
        "llama-7b",
        "llama-8b",
        "pythia-step143000",
    }
    assert dense["estimate"] == pytest.approx(np.mean([0.40, 0.37, 0.30, 0.25, 0.35]))
    assert dense["ci_low"] < dense["estimate"] < dense["ci_high"]
    assert by.loc[("class_mean", "moe"), "note"] == "n too small: n=1 < 3 models for a CI"
    assert ("class_difference", "moe - dense") in by.index
    assert by.loc[("class_difference", "moe - dense"), "estimate"] == pytest.approx(
        0.28 - dense["estimate"]
    )
    run = by.loc[("checkpoint_trend", "pythia-160m")]
    assert run["n"] == 4 and run["spearman_rho"] == pytest.approx(1.0)
    x = np.log10(1 + np.array([0, 1000, 10000, 143000]))
    assert run["estimate"] == pytest.approx(np.polyfit(x, [0.05, 0.20, 0.30, 0.35], 1)[0])
    # release trend excludes jamba (release "?") and the intermediate checkpoints
    trend = by.loc[("release_trend", "all")]
    assert trend["n"] == 7 and "jamba" not in trend["models"]
    assert trend["estimate"] < 0
    family = by.loc[("release_trend", "family=GPT-2")]
    assert family["n"] == 2 and "not estimated" in family["note"]
    # deterministic, seeded
    again = aggregate.claim_statistics(summary, n_boot=500, seed=3)
    pd.testing.assert_frame_equal(stats, again)


def test_aggregate_files_writes_all_outputs(fake_study: FakeStudy, tmp_path: Path):
    out = tmp_path / "out"
    paths = [out / "summary.parquet", out / "summary.csv", out / "stats.csv", out / "stats.json"]
    aggregate.aggregate_files(
        fake_study.score_jsons,
        fake_study.models,
        fake_study.model_infos,
        *paths,
        seed=1,
        n_boot=200,
    )
    assert all(p.exists() for p in paths)
    data = json.loads(paths[3].read_text())
    assert data["params"]["seed"] == 1 and len(data["rows"]) == len(pd.read_csv(paths[2]))
    assert set(data["rows"][0]) == set(aggregate.STATISTICS_COLUMNS)
    first = [p.read_bytes() for p in paths[:3]]
    aggregate.aggregate_files(
        fake_study.score_jsons,
        fake_study.models,
        fake_study.model_infos,
        *paths,
        seed=1,
        n_boot=200,
    )
    assert [p.read_bytes() for p in paths[:3]] == first


# ---------------------------------------------------------------- issue 9 item 6


def test_spearman_p_is_exact_for_small_n_hand_enumerated():
    # n = 4: of the 24 orderings only the identity and the reversal reach |rho| = 1
    assert aggregate.spearman_test([1, 2, 3, 4], [1, 2, 3, 4]) == (1.0, pytest.approx(2 / 24))
    # rho = 1 - 6 * 2 / (4 * 15) = 0.8; sum d^2 over the 24 orderings: 0 once, 2 three times,
    # 18 three times, 20 once reach |rho| >= 0.8 -> p = 8 / 24 (scipy's t approximation: 0.2)
    rho, p = aggregate.spearman_test([10, 20, 30, 40], [1, 2, 4, 3])
    assert rho == pytest.approx(0.8) and p == pytest.approx(8 / 24)
    # ties: average ranks, and the permutation keeps them
    rho, p = aggregate.spearman_test([1, 2, 3], [5, 5, 6])
    assert rho == pytest.approx(math.sqrt(3) / 2) and p == pytest.approx(4 / 6)
    # n = 10: seeded Monte Carlo, reproducible and close to the exact value 2 / 10!
    first = aggregate.spearman_test(range(10), range(10))
    assert first == aggregate.spearman_test(range(10), range(10))
    assert first[1] == pytest.approx(1 / (aggregate.SPEARMAN_RESAMPLES + 1), abs=3e-5)


def _model_rows(n: int, **columns) -> list[dict[str, Any]]:
    return [
        {"model": f"m{i}", "family": "F", "arch": "dense", **{k: v[i] for k, v in columns.items()}}
        for i in range(n)
    ]


def test_trend_ci_needs_five_models_and_says_n_too_small():
    years = [2019.0, 2020.0, 2021.0, 2022.0, 2023.0]
    savings = [0.50, 0.46, 0.42, 0.38, 0.30]
    four = _model_rows(4, release_year=years[:4], oracle_savings=savings[:4])
    row = (
        aggregate.claim_statistics(_fake_summary(four), n_boot=50)
        .set_index(["analysis", "metric", "group"])
        .loc[("release_trend", "oracle_savings", "all")]
    )
    assert row["n"] == 4 and row["estimate"] == pytest.approx(-0.04)
    assert pd.isna(row["ci_low"]) and pd.isna(row["p_value"])
    assert row["note"].startswith("n too small: n=4 < 5")
    # rho = -1 with an exact p over 4! orderings
    assert row["spearman_rho"] == pytest.approx(-1.0) and row["spearman_p"] == pytest.approx(1 / 12)
    five = _model_rows(5, release_year=years, oracle_savings=savings)
    row = (
        aggregate.claim_statistics(_fake_summary(five), n_boot=50)
        .set_index(["analysis", "metric", "group"])
        .loc[("release_trend", "oracle_savings", "all")]
    )
    assert row["ci_low"] < row["estimate"] < row["ci_high"] and pd.isna(row["note"])
    assert row["spearman_p"] == pytest.approx(2 / 120)


def test_class_mean_ci_needs_three_models():
    rows = _model_rows(5, oracle_savings=[0.1, 0.2, 0.3, 0.4, 0.6])
    for row, arch in zip(rows, ["dense"] * 3 + ["moe"] * 2, strict=True):
        row["arch"] = arch
    stats = aggregate.claim_statistics(_fake_summary(rows), n_boot=200)
    by = stats[stats["metric"] == "oracle_savings"].set_index(["analysis", "group"])
    dense, moe = by.loc[("class_mean", "dense")], by.loc[("class_mean", "moe")]
    assert dense["ci_low"] <= 0.2 <= dense["ci_high"] and pd.isna(dense["note"])
    assert moe["estimate"] == pytest.approx(0.5) and pd.isna(moe["ci_low"])
    assert moe["note"] == "n too small: n=2 < 3 models for a CI"
    diff = by.loc[("class_difference", "moe - dense")]
    assert diff["estimate"] == pytest.approx(0.3) and pd.isna(diff["ci_low"])
    assert diff["note"].startswith("n too small") and pd.isna(diff["p_value"])


def test_paired_document_bootstrap_by_hand():
    """Two documents A, B. Base: 1/2 and 3/4; tuned: 2/2 and 2/4 (sums 4/6 each: d = 0).
    Resamples AA (d = 1 - 1/2 = 0.5), AB/BA (d = 0) and BB (d = 2/4 - 3/4 = -0.25) come with
    chances 1/4, 1/2, 1/4, so the 2.5% and 97.5% percentiles are -0.25 and 0.5."""

    def block(num, den, split="all"):
        return {
            "documents": ["A", "B"],
            "heldout": [True, True],
            "metrics": {"oracle_savings": {"split": split, "numerator": num, "denominator": den}},
        }

    base, tuned = block([1, 3], [2, 4]), block([2, 2], [2, 4])
    rng = np.random.default_rng(0)
    result = aggregate.paired_document_bootstrap(base, tuned, "oracle_savings", 2000, rng)
    assert result == {
        "estimate": pytest.approx(0.0),
        "ci_low": pytest.approx(-0.25),
        "ci_high": pytest.approx(0.5),
        "n_documents": 2,
    }
    # the same shift on every document: the same draws for both models give a zero-width CI
    shifted = block([1 + 0.2, 3 + 0.4], [2, 4])  # each document's ratio + 0.1
    result = aggregate.paired_document_bootstrap(base, shifted, "oracle_savings", 500, rng)
    assert result["estimate"] == pytest.approx(0.1)
    assert result["ci_low"] == pytest.approx(0.1) and result["ci_high"] == pytest.approx(0.1)
    # only the documents both models scored count; none shared -> None
    other = {**block([1, 1], [2, 2]), "documents": ["C", "D"]}
    assert aggregate.paired_document_bootstrap(base, other, "oracle_savings", 50, rng) is None


def test_pairs_use_the_paired_bootstrap_when_score_jsons_keep_document_sums():
    rows = [
        {"model": "b", "tuning": "base", "oracle_savings": 4 / 6, "arch": "dense"},
        {"model": "t", "tuning": "tuned", "base_model": "b", "oracle_savings": 0.7667,
         "arch": "dense", "oracle_savings_ci_low": 0.5, "oracle_savings_ci_high": 0.9},
    ]  # fmt: skip

    def block(num):
        return {
            "documents": ["A", "B"],
            "heldout": [False, True],
            "metrics": {
                "oracle_savings": {"split": "all", "numerator": num, "denominator": [2, 4]}
            },
        }

    sums = {("b", "w"): block([1, 3]), ("t", "w"): block([1.2, 3.4])}
    stats = aggregate.claim_statistics(_fake_summary(rows), n_boot=300, document_sums=sums)
    pair = stats[
        (stats["analysis"] == "base_vs_tuned_pair") & (stats["metric"] == "oracle_savings")
    ]
    (pair,) = pair.to_dict(orient="records")
    assert pair["estimate"] == pytest.approx(0.1)
    assert (pair["ci_low"], pair["ci_high"]) == (pytest.approx(0.1), pytest.approx(0.1))
    assert "paired document bootstrap" in pair["method"] and "2 documents" in pair["method"]
    # without the sums: the old combination of the two marginal CIs, and the method says so
    stats = aggregate.claim_statistics(_fake_summary(rows), n_boot=300)
    pair = stats[
        (stats["analysis"] == "base_vs_tuned_pair") & (stats["metric"] == "oracle_savings")
    ]
    assert "as if independent" in pair["method"].iloc[0]


def _auc_curve_block(savings: list[float], consistency: float) -> dict[str, Any]:
    """``document_sums`` of a model whose held-out sweep has two thresholds: one where
    document d (10 tokens, L = 4) saves ``savings[d]`` at consistency ``consistency``,
    and +inf (no savings, consistency 1). Every document is held out."""
    n_docs = len(savings)
    return {
        "documents": [f"doc{d}" for d in range(n_docs)],
        "heldout": [True] * n_docs,
        "metrics": {},
        "curves": {
            "consistency_savings_auc": {
                "split": "heldout",
                "measure": "maxprob",
                "savings_numerator": [[s * 40, 0.0] for s in savings],
                "savings_denominator": [40.0] * n_docs,
                "consistency_numerator": [[consistency * 10, 10.0]] * n_docs,
                "consistency_denominator": [10.0] * n_docs,
            }
        },
    }


def test_auc_pair_uses_a_paired_bootstrap_of_the_recomputed_curve():
    """Sweep points (S, C) and (0, 1) plus the curve's start (0, 1) have the area
    S (1 + C) / 2. Base saves 0.1, 0.3, 0.5, 0.7 on four documents (S = 0.4), tuned
    each + 0.08, 0.12, 0.10, 0.10 (S = 0.5), both at C = 0.8: AUC 0.36 and 0.45, d = 0.09.
    Every resample's d is 0.9 times a mean of the four shifts, within [0.072, 0.108],
    while the documents' spread makes each model's own CI wide."""
    from exitbench import metrics

    base_savings = [0.1, 0.3, 0.5, 0.7]
    shifts = [0.08, 0.12, 0.10, 0.10]
    tuned_savings = [s + shift for s, shift in zip(base_savings, shifts, strict=True)]
    base, tuned = _auc_curve_block(base_savings, 0.8), _auc_curve_block(tuned_savings, 0.8)

    def own_ci(savings):  # each model's marginal bootstrap CI (as its score JSON has it)
        weights = metrics.bootstrap_weights(4, 2000, np.random.default_rng(1))
        s = weights @ np.array(savings) / 4
        auc = metrics.consistency_savings_auc(np.stack([s, 0 * s], 1), np.full((2000, 2), 0.8))
        auc = np.where(s > 0, auc, np.nan)
        return metrics.percentile_ci(auc)

    rows = []
    for model, savings, extra in [("b", base_savings, {}), ("t", tuned_savings, {})]:
        low, high = own_ci(savings)
        row = {"model": model, "arch": "dense", "tuning": "base", **extra}
        row["consistency_savings_auc"] = np.mean(savings) * 0.9
        row["consistency_savings_auc_ci_low"], row["consistency_savings_auc_ci_high"] = low, high
        rows.append(row)
    rows[1].update(tuning="tuned", base_model="b")
    sums = {("b", "w"): base, ("t", "w"): tuned}

    def pair_row(document_sums):
        stats = aggregate.claim_statistics(
            _fake_summary(rows),
            metrics=["consistency_savings_auc"],
            n_boot=2000,
            document_sums=document_sums,
        )
        pair = stats[stats["analysis"] == "base_vs_tuned_pair"]
        (pair,) = pair.to_dict(orient="records")
        return pair

    paired = pair_row(sums)
    assert paired["estimate"] == pytest.approx(0.09)
    assert 0.072 - 1e-12 <= paired["ci_low"] < 0.09 < paired["ci_high"] <= 0.108 + 1e-12
    assert "paired document bootstrap" in paired["method"] and "4 documents" in paired["method"]
    combined = pair_row(None)  # score JSONs without the curve sums: the old combination
    assert "as if independent" in combined["method"]
    assert combined["estimate"] == pytest.approx(0.09)
    paired_width = paired["ci_high"] - paired["ci_low"]
    combined_width = combined["ci_high"] - combined["ci_low"]
    assert combined_width > 0.3 and paired_width < 0.1 * combined_width
    # the same draws as the ratio metrics; the estimate alone without resamples
    direct = aggregate.paired_document_bootstrap(
        base, tuned, "consistency_savings_auc", 0, np.random.default_rng(0)
    )
    assert direct == {"estimate": pytest.approx(0.09), "n_documents": 4}
    # one shared document: the resamples all draw it
    one = {**tuned, "documents": ["doc0", "x1", "x2", "x3"]}
    result = aggregate.paired_document_bootstrap(
        base, one, "consistency_savings_auc", 100, np.random.default_rng(0)
    )
    assert result["n_documents"] == 1 and result["estimate"] == pytest.approx(0.9 * 0.08)
    assert result["ci_low"] == pytest.approx(0.072) and result["ci_high"] == pytest.approx(0.072)


def test_size_axis_uses_active_parameters_and_keeps_total():
    # an MoE with 1e9 active of 1e10 total sits at 10^9 on the compute axis
    rows = _model_rows(
        5,
        total_params=[1e8, 1e10, 1e10, 1e11, 1e12],
        active_params=[None, 1e9, None, None, None],
        oracle_savings=[0.1, 0.2, 0.3, 0.4, 0.5],
    )
    by = aggregate.claim_statistics(_fake_summary(rows), n_boot=50).set_index(
        ["analysis", "metric", "group"]
    )
    active = by.loc[("params_trend", "oracle_savings", "all")]
    assert active["x"] == "log10(active_params)"
    assert active["estimate"] == pytest.approx(
        np.polyfit([8, 9, 10, 11, 12], [0.1, 0.2, 0.3, 0.4, 0.5], 1)[0]
    )
    total = by.loc[("total_params_trend", "oracle_savings", "all")]
    assert total["estimate"] == pytest.approx(
        np.polyfit([8, 10, 10, 11, 12], [0.1, 0.2, 0.3, 0.4, 0.5], 1)[0]
    )


def test_release_trend_controlled_for_size_vocabulary_and_depth():
    years = np.array([2019.0, 2020.0, 2021.0, 2022.0, 2023.0, 2024.0, 2024.5])
    log_active = np.array([8.0, 9.5, 9.0, 10.0, 10.2, 11.0, 9.1])
    vocab = [5e4, 3.2e4, 1.28e5, 1.5e5, 3.2e4, 2.56e5, 6.4e4]
    layers = [12, 24, 32, 32, 48, 80, 28]

    def run(savings, n=7):
        rows = _model_rows(
            n,
            release_year=years[:n],
            total_params=10 ** log_active[:n],
            vocab_size=vocab[:n],
            num_layers=layers[:n],
            oracle_savings=savings[:n],
        )
        stats = aggregate.claim_statistics(_fake_summary(rows), n_boot=50)
        return stats.set_index(["analysis", "metric", "group"]).loc[
            ("release_trend_controlled", "oracle_savings", "all")
        ]

    # y = 0.5 - 0.04 (year - 2019) + 0.05 log10(active) + 0.002 layers: the year's own effect
    exact = 0.5 - 0.04 * (years - 2019) + 0.05 * log_active + 0.002 * np.array(layers)
    row = run(exact)
    assert row["n"] == 7 and row["estimate"] == pytest.approx(-0.04, abs=1e-9)
    assert row["ci_low"] == pytest.approx(-0.04, abs=1e-9)
    # savings that follow size alone: the raw release trend is not zero, the controlled one is
    by_size = 0.1 * log_active
    assert run(by_size)["estimate"] == pytest.approx(0.0, abs=1e-9)
    # 4 predictors need n >= 7
    row = run(exact, n=6)
    assert (
        pd.isna(row["estimate"]) and row["note"] == "n too small: n=6 < 7 points for 4 predictors"
    )


def test_statistics_carry_the_lens_of_their_summary(fake_study: FakeStudy, tmp_path: Path):
    """statistics.* say logit, statistics-tuned.* tuned (issue 12: a lens column)."""
    for lens in ("logit", "tuned"):
        out = tmp_path / lens
        paths = [out / "s.parquet", out / "s.csv", out / "stats.csv", out / "stats.json"]
        aggregate.aggregate_files(
            fake_study.score_jsons,
            fake_study.models,
            fake_study.model_infos,
            *paths,
            seed=1,
            n_boot=50,
            lens=lens,
        )
        rows = json.loads(paths[3].read_text())["rows"]
        assert rows and {row["lens"] for row in rows} == {lens}
        assert set(pd.read_csv(paths[2])["lens"]) == {lens}
        assert list(pd.read_csv(paths[2]).columns)[-1] == "lens"  # beside the old columns
    summary = pd.read_parquet(tmp_path / "tuned" / "s.parquet")
    mixed = pd.concat([summary, summary.assign(lens="logit")], ignore_index=True)
    with pytest.raises(aggregate.AggregateError, match=r"mixes lenses \['logit', 'tuned'\]"):
        aggregate.claim_statistics(mixed, n_boot=10)


def test_summary_carries_the_best_net_flop_headline(fake_study: FakeStudy, tmp_path: Path):
    """best_net_flop_savings_at_* (with CIs) and the measure behind it come from the score
    JSON's headline; older score JSONs without them give nulls."""
    pair = ("llama-7b", "docs")
    data = json.loads(Path(fake_study.score_jsons[pair]).read_text())
    data["headline"]["best_net_flop_savings_at_99"] = {
        "estimate": -0.001,
        "ci_low": -0.002,
        "ci_high": 0.0,
    }
    data["headline"]["best_measure_net_flop_99"] = "cos_prev"
    data["headline"]["best_net_flop_savings_at_95"] = {
        "estimate": None,
        "ci_low": None,
        "ci_high": None,
    }
    data["headline"]["best_measure_net_flop_95"] = None
    path = tmp_path / "with_best.json"
    path.write_text(json.dumps(data))
    jsons = {**fake_study.score_jsons, pair: path}
    summary = aggregate.build_summary(jsons, fake_study.models, fake_study.model_infos)
    rows = summary.set_index(["model", "workload"])
    row = rows.loc[pair]
    assert row["best_net_flop_savings_at_99"] == pytest.approx(-0.001)
    assert row["best_net_flop_savings_at_99_ci_low"] == pytest.approx(-0.002)
    assert row["best_net_flop_savings_at_99_ci_high"] == pytest.approx(0.0)
    assert row["best_measure_net_flop_99"] == "cos_prev"
    assert pd.isna(row["best_net_flop_savings_at_95"]) and pd.isna(row["best_measure_net_flop_95"])
    old = rows.loc[("llama-7b-chat", "code")]  # an older score JSON: no such keys
    assert pd.isna(old["best_net_flop_savings_at_99"]) and pd.isna(old["best_measure_net_flop_99"])
    aggregate.write_summary(summary, tmp_path / "s.parquet", tmp_path / "s.csv")
    written = pd.read_parquet(tmp_path / "s.parquet").set_index(["model", "workload"])
    assert written.loc[pair, "best_measure_net_flop_99"] == "cos_prev"
    assert written.loc[pair, "best_net_flop_savings_at_99"] == pytest.approx(-0.001)
