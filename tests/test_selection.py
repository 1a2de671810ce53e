"""Which models count in which analysis, on a hand-built summary."""

from __future__ import annotations

import pandas as pd
import pytest

from exitbench import aggregate, selection


def summary() -> pd.DataFrame:
    rows = [
        {"model": "a", "tuning": "base"},
        {"model": "a-chat", "tuning": "tuned", "base_model": "a"},
        {"model": "b-chat", "tuning": "tuned", "base_model": "b"},  # base not in the study
        {"model": "r-s10", "checkpoint_of": "r", "training_step": 10},
        {"model": "r-s0", "checkpoint_of": "r", "training_step": 0},
        {"model": "q-s5", "checkpoint_of": "q", "training_step": 5},
        {"model": "q", "training_step": 100},  # the run's own final model
        {"model": "f", "status": "failed", "tuning": "tuned", "base_model": "a"},
    ]
    frame = pd.DataFrame([{"status": "ok", "workload": "w", **row} for row in rows])
    return aggregate._typed(frame)


def test_checkpoint_runs_sorted_by_step():
    runs = selection.checkpoint_runs(summary())
    assert {run: rows["model"].tolist() for run, rows in runs.items()} == {
        "q": ["q-s5", "q"],
        "r": ["r-s0", "r-s10"],
    }


def test_each_run_is_represented_once():
    rows = summary()
    dropped = rows.loc[selection.intermediate_checkpoints(rows), "model"]
    assert sorted(dropped) == ["q-s5", "r-s0"]
    curves = selection.curve_models(rows)["model"].tolist()
    assert curves == ["a", "a-chat", "b-chat", "r-s10", "q"]


def test_independent_models_leave_out_tuned_models_of_pairs():
    rows = summary()
    assert selection.independent_models(rows)["model"].tolist() == ["a", "b-chat", "r-s10", "q"]
    assert selection.tuned_pairs(rows) == [("a-chat", "a")]  # the failed "f" is no pair


def test_statistics_use_the_independent_models():
    rows = summary()
    rows["oracle_savings"] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, None]
    rows["arch"] = "dense"
    stats = aggregate.claim_statistics(rows, metrics=["oracle_savings"], n_boot=20)
    mean = stats[stats["analysis"] == "class_mean"].iloc[0]
    assert mean["models"] == "a;b-chat;r-s10;q"
    assert mean["estimate"] == (0.1 + 0.3 + 0.4 + 0.7) / 4


def test_controls_leave_every_trend_and_pair_with_their_base():
    """A positive control (trained for early exit) enters only its control pair (issue 14)."""
    rows = summary()
    extra = pd.DataFrame(
        [
            {"model": "a-ee", "tuning": "base", "base_model": "a", "control": True},
            {"model": "z-ee", "tuning": "base", "base_model": "z", "control": True},  # no base
        ]
    )
    raw = rows.astype(object).where(rows.notna(), None)
    rows = aggregate._typed(
        pd.concat([raw, extra.assign(status="ok", workload="w")], ignore_index=True)
    )
    assert selection.independent_models(rows)["model"].tolist() == ["a", "b-chat", "r-s10", "q"]
    assert selection.control_pairs(rows) == [("a-ee", "a")]
    assert selection.tuned_pairs(rows) == [("a-chat", "a")]
    assert "a-ee" in selection.curve_models(rows)["model"].tolist()  # still drawn as a curve
    rows["oracle_savings"] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, None, 0.9, 0.95]
    rows["arch"] = "dense"
    stats = aggregate.claim_statistics(rows, metrics=["oracle_savings"], n_boot=20)
    pair = stats[stats["analysis"] == "control_vs_base_pair"]
    assert pair["group"].tolist() == ["a-ee - a"]
    assert pair["estimate"].iloc[0] == 0.9 - 0.1
    overall = stats[stats["analysis"] == "control_vs_base"].iloc[0]
    assert (overall["n"], overall["x"], overall["note"]) == (
        1,
        "control",
        "n=1 control/base pairs: CI needs >= 2",
    )
    trend = stats[(stats["analysis"] == "release_trend") & (stats["group"] == "all")].iloc[0]
    assert "a-ee" not in trend["models"].split(";")


def test_size_bands_by_active_parameters():
    assert selection.size_band(1.24e9) == "<3B"
    assert selection.size_band(3e9) == "3-20B"
    assert selection.size_band(7.27e10) == ">20B"
    assert selection.size_band(4.67e10, 1.29e10) == "3-20B"  # Mixtral: active parameters decide
    assert selection.size_band(None) is None and selection.size_band(float("nan")) is None


def test_release_trend_within_size_bands():
    """Each size band gets its own release trend beside the overall one and the families'."""
    years = [2019.0, 2020.0, 2021.0, 2022.0, 2023.0, 2024.0]
    params = [1e9, 2e9, 2.5e9, 7e9, 8e9, 7e10]
    savings = [0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    frame = pd.DataFrame(
        {
            "model": [f"m{i}" for i in range(6)],
            "workload": "w",
            "status": "ok",
            "family": "F",
            "arch": "dense",
            "release_year": years,
            "total_params": params,
            "size_band": [selection.size_band(p) for p in params],
            "oracle_savings": savings,
        }
    )
    stats = aggregate.claim_statistics(aggregate._typed(frame), ["oracle_savings"], n_boot=20)
    trend = stats[stats["analysis"] == "release_trend"].set_index("group")
    assert list(trend.index) == [
        "all",
        "family=F",
        "size_band=<3B",
        "size_band=3-20B",
        "size_band=>20B",
    ]
    assert trend.loc["size_band=<3B", "models"] == "m0;m1;m2"
    assert trend.loc["size_band=<3B", "estimate"] == pytest.approx(-0.1)
    assert trend.loc["size_band=3-20B", "n"] == 2
    assert trend.loc["size_band=>20B", "n"] == 1 and pd.isna(
        trend.loc["size_band=>20B", "estimate"]
    )
    params_trend = stats[stats["analysis"] == "params_trend"]
    assert not params_trend["group"].str.startswith("size_band").any()
