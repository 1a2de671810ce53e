"""Token windows on hand-built tokenizers: exact ids, BOS policy, modes, selection, errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from exitbench import tables, tokens, workloads
from exitbench.tokens import TokenizeError, tokenize_documents

BOS, EOS = 0, 1
WORDS = [f"w{i}" for i in range(30)]  # "w{i}" has id i + 3


def word_ids(*numbers: int) -> list[int]:
    return [n + 3 for n in numbers]


def words(*numbers: int) -> str:
    return " ".join(f"w{n}" for n in numbers)


def word_level(adds_bos: bool, bos: bool = True, eos: bool = True) -> PreTrainedTokenizerFast:
    """WordLevel tokenizer: <s>=0, </s>=1, [UNK]=2, w0..w29 = 3..32; no pad token."""
    vocab = {"<s>": BOS, "</s>": EOS, "[UNK]": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:  # Llama style: the tokenizer itself prepends <s>
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", BOS)]
        )
    specials = {"bos_token": "<s>"} if bos else {}
    specials |= {"eos_token": "</s>"} if eos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **specials)


@pytest.fixture(scope="module")
def gpt2_like() -> PreTrainedTokenizerFast:
    return word_level(adds_bos=False)


@pytest.fixture(scope="module")
def llama_like() -> PreTrainedTokenizerFast:
    return word_level(adds_bos=True)


def docs(*texts: str, prompts: list | None = None) -> pd.DataFrame:
    ids = [f"d{i}" for i in range(len(texts))]
    return pd.DataFrame(
        {"doc_id": ids, "text": list(texts), "prompt": prompts or [None] * len(ids)}
    )


def rows(table) -> list[tuple[int, str, list[int], int]]:
    columns = [table.column(c).to_pylist() for c in ("seq_id", "doc_id", "input_ids", "n_tokens")]
    return list(zip(*columns, strict=True))


def test_tokenizers_without_pad_and_bos_detection(gpt2_like, llama_like):
    assert gpt2_like.pad_token_id is None and llama_like.pad_token_id is None
    assert not tokens.tokenizer_adds_bos(gpt2_like)
    assert tokens.tokenizer_adds_bos(llama_like)
    assert tokens.bos_to_prepend(gpt2_like, "auto") is None
    assert tokens.bos_to_prepend(llama_like, "auto") == BOS
    assert tokens.bos_to_prepend(gpt2_like, "always") == BOS
    assert tokens.bos_to_prepend(llama_like, "never") is None


def test_document_mode_windows_without_bos(gpt2_like):
    table = tokenize_documents(docs(words(*range(10))), gpt2_like, seq_len=4, max_sequences=10)
    assert rows(table) == [
        (0, "d0", word_ids(0, 1, 2, 3), 4),
        (1, "d0", word_ids(4, 5, 6, 7), 4),
        (2, "d0", word_ids(8, 9), 2),
    ]
    # a last window of a single token is dropped
    table = tokenize_documents(docs(words(*range(9))), gpt2_like, seq_len=4, max_sequences=10)
    assert table.column("input_ids").to_pylist() == [word_ids(0, 1, 2, 3), word_ids(4, 5, 6, 7)]


def test_document_mode_every_window_starts_with_bos(llama_like):
    table = tokenize_documents(docs(words(*range(10))), llama_like, seq_len=4, max_sequences=10)
    assert table.column("input_ids").to_pylist() == [
        [BOS, *word_ids(0, 1, 2)],
        [BOS, *word_ids(3, 4, 5)],
        [BOS, *word_ids(6, 7, 8)],
        [BOS, *word_ids(9)],
    ]
    assert table.column("n_tokens").to_pylist() == [4, 4, 4, 2]


def test_bos_policies(gpt2_like, llama_like):
    text = docs(words(0, 1, 2))
    always = tokenize_documents(text, gpt2_like, 8, 4, add_bos="always")
    never = tokenize_documents(text, llama_like, 8, 4, add_bos="never")
    assert always.column("input_ids").to_pylist() == [[BOS, *word_ids(0, 1, 2)]]
    assert never.column("input_ids").to_pylist() == [word_ids(0, 1, 2)]
    with pytest.raises(TokenizeError, match="tokenize.add_bos.*no bos_token"):
        tokenize_documents(text, word_level(False, bos=False), 8, 4, add_bos="always")
    # without a BOS token, auto means no BOS
    bare = tokenize_documents(text, word_level(False, bos=False, eos=False), 8, 4)
    assert bare.column("input_ids").to_pylist() == [word_ids(0, 1, 2)]


def test_packed_mode_joins_with_eos(gpt2_like, llama_like):
    three = docs(words(0, 1, 2), words(3, 4), words(5, 6, 7, 8))
    # stream: 0 1 2 EOS 3 4 EOS 5 6 7 8 (as word numbers); full windows only
    table = tokenize_documents(three, gpt2_like, seq_len=4, max_sequences=10, mode="packed")
    assert rows(table) == [
        (0, "d0", word_ids(0, 1, 2) + [EOS], 4),
        (1, "d1", word_ids(3, 4) + [EOS, *word_ids(5)], 4),
    ]
    # the EOS before a document opens it: a window starting with it belongs to that document
    table = tokenize_documents(three, gpt2_like, seq_len=3, max_sequences=10, mode="packed")
    assert rows(table) == [
        (0, "d0", word_ids(0, 1, 2), 3),
        (1, "d1", [EOS, *word_ids(3, 4)], 3),
        (2, "d2", [EOS, *word_ids(5, 6)], 3),
    ]
    table = tokenize_documents(three, llama_like, seq_len=4, max_sequences=10, mode="packed")
    assert table.column("input_ids").to_pylist() == [
        [BOS, *word_ids(0, 1, 2)],
        [BOS, EOS, *word_ids(3, 4)],
        [BOS, EOS, *word_ids(5, 6)],
    ]
    assert table.column("doc_id").to_pylist() == ["d0", "d1", "d2"]
    with pytest.raises(TokenizeError, match="tokenize.mode.*eos"):
        tokenize_documents(three, word_level(False, eos=False), 4, 10, mode="packed")


def test_max_sequences_round_robin_over_documents(gpt2_like):
    # d0: 3 windows, d1: 1 window, d2: 2 windows (seq_len 2)
    three = docs(words(0, 1, 2, 3, 4, 5), words(6, 7), words(8, 9, 10, 11))
    table = tokenize_documents(three, gpt2_like, seq_len=2, max_sequences=4)
    assert rows(table) == [
        (0, "d0", word_ids(0, 1), 2),
        (1, "d1", word_ids(6, 7), 2),
        (2, "d2", word_ids(8, 9), 2),
        (3, "d0", word_ids(2, 3), 2),
    ]
    everything = tokenize_documents(three, gpt2_like, seq_len=2, max_sequences=100)
    assert everything.column("input_ids").to_pylist() == [
        word_ids(0, 1),
        word_ids(6, 7),
        word_ids(8, 9),
        word_ids(2, 3),
        word_ids(10, 11),
        word_ids(4, 5),
    ]
    assert everything.column("seq_id").to_pylist() == list(range(6))
    first_two = tokenize_documents(three, gpt2_like, seq_len=2, max_sequences=2)
    assert first_two.column("doc_id").to_pylist() == ["d0", "d1"]


def test_prompt_is_prepended(gpt2_like):
    table = tokenize_documents(
        docs(words(1, 2), words(3, 4), prompts=["w0 ", None]), gpt2_like, 8, 4
    )
    assert table.column("input_ids").to_pylist() == [word_ids(0, 1, 2), word_ids(3, 4)]


def test_errors_name_the_setting(gpt2_like):
    with pytest.raises(TokenizeError, match=r"tokenize.seq_len.*512.*128"):
        tokenize_documents(docs(words(0, 1)), gpt2_like, 512, 4, max_positions=128)
    tokenize_documents(docs(words(0, 1)), gpt2_like, 128, 4, max_positions=128)
    with pytest.raises(TokenizeError, match="workload 'tiny'.*no token windows"):
        tokenize_documents(docs(words(0), words(1)), gpt2_like, 8, 4, workload="tiny")
    with pytest.raises(TokenizeError, match="tokenize.mode"):
        tokenize_documents(docs(words(0, 1)), gpt2_like, 8, 4, mode="sliding")


def test_token_ids_beyond_the_model_vocabulary_name_both_sizes(gpt2_like):
    """Issue 10 item 4: checked when tokenizing, not a bare IndexError at extract."""
    text = docs(words(0, 1), words(2, 29))  # ids 3, 4 and 5, 32
    table = tokenize_documents(text, gpt2_like, 8, 4, vocab_size=33, model="m")
    assert table.num_rows == 2
    with pytest.raises(TokenizeError) as err:
        tokenize_documents(text, gpt2_like, 8, 4, vocab_size=20, model="m")
    assert str(err.value) == (
        "model 'm': the tokenizer (33 tokens) gives token id 32 in document 'd1', but the "
        "model's vocabulary has 20 ids (0..19); the model folder's tokenizer does not belong "
        "to its weights: save the matching tokenizer beside the model"
    )


def test_bpe_windows_reassemble_the_document():
    corpus = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog."]
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(
        corpus * 5,
        trainers.BpeTrainer(
            vocab_size=120,
            special_tokens=["<|endoftext|>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    text = corpus[0] * 3
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]
    table = tokenize_documents(docs(text), tokenizer, seq_len=7, max_sequences=100)
    windows = table.column("input_ids").to_pylist()
    assert all(len(w) == 7 for w in windows[:-1]) and 2 <= len(windows[-1]) <= 7
    assert sum(windows, []) == expected[: sum(map(len, windows))]
    assert len(expected) - sum(map(len, windows)) <= 1  # at most a 1-token tail dropped


def test_tokenize_workload_writes_table_and_stops_early(tmp_path, gpt2_like):
    frame = pd.DataFrame(
        {
            "doc_id": [f"d{i:03d}" for i in range(200)],
            "text": [words(i % 30, 1) for i in range(200)],
            "prompt": [None] * 200,
        }
    )
    source = tables.write_table(workloads.to_table(frame), tmp_path / "wl.parquet", "workload")
    params = {"seq_len": 4, "max_sequences": 3, "mode": "document", "add_bos": "auto"}
    stats = tokens.tokenize_workload(source, gpt2_like, tmp_path / "a.parquet", **params)
    tokens.tokenize_workload(source, gpt2_like, tmp_path / "b.parquet", **params)
    assert stats["n_docs"] == 200 and stats["n_windows"] == 3 and stats["n_tokens"] == 6
    assert stats["n_docs_encoded"] == 3  # documents past the third can never be selected
    assert stats["bos_token_id"] is None
    table = tables.read_table(tmp_path / "a.parquet", "tokens")
    assert table.column("doc_id").to_pylist() == ["d000", "d001", "d002"]
    digests = {
        hashlib.sha256((tmp_path / n).read_bytes()).digest() for n in ("a.parquet", "b.parquet")
    }
    assert len(digests) == 1


def test_prompt_is_separated_from_text_by_a_newline():
    from exitbench.tokens import _document_texts

    frame = pd.DataFrame(
        {"doc_id": ["a", "b", "c"], "text": ["x", "y", "z"], "prompt": ["Q?", "Q: ", None]}
    )
    assert _document_texts(frame) == ["Q?\nx", "Q: y", "z"]


def test_default_study_scores_at_least_40_heldout_documents_per_workload(gpt2_like):
    """Issue 9 item 8: the default config's workloads, windowed as its tokenize stage does,
    give every document a window and >= 40 held-out documents to score's split."""
    from pathlib import Path

    from exitbench import config, metrics, score

    root = Path(__file__).resolve().parents[1]
    study = config.validate_config(config.load_yaml_strict(root / "config.yaml"))
    settings, scoring = study["tokenize"], study["score"]
    # at most ~1.5x the tokens of the former 32 windows of 128 per (model, workload)
    assert settings["seq_len"] * settings["max_sequences"] <= 1.5 * 32 * 128
    assert config.n_lens_shards(study) == 1
    for name, spec in study["workloads"].items():
        documents, info = workloads.load_documents(name, spec, study["seed"])
        # pieces of held-out source documents only (the zoo trained on none of them)
        sources = {doc_id.rpartition("#")[0] for doc_id in documents["doc_id"]}
        fraction = study["zoo"]["heldout_fraction"]
        assert all(workloads.split_of(s, fraction, study["seed"]) == "heldout" for s in sources)
        assert info["split_into"] != "none" and info["n_source_docs"] == len(sources)
        table = tokenize_documents(
            documents, gpt2_like, settings["seq_len"], settings["max_sequences"], settings["mode"]
        )
        doc_ids = sorted(set(table.column("doc_id").to_pylist()))
        assert len(doc_ids) == table.num_rows == settings["max_sequences"]  # one window each
        calibration = metrics.split_documents(
            doc_ids, scoring["calibration_fraction"], study["seed"]
        )
        assert int((~calibration).sum()) >= max(40, score.MIN_CI_DOCUMENTS), name


