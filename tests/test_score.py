"""Score stage end to end on hand-built lens shards: known answers, errors, reruns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from exitbench import flops, metrics, score, shards, tables
from exitbench.config import section_defaults
from exitbench.tables import TableError

LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 100,
}


def params(**overrides) -> dict:
    """The config's score: section with its schema defaults, and ``overrides``."""
    return {**section_defaults("score"), **overrides}


def build(
    tmp_path: Path,
    windows: list[tuple[int, str, int]],
    top1: np.ndarray,
    gold: np.ndarray,
    layers: list[int],
    maxprob: np.ndarray | None = None,
    shards: list[list[int]] | None = None,
    shuffle: bool = False,
    config: dict | None = LLAMA,
) -> tuple[list[Path], Path, dict]:
    """Write a tokens table and lens shards for ``windows`` = [(seq_id, doc_id, n_tokens)].

    ``top1`` / ``maxprob`` are [tokens, layers] in (seq_id, pos) order, ``gold`` [tokens]
    (-1 = none). Other lens columns are derived deterministically.
    """
    n_layers = len(layers)
    lengths = [n for _, _, n in windows]
    ids = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)),
        pa.array(np.zeros(sum(lengths), dtype=np.int32)),
    )
    tokens_table = pa.table(
        {
            "seq_id": [s for s, _, _ in windows],
            "doc_id": [d for _, d, _ in windows],
            "input_ids": ids,
            "n_tokens": lengths,
        }
    )
    tokens_path = tables.write_table(tokens_table, tmp_path / "tokens" / "work.parquet", "tokens")
    if maxprob is None:
        maxprob = np.linspace(0.2, 0.9, top1.size, dtype=np.float32).reshape(top1.shape)
    seq_of = np.repeat([s for s, _, _ in windows], lengths)
    pos_of = np.concatenate([np.arange(n) for n in lengths])
    paths = []
    for k, members in enumerate(shards or [[s for s, _, _ in windows]]):
        rows = np.flatnonzero(np.isin(seq_of, members))
        n = rows.size * n_layers
        flat = lambda a, rows=rows: np.asarray(a)[rows].reshape(-1)  # noqa: E731
        cos = np.tile(np.linspace(0.5, 0.99, n_layers, dtype=np.float32), rows.size)
        g = np.repeat(gold[rows], n_layers)
        table = pa.table(
            {
                "seq_id": np.repeat(seq_of[rows], n_layers),
                "pos": np.repeat(pos_of[rows], n_layers).astype(np.int32),
                "layer": np.tile(np.array(layers, dtype=np.int16), rows.size),
                "top1": flat(top1).astype(np.int32),
                "topk_ids": pa.array([[int(t)] for t in flat(top1)], pa.list_(pa.int32())),
                "topk_logprobs": pa.array([[0.0]] * n, pa.list_(pa.float32())),
                "maxprob": flat(maxprob).astype(np.float32),
                "margin": (flat(maxprob) / 2).astype(np.float32),
                "entropy": (1 - flat(maxprob)).astype(np.float32),
                "logprob_final_top1": np.zeros(n, np.float32),
                "gold": pa.array(np.where(g < 0, 0, g).astype(np.int32), mask=g < 0),
                "logprob_gold": pa.array(np.zeros(n, np.float32), mask=g < 0),
                "kl_to_final": np.tile(np.arange(n_layers, 0, -1, dtype=np.float32), rows.size),
                "cos_prev": pa.array(cos, mask=np.tile(np.arange(n_layers) == 0, rows.size)),
            }
        )
        if shuffle:
            table = table.take(np.random.default_rng(k).permutation(n))
        paths.append(tables.write_table(table, tmp_path / "lens" / f"shard-{k}.parquet", "lens"))
    info = {
        "name": "tiny",
        "model_type": (config or {}).get("model_type", "x"),
        "num_layers": layers[-1],
        "layer_numbers": layers,
        "config": config,
    }
    return paths, tokens_path, info


def hand_case(tmp_path: Path, **kwargs):
    """L = 4 with embeddings; 2 documents of one window each, 3 tokens per window.

    Final predictions are token 7 everywhere. Per token, layers 0..4:
      doc a: t0 agrees from layer 3 (e_sat 3), t1 agrees at 2, not 3, from 4 (e_first 2,
             e_sat 4), t2 agrees at every layer >= 1 (e_sat 1, layer 0 disagrees)
      doc b: t3 agrees from 2, t4 from 4, t5 from 1.
    Gold: 7 for t0, t1, t3 and 5 for t4; t2 and t5 end their window (no gold).
    """
    x = 1  # a wrong prediction
    top1 = np.array(
        [
            [x, x, x, 7, 7],
            [x, x, 7, x, 7],
            [x, 7, 7, 7, 7],
            [x, x, 7, 7, 7],
            [x, x, x, x, 7],
            [x, 7, 7, 7, 7],
        ]
    )
    gold = np.array([7, 7, -1, 7, 5, -1])
    windows = [(0, "a", 3), (1, "b", 3)]
    return build(tmp_path, windows, top1, gold, layers=[0, 1, 2, 3, 4], **kwargs)


def test_known_answers(tmp_path):
    paths, tokens, info = hand_case(tmp_path)
    table, summary = score.score_lens(paths, tokens, info, params(bootstrap=50), seed=0)
    rows = table.to_pylist()
    assert [r["layer"] for r in rows] == [0, 1, 2, 3, 4]
    # e_sat = 3, 4, 1, 2, 4, 1 ; e_first = 3, 2, 1, 2, 4, 1
    assert [r["saturation_count"] for r in rows] == [0, 2, 1, 1, 2]
    assert [r["first_agreement_count"] for r in rows] == [0, 2, 2, 1, 1]
    assert [r["agreement"] for r in rows] == pytest.approx([0, 2 / 6, 4 / 6, 4 / 6, 1])
    # final top-1 is 7 everywhere: right for t0, t1, t3 of the 4 tokens with gold
    assert rows[4]["accuracy"] == pytest.approx(3 / 4)
    assert rows[2]["accuracy"] == pytest.approx(2 / 4)  # t1, t3
    assert rows[0]["n_tokens"] == 6 and rows[0]["n_gold_tokens"] == 4
    assert rows[0]["cos_prev_mean"] is None
    assert rows[2]["kl_to_final_mean"] == pytest.approx(3.0)
    head = summary["headline"]
    assert head["mean_saturation_layer"]["estimate"] == pytest.approx(15 / 6)
    assert head["mean_first_agreement_layer"]["estimate"] == pytest.approx(13 / 6)
    assert head["oracle_savings"]["estimate"] == pytest.approx(1 - 15 / 6 / 4)
    assert head["final_accuracy"]["estimate"] == pytest.approx(3 / 4)
    assert summary["distributions"]["saturation_count"] == [2, 1, 1, 2]
    assert (summary["n_documents"], summary["n_calibration_documents"]) == (2, 1)
    # two oracles: S_first = 1 - E[e_first]/L, S_settled = 1 - E[e_sat]/L (= oracle_savings)
    assert head["savings_first"]["estimate"] == pytest.approx(1 - 13 / 6 / 4)
    assert head["savings_settled"] == head["oracle_savings"]
    flop = summary["flops"]
    full = flop["full"]
    # an oracle pays one head call; each skipped layer its K and V (state_cost: kv), by hand:
    # d = 64, 2 KV heads of 16 -> 2 * 64 * 2 * 32 = 8192 per skipped layer
    assert flop["state_kv"] == [8192.0] * 4
    costs = np.cumsum([0] + flop["per_layer"]) + flop["head"] + 8192.0 * (4 - np.arange(5))
    expected = 1 - np.mean(costs[[3, 4, 1, 2, 4, 1]]) / full
    assert head["oracle_net_flop_savings"]["estimate"] == pytest.approx(expected)
    assert head["net_flop_savings_settled"] == head["oracle_net_flop_savings"]
    expected = 1 - np.mean(costs[[3, 2, 1, 2, 4, 1]]) / full
    assert head["net_flop_savings_first"]["estimate"] == pytest.approx(expected)


