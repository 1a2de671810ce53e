"""Score stage: lens shards -> per-layer curves and early-exit headline numbers.

Inputs are the lens shards of one (model, workload) (read and validated by
:mod:`exitbench.shards`), the tokens table (seq_id -> doc_id: documents are
the bootstrap unit) and the model description written by
``models.describe_model``. Outputs:

* ``results/scores/{model}/{workload}.parquet`` (schema ``scores``): one row
  per layer with agreement, accuracy and confidence means, each with a 95%
  bootstrap CI over documents, and the saturation / first-agreement histograms.
* ``results/scores/{model}/{workload}.json`` (JSON schema
  ``workflow/schemas/score_headline.schema.json``): headline numbers with CIs,
  per-measure threshold policies, held-out sweeps, FLOP model.

:func:`score_arrays` runs the named steps in order, each callable on its own:

1. :func:`document_split`: documents, calibration / held-out split, bootstrap weights;
2. :func:`agreement_masks`: per (layer, token) agreement with the final top-1 and the gold token;
3. :func:`layer_curves`: per-layer means with CIs (the ``scores`` table's columns);
4. :func:`oracle_exits`: saturation and first-agreement layers, the two oracles'
   savings (``S_first``, ``S_settled``);
5. :func:`exit_policies`: threshold sweeps per measure, calibrated thresholds, AUCs;
6. :func:`assemble_headline`, :func:`scores_table`, :func:`summary_dict`: the outputs.

Metric formulas: :mod:`exitbench.metrics` (exit layers, policies, bootstrap)
and :mod:`exitbench.flops` (net FLOP savings).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from . import metrics
from .config import section_defaults
from .flops import (
    FlopModel,
    FlopModelError,
    check_schedule,
    flop_model,
    tuned_lens_flops,
)
from .provenance import clean_json, write_json
from .shards import LensArrays, load_lens
from .tables import SCHEMA_DIR, read_table, write_table

log = logging.getLogger(__name__)

__all__ = [
    "HEADLINE_TARGETS",
    "MIN_CI_DOCUMENTS",
    "Documents",
    "ExitPolicies",
    "OracleExits",
    "ScoreError",
    "agreement_masks",
    "assemble_headline",
    "document_sums",
    "document_split",
    "exit_policies",
    "few_documents",
    "layer_curves",
    "oracle_exits",
    "score_arrays",
    "score_files",
    "score_lens",
    "scores_table",
    "study_warnings",
    "summary_dict",
    "translators_in_sample",
    "validate_headline",
    "write_scores",
]

#: Consistency targets always reported (the headline contract); config targets add to them.
HEADLINE_TARGETS: tuple[float, ...] = (0.99, 0.95)
HEADLINE_SCHEMA = SCHEMA_DIR / "score_headline.schema.json"
#: Fewest held-out documents behind a bootstrap CI that we call trustworthy: below it the
#: score JSON says ``few_documents: true`` (CIs over a handful of documents are too narrow,
#: or zero-width with one).
MIN_CI_DOCUMENTS = 20

#: How each policy's threshold is applied (copied into the JSON). Exits happen only at
#: the checked layers of score.check_every / score.min_exit_layer (else at L).
MEASURE_RULES = {
    "maxprob": "exit at the first checked layer l >= 1 with maxprob_l >= threshold",
    "margin": "exit at the first checked layer l >= 1 with margin_l >= threshold",
    "entropy": "exit at the first checked layer l >= 1 with entropy_nats_l <= threshold",
    "cos_prev": "exit at the first checked layer l >= 1 with cos_prev_l >= threshold "
    "(where defined)",
    "patience_maxprob": "exit after `patience` consecutive checked layers (l >= 1) with "
    "maxprob >= threshold",
    "pabee": "PABEE (Zhou et al. 2020): exit once the top-1 has stayed the same for "
    "`threshold` = p consecutive checks after it appeared (p swept)",
    "patience": "old name of patience_maxprob (same numbers)",
}
#: What each measure's exit check costs (exitbench.flops.CHECK_KINDS): the head at every
#: check, or a cosine per check and the head once at the exit.
MEASURE_CHECKS = {
    "maxprob": "head",
    "margin": "head",
    "entropy": "head",
    "cos_prev": "cosine",
    "patience_maxprob": "head",
    "pabee": "head",
}
#: One-sided confidence level of the lower bound on calibration consistency
#: (``score.calibration: bound``).
CALIBRATION_LEVEL = 0.95
#: What the translators trained on, in their folder (written by the translators stage).
TRANSLATORS_SOURCE_FILE = "training_source.json"


class ScoreError(ValueError):
    """Inputs of the score stage are inconsistent (names the file or setting to fix)."""


# ---------------------------------------------------------------- small helpers


def _targets(params: Mapping[str, Any]) -> list[float]:
    """The config's consistency targets plus :data:`HEADLINE_TARGETS`, descending."""
    missing = sorted(set(section_defaults("score")) - set(params))
    if missing:
        raise ScoreError(
            f"score params lack {missing}: pass the validated config's score: section "
            "(exitbench.config.section_defaults('score') holds the defaults)"
        )
    targets = {float(t) for t in params["consistency_targets"]} | set(HEADLINE_TARGETS)
    return sorted(targets, reverse=True)


def _target_key(target: float) -> str:
    """``0.99 -> "0.99"`` (keys of policies and best_measure)."""
    return f"{target:g}"


def _target_suffix(target: float) -> str:
    """``0.99 -> "99"``, ``0.999 -> "99.9"`` (headline names savings_at_99, ...)."""
    return f"{round(target * 100, 6):g}"


def _ci(estimate: Any, low: Any, high: Any) -> dict[str, float]:
    return {"estimate": float(estimate), "ci_low": float(low), "ci_high": float(high)}


