"""Model registry: release dates, architecture classes and sizes of hub models.

``data/registry.csv`` holds one row per Hugging Face hub model (``hf_id``) with
its family, generation, release date, architecture class (dense, moe, ssm,
hybrid), parameter counts (the text model, a tied head counted once; a
multimodal checkpoint's full count apart), config facts, tuning (base or tuned,
with the base's hub id), whether it is a positive control (trained for early
exit), gating, how its training checkpoints are named, and the sources of
these facts. ``data/registry.schema.yaml`` declares each column.

:func:`load_registry` reads and validates it: every row needs a release date,
an architecture class and a total parameter count; ``?`` (an unverified value)
is never accepted; errors name the file, the row's ``hf_id`` and the field.
:func:`fill_metadata` copies a model's metadata into the study config's
``models:`` entries by ``hf_id``, where the config does not already give it.
"""

from __future__ import annotations

import copy
import datetime
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import yaml

from exitbench.config import WORKFLOW_ROOT

log = logging.getLogger(__name__)

__all__ = [
    "METADATA_KEYS",
    "REGISTRY_SCHEMA",
    "RegistryError",
    "fill_metadata",
    "load_registry",
    "registry_record",
]

REGISTRY_SCHEMA = WORKFLOW_ROOT / "data" / "registry.schema.yaml"
# Registry columns copied into a config model entry (config key = column name).
METADATA_KEYS = (
    "family",
    "generation",
    "release",
    "arch",
    "total_params",
    "active_params",
    "multimodal_params",  # with layers, hidden, vocab: what sizes a model's jobs
    "layers",
    "hidden",
    "vocab",
    "tuning",
    "control",
    "gated",
)
UNVERIFIED_MARK = "?"
_PANDAS_DTYPES = {"integer": "Int64", "number": "float64", "boolean": "boolean"}


class RegistryError(ValueError):
    """The registry file is invalid; the message names the file, the row's hf_id and the field."""


def _schema() -> dict:
    return yaml.safe_load(REGISTRY_SCHEMA.read_text())


def _column_type(spec: dict) -> str:
    """The JSON type of a column ("string", "integer", "number", "boolean"), null aside."""
    if "enum" in spec:
        return "string"
    types = spec.get("type", "string")
    types = [types] if isinstance(types, str) else types
    return next(kind for kind in types if kind != "null")


def _parse_cell(text: str, kind: str, where: str) -> Any:
    """A CSV cell as a typed value (empty cell -> None)."""
    text = text.strip()
    if text == "":
        return None
    try:
        if kind == "integer":
            return int(text)
        if kind == "number":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
            return value
    except ValueError as err:
        raise RegistryError(
            f"{where}: {text!r} is not a{'n integer' if kind == 'integer' else ' number'}"
        ) from err
    if kind == "boolean":
        if text.lower() not in ("true", "false"):
            raise RegistryError(f"{where}: {text!r} is not a boolean (expected true or false)")
        return text.lower() == "true"
    return text


def _check_release(release: str, where: str) -> None:
    parts = [int(part) for part in release.split("-")]
    try:
        datetime.date(parts[0], parts[1], parts[2] if len(parts) == 3 else 1)
    except ValueError as err:
        raise RegistryError(f"{where}: release {release!r} is not a calendar date ({err})") from err


def _describe(error: jsonschema.ValidationError, field: str) -> str:
    if error.instance is None:
        hint = error.schema.get("description", "").strip() or "a value"
        return f"missing {field} (required: {hint})"
    return f"field {field!r}: {error.message}"