def test_perfect_confidence_policy_matches_oracle_on_heldout(tmp_path):
    """maxprob = 0.99 exactly from each token's saturation layer on, 0.1 before:
    the maxprob policy chosen for 99% consistency exits at e_sat."""
    rng = np.random.default_rng(0)
    windows = [(s, f"doc{s // 2}", 8) for s in range(20)]
    n_tokens, layers = 160, list(range(7))
    saturation = rng.integers(1, 7, n_tokens)
    depth = np.arange(7)[None, :]
    top1 = np.where(depth >= saturation[:, None], 3, rng.integers(10, 20, (n_tokens, 7)))
    maxprob = np.where(depth >= saturation[:, None], 0.99, 0.1).astype(np.float32)
    gold = np.full(n_tokens, 3)
    paths, tokens, info = build(tmp_path, windows, top1, gold, layers, maxprob=maxprob)
    _, summary = score.score_lens(paths, tokens, info, params(bootstrap=20), seed=0)
    policy = summary["policies"]["maxprob"]["0.99"]
    assert policy["threshold"] == pytest.approx(0.99)
    assert policy["consistency"]["estimate"] == 1.0
    doc_ids = [f"doc{d}" for d in range(10)]
    heldout = ~metrics.split_documents(doc_ids, 0.5, seed=0)
    token_doc = np.repeat(np.arange(10), 16)
    expected = 1 - saturation[heldout[token_doc]].mean() / 6
    assert policy["savings"]["estimate"] == pytest.approx(expected)
    assert summary["headline"]["savings_at_99"]["estimate"] >= expected - 1e-12
    # the +inf end of every sweep never exits early
    assert summary["sweeps"]["maxprob"][-1]["threshold"] is None
    assert summary["sweeps"]["maxprob"][-1]["savings"] == 0.0
    # five held-out documents of 16 tokens: their curve sums give back the headline AUC
    curve = summary["document_sums"]["curves"]["consistency_savings_auc"]
    assert curve["savings_denominator"] == [16 * 6] * 5
    assert curve["consistency_denominator"] == [16] * 5
    s_num, c_num = np.array(curve["savings_numerator"]), np.array(curve["consistency_numerator"])
    auc = metrics.consistency_savings_auc(s_num.sum(0) / (80 * 6), c_num.sum(0) / 80)
    assert auc == pytest.approx(summary["headline"]["consistency_savings_auc"]["estimate"])


def test_rerun_is_byte_identical_and_order_independent(tmp_path):
    rng = np.random.default_rng(1)
    windows = [(s, f"d{s // 3}", 10) for s in range(12)]
    top1 = rng.integers(0, 3, (120, 5))
    gold = rng.integers(0, 3, 120)
    gold[9::10] = -1
    maxprob = rng.random((120, 5)).astype(np.float32)
    paths, tokens, info = build(
        tmp_path / "a",
        windows,
        top1,
        gold,
        [0, 1, 2, 3, 4],
        maxprob,
        shards=[[0, 1, 2], list(range(3, 12))],
    )
    outputs = []
    for run in range(2):
        table, summary = score.score_lens(paths, tokens, info, params(bootstrap=100), seed=3)
        out = tmp_path / f"run{run}"
        score.write_scores(table, summary, out / "s.parquet", out / "s.json", {"seed": 3})
        outputs.append(((out / "s.parquet").read_bytes(), (out / "s.json").read_bytes()))
    assert outputs[0] == outputs[1]
    # the same rows in shuffled order (scatter path) give the same numbers
    paths2, tokens2, info2 = build(
        tmp_path / "b",
        windows,
        top1,
        gold,
        [0, 1, 2, 3, 4],
        maxprob,
        shards=[list(range(12))],
        shuffle=True,
    )
    table2, summary2 = score.score_lens(paths2, tokens2, info2, params(bootstrap=100), seed=3)
    out = tmp_path / "run_shuffled"
    score.write_scores(table2, summary2, out / "s.parquet", out / "s.json", {"seed": 3})
    assert (out / "s.json").read_bytes() == outputs[0][1]
    written = json.loads(outputs[0][1])
    assert written["provenance"] == {"seed": 3}
    assert tables.read_table(tmp_path / "run0" / "s.parquet", "scores").num_rows == 5


def test_truncated_shard_fails_naming_its_path(tmp_path):
    paths, tokens, info = hand_case(tmp_path)
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2])
    with pytest.raises(TableError, match=str(paths[0])):
        score.score_lens(paths, tokens, info, params(bootstrap=10), seed=0)


def test_shard_missing_a_layer_fails_clearly(tmp_path):
    paths, tokens, info = hand_case(tmp_path)
    table = tables.read_table(paths[0], "lens")
    keep = np.asarray(table.column("layer")) != 2
    tables.write_table(table.filter(pa.array(keep)), paths[0], "lens")
    with pytest.raises(shards.ShardError, match=r"shard-0\.parquet.*missing layer\(s\) \[2\]"):
        score.score_lens(paths, tokens, info, params(bootstrap=10), seed=0)


def test_shard_missing_rows_or_windows_fails_clearly(tmp_path):
    paths, tokens, info = hand_case(tmp_path, shards=[[0], [1]])
    # one token lacks all its layers: row count no longer matches its windows
    table = tables.read_table(paths[1], "lens")
    keep = np.asarray(table.column("pos")) != 1
    tables.write_table(table.filter(pa.array(keep)), paths[1], "lens")
    with pytest.raises(shards.ShardError, match=r"shard-1\.parquet: \d+ rows, expected"):
        score.score_lens(paths, tokens, info, params(bootstrap=10), seed=0)
    # a whole window absent from every shard
    with pytest.raises(shards.ShardError, match="seq_id=1 .*no shard has any row"):
        score.score_lens(paths[:1], tokens, info, params(bootstrap=10), seed=0)
    # the same window in two shards
    with pytest.raises(shards.ShardError, match="duplicate"):
        score.score_lens([paths[0], paths[0]], tokens, info, params(bootstrap=10), seed=0)


