"""Which models count in which analysis: the one place both aggregate and plots ask.

Every function takes rows of the study summary for one workload (schema
``summary``) and considers only its ``ok`` rows.

* A **checkpoint run** is a ``checkpoint_of`` value: its rows are the models
  with that ``checkpoint_of``, plus the model named like the run if it has a
  ``training_step`` (:func:`checkpoint_runs`).
* An **intermediate checkpoint** is a run member that does not represent the
  run: the run is represented by the model named like the run if that is in
  the study, else by its latest checkpoint (:func:`intermediate_checkpoints`).
* A **tuned pair** is a model with ``tuning: tuned`` whose ``base_model`` is in
  the study (:func:`tuned_pairs`).
* **Curve models** (per-layer curves, trade-off sweeps): every model except
  intermediate checkpoints (:func:`curve_models`).
* A **control** is a model with ``control: true`` (trained for early exit,
  e.g. LayerSkip): a control pair is a control whose ``base_model`` is in the
  study (:func:`control_pairs`).
* **Independent models** (trends, class comparisons): curve models, less the
  tuned models of tuned pairs, which enter the paired comparison instead, and
  less every control, which only enters its control pair
  (:func:`independent_models`).
* A **size band** groups models by active parameters (total parameters where
  no active count is known): ``<3B``, ``3-20B``, ``>20B``
  (:func:`size_band`), so that a generation trend can be read within sizes.
"""

from __future__ import annotations

import math

import pandas as pd

__all__ = [
    "SIZE_BANDS",
    "checkpoint_runs",
    "control_pairs",
    "curve_models",
    "independent_models",
    "intermediate_checkpoints",
    "size_band",
    "tuned_pairs",
]

#: Size bands by active parameters: (label, upper bound exclusive), smallest first.
SIZE_BANDS: tuple[tuple[str, float], ...] = (("<3B", 3e9), ("3-20B", 2e10), (">20B", math.inf))


def _ok(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["status"] == "ok"]


def _run_members(ok: pd.DataFrame, run: str) -> pd.DataFrame:
    """Rows of run ``run``: its checkpoints, and the model named ``run`` if it has a step."""
    member = (ok["checkpoint_of"] == run).fillna(False)
    named = (ok["model"] == run) & ok["training_step"].notna()
    return ok[member | named]


def checkpoint_runs(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``{run: rows sorted by training_step}`` for each ``checkpoint_of`` run among the ok rows."""
    ok = _ok(rows)
    runs = sorted(set(ok["checkpoint_of"].dropna()))
    return {
        run: _run_members(ok, run).sort_values(["training_step", "model"], kind="stable")
        for run in runs
    }


def intermediate_checkpoints(rows: pd.DataFrame) -> pd.Index:
    """Index of the ok rows that are checkpoints of a run and do not represent it."""
    ok = _ok(rows)
    names = set(ok["model"])
    drop: list = []
    for run, members in checkpoint_runs(ok).items():
        if run in names:
            drop += list(members.index[members["model"] != run])
        elif len(members):
            drop += list(members.index[:-1])
    return pd.Index(drop)


def _tuned_with_base(ok: pd.DataFrame) -> pd.Series:
    return (ok["tuning"] == "tuned").fillna(False) & ok["base_model"].isin(set(ok["model"]))


def tuned_pairs(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """``(tuned, base)`` model pairs among the ok rows, sorted."""
    ok = _ok(rows)
    tuned = ok[_tuned_with_base(ok)]
    return sorted(zip(tuned["model"], tuned["base_model"], strict=True))


def _is_control(ok: pd.DataFrame) -> pd.Series:
    if "control" not in ok.columns:
        return pd.Series(False, index=ok.index)
    return ok["control"].astype("boolean").fillna(False).astype(bool)


def control_pairs(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """``(control, base)`` model pairs among the ok rows: controls whose ``base_model`` is
    in the study, sorted."""
    ok = _ok(rows)
    controls = ok[_is_control(ok) & ok["base_model"].isin(set(ok["model"]))]
    return sorted(zip(controls["model"], controls["base_model"], strict=True))


def size_band(total_params: float | None, active_params: float | None = None) -> str | None:
    """The :data:`SIZE_BANDS` label of a model's active parameters (total where active is
    unknown); None when neither is known."""
    params = total_params if pd.isna(active_params) else active_params
    if pd.isna(params):
        return None
    return next(label for label, upper in SIZE_BANDS if params < upper)


def curve_models(rows: pd.DataFrame) -> pd.DataFrame:
    """The ok rows drawn as curves: all but intermediate checkpoints."""
    ok = _ok(rows)
    return ok.drop(intermediate_checkpoints(ok))


def independent_models(rows: pd.DataFrame) -> pd.DataFrame:
    """The ok rows that count as independent models: curve models, less tuned
    models whose ``base_model`` is in ``rows``, less controls."""
    curves = curve_models(rows)
    ok = _ok(rows)
    paired_or_control = _tuned_with_base(ok) | _is_control(ok)
    return curves[~paired_or_control.loc[curves.index]]
