"""Extraction: lens rows against the model's own logits and a full-softmax reference."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from exitbench import extract, models, tables
from exitbench.extract import NonFiniteLogitsError
from exitbench.lens import LogitLens
from exitbench.tokens import TokenizeError

KINDS = ["llama", "gpt2", "mamba2"]
LENGTHS = [12, 7, 12, 1, 9, 5]  # seq_id 0..5; a 1-token window has no gold at all
TOP_K = 4


@pytest.fixture(scope="module")
def tokens_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    windows = [rng.integers(0, 384, size=n).astype(np.int32) for n in LENGTHS]
    table = pa.table(
        {
            "seq_id": np.arange(len(windows), dtype=np.int64),
            "doc_id": [f"doc{i // 2}" for i in range(len(windows))],
            "input_ids": [w.tolist() for w in windows],
            "n_tokens": np.asarray(LENGTHS, dtype=np.int32),
        }
    )
    return tables.write_table(table, tmp_path_factory.mktemp("tokens") / "w.parquet", "tokens")


def windows_of(tokens_path) -> list[list[int]]:
    return tables.read_table(tokens_path, "tokens")["input_ids"].to_pylist()


def load(tiny_model_dirs, kind):
    model, _ = models.load_model(kind, {"path": str(tiny_model_dirs[kind])}, device="cpu")
    return model, LogitLens.from_model(model)


def run_shard(tiny_model_dirs, kind, tokens_path, out, shard=0, **overrides):
    options = dict(shard_sequences=4, top_k=TOP_K, batch_size=3, token_chunk=5, device="cpu")
    options.update(overrides)
    return extract.extract_shard(
        kind, {"path": str(tiny_model_dirs[kind])}, tokens_path, out, shard, **options
    )


@pytest.mark.parametrize("kind", KINDS)
def test_shard_rows_and_final_layer(tiny_model_dirs, tokens_path, tmp_path, kind):
    model, lens = load(tiny_model_dirs, kind)
    layers = list(lens.layer_numbers)
    for shard, seq_ids in [(0, [0, 1, 2, 3]), (1, [4, 5])]:
        out = tmp_path / f"shard-{shard}.parquet"
        stats = run_shard(tiny_model_dirs, kind, tokens_path, out, shard)
        table = tables.read_table(out, "lens").to_pandas()
        n_tokens = sum(LENGTHS[i] for i in seq_ids)
        assert len(table) == n_tokens * len(layers) == stats["rows"]
        assert stats["windows"] == len(seq_ids) and stats["tokens"] == n_tokens
        keys = table[["seq_id", "pos", "layer"]].to_records(index=False).tolist()
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert sorted(table["seq_id"].unique()) == seq_ids
        assert sorted(table["layer"].unique()) == layers

        final = table[table["layer"] == lens.num_layers]
        windows = windows_of(tokens_path)
        for seq_id in seq_ids:
            ids = torch.tensor([windows[seq_id]])
            with torch.no_grad():
                logits = model(ids).logits[0].float()
            rows = final[final["seq_id"] == seq_id].sort_values("pos")
            assert rows["top1"].tolist() == logits.argmax(-1).tolist()
            logp = torch.log_softmax(logits, -1)
            top = torch.topk(logp, TOP_K, dim=-1)
            np.testing.assert_array_equal(np.stack(rows["topk_ids"]), top.indices.numpy())
            np.testing.assert_allclose(np.stack(rows["topk_logprobs"]), top.values, atol=1e-5)
            gold = rows["gold"].tolist()
            assert gold[:-1] == windows[seq_id][1:] and pd_isna(gold[-1])
        assert (final["kl_to_final"] == 0).all()
        np.testing.assert_allclose(
            final["logprob_final_top1"], np.log(final["maxprob"]), rtol=0, atol=1e-6
        )
        # null only at layer 0; the Mamba family (layers 1..L) has a cosine at every layer
        assert (table["cos_prev"].isna() == (table["layer"] == 0)).all()


def pd_isna(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def reference(lens, ids, layer):
    """Full-softmax lens statistics of one window at ``layer`` (float64, no chunking)."""
    with torch.no_grad():
        states = lens.forward_hidden_states(ids, torch.ones_like(ids))
        logits = lens.decode(lens.hidden_state(states, layer), layer)[0].double()
        final = lens.decode(lens.hidden_state(states, lens.num_layers), lens.num_layers)[0].double()
        hidden = lens.hidden_state(states, layer)[0].double()
        previous = lens.hidden_state(states, layer - 1)[0].double()
    p, logp = torch.softmax(logits, -1), torch.log_softmax(logits, -1)
    p_final, logp_final = torch.softmax(final, -1), torch.log_softmax(final, -1)
    top2 = torch.topk(p, 2, dim=-1).values
    final_top1 = final.argmax(-1)
    gold = ids[0, 1:]
    return {
        "top1": logits.argmax(-1).numpy(),
        "maxprob": p.max(-1).values.numpy(),
        "margin": (top2[:, 0] - top2[:, 1]).numpy(),
        "entropy": -(p * logp).sum(-1).numpy(),
        "kl_to_final": (p_final * (logp_final - logp)).sum(-1).numpy(),
        "logprob_final_top1": logp.gather(1, final_top1[:, None])[:, 0].numpy(),
        "logprob_gold": logp[:-1].gather(1, gold[:, None])[:, 0].numpy(),
        "cos_prev": torch.nn.functional.cosine_similarity(hidden, previous, dim=-1).numpy(),
    }


@pytest.mark.parametrize("kind", KINDS)
def test_inner_layer_matches_full_softmax(tiny_model_dirs, tokens_path, kind):
    _, lens = load(tiny_model_dirs, kind)
    ids = torch.tensor([windows_of(tokens_path)[0]])
    result = extract.reduce_layers(lens, ids, torch.ones_like(ids), top_k=3, token_chunk=5)
    layer = lens.layer_numbers[len(lens.layer_numbers) // 2]
    expected = reference(lens, ids, layer)
    mine = {name: values[result["layer"] == layer] for name, values in result.items()}
    np.testing.assert_array_equal(mine["top1"], expected["top1"])
    for name in ("maxprob", "margin", "entropy", "kl_to_final", "logprob_final_top1", "cos_prev"):
        np.testing.assert_allclose(mine[name], expected[name], rtol=1e-5, atol=2e-6, err_msg=name)
    np.testing.assert_allclose(mine["logprob_gold"][:-1], expected["logprob_gold"], atol=2e-6)
    assert np.isnan(mine["logprob_gold"][-1]) and mine["gold"][-1] == -1
    assert (mine["kl_to_final"] > 0).all()


@pytest.mark.parametrize("kind", KINDS)
def test_right_padding_does_not_change_results(tiny_model_dirs, tokens_path, kind):
    _, lens = load(tiny_model_dirs, kind)
    short, long = windows_of(tokens_path)[1], windows_of(tokens_path)[0]
    ids = torch.tensor([short])
    alone = extract.reduce_layers(lens, ids, torch.ones_like(ids), top_k=3, token_chunk=4)
    padded = torch.zeros((2, len(long)), dtype=torch.long)
    mask = torch.zeros_like(padded)
    padded[0], mask[0] = torch.tensor(long), 1
    padded[1, : len(short)], mask[1, : len(short)] = torch.tensor(short), 1
    batched = extract.reduce_layers(lens, padded, mask, top_k=3, token_chunk=4)
    second = batched["row"] == 1
    assert second.sum() == len(alone["row"])
    for name, values in alone.items():
        if name == "row":
            continue
        other = batched[name][second]
        if values.dtype.kind in "iu":
            np.testing.assert_array_equal(values, other, err_msg=name)
        else:
            np.testing.assert_allclose(values, other, rtol=1e-5, atol=1e-5, err_msg=name)


def test_reruns_are_byte_identical(tiny_model_dirs, tokens_path, tmp_path):
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    run_shard(tiny_model_dirs, "llama", tokens_path, first)
    run_shard(tiny_model_dirs, "llama", tokens_path, second)
    assert first.read_bytes() == second.read_bytes()


def test_batch_size_and_chunk_do_not_change_values(tiny_model_dirs, tokens_path, tmp_path):
    small, large = tmp_path / "a.parquet", tmp_path / "b.parquet"
    run_shard(tiny_model_dirs, "gpt2", tokens_path, small, batch_size=1, token_chunk=3)
    run_shard(tiny_model_dirs, "gpt2", tokens_path, large, batch_size=4, token_chunk=64)
    a, b = tables.read_table(small, "lens"), tables.read_table(large, "lens")
    for name in ("seq_id", "pos", "layer", "top1", "topk_ids", "gold"):
        assert a[name].equals(b[name]), name
    for name in ("maxprob", "entropy", "kl_to_final", "cos_prev"):
        np.testing.assert_allclose(
            a[name].to_numpy(zero_copy_only=False),
            b[name].to_numpy(zero_copy_only=False),
            atol=1e-5,
        )


def test_empty_shard(tiny_model_dirs, tokens_path, tmp_path):
    out = tmp_path / "shard-9.parquet"
    stats = run_shard(tiny_model_dirs, "llama", tokens_path, out, shard=9)
    table = tables.read_table(out, "lens")
    assert table.num_rows == 0 and stats["rows"] == 0
    assert table.schema.equals(tables.load_schema("lens"), check_metadata=False)


def test_nan_logits_name_the_layer(tiny_model_dirs, tokens_path, tmp_path, monkeypatch):
    decode = LogitLens.decode

    def broken(self, hidden, layer):
        logits = decode(self, hidden, layer)
        return logits.fill_(float("nan")) if layer == 2 else logits

    monkeypatch.setattr(LogitLens, "decode", broken)
    out = tmp_path / "shard-0.parquet"
    with pytest.raises(NonFiniteLogitsError, match="layer 2") as err:
        run_shard(tiny_model_dirs, "llama", tokens_path, out)
    assert "'llama'" in str(err.value) and str(out) in str(err.value)
    assert not out.exists()
    # issue 10 item 4: float32 is suggested only to a model that does not run in it
    assert "dtype float32); the model already runs in float32" in str(err.value)
    assert "dtype: float32" not in str(err.value)
    entry = {"path": str(tiny_model_dirs["llama"]), "dtype": "bfloat16"}
    with pytest.raises(NonFiniteLogitsError) as err:
        extract.extract_shard("llama", entry, tokens_path, out, 0, 4, TOP_K, 3, 5, "cpu")
    assert str(err.value).endswith("dtype bfloat16); try models.llama.dtype: float32")


def test_top_k_above_the_vocabulary_warns_once(tiny_model_dirs, tokens_path, tmp_path, caplog):
    out = tmp_path / "shard-1.parquet"
    with caplog.at_level("WARNING", logger="exitbench.extract"):
        run_shard(tiny_model_dirs, "gpt2", tokens_path, out, shard=1, top_k=500, batch_size=1)
    said = [r.getMessage() for r in caplog.records if "top_k" in r.getMessage()]
    assert said == [
        "extract.top_k = 500 is larger than model 'gpt2''s vocabulary of 384: topk_ids and "
        "topk_logprobs hold 384 entries per row"
    ]
    assert len(tables.read_table(out, "lens")["topk_ids"][0].as_py()) == 384


def test_token_ids_beyond_the_vocabulary_name_both_sizes(tiny_model_dirs, tmp_path):
    table = pa.table(
        {
            "seq_id": np.arange(2, dtype=np.int64),
            "doc_id": ["a", "b"],
            "input_ids": [[1, 2, 3], [5, 900, 6]],
            "n_tokens": np.array([3, 3], dtype=np.int32),
        }
    )
    tokens = tables.write_table(table, tmp_path / "t.parquet", "tokens")
    with pytest.raises(TokenizeError) as err:
        run_shard(tiny_model_dirs, "llama", tokens, tmp_path / "shard-0.parquet")
    assert str(err.value).startswith(
        "model 'llama': window seq_id 1 holds token id 900 but the model's vocabulary has 384 ids"
    )


def test_inf_logits_are_caught(tiny_model_dirs, tokens_path):
    _, lens = load(tiny_model_dirs, "gpt2")
    decode = lens.decode

    def one_inf(hidden, layer):
        logits = decode(hidden, layer)
        if layer == 1:
            logits[..., 7] = float("-inf")
        return logits

    lens.decode = one_inf
    ids = torch.tensor([windows_of(tokens_path)[0]])
    with pytest.raises(NonFiniteLogitsError, match="layer 1"):
        extract.reduce_layers(lens, ids, torch.ones_like(ids), top_k=3, token_chunk=5)


@pytest.mark.parametrize("vocab", [50, 4096, 50257])
def test_topk_blockwise_equals_torch_topk(vocab):
    generator = torch.Generator().manual_seed(vocab)
    logits = torch.randn((7, vocab), generator=generator)
    logits[0, -3:] = 100.0 + torch.arange(3.0)  # the top-k in the ragged tail
    logits[1, :5] = 50.0 + torch.arange(5.0)  # all in one block
    expected = torch.topk(logits, 6, dim=-1)
    values, ids = extract.topk_blockwise(logits, 6, block=64)
    assert torch.equal(values, expected.values) and torch.equal(ids, expected.indices)


def test_topk_blockwise_breaks_ties_like_argmax():
    logits = torch.zeros((3, 4096))
    logits[0, [3000, 17, 900]] = 1.0  # max tied in 3 blocks
    logits[1, ::64] = 2.0  # max tied in every block: more than k blocks
    logits[2, 4095] = 1.0  # single max in the last position
    values, ids = extract.topk_blockwise(logits, 5, block=64)
    assert ids[:, 0].tolist() == logits.argmax(-1).tolist() == [17, 0, 4095]
    assert torch.equal(values, torch.topk(logits, 5, dim=-1).values)
    assert sorted(ids[0, :3].tolist()) == [17, 900, 3000]
    for row in range(3):
        assert torch.equal(logits[row, ids[row]], values[row])
        assert len(set(ids[row].tolist())) == 5


def test_out_of_memory_halves_the_batch(
    tiny_model_dirs, tokens_path, tmp_path, monkeypatch, caplog
):
    reference_out, retried_out = tmp_path / "a.parquet", tmp_path / "b.parquet"
    run_shard(tiny_model_dirs, "llama", tokens_path, reference_out, batch_size=1)
    reduce_layers = extract.reduce_layers

    def small_memory(lens, input_ids, *args):
        if input_ids.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return reduce_layers(lens, input_ids, *args)

    monkeypatch.setattr(extract, "reduce_layers", small_memory)
    stats = run_shard(tiny_model_dirs, "llama", tokens_path, retried_out, batch_size=4)
    assert stats["batch_size"] == 1 and "retrying with batch_size=2" in caplog.text
    assert reference_out.read_bytes() == retried_out.read_bytes()


def test_opt_350m_projected_last_state_has_null_cos_prev(tmp_path):
    """OPT-350m's hidden_states[-1] is projected to the head width: cos_prev is null there."""
    from transformers import AutoModelForCausalLM, OPTConfig

    from exitbench.extract import reduce_layers
    from exitbench.lens import LogitLens

    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=64,
        hidden_size=32,
        word_embed_proj_dim=16,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=4,
        max_position_embeddings=32,
        do_layer_norm_before=False,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    lens = LogitLens.from_model(model)
    ids = torch.randint(0, 64, (1, 6))
    result = reduce_layers(lens, ids, torch.ones_like(ids), top_k=3, token_chunk=4)
    final = result["layer"] == lens.num_layers
    assert np.isnan(result["cos_prev"][final]).all()
    inner = (result["layer"] > lens.layer_numbers[0]) & ~final
    assert np.isfinite(result["cos_prev"][inner]).all()
    expected = model(ids).logits[0].argmax(-1).numpy()
    assert (result["top1"][final] == expected).all()


