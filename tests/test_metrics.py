"""Known answers for the early-exit metrics on hand-built arrays (layer-major [L, n])."""

from __future__ import annotations

import numpy as np
import pytest

from exitbench import metrics


def agree_rows(*tokens: str) -> np.ndarray:
    """Per-token strings of '1'/'0' over layers 1..L -> [L, n] booleans."""
    return np.array([[c == "1" for c in t] for t in tokens]).T


def test_saturation_and_first_agreement_known_answers():
    agree = agree_rows(
        "00111",  # agrees from layer 3 on
        "01011",  # agrees at 2, disagrees at 3, agrees from 4 on
        "11111",  # always
        "00001",  # only the final layer
        "10001",  # early lucky agreement
    )
    np.testing.assert_array_equal(metrics.saturation_layer(agree), [3, 4, 1, 5, 5])
    np.testing.assert_array_equal(metrics.first_agreement_layer(agree), [3, 2, 1, 5, 1])


def test_exit_layer_and_patience():
    maxprob = np.array([[0.2, 0.9], [0.95, 0.1], [0.96, 0.97], [0.5, 0.99]], dtype=np.float32)
    np.testing.assert_array_equal(metrics.exit_layer(maxprob, 0.9), [2, 1])
    np.testing.assert_array_equal(metrics.exit_layer(maxprob, 0.999), [4, 4])  # never: L
    patience = metrics.patience_measure(maxprob, 2)
    assert np.isneginf(patience[0]).all()
    np.testing.assert_allclose(patience[1:], [[0.2, 0.1], [0.95, 0.1], [0.5, 0.97]])
    # two consecutive layers >= 0.9: token 0 at layers 2-3, token 1 at layers 3-4
    np.testing.assert_array_equal(metrics.exit_layer(patience, 0.9), [3, 4])


def test_threshold_sweep_two_tokens_hand_computed():
    # L = 4. Token A: confident from layer 2, agrees from layer 2.
    #        Token B: confident at layer 1 already (wrongly), agrees only at layer 4.
    maxprob = np.array([[0.3, 0.8], [0.9, 0.6], [0.95, 0.7], [0.99, 0.99]], dtype=np.float32)
    agree = agree_rows("0111", "0001")
    correct = agree_rows("0111", "0000")
    thresholds = np.array([0.5, 0.85, 0.92, np.inf], dtype=np.float32)
    sums = metrics.threshold_sweep(
        maxprob, thresholds, {"agree": agree, "correct": correct}, np.array([0, 0]), 1
    )
    # tau=0.5: A exits at 2 (agrees), B at 1 (disagrees) -> S = 1 - 3/8, C = 1/2
    # tau=0.85: A at 2, B at 4 -> S = 1 - 6/8, C = 1
    # tau=0.92: A at 3, B at 4 -> S = 1 - 7/8, C = 1
    # tau=inf: both at 4 -> S = 0, C = 1
    np.testing.assert_array_equal(sums["exit_layer"][0], [3, 6, 7, 8])
    np.testing.assert_array_equal(sums["agree"][0], [1, 2, 2, 2])
    np.testing.assert_array_equal(sums["correct"][0], [1, 1, 1, 1])
    savings = 1 - sums["exit_layer"][0] / (2 * 4)
    np.testing.assert_allclose(savings, [5 / 8, 2 / 8, 1 / 8, 0])
    consistency = sums["agree"][0] / 2
    k = metrics.choose_threshold(savings, consistency, 0.99)
    assert thresholds[k] == pytest.approx(0.85)
    assert metrics.choose_threshold(savings, consistency, 0.5) == 0