def test_ssm_layers_without_embeddings_and_without_flop_model(tmp_path):
    top1 = np.array([[1, 7, 7], [7, 1, 7], [7, 7, 7], [1, 1, 7]])
    windows = [(0, "a", 2), (1, "b", 2)]
    paths, tokens, info = build(
        tmp_path, windows, top1, np.array([7, -1, 7, -1]), layers=[1, 2, 3], config=None
    )
    table, summary = score.score_lens(paths, tokens, info, params(bootstrap=0), seed=0)
    rows = table.to_pylist()
    assert [r["layer"] for r in rows] == [1, 2, 3]
    assert [r["saturation_count"] for r in rows] == [1, 1, 2]
    assert rows[0]["cos_prev_mean"] is None and rows[1]["cos_prev_mean"] is not None
    assert rows[0]["agreement_ci_low"] is None  # no bootstrap
    assert summary["flops"] is None
    assert summary["headline"]["oracle_net_flop_savings"]["estimate"] is None
    assert summary["headline"]["net_flop_savings_at_99"] == {
        "estimate": None,
        "ci_low": None,
        "ci_high": None,
    }
    out = tmp_path / "out"
    score.write_scores(table, summary, out / "s.parquet", out / "s.json")
    assert json.loads((out / "s.json").read_text())["headline"]["oracle_savings"]["ci_low"] is None


def test_summary_schema_rejects_a_broken_summary(tmp_path):
    paths, tokens, info = hand_case(tmp_path)
    _, summary = score.score_lens(paths, tokens, info, params(bootstrap=10), seed=0)
    del summary["headline"]["savings_at_95"]
    with pytest.raises(score.ScoreError, match="savings_at_95"):
        score.validate_headline(summary)


@pytest.mark.parametrize("kind", ["llama", "mamba2"])
def test_scores_real_extract_shards(tmp_path, tiny_model_dirs, kind):
    """Contract with the extract stage: its shards (layers 0..L or 1..L) score cleanly."""
    from exitbench import extract, models

    entry = {"path": str(tiny_model_dirs[kind]), "dtype": "float32"}
    info = models.describe_model(kind, entry)
    lengths = [12, 12, 9, 12, 5]
    rng = np.random.default_rng(0)
    ids = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)),
        pa.array(rng.integers(0, 300, sum(lengths)).astype(np.int32)),
    )
    tokens_table = pa.table(
        {
            "seq_id": np.arange(5),
            "doc_id": ["a", "a", "b", "c", "d"],
            "input_ids": ids,
            "n_tokens": np.array(lengths, np.int32),
        }
    )
    tokens = tables.write_table(tokens_table, tmp_path / "tokens.parquet", "tokens")
    shard_paths = [tmp_path / f"shard-{k}.parquet" for k in range(2)]
    for k, shard in enumerate(shard_paths):
        extract.extract_shard(kind, entry, tokens, shard, k, 3, 3, 4, 64)
    (tmp_path / "model.json").write_text(json.dumps(info))
    summary = score.score_files(
        shard_paths,
        tokens,
        tmp_path / "model.json",
        tmp_path / "out.parquet",
        tmp_path / "out.json",
        params(bootstrap=20, seq_len=12),
        seed=0,
    )
    curves = tables.read_table(tmp_path / "out.parquet", "scores").to_pylist()
    assert [row["layer"] for row in curves] == info["layer_numbers"]
    assert curves[-1]["agreement"] == 1.0
    assert sum(row["saturation_count"] for row in curves) == sum(lengths)
    assert summary["n_tokens"] == sum(lengths) and summary["n_documents"] == 4
    assert len(summary["flops"]["per_layer"]) == info["num_layers"]
    assert 0 <= summary["headline"]["oracle_savings"]["estimate"] < 1


# ---------------------------------------------------------------- named steps


def hand_arrays(maxprob: np.ndarray | None = None) -> shards.LensArrays:
    """The tokens of :func:`hand_case` as dense arrays: layers 0..4, documents a, b."""
    x = 1
    top1 = np.array(
        [
            [x, x, x, 7, 7],
            [x, x, 7, x, 7],
            [x, 7, 7, 7, 7],
            [x, x, 7, 7, 7],
            [x, x, x, x, 7],
            [x, 7, 7, 7, 7],
        ],
        dtype=np.int32,
    ).T
    if maxprob is None:
        maxprob = np.linspace(0.2, 0.9, top1.size, dtype=np.float32).reshape(top1.shape)
    cos_prev = np.full(top1.shape, 0.9, np.float32)
    cos_prev[0] = np.nan
    cos_prev[2, 0] = 0.5
    return shards.LensArrays(
        layers=np.arange(5),
        top1=top1,
        maxprob=maxprob,
        margin=maxprob / 2,
        entropy=1 - maxprob,
        kl_to_final=np.repeat(np.arange(5, 0, -1, dtype=np.float32)[:, None], 6, axis=1),
        cos_prev=cos_prev,
        gold=np.array([7, 7, -1, 7, 5, -1], np.int32),
        doc=np.array([0, 0, 0, 1, 1, 1]),
        doc_ids=["a", "b"],
    )


def test_document_split_groups_tokens_and_draws_weights():
    arrays = hand_arrays()
    docs = score.document_split(arrays, 0.5, bootstrap=7, seed=0)
    assert docs.ids == ["a", "b"] and docs.unit.tolist() == [0, 0, 0, 1, 1, 1]
    assert docs.starts.tolist() == [0, 3]
    assert docs.n_tokens.tolist() == [3, 3] and docs.n_gold.tolist() == [2, 2]
    assert docs.calibration.tolist() == metrics.split_documents(["a", "b"], 0.5, 0).tolist()
    assert (docs.heldout == ~docs.calibration).all()
    assert docs.weights.shape == (7, 2) and (docs.weights.sum(axis=1) == 2).all()
    assert docs.heldout_weights.shape == (7, 1) and (docs.heldout_weights == 1).all()
    assert docs.per_layer_sums(arrays.top1 == 7)[:, 4].tolist() == [3, 3]
    # booleans are summed as integers: the same float64 sums as adding them as floats
    agree = arrays.top1 == arrays.top1[-1]
    sums = docs.per_layer_sums(agree)
    assert sums.dtype == np.float64
    np.testing.assert_array_equal(sums, docs.per_layer_sums(agree.astype(np.float64)))
    arrays.doc = np.array([0, 1, 0, 1, 0, 1])
    with pytest.raises(score.ScoreError, match="grouped by document"):
        score.document_split(arrays, 0.5, bootstrap=7, seed=0)