def _ratio(num: np.ndarray, den: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """``sum num / sum den`` over documents with its bootstrap CI, as a JSON dict."""
    return _ci(*metrics.bootstrap_ratio(num, den, weights))


_NAN_CI = _ci(math.nan, math.nan, math.nan)


# ---------------------------------------------------------------- 1. documents


@dataclass
class Documents:
    """The documents of the scored tokens (the bootstrap unit) and their split.

    Tokens are grouped by document: ``unit[t]`` is the document (0..n-1, in
    token order) of token t, ``starts[d]`` the first token of document d.
    """

    ids: list[str]
    unit: np.ndarray
    starts: np.ndarray
    n_tokens: np.ndarray  # tokens per document (float64)
    n_gold: np.ndarray  # tokens with a gold next token per document (float64)
    calibration: np.ndarray  # bool per document
    heldout: np.ndarray  # bool per document (= calibration with a single document)
    weights: np.ndarray  # [B, documents] bootstrap multiplicities
    heldout_weights: np.ndarray  # [B, held-out documents]
    calibration_weights: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def in_sample(self) -> bool:
        """Whether the held-out split is (part of) the calibration split (one document)."""
        return bool((self.calibration & self.heldout).any())

    def per_layer_sums(self, values: np.ndarray) -> np.ndarray:
        """``[layers, T]`` -> ``[documents, layers]`` float64 sums."""
        if values.dtype == bool:  # exact integer counts, 2x faster than float64 adds
            counts = np.add.reduceat(values.view(np.uint8), self.starts, axis=1, dtype=np.int64)
            return counts.astype(np.float64).T
        return np.add.reduceat(values, self.starts, axis=1, dtype=np.float64).T

    def sums(self, values: np.ndarray) -> np.ndarray:
        """``[T]`` -> ``[documents]`` float64 sums."""
        return np.bincount(self.unit, weights=values.astype(np.float64), minlength=self.count)


def document_split(
    arrays: LensArrays,
    calibration_fraction: float,
    bootstrap: int,
    seed: int,
    model: str = "",
    workload: str = "",
) -> Documents:
    """Documents of ``arrays``, split by :func:`metrics.split_documents`.

    Bootstrap weights come from ``np.random.default_rng(seed)``: first
    ``bootstrap`` resamples of all documents, then of the held-out ones, then of
    the calibration ones (for the lower bound of ``calibration: bound``). With
    one document the held-out split is the calibration split (in-sample:
    :func:`study_warnings` says so).
    """
    doc = np.asarray(arrays.doc)
    if doc.size == 0:
        raise ScoreError(f"no tokens to score for model {model!r}, workload {workload!r}")
    change = np.diff(doc) != 0
    if np.count_nonzero(np.bincount(doc)) != 1 + change.sum():
        raise ScoreError("tokens must be grouped by document (LensArrays.doc contiguous)")
    starts = np.concatenate([[0], np.flatnonzero(change) + 1])
    unit = np.concatenate([[0], np.cumsum(change)])
    doc_ids = [arrays.doc_ids[int(doc[s])] for s in starts]
    n_docs = len(doc_ids)
    calibration = metrics.split_documents(doc_ids, float(calibration_fraction), seed)
    heldout = ~calibration
    if not heldout.any():  # one document: in-sample (study_warnings says so)
        heldout = calibration.copy()
    rng = np.random.default_rng(seed)
    weights = metrics.bootstrap_weights(n_docs, int(bootstrap), rng)
    heldout_weights = metrics.bootstrap_weights(int(heldout.sum()), int(bootstrap), rng)
    calibration_weights = metrics.bootstrap_weights(int(calibration.sum()), int(bootstrap), rng)
    has_gold = np.asarray(arrays.gold) >= 0
    return Documents(
        ids=doc_ids,
        unit=unit,
        starts=starts,
        n_tokens=np.bincount(unit, minlength=n_docs).astype(np.float64),
        n_gold=np.bincount(unit, weights=has_gold.astype(np.float64), minlength=n_docs),
        calibration=calibration,
        heldout=heldout,
        weights=weights,
        heldout_weights=heldout_weights,
        calibration_weights=calibration_weights,
    )


def study_warnings(
    docs: Documents, n_windows: int | None = None, n_windows_requested: int | None = None
) -> list[str]:
    """Plain-language warnings about the size of the study (the score JSON's ``warnings``).

    One for fewer windows than ``tokenize.max_sequences`` asked for, one for a
    held-out split of fewer than :data:`MIN_CI_DOCUMENTS` documents (or one that
    is the calibration split itself).
    """
    warnings = []
    if n_windows is not None and n_windows_requested is not None:
        if n_windows < n_windows_requested:
            warnings.append(
                f"the workload yields {n_windows} token windows, fewer than the "
                f"{n_windows_requested} requested (tokenize.max_sequences): the extra lens "
                "shards are empty; use more or longer documents to score that many"
            )
    n_held = int(docs.heldout.sum())
    if docs.in_sample:
        warnings.append(
            f"{docs.count} document(s): calibration and held-out splits are the same documents, "
            "so held-out numbers are in-sample and their CIs too narrow; use more documents "
            "(workloads.<name>.max_docs, or a file with one document per text)"
        )
    elif n_held < MIN_CI_DOCUMENTS:
        warnings.append(
            f"only {n_held} held-out document(s) (fewer than {MIN_CI_DOCUMENTS}): bootstrap CIs "
            "over documents are unreliable; use more documents (workloads.<name>.max_docs) or "
            "a smaller score.calibration_fraction"
        )
    return warnings


def few_documents(docs: Documents) -> bool:
    """True when the held-out split has fewer than :data:`MIN_CI_DOCUMENTS` documents
    or is the calibration split itself (in-sample)."""
    return docs.in_sample or int(docs.heldout.sum()) < MIN_CI_DOCUMENTS


# ---------------------------------------------------------------- 2. agreement


def agreement_masks(arrays: LensArrays) -> tuple[np.ndarray, np.ndarray]:
    """``agree[l, t] = 1[yhat_l = yhat]`` and ``correct[l, t] = 1[yhat_l = gold_t]``
    (False where token t has no gold next token), ``[layers, T]`` booleans."""
    gold = np.asarray(arrays.gold)
    agree = arrays.top1 == arrays.top1[-1]
    correct = arrays.top1 == np.where(gold >= 0, gold, -1)[None, :]
    return agree, correct


# ---------------------------------------------------------------- 3. curves


def layer_curves(
    arrays: LensArrays, docs: Documents, agree: np.ndarray, correct: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-layer token means with 95% bootstrap CIs over documents.

    ``agreement_l = mean_t agree[l, t]``, ``accuracy_l`` over tokens with a
    gold token, and the means of maxprob, margin, entropy (nats), KL(p_L ||
    p_l) and cos_prev (over tokens where it is defined); each ``name`` comes
    with ``name_ci_low`` and ``name_ci_high``.
    """
    curves: dict[str, np.ndarray] = {}

    def curve(name: str, num: np.ndarray, den: np.ndarray) -> None:
        est, low, high = metrics.bootstrap_ratio(num, den, docs.weights)
        curves[name], curves[f"{name}_ci_low"], curves[f"{name}_ci_high"] = est, low, high

    per_doc = docs.per_layer_sums
    curve("agreement", per_doc(agree), docs.n_tokens)
    curve("accuracy", per_doc(correct), docs.n_gold)
    for column, name in [
        ("maxprob", "maxprob_mean"),
        ("margin", "margin_mean"),
        ("entropy", "entropy_nats_mean"),
        ("kl_to_final", "kl_to_final_mean"),
    ]:
        curve(name, per_doc(getattr(arrays, column)), docs.n_tokens)
    cos_valid = ~np.isnan(arrays.cos_prev)
    curve("cos_prev_mean", per_doc(np.where(cos_valid, arrays.cos_prev, 0)), per_doc(cos_valid))
    return curves


# ---------------------------------------------------------------- 4. oracle exits


@dataclass
class OracleExits:
    """The two oracle exits per token and the headline numbers they give:
    ``e_first`` (a perfect rule judged by per-token consistency: the bound) and
    ``e_sat`` (the prediction has settled for good)."""

    saturation: np.ndarray  # e_sat per token, layers 1..L
    first_agreement: np.ndarray  # e_first per token
    saturation_count: np.ndarray  # tokens per e_sat, index 0..L (0 always empty)
    first_agreement_count: np.ndarray  # tokens per e_first, index 0..L
    headline: dict[str, dict[str, float]]
    costs: np.ndarray | None  # oracle FLOPs of exiting at layer 0..L (None without a FLOP model)
    #: headline name -> (numerator, denominator) per document: the paired bootstrap's input
    document_sums: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def oracle_exits(
    agree: np.ndarray,
    correct: np.ndarray,
    docs: Documents,
    flops: FlopModel | None,
    state_cost: str = "kv",
) -> OracleExits:
    """First-agreement and saturation layers and the oracles' headline numbers.

    ``agree``/``correct`` hold layers 1..L only (``[L, T]``). With ``n_d``
    tokens in document d: ``savings_first = S_first = 1 - E[e_first] / L``
    (the bound of any rule judged by per-token consistency: it exits where the
    lens first agrees, at consistency 1), ``savings_settled = S_settled = 1 -
    E[e_sat] / L`` (the prediction has settled for good; ``oracle_savings``
    is the same number under its old name), ``mean_saturation_layer =
    E[e_sat]``, ``mean_first_agreement_layer = E[e_first]``,
    ``final_accuracy = mean_t correct[L, t]`` (tokens with gold), and
    ``net_flop_savings_first`` / ``net_flop_savings_settled`` (=
    ``oracle_net_flop_savings``) ``= 1 - E[cost(e)] / full`` where an oracle
    pays one head call and the skipped layers' ``state_cost``
    (:meth:`FlopModel.policy_costs` with ``check="none"``); each a ratio of
    document sums with its bootstrap CI.
    """
    num_layers = agree.shape[0]
    saturation = metrics.saturation_layer(agree)
    first_agreement = metrics.first_agreement_layer(agree)
    n_tok, weights = docs.n_tokens, docs.weights
    sat_sum, first_sum = docs.sums(saturation), docs.sums(first_agreement)
    sums = {
        "savings_first": (n_tok * num_layers - first_sum, n_tok * num_layers),
        "savings_settled": (n_tok * num_layers - sat_sum, n_tok * num_layers),
        "mean_saturation_layer": (sat_sum, n_tok),
        "mean_first_agreement_layer": (first_sum, n_tok),
        "final_accuracy": (docs.sums(correct[-1]), docs.n_gold),
    }
    headline = {name: _ratio(*pair, weights) for name, pair in sums.items()}
    sums["oracle_savings"] = sums["savings_settled"]  # the old name of the same number
    headline["oracle_savings"] = headline["savings_settled"]
    headline.update(
        {
            "net_flop_savings_first": _NAN_CI,
            "net_flop_savings_settled": _NAN_CI,
            "oracle_net_flop_savings": _NAN_CI,
        }
    )
    costs = None
    if flops is not None:
        costs = flops.policy_costs("none", state_cost=state_cost)
        full = n_tok * flops.full
        for name, exits in [("first", first_agreement), ("settled", saturation)]:
            sums[f"net_flop_savings_{name}"] = (full - docs.sums(costs[exits]), full)
            headline[f"net_flop_savings_{name}"] = _ratio(
                *sums[f"net_flop_savings_{name}"], weights
            )
        sums["oracle_net_flop_savings"] = sums["net_flop_savings_settled"]
        headline["oracle_net_flop_savings"] = headline["net_flop_savings_settled"]
    return OracleExits(
        saturation=saturation,
        first_agreement=first_agreement,
        saturation_count=np.bincount(saturation, minlength=num_layers + 1),
        first_agreement_count=np.bincount(first_agreement, minlength=num_layers + 1),
        headline=headline,
        costs=costs,
        document_sums=sums,
    )


# ---------------------------------------------------------------- 5. exit policies


@dataclass
class ExitPolicies:
    """Threshold policies of every measure in :data:`metrics.MEASURES` (and
    the old names of :data:`metrics.MEASURE_ALIASES`, as copies).

    ``policies[measure][target]``: the calibration-chosen threshold and its
    held-out savings, consistency (and ``target_met``), accuracy, net FLOP
    savings and the zero-check-cost bound of net FLOP savings, with CIs;
    ``sweeps[measure]``: held-out rates at every threshold; ``auc[measure]``:
    the held-out (with CI) and calibration consistency-savings AUC;
    ``calibration[target][measure]``: the (savings, consistency) reached on
    calibration, which picks the headline measure.
    """

    policies: dict[str, dict[str, Any]]
    sweeps: dict[str, list[dict[str, float]]]
    auc: dict[str, dict[str, Any]]
    calibration: dict[str, dict[str, tuple[float, float]]]
    #: ``[measure][target][policy number] = (numerator, denominator)`` per held-out document
    document_sums: dict[str, dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]] = field(
        default_factory=dict
    )
    #: ``[measure]["savings" | "consistency"] = (numerator [docs, K], denominator [docs])``
    #: per held-out document and sweep threshold: the held-out curve whose area is the AUC
    curve_sums: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    #: ``[target][measure]``: calibration net FLOP savings of the measure's calibrated policy,
    #: NaN when that policy misses the target on calibration (or there is no FLOP model);
    #: picks the measure of ``best_net_flop_savings_at_99``
    calibration_net_flop: dict[str, dict[str, float]] = field(default_factory=dict)


def exit_policies(
    arrays: LensArrays,
    agree: np.ndarray,
    correct: np.ndarray,
    docs: Documents,
    flops: FlopModel | None,
    params: Mapping[str, Any],
) -> ExitPolicies:
    """Sweep, calibrate and evaluate the exit policy of every measure.

    ``agree``/``correct`` hold layers 1..L; ``params`` the config's ``score:``
    section. Exits are allowed at the layers of
    :func:`exitbench.flops.check_schedule` (``check_every``,
    ``min_exit_layer``) and at L. Thresholds are ``params["thresholds"]``
    quantiles of the calibration documents' values (PABEE: p = 1, 2, ... up
    to the number of checks), plus ``+inf``. For each consistency target the
    threshold with the highest calibration savings is chosen
    (:func:`metrics.choose_threshold`) among those whose calibration
    consistency (``calibration: point``) or its one-sided 95% document-bootstrap
    lower bound (``calibration: bound``, :func:`metrics.consistency_lower_bound`)
    reaches the target, and reported on the held-out documents, its CI
    resampling held-out documents at that fixed threshold (conditional on it).
    Net FLOP savings charge each measure's own check (:data:`MEASURE_CHECKS`)
    and the skipped layers' ``state_cost`` (:meth:`FlopModel.policy_costs`).
    """
    num_layers = agree.shape[0]
    first_exit = arrays.top1.shape[0] - num_layers
    targets = _targets(params)
    schedule = check_schedule(num_layers, int(params["check_every"]), int(params["min_exit_layer"]))
    quantities: dict[str, np.ndarray] = {"agree": agree, "correct": correct}
    if flops is not None:
        for check in ("head", "cosine", "none"):
            costs = flops.policy_costs(check, schedule, str(params["state_cost"]))
            quantities[f"cost_{check}"] = costs[1:]
    steps = metrics.sweep_steps(quantities, docs.unit, docs.count)
    calibration_sample = _strided_subset(docs.calibration[docs.unit], 1 << 18, num_layers - 1)
    cos_valid = ~np.isnan(arrays.cos_prev)
    cos_x = np.where(cos_valid, arrays.cos_prev, np.float32(-np.inf))[first_exit:]
    out = ExitPolicies({}, {}, {}, {})
    for name in tqdm(metrics.MEASURES, desc="exit policies", unit="measure", leave=False):
        m = metrics.measure_values(
            name,
            arrays.maxprob[first_exit:],
            arrays.margin[first_exit:],
            arrays.entropy[first_exit:],
            cos_x,
            int(params["patience"]),
            top1=arrays.top1[first_exit:],
            schedule=schedule,
        )
        if name == "pabee":  # patience p = 1 .. (checks - 1): no tau, no quantiles
            patience = np.arange(1, max(int(schedule.sum()), 1), dtype=np.float32)
            thresholds = np.concatenate([patience, np.array([np.inf], np.float32)])
        else:
            thresholds = metrics.sweep_thresholds(
                m[:-1, calibration_sample], int(params["thresholds"])
            )
        sums = metrics.threshold_sweep(m, thresholds, _costs_of(steps, name), docs.unit, docs.count)
        del m
        if flops is not None:
            sums["cost"] = sums.pop(f"cost_{MEASURE_CHECKS[name]}")
            sums["cost_zero_check"] = sums.pop("cost_none")
        calibration = str(params["calibration"])
        _measure_policy(out, name, thresholds, sums, docs, flops, num_layers, targets, calibration)
    for alias, name in metrics.MEASURE_ALIASES.items():  # old names stay readable
        for table in (out.policies, out.sweeps, out.auc, out.document_sums, out.curve_sums):
            table[alias] = table[name]
    return out


def _costs_of(steps: metrics.SweepSteps, name: str) -> metrics.SweepSteps:
    """``steps`` with only the FLOP costs measure ``name`` needs: its own check's
    and the zero-check-cost bound's."""
    keep = {"agree", "correct", f"cost_{MEASURE_CHECKS[name]}", "cost_none"}
    return dataclasses.replace(
        steps,
        first={k: v for k, v in steps.first.items() if k in keep},
        layer_steps={k: v for k, v in steps.layer_steps.items() if k in keep},
        linear={k: v for k, v in steps.linear.items() if k in keep},
    )


def _measure_policy(
    out: ExitPolicies,
    name: str,
    thresholds: np.ndarray,
    sums: Mapping[str, np.ndarray],
    docs: Documents,
    flops: FlopModel | None,
    num_layers: int,
    targets: Sequence[float],
    calibration: str = "bound",
) -> None:
    """Fill ``out`` for measure ``name`` from its sweep ``sums`` (document sums per threshold)."""
    if calibration not in ("point", "bound"):
        raise ScoreError(f"score.calibration must be 'point' or 'bound', got {calibration!r}")
    L = num_layers
    heldout, w_held = docs.heldout, docs.heldout_weights
    n_held, n_gold_held = docs.n_tokens[heldout], docs.n_gold[heldout]
    cal = _rates(sums, docs.calibration, docs.n_tokens, docs.n_gold, L, flops)
    held = _rates(sums, heldout, docs.n_tokens, docs.n_gold, L, flops)
    shown = -thresholds if name == "entropy" else thresholds  # entropy: exit if <= threshold
    out.sweeps[name] = [
        {"threshold": float(shown[k]), **{key: float(v[k]) for key, v in held.items()}}
        for k in range(thresholds.size)
    ]
    # AUC, bootstrapped over held-out documents at the fixed sweep thresholds
    auc_low = auc_high = math.nan
    if w_held.shape[0]:
        with np.errstate(all="ignore"):
            boot_n = (w_held @ n_held)[:, None]
            boot_s = 1 - (w_held @ sums["exit_layer"][heldout]) / (boot_n * L)
            boot_c = (w_held @ sums["agree"][heldout]) / boot_n
        auc_low, auc_high = metrics.percentile_ci(metrics.consistency_savings_auc(boot_s, boot_c))
    out.curve_sums[name] = {
        "savings": ((n_held * L)[:, None] - sums["exit_layer"][heldout], n_held * L),
        "consistency": (sums["agree"][heldout], n_held),
    }
    out.auc[name] = {
        "heldout": _ci(
            metrics.consistency_savings_auc(held["savings"], held["consistency"]),
            auc_low,
            auc_high,
        ),
        "calibration": float(metrics.consistency_savings_auc(cal["savings"], cal["consistency"])),
    }
    out.policies[name] = {}
    cal_mask = docs.calibration
    bound = metrics.consistency_lower_bound(
        sums["agree"][cal_mask],
        docs.n_tokens[cal_mask],
        docs.calibration_weights,
        CALIBRATION_LEVEL,
    )
    for target in targets:
        gate = bound if calibration == "bound" else None
        k = metrics.choose_threshold(cal["savings"], cal["consistency"], target, gate)
        key = _target_key(target)
        out.calibration.setdefault(key, {})[name] = (
            float(cal["savings"][k]),
            float(cal["consistency"][k]),
        )
        met = (cal["consistency"] if gate is None else gate)[k] >= target - 1e-12
        out.calibration_net_flop.setdefault(key, {})[name] = (
            float(cal["net_flop_savings"][k]) if met else math.nan
        )
        col = {q: v[heldout, k] for q, v in sums.items() if q != "tokens"}
        doc_sums = {
            "savings": (n_held * L - col["exit_layer"], n_held * L),
            "consistency": (col["agree"], n_held),
            "accuracy": (col["correct"], n_gold_held),
        }
        out.document_sums.setdefault(name, {})[key] = doc_sums
        consistency = _ratio(col["agree"], n_held, w_held)
        out.policies[name][key] = {
            "threshold": float(shown[k]),
            "calibration": {
                **{q: float(v[k]) for q, v in cal.items()},
                "consistency_lower_bound": float(bound[k]),
            },
            "savings": _ratio(n_held * L - col["exit_layer"], n_held * L, w_held),
            "consistency": consistency,
            "target_met": bool(consistency["estimate"] >= target - 1e-12),
            "accuracy": _ratio(col["correct"], n_gold_held, w_held),
            "net_flop_savings": _NAN_CI,
            "net_flop_savings_zero_check": _NAN_CI,
        }
        if flops is not None:
            full, policy = n_held * flops.full, out.policies[name][key]
            policy["net_flop_savings"] = _ratio(full - col["cost"], full, w_held)
            zero_check = full - col["cost_zero_check"]
            policy["net_flop_savings_zero_check"] = _ratio(zero_check, full, w_held)
            doc_sums["net_flop_savings"] = (full - col["cost"], full)
            doc_sums["net_flop_savings_zero_check"] = (zero_check, full)


# ---------------------------------------------------------------- 6. outputs


def assemble_headline(
    oracle: OracleExits, policies: ExitPolicies, targets: Sequence[float]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The headline numbers and the measure behind each.

    Per target (``savings_at_99``, ``net_flop_savings_at_99``,
    ``zero_check_net_flop_savings_at_99``, ``consistency_at_99``,
    ``target_met_at_99``, ...): the held-out policy of the measure with the
    highest calibration (savings, consistency); ``target_met_at_99`` is
    whether its held-out consistency estimate reaches the target.
    ``best_net_flop_savings_at_99``: the held-out net FLOP savings of the
    measure (``best_measure_net_flop_99``) whose calibrated policy has the
    highest calibration net FLOP savings among those that meet the target on
    calibration (null, and no measure, without a FLOP model); the choice
    never looks at held-out documents.
    ``consistency_savings_auc``: the held-out AUC of the measure
    with the highest calibration AUC. Ties go to the earlier measure of
    :data:`metrics.MEASURES`. Returns ``(headline, best_measure)``.
    """

    def order(name: str) -> int:
        return -metrics.MEASURES.index(name)

    headline: dict[str, Any] = dict(oracle.headline)
    best_measure: dict[str, str] = {}
    for target in targets:
        key, suffix = _target_key(target), _target_suffix(target)
        chosen = policies.calibration[key]
        best = max(metrics.MEASURES, key=lambda n: (*chosen[n], order(n)))
        best_measure[key] = best
        policy = policies.policies[best][key]
        headline[f"savings_at_{suffix}"] = policy["savings"]
        headline[f"net_flop_savings_at_{suffix}"] = policy["net_flop_savings"]
        zero_check = policy.get("net_flop_savings_zero_check", _NAN_CI)
        headline[f"zero_check_net_flop_savings_at_{suffix}"] = zero_check
        headline[f"consistency_at_{suffix}"] = policy.get("consistency", _NAN_CI)
        headline[f"target_met_at_{suffix}"] = policy.get("target_met")
        flop_best = _best_net_flop_measure(policies, key, order)
        headline[f"best_measure_net_flop_{suffix}"] = flop_best
        headline[f"best_net_flop_savings_at_{suffix}"] = (
            _NAN_CI
            if flop_best is None
            else policies.policies[flop_best][key].get("net_flop_savings", _NAN_CI)
        )
    best_auc = max(metrics.MEASURES, key=lambda n: (policies.auc[n]["calibration"], order(n)))
    best_measure["auc"] = best_auc
    headline["consistency_savings_auc"] = policies.auc[best_auc]["heldout"]
    return headline, best_measure


def _best_net_flop_measure(policies: ExitPolicies, key: str, order: Any) -> str | None:
    """The measure with the highest calibration net FLOP savings at target ``key`` among
    those whose calibrated policy meets it on calibration (ties: the earlier of
    :data:`metrics.MEASURES`); None when no measure has a number (no FLOP model)."""
    values = policies.calibration_net_flop.get(key, {})
    known = [n for n in metrics.MEASURES if math.isfinite(values.get(n, math.nan))]
    return max(known, key=lambda n: (values[n], order(n))) if known else None


#: Headline name (per target suffix) <- the policy number of the headline measure behind it.
_POLICY_HEADLINE = {
    "savings_at_{}": "savings",
    "consistency_at_{}": "consistency",
    "net_flop_savings_at_{}": "net_flop_savings",
    "zero_check_net_flop_savings_at_{}": "net_flop_savings_zero_check",
}


def document_sums(
    docs: Documents,
    oracle: OracleExits,
    policies: ExitPolicies,
    best_measure: Mapping[str, str],
    targets: Sequence[float],
    net_flop_measure: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """Per-document numerator and denominator of every headline ratio (the JSON's
    ``document_sums``), so that the aggregate stage can bootstrap a difference of two
    models over the same documents (a paired document bootstrap).

    ``documents``: every document id in order; ``heldout``: whether each is held out;
    ``metrics[name]``: ``split`` (``all`` or ``heldout``: which documents the arrays
    cover, in ``documents`` order) and ``numerator``/``denominator`` with
    ``headline[name] = sum(numerator) / sum(denominator)``. Policy numbers are those of
    the headline measure at its calibration-chosen threshold;
    ``best_net_flop_savings_at_99`` those of ``best_measure_net_flop_99``
    (``net_flop_measure["0.99"]``).

    ``curves["consistency_savings_auc"]`` (the AUC is no ratio of sums): the held-out
    documents' sums of the headline AUC measure's sweep (integer counts), per document d
    and threshold k,
    ``savings_numerator[d][k] = n_d L - sum e_k`` over ``savings_denominator[d] = n_d L``
    and ``consistency_numerator[d][k] = sum 1[yhat_{e_k} = yhat]`` over
    ``consistency_denominator[d] = n_d``: summed over any multiset of documents they give
    that resample's curve ``(S_k, C_k)``, and :func:`metrics.consistency_savings_auc` of
    the curve over all held-out documents is ``headline["consistency_savings_auc"]``.
    """
    out: dict[str, Any] = {}
    for name, (num, den) in oracle.document_sums.items():
        out[name] = {"split": "all", "numerator": num, "denominator": den}
    for target in targets:
        key, suffix = _target_key(target), _target_suffix(target)
        chosen = policies.document_sums.get(best_measure.get(key), {}).get(key, {})
        for pattern, number in _POLICY_HEADLINE.items():
            if number in chosen:
                num, den = chosen[number]
                out[pattern.format(suffix)] = {
                    "split": "heldout",
                    "numerator": num,
                    "denominator": den,
                }
        flop_measure = (net_flop_measure or {}).get(key)
        flop_sums = policies.document_sums.get(flop_measure, {}).get(key, {})
        if "net_flop_savings" in flop_sums:
            num, den = flop_sums["net_flop_savings"]
            out[f"best_net_flop_savings_at_{suffix}"] = {
                "split": "heldout",
                "numerator": num,
                "denominator": den,
            }
    return {
        "documents": list(docs.ids),
        "heldout": [bool(h) for h in docs.heldout],
        "metrics": {
            name: {
                "split": entry["split"],
                "numerator": np.asarray(entry["numerator"], np.float64).tolist(),
                "denominator": np.broadcast_to(
                    np.asarray(entry["denominator"], np.float64), np.shape(entry["numerator"])
                ).tolist(),
            }
            for name, entry in sorted(out.items())
        },
        "curves": _curve_sums(policies, best_measure),
    }


def _curve_sums(policies: ExitPolicies, best_measure: Mapping[str, str]) -> dict[str, Any]:
    """``document_sums["curves"]``: the AUC measure's held-out sweep sums per document."""
    curve = policies.curve_sums.get(best_measure.get("auc", ""))
    if curve is None:
        return {}
    (s_num, s_den), (c_num, c_den) = curve["savings"], curve["consistency"]

    def counts(values: np.ndarray) -> list:
        """Token and layer counts, exact in float64, written as integers (compact)."""
        return np.rint(np.asarray(values, np.float64)).astype(np.int64).tolist()

    return {
        "consistency_savings_auc": {
            "split": "heldout",
            "measure": best_measure["auc"],
            "savings_numerator": counts(s_num),
            "savings_denominator": counts(s_den),
            "consistency_numerator": counts(c_num),
            "consistency_denominator": counts(c_den),
        }
    }


def scores_table(
    arrays: LensArrays,
    curves: Mapping[str, np.ndarray],
    oracle: OracleExits,
    model: str,
    workload: str,
    lens: str = "logit",
) -> pa.Table:
    """The ``scores`` table: one row per lens layer (exit counts are 0 at layer 0);
    ``lens`` (logit | tuned) fills its ``lens`` column."""
    layers = np.asarray(arrays.layers)
    L = int(layers[-1])
    first_exit = layers.size - L
    n_layers = layers.size
    counts = {
        "saturation_count": oracle.saturation_count,
        "first_agreement_count": oracle.first_agreement_count,
    }
    return pa.table(
        {
            "model": pa.array([model] * n_layers, pa.string()),
            "workload": pa.array([workload] * n_layers, pa.string()),
            "layer": pa.array(layers, pa.int16()),
            "layer_fraction": pa.array(layers / L, pa.float64()),
            "n_tokens": pa.array(np.full(n_layers, arrays.n_tokens), pa.int64()),
            "n_gold_tokens": pa.array(np.full(n_layers, _n_gold(arrays)), pa.int64()),
            **{
                name: pa.array(values, pa.float64(), from_pandas=True)
                for name, values in curves.items()
            },
            **{
                name: pa.array(np.concatenate([np.zeros(first_exit, np.int64), hist[1:]]))
                for name, hist in counts.items()
            },
            "lens": pa.array([lens] * n_layers, pa.string()),
        }
    )


def _requested_windows(params: Mapping[str, Any]) -> int | None:
    """``tokenize.max_sequences`` when the caller passed it in ``params``."""
    value = params.get("max_sequences")
    return None if value is None else int(value)


def _n_gold(arrays: LensArrays) -> int:
    return int((np.asarray(arrays.gold) >= 0).sum())


def summary_dict(
    arrays: LensArrays,
    docs: Documents,
    oracle: OracleExits,
    policies: ExitPolicies,
    flops: FlopModel | None,
    params: Mapping[str, Any],
    seed: int,
    model: str,
    workload: str,
    n_windows: int | None = None,
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """The headline JSON's content (JSON-ready, ``provenance`` left empty).

    ``n_windows`` is the tokens table's window count, ``params["max_sequences"]``
    (optional) the number requested; ``warnings`` come from :func:`study_warnings`.
    """
    L = int(arrays.layers[-1])
    targets = _targets(params)
    headline, best_measure = assemble_headline(oracle, policies, targets)
    summary = {
        "model": model,
        "workload": workload,
        "num_layers": L,
        "layers": np.asarray(arrays.layers).tolist(),
        "n_tokens": arrays.n_tokens,
        "n_gold_tokens": _n_gold(arrays),
        "n_documents": docs.count,
        "n_calibration_documents": int(docs.calibration.sum()),
        "n_heldout_documents": int(docs.heldout.sum()),
        "n_windows": None if n_windows is None else int(n_windows),
        "n_windows_requested": _requested_windows(params),
        "few_documents": few_documents(docs),
        "warnings": list(warnings),
        "headline": headline,
        "best_measure": best_measure,
        "policies": policies.policies,
        "auc": policies.auc,
        "sweeps": policies.sweeps,
        "measures": {name: MEASURE_RULES[name] for name in MEASURE_RULES},
        "distributions": {
            "layers": list(range(1, L + 1)),
            "saturation_count": oracle.saturation_count[1:].tolist(),
            "first_agreement_count": oracle.first_agreement_count[1:].tolist(),
        },
        "flops": None if flops is None else flops.to_dict(),
        "document_sums": document_sums(
            docs,
            oracle,
            policies,
            best_measure,
            targets,
            {
                _target_key(t): headline[f"best_measure_net_flop_{_target_suffix(t)}"]
                for t in targets
            },
        ),
        "params": {
            "bootstrap": int(params["bootstrap"]),
            "calibration_fraction": float(params["calibration_fraction"]),
            "consistency_targets": [float(t) for t in targets],
            "thresholds": int(params["thresholds"]),
            "patience": int(params["patience"]),
            "check_every": int(params["check_every"]),
            "min_exit_layer": int(params["min_exit_layer"]),
            "state_cost": str(params["state_cost"]),
            "calibration": str(params["calibration"]),
            "seed": int(seed),
            "seq_len": None if params.get("seq_len") is None else int(params["seq_len"]),
        },
        "provenance": {},
    }
    return clean_json(summary, 10)


def score_arrays(
    arrays: LensArrays,
    num_layers: int,
    flops: FlopModel | None,
    params: Mapping[str, Any],
    seed: int,
    model: str = "",
    workload: str = "",
    n_windows: int | None = None,
    lens: str = "logit",
) -> tuple[pa.Table, dict[str, Any]]:
    """Per-layer curves (schema ``scores``, its ``lens`` column ``lens``) and the headline
    summary dict.

    ``params`` is the validated config's ``score:`` section (plus optional
    ``seq_len`` and ``max_sequences`` from ``tokenize:``); ``n_windows`` the
    tokens table's window count. Each of :func:`study_warnings` is logged once
    and written to the summary's ``warnings``. The steps, in order: :func:`document_split`,
    :func:`agreement_masks`, :func:`layer_curves`, :func:`oracle_exits`,
    :func:`exit_policies`, then :func:`scores_table` and :func:`summary_dict`
    (with :func:`assemble_headline`). In short, over tokens t and documents d
    (the bootstrap unit): per-layer agreement / accuracy / confidence means
    with 95% CIs; ``savings_first = 1 - E[e_first] / L`` and
    ``savings_settled = oracle_savings = 1 - E[e_sat] / L``; threshold policies
    chosen on calibration documents and reported on held-out ones; net FLOP
    savings ``1 - E[cost(e)] / full``.

    The summary is JSON-ready (floats to 10 significant digits, NaN and inf
    as None; :func:`write_scores` checks it against the JSON schema); its
    ``provenance`` is left empty for the caller.
    """
    _targets(params)  # fail on incomplete params before any work
    L = int(num_layers)
    layers = np.asarray(arrays.layers)
    first_exit = int(np.searchsorted(layers, 1))
    if layers[first_exit:].tolist() != list(range(1, L + 1)):
        raise ScoreError(f"lens layers {layers.tolist()} do not cover 1..{L} exactly")
    if flops is not None and flops.num_layers != L:
        raise ScoreError(f"FLOP model has {flops.num_layers} layers, the lens {L}")
    docs = document_split(
        arrays, params["calibration_fraction"], params["bootstrap"], seed, model, workload
    )
    agree, correct = agreement_masks(arrays)
    curves = layer_curves(arrays, docs, agree, correct)
    agree, correct = agree[first_exit:], correct[first_exit:]  # exits: layers 1..L only
    oracle = oracle_exits(agree, correct, docs, flops, str(params["state_cost"]))
    policies = exit_policies(arrays, agree, correct, docs, flops, params)
    table = scores_table(arrays, curves, oracle, model, workload, lens)
    warnings = study_warnings(docs, n_windows, _requested_windows(params))
    for warning in warnings:
        log.warning("%s / %s: %s", model, workload, warning)
    summary = summary_dict(
        arrays, docs, oracle, policies, flops, params, seed, model, workload, n_windows, warnings
    )
    return table, summary


def _strided_subset(mask: np.ndarray, max_count: int, n_rows: int) -> np.ndarray:
    """Indices of ``mask``'s True entries, thinned by a stride so that
    ``n_rows`` rows of them hold at most about ``max_count`` values."""
    index = np.flatnonzero(mask)
    stride = max(1, -(-index.size * max(n_rows, 1) // max_count))
    return index[::stride]


def _rates(
    sums: Mapping[str, np.ndarray],
    mask: np.ndarray,
    n_tok: np.ndarray,
    n_gold: np.ndarray,
    num_layers: int,
    flops: FlopModel | None,
) -> dict[str, np.ndarray]:
    """Savings, consistency, accuracy (and net FLOP savings) of a sweep over the
    documents in ``mask``: ``S = 1 - sum e / (n L)``, ``C = sum 1[yhat_e = yhat] / n``,
    ``A = sum 1[yhat_e = gold] / n_gold``, ``N = 1 - sum cost(e) / (n full)`` with the
    measure's own check cost, and N with zero check cost (``net_flop_savings_zero_check``)."""
    n = n_tok[mask].sum()
    with np.errstate(all="ignore"):
        out = {
            "savings": 1 - sums["exit_layer"][mask].sum(0) / (n * num_layers),
            "consistency": sums["agree"][mask].sum(0) / n,
            "accuracy": sums["correct"][mask].sum(0) / n_gold[mask].sum(),
        }
        for column, cost in [
            ("net_flop_savings", "cost"),
            ("net_flop_savings_zero_check", "cost_zero_check"),
        ]:
            out[column] = (
                1 - sums[cost][mask].sum(0) / (n * flops.full)
                if flops is not None
                else np.full(out["savings"].shape, np.nan)
            )
    return out


def score_lens(
    lens_paths: Sequence[str | Path],
    tokens_path: str | Path,
    model_info: Mapping[str, Any],
    params: Mapping[str, Any],
    seed: int,
    workload: str | None = None,
    translators: str | Path | None = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """Score one (model, workload): returns the ``scores`` table and the summary.

    Under the tuned lens (``params["lens"] == "tuned"``) ``translators`` is the model's
    translators folder: the summary's ``translators_in_sample`` and a warning say whether
    they trained on this workload's documents (:func:`translators_in_sample`).

    ``model_info`` is ``results/models/{model}.json`` (name, num_layers,
    layer_numbers, config); ``params`` the validated config's ``score:`` section
    (:func:`exitbench.config.section_defaults` gives the defaults) plus an
    optional ``seq_len`` (``tokenize.seq_len``, for attention FLOPs; default:
    the longest window) and ``max_sequences`` (``tokenize.max_sequences``: the
    windows requested, compared with those the tokens table has); ``workload``
    defaults to the tokens file's stem.
    """
    tokens_path = Path(tokens_path)
    num_layers = int(model_info["num_layers"])
    arrays = load_lens(lens_paths, tokens_path, num_layers, model_info.get("layer_numbers"))
    params = dict(params)
    lens = str(params.pop("lens", "logit"))  # logit | tuned: which lens's shards these are
    lengths = read_table(tokens_path, "tokens", columns=["n_tokens"]).column("n_tokens")
    if params.get("seq_len") is None:
        params["seq_len"] = int(pc.max(lengths).as_py())
    flops = None
    config = model_info.get("config")
    try:
        if not isinstance(config, Mapping):
            raise FlopModelError("the model description has no `config` dict")
        flops = flop_model(config, int(params["seq_len"]))
        if lens == "tuned":  # each head check first applies the translator: 2 d^2
            flops = dataclasses.replace(flops, translator=tuned_lens_flops(config))
        if flops.num_layers != num_layers:
            raise FlopModelError(
                f"config gives {flops.num_layers} layers, the model description {num_layers}"
            )
    except (FlopModelError, TypeError, ValueError, KeyError) as err:  # odd configs: still score
        name = model_info.get("name")
        log.warning("no FLOP model for %s (%s): net FLOP savings are null", name, err)
        flops = None
    table, summary = score_arrays(
        arrays,
        num_layers,
        flops,
        params,
        seed,
        model=str(model_info.get("name", "")),
        workload=workload if workload is not None else tokens_path.stem,
        n_windows=len(lengths),
        lens=lens,
    )
    summary["lens"] = lens
    if lens == "tuned":
        in_sample, warning = translators_in_sample(
            translators, summary["workload"], summary["n_documents"]
        )
        summary["translators_in_sample"] = in_sample
        if warning:
            log.warning("%s / %s: %s", summary["model"], summary["workload"], warning)
            summary["warnings"] = [*summary["warnings"], warning]
    return table, summary


def translators_in_sample(
    folder: str | Path | None, workload: str, n_documents: int
) -> tuple[bool | None, str | None]:
    """Whether the tuned lens's translators trained on documents of ``workload``, and the
    score JSON's warning about it (None when there is nothing to say).

    ``folder`` is ``results/translators/{model}``; its ``training_source.json`` (written
    by :func:`exitbench.translators.build_translators`) names what they trained on: a hub
    model trains on the calibration documents of each listed workload (score's own split,
    so only where the workload has two or more documents), a zoo model on the zoo's training
    split (False), a published ``tuned_lens`` folder on data we cannot see (None).
    """
    path = None if folder is None else Path(folder) / TRANSLATORS_SOURCE_FILE
    try:
        source = json.loads(path.read_text()) if path is not None else None
    except (OSError, json.JSONDecodeError):
        source = None
    if not isinstance(source, Mapping):
        return None, (
            "the translators' training documents are unknown (no readable "
            f"{TRANSLATORS_SOURCE_FILE} in the translators folder): the tuned lens's per-layer "
            "curves and oracles may include them"
        )
    if "published" in source:
        return None, (
            f"the tuned lens is a published one ({source['published']}) whose training "
            "documents are unknown: its per-layer curves and oracles may include them"
        )
    if workload in (source.get("workloads") or ()) and n_documents >= 2:
        return True, (
            f"the translators trained on the calibration documents of workload {workload!r}: "
            "the tuned lens's per-layer curves and oracles (savings_first, savings_settled) "
            "use all documents, so they are partly in-sample; its policies at the consistency "
            "targets are held-out only (README, Tuned lens)"
        )
    return False, None


# ---------------------------------------------------------------- writing


@cache
def _headline_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(HEADLINE_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate_headline(summary: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready copy of ``summary`` (floats to 10 significant digits, NaN to
    null), checked against ``score_headline.schema.json``."""
    clean = clean_json(dict(summary), 10)
    errors = sorted(_headline_validator().iter_errors(clean), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(x) for x in first.path) or "(root)"
        raise ScoreError(
            f"score summary does not match {HEADLINE_SCHEMA.name} at {where}: {first.message}"
        )
    return clean


def write_scores(
    table: pa.Table,
    summary: Mapping[str, Any],
    parquet_path: str | Path,
    json_path: str | Path,
    provenance: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write the curves (schema ``scores``) and the headline JSON (validated,
    sorted keys, rounded floats: byte-identical across reruns). ``provenance``
    is merged into the summary's ``provenance`` key."""
    summary = dict(summary)
    summary["provenance"] = {**summary.get("provenance", {}), **dict(provenance or {})}
    clean = validate_headline(summary)
    parquet = write_table(table, parquet_path, "scores")
    return parquet, write_json(clean, json_path)


def score_files(
    lens_paths: Sequence[str | Path],
    tokens_path: str | Path,
    model_info_path: str | Path,
    parquet_path: str | Path,
    json_path: str | Path,
    params: Mapping[str, Any],
    seed: int,
    provenance: Mapping[str, Any] | None = None,
    workload: str | None = None,
    translators: str | Path | None = None,
) -> dict[str, Any]:
    """File-to-file entry point for the score rule; returns the summary."""
    model_info = json.loads(Path(model_info_path).read_text())
    table, summary = score_lens(
        lens_paths, tokens_path, model_info, params, seed, workload, translators
    )
    write_scores(table, summary, parquet_path, json_path, provenance)
    log.info(
        "%s / %s: S_first %.3f, S_settled %.3f, savings@99 %.3f, @95 %.3f over %d tokens, "
        "%d documents",
        summary["model"],
        summary["workload"],
        summary["headline"]["savings_first"]["estimate"],
        summary["headline"]["savings_settled"]["estimate"],
        summary["headline"]["savings_at_99"]["estimate"],
        summary["headline"]["savings_at_95"]["estimate"],
        summary["n_tokens"],
        summary["n_documents"],
    )
    return summary
