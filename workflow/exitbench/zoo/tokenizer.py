"""The zoo's byte-level BPE tokenizer (``results/zoo/tokenizer``), trained on the corpora's
training split and shared by every run."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from exitbench import provenance
from exitbench.zoo.data import tokenizer_sha256, training_documents
from exitbench.zoo.plan import ENDOFTEXT

log = logging.getLogger(__name__)

TOKENIZER_INFO = "zoo_tokenizer.json"


def train_tokenizer(zoo: dict[str, Any], seed: int, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Train the zoo's byte-level BPE on the corpora's training split; save it to ``out_dir``.

    Saved as a ``PreTrainedTokenizerFast`` (bos = eos = ``<|endoftext|>``, no
    pad), loadable with ``AutoTokenizer.from_pretrained(out_dir)``; provenance
    goes to ``out_dir/zoo_tokenizer.json``. Returns that provenance.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    settings = zoo["tokenizer"]
    started = time.perf_counter()
    texts, corpora_info = [], {}
    for corpus, (frame, info) in training_documents(zoo, seed).items():
        chars = 0
        for text in frame["text"]:
            if chars >= settings["max_chars"]:
                break
            texts.append(text)
            chars += len(text)
        corpora_info[corpus] = {
            "corpus_sha256": info["corpus_sha256"],
            "train_sha256": info["workload_sha256"],
            "n_docs_train": info["n_docs"],
            "n_chars_used": chars,
        }
    log.info("training a %d-token BPE on %d documents", settings["vocab_size"], len(texts))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=settings["vocab_size"],
        min_frequency=settings["min_frequency"],
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    info = {
        "vocab_size": len(fast),
        "settings": settings,
        "seed": seed,
        "heldout_fraction": zoo["heldout_fraction"],
        "corpora": corpora_info,
        "tokenizer_sha256": tokenizer_sha256(out_dir),
        "wall_time_s": time.perf_counter() - started,
        "versions": provenance.package_versions(),
    }
    provenance.write_json(info, out_dir / TOKENIZER_INFO)
    log.info("tokenizer: %d tokens, saved to %s", len(fast), out_dir)
    return info
