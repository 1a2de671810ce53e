"""Shared fixtures: tiny models saved with save_pretrained, loaded like hub models."""

from __future__ import annotations

import os

# before transformers/huggingface_hub import: they read these once, at import time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    Mamba2Config,
    PreTrainedTokenizerFast,
)

REPO = Path(__file__).resolve().parent.parent

TINY_VOCAB = 384


def train_tiny_tokenizer(vocab_size: int = TINY_VOCAB) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the Python docs' first topics (offline, deterministic)."""
    from pydoc_data.topics import topics

    texts = [topics[key] for key in sorted(topics)[:40]]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


def tiny_config(kind: str, vocab_size: int):
    common = {"vocab_size": vocab_size, "bos_token_id": 0, "eos_token_id": 0}
    if kind == "llama":
        return LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **common,
        )
    if kind == "gpt2":
        return GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=128, **common)
    if kind == "mamba2":
        return Mamba2Config(
            hidden_size=32,
            num_hidden_layers=3,
            state_size=8,
            expand=2,
            n_groups=1,
            head_dim=8,
            num_heads=8,
            conv_kernel=4,
            chunk_size=16,
            **common,
        )
    raise ValueError(kind)


def save_tiny_model(kind: str, path: Path, seed: int = 0) -> Path:
    """Build a random tiny ``kind`` model plus tokenizer and save both to ``path``."""
    tokenizer = train_tiny_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, len(tokenizer)))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {kind: save_tiny_model(kind, root / kind) for kind in ("llama", "gpt2", "mamba2")}
