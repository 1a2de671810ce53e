"""Tuned-lens translators: zero = logit lens, training recovers a known linear map,
determinism, the tuned-lens folder format, and refusals of lenses that do not fit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from cluster import harness  # tests/cluster/harness.py (tests/ is on sys.path)
from conftest import tiny_config
from transformers import AutoModelForCausalLM

from exitbench import extract, score, tables
from exitbench import translators as tr
from exitbench.lens import LogitLens, TunedLens

FAST = tr.TrainingSettings(steps=6, tokens_per_step=64)


@pytest.fixture
def one_thread():
    """Training tiny models: one thread is several times faster on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path).eval()


def _windows(n: int, length: int, vocab: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=length) for _ in range(n)]


def _batch(windows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.as_tensor(np.stack(windows), dtype=torch.long)
    return ids, torch.ones_like(ids)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "mamba2"])
def test_zero_translators_give_the_logit_lens_exactly(tiny_model_dirs, kind):
    model = _load(tiny_model_dirs[kind])
    lens = LogitLens.from_model(model)
    d_model, num_layers = tr.model_shape(lens)
    tuned = TunedLens(lens, tr.zero_translators(d_model, num_layers))
    vocab = model.config.vocab_size
    input_ids, mask = _batch(_windows(2, 9, vocab, seed=1))
    with torch.inference_mode():
        states = lens.forward_hidden_states(input_ids, mask)
        for layer in lens.layer_numbers:
            hidden = lens.hidden_state(states, layer)
            assert torch.equal(tuned.decode(hidden, layer), lens.decode(hidden, layer))
        logit = extract.reduce_hidden_states(lens, states, input_ids, mask, top_k=3)
        translated = extract.reduce_hidden_states(
            lens, tuned.translate_states(states), input_ids, mask, top_k=3
        )
    for name in extract.FIELDS:
        np.testing.assert_array_equal(translated[name], logit[name], err_msg=name)


class _SyntheticLens(LogitLens):
    """A tiny Llama whose layer-1 state is M z, z the final layer's (normed) state."""

    mixing: torch.Tensor

    def forward_hidden_states(self, input_ids, attention_mask=None):
        states = list(super().forward_hidden_states(input_ids, attention_mask))
        states[1] = states[-1] @ self.mixing.T
        return tuple(states)


def test_training_recovers_a_known_linear_map(one_thread):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", 128)).eval()
    with torch.no_grad():  # unit norm weight: norm(z) = z for the final state z
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.mul_(40.0)  # confident final predictions
    lens = _SyntheticLens(model, LogitLens.from_model(model).spec)
    generator = torch.Generator().manual_seed(3)
    signs = torch.where(torch.rand(32, generator=generator) < 0.5, -1.0, 1.0)
    lens.mixing = torch.eye(32)[torch.randperm(32, generator=generator)] * signs[:, None]
    train = _windows(64, 16, 128, seed=5)
    settings = tr.TrainingSettings(steps=200, tokens_per_step=256, learning_rate=1.0)
    translators, log = tr.train_translators(lens, train, settings, seed=0)
    tuned = TunedLens(lens, translators)
    input_ids, mask = _batch(_windows(16, 16, 128, seed=99))  # held-out windows
    with torch.no_grad():
        states = lens.forward_hidden_states(input_ids, mask)
        final = lens.decode(lens.hidden_state(states, 3), 3).argmax(-1)
        logit = lens.decode(lens.hidden_state(states, 1), 1).argmax(-1)
        tuned_top1 = tuned.decode(lens.hidden_state(states, 1), 1).argmax(-1)
    logit_agreement = float((logit == final).float().mean())
    tuned_agreement = float((tuned_top1 == final).float().mean())
    assert logit_agreement < 0.05, logit_agreement  # measured 0.008
    assert tuned_agreement > 0.85, (tuned_agreement, logit_agreement)  # measured 0.92
    # KL(p_L || p_1) falls from 11.6 nats (the logit lens) to about 0.01
    assert log[0]["kl_per_layer"]["1"] > 10.0
    assert log[-1]["kl_per_layer"]["1"] < 0.05


