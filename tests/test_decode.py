"""Realised decoding (exitbench.decode): full, early exit and self-speculative generation.

Tiny random models built from configs (float32, CPU): a dense (Llama, GPT-2), an
MoE (Mixtral) and an SSM (Mamba2). Each claim is checked against an independent
computation: ``model.generate``, the lens statistics the extract stage writes to
shards with ``metrics.exit_layer``, a truncated model, and a run that never drafted.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from tiny_configs import CASES
from transformers import AutoModelForCausalLM

from exitbench import decode, metrics
from exitbench.aggregate import _typed, _with_decode_columns
from exitbench.decode import BlockRunner, DecodeError, ExitPolicy
from exitbench.extract import reduce_layers
from exitbench.lens import LogitLens
from exitbench.tables import read_table, write_table

KINDS = ("llama", "gpt2", "mixtral", "mamba2")
PROMPT = [5, 17, 42, 9, 77, 31, 8]
N_NEW = 12
DAMP = 0.5


def _damp(model: torch.nn.Module) -> torch.nn.Module:
    """Shrink what each block adds to the residual stream, so inner layers often agree with
    the last (random tiny models otherwise give drafts that are almost never accepted)."""
    for block in decode.decoder_blocks(model):
        for name, module in block.named_modules():
            if name.split(".")[-1] in ("o_proj", "down_proj", "c_proj", "out_proj", "w2"):
                if isinstance(module, torch.nn.Linear):
                    module.weight.data.mul_(DAMP)
        for name, parameter in block.named_parameters():
            if "experts" in name and ("down" in name or "w2" in name):
                parameter.data.mul_(DAMP)
    return model


@pytest.fixture(scope="module")
def models():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch-1 steps of tiny models: threads only add overhead
    out = {}
    for kind in KINDS:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(CASES[kind]()).eval().requires_grad_(False)
        out[kind] = _damp(model)
    yield out
    torch.set_num_threads(threads)


def _full(model, prompt=PROMPT, n=N_NEW):
    return decode.full_generate(model, prompt, n).tokens


def _lens_top1(model, sequence):
    """Per layer l = 1..L the lens top-1 at every position of ``sequence`` (no cache)."""
    lens = LogitLens.from_model(model)
    with torch.no_grad():
        states = lens.forward_hidden_states(torch.tensor([sequence]))
        return {
            layer: lens.decode(lens.hidden_state(states, layer), layer)[0].argmax(-1).tolist()
            for layer in range(1, lens.num_layers + 1)
        }


@pytest.mark.parametrize("kind", KINDS)
def test_full_equals_generate(models, kind):
    model = models[kind]
    generated = model.generate(
        torch.tensor([PROMPT]),
        max_new_tokens=N_NEW,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )[0, len(PROMPT) :].tolist()
    assert _full(model) == generated


@pytest.mark.parametrize("kind", ("llama", "mixtral", "mamba2"))
def test_self_speculative_is_lossless_and_counts_passes(models, kind):
    model = models[kind]
    runner = BlockRunner(model)
    reference = _full(model)
    top1 = _lens_top1(model, PROMPT + reference)
    L = runner.num_layers
    accepted_any = rejected_any = False
    for k in range(1, L):
        # agreement of layer k with the final layer at the positions predicting new tokens
        agree = [top1[k][p] == top1[L][p] for p in range(len(PROMPT) - 1, len(PROMPT) - 1 + N_NEW)]
        for gamma in (1, 3):
            gen = decode.self_speculative_generate(runner, PROMPT, N_NEW, k, gamma)
            assert gen.tokens == reference, (k, gamma)
            passes, drafted, accepted = decode.speculative_passes(agree, N_NEW, gamma)
            assert (gen.verification_passes, gen.drafted_tokens, gen.accepted_tokens) == (
                passes,
                drafted,
                accepted,
            ), (k, gamma)
            accepted_any |= accepted > 0
            rejected_any |= accepted < drafted
    assert accepted_any and rejected_any  # both branches of verification were exercised


def test_speculative_passes_by_hand():
    # gamma 2, agreements T T F T F F: round 1 drafts 2, accepts 2 (+1 full token); round 2 at
    # position 3 drafts 2: T F -> 1 (+1); round 3 at position 5: g = min(2, 6 - 5 - 1) = 0
    assert decode.speculative_passes([True, True, False, True, False, False], 6, 2) == (3, 4, 3)
    # nothing accepted: one token per round, drafts shrink as the end nears (3, 2, 1, 0)
    assert decode.speculative_passes([False] * 4, 4, 3) == (4, 6, 0)


@pytest.mark.parametrize("kind", ("llama", "mixtral", "mamba2"))
@pytest.mark.parametrize("strategy", decode.STRATEGIES)
def test_early_exit_never_exiting_equals_full_with_zero_savings(models, kind, strategy):
    model = models[kind]
    runner = BlockRunner(model)
    costs = decode.model_costs(model.config.to_dict(), len(PROMPT) + N_NEW)
    full = decode.full_generate(model, PROMPT, N_NEW, costs)
    for threshold in (None, 2.0):  # maxprob never reaches 2
        policy = ExitPolicy("maxprob", threshold)
        gen = decode.early_exit_generate(runner, PROMPT, N_NEW, policy, strategy, costs)
        assert gen.tokens == full.tokens
        assert gen.exit_layers == [runner.num_layers] * N_NEW
        assert gen.blocks_executed == full.blocks_executed == N_NEW * runner.num_layers
        assert gen.recomputed_blocks == gen.propagated_blocks == 0
        # the checks still cost their heads: FLOPs are full's plus (L - 1) checks per token
        assert gen.flops == pytest.approx(full.flops + N_NEW * (runner.num_layers - 1) * costs.head)


@pytest.mark.parametrize("kind", ("llama", "mixtral", "mamba2"))
@pytest.mark.parametrize("measure", ("maxprob", "entropy", "patience_maxprob", "pabee", "cos_prev"))
def test_recompute_teacher_forced_exits_equal_the_lens_shard(models, kind, measure):
    """States under recompute are exact, so each token's exit layer is the one metrics.exit_layer
    computes from the extract stage's lens statistics for the same threshold."""
    model = models[kind]
    torch.manual_seed(1)
    sequence = torch.randint(3, 120, (24,)).tolist()
    prompt, forced = sequence[:6], sequence[6:]
    lens = LogitLens.from_model(model)
    ids = torch.tensor([sequence])
    stats = reduce_layers(lens, ids, torch.ones_like(ids), 2, 64)
    layers = np.asarray(stats["layer"])
    L = lens.num_layers
    n = len(sequence)

    def table(column):  # [L, positions]
        return np.asarray(stats[column])[layers >= 1].reshape(n, L).T

    source = {"entropy": "entropy", "pabee": "top1", "cos_prev": "cos_prev"}.get(measure, "maxprob")
    values, patience = table(source), 2
    m = metrics.measure_values(measure, values, values, values, values, patience, top1=values)
    inner = m[:-1, len(prompt) - 1 : -1]
    # a threshold some tokens meet and some do not (PABEE: the top-1 held for one more check;
    # cos_prev: one that some tokens meet at layer 1, which Mamba2 can exit at too)
    threshold = float(np.median(inner[np.isfinite(inner)]))
    if measure == "pabee":
        threshold = 1.0
    elif measure == "cos_prev":
        threshold = float(np.median(inner[0]))
    shown = -threshold if measure == "entropy" else threshold
    expected = metrics.exit_layer(m[:, len(prompt) - 1 : -1], np.float32(threshold))
    runner = BlockRunner(model)
    gen = decode.early_exit_generate(
        runner,
        prompt,
        len(forced),
        ExitPolicy(measure, shown, patience=patience),
        "recompute",
        forced=forced,
    )
    assert gen.exit_layers == expected.tolist()
    assert 1 < len(set(gen.exit_layers))  # exits at several layers, L included
    assert gen.recomputed_blocks > 0
    if measure == "cos_prev":  # layer 1 has a cosine for every family (Mamba2: with h_0)
        assert 1 in gen.exit_layers and np.isfinite(inner[0]).all()


