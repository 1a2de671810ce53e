"""Which models count in which analysis, on a hand-built summary."""

from __future__ import annotations

import pandas as pd

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