def test_one_document_is_its_own_heldout_split():
    arrays = hand_arrays()
    arrays.doc = np.zeros(6, np.int64)
    docs = score.document_split(arrays, 0.5, bootstrap=3, seed=0)
    assert docs.calibration.tolist() == [True] and docs.heldout.tolist() == [True]


def test_agreement_masks_and_layer_curves_known_answers():
    arrays = hand_arrays()
    agree, correct = score.agreement_masks(arrays)
    assert agree[:, 1].tolist() == [False, False, True, False, True]
    # t4's gold is 5, never predicted; t2 has no gold, so never correct
    assert not correct[:, 4].any() and not correct[:, 2].any()
    assert correct[:, 0].tolist() == [False, False, False, True, True]
    docs = score.document_split(arrays, 0.5, bootstrap=0, seed=0)
    curves = score.layer_curves(arrays, docs, agree, correct)
    assert curves["agreement"].tolist() == pytest.approx([0, 2 / 6, 4 / 6, 4 / 6, 1])
    assert curves["accuracy"].tolist() == pytest.approx([0, 0, 2 / 4, 2 / 4, 3 / 4])
    assert curves["kl_to_final_mean"].tolist() == pytest.approx([5, 4, 3, 2, 1])
    # cos_prev: undefined at layer 0, one token at 0.5 at layer 2
    assert np.isnan(curves["cos_prev_mean"][0])
    assert curves["cos_prev_mean"][2] == pytest.approx((5 * 0.9 + 0.5) / 6)
    assert np.isnan(curves["agreement_ci_low"]).all()  # no bootstrap resamples


def test_oracle_exits_known_answers():
    arrays = hand_arrays()
    docs = score.document_split(arrays, 0.5, bootstrap=20, seed=0)
    agree, correct = score.agreement_masks(arrays)
    oracle = score.oracle_exits(agree[1:], correct[1:], docs, flops=None)
    assert oracle.saturation.tolist() == [3, 4, 1, 2, 4, 1]
    assert oracle.first_agreement.tolist() == [3, 2, 1, 2, 4, 1]
    assert oracle.saturation_count.tolist() == [0, 2, 1, 1, 2]
    head = oracle.headline
    assert head["oracle_savings"]["estimate"] == pytest.approx(1 - 15 / 6 / 4)
    assert head["mean_saturation_layer"]["estimate"] == pytest.approx(15 / 6)
    assert head["mean_first_agreement_layer"]["estimate"] == pytest.approx(13 / 6)
    assert head["final_accuracy"]["estimate"] == pytest.approx(3 / 4)
    # documents a (e_sat 3, 4, 1) and b (2, 4, 1): the CI lies between their savings
    low, high = head["oracle_savings"]["ci_low"], head["oracle_savings"]["ci_high"]
    assert 1 - 8 / 12 - 1e-12 <= low <= high <= 1 - 7 / 12 + 1e-12
    assert math.isnan(head["oracle_net_flop_savings"]["estimate"]) and oracle.costs is None


def random_arrays(seed: int = 0, n_docs: int = 16, per_doc: int = 12, num_layers: int = 6):
    """Tokens that settle on the final prediction at a random layer, maxprob noisy but rising."""
    rng = np.random.default_rng(seed)
    n = n_docs * per_doc
    settle = rng.integers(1, num_layers + 1, n)
    depth = np.arange(num_layers + 1)[:, None]
    top1 = np.where(depth >= settle, 3, rng.integers(10, 14, (num_layers + 1, n))).astype(np.int32)
    maxprob = np.clip(0.6 * (depth >= settle) + 0.5 * rng.random(top1.shape), 0, 1)
    maxprob = maxprob.astype(np.float32)
    cos_prev = rng.random(top1.shape).astype(np.float32)
    cos_prev[0] = np.nan
    return shards.LensArrays(
        layers=np.arange(num_layers + 1),
        top1=top1,
        maxprob=maxprob,
        margin=maxprob / 2,
        entropy=1 - maxprob,
        kl_to_final=np.zeros(top1.shape, np.float32),
        cos_prev=cos_prev,
        gold=np.where(rng.random(n) < 0.5, 3, 9).astype(np.int32),
        doc=np.repeat(np.arange(n_docs), per_doc),
        doc_ids=[f"d{i}" for i in range(n_docs)],
    )


def test_exit_policies_match_brute_force_exits():
    """Each held-out sweep point equals exiting every held-out token at metrics.exit_layer."""
    arrays = random_arrays()
    num_layers = 6
    docs = score.document_split(arrays, 0.5, bootstrap=30, seed=1)
    agree, correct = score.agreement_masks(arrays)
    agree, correct = agree[1:], correct[1:]
    result = score.exit_policies(arrays, agree, correct, docs, None, params(thresholds=9))
    held_tokens = docs.heldout[docs.unit]
    columns = np.arange(agree.shape[1])
    for point in result.sweeps["maxprob"]:
        tau = np.inf if point["threshold"] is None else np.float32(point["threshold"])
        exits = metrics.exit_layer(arrays.maxprob[1:], tau)[held_tokens]
        assert point["savings"] == pytest.approx(1 - exits.mean() / num_layers)
        agreed = agree[exits - 1, columns[held_tokens]]
        assert point["consistency"] == pytest.approx(agreed.mean())
        right = correct[exits - 1, columns[held_tokens]]
        assert point["accuracy"] == pytest.approx(right.sum() / docs.n_gold[docs.heldout].sum())
    assert result.sweeps["maxprob"][-1]["savings"] == 0.0  # +inf never exits early
    # the chosen threshold is reported at its own held-out sweep point
    policy = result.policies["maxprob"]["0.95"]
    point = next(p for p in result.sweeps["maxprob"] if p["threshold"] == policy["threshold"])
    assert policy["savings"]["estimate"] == pytest.approx(point["savings"])
    assert policy["consistency"]["estimate"] == pytest.approx(point["consistency"])
    assert policy["calibration"]["consistency"] >= 0.95 - 1e-12
    assert result.calibration["0.95"]["maxprob"] == (
        policy["calibration"]["savings"],
        policy["calibration"]["consistency"],
    )
    assert set(result.policies) == set(metrics.MEASURES) | {"patience"}
    assert result.policies["patience"] is result.policies["patience_maxprob"]


