"""Aggregate stage: per-pair score JSONs -> one study table and the claim statistics.

``build_summary`` joins every (model, workload) pair's headline numbers
(``results/scores/{model}/{workload}.json``) with the model's metadata (config
``models:`` entry, filled from the registry) and architecture facts
(``results/models/{model}.json``) into one row per pair (schema ``summary``).
A pair whose score JSON is absent, unreadable or marked ``"status": "failed"``
is kept as a ``failed`` row with null metrics, so a ``--keep-going`` run still
lists the models that failed.

``claim_statistics`` tests the study's claims per workload and headline metric:

* ``release_trend``: OLS slope of the metric per year of release date,
  y = a + b * release_year, with the t-based 95% CI b +- t_{0.975, n-2} * se(b)
  (only for n >= 5 models: :data:`MIN_TREND_CI_MODELS`), and Spearman's rho with
  its two-sided p-value (:func:`spearman_test`: exact over all n! orderings for
  n <= 9, seeded Monte Carlo for n = 10, asymptotic above); over all models,
  within each family and within each size band (``size_band``: <3B, 3-20B, >20B
  active parameters), so that a generation trend is not read off a change of size.
* ``release_trend_controlled``: the release-year coefficient of the multiple
  regression y = a + b * release_year + c1 * log10(active params) + c2 *
  log10(vocab_size) + c3 * num_layers with its t-based CI (df = n - k - 1 for k
  predictors; a control constant over the models is dropped), reported only for
  n >= k + 3 models (:func:`controlled_trend`).
* ``params_trend``: the same as ``release_trend`` against log10(active params)
  (compute claims: an MoE's active parameters; total parameters where no active
  count is given), slope per decade; ``total_params_trend`` against
  log10(total_params).
* ``class_mean`` / ``class_difference``: mean of the metric per architecture
  class (dense, moe, ssm, hybrid) with a 95% percentile bootstrap CI over
  models, and the difference of every two class means (bootstrap resampling
  models within each class; Welch's t-test p-value); a CI and p only when each
  class has >= 3 models (:data:`MIN_CLASS_CI_MODELS`).
* ``base_vs_tuned_pair`` / ``base_vs_tuned``: d = tuned - base for each tuned
  model whose ``base_model`` is in the study, with the 95% percentile CI of a
  paired document bootstrap (:func:`paired_document_bootstrap`: the same
  resampled documents for both models, from the score JSONs'
  ``document_sums``; for the AUC, which is no ratio of sums, the curve is
  recomputed from per-document sweep sums on each resample), and the mean
  paired difference over pairs with its
  t-based CI (mean +- t_{0.975, n-1} * sd / sqrt(n)) and paired t-test.
* ``control_vs_base_pair`` / ``control_vs_base``: the same for d = control - base,
  each positive control (``control: true``, trained for early exit) against its
  ``base_model``; controls enter no other cross-model analysis.
* ``checkpoint_trend``: per training run (``checkpoint_of``), slope of the
  metric per log10(1 + training_step) and Spearman's rho.

Cross-model analyses (trends, classes) count each independent model once
(:mod:`exitbench.selection` says which models count in which analysis). Every row lists the
models it used; rows with too few models carry ``n`` and a ``note`` starting
``n too small`` instead of the numbers they cannot support. Bootstrap draws are
seeded per row, so results do not depend on the order of the rows.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import json
import logging
import math
import os
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from .config import resolve_path
from .logs import job_failure
from .metrics import consistency_savings_auc
from .provenance import MODEL_FILE_PATTERNS, model_input_files, package_versions, write_json
from .selection import (
    SIZE_BANDS,
    checkpoint_runs,
    control_pairs,
    independent_models,
    size_band,
    tuned_pairs,
)
from .tables import load_schema, write_table

log = logging.getLogger(__name__)

__all__ = [
    "ARCH_CLASSES",
    "HEADLINE_DETAIL_METRICS",
    "HEADLINE_METRICS",
    "METADATA_KEYS",
    "STATISTICS_COLUMNS",
    "STAT_METRICS",
    "TARGET_MET_COLUMNS",
    "AggregateError",
    "active_params",
    "aggregate_files",
    "build_summary",
    "claim_statistics",
    "controlled_trend",
    "decimal_year",
    "linear_trend",
    "model_metadata",
    "paired_document_bootstrap",
    "read_document_sums",
    "spearman_test",
    "write_failure_summary",
    "write_statistics",
    "write_summary",
]

#: Headline numbers of the score JSON copied into the summary (each with _ci_low/_ci_high).
HEADLINE_METRICS: tuple[str, ...] = (
    "oracle_savings",
    "savings_at_99",
    "savings_at_95",
    "consistency_savings_auc",
    "oracle_net_flop_savings",
    "net_flop_savings_at_99",
    "net_flop_savings_at_95",
    "mean_saturation_layer",
    "mean_first_agreement_layer",
    "final_accuracy",
)
#: Headline numbers added by issue 9 (two oracles, held-out consistency per target, the
#: zero-check-cost bound), copied like HEADLINE_METRICS; null for older score JSONs.
HEADLINE_DETAIL_METRICS: tuple[str, ...] = (
    "savings_first",
    "savings_settled",
    "net_flop_savings_first",
    "net_flop_savings_settled",
    "consistency_at_99",
    "consistency_at_95",
    "zero_check_net_flop_savings_at_99",
    "zero_check_net_flop_savings_at_95",
    "best_net_flop_savings_at_99",
    "best_net_flop_savings_at_95",
)
#: Headline strings copied as they are: the measure behind best_net_flop_savings_at_*.
HEADLINE_MEASURE_COLUMNS: tuple[str, ...] = ("best_measure_net_flop_99", "best_measure_net_flop_95")
#: Whether the held-out consistency of the headline policy reached its target.
TARGET_MET_COLUMNS: tuple[str, ...] = ("target_met_at_99", "target_met_at_95")
#: Headline metrics whose trends and comparisons ``claim_statistics`` reports.
STAT_METRICS: tuple[str, ...] = (
    "savings_first",
    "oracle_savings",
    "savings_at_99",
    "savings_at_95",
    "consistency_savings_auc",
    "oracle_net_flop_savings",
    "net_flop_savings_at_99",
    "best_net_flop_savings_at_99",
)
#: Architecture classes in display order (config ``models.<name>.arch``).
ARCH_CLASSES: tuple[str, ...] = ("dense", "moe", "ssm", "hybrid")
#: Model metadata keys copied from the config entry into the summary.
METADATA_KEYS: tuple[str, ...] = (
    "family",
    "generation",
    "release",
    "arch",
    "total_params",
    "active_params",
    "tuning",
    "base_model",
    "training_step",
    "checkpoint_of",
    "gated",
    "control",
    "hf_id",
    "path",
    "revision",
    "dtype",
)
_INFO_KEYS = ("model_type", "hidden_size", "vocab_size")
_COUNT_KEYS = (
    "n_tokens",
    "n_gold_tokens",
    "n_documents",
    "n_calibration_documents",
    "n_heldout_documents",
    "n_windows",
    "n_windows_requested",
    "few_documents",
)
_BEST_MEASURES = {"best_measure_99": "0.99", "best_measure_95": "0.95", "best_measure_auc": "auc"}
#: Columns of ``results/statistics.csv`` in order.
STATISTICS_COLUMNS: tuple[str, ...] = (
    "analysis",
    "workload",
    "metric",
    "group",
    "x",
    "unit",
    "n",
    "estimate",
    "ci_low",
    "ci_high",
    "intercept",
    "p_value",
    "spearman_rho",
    "spearman_p",
    "method",
    "models",
    "note",
    "lens",  # logit | tuned: the summary's lens (results/statistics.* | statistics-tuned.*)
)
MIN_TREND_MODELS = 3
#: Fewest models behind a trend's CI and OLS p-value (below: estimate only, ``n too small``).
MIN_TREND_CI_MODELS = 5
#: Fewest models per class behind a class mean's (or difference's) CI.
MIN_CLASS_CI_MODELS = 3
#: Spearman p-values: exact over all n! orderings up to this n, then seeded Monte Carlo
#: up to SPEARMAN_PERMUTATION_MAX_N, then the asymptotic t approximation.
SPEARMAN_EXACT_MAX_N = 9
SPEARMAN_PERMUTATION_MAX_N = 10
SPEARMAN_RESAMPLES = 100_000
#: Controls of ``release_trend_controlled``: summary column -> transform.
RELEASE_CONTROLS: tuple[str, ...] = ("log10(active_params)", "log10(vocab_size)", "num_layers")
TOO_SMALL = "n too small"


class AggregateError(ValueError):
    """Inputs of the aggregate stage are inconsistent (names the file or key to fix)."""


# ---------------------------------------------------------------- summary


def _known(value: Any) -> Any:
    """``value``, or None where it is unknown (missing, NaN, or a registry ``?`` marker)."""
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str) and (not value.strip() or "?" in value):
        return None
    return value


def decimal_year(release: str | None) -> float | None:
    """``"YYYY-MM[-DD]"`` -> year + (day of year - 1) / days in year (day 1 when absent).

    ``"2019-02"`` -> 2019 + 31/365 = 2019.0849. Unknown or malformed -> None.
    """
    release = _known(release)
    if release is None:
        return None
    parts = str(release).strip().split("-")
    try:
        year, month = int(parts[0]), int(parts[1])
        day = int(parts[2]) if len(parts) > 2 else 1
        date = dt.date(year, month, day)
    except (ValueError, IndexError):
        log.warning("release %r is not YYYY-MM[-DD]; its release_year is null", release)
        return None
    start = dt.date(year, 1, 1)
    days = (dt.date(year + 1, 1, 1) - start).days
    return year + (date - start).days / days


def _read_score_json(path: Path | None) -> tuple[dict[str, Any] | None, str | None]:
    """(summary, None) for a usable score JSON, else (None, why it failed)."""
    if path is None or not Path(path).exists():
        return None, f"score JSON {path} is missing (its score job failed or did not run)"
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        return None, f"score JSON {path} is unreadable ({err}); rerun its score job"
    if not isinstance(data, dict):
        return None, f"score JSON {path} is not an object"
    if data.get("status", "ok") != "ok":
        return None, str(data.get("error") or f"score JSON {path} is marked {data['status']!r}")
    if not isinstance(data.get("headline"), dict):
        return None, f"score JSON {path} has no 'headline' object"
    return data, None


def _model_info(model_infos: Mapping[str, str | Path] | None, model: str) -> dict[str, Any]:
    if not model_infos or model not in model_infos:
        return {}
    path = Path(model_infos[model])
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        log.warning("model description %s is unreadable (%s); its facts are null", path, err)
        return {}


def _headline_value(headline: Mapping[str, Any], name: str) -> tuple[Any, Any, Any]:
    entry = headline.get(name)
    if not isinstance(entry, Mapping):
        return None, None, None
    return (_known(entry.get(key)) for key in ("estimate", "ci_low", "ci_high"))


def build_summary(
    score_jsons: Mapping[tuple[str, str], str | Path | None],
    models: Mapping[str, Mapping[str, Any]],
    model_infos: Mapping[str, str | Path] | None = None,
    lens: str = "logit",
) -> pd.DataFrame:
    """One row per (model, workload) pair of ``score_jsons``, in its order.

    ``lens`` (logit | tuned) fills the ``lens`` column: which lens's scores these are.

    ``models`` is the config's ``models:`` section (metadata filled from the
    registry; unknown values null or ``?``, which become null here),
    ``model_infos`` maps model -> ``results/models/{model}.json``. A pair whose
    JSON is absent, unreadable or has ``"status": "failed"`` gets
    ``status = "failed"``, the reason in ``error`` and null metrics.
    ``release_year`` is :func:`decimal_year` of ``release``.
    """
    rows = []
    for (model, workload), path in score_jsons.items():
        if model not in models:
            raise AggregateError(
                f"score JSON {path} is for model {model!r}, which is not a key of the "
                f"config's models: section (known: {sorted(models)})"
            )
        entry = models[model]
        info = _model_info(model_infos, model)
        data, error = _read_score_json(Path(path) if path is not None else None)
        if error is not None:
            log.warning("%s / %s failed: %s", model, workload, error)
        row: dict[str, Any] = {
            "model": model,
            "workload": workload,
            "status": "ok" if data is not None else "failed",
            "error": error,
            "lens": lens,
        }
        for key in METADATA_KEYS:
            row[key] = _known(entry.get(key))
        row["release_year"] = decimal_year(row["release"])
        row["size_band"] = size_band(row["total_params"], row["active_params"])
        for key in _INFO_KEYS:
            row[key] = _known(info.get(key)) or None
        data = data or {}
        row["num_layers"] = data.get("num_layers", info.get("num_layers"))
        for key in _COUNT_KEYS:
            row[key] = data.get(key)
        headline = data.get("headline", {})
        for name in (*HEADLINE_METRICS, *HEADLINE_DETAIL_METRICS):
            row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = _headline_value(
                headline, name
            )
        for name in (*TARGET_MET_COLUMNS, *HEADLINE_MEASURE_COLUMNS):
            row[name] = headline.get(name)
        best = data.get("best_measure", {})
        for column, key in _BEST_MEASURES.items():
            row[column] = best.get(key)
        row["warnings"] = "; ".join(data.get("warnings") or []) or None
        flops = data.get("flops")
        row["flops_per_token"] = flops.get("full") if isinstance(flops, Mapping) else None
        rows.append(row)
    if not rows:
        raise AggregateError("no (model, workload) pairs to aggregate: the config lists none")
    return _typed(pd.DataFrame(rows))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns in schema order with pandas dtypes that round-trip through the schema."""
    schema = load_schema("summary")
    out = {}
    for field in schema:
        column = frame[field.name] if field.name in frame else pd.Series([None] * len(frame))
        if pa.types.is_integer(field.type):
            out[field.name] = pd.array(
                [None if _known(v) is None else int(v) for v in column], dtype="Int64"
            )
        elif pa.types.is_floating(field.type):
            out[field.name] = pd.to_numeric(column, errors="coerce").astype("float64")
        elif pa.types.is_boolean(field.type):
            out[field.name] = pd.array(
                [None if _known(v) is None else bool(v) for v in column], dtype="boolean"
            )
        else:
            out[field.name] = pd.array(
                [None if _known(v) is None else str(v) for v in column], dtype="string"
            )
    return pd.DataFrame(out)