@pytest.mark.parametrize("kind", KINDS)
def test_fused_tiles_equal_the_eager_reduction(tiny_model_dirs, tokens_path, kind, monkeypatch):
    """The vocabulary-tiled online softmax (the CUDA path), run on CPU, equals eager to 1e-5."""
    from exitbench import fused

    monkeypatch.setattr(fused, "MIN_TILE", 1)
    monkeypatch.setattr(fused, "TILE_BYTES", 4 * 16 * 5 * 37)  # 37-entry tiles: 11 with a tail
    assert fused.tile_size(384, 16, 5) == 37
    _, lens = load(tiny_model_dirs, kind)
    windows = windows_of(tokens_path)
    ids = torch.zeros((2, 12), dtype=torch.long)
    mask = torch.zeros_like(ids)
    ids[0], mask[0] = torch.tensor(windows[0]), 1
    ids[1, :7], mask[1, :7] = torch.tensor(windows[1]), 1
    eager = extract.reduce_layers(lens, ids, mask, top_k=3, token_chunk=5, fused=False)
    tiled = extract.reduce_layers(lens, ids, mask, top_k=3, token_chunk=5, fused=True)
    for name in ("row", "pos", "layer", "gold", "top1", "topk_ids"):
        np.testing.assert_array_equal(tiled[name], eager[name], err_msg=name)
    for name in extract.FIELDS[4:]:
        if name in ("topk_ids", "gold"):
            continue
        np.testing.assert_allclose(tiled[name], eager[name], rtol=1e-5, atol=1e-5, err_msg=name)
    final = tiled["layer"] == lens.num_layers
    assert (tiled["kl_to_final"][final] == 0).all() and (tiled["kl_to_final"][~final] > 0).all()