@pytest.mark.parametrize("kind", ("llama", "mamba2"))
def test_decode_cosines_equal_the_lens_shard(models, kind, monkeypatch):
    """Every cosine early-exit decoding checks (layers 1..L-1, a threshold never met) equals
    the extract stage's cos_prev at that layer and position: same states, same definition
    (Mamba2's layer 1 against the embedding output). Decoding never checks layer L: an exit
    there is no exit."""
    model = models[kind]
    torch.manual_seed(2)
    sequence = torch.randint(3, 120, (16,)).tolist()
    prompt, forced = sequence[:6], sequence[6:]
    lens = LogitLens.from_model(model)
    ids = torch.tensor([sequence])
    stats = reduce_layers(lens, ids, torch.ones_like(ids), 2, 64)
    L, n = lens.num_layers, len(sequence)
    shard = np.asarray(stats["cos_prev"])[np.asarray(stats["layer"]) >= 1].reshape(n, L).T
    seen = []
    cosine_prev = decode.cosine_prev

    def record(hidden, previous):
        seen.append(cosine_prev(hidden, previous))
        return seen[-1]

    monkeypatch.setattr(decode, "cosine_prev", record)
    policy = ExitPolicy("cos_prev", 2.0)  # no cosine reaches 2: every layer 1..L-1 is checked
    gen = decode.early_exit_generate(
        BlockRunner(model), prompt, len(forced), policy, "recompute", forced=forced
    )
    assert gen.exit_layers == [L] * len(forced)
    got = np.asarray(seen).reshape(len(forced), L - 1).T
    expected = shard[: L - 1, len(prompt) - 1 : -1]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ("llama", "mamba2"))