def write_summary(summary: pd.DataFrame, parquet_path: str | Path, csv_path: str | Path) -> None:
    """Write the summary as Parquet (schema ``summary``) and CSV (same columns)."""
    table = pa.Table.from_pandas(summary, preserve_index=False)
    write_table(table, parquet_path, "summary")
    _write_csv(summary, csv_path)


def _write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False, lineterminator="\n")
    tmp.replace(path)


# ---------------------------------------------------------------- statistics


def _row(**values: Any) -> dict[str, Any]:
    row = dict.fromkeys(STATISTICS_COLUMNS)
    row.update(values)
    return row


def _rng(seed: int, *key: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and the row's key (independent of row order)."""
    return np.random.default_rng([seed, zlib.crc32("\x1f".join(key).encode())])


@functools.cache
def _orderings(n: int) -> np.ndarray:
    """All n! orderings of 0..n-1, ``[n!, n]`` (int8), cached per n."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.int8).reshape(-1, n)


def spearman_test(x: Sequence[float], y: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """Spearman's rho of (x, y) and its two-sided p-value under H0: no association.

    rho is Pearson's r of the (average) ranks. p is the share of orderings of y's
    ranks whose |rho| is at least the observed one: over all n! orderings for
    n <= :data:`SPEARMAN_EXACT_MAX_N` (exact), over :data:`SPEARMAN_RESAMPLES`
    random orderings drawn with ``default_rng(seed)`` for n <=
    :data:`SPEARMAN_PERMUTATION_MAX_N` (p = (hits + 1) / (resamples + 1)), and
    from scipy's asymptotic t approximation above. n = 4, y in x's order:
    rho = 1, p = 2/24 (the identity and the reversal). (nan, nan) when x or y is
    constant or n < 3.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = x.size
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    cx = stats.rankdata(x) - (n + 1) / 2
    cy = stats.rankdata(y) - (n + 1) / 2
    observed = float(cx @ cy)
    rho = observed / math.sqrt(float(cx @ cx) * float(cy @ cy))
    if n > SPEARMAN_PERMUTATION_MAX_N:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return rho, float(stats.spearmanr(x, y).pvalue)
    if n <= SPEARMAN_EXACT_MAX_N:
        orderings = _orderings(n)
    else:
        rng = np.random.default_rng(seed)
        orderings = rng.permuted(np.tile(np.arange(n), (SPEARMAN_RESAMPLES, 1)), axis=1)
    permuted = np.abs(cy[orderings] @ cx)
    hits = int((permuted >= abs(observed) - 1e-9 * max(1.0, abs(observed))).sum())
    if n <= SPEARMAN_EXACT_MAX_N:
        return rho, hits / orderings.shape[0]
    return rho, (hits + 1) / (SPEARMAN_RESAMPLES + 1)


def _too_small(n: int, needed: int, what: str) -> str:
    return f"{TOO_SMALL}: n={n} < {needed} {what}"


def linear_trend(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """OLS y = a + b x with t-based 95% CI of b, and Spearman's rho of (x, y).

    Returns n, estimate (b), ci_low, ci_high (b -+ t_{0.975, n-2} se(b)),
    intercept (a), p_value (H0: b = 0), spearman_rho, spearman_p
    (:func:`spearman_test`), note (why a value is missing: fewer than 3 points,
    fewer than :data:`MIN_TREND_CI_MODELS` for the CI and p_value (``n too
    small``), constant x or constant y).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    out: dict[str, Any] = {"n": int(x.size)}
    if x.size < MIN_TREND_MODELS:
        out["note"] = _too_small(x.size, MIN_TREND_MODELS, "points: not estimated")
        return out
    if np.ptp(x) == 0:
        out["note"] = "x is the same for every point: no trend"
        return out
    # centred x keeps the fit exact for decimal years (x ~ 2020, spread ~ 5)
    dx, dy = x - x.mean(), y - y.mean()
    sxx = float(dx @ dx)
    slope = float(dx @ dy) / sxx
    residuals = dy - slope * dx
    df = x.size - 2
    se = math.sqrt(float(residuals @ residuals) / df / sxx)
    half = stats.t.ppf(0.975, df) * se
    if se > 0:
        p_value = 2 * stats.t.sf(abs(slope) / se, df)
    else:  # an exact fit
        p_value = 0.0 if slope != 0 else 1.0
    out.update(estimate=slope, intercept=float(y.mean() - slope * x.mean()))
    notes = []
    if x.size >= MIN_TREND_CI_MODELS:
        out.update(ci_low=slope - half, ci_high=slope + half, p_value=float(p_value))
    else:
        notes.append(_too_small(x.size, MIN_TREND_CI_MODELS, "points for a CI"))
    if np.ptp(y) == 0:
        notes.append("metric is the same for every point: rho undefined")
    else:
        out["spearman_rho"], out["spearman_p"] = spearman_test(x, y)
    if notes:
        out["note"] = "; ".join(notes)
    return out


def controlled_trend(
    x: Sequence[float], y: Sequence[float], controls: Mapping[str, Sequence[float]]
) -> dict[str, Any]:
    """Coefficient b of x in the OLS fit y = a + b x + sum_j c_j z_j, with its t-based
    95% CI b -+ t_{0.975, n-k-1} se(b) and p-value, where k counts x and the controls.

    A control that is constant over the points is dropped (it cannot confound) and
    named in ``note``. Reported only for n >= k + 3 points and a full-rank design;
    else ``n`` and a ``note`` (``n too small``, or collinear predictors). ``intercept``
    is a; the controls' coefficients are not reported.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    out: dict[str, Any] = {"n": int(x.size)}
    kept = {name: np.asarray(z, dtype=np.float64) for name, z in controls.items()}
    dropped = [name for name, z in kept.items() if z.size and np.ptp(z) == 0]
    kept = {name: z for name, z in kept.items() if name not in dropped}
    notes = [f"{', '.join(dropped)} constant over the models: not a control"] if dropped else []
    k = 1 + len(kept)
    if x.size < k + 3:
        out["note"] = "; ".join([_too_small(x.size, k + 3, f"points for {k} predictors"), *notes])
        return out
    design = np.column_stack(
        [np.ones(x.size), x - x.mean(), *[z - z.mean() for z in kept.values()]]
    )
    if np.linalg.matrix_rank(design) < k + 1:
        out["note"] = "; ".join(["predictors are collinear: not estimated", *notes])
        return out
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residuals = y - design @ coef
    df = x.size - k - 1
    sigma2 = float(residuals @ residuals) / df
    se = math.sqrt(sigma2 * float(np.linalg.inv(design.T @ design)[1, 1]))
    slope = float(coef[1])
    half = stats.t.ppf(0.975, df) * se
    if se > 0:
        p_value = 2 * stats.t.sf(abs(slope) / se, df)
    else:
        p_value = 0.0 if slope != 0 else 1.0
    intercept = float(coef[0] - slope * x.mean())
    intercept -= sum(float(c) * z.mean() for c, z in zip(coef[2:], kept.values(), strict=True))
    out.update(
        estimate=slope,
        ci_low=slope - half,
        ci_high=slope + half,
        intercept=intercept,
        p_value=float(p_value),
    )
    if notes:
        out["note"] = "; ".join(notes)
    return out


def _bootstrap_mean(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` means of resamples of ``values`` drawn with replacement."""
    draws = rng.integers(0, values.size, size=(n_boot, values.size))
    return values[draws].mean(axis=1)


def _percentile(samples: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def _models_text(models: Iterable[str]) -> str:
    return ";".join(models)


def _trend_rows(
    analysis: str,
    workload: str,
    metric: str,
    rows: pd.DataFrame,
    x_column: str,
    x_values: pd.Series,
    unit: str,
    by_family: bool,
    by_size_band: bool = False,
) -> list[dict[str, Any]]:
    method = (
        f"OLS slope, t-based 95% CI (n >= {MIN_TREND_CI_MODELS}); Spearman rho, two-sided p "
        f"exact over all n! orderings (n <= {SPEARMAN_EXACT_MAX_N}), a seeded permutation "
        f"test of {SPEARMAN_RESAMPLES} orderings (n <= {SPEARMAN_PERMUTATION_MAX_N}), "
        "asymptotic t above; one point per independent model"
    )
    valid = rows[x_values.notna() & rows[metric].notna()]
    groups: list[tuple[str, pd.DataFrame]] = [("all", valid)]
    if by_family:
        families = sorted(set(rows["family"].dropna()))
        groups += [(f"family={f}", valid[valid["family"] == f]) for f in families]
    if by_size_band:
        bands = [band for band, _ in SIZE_BANDS if (rows["size_band"] == band).any()]
        groups += [(f"size_band={b}", valid[valid["size_band"] == b]) for b in bands]
    out = []
    for group, part in groups:
        result = linear_trend(x_values[part.index], part[metric])
        if result["n"] == 0:
            result["note"] = f"no models with both {x_column} and {metric}"
        out.append(
            _row(
                analysis=analysis,
                workload=workload,
                metric=metric,
                group=group,
                x=x_column,
                unit=unit,
                method=method,
                models=_models_text(part["model"]),
                **result,
            )
        )
    return out


def _class_rows(
    workload: str, metric: str, rows: pd.DataFrame, n_boot: int, seed: int
) -> list[dict[str, Any]]:
    valid = rows[rows[metric].notna() & rows["arch"].notna()]
    present = [c for c in ARCH_CLASSES if (valid["arch"] == c).any()]
    present += sorted(set(valid["arch"]) - set(ARCH_CLASSES))
    out = []
    boots: dict[str, np.ndarray] = {}
    values: dict[str, np.ndarray] = {}
    mean_method = f"mean over models, 95% percentile bootstrap CI over models ({n_boot} resamples)"
    for arch in present:
        part = valid[valid["arch"] == arch]
        v = part[metric].to_numpy(dtype=np.float64)
        values[arch] = v
        row = _row(
            analysis="class_mean",
            workload=workload,
            metric=metric,
            group=arch,
            x="arch",
            unit="metric",
            n=int(v.size),
            estimate=float(v.mean()),
            method=mean_method,
            models=_models_text(part["model"]),
        )
        if v.size >= MIN_CLASS_CI_MODELS:
            boots[arch] = _bootstrap_mean(v, n_boot, _rng(seed, "class", workload, metric, arch))
            row["ci_low"], row["ci_high"] = _percentile(boots[arch])
        else:
            row["note"] = _too_small(v.size, MIN_CLASS_CI_MODELS, "models for a CI")
        out.append(row)
    if not present:
        out.append(
            _row(
                analysis="class_mean",
                workload=workload,
                metric=metric,
                group="all",
                x="arch",
                n=0,
                note=f"no models with both arch and {metric}",
            )
        )
    diff_method = (
        "difference of class means, 95% percentile bootstrap CI (models resampled within "
        f"each class, {n_boot} resamples); Welch t-test p"
    )
    for first, second in itertools.combinations(present, 2):
        a, b = values[second], values[first]  # later class minus earlier (e.g. moe - dense)
        row = _row(
            analysis="class_difference",
            workload=workload,
            metric=metric,
            group=f"{second} - {first}",
            x="arch",
            unit="metric",
            n=int(a.size + b.size),
            estimate=float(a.mean() - b.mean()),
            method=diff_method,
            models=_models_text(valid[valid["arch"].isin([first, second])]["model"]),
        )
        if second in boots and first in boots:
            row["ci_low"], row["ci_high"] = _percentile(boots[second] - boots[first])
            if np.ptp(np.concatenate([a, b])) > 0:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    row["p_value"] = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
        else:
            row["note"] = (
                f"{TOO_SMALL}: n={b.size} {first}, n={a.size} {second}: a CI needs "
                f">= {MIN_CLASS_CI_MODELS} per class"
            )
        out.append(row)
    return out


#: analysis -> (pairs among the rows, x column, what d is, pair name): the paired comparisons.
_PAIRINGS = {
    "base_vs_tuned": (tuned_pairs, "tuning", "tuned - base", "base/tuned"),
    "control_vs_base": (control_pairs, "control", "control - base", "control/base"),
}


def read_document_sums(
    score_jsons: Mapping[tuple[str, str], str | Path | None],
) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(model, workload): its score JSON's document_sums}`` for the usable score JSONs
    that have them (older ones do not: their pairs fall back to combined CIs)."""
    out = {}
    for pair, path in score_jsons.items():
        data, _ = _read_score_json(Path(path) if path is not None else None)
        if data is not None and isinstance(data.get("document_sums"), Mapping):
            out[pair] = data["document_sums"]
    return out


def _document_ratio(
    sums: Mapping[str, Any], metric: str
) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """(document ids, numerators, denominators) of ``metric`` in a ``document_sums`` block."""
    entry = (sums.get("metrics") or {}).get(metric)
    if not isinstance(entry, Mapping):
        return None
    ids = list(sums.get("documents") or [])
    if entry.get("split") == "heldout":
        ids = [d for d, held in zip(ids, sums.get("heldout") or [], strict=False) if held]
    num = np.asarray([math.nan if v is None else v for v in entry["numerator"]], np.float64)
    den = np.asarray([math.nan if v is None else v for v in entry["denominator"]], np.float64)
    if not (len(ids) == num.size == den.size):
        return None
    return ids, num, den


def _document_curve(sums: Mapping[str, Any], metric: str) -> tuple[list[str], ...] | None:
    """(held-out document ids, savings numerators ``[n, K]`` and denominators ``[n]``,
    consistency numerators ``[n, K]`` and denominators ``[n]``) of a curve metric
    (``document_sums["curves"][metric]``, e.g. ``consistency_savings_auc``)."""
    entry = (sums.get("curves") or {}).get(metric)
    if not isinstance(entry, Mapping):
        return None
    documents, heldout = sums.get("documents") or [], sums.get("heldout") or []
    ids = [d for d, held in zip(documents, heldout, strict=False) if held]
    keys = ("savings_numerator", "savings_denominator")
    keys += ("consistency_numerator", "consistency_denominator")
    if not ids or any(key not in entry for key in keys):
        return None
    parts = [np.asarray(entry[key], dtype=np.float64) for key in keys]  # None -> nan
    if [p.ndim for p in parts] != [2, 1, 2, 1] or parts[0].shape != parts[2].shape:
        return None
    if any(p.shape[0] != len(ids) for p in parts):
        return None
    return (ids, *parts)


def _curve_auc(weights: np.ndarray, curve: Sequence[np.ndarray]) -> np.ndarray:
    """AUC of the consistency-savings curve summed over documents with ``weights``
    ``[B, n]`` (multiplicities): ``S_k = (w @ s_num)_k / (w @ s_den)``,
    ``C_k = (w @ c_num)_k / (w @ c_den)``, then
    :func:`exitbench.metrics.consistency_savings_auc`; ``[B]``."""
    s_num, s_den, c_num, c_den = curve
    with np.errstate(all="ignore"):
        savings = (weights @ s_num) / (weights @ s_den)[:, None]
        consistency = (weights @ c_num) / (weights @ c_den)[:, None]
        return consistency_savings_auc(savings, consistency)


def _shared_documents(
    ids_a: Sequence[Any], ids_b: Sequence[Any]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Indices into each model's per-document arrays of the documents both scored, in
    sorted id order (the order the paired bootstrap draws over); None if none is shared."""
    index_a = {d: i for i, d in enumerate(ids_a)}
    index_b = {d: i for i, d in enumerate(ids_b)}
    shared = sorted(set(index_a) & set(index_b))
    if not shared:
        return None
    return np.array([index_a[d] for d in shared]), np.array([index_b[d] for d in shared])


def _paired_curve_bootstrap(
    a: tuple[Any, ...], b: tuple[Any, ...], n_boot: int, rng: np.random.Generator
) -> dict[str, Any] | None:
    """:func:`paired_document_bootstrap` of a curve metric: each resample's curve and
    AUC are recomputed for both models from the same drawn documents."""
    aligned = _shared_documents(a[0], b[0])
    if aligned is None:
        return None
    ia, ib = aligned
    curve_a = [part[ia] for part in a[1:]]
    curve_b = [part[ib] for part in b[1:]]
    n = len(ia)
    ones = np.ones((1, n))
    estimate = float(_curve_auc(ones, curve_b)[0] - _curve_auc(ones, curve_a)[0])
    out: dict[str, Any] = {"estimate": estimate, "n_documents": n}
    if n_boot > 0:
        draws = rng.integers(0, n, size=(n_boot, n))  # the draws of the ratio metrics
        flat = (draws + np.arange(n_boot)[:, None] * n).ravel()
        weights = np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)
        boot = _curve_auc(weights, curve_b) - _curve_auc(weights, curve_a)
        boot = boot[np.isfinite(boot)]
        if boot.size:
            out["ci_low"], out["ci_high"] = _percentile(boot)
    return out if math.isfinite(estimate) else None


def paired_document_bootstrap(
    first: Mapping[str, Any],
    second: Mapping[str, Any],
    metric: str,
    n_boot: int,
    rng: np.random.Generator,
) -> dict[str, Any] | None:
    """d = metric(second) - metric(first) over the documents both scored, with the 95%
    percentile CI of a paired document bootstrap.

    ``first``/``second`` are the ``document_sums`` of two score JSONs, where
    ``metric = sum_d num_d / sum_d den_d``. Each resample draws documents with
    replacement (``rng.integers(0, n, (n_boot, n))`` over the shared documents, in
    sorted id order) and uses the same draw for both models:
    ``d* = sum num2[draw] / sum den2[draw] - sum num1[draw] / sum den1[draw]``. So
    a difference that is the same on every document has a zero-width CI, however
    much the documents differ. A curve metric (``document_sums["curves"]``: the
    AUC) uses the same draws: each model's held-out sweep ``(S_k, C_k)`` is summed
    over the drawn documents and its area recomputed
    (:func:`exitbench.metrics.consistency_savings_auc`), ``d* = AUC2* - AUC1*``.
    Returns ``{estimate, ci_low, ci_high, n_documents}``, or None when either block
    lacks ``metric`` or no document is shared.
    """
    a, b = _document_ratio(first, metric), _document_ratio(second, metric)
    if a is None or b is None:
        curve_a, curve_b = _document_curve(first, metric), _document_curve(second, metric)
        if curve_a is None or curve_b is None:
            return None
        return _paired_curve_bootstrap(curve_a, curve_b, n_boot, rng)
    aligned = _shared_documents(a[0], b[0])
    if aligned is None:
        return None
    ia, ib = aligned
    n = len(ia)
    num_a, den_a, num_b, den_b = a[1][ia], a[2][ia], b[1][ib], b[2][ib]
    with np.errstate(all="ignore"):
        estimate = num_b.sum() / den_b.sum() - num_a.sum() / den_a.sum()
        out = {"estimate": float(estimate), "n_documents": n}
        if n_boot > 0:
            draws = rng.integers(0, n, size=(n_boot, n))
            boot = num_b[draws].sum(1) / den_b[draws].sum(1)
            boot -= num_a[draws].sum(1) / den_a[draws].sum(1)
            boot = boot[np.isfinite(boot)]
            if boot.size:
                out["ci_low"], out["ci_high"] = _percentile(boot)
    return out if math.isfinite(out["estimate"]) else None


def _paired_rows(
    workload: str,
    metric: str,
    rows: pd.DataFrame,
    analysis: str = "base_vs_tuned",
    document_sums: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    find_pairs, x, difference, pair_name = _PAIRINGS[analysis]
    by_model = rows.set_index("model")
    document_sums = document_sums or {}
    diffs, used, out = [], [], []
    combined_method = (
        f"{difference}; CI combines the two bootstrap CIs as if independent "
        "(the score JSONs keep no per-document sums of this metric for a paired bootstrap)"
    )
    for tuned, base in find_pairs(rows):
        t, b = by_model.loc[tuned], by_model.loc[base]
        row = _row(
            analysis=f"{analysis}_pair",
            workload=workload,
            metric=metric,
            group=f"{tuned} - {base}",
            x=x,
            unit="metric",
            n=1,
            models=_models_text([base, tuned]),
        )
        if pd.isna(t[metric]) or pd.isna(b[metric]):
            row["note"] = f"{metric} is null for {tuned if pd.isna(t[metric]) else base}"
            out.append(row)
            continue
        d = float(t[metric] - b[metric])
        row["estimate"] = d
        paired = None
        if (base, workload) in document_sums and (tuned, workload) in document_sums:
            paired = paired_document_bootstrap(
                document_sums[(base, workload)],
                document_sums[(tuned, workload)],
                metric,
                n_boot,
                _rng(seed, analysis, workload, tuned, base),  # same draws for every metric
            )
        if paired is not None:
            row["estimate"] = d = paired["estimate"]
            row["ci_low"], row["ci_high"] = paired.get("ci_low"), paired.get("ci_high")
            row["method"] = (
                f"{difference}; 95% percentile CI of a paired document bootstrap (the same "
                f"resampled documents for both models, {n_boot} resamples, "
                f"{paired['n_documents']} documents)"
            )
            diffs.append(d)
            used += [base, tuned]
            out.append(row)
            continue
        row["method"] = combined_method
        bounds = [t[f"{metric}_ci_low"], t[f"{metric}_ci_high"]]
        bounds += [b[f"{metric}_ci_low"], b[f"{metric}_ci_high"]]
        if not any(pd.isna(v) for v in bounds):
            t_low, t_high, b_low, b_high = (float(v) for v in bounds)
            row["ci_low"] = d - math.hypot(t[metric] - t_low, b_high - b[metric])
            row["ci_high"] = d + math.hypot(t_high - t[metric], b[metric] - b_low)
        else:
            row["note"] = "no bootstrap CI in the score JSONs"
        diffs.append(d)
        used += [base, tuned]
        out.append(row)
    d = np.asarray(diffs, dtype=np.float64)
    row = _row(
        analysis=analysis,
        workload=workload,
        metric=metric,
        group="all",
        x=x,
        unit="metric",
        n=int(d.size),
        method=f"mean of paired differences {difference}, t-based 95% CI; paired t-test p",
        models=_models_text(used),
    )
    if d.size:
        row["estimate"] = float(d.mean())
    if d.size >= 2:
        sd = float(d.std(ddof=1))
        half = stats.t.ppf(0.975, d.size - 1) * sd / math.sqrt(d.size)
        row["ci_low"], row["ci_high"] = row["estimate"] - half, row["estimate"] + half
        if sd > 0:
            row["p_value"] = float(stats.ttest_1samp(d, 0.0).pvalue)
    else:
        row["note"] = f"n={d.size} {pair_name} pairs: CI needs >= 2"
    out.append(row)
    return out


def _checkpoint_rows(workload: str, metric: str, rows: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    ok = rows[rows["status"] == "ok"]
    for run, members in checkpoint_runs(ok).items():
        part = members[members[metric].notna() & members["training_step"].notna()]
        x = np.log10(1.0 + part["training_step"].to_numpy(dtype=np.float64))
        result = linear_trend(x, part[metric])
        out.append(
            _row(
                analysis="checkpoint_trend",
                workload=workload,
                metric=metric,
                group=run,
                x="log10(1 + training_step)",
                unit="per decade of training steps",
                method="OLS slope on log10(1 + training_step), t-based 95% CI; Spearman rho",
                models=_models_text(part["model"]),
                **result,
            )
        )
    return out


def _log10_positive(values: pd.Series) -> pd.Series:
    values = pd.to_numeric(values, errors="coerce").astype("float64")
    return np.log10(values.where(values > 0))


def active_params(rows: pd.DataFrame) -> pd.Series:
    """Active parameters per row (an MoE's per-token count), total parameters where no
    active count is given (dense models: all parameters are active)."""
    active = pd.to_numeric(rows["active_params"], errors="coerce").astype("float64")
    return active.fillna(pd.to_numeric(rows["total_params"], errors="coerce").astype("float64"))


def _controlled_rows(workload: str, metric: str, rows: pd.DataFrame) -> list[dict[str, Any]]:
    controls = {
        "log10(active_params)": _log10_positive(active_params(rows)),
        "log10(vocab_size)": _log10_positive(rows["vocab_size"]),
        "num_layers": pd.to_numeric(rows["num_layers"], errors="coerce").astype("float64"),
    }
    known = rows["release_year"].notna() & rows[metric].notna()
    for values in controls.values():
        known &= values.notna()
    part = rows[known]
    result = controlled_trend(
        part["release_year"].to_numpy(dtype=np.float64),
        part[metric].to_numpy(dtype=np.float64),
        {name: values[known].to_numpy() for name, values in controls.items()},
    )
    return [
        _row(
            analysis="release_trend_controlled",
            workload=workload,
            metric=metric,
            group="all",
            x="release_year",
            unit="per year",
            method=(
                "multiple OLS regression on release_year, "
                + ", ".join(RELEASE_CONTROLS)
                + "; release_year coefficient with t-based 95% CI (df = n - k - 1), "
                "reported for n >= k + 3; one point per independent model"
            ),
            models=_models_text(part["model"]),
            **result,
        )
    ]


def claim_statistics(
    summary: pd.DataFrame,
    metrics: Sequence[str] = STAT_METRICS,
    n_boot: int = 2000,
    seed: int = 0,
    document_sums: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """Trend, class, base/tuned and checkpoint statistics (columns ``STATISTICS_COLUMNS``).

    One block of rows per workload and metric; see the module docstring for
    every formula and for which models each analysis uses. ``document_sums``
    (:func:`read_document_sums`) feeds the paired document bootstrap of the
    base/tuned and control/base pairs; without it their CIs combine the two
    models' CIs. Never fails for lack of data: such rows have ``n`` and a ``note``.
    Every row's ``lens`` is the summary's (logit where the summary has no ``lens`` column).
    """
    unknown = [m for m in metrics if m not in summary.columns]
    if unknown:
        raise AggregateError(f"metrics {unknown} are not summary columns")
    lens = _summary_lens(summary)
    out: list[dict[str, Any]] = []
    for workload in pd.unique(summary["workload"]):
        rows = summary[summary["workload"] == workload]
        independent = independent_models(rows)
        log10_active = _log10_positive(active_params(independent))
        log10_total = _log10_positive(independent["total_params"])
        ok = rows[rows["status"] == "ok"]
        for metric in metrics:
            out += _trend_rows(
                "release_trend",
                workload,
                metric,
                independent,
                "release_year",
                independent["release_year"],
                "per year",
                by_family=True,
                by_size_band=True,
            )
            out += _controlled_rows(workload, metric, independent)
            out += _trend_rows(
                "params_trend",
                workload,
                metric,
                independent,
                "log10(active_params)",
                log10_active,
                "per decade of active parameters",
                by_family=True,
            )
            out += _trend_rows(
                "total_params_trend",
                workload,
                metric,
                independent,
                "log10(total_params)",
                log10_total,
                "per decade of total parameters",
                by_family=False,
            )
            out += _class_rows(workload, metric, independent, n_boot, seed)
            for analysis in _PAIRINGS:
                out += _paired_rows(workload, metric, ok, analysis, document_sums, n_boot, seed)
            out += _checkpoint_rows(workload, metric, rows)
    frame = pd.DataFrame(out, columns=list(STATISTICS_COLUMNS))
    frame["lens"] = lens
    frame["n"] = frame["n"].astype("Int64")
    for column in ("estimate", "ci_low", "ci_high", "intercept", "p_value"):
        frame[column] = frame[column].astype("float64")
    for column in ("spearman_rho", "spearman_p"):
        frame[column] = frame[column].astype("float64")
    return frame


def _summary_lens(summary: pd.DataFrame) -> str:
    """The one lens of ``summary``'s rows (``logit`` without a ``lens`` column)."""
    lenses = set(summary["lens"].dropna()) if "lens" in summary else set()
    if len(lenses) > 1:
        raise AggregateError(f"summary mixes lenses {sorted(lenses)}: aggregate one at a time")
    return str(lenses.pop()) if lenses else "logit"


def write_statistics(
    statistics: pd.DataFrame,
    csv_path: str | Path,
    json_path: str | Path,
    params: Mapping[str, Any] | None = None,
) -> None:
    """Write the statistics as CSV and as JSON ``{"params": ..., "rows": [...]}`` (NaN -> null)."""
    _write_csv(statistics, csv_path)
    records = [
        {key: (None if pd.isna(value) else value) for key, value in record.items()}
        for record in statistics.astype(object).to_dict(orient="records")
    ]
    write_json({"params": dict(params or {}), "rows": records}, json_path)


def model_metadata(models: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{model: its METADATA_KEYS}`` of the config's ``models:`` section: what the
    summary shows, and nothing else (so editing other keys reruns no aggregate job)."""
    return {
        name: {key: entry[key] for key in METADATA_KEYS if key in entry}
        for name, entry in models.items()
    }


def aggregate_files(
    score_jsons: Mapping[tuple[str, str], str | Path],
    models: Mapping[str, Mapping[str, Any]],
    model_infos: Mapping[str, str | Path] | None,
    summary_parquet: str | Path,
    summary_csv: str | Path,
    statistics_csv: str | Path,
    statistics_json: str | Path,
    seed: int = 0,
    n_boot: int = 2000,
    log_dir: str | Path | None = None,
    failures: Mapping[tuple[str, str], str] | None = None,
    decode_jsons: Mapping[tuple[str, str], str | Path] | None = None,
    lens: str = "logit",
) -> pd.DataFrame:
    """File-to-file entry point of the aggregate rule; returns the summary.

    Called once per lens: ``lens="tuned"`` with the tuned lens's score JSONs
    (results/scores-tuned) writes results/summary-tuned.* and statistics-tuned.*.

    With ``log_dir`` (the workflow's ``results/logs``), a failed pair's error
    names the first failed job's own error line, not just the missing file.
    ``failures`` (pair -> reason, from :func:`pair_failure`) marks pairs ``failed``
    whatever their score JSON holds. ``decode_jsons`` (pair -> results/decode JSON) fills
    the ``decode_*`` columns (:func:`exitbench.decode.summary_columns`; null for other pairs).
    """
    failures = failures or {}
    score_jsons = {pair: (None if pair in failures else path) for pair, path in score_jsons.items()}
    summary = build_summary(score_jsons, models, model_infos, lens=lens)
    for index in summary.index[summary["status"] == "failed"]:
        model, workload = summary.at[index, "model"], summary.at[index, "workload"]
        reason = failures.get((model, workload))
        if reason is None and log_dir is not None:
            reason = job_failure(Path(log_dir), model, workload)
        if reason:
            summary.at[index, "error"] = reason
    if decode_jsons:
        summary = _with_decode_columns(summary, decode_jsons)
    write_summary(summary, summary_parquet, summary_csv)
    n_failed = int((summary["status"] == "failed").sum())
    log.info(
        "summary: %d pairs (%d failed) of %d models, %d workloads",
        len(summary),
        n_failed,
        summary["model"].nunique(),
        summary["workload"].nunique(),
    )
    document_sums = read_document_sums(score_jsons)
    statistics = claim_statistics(summary, n_boot=n_boot, seed=seed, document_sums=document_sums)
    params = {
        "seed": seed,
        "bootstrap": n_boot,
        "metrics": list(STAT_METRICS),
        "versions": package_versions(),
    }
    write_statistics(statistics, statistics_csv, statistics_json, params)
    log.info("statistics: %d rows", len(statistics))
    return summary


def _with_decode_columns(
    summary: pd.DataFrame, decode_jsons: Mapping[tuple[str, str], str | Path]
) -> pd.DataFrame:
    """``summary`` with each pair's realised decoding (the decode stage's JSON) joined in."""
    from .decode import summary_columns

    values = [
        summary_columns(decode_jsons.get((model, workload)))
        for model, workload in zip(summary["model"], summary["workload"], strict=True)
    ]
    decoded = pd.DataFrame(values, index=summary.index)
    out = summary.copy()
    for column in decoded.columns:  # the summary (from _typed) has every schema column
        out[column] = decoded[column].astype(summary[column].dtype)
    return out


#: Where each lens's shards, scores and study tables live (the logit lens's are the
#: original contract paths; the tuned lens's sit beside them).
LENS_RESULTS: dict[str, dict[str, Any]] = {
    "logit": {
        "lens": "results/lens",
        "scores": "results/scores",
        "tables": (
            "results/summary.parquet",
            "results/summary.csv",
            "results/statistics.csv",
            "results/statistics.json",
        ),
    },
    "tuned": {
        "lens": "results/lens-tuned",
        "scores": "results/scores-tuned",
        "tables": (
            "results/summary-tuned.parquet",
            "results/summary-tuned.csv",
            "results/statistics-tuned.csv",
            "results/statistics-tuned.json",
        ),
    },
}


def pair_inputs(
    config: Mapping[str, Any], model: str, workload: str, lens: str = "logit"
) -> list[Path]:
    """Every local file a pair's score outputs derive from, transitively, relative to the
    working directory: the workload (and its source file), the model description and its
    local folder's files, the tokens, the translators (tuned lens) and the lens shards on disk."""
    spec = config["workloads"][workload]
    paths = [Path(f"results/workloads/{workload}.{ext}") for ext in ("parquet", "json")]
    if spec.get("source") == "file" and spec.get("path"):
        paths.append(resolve_path(spec["path"]))
    paths.append(Path(f"results/models/{model}.json"))
    folder = config["models"][model].get("path")
    if folder is not None:
        files = set()
        for kind in MODEL_FILE_PATTERNS:
            files.update(model_input_files(folder, kind))
        paths += [Path(path) for path in sorted(files)]
    paths += [Path(f"results/tokens/{model}/{workload}.{ext}") for ext in ("parquet", "json")]
    if lens == "tuned":
        paths += sorted(Path(f"results/translators/{model}").glob("*"))
    # the shards on disk: lens shards deleted to save space after scoring are no failure
    shards = Path(LENS_RESULTS[lens]["lens"]) / model / workload
    paths += sorted(shards.glob("shard-*.parquet"))
    return paths


def pair_failure(
    config: Mapping[str, Any],
    model: str,
    workload: str,
    log_dir: str | Path = "results/logs",
    lens: str = "logit",
) -> str | None:
    """Why a pair's score outputs on disk are not this run's result, or None if they are
    (or are absent: :func:`build_summary` reports a missing JSON itself).

    A pair failed when one of its job logs holds an error and was written after its score
    JSON (:func:`exitbench.logs.job_failure`), or when the JSON is older than one of its
    inputs (:func:`pair_inputs`): some upstream job reran in this run and score never ran
    on its output.
    """
    outputs = _score_outputs(model, workload, lens)
    if not outputs[0].exists():
        return None
    written_ns = min(path.stat().st_mtime_ns for path in outputs if path.exists())
    reason = job_failure(Path(log_dir), model, workload, since_ns=written_ns, lens=lens)
    if reason is not None:
        return reason
    for path in pair_inputs(config, model, workload, lens):
        if path.exists() and path.stat().st_mtime_ns > written_ns:
            return (
                f"score: {outputs[0]} is older than its input {path}: an upstream job reran "
                "and score did not run after it"
            )
    return None


def _score_outputs(model: str, workload: str, lens: str) -> list[Path]:
    scores = Path(LENS_RESULTS[lens]["scores"])
    return [scores / model / f"{workload}.{ext}" for ext in ("json", "parquet")]


def _move_aside_scores(model: str, workload: str, lens: str = "logit") -> None:
    """Move a failed pair's stale score outputs to ``results/stale/scores[-tuned]/``, so
    that no reader takes them for this run's result (the next run recomputes them anyway)."""
    for path in _score_outputs(model, workload, lens):
        if path.exists():
            target = Path("results/stale") / path.relative_to("results")
            target.parent.mkdir(parents=True, exist_ok=True)
            path.replace(target)
            log.warning("%s is stale (its pair failed in this run): moved to %s", path, target)


#: What :func:`write_failure_summary` writes for the logit lens: the aggregate rule's own
#: outputs (the tuned lens's are ``LENS_RESULTS["tuned"]["tables"]``).
FAILURE_SUMMARY_FILES = LENS_RESULTS["logit"]["tables"]


def _mark_out_of_date(paths: Sequence[str]) -> None:
    """Date files to the epoch, so Snakemake sees them older than their inputs.

    The failure summary is written outside any job; with a current mtime the next
    run would take it for a finished aggregate and plan nothing.
    """
    for path in paths:
        if Path(path).exists():
            os.utime(path, (0, 0))


def write_failure_summary(config: Mapping[str, Any]) -> None:
    """After a failed run (say, ``--keep-going`` with a gated model), still write the
    study tables of every lens in ``lenses`` (``results/summary.*`` and
    ``results/statistics.*``; ``*-tuned.*`` for the tuned lens) in the working directory:
    every finished pair with its numbers, every failed one with its first error line
    (:func:`pair_failure`), its stale score outputs moved aside, and log the failed pairs.
    The tables are dated to the epoch, so the next run rebuilds them.

    ``config`` is the validated study config. The summary is a courtesy (the run
    has failed anyway): any error here is logged as a warning, never raised.
    """
    for lens in config.get("lenses") or ["logit"]:
        try:
            summary = _failure_summary(config, lens)
        except Exception as err:  # the run has failed anyway: never mask that
            log.warning("could not write a partial %s-lens summary: %s", lens, err)
            continue
        failed = summary[summary["status"] == "failed"]
        log.warning(
            "%s lens: %d of %d (model, workload) pairs failed; %s lists them with the error:\n%s",
            lens,
            len(failed),
            len(summary),
            LENS_RESULTS[lens]["tables"][1],
            "\n".join(f"  {r.model} / {r.workload}: {r.error}" for r in failed.itertuples()),
        )


def _failure_summary(config: Mapping[str, Any], lens: str) -> pd.DataFrame:
    models, workloads = list(config["models"]), list(config["workloads"])
    failures = {}
    for model in models:
        for workload in workloads:
            reason = pair_failure(config, model, workload, lens=lens)
            if reason is not None:
                failures[model, workload] = reason
                _move_aside_scores(model, workload, lens)
    infos = {m: Path(f"results/models/{m}.json") for m in models}
    tables = LENS_RESULTS[lens]["tables"]
    summary = aggregate_files(
        {(m, w): _score_outputs(m, w, lens)[0] for m in models for w in workloads},
        model_metadata(config["models"]),
        {m: path for m, path in infos.items() if path.exists()},
        *tables,
        seed=config["seed"],
        log_dir="results/logs",
        failures=failures,
        lens=lens,
    )
    _mark_out_of_date(tables)
    return summary