def test_threshold_sweep_matches_brute_force():
    rng = np.random.default_rng(3)
    n_layers, n = 7, 500
    measure = rng.random((n_layers, n)).astype(np.float32)
    measure[rng.random(measure.shape) < 0.05] = np.nan  # NaN never exits
    agree = rng.random((n_layers, n)) < 0.6
    agree[-1] = True
    cost = np.cumsum(rng.random(n_layers + 1))  # per-layer constants (index = exit layer)
    unit = np.sort(rng.integers(0, 9, n))
    thresholds = metrics.sweep_thresholds(measure[:-1], 21)
    sums = metrics.threshold_sweep(measure, thresholds, {"agree": agree, "cost": cost[1:]}, unit, 9)
    for k, tau in enumerate(thresholds):
        exit_at = metrics.exit_layer(measure, tau)
        for u in range(9):
            mine = unit == u
            assert sums["exit_layer"][u, k] == exit_at[mine].sum()
            assert sums["agree"][u, k] == agree[exit_at[mine] - 1, np.flatnonzero(mine)].sum()
            assert sums["cost"][u, k] == pytest.approx(cost[exit_at[mine]].sum())
    # the fallback path (too many bins for the packed categories) gives the same sums
    steps = metrics.sweep_steps({"agree": agree, "cost": cost[1:]}, unit, 9)
    fallback = metrics.threshold_sweep(measure, thresholds, steps, unit, 9, max_bins=1)
    for name in ("exit_layer", "agree", "cost"):
        np.testing.assert_allclose(fallback[name], sums[name])
    # identical layers: the cost is linear in the exit layer (no bincount needed)
    uniform = 5.0 + 3.0 * np.arange(n_layers)
    linear = metrics.threshold_sweep(measure, thresholds, {"cost": uniform}, unit, 9)
    assert "cost" in metrics.sweep_steps({"cost": uniform}, unit, 9).linear
    for k, tau in enumerate(thresholds):
        exit_at = metrics.exit_layer(measure, tau)
        expected = np.bincount(unit, weights=uniform[exit_at - 1], minlength=9)
        np.testing.assert_allclose(linear["cost"][:, k], expected)


@pytest.mark.parametrize(
    "kind",
    ["beta", "negative", "spikes", "zeros", "discrete", "cauchy", "crowded", "few_crowded"],
)
def test_threshold_rank_equals_searchsorted(kind):
    """Values in a bucket with a threshold inside are compared in place when they are few
    (beta, few_crowded) and everywhere when they are many (discrete, crowded); crowded
    buckets (several thresholds) take a binary search either way."""
    rng = np.random.default_rng(7)
    v = rng.beta(5, 1, (4, 40_000)).astype(np.float32)  # >= 2**16 values: lookup path
    extra: list[float] = []
    if kind == "negative":
        v = -3 * v
    elif kind == "spikes":
        v[rng.random(v.shape) < 0.3] = 1.0
        v[rng.random(v.shape) < 0.1] = -np.inf
        v[rng.random(v.shape) < 0.05] = np.inf
    elif kind == "zeros":
        v = rng.normal(0, 1e-3, v.shape).astype(np.float32)
        v[:, ::3] = -0.0
        v[:, 1::5] = 0.0
        extra = [0.0]
    elif kind == "discrete":
        v = np.round(v * 20) / 20
    elif kind == "cauchy":
        v = rng.standard_cauchy(v.shape).astype(np.float32)
    elif kind == "crowded":  # several thresholds inside one lookup bucket
        v = (0.99 - rng.integers(0, 5, v.shape) * 1e-7).astype(np.float32)
        extra = [0.98999995, 0.9899999]
    elif kind == "few_crowded":  # 1% of the values in crowded buckets: the sparse path
        crowded = rng.random(v.shape) < 0.01
        v[crowded] = (0.99 - rng.integers(0, 5, crowded.sum()) * 1e-7).astype(np.float32)
        extra = [0.98999995, 0.9899999]
    thresholds = metrics.sweep_thresholds(v, 101)
    thresholds = np.unique(np.concatenate([thresholds, np.float32(extra)]))
    expected = np.searchsorted(thresholds, v, side="right")
    np.testing.assert_array_equal(metrics.threshold_rank(thresholds, v), expected)


def test_sweep_thresholds_are_sorted_quantiles_with_infinity():
    values = np.arange(1000, dtype=np.float32)
    thresholds = metrics.sweep_thresholds(values, 11)
    # inverted CDF: the smallest value with F(x) >= k/10, i.e. values 0, 99, 199, ..., 999
    np.testing.assert_array_equal(thresholds[:-1], [0] + [100 * k - 1 for k in range(1, 11)])
    assert np.isposinf(thresholds[-1])
    assert np.all(np.diff(thresholds) > 0)
    assert metrics.sweep_thresholds(np.full(5, -np.inf, np.float32), 11).tolist() == [np.inf]


def test_consistency_savings_auc_hand_example():
    # points (S, C): (0.5, 0.5), (0.25, 1.0), (0, 1); monotone envelope: C=1 up to 0.25, then 0.5
    auc = metrics.consistency_savings_auc(np.array([0.5, 0.25, 0.0]), np.array([0.5, 1.0, 1.0]))
    assert auc == pytest.approx(0.25 * 1.0 + 0.25 * (1.0 + 0.5) / 2)
    # a dominated point does not lower the curve
    auc2 = metrics.consistency_savings_auc(
        np.array([0.5, 0.25, 0.2, 0.0]), np.array([0.5, 1.0, 0.1, 1.0])
    )
    assert auc2 == pytest.approx(auc)
    # batched over resamples
    batch = metrics.consistency_savings_auc(
        np.array([[0.5, 0.25, 0.0]] * 3), np.array([[0.5, 1.0, 1.0]] * 3)
    )
    np.testing.assert_allclose(batch, [auc] * 3)