def test_training_is_deterministic_and_round_trips(tiny_model_dirs, tmp_path):
    model = _load(tiny_model_dirs["llama"])
    lens = LogitLens.from_model(model)
    windows = _windows(12, 16, model.config.vocab_size, seed=2)
    first, log_first = tr.train_translators(lens, windows, FAST, seed=7)
    second, log_second = tr.train_translators(lens, windows, FAST, seed=7)
    assert log_first[-1]["loss"] < log_first[0]["loss"]
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert any(bool(p.abs().sum() > 0) for p in first.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the model's flags restored
    config = tr.lens_config(*tr.model_shape(lens), "tiny-llama")
    one = tr.save_translators(first, config, tmp_path / "one", log_first)
    two = tr.save_translators(second, config, tmp_path / "two", log_second)
    assert (one / "params.pt").read_bytes() == (two / "params.pt").read_bytes()
    saved = json.loads((one / "config.json").read_text())
    assert saved["lens_type"] == "linear_tuned_lens"
    assert (saved["d_model"], saved["num_hidden_layers"], saved["bias"]) == (32, 3, True)
    state = torch.load(one / "params.pt", weights_only=True)
    assert sorted(state) == sorted(f"{i}.{p}" for i in range(3) for p in ("weight", "bias"))

    loaded = tr.load_tuned_lens(one, lens, "tiny-llama")
    trained = TunedLens(lens, first)
    input_ids, mask = _batch(_windows(2, 8, model.config.vocab_size, seed=4))
    with torch.no_grad():
        states = lens.forward_hidden_states(input_ids, mask)
        for layer in lens.layer_numbers:
            hidden = lens.hidden_state(states, layer)
            assert torch.equal(loaded.decode(hidden, layer), trained.decode(hidden, layer))
        # layer L keeps the identity: the model's own logits
        assert torch.equal(loaded.decode(states[-1], 3), model(input_ids).logits)
    # a published folder is copied: what it trained on is unknown to the score stage (issue 12)
    entry = {"path": str(tiny_model_dirs["llama"]), "dtype": "float32", "tuned_lens": str(one)}
    tr.build_translators("m", entry, tmp_path / "copy", FAST, seed=0, device="cpu")
    source = json.loads((tmp_path / "copy" / tr.SOURCE_FILE).read_text())
    assert source == {"published": str(one)}
    assert score.translators_in_sample(tmp_path / "copy", "w", 10)[0] is None


@pytest.mark.parametrize(
    ("change", "found"),
    [({"hidden_size": 48}, "d_model=48"), ({"num_hidden_layers": 4}, "num_hidden_layers=4")],
)
def test_translators_of_another_model_are_refused(tiny_model_dirs, tmp_path, change, found):
    model = _load(tiny_model_dirs["llama"])
    lens = LogitLens.from_model(model)
    folder = tr.save_translators(
        tr.zero_translators(32, 3), tr.lens_config(32, 3, "tiny"), tmp_path / "lens"
    )
    config = tiny_config("llama", 64)
    for key, value in change.items():
        setattr(config, key, value)
    other = LogitLens.from_model(AutoModelForCausalLM.from_config(config))
    with pytest.raises(tr.TranslatorError) as err:
        tr.load_translators(folder, other, "other")
    message = str(err.value)
    assert "d_model=32, num_hidden_layers=3" in message  # the lens's
    assert found in message and "'other'" in message  # the model's
    tr.load_translators(folder, lens, "tiny")  # its own model loads it


def _bad_folder(tmp_path: Path, kind: str) -> Path:
    folder = tr.save_translators(
        tr.zero_translators(32, 3), tr.lens_config(32, 3, "tiny"), tmp_path / kind
    )
    config = json.loads((folder / "config.json").read_text())
    if kind == "d_model":
        config["d_model"] = 64
    elif kind == "layers":
        config["num_hidden_layers"] = 2
    elif kind == "params":
        (folder / "params.pt").unlink()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("d_model", "were made for d_model=64, num_hidden_layers=3, but model 'm' has d_model=32"),
        ("layers", "were made for d_model=32, num_hidden_layers=2, but model 'm' has"),
        ("params", "has no params.pt"),
        ("missing", "does not exist"),
    ],
)
def test_bad_tuned_lens_folder_one_message_no_output(tiny_model_dirs, tmp_path, kind, message):
    folder = tmp_path / "missing" if kind == "missing" else _bad_folder(tmp_path, kind)
    entry = {"path": str(tiny_model_dirs["llama"]), "tuned_lens": str(folder)}
    out = tmp_path / "results" / "translators" / "m"
    with pytest.raises(tr.TranslatorError, match="tuned") as err:
        tr.build_translators("m", entry, out, FAST, seed=0, device="cpu")
    assert message in str(err.value)
    assert str(err.value).count("\n") == 0
    assert not out.exists() and not out.parent.exists() or not any(out.parent.iterdir())