def test_fused_keeps_the_first_index_of_a_tied_maximum(tiny_model_dirs):
    """Ties across tiles: top-1 is the lowest index, as torch.argmax; the rest match topk values."""
    from exitbench import fused

    _, lens = load(tiny_model_dirs, "gpt2")
    logits = torch.zeros((2, 3, 384))
    logits[:, 0, [300, 17, 200]] = 1.0  # tied maximum in three tiles
    logits[:, 1, 383] = 2.0  # the maximum in the ragged last tile
    logits[:, 2, ::50] = 3.0  # tied in every tile
    gold = torch.tensor([5, -1, 383])
    state = fused._State(2, 3, 4, torch.device("cpu"))
    for start in range(0, 384, 50):
        state.update(logits[:, :, start : start + 50], start, gold)
    out = state.finish(gold)
    assert out[0]["top1"].tolist() == logits[0].argmax(-1).tolist() == [17, 383, 0]
    expected = torch.log_softmax(logits[0], -1)
    assert torch.allclose(out[0]["topk_logprobs"], torch.topk(expected, 4).values, atol=1e-6)
    assert torch.allclose(out[0]["logprob_gold"][[0, 2]], expected[[0, 2], [5, 383]], atol=1e-6)
    assert torch.isnan(out[0]["logprob_gold"][1])
    assert torch.allclose(out[0]["logprob_final_top1"], expected[[0, 1, 2], [17, 383, 0]])
    entropy = -(expected.exp() * expected).sum(-1)
    assert torch.allclose(out[1]["entropy"], entropy, atol=1e-6)
    assert (out[1]["kl_to_final"] == 0).all() and (out[0]["kl_to_final"] < 1e-6).all()