def test_assemble_headline_picks_the_best_calibration_measure():
    ci = {"estimate": 0.1, "ci_low": 0.0, "ci_high": 0.2}
    oracle = score.OracleExits(
        np.ones(1), np.ones(1), np.zeros(2), np.zeros(2), {"oracle_savings": ci}, None
    )
    calibration = {  # (savings, consistency) on calibration; ties go to the earlier measure
        "0.99": {m: (0.2, 0.99) for m in metrics.MEASURES} | {"entropy": (0.3, 0.99)},
        "0.95": {m: (0.4, 0.96) for m in metrics.MEASURES},
    }
    policies = score.ExitPolicies(
        policies={
            m: {
                t: {"savings": {"estimate": i + (t == "0.99")}, "net_flop_savings": None}
                for t in calibration
            }
            for i, m in enumerate(metrics.MEASURES)
        },
        sweeps={},
        auc={
            m: {"heldout": {"estimate": float(i)}, "calibration": 0.5 if m != "cos_prev" else 0.6}
            for i, m in enumerate(metrics.MEASURES)
        },
        calibration=calibration,
    )
    headline, best = score.assemble_headline(oracle, policies, [0.99, 0.95])
    assert best == {"0.99": "entropy", "0.95": "maxprob", "auc": "cos_prev"}
    entropy = metrics.MEASURES.index("entropy")
    assert headline["savings_at_99"] == {"estimate": entropy + 1}
    assert headline["savings_at_95"] == {"estimate": 0}
    assert headline["consistency_savings_auc"] == {"estimate": metrics.MEASURES.index("cos_prev")}
    assert headline["oracle_savings"] is ci


def test_incomplete_params_name_the_missing_keys(tmp_path):
    paths, tokens, info = hand_case(tmp_path)
    with pytest.raises(
        score.ScoreError, match=r"\['calibration', 'calibration_fraction'.*section_defaults"
    ):
        score.score_lens(paths, tokens, info, {"bootstrap": 10}, seed=0)


# ---------------------------------------------------------------- small studies


def empty_extract_shard(tokens: Path, out: Path, shard_index: int, shard_sequences: int) -> Path:
    """A shard past the tokens table's windows, written by extract (no model is loaded)."""
    from exitbench import extract

    stats = extract.extract_shard("tiny", {}, tokens, out, shard_index, shard_sequences, 1, 1, 64)
    assert stats["windows"] == 0
    return out


def test_empty_shards_past_the_windows_score_and_say_so_once(tmp_path, caplog):
    """Issue 10 item 2: max_sequences=4, shard_sequences=1, the workload yields 2 windows."""
    paths, tokens, info = hand_case(tmp_path, shards=[[0], [1]])
    empty = [empty_extract_shard(tokens, tmp_path / f"shard-{k}.parquet", k, 1) for k in (2, 3)]
    assert tables.read_table(empty[0], "lens").num_rows == 0  # schema-checked on read
    _, alone = score.score_lens(paths, tokens, info, params(bootstrap=10), seed=0)
    with caplog.at_level("WARNING", logger="exitbench.score"):
        table, summary = score.score_lens(
            paths + empty, tokens, info, params(bootstrap=10, max_sequences=4), seed=0
        )
    assert summary["headline"] == alone["headline"]
    assert summary["n_windows"] == 2 and summary["n_windows_requested"] == 4
    assert alone["n_windows"] == 2 and alone["n_windows_requested"] is None
    said = [r.getMessage() for r in caplog.records if "than the 4 requested" in r.getMessage()]
    assert len(said) == 1 and "2 token windows" in said[0]
    assert any("fewer than the 4 requested" in w for w in summary["warnings"])
    out = tmp_path / "out"
    score.write_scores(table, summary, out / "s.parquet", out / "s.json")
    assert json.loads((out / "s.json").read_text())["n_windows_requested"] == 4


def test_empty_shard_that_should_have_rows_fails_naming_it(tmp_path):
    paths, tokens, info = hand_case(tmp_path, shards=[[0], [1]])
    empty_extract_shard(tokens, paths[1], 5, 1)  # shard-1 now empty, yet window 1 is its
    with pytest.raises(shards.ShardError, match=r"seq_id=1 .*empty shard\(s\): .*shard-1\.parquet"):
        score.score_lens(paths, tokens, info, params(bootstrap=10), seed=0)
    empty_extract_shard(tokens, paths[0], 5, 1)
    with pytest.raises(shards.ShardError, match=r"every lens shard .* is empty .* 2 windows"):
        score.score_lens(paths, tokens, info, params(bootstrap=10), seed=0)


def test_few_documents_are_flagged(tmp_path, caplog):
    """Issue 10 item 5: a held-out split under MIN_CI_DOCUMENTS documents is flagged."""
    assert score.MIN_CI_DOCUMENTS == 20
    paths, tokens, info = hand_case(tmp_path)  # 2 documents: 1 calibration, 1 held out
    _, summary = score.score_lens(paths, tokens, info, params(bootstrap=10), seed=0)
    assert summary["n_heldout_documents"] == 1 and summary["few_documents"] is True
    assert summary["warnings"] == [
        "only 1 held-out document(s) (fewer than 20): bootstrap CIs over documents are "
        "unreliable; use more documents (workloads.<name>.max_docs) or a smaller "
        "score.calibration_fraction"
    ]
    # one document: calibration = held-out, said once in the log
    gold = np.array([7, 7, 7, -1])
    one = build(tmp_path / "one", [(0, "a", 4)], np.full((4, 2), 7), gold, layers=[1, 2])
    with caplog.at_level("WARNING", logger="exitbench.score"):
        _, summary = score.score_lens(*one, params(bootstrap=10), seed=0)
    assert summary["few_documents"] is True
    assert [w.split(":")[0] for w in summary["warnings"]] == ["1 document(s)"]
    assert sum("in-sample" in r.getMessage() for r in caplog.records) == 1
    # enough documents: no flag
    arrays = random_arrays(n_docs=50)
    _, summary = score.score_arrays(arrays, 6, None, params(bootstrap=0), seed=0)
    assert summary["n_heldout_documents"] >= 20
    assert summary["few_documents"] is False and summary["warnings"] == []


# ---------------------------------------------- issue 9: oracles, check costs, calibration


def test_two_oracles_on_the_issue_example():
    """Agreement rows [1,1], [0,1], [1,1], [1,1] over layers 1..4, one token per document:
    e_sat = [3, 1], e_first = [1, 1]: S_settled = 0.50, S_first = 0.75."""
    top1 = np.array([[9, 3, 9, 3, 3], [9, 3, 3, 3, 3]], np.int32).T  # layers 0..4, final 3
    ones = np.ones(top1.shape, np.float32)
    arrays = shards.LensArrays(
        layers=np.arange(5),
        top1=top1,
        maxprob=ones,
        margin=ones,
        entropy=ones,
        kl_to_final=ones,
        cos_prev=ones,
        gold=np.array([3, 3], np.int32),
        doc=np.array([0, 1]),
        doc_ids=["a", "b"],
    )
    docs = score.document_split(arrays, 0.5, bootstrap=10, seed=0)
    agree, correct = score.agreement_masks(arrays)
    oracle = score.oracle_exits(agree[1:], correct[1:], docs, flops=None)
    head = oracle.headline
    assert head["savings_settled"]["estimate"] == pytest.approx(0.50)
    assert head["savings_first"]["estimate"] == pytest.approx(0.75)
    assert head["oracle_savings"] is head["savings_settled"]  # the old key, same number


