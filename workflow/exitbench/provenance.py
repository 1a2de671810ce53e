"""Provenance of results: package versions, and deterministic JSON files."""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "exitbench",
    "torch",
    "transformers",
    "tokenizers",
    "datasets",
    "numpy",
    "pandas",
    "pyarrow",
    "snakemake",
)


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages that can change a number."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def clean_json(value: Any, digits: int = 10) -> Any:
    """Round floats to ``digits`` significant digits, NaN/inf to None, numpy to Python."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {str(k): clean_json(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v, digits) for v in value]
    return value


def write_json(obj: Any, path: str | os.PathLike, digits: int = 10) -> Path:
    """Write ``obj`` as stable JSON (sorted keys, rounded floats) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(clean_json(obj, digits), indent=2, sort_keys=True, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


#: What each use of a local model folder (a ``save_pretrained`` folder) reads, as glob
#: patterns: the rules depend on these files, so editing one reruns what reads it.
MODEL_FILE_PATTERNS = {
    "config": ("config.json",),
    "tokenizer": (
        "config.json",
        "tokenizer*",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.*",
        "merges.txt",
        "*.model",
        "*.tiktoken",
    ),
    "weights": (
        "config.json",
        "*.safetensors",
        "*.safetensors.index.json",
        "pytorch_model*.bin",
        "pytorch_model*.bin.index.json",
    ),
}


def model_input_files(folder: str | os.PathLike, kind: str) -> list[str]:
    """The files of the model folder ``folder`` that ``kind`` (a key of
    :data:`MODEL_FILE_PATTERNS`) reads, sorted; only those that exist."""
    folder = Path(folder)
    found = {path for pattern in MODEL_FILE_PATTERNS[kind] for path in folder.glob(pattern)}
    return sorted(str(path) for path in found if path.is_file())