def test_chunk_sized_by_memory_budget(tiny_model_dirs, tokens_path):
    """Without token_chunk the chunk holds 128 MiB of float32 logits: chunk * V * 4 bytes."""
    assert [extract.chunk_tokens(v) for v in (32000, 50257, 131072, 262144)] == [
        1048,
        667,
        256,
        128,
    ]
    assert extract.chunk_tokens(384, budget_bytes=4 * 384 * 7) == 7
    _, lens = load(tiny_model_dirs, "llama")
    ids = torch.tensor([windows_of(tokens_path)[0]])
    budget = extract.reduce_layers(lens, ids, torch.ones_like(ids), top_k=3)
    fixed = extract.reduce_layers(lens, ids, torch.ones_like(ids), top_k=3, token_chunk=5)
    np.testing.assert_array_equal(budget["topk_ids"], fixed["topk_ids"])
    np.testing.assert_allclose(budget["entropy"], fixed["entropy"], rtol=1e-5, atol=1e-6)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).numpy()


def _by_layer(result: dict[str, np.ndarray], layer: int) -> np.ndarray:
    return result["cos_prev"][result["layer"] == layer]


@pytest.mark.parametrize("kind", ["llama", "mamba2"])
def test_cos_prev_compares_like_with_like(tiny_model_dirs, tokens_path, kind):
    """cos_prev at L reads the final norm's input (pre-norm h_L), captured here by a hook of
    the test's own on a plain forward; Mamba2's layer 1 compares h_1 with the embedding output.
    A random final-norm weight makes normed and pre-norm h_L point different ways."""
    model, lens = load(tiny_model_dirs, kind)
    torch.manual_seed(5)
    with torch.no_grad():
        lens.norm.weight.copy_(torch.rand_like(lens.norm.weight) * 2 + 0.1)
    windows = windows_of(tokens_path)
    ids = torch.tensor([windows[0]])
    result = extract.reduce_layers(lens, ids, torch.ones_like(ids), top_k=3, token_chunk=5)
    L = lens.num_layers

    captured = {}
    handle = lens.norm.register_forward_pre_hook(lambda m, args: captured.setdefault("h", args[0]))
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
        embedding = model.get_input_embeddings()(ids)
    handle.remove()
    pre_norm = captured["h"][0]
    if kind == "llama":  # (h_0, ..., h_{L-1}, norm(h_L))
        previous = hs[L - 1][0]
        np.testing.assert_allclose(_by_layer(result, 1), _cosine(hs[1][0], hs[0][0]), atol=2e-6)
        assert np.isnan(_by_layer(result, 0)).all()
    else:  # Mamba family: (h_1, ..., h_L, norm(h_L)); h_0 is the embedding output
        previous = hs[L - 2][0]
        np.testing.assert_array_equal(pre_norm, hs[L - 1][0])  # the hook reads h_L
        layer1 = _by_layer(result, 1)
        assert np.isfinite(layer1).all()
        np.testing.assert_allclose(layer1, _cosine(hs[0][0], embedding[0]), atol=2e-6)
    expected = _cosine(pre_norm, previous)
    np.testing.assert_allclose(_by_layer(result, L), expected, atol=2e-6)
    # the old definition, cos(norm(h_L), h_{L-1}), differs clearly under this norm weight
    assert np.abs(_by_layer(result, L) - _cosine(hs[-1][0], previous)).max() > 1e-2