def scheduled_arrays() -> shards.LensArrays:
    """:func:`hand_arrays` with maxprob = cos_prev = 0.1 at layer 1 and 0.9 from layer 2 on."""
    arrays = hand_arrays()
    confidence = np.repeat(np.array([0, 0.1, 0.9, 0.9, 0.9], np.float32)[:, None], 6, axis=1)
    arrays.maxprob, arrays.margin, arrays.entropy = confidence, confidence, 1 - confidence
    arrays.cos_prev = confidence.copy()
    arrays.cos_prev[0] = np.nan
    return arrays


def _tau(point: dict) -> float | None:
    return math.inf if point["threshold"] is None else round(point["threshold"], 6)


def test_check_costs_per_measure_under_a_schedule_hand_computed():
    """L = 4, layers 10, 20, 30, 40 FLOPs, head 5, cosine 0.5, K/V 1, 2, 3, 4 per skipped layer.
    check_every 2 from layer 1: checks at layers 1 and 3. At tau = 0.9 every token exits at
    layer 3 (confident at 2, but 2 is no check):
      maxprob: 60 + 1 head check (layer 1) + head 5 + K/V of layer 4 = 74 -> 1 - 74/105
      cos_prev: 60 + 2 cosines (layers 1, 3) + head 5 + 4 = 70 -> 1 - 70/105
      zero-check-cost bound: 60 + 5 + 4 = 69 -> 1 - 69/105.
    At tau = 0.1 every token exits at layer 1: 10 + 5 + (2 + 3 + 4) = 24 for maxprob."""
    model = flops.FlopModel(
        (10.0, 20.0, 30.0, 40.0), 5.0, state_kv=(1.0, 2.0, 3.0, 4.0), cosine=0.5
    )
    arrays = scheduled_arrays()
    docs = score.document_split(arrays, 0.5, bootstrap=0, seed=0)
    agree, correct = score.agreement_masks(arrays)
    setting = params(check_every=2, min_exit_layer=1, state_cost="kv")
    result = score.exit_policies(arrays, agree[1:], correct[1:], docs, model, setting)
    by_tau = {m: {_tau(p): p for p in result.sweeps[m]} for m in ("maxprob", "cos_prev")}
    at = by_tau["maxprob"][0.9]
    assert at["savings"] == pytest.approx(0.25)
    assert at["net_flop_savings"] == pytest.approx(1 - 74 / 105)
    assert at["net_flop_savings_zero_check"] == pytest.approx(1 - 69 / 105)
    cos = by_tau["cos_prev"][0.9]
    assert cos["net_flop_savings"] == pytest.approx(1 - 70 / 105)
    assert cos["net_flop_savings_zero_check"] == pytest.approx(1 - 69 / 105)
    assert by_tau["maxprob"][0.1]["net_flop_savings"] == pytest.approx(1 - 24 / 105)
    # +inf never exits early: 100 + head checks at layers 1 and 3 + the output head
    assert by_tau["maxprob"][math.inf]["net_flop_savings"] == pytest.approx(1 - 115 / 105)
    # state_cost: full charges whole skipped layers: the tau = 0.9 exit saves only checks' loss
    full = params(check_every=2, min_exit_layer=1, state_cost="full")
    result = score.exit_policies(arrays, agree[1:], correct[1:], docs, model, full)
    point = next(p for p in result.sweeps["cos_prev"] if p["threshold"] == pytest.approx(0.9))
    assert point["net_flop_savings"] == pytest.approx(1 - (100 + 1 + 5) / 105)


def test_pabee_policy_sweeps_patience_hand_computed():
    """hand_arrays' top-1 over layers 1..4 (checks at 1, 2, 3): PABEE counters
    t0 0 1 0 1, t1 0 0 0 0, t2 0 1 2 3, t3 0 0 1 2, t4 0 1 2 0, t5 0 1 2 3.
    p = 1 exits at 2, 4, 2 | 3, 2, 2; p = 2 at 4, 4, 3 | 4, 3, 3 (doc a | doc b)."""
    arrays = hand_arrays()
    docs = score.document_split(arrays, 0.5, bootstrap=0, seed=0)
    agree, correct = score.agreement_masks(arrays)
    result = score.exit_policies(arrays, agree[1:], correct[1:], docs, None, params())
    sweep = result.sweeps["pabee"]
    assert [p["threshold"] for p in sweep] == [1, 2, math.inf]
    held_a = bool(docs.heldout[0])  # which document is held out
    expected = {
        1: (1 - 8 / 12, 2 / 3) if held_a else (1 - 7 / 12, 2 / 3),
        2: (1 - 11 / 12, 1.0) if held_a else (1 - 10 / 12, 2 / 3),
    }
    for point in sweep[:2]:
        savings, consistency = expected[point["threshold"]]
        assert point["savings"] == pytest.approx(savings)
        assert point["consistency"] == pytest.approx(consistency)
    assert result.auc["patience"] is result.auc["patience_maxprob"]


def simulated_study(seed: int, calibration: str, n_docs: int = 60, per_doc: int = 30):
    """Layer 1 is the only early exit: maxprob_1 = u ~ U(0, 1); the lens agrees there with
    probability 0.75 + 0.25 u + a document effect (sd 0.08); layers 2, 3 disagree."""
    rng = np.random.default_rng(seed)
    n = n_docs * per_doc
    doc = np.repeat(np.arange(n_docs), per_doc)
    u = rng.random(n).astype(np.float32)
    p_agree = np.clip(0.75 + 0.25 * u + rng.normal(0, 0.08, n_docs)[doc], 0, 1)
    top1 = np.full((5, n), 9, np.int32)
    top1[4] = 3
    top1[1] = np.where(rng.random(n) < p_agree, 3, 9)
    maxprob = np.zeros((5, n), np.float32)
    maxprob[1], maxprob[4] = u, 1
    arrays = shards.LensArrays(
        layers=np.arange(5),
        top1=top1,
        maxprob=maxprob,
        margin=maxprob,
        entropy=1 - maxprob,
        kl_to_final=np.zeros_like(maxprob),
        cos_prev=np.full_like(maxprob, np.nan),
        gold=np.full(n, 3, np.int32),
        doc=doc,
        doc_ids=[f"d{i}" for i in range(n_docs)],
    )
    docs = score.document_split(arrays, 0.5, bootstrap=200, seed=seed)
    agree, correct = score.agreement_masks(arrays)
    setting = params(bootstrap=200, calibration=calibration)
    return score.exit_policies(arrays, agree[1:], correct[1:], docs, None, setting)


def test_bound_calibration_meets_the_target_on_heldout_where_point_does_not():
    met = {"point": [], "bound": []}
    for seed in range(20):
        for mode in met:
            policy = simulated_study(seed, mode).policies["maxprob"]["0.95"]
            assert policy["target_met"] == (policy["consistency"]["estimate"] >= 0.95)
            bound = policy["calibration"]["consistency_lower_bound"]
            assert bound <= policy["calibration"]["consistency"]
            if mode == "bound":
                assert bound >= 0.95
            met[mode].append(policy["target_met"])
    # point sits on the boundary: held out, about half the studies miss the target
    assert sum(met["point"]) == 11 and sum(met["bound"]) == 18
    assert all(b or not p for p, b in zip(met["point"], met["bound"], strict=True))
    assert not met["point"][8] and met["bound"][8]  # one study: bound meets it, point does not