def _tokens(path: Path, docs: list[str]) -> Path:
    table = pa.table(
        {
            "seq_id": pa.array(range(len(docs)), pa.int64()),
            "doc_id": docs,
            "input_ids": pa.array([[1, 2, 3, 4]] * len(docs), pa.list_(pa.int32())),
            "n_tokens": pa.array([4] * len(docs), pa.int32()),
        }
    )
    return tables.write_table(table, path, "tokens")


def test_held_out_documents_in_the_training_split_are_refused(tiny_model_dirs, tmp_path):
    docs = [f"d{i}" for i in range(8)]
    one = _tokens(tmp_path / "a.parquet", docs)
    # the same documents among others: the split ranks each workload's documents apart
    two = _tokens(tmp_path / "b.parquet", docs + [f"e{i}" for i in range(8)])
    windows, counts = tr.calibration_windows({"a": one}, 0.5, seed=0)
    assert counts == {"windows": 4, "documents": 4}
    with pytest.raises(tr.TranslatorError, match="held-out document"):
        tr.calibration_windows({"a": one, "b": two}, 0.5, seed=0)
    out = tmp_path / "translators" / "m"
    with pytest.raises(tr.TranslatorError, match="held-out document"):
        tr.build_translators(
            "m",
            {"path": str(tiny_model_dirs["llama"])},
            out,
            FAST,
            seed=0,
            tokens_paths={"a": one, "b": two},
            device="cpu",
        )
    assert not out.exists()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_the_tuned_lens_package_loads_ours(tiny_model_dirs, tmp_path, kind):
    tuned_lens = pytest.importorskip(
        "tuned_lens",
        reason="tuned-lens not installed: `pip install --no-deps tuned-lens` (its own "
        "requirements pull torchdata, wandb and datasets, which may replace torch)",
    )
    model = _load(tiny_model_dirs[kind])
    lens = LogitLens.from_model(model)
    windows = _windows(12, 16, model.config.vocab_size, seed=2)
    translators, _ = tr.train_translators(lens, windows, FAST, seed=0)
    folder = tr.save_translators(
        translators, tr.lens_config(*tr.model_shape(lens), kind), tmp_path / "lens"
    )
    theirs = tuned_lens.TunedLens.from_model_and_pretrained(model, str(folder))
    ours = TunedLens(lens, translators)
    input_ids, mask = _batch(_windows(2, 8, model.config.vocab_size, seed=4))
    with torch.no_grad():
        states = lens.forward_hidden_states(input_ids, mask)
        for index in range(lens.num_layers):
            expected = theirs(states[index], idx=index)
            torch.testing.assert_close(
                ours.decode(states[index], index), expected, rtol=0, atol=1e-6
            )