@pytest.mark.parametrize("kind", KINDS)
def test_hooks_change_cos_prev_only(tiny_model_dirs, tokens_path, kind):
    """Every other lens column is byte-identical to the reduction of the plain
    ``output_hidden_states`` (no hooks); cos_prev differs only at L and the Mamba layer 1."""
    model, lens = load(tiny_model_dirs, kind)
    torch.manual_seed(5)
    with torch.no_grad():
        lens.norm.weight.copy_(torch.rand_like(lens.norm.weight) * 2 + 0.1)
    short, long = windows_of(tokens_path)[1], windows_of(tokens_path)[0]
    ids = torch.zeros((2, len(long)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    ids[0], mask[0] = torch.tensor(long), 1
    ids[1, : len(short)], mask[1, : len(short)] = torch.tensor(short), 1
    hooked = extract.reduce_layers(lens, ids, mask, top_k=3, token_chunk=5)
    with torch.inference_mode():
        states = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        plain = extract.reduce_hidden_states(lens, states, ids, mask, top_k=3, token_chunk=5)
    for name in extract.FIELDS:
        if name != "cos_prev":
            assert hooked[name].tobytes() == plain[name].tobytes(), name
    layers = hooked["layer"]
    same = (layers != lens.num_layers) & ((layers != 1) | lens.spec.embedding_entry)
    np.testing.assert_array_equal(hooked["cos_prev"][same], plain["cos_prev"][same])
    assert np.isfinite(hooked["cos_prev"][layers == lens.num_layers]).all()