def test_headline_reports_heldout_consistency_and_target_met(tmp_path):
    paths, tokens, info = hand_case(tmp_path)
    _, summary = score.score_lens(paths, tokens, info, params(bootstrap=20), seed=0)
    head = summary["headline"]
    best = summary["best_measure"]["0.99"]
    policy = summary["policies"][best]["0.99"]
    assert head["consistency_at_99"] == policy["consistency"]
    assert head["target_met_at_99"] == policy["target_met"]
    assert head["target_met_at_99"] == (policy["consistency"]["estimate"] >= 0.99)
    assert head["zero_check_net_flop_savings_at_99"] == policy["net_flop_savings_zero_check"]
    # checks cost something: the zero-check-cost bound is at least the net savings
    assert (
        head["zero_check_net_flop_savings_at_95"]["estimate"]
        >= head["net_flop_savings_at_95"]["estimate"]
    )
    assert summary["params"]["calibration"] == "bound" and summary["params"]["state_cost"] == "kv"
    assert summary["policies"]["patience"] == summary["policies"]["patience_maxprob"]


def test_bad_calibration_setting_is_named():
    arrays = hand_arrays()
    docs = score.document_split(arrays, 0.5, bootstrap=0, seed=0)
    agree, correct = score.agreement_masks(arrays)
    with pytest.raises(score.ScoreError, match="score.calibration must be 'point' or 'bound'"):
        score.exit_policies(arrays, agree[1:], correct[1:], docs, None, params(calibration="x"))


def test_document_sums_reproduce_the_headline_hand_computed(tmp_path):
    """The JSON keeps each headline ratio's per-document sums (the paired bootstrap's input):
    doc a has e_sat 3, 4, 1 (sum 8), doc b 2, 4, 1 (sum 7), 3 tokens each, L = 4."""
    paths, tokens, info = hand_case(tmp_path)
    _, summary = score.score_lens(paths, tokens, info, params(bootstrap=50), seed=0)
    sums = summary["document_sums"]
    assert sums["documents"] == ["a", "b"]
    settled = sums["metrics"]["oracle_savings"]
    assert settled["split"] == "all"
    assert settled["numerator"] == [3 * 4 - 8, 3 * 4 - 7]
    assert settled["denominator"] == [12, 12]
    assert sums["metrics"]["mean_first_agreement_layer"]["numerator"] == [6, 7]
    head = summary["headline"]
    for name, entry in sums["metrics"].items():
        estimate = head[name]["estimate"]
        ratio = sum(entry["numerator"]) / sum(entry["denominator"])
        assert ratio == pytest.approx(estimate), name
    held = sums["metrics"]["savings_at_99"]
    assert held["split"] == "heldout"
    assert len(held["numerator"]) == sum(sums["heldout"]) == 1
    # the AUC is no ratio of sums: its measure's held-out sweep sums, per document and
    # threshold, give back the held-out curve (the JSON's sweep) and the headline AUC
    curve = sums["curves"]["consistency_savings_auc"]
    assert curve["split"] == "heldout" and curve["measure"] == summary["best_measure"]["auc"]
    sweep = summary["sweeps"][curve["measure"]]
    n_held = 3  # tokens of the one held-out document (a and b have 3 each)
    assert curve["savings_denominator"] == [n_held * 4]
    assert curve["consistency_denominator"] == [n_held]
    (s_num,), (c_num,) = curve["savings_numerator"], curve["consistency_numerator"]
    assert len(s_num) == len(c_num) == len(sweep)
    assert (s_num[-1], c_num[-1]) == (0, n_held)  # threshold +inf: every token exits at L
    savings = np.array(s_num) / (n_held * 4)
    consistency = np.array(c_num) / n_held
    assert savings == pytest.approx([p["savings"] for p in sweep])
    assert consistency == pytest.approx([p["consistency"] for p in sweep])
    auc = metrics.consistency_savings_auc(savings, consistency)
    assert auc == pytest.approx(head["consistency_savings_auc"]["estimate"])
    score.validate_headline(summary)


# ---------------------------------------------------------------- lens column, translators


def test_scores_table_names_its_lens_and_tuned_scores_say_if_translators_saw_the_workload(
    tmp_path,
):
    """Issue 12: the scores Parquet has a lens column (logit | tuned); a tuned score JSON
    says whether the translators trained on this workload's documents."""
    paths, tokens, info = hand_case(tmp_path)
    folder = tmp_path / "translators"
    folder.mkdir()
    source = folder / score.TRANSLATORS_SOURCE_FILE
    outputs = {}
    for lens, trained_on in [
        ("logit", None),
        ("tuned", {"workloads": ["work", "other"], "windows": 3, "documents": 1}),
        ("tuned", {"workloads": ["other"], "windows": 3, "documents": 1}),
        ("tuned", {"zoo_data": "results/zoo/data", "corpora": ["prose"]}),
        ("tuned", {"published": "/lenses/gpt2"}),
        ("tuned", None),
    ]:
        source.unlink(missing_ok=True)
        if trained_on is not None:
            source.write_text(json.dumps(trained_on))
        out = tmp_path / f"out{len(outputs)}"
        summary = score.score_files(
            paths,
            tokens,
            _info_file(tmp_path, info),
            out / "s.parquet",
            out / "s.json",
            {**params(bootstrap=10), "lens": lens},
            seed=0,
            translators=folder if lens == "tuned" else None,
        )
        curves = tables.read_table(out / "s.parquet", "scores")
        assert set(curves.column("lens").to_pylist()) == {lens}
        assert curves.column_names[-1] == "lens"  # beside the old columns, their order kept
        written = json.loads((out / "s.json").read_text())
        assert written["lens"] == lens
        outputs[len(outputs)] = (written.get("translators_in_sample", "absent"), summary)
    assert outputs[0][0] == "absent"  # the logit lens has no translators
    in_sample, summary = outputs[1]
    assert in_sample is True and summary["n_documents"] == 2
    assert any(
        "trained on the calibration documents of workload 'work'" in w for w in summary["warnings"]
    )
    assert [outputs[k][0] for k in (2, 3, 4, 5)] == [False, False, None, None]
    assert not any("trained" in w for k in (2, 3) for w in outputs[k][1]["warnings"])
    assert any("published one (/lenses/gpt2)" in w for w in outputs[4][1]["warnings"])
    assert any("training documents are unknown" in w for w in outputs[5][1]["warnings"])
    # the numbers do not depend on the flag: only the lens column and warnings differ
    assert outputs[1][1]["headline"] == outputs[2][1]["headline"]


def _info_file(tmp_path, info) -> Path:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(info))
    return path