@pytest.mark.slow
def test_pipeline_extracts_and_scores_both_lenses(tiny_model_dirs, tmp_path):
    """lenses: [logit, tuned] through Snakemake: translators, tuned shards beside the logit
    ones (same columns, one forward pass), scores-tuned, summary-tuned; logit paths kept."""
    import subprocess
    import sys

    import yaml

    repo = Path(__file__).resolve().parent.parent
    study = {
        "seed": 0,
        "models": {
            name: {
                "path": str(tiny_model_dirs[kind]),
                "family": f"test-{kind}",
                "release": release,
                "arch": "dense",
                "total_params": 1e5,
            }
            for name, kind, release in [
                ("tiny-llama", "llama", "2023-07"),
                ("tiny-gpt2", "gpt2", "2019-02"),
            ]
        },
        "workloads": {"docs": {"source": "embedded", "name": "python-docs", "max_docs": 12}},
        "tokenize": {"seq_len": 32, "max_sequences": 8},
        "extract": {"top_k": 3, "batch_size": 4, "shard_sequences": 8},
        "score": {"bootstrap": 20, "thresholds": 11},
        "lenses": ["logit", "tuned"],
        "translators": {"steps": 3, "tokens_per_step": 64},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    targets = ["results/summary.parquet", "results/summary-tuned.parquet"]
    targets += ["figures/lens_comparison.pdf", "figures/lens_comparison.png"]
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(repo / "Snakefile")]
        + ["--directory", str(tmp_path), "--configfile", str(tmp_path / "study.yaml")]
        + ["--cores", "1", *targets],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **harness.NO_SLURM},
    )
    assert result.returncode == 0, result.stderr[-6000:]
    results = tmp_path / "results"
    folder = results / "translators" / "tiny-llama"
    for name in ("config.json", "params.pt", "training.json", "loss.png", "training_source.json"):
        assert (folder / name).is_file(), name
    logit = tables.read_table(results / "lens/tiny-llama/docs/shard-0.parquet", "lens")
    tuned = tables.read_table(results / "lens-tuned/tiny-llama/docs/shard-0.parquet", "lens")
    assert logit.column_names == tuned.column_names and logit.num_rows == tuned.num_rows
    assert logit["cos_prev"].equals(tuned["cos_prev"])  # a hidden-state measure
    logit_rows, tuned_rows = logit.to_pandas(), tuned.to_pandas()
    last = logit_rows["layer"] == 3  # layer L: the model's own logits under both lenses
    assert logit_rows[last]["top1"].tolist() == tuned_rows[last]["top1"].tolist()
    assert not np.array_equal(logit_rows["entropy"], tuned_rows["entropy"])  # trained
    headline = json.loads((results / "scores-tuned/tiny-llama/docs.json").read_text())
    assert headline["lens"] == "tuned" and headline["flops"]["translator"] == 2 * 32 * 32
    plain = json.loads((results / "scores/tiny-llama/docs.json").read_text())
    assert plain["lens"] == "logit" and "translator" not in plain["flops"]
    summary = tables.read_table(results / "summary.parquet", "summary").to_pandas()
    summary_tuned = tables.read_table(results / "summary-tuned.parquet", "summary").to_pandas()
    assert set(summary["lens"]) == {"logit"} and set(summary_tuned["lens"]) == {"tuned"}
    assert summary_tuned[["model", "workload"]].equals(summary[["model", "workload"]])
    assert (results / "statistics-tuned.json").is_file()
    # issue 12: every table of a lens names it; a hub model's translators trained on this
    # workload's calibration documents, so its tuned curves and oracles are partly in-sample
    for lens, scores, statistics in [
        ("logit", "scores", "statistics"),
        ("tuned", "scores-tuned", "statistics-tuned"),
    ]:
        curves = tables.read_table(results / scores / "tiny-llama/docs.parquet", "scores")
        assert set(curves["lens"].to_pylist()) == {lens}
        rows = json.loads((results / f"{statistics}.json").read_text())["rows"]
        assert rows and {row["lens"] for row in rows} == {lens}
    assert json.loads((folder / "training_source.json").read_text())["workloads"] == ["docs"]
    assert headline["translators_in_sample"] is True and "translators_in_sample" not in plain
    assert any("calibration documents of workload 'docs'" in w for w in headline["warnings"])
    assert (tmp_path / "figures" / "lens_comparison.png").stat().st_size > 0


ZOO = {
    "corpora": {"python-docs": 1},
    "heldout_fraction": 0.25,
    "max_docs": 60,
    "tokenizer": {"vocab_size": 320, "max_chars": 200_000},
    "training": {"seq_len": 32, "batch_size": 4, "train_tokens": 12800, "learning_rate": 0.01},
    "runs": {"llama-t": {"recipe": "llama", "hidden_size": 32, "num_layers": 4, "num_heads": 2}},
}