def test_bootstrap_ci_constant_data_has_zero_width():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 50, 40).astype(np.float64)
    weights = metrics.bootstrap_weights(40, 500, rng)
    for value in (0.3, 1 / 3, 0.7):
        estimate, low, high = metrics.bootstrap_ratio(value * tokens, tokens, weights)
        assert low == high == pytest.approx(value)
        assert estimate == pytest.approx(value)


def test_bootstrap_weights_and_ci_behave():
    rng = np.random.default_rng(1)
    weights = metrics.bootstrap_weights(30, 200, rng)
    assert weights.shape == (200, 30)
    np.testing.assert_array_equal(weights.sum(axis=1), 30)
    again = metrics.bootstrap_weights(30, 200, np.random.default_rng(1))
    np.testing.assert_array_equal(weights, again)
    num = rng.random(30) * 10
    den = np.full(30, 10.0)
    estimate, low, high = metrics.bootstrap_ratio(num, den, weights)
    assert low < estimate < high
    # per-layer shapes and no resamples
    est2, low2, high2 = metrics.bootstrap_ratio(np.ones((30, 4)), den, np.zeros((0, 30)))
    np.testing.assert_allclose(est2, 0.1)
    assert np.isnan(low2).all() and np.isnan(high2).all()


def test_split_documents_is_deterministic_and_nonempty():
    docs = [f"doc{i}" for i in range(101)]
    mask = metrics.split_documents(docs, 0.5, seed=0)
    assert mask.sum() == 50  # round(50.5) with banker's rounding
    np.testing.assert_array_equal(mask, metrics.split_documents(docs, 0.5, seed=0))
    reordered = metrics.split_documents(docs[::-1], 0.5, seed=0)[::-1]
    np.testing.assert_array_equal(mask, reordered)
    assert not np.array_equal(mask, metrics.split_documents(docs, 0.5, seed=1))
    assert metrics.split_documents(["a", "b"], 0.01, seed=0).sum() == 1
    assert metrics.split_documents(["a", "b"], 0.99, seed=0).sum() == 1
    with pytest.raises(ValueError, match="calibration_fraction"):
        metrics.split_documents(docs, 1.5, seed=0)


def test_measure_values_directions():
    ones = np.ones((3, 2), dtype=np.float32)
    entropy = np.array([[2.0, 1.0], [0.5, 0.1], [0.0, 0.0]], dtype=np.float32)
    m = metrics.measure_values("entropy", ones, ones, entropy, ones, 2)
    np.testing.assert_array_equal(metrics.exit_layer(m, -0.5), [2, 2])  # entropy <= 0.5
    with pytest.raises(ValueError, match="unknown measure"):
        metrics.measure_values("bogus", ones, ones, ones, ones, 2)


def test_two_oracles_issue_example():
    """Agreement rows [1,1], [0,1], [1,1], [1,1] over layers 1..4 (layer x token):
    token 0 agrees at 1, not at 2, from 3 on (e_first 1, e_sat 3); token 1 always (1, 1).
    S_settled = 1 - (3 + 1) / 2 / 4 = 0.50; S_first = 1 - (1 + 1) / 2 / 4 = 0.75."""
    agree = np.array([[1, 1], [0, 1], [1, 1], [1, 1]], dtype=bool)
    e_sat, e_first = metrics.saturation_layer(agree), metrics.first_agreement_layer(agree)
    assert e_sat.tolist() == [3, 1] and e_first.tolist() == [1, 1]
    assert 1 - e_sat.mean() / 4 == 0.50 and 1 - e_first.mean() / 4 == 0.75
    # exiting where the lens first agrees is consistent on every token
    assert agree[e_first - 1, [0, 1]].all()