def check_cost_arrays() -> shards.LensArrays:
    """Six tokens in documents a, b; over layers 1..4 the lens top-1 is 9, 3, 3, 3 (final 3):
    maxprob 0.1, 0.9, 0.9, 0.9 (confident from layer 2), cos_prev 0.1, 0.1, 0.9, 0.9
    (settled from layer 3)."""
    top1 = np.repeat(np.array([9, 9, 3, 3, 3], np.int32)[:, None], 6, axis=1)
    maxprob = np.repeat(np.array([0, 0.1, 0.9, 0.9, 0.9], np.float32)[:, None], 6, axis=1)
    cos_prev = np.repeat(np.array([np.nan, 0.1, 0.1, 0.9, 0.9], np.float32)[:, None], 6, axis=1)
    return shards.LensArrays(
        layers=np.arange(5),
        top1=top1,
        maxprob=maxprob,
        margin=maxprob / 2,
        entropy=1 - maxprob,
        kl_to_final=np.zeros(top1.shape, np.float32),
        cos_prev=cos_prev,
        gold=np.full(6, 3, np.int32),
        doc=np.repeat(np.arange(2), 3),
        doc_ids=["a", "b"],
    )


def test_best_net_flop_measure_is_not_the_layer_savings_measure_hand_computed():
    """L = 4, layers 10, 20, 30, 40 FLOPs, head 40 (full = 140), cosine 0.5, K/V 1..4;
    checks at layers 1, 2, 3. At 99% consistency maxprob exits at layer 2 (S = 0.5) and
    pays a head check at layer 1: 30 + 40 + 40 + (3 + 4) = 117 -> 1 - 117/140; cos_prev
    exits at layer 3 (S = 0.25) and pays three cosines: 60 + 1.5 + 40 + 4 = 105.5 ->
    1 - 105.5/140. Layer savings pick maxprob; net FLOP savings pick cos_prev."""
    model = flops.FlopModel(
        (10.0, 20.0, 30.0, 40.0), 40.0, state_kv=(1.0, 2.0, 3.0, 4.0), cosine=0.5
    )
    assert model.full == 140
    arrays = check_cost_arrays()
    docs = score.document_split(arrays, 0.5, bootstrap=10, seed=0)
    agree, correct = score.agreement_masks(arrays)
    setting = params(check_every=1, min_exit_layer=1, state_cost="kv", bootstrap=10)
    result = score.exit_policies(arrays, agree[1:], correct[1:], docs, model, setting)
    assert result.calibration_net_flop["0.99"]["maxprob"] == pytest.approx(1 - 117 / 140)
    assert result.calibration_net_flop["0.99"]["cos_prev"] == pytest.approx(1 - 105.5 / 140)
    oracle = score.oracle_exits(agree[1:], correct[1:], docs, model)
    headline, best = score.assemble_headline(oracle, result, [0.99, 0.95])
    assert best["0.99"] == "maxprob" and best["0.95"] == "maxprob"
    assert headline["savings_at_99"]["estimate"] == pytest.approx(0.5)
    assert headline["net_flop_savings_at_99"]["estimate"] == pytest.approx(1 - 117 / 140)
    for suffix in ("99", "95"):
        assert headline[f"best_measure_net_flop_{suffix}"] == "cos_prev"
        best_flop = headline[f"best_net_flop_savings_at_{suffix}"]
        assert best_flop["estimate"] == pytest.approx(1 - 105.5 / 140)
        assert best_flop == result.policies["cos_prev"][f"0.{suffix}"]["net_flop_savings"]
    # without a FLOP model there is no net FLOP number and no measure behind it
    bare = score.exit_policies(arrays, agree[1:], correct[1:], docs, None, setting)
    headline, _ = score.assemble_headline(oracle, bare, [0.99, 0.95])
    assert headline["best_measure_net_flop_99"] is None
    assert math.isnan(headline["best_net_flop_savings_at_99"]["estimate"])


def test_best_net_flop_measure_is_chosen_on_calibration_not_heldout():
    """Calibration net FLOP savings pick the measure (ties: the earlier of MEASURES), even
    where the held-out numbers would rank the measures the other way; a measure whose
    calibrated policy misses the target (NaN) is never picked."""
    ci = {"estimate": 0.1, "ci_low": 0.0, "ci_high": 0.2}
    oracle = score.OracleExits(
        np.ones(1), np.ones(1), np.zeros(2), np.zeros(2), {"oracle_savings": ci}, None
    )
    calibration = {t: {m: (0.2, 0.99) for m in metrics.MEASURES} for t in ("0.99", "0.95")}
    cal_flop = {
        "0.99": {m: -1.0 for m in metrics.MEASURES}
        | {"entropy": 0.3, "cos_prev": 0.3, "pabee": math.nan},
        "0.95": {m: -1.0 for m in metrics.MEASURES} | {"pabee": 0.1},
    }
    policies = score.ExitPolicies(
        policies={  # held-out: pabee best, then the later measures
            m: {
                t: {
                    "savings": {"estimate": 0.0},
                    "net_flop_savings": {"estimate": 0.9 if m == "pabee" else i / 10},
                }
                for t in calibration
            }
            for i, m in enumerate(metrics.MEASURES)
        },
        sweeps={},
        auc={m: {"heldout": ci, "calibration": 0.5} for m in metrics.MEASURES},
        calibration=calibration,
        calibration_net_flop=cal_flop,
    )
    headline, best = score.assemble_headline(oracle, policies, [0.99, 0.95])
    assert best["0.99"] == "maxprob"
    assert headline["best_measure_net_flop_99"] == "entropy"  # ties with cos_prev: earlier
    assert headline["best_net_flop_savings_at_99"] == {"estimate": 0.2}
    assert headline["best_measure_net_flop_95"] == "pabee"
    assert headline["best_net_flop_savings_at_95"] == {"estimate": 0.9}


def test_score_json_carries_the_best_net_flop_headline(tmp_path):
    paths, tokens, info = hand_case(tmp_path)
    _, summary = score.score_lens(paths, tokens, info, params(bootstrap=20), seed=0)
    clean = score.validate_headline(summary)
    head = clean["headline"]
    measure = head["best_measure_net_flop_99"]
    assert measure in metrics.MEASURES
    assert (
        head["best_net_flop_savings_at_99"]
        == clean["policies"][measure]["0.99"]["net_flop_savings"]
    )
    # calibration-chosen: it beats every measure's calibration net FLOP savings at 99%
    cal = {m: clean["policies"][m]["0.99"]["calibration"] for m in metrics.MEASURES}
    assert cal[measure]["net_flop_savings"] == max(c["net_flop_savings"] for c in cal.values())
    sums = clean["document_sums"]["metrics"]["best_net_flop_savings_at_99"]
    assert sums["split"] == "heldout"
    ratio = sum(sums["numerator"]) / sum(sums["denominator"])
    assert ratio == pytest.approx(head["best_net_flop_savings_at_99"]["estimate"])