def test_propagate_advances_every_blocks_state_each_token(models, kind):
    """propagate gives every skipped block (attention K/V, SSM state) the exited position at
    once; recompute leaves them behind until a later token needs them, then catches up."""
    model = models[kind]
    policy = ExitPolicy("maxprob", -1.0, exit_layers=(1,))  # every token exits at layer 1
    runner = BlockRunner(model)
    gen = decode.early_exit_generate(runner, PROMPT, 5, policy, "propagate")
    positions = len(PROMPT) - 1 + 5
    assert runner.lengths[1:] == [positions] * runner.num_layers
    assert gen.propagated_blocks == 5 * (runner.num_layers - 1)
    gen = decode.early_exit_generate(runner, PROMPT, 5, policy, "recompute")
    assert runner.lengths[1] == positions
    assert runner.lengths[2:] == [len(PROMPT) - 1] * (runner.num_layers - 1)
    assert gen.recomputed_blocks == 0  # layer 1 never lags; no later token needed layer 2


@pytest.mark.parametrize("kind", ("llama", "gpt2", "mixtral", "mamba2"))
@pytest.mark.parametrize("strategy", decode.STRATEGIES)
def test_exits_only_at_k_equal_the_truncated_model(models, kind, strategy):
    model = models[kind]
    runner = BlockRunner(model)
    for k in range(1, runner.num_layers):
        policy = ExitPolicy("maxprob", -1.0, exit_layers=(k,))
        gen = decode.early_exit_generate(runner, PROMPT, N_NEW, policy, strategy)
        assert gen.tokens == decode.truncated_generate(model, PROMPT, N_NEW, k)
        assert gen.exit_layers == [k] * N_NEW