def test_zoo_model_held_out_kl_is_lower_under_the_tuned_lens(tmp_path, one_thread):
    """On a (tiny) zoo model, trained on its training windows only: held-out KL to final
    under the tuned lens is no worse than the logit lens's at every layer, its mean lower."""
    from transformers import AutoTokenizer

    from exitbench import workloads, zoo
    from exitbench.config import validate_config

    seed = 3
    settings = validate_config(
        {"workloads": {"w": {"source": "embedded", "name": "python-docs"}}, "zoo": ZOO}
    )["zoo"]
    tokenizer_dir, data, run = tmp_path / "tokenizer", tmp_path / "data", tmp_path / "llama-t"
    zoo.train_tokenizer(settings, seed, tokenizer_dir)
    zoo.build_data(settings, seed, tokenizer_dir, data)
    zoo.train_run("llama-t", zoo.rule_settings(settings, "llama-t"), seed, tokenizer_dir, data, run)
    model = AutoModelForCausalLM.from_pretrained(run / "final").eval()
    lens = LogitLens.from_model(model)
    train = tr.zoo_windows(data, ["python-docs"])
    translators, _ = tr.train_translators(
        lens, train, tr.TrainingSettings(steps=30, tokens_per_step=512), seed=seed
    )
    spec = {"source": "embedded", "name": "python-docs", "subset": "heldout"}
    spec["heldout_fraction"] = ZOO["heldout_fraction"]
    documents, _ = workloads.load_documents("w", {**spec, "max_docs": 16}, seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    held_out = [
        np.asarray(tokenizer(text)["input_ids"][:32]) for text in documents["text"].tolist()
    ]
    input_ids, mask = extract._window_batches([w for w in held_out if len(w) > 1])
    logit = tr.layer_losses(TunedLens(lens, tr.zero_translators(32, 4)), input_ids, mask, False)
    tuned = tr.layer_losses(TunedLens(lens, translators), input_ids, mask, False)
    # measured: logit 0.566 0.121 0.037 0.009 (mean 0.183), tuned 0.079 0.016 0.005 0.001 (0.025)
    for layer in logit:
        assert tuned[layer] <= logit[layer] + 0.02, (layer, tuned, logit)
    assert np.mean(list(tuned.values())) < 0.8 * np.mean(list(logit.values())), (tuned, logit)


def test_gradient_accumulation_is_the_same_step_in_smaller_passes(tiny_model_dirs, one_thread):
    """A step of 64 tokens (4 windows of 16) in passes of at most 20 tokens (one window each)
    trains the same translators as one pass up to float rounding, logs the same per-layer
    KL, and a budget of at least the step's tokens is one pass, bit for bit (the zoo's case)."""
    model = _load(tiny_model_dirs["llama"])
    lens = LogitLens.from_model(model)
    windows = _windows(12, 16, model.config.vocab_size, seed=2)
    assert [len(p) for p in tr.forward_passes(windows, np.arange(4), 20)] == [1, 1, 1, 1]
    assert [len(p) for p in tr.forward_passes(windows, np.arange(4), 40)] == [2, 2]
    assert [len(p) for p in tr.forward_passes(windows, np.arange(4), None)] == [4]
    one, log_one = tr.train_translators(lens, windows, FAST, seed=7)
    split, log_split = tr.train_translators(lens, windows, FAST, seed=7, batch_tokens=20)
    same, _ = tr.train_translators(lens, windows, FAST, seed=7, batch_tokens=64)
    assert [row["tokens"] for row in log_split] == [row["tokens"] for row in log_one] == [64] * 6
    for key, value in one.state_dict().items():
        assert torch.equal(value, same.state_dict()[key]), key
        assert torch.allclose(value, split.state_dict()[key], atol=1e-6, rtol=1e-5), key
    assert any(bool(p.abs().sum() > 0) for p in split.parameters())
    for a, b in zip(log_one, log_split, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