# The tokenize job as Snakemake runs it: its own Python process, a ``snakemake`` object.
RUN_TOKENIZE_JOB = """
import json, runpy, sys, types
job = json.loads(sys.argv[1])
S = types.SimpleNamespace
snakemake = S(
    log=[job["log"]],
    wildcards=S(model="tiny"),
    params=S(**job["params"]),
    input=S(**job["input"]),
    output=S(**job["output"]),
)
runpy.run_path(job["script"], init_globals={"snakemake": snakemake})
print(json.dumps({"torch_loaded": sys.modules.get("torch") is not None}))
"""


@pytest.mark.parametrize("kind", ["llama", "gpt2", "mamba2"])
def test_tokenize_job_runs_without_torch_and_writes_the_same_tokens(
    tmp_path, tiny_model_dirs, kind
):
    from exitbench import models, provenance

    entry = {"path": str(tiny_model_dirs[kind])}
    workload = tables.write_table(
        workloads.to_table(
            docs("def f(x):\n    return x", "A list is a sequence.", prompts=["Q: what?", None])
        ),
        tmp_path / "docs.parquet",
        "workload",
    )
    info = models.describe_model("tiny", entry)
    provenance.write_json(info, tmp_path / "tiny.json")
    params = {"seq_len": 8, "max_sequences": 5, "mode": "document", "add_bos": "auto"}
    expected = tokens.tokenize_workload(
        workload,
        models.load_tokenizer("tiny", entry),
        tmp_path / "expected.parquet",
        max_positions=info["max_positions"],
        vocab_size=info["vocab_size"],
        model="tiny",
        **params,
    )
    job = {
        "script": str(Path(__file__).parents[1] / "workflow" / "scripts" / "tokenize_workload.py"),
        "log": str(tmp_path / "job.log"),
        "params": {"source": entry, **params},
        "input": {"workload": str(workload), "model_info": str(tmp_path / "tiny.json")},
        "output": {"table": str(tmp_path / "job.parquet"), "stats": str(tmp_path / "job.json")},
    }
    result = subprocess.run(
        [sys.executable, "-c", RUN_TOKENIZE_JOB, json.dumps(job)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout.splitlines()[-1]) == {"torch_loaded": False}
    assert "PyTorch was not found" not in result.stderr
    assert (tmp_path / "job.parquet").read_bytes() == (tmp_path / "expected.parquet").read_bytes()
    assert provenance.read_json(tmp_path / "job.json") == expected
    assert tables.read_table(tmp_path / "job.parquet", "tokens").num_rows == expected["n_windows"]
    assert expected["n_windows"] > 0
    assert tokens.hide_torch() is False  # torch is loaded in this process: nothing changes