def test_pabee_counter_and_rule_hand_computed():
    # top-1 over layers 1..5 for three tokens (columns)
    top1 = np.array([[4, 1, 2], [4, 2, 2], [4, 2, 3], [5, 2, 3], [5, 2, 3]])
    counter = metrics.pabee_measure(top1)
    # token 0: 4 4 4 5 5 -> 0 1 2 0 1; token 1: 1 2 2 2 2 -> 0 0 1 2 3; token 2: 0 1 0 1 2
    assert counter.T.tolist() == [[0, 1, 2, 0, 1], [0, 0, 1, 2, 3], [0, 1, 0, 1, 2]]
    ones = np.ones(top1.shape, np.float32)
    m = metrics.measure_values("pabee", ones, ones, ones, ones, 2, top1=top1)
    # p = 1: first repeat; p = 2: the top-1 unchanged for two checks after it appeared
    assert metrics.exit_layer(m, 1).tolist() == [2, 3, 2]
    assert metrics.exit_layer(m, 2).tolist() == [3, 4, 5]
    with pytest.raises(ValueError, match="needs the top-1"):
        metrics.measure_values("pabee", ones, ones, ones, ones, 2)


def test_schedule_keeps_exits_and_patience_to_checked_layers():
    # L = 5; checks at layers 2 and 4 (min_exit_layer 2, check_every 2)
    schedule = np.array([False, True, False, True, False])
    maxprob = np.array([[0.9], [0.5], [0.95], [0.97], [0.1]], dtype=np.float32)
    m = metrics.measure_values("maxprob", maxprob, maxprob, maxprob, maxprob, 2, schedule=schedule)
    assert np.isneginf(m[[0, 2, 4], 0]).all() and m[[1, 3], 0].tolist() == pytest.approx(
        [0.5, 0.97]
    )
    assert metrics.exit_layer(m, 0.9).tolist() == [4]  # layer 1 and 3 are confident, not checked
    # patience over checks: checks see 0.5, 0.97 -> min over two checks only at layer 4
    p = metrics.measure_values("patience", maxprob, maxprob, maxprob, maxprob, 2, schedule=schedule)
    assert np.isneginf(p[1, 0]) and p[3, 0] == pytest.approx(0.5)
    top1 = np.array([[7], [7], [3], [7], [7]])
    pabee = metrics.measure_values("pabee", maxprob, maxprob, maxprob, maxprob, 2, top1, schedule)
    assert pabee[1, 0] == 0 and pabee[3, 0] == 1  # checks at 2 and 4 both see 7


def test_consistency_lower_bound_and_bound_calibration():
    # three calibration documents of 10 tokens; agreement counts at two thresholds
    agree = np.array([[10, 9], [10, 10], [10, 8]], dtype=np.float64)
    n = np.array([10.0, 10.0, 10.0])
    # every resample with the same document thrice: the bounds are the worst documents
    weights = np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3], [1, 1, 1]] * 5, dtype=np.float64)
    bound = metrics.consistency_lower_bound(agree, n, weights, level=0.95)
    # 5th percentile of {1, 1, 1, 1 x5}, {0.9, 1, 0.8, 0.9 x5} (linear interpolation)
    assert bound[0] == 1.0
    assert bound[1] == pytest.approx(np.percentile([0.9, 1.0, 0.8, 0.9] * 5, 5))
    assert bound[1] < 0.9  # the point estimate 27/30 = 0.9
    no_resamples = metrics.consistency_lower_bound(agree, n, np.zeros((0, 3)))
    assert no_resamples.tolist() == pytest.approx([1.0, 0.9])
    savings, consistency = np.array([0.1, 0.5, 0.0]), np.array([1.0, 0.9, 1.0])
    assert metrics.choose_threshold(savings, consistency, 0.9) == 1  # point: on the boundary
    lower = np.array([1.0, 0.85, 1.0])
    assert metrics.choose_threshold(savings, consistency, 0.9, lower) == 0  # bound: safer


def test_percentile_ci_without_nan_equals_nanpercentile():
    """The vectorised path (no NaN) gives nanpercentile's numbers bit for bit; NaN columns
    still take nanpercentile (all-NaN -> NaN)."""
    rng = np.random.default_rng(3)
    samples = rng.normal(size=(1000, 7))
    low, high = metrics.percentile_ci(samples)
    alpha = (1 - 0.95) / 2 * 100  # as percentile_ci computes it (2.4999999999999996)
    expected = np.nanpercentile(samples, [alpha, 100 - alpha], axis=0)
    assert np.array_equal(low, expected[0]) and np.array_equal(high, expected[1])
    samples[:, 2] = np.nan
    samples[:10, 3] = np.nan
    low, high = metrics.percentile_ci(samples)
    assert np.isnan(low[2]) and np.isnan(high[2])
    assert low[3] == np.percentile(samples[10:, 3], alpha)