def _tensors(obj, seen=None) -> list[torch.Tensor]:
    """Every tensor reachable from a cache object, in attribute order."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        return [obj]
    if id(obj) in seen or obj is None or isinstance(obj, (int, float, str, bool)):
        return []
    seen.add(id(obj))
    if isinstance(obj, dict):
        return [t for key in sorted(obj, key=str) for t in _tensors(obj[key], seen)]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item, seen)]
    if hasattr(obj, "__dict__"):
        return [t for key in sorted(vars(obj)) for t in _tensors(vars(obj)[key], seen)]
    return []


@pytest.mark.parametrize("kind", ("llama", "mixtral", "mamba2"))
def test_rollback_leaves_the_cache_of_a_run_that_never_drafted(models, kind):
    model = models[kind]
    runner = BlockRunner(model)
    gen = decode.self_speculative_generate(runner, PROMPT, N_NEW, 1, 4)
    assert gen.accepted_tokens < gen.drafted_tokens  # some drafts were rejected
    committed = PROMPT + gen.tokens[:-1]  # the last emitted token is not fed yet
    plain = BlockRunner(model)
    plain.run_all(torch.tensor([committed[: len(PROMPT) - 1]]))
    for token in committed[len(PROMPT) - 1 :]:  # one token at a time, never drafting
        plain.run_all(torch.tensor([[token]]))
    assert runner.lengths == plain.lengths
    for layer in range(1, runner.num_layers + 1):
        ours, theirs = _tensors(runner.caches[layer]), _tensors(plain.caches[layer])
        assert len(ours) == len(theirs) > 0
        for a, b in zip(ours, theirs, strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- bad input


def test_bad_settings_name_the_config_key(models):
    runner = BlockRunner(models["llama"])
    L = runner.num_layers
    for k in (0, L):
        with pytest.raises(DecodeError, match=r"'decode\.k'"):
            decode.self_speculative_generate(runner, PROMPT, 4, k, 2)
    with pytest.raises(DecodeError, match=r"'decode\.gamma'"):
        decode.self_speculative_generate(runner, PROMPT, 4, 1, 0)
    with pytest.raises(DecodeError, match=r"'decode\.state_strategy'"):
        decode.variants({"state_strategy": "skip"}, L)
    with pytest.raises(DecodeError, match=r"decode\.prompt_tokens \+ decode\.new_tokens = 70"):
        decode.full_generate(models["llama"], list(range(3, 63)), 10)  # 64 positions


def test_hybrid_models_stop_naming_the_model_type():
    model = AutoModelForCausalLM.from_config(CASES["jamba"]())
    with pytest.raises(DecodeError, match="model_type 'jamba'.*hybrids"):
        BlockRunner(model)


def test_score_file_without_calibrated_policy_names_the_target(tmp_path):
    summary = {"best_measure": {"0.95": "maxprob"}, "policies": {}, "params": {}, "num_layers": 3}
    with pytest.raises(
        DecodeError, match=r"consistency target 0\.99 \(config key 'decode\.target'"
    ):
        decode.calibrated_policy(summary, 0.99, "x.json")


# ---------------------------------------------------------------- the stage, file to file


def _score_summary(num_layers: int, threshold: float | None) -> dict:
    ci = {"estimate": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    return {
        "num_layers": num_layers,
        "best_measure": {"0.99": "maxprob"},
        "policies": {"maxprob": {"0.99": {"threshold": threshold}}},
        "params": {"patience": 2, "check_every": 1, "min_exit_layer": 1},
        "headline": {"oracle_savings": ci, "savings_at_99": ci, "net_flop_savings_at_99": ci},
    }


def _stage_inputs(tmp_path, num_layers: int, threshold: float | None = 0.01):
    docs = [f"doc{i}" for i in range(10)]
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "seq_id": pa.array(range(10), pa.int64()),
            "doc_id": docs,
            "input_ids": [rng.integers(3, 300, 20).tolist() for _ in docs],
            "n_tokens": pa.array([20] * 10, pa.int32()),
        }
    )
    tokens = write_table(table, tmp_path / "tokens.parquet", "tokens")
    score_json = tmp_path / "score.json"
    score_json.write_text(json.dumps(_score_summary(num_layers, threshold)))
    curves = {"layer": list(range(num_layers + 1)), "agreement": [0.1 * i for i in range(4)]}
    scores = tmp_path / "scores.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table(curves), scores)  # only the two columns decode reads
    return tokens, score_json, scores, docs


def test_decode_files_writes_both_outputs_from_heldout_prompts(
    tiny_model_dirs, tmp_path, monkeypatch
):
    monkeypatch.setattr(decode, "_read_agreement", lambda path: {1: 0.5, 2: 0.7})
    tokens, score_json, scores, docs = _stage_inputs(tmp_path, 3)
    params = {
        "prompts": 3,
        "prompt_tokens": 6,
        "new_tokens": 5,
        "methods": ["full", "early_exit", "self_speculative"],
        "state_strategy": ["recompute", "propagate"],
        "target": 0.99,
        "k": [1, 2],
        "gamma": [2],
    }
    out_parquet, out_json = tmp_path / "d.parquet", tmp_path / "d.json"
    summary = decode.decode_files(
        "tiny",
        {"path": str(tiny_model_dirs["llama"])},
        tokens,
        score_json,
        scores,
        out_parquet,
        out_json,
        params,
        calibration_fraction=0.5,
        bootstrap=50,
        seed=0,
        workload="w",
    )
    rows = read_table(out_parquet, "decode").to_pylist()
    variants = ["full", "early_exit/recompute", "early_exit/propagate"]
    variants += ["self_speculative/k=1/gamma=2", "self_speculative/k=2/gamma=2"]
    assert [r["variant"] for r in rows] == variants * 3
    heldout = set(np.asarray(docs)[~metrics.split_documents(docs, 0.5, 0)])
    assert {r["doc_id"] for r in rows} <= heldout and len({r["doc_id"] for r in rows}) == 3
    for r in rows:
        if r["method"] != "early_exit":
            assert r["agreement"] == 1.0 and r["first_divergence"] is None
        assert len(r["prompt_ids"]) == 6 and len(r["generated_ids"]) == 5
    assert json.loads(out_json.read_text()) == summary
    assert summary["n_prompts"] == 3 and summary["few_prompts"] is True
    assert summary["warnings"] == [decode.prompt_warnings(3)[0]]
    assert "only 3 prompt(s) (fewer than 20)" in summary["warnings"][0]
    assert decode.prompt_warnings(20) == []
    assert set(summary["realised"]) == set(variants)
    assert summary["realised"]["full"]["block_savings"]["estimate"] == 0
    predicted = summary["predicted"]["self_speculative"]["self_speculative/k=2/gamma=2"]
    assert predicted["tokens_per_pass"] == pytest.approx((1 - 0.7**3) / (1 - 0.7))
    # realised and predicted speed-ups under one cost model: a pass costs c_L, a draft c_k
    layer, head = summary["flops"]["per_layer"], summary["flops"]["head"]
    c_k, c_full = sum(layer[:2]) + head, sum(layer) + head
    assert (
        predicted["pass_cost_speedup"]
        == predicted["flop_speedup"]
        == pytest.approx(predicted["tokens_per_pass"] * c_full / (2 * c_k + c_full))
    )
    spec = [r for r in rows if r["variant"] == "self_speculative/k=2/gamma=2"]
    spent = sum(r["drafted_tokens"] * c_k + r["verification_passes"] * c_full for r in spec)
    realised_speedup = summary["realised"]["self_speculative/k=2/gamma=2"]["pass_cost_speedup"]
    assert realised_speedup["estimate"] == pytest.approx(
        sum(r["n_new_tokens"] for r in spec) * c_full / spent
    )
    assert realised_speedup["ci_low"] <= realised_speedup["estimate"] <= realised_speedup["ci_high"]
    # the study summary's decode_* columns come from this JSON
    columns = decode.summary_columns(out_json)
    realised = summary["realised"]
    assert (
        columns["decode_recompute_agreement"]
        == realised["early_exit/recompute"]["agreement"]["estimate"]
    )
    best = columns["decode_speculative_variant"]
    assert columns["decode_speculative_flop_speedup"] == pytest.approx(
        1 / (1 - realised[best]["flop_savings"]["estimate"])
    )
    assert (
        columns["decode_speculative_predicted_flop_speedup"]
        == (summary["predicted"]["self_speculative"][best]["flop_speedup"])
    )
    frame = _typed(pd.DataFrame({"model": ["tiny", "other"], "workload": ["w", "w"]}))
    joined = _with_decode_columns(frame, {("tiny", "w"): out_json})
    assert joined.loc[0, "decode_propagate_flop_savings"] == pytest.approx(
        realised["early_exit/propagate"]["flop_savings"]["estimate"]
    )
    assert pd.isna(joined.loc[1, "decode_propagate_flop_savings"])  # no decode run: null


def test_bad_stage_input_leaves_no_output(tiny_model_dirs, tmp_path):
    tokens, score_json, scores, _ = _stage_inputs(tmp_path, 3)
    params = {"prompts": 2, "prompt_tokens": 6, "new_tokens": 4, "k": [3], "gamma": [2]}
    out_parquet, out_json = tmp_path / "d.parquet", tmp_path / "d.json"
    with pytest.raises(DecodeError, match=r"'decode\.k': 3 is outside 1\.\.L-1 = 1\.\.2"):
        decode.decode_files(
            "tiny",
            {"path": str(tiny_model_dirs["llama"])},
            tokens,
            score_json,
            scores,
            out_parquet,
            out_json,
            params,
            calibration_fraction=0.5,
            bootstrap=10,
            seed=0,
            workload="w",
        )
    assert not out_parquet.exists() and not out_json.exists()
    assert not list(tmp_path.glob(".d.*"))


@pytest.mark.parametrize("kind", sorted(CASES))
def test_every_table_type_decodes_exactly_or_is_refused(kind):
    """Every type of the architecture table either decodes with all three methods (full ==
    generate, an early exit that never exits == full, self-speculative == full) or stops
    before decoding with a DecodeError naming its model type (hybrids, mixed layer types)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CASES[kind]()).eval()
    model_type = model.config.model_type
    prompt, new = [5, 17, 42, 9, 77, 31], 6
    if decode.decode_refusal(model_type):
        with pytest.raises(DecodeError, match=f"model_type {model_type!r}"):
            BlockRunner(model)
        return
    full = decode.full_generate(model, prompt, new).tokens
    with torch.no_grad():
        generated = model.generate(
            torch.tensor([prompt]), max_new_tokens=new, do_sample=False, pad_token_id=0
        )
    assert full == generated[0, len(prompt) :].tolist()
    runner = BlockRunner(model)
    never = ExitPolicy("maxprob", None)
    assert decode.early_exit_generate(runner, prompt, new, never, "recompute").tokens == full
    assert decode.self_speculative_generate(runner, prompt, new, 1, 2).tokens == full


def test_gemma_and_mixed_layer_types_are_refused():
    for model_type in ("gemma2", "gemma3", "gemma3_text"):
        assert "interleaves layer types" in decode.decode_refusal(model_type)
    config = CASES["qwen2"]()
    config.use_sliding_window, config.sliding_window, config.max_window_layers = True, 4, 1
    config.layer_types = None
    config.__post_init__() if hasattr(config, "__post_init__") else None
    model = AutoModelForCausalLM.from_config(config).eval()
    kinds = sorted(set(model.config.layer_types))
    assert kinds == ["full_attention", "sliding_attention"], kinds
    with pytest.raises(DecodeError, match="'qwen2' interleaves layer types"):
        BlockRunner(model)


def test_full_with_a_one_token_prompt_equals_generate():
    """full fills the cache with the prompt but its last token before its clock starts (as the
    other methods do); a one-token prompt has nothing to fill."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CASES["llama"]()).eval()
    with torch.no_grad():
        generated = model.generate(
            torch.tensor([[7]]), max_new_tokens=5, do_sample=False, pad_token_id=0
        )
    assert decode.full_generate(model, [7], 5).tokens == generated[0, 1:].tolist()
