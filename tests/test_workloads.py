"""Workloads: subsets, sampling, embedded corpora, file and hub sources, errors."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exitbench import tables, workloads
from exitbench.workloads import WorkloadError, load_documents


def frame(doc_ids, texts=None) -> pd.DataFrame:
    texts = texts or [f"text of {d}" for d in doc_ids]
    return pd.DataFrame({"doc_id": doc_ids, "text": texts, "prompt": [None] * len(doc_ids)})


IDS = [f"doc-{i}" for i in range(1000)]


def test_split_of_is_the_seeded_hash_rule():
    for doc_id in IDS[:50]:
        value = int(hashlib.sha256(f"7:{doc_id}".encode()).hexdigest(), 16) / 2**256
        assert workloads.split_of(doc_id, 0.2, 7) == ("heldout" if value < 0.2 else "train")
    assert [workloads.split_of(d, 0.2, 0) for d in IDS] == [
        workloads.split_of(d, 0.2, 0) for d in IDS
    ]
    # another seed gives another split
    assert [workloads.split_of(d, 0.2, 0) for d in IDS] != [
        workloads.split_of(d, 0.2, 1) for d in IDS
    ]


def test_subsets_are_complementary_with_the_heldout_fraction():
    docs = frame(IDS)
    train = workloads.select_subset(docs, "train", 0.2, 0)
    heldout = workloads.select_subset(docs, "heldout", 0.2, 0)
    assert set(train["doc_id"]).isdisjoint(heldout["doc_id"])
    assert set(train["doc_id"]) | set(heldout["doc_id"]) == set(IDS)
    assert 0.16 <= len(heldout) / len(IDS) <= 0.24  # binomial sd 0.013
    assert len(workloads.select_subset(docs, "all", 0.2, 0)) == 1000
    # a document's split does not depend on which other documents exist
    small = workloads.select_subset(frame(IDS[:100]), "heldout", 0.2, 0)
    assert set(small["doc_id"]) == set(heldout["doc_id"]) & set(IDS[:100])


def test_sampling_is_stable_and_independent_of_input_order():
    docs = frame(IDS)
    shuffled = docs.sample(frac=1, random_state=3).reset_index(drop=True)
    first = workloads.sample_documents(docs, 25, seed=0)
    assert list(first["doc_id"]) == list(workloads.sample_documents(shuffled, 25, 0)["doc_id"])
    assert list(first["doc_id"]) == sorted(first["doc_id"])
    by_hash = sorted(IDS, key=lambda d: hashlib.sha256(f"0:sample:{d}".encode()).hexdigest())
    assert list(first["doc_id"]) == sorted(by_hash[:25])
    assert list(workloads.sample_documents(docs, 25, 1)["doc_id"]) != list(first["doc_id"])
    assert len(workloads.sample_documents(docs, 5000, 0)) == 1000


def test_python_docs_corpus():
    from pydoc_data.topics import topics

    spec = {"source": "embedded", "name": "python-docs"}
    docs, info = load_documents("docs", spec)
    assert list(docs["doc_id"]) == sorted(k for k in topics if topics[k].strip())
    assert info["n_docs_corpus"] == len(topics) > 20
    assert info["python_version"] == sys.version
    again, info_again = load_documents("docs", spec)
    assert info_again["corpus_sha256"] == info["corpus_sha256"]
    assert len(info["corpus_sha256"]) == 64
    sampled, sampled_info = load_documents("docs", {**spec, "max_docs": 5}, seed=3)
    assert len(sampled) == 5 and sampled_info["corpus_sha256"] == info["corpus_sha256"]
    assert sampled_info["workload_sha256"] != info["workload_sha256"]


def test_python_code_corpus_excludes_tests():
    spec = {"source": "embedded", "name": "python-code", "subset": "train"}
    docs, info = load_documents("code", spec)
    ids = set(docs["doc_id"])
    assert {"json/__init__.py", "os.py", "asyncio/events.py"} <= ids
    assert not any(
        part in ("test", "tests", "idle_test", "site-packages")
        for doc_id in ids
        for part in doc_id.split("/")[:-1]
    )
    assert not any(doc_id.split("/")[-1].startswith("test_") for doc_id in ids)
    assert "pydoc_data/topics.py" not in ids  # the python-docs corpus itself
    assert list(docs["doc_id"]) == sorted(ids)
    assert all(workloads.split_of(d, 0.2, 0) == "train" for d in ids)
    assert info["n_docs_corpus"] > 300 and info["n_docs"] < info["n_docs_nonempty"]
    heldout, heldout_info = load_documents("code", {**spec, "subset": "heldout"})
    assert heldout_info["corpus_sha256"] == info["corpus_sha256"]
    assert len(heldout) + len(docs) == info["n_docs_nonempty"]


def test_txt_documents(tmp_path):
    (tmp_path / "paras.txt").write_text("first para\nline two\n\n\nsecond\n  \nthird\n")
    docs, info = load_documents("t", {"source": "file", "path": str(tmp_path / "paras.txt")})
    assert list(docs["doc_id"]) == ["paras-00000", "paras-00001", "paras-00002"]
    assert list(docs["text"]) == ["first para\nline two", "second", "third"]
    assert info["file_sha256"] == hashlib.sha256((tmp_path / "paras.txt").read_bytes()).hexdigest()
    # form-feed lines separate documents, which then may hold blank lines
    (tmp_path / "pages.txt").write_text("one\n\nstill one\n\f\ntwo\n\f\n\f\n")
    docs, _ = load_documents("t", {"source": "file", "path": str(tmp_path / "pages.txt")})
    assert list(docs["text"]) == ["one\n\nstill one", "two"]


def test_jsonl_documents(tmp_path, monkeypatch):
    lines = [{"id": 7, "body": "seven", "q": "Q: "}, {"id": "a", "body": "letter"}]
    (tmp_path / "ids.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the working directory
    spec = {"source": "file", "path": "ids.jsonl", "text_column": "body", "prompt_column": "q"}
    docs, info = load_documents("j", spec)
    assert docs.to_dict("records") == [
        {"doc_id": "7", "text": "seven", "prompt": "Q: "},
        {"doc_id": "a", "text": "letter", "prompt": None},
    ]
    assert info["path"] == "ids.jsonl"
    (tmp_path / "plain.jsonl").write_text('{"text": "x"}\n\n{"text": "  "}\n{"text": "z"}\n')
    docs, info = load_documents("j", {"source": "file", "path": "plain.jsonl"})
    assert list(docs["doc_id"]) == ["line-00001", "line-00004"]
    assert info["n_docs_corpus"] == 3 and info["n_docs_nonempty"] == 2
    with pytest.raises(WorkloadError, match=r"workloads\.j\.text_column.*'txt'.*body, id, q"):
        load_documents("j", {**spec, "text_column": "txt"})
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n{oops\n')
    with pytest.raises(WorkloadError, match="line 2 is not valid JSON"):
        load_documents("j", {"source": "file", "path": "bad.jsonl"})


def test_parquet_documents(tmp_path):
    table = pa.table({"content": ["b text", "a text", ""], "doc_id": ["b", "a", "c"]})
    pq.write_table(table, tmp_path / "d.parquet")
    spec = {"source": "file", "path": str(tmp_path / "d.parquet"), "text_column": "content"}
    docs, info = load_documents("p", spec)
    assert list(docs["doc_id"]) == ["a", "b"] and list(docs["text"]) == ["a text", "b text"]
    with pytest.raises(WorkloadError, match=r"workloads\.p\.text_column.*'text'.*content, doc_id"):
        load_documents("p", {**spec, "text_column": "text"})
    pq.write_table(
        pa.table({"text": ["x", "y"], "doc_id": ["same", "same"]}), tmp_path / "u.parquet"
    )
    with pytest.raises(WorkloadError, match="not unique"):
        load_documents("p", {"source": "file", "path": str(tmp_path / "u.parquet")})


def test_file_errors_name_the_config_key(tmp_path):
    with pytest.raises(WorkloadError, match=r"workloads\.f\.path.*'nowhere\.jsonl' not found"):
        load_documents("f", {"source": "file", "path": "nowhere.jsonl"})
    (tmp_path / "d.csv").write_text("text\nx\n")
    with pytest.raises(WorkloadError, match=r"workloads\.f\.path.*unsupported.*'\.csv'"):
        load_documents("f", {"source": "file", "path": str(tmp_path / "d.csv")})
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    with pytest.raises(WorkloadError, match="workload 'f': no documents left"):
        load_documents("f", {"source": "file", "path": str(tmp_path / "blank.txt")})
    with pytest.raises(WorkloadError, match=r"workloads\.f\.name"):
        load_documents("f", {"source": "embedded", "name": "python-poems"})


def test_empty_subset_is_an_error(tmp_path):
    (tmp_path / "one.jsonl").write_text('{"id": "only", "text": "x"}\n')
    subset = "train" if workloads.split_of("only", 0.2, 0) == "heldout" else "heldout"
    with pytest.raises(WorkloadError, match=f"0 in subset '{subset}'"):
        load_documents(
            "o", {"source": "file", "path": str(tmp_path / "one.jsonl"), "subset": subset}
        )


def test_hub_offline_fails_with_a_fix(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WorkloadError) as error:
        load_documents("web", {"source": "hub", "dataset": "no-such-org/no-such-dataset"})
    message = str(error.value)
    assert "workloads.web.dataset" in message and "no-such-org/no-such-dataset" in message
    assert "not in the local datasets cache" in message and "offline" in message
    assert "run once online" in message and "HF_DATASETS_OFFLINE=1" in message


def test_hub_dataset_from_local_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = [{"text": f"document {i}", "label": i} for i in range(30)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"source": "hub", "dataset": str(folder), "max_docs": 2}
    docs, info = load_documents("h", spec)
    assert info["split_read"] == "train[:20]" and info["n_docs_corpus"] == 20
    assert len(docs) == 2 and all(d < "row-00020" for d in docs["doc_id"])
    assert docs["text"].tolist() == [f"document {int(d[4:])}" for d in docs["doc_id"]]
    all_docs, info = load_documents("h", {**spec, "max_docs": 10})  # slice longer than the split
    assert info["n_docs_corpus"] == 30 and len(all_docs) == 10
    with pytest.raises(WorkloadError, match=r"workloads\.h\.text_column.*available.*text, label"):
        load_documents("h", {**spec, "text_column": "body"})


def test_build_workload_writes_identical_tables(tmp_path):
    spec = {"source": "embedded", "name": "python-docs", "max_docs": 4}
    info = workloads.build_workload("docs", spec, 0, tmp_path / "a.parquet")
    workloads.build_workload("docs", spec, 0, tmp_path / "b.parquet")
    table = tables.read_table(tmp_path / "a.parquet", "workload")
    assert table.num_rows == info["n_docs"] == 4
    assert table.column("prompt").null_count == 4
    assert Path(tmp_path / "a.parquet").read_bytes() == Path(tmp_path / "b.parquet").read_bytes()


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_non_utf8_file_names_the_file_and_the_key(tmp_path, suffix):
    """Issue 10 item 4: a Latin-1 file, not a bare UnicodeDecodeError."""
    path = tmp_path / f"latin{suffix}"
    body = "caf\u00e9 au lait" if suffix == ".txt" else '{"text": "caf\u00e9"}'
    path.write_bytes(("first line\n" if suffix == ".txt" else "").encode() + body.encode("latin-1"))
    with pytest.raises(WorkloadError) as error:
        load_documents("f", {"source": "file", "path": str(path)})
    assert str(error.value).startswith(
        f"config key 'workloads.f.path': {path} is not UTF-8 text (byte 0xe9 at offset "
    )
    assert "re-encode the file as UTF-8" in str(error.value)


# --------------------------------------------------------------------------- split_into

DOC_TEXT = (
    "Title\n*****\n\nFirst paragraph, long enough.\n\nok\n\n"
    "Sub section\n===========\n\nLast paragraph here."
)
MODULE = (
    '"""Doc."""\nimport os\n\n\n@decorator\ndef f():\n    return 1\n\nX = 2\n\n'
    "class C:\n    def g(self):\n        pass\n"
)


def test_split_text_sections_paragraphs_definitions():
    assert workloads.split_text(DOC_TEXT, "none") == [DOC_TEXT]
    assert workloads.split_text(DOC_TEXT, "sections") == [
        "Title\n*****\n\nFirst paragraph, long enough.\n\nok",
        "Sub section\n===========\n\nLast paragraph here.",
    ]
    assert workloads.split_text(DOC_TEXT, "paragraphs") == [
        "Title\n*****",
        "First paragraph, long enough.",
        "ok",
        "Sub section\n===========",
        "Last paragraph here.",
    ]
    # min_chars 12: "Title\n*****" (11 chars) joins the next; "ok" too; the short tail
    # "Last paragraph here." (20) stands, "Sub section\n===" (23) stands
    assert workloads.split_text(DOC_TEXT, "paragraphs", min_chars=12) == [
        "Title\n*****\n\nFirst paragraph, long enough.",
        "ok\n\nSub section\n===========",
        "Last paragraph here.",
    ]
    # a tail shorter than min_chars joins the piece before it
    assert workloads.split_text("a long first block\n\nb", "paragraphs", min_chars=5) == [
        "a long first block\n\nb"
    ]
    # the module preamble, each definition from its first decorator, the code after it
    assert workloads.split_text(MODULE, "definitions") == [
        '"""Doc."""\nimport os',
        "@decorator\ndef f():\n    return 1\n\nX = 2",
        "class C:\n    def g(self):\n        pass",
    ]
    # pieces keep every non-blank line of the document, in order
    for mode in ("sections", "paragraphs", "definitions"):
        pieces = workloads.split_text(MODULE, mode)
        assert "\n".join(pieces).replace("\n", "") == MODULE.replace("\n", "")
    # text that is not Python stays whole
    assert workloads.split_text("def (:\n  x", "definitions") == ["def (:\n  x"]


def test_split_into_cuts_after_the_heldout_split(tmp_path):
    texts = [
        f"paragraph {i} of {d}\n\nsecond of {d}\n\nthird of {d}" for i, d in enumerate(IDS[:60])
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": d, "text": t}) + "\n" for d, t in zip(IDS[:60], texts, strict=True)
        )
    )
    spec = {"source": "file", "path": str(path), "subset": "heldout", "heldout_fraction": 0.3}
    whole, whole_info = load_documents("w", spec, seed=0)
    assert "n_pieces" not in whole_info and whole_info["split_into"] == "none"
    pieces, info = load_documents("w", {**spec, "split_into": "paragraphs"}, seed=0)
    # every piece is a paragraph of a held-out document: none from a training document
    sources = [doc_id.rpartition("#")[0] for doc_id in pieces["doc_id"]]
    assert set(sources) == set(whole["doc_id"])
    assert all(workloads.split_of(s, 0.3, 0) == "heldout" for s in sources)
    assert len(pieces) == 3 * len(whole) == info["n_pieces"] == info["n_docs"]
    first = whole["doc_id"][0]
    assert list(pieces["doc_id"][:3]) == [f"{first}#0000", f"{first}#0001", f"{first}#0002"]
    assert pieces["text"][1] == f"second of {first}"
    assert info["n_docs_subset"] == info["n_source_docs"] == len(whole)
    assert info["split_into"] == "paragraphs" and info["min_chars"] == 0
    # max_docs samples pieces (from many source documents), not source documents
    sampled, sampled_info = load_documents(
        "w", {**spec, "split_into": "paragraphs", "max_docs": 10}, seed=0
    )
    assert len(sampled) == 10 and set(sampled["doc_id"]) <= set(pieces["doc_id"])
    assert sampled_info["n_source_docs"] == len({d.rpartition("#")[0] for d in sampled["doc_id"]})
    with pytest.raises(WorkloadError, match=r"'workloads.w.split_into': expected one of"):
        load_documents("w", {**spec, "split_into": "words"}, seed=0)
    with pytest.raises(WorkloadError, match=r"'workloads.w.min_chars'"):
        load_documents("w", {**spec, "split_into": "paragraphs", "min_chars": -1}, seed=0)


def test_split_into_in_the_config_schema():
    from exitbench.config import ConfigError, validate_config

    def study(**workload):
        return {
            "models": {"m": {"path": "x", "family": "f"}},
            "workloads": {"w": {"source": "embedded", "name": "python-docs", **workload}},
        }

    # absent keys stay absent (rule params, and so results, of other studies are unchanged)
    assert "split_into" not in validate_config(study())["workloads"]["w"]
    spec = validate_config(study(split_into="definitions", min_chars=40))["workloads"]["w"]
    assert (spec["split_into"], spec["min_chars"]) == ("definitions", 40)
    with pytest.raises(ConfigError, match=r"'workloads.w.split_into': 'words' is not one of"):
        validate_config(study(split_into="words"))
    with pytest.raises(ConfigError, match=r"'workloads.w.min_chars'"):
        validate_config(study(split_into="paragraphs", min_chars=-1))