def load_registry(path: str | Path) -> pd.DataFrame:
    """Read and validate the registry CSV at ``path``; one typed row per hub model.

    Empty cells become missing values (None / NA). Raises :class:`RegistryError`
    naming the file, row and ``hf_id`` when a row lacks a required field
    (hf_id, family, generation, release, arch, total_params, source_card,
    source_release), has an unknown column, holds ``?``, a malformed value, a
    duplicate ``hf_id``, an ``active_params`` above ``total_params``, a
    ``base_hf_id`` that is not itself a row of the registry, or a ``control``
    without a ``base_hf_id``.
    """
    path = Path(path)
    if not path.is_file():
        raise RegistryError(
            f"model registry {path} not found (config key 'registry'; expected a CSV "
            "like data/registry.csv)"
        )
    schema = _schema()
    columns = schema["properties"]
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    unknown = [column for column in raw.columns if column not in columns]
    if unknown:
        raise RegistryError(
            f"registry {path}: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(columns)}"
        )
    missing = [column for column in schema["required"] if column not in raw.columns]
    if missing:
        raise RegistryError(f"registry {path}: missing column(s) {', '.join(map(repr, missing))}")

    validator = jsonschema.Draft202012Validator(schema)
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for number, cells in enumerate(raw.to_dict("records"), start=2):  # line 1 is the header
        hf_id = cells.get("hf_id", "").strip() or "<empty>"
        where = f"registry {path} line {number} (hf_id {hf_id!r})"
        for column, text in cells.items():
            # Source URLs may carry query strings; every other cell is a value.
            if UNVERIFIED_MARK in text and not column.startswith("source"):
                raise RegistryError(
                    f"{where}: field {column!r} holds {text!r}; '?' marks an unverified value, "
                    "which the registry does not accept: verify it or leave the cell empty"
                )
        record = {
            column: _parse_cell(text, _column_type(columns[column]), f"{where}: field {column!r}")
            for column, text in cells.items()
        }
        errors = sorted(validator.iter_errors(record), key=lambda e: list(e.absolute_path))
        if errors:
            error = errors[0]
            field = str(error.absolute_path[0]) if error.absolute_path else "<row>"
            raise RegistryError(f"{where}: {_describe(error, field)}")
        _check_release(record["release"], where)
        active = record.get("active_params")
        if active is not None and active > record["total_params"]:
            raise RegistryError(
                f"{where}: active_params {active:g} exceeds total_params {record['total_params']:g}"
            )
        key = record["hf_id"].lower()
        if key in seen:
            raise RegistryError(
                f"{where}: hf_id repeats line {seen[key]} (hub ids are case-insensitive)"
            )
        seen[key] = number
        records.append(record)

    for number, record in enumerate(records, start=2):
        base = record.get("base_hf_id")
        where = f"registry {path} line {number} (hf_id {record['hf_id']!r})"
        if base is not None and base.lower() not in seen:
            raise RegistryError(f"{where}: base_hf_id {base!r} is not a row of the registry")
        if base is not None and record.get("tuning") != "tuned" and not record.get("control"):
            raise RegistryError(
                f"{where}: base_hf_id is set, so tuning must be 'tuned' (or control true)"
            )
        if record.get("control") and base is None:
            raise RegistryError(
                f"{where}: control is true but base_hf_id is empty; a positive control is "
                "compared with the base it was trained from: set base_hf_id"
            )

    frame = pd.DataFrame.from_records(records, columns=list(raw.columns))
    for column in frame.columns:
        dtype = _PANDAS_DTYPES.get(_column_type(columns[column]))
        frame[column] = frame[column].astype(dtype) if dtype else frame[column].astype(object)
    log.info("model registry %s: %d models", path, len(frame))
    return frame


def _native(value: Any) -> Any:
    """A registry cell as a plain Python value (missing -> None)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def registry_record(registry: pd.DataFrame, hf_id: str) -> dict[str, Any] | None:
    """The registry row of ``hf_id`` (case-insensitive) as a dict of plain values, or None."""
    matches = registry.loc[registry["hf_id"].str.lower() == hf_id.lower()]
    if matches.empty:
        return None
    return {column: _native(value) for column, value in matches.iloc[0].items()}


def _base_model_key(models: Mapping[str, Mapping[str, Any]], base_hf_id: str) -> str | None:
    """The models key whose hf_id is ``base_hf_id`` at its final revision (none or ``main``)."""
    candidates = [
        name
        for name, entry in models.items()
        if str(entry.get("hf_id", "")).lower() == base_hf_id.lower()
        and entry.get("revision") in (None, "main")
    ]
    return candidates[0] if len(candidates) == 1 else None


def fill_metadata(
    models: dict[str, dict[str, Any]], registry: pd.DataFrame
) -> dict[str, dict[str, Any]]:
    """A copy of ``models`` (config ``models:``) with registry metadata filled in by ``hf_id``.

    For each entry with an ``hf_id`` found in ``registry``, every key of
    :data:`METADATA_KEYS` the entry lacks and the registry knows is copied;
    ``base_model`` is set to the models key of the registry's ``base_hf_id``
    when exactly one entry has that hub id at its final revision. Keys given
    in the config win. Entries with a ``path`` or an unknown ``hf_id`` are left
    as they are (the config check decides whether they have what they need).
    """
    filled = copy.deepcopy(models)
    found = 0
    for name, entry in filled.items():
        hf_id = entry.get("hf_id")
        record = registry_record(registry, hf_id) if hf_id else None
        if record is None:
            if hf_id:
                log.info(
                    "model %s: hf_id %s is not in the registry; metadata from the config only",
                    name,
                    hf_id,
                )
            continue
        found += 1
        for key in METADATA_KEYS:
            if key not in entry and record.get(key) is not None:
                entry[key] = record[key]
        base_hf_id = record.get("base_hf_id")
        if "base_model" not in entry and base_hf_id:
            base = _base_model_key(models, base_hf_id)
            if base is not None and base != name:
                entry["base_model"] = base
    log.info("registry metadata filled for %d of %d models", found, len(filled))
    return filled
