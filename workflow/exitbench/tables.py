"""Parquet tables with schemas: every table exitbench writes is declared in
``workflow/schemas/<name>.schema.yaml`` and checked when written and read.

A schema file lists columns in order::

    name: lens
    description: ...
    columns:
      - {name: seq_id, type: int64, nullable: false, description: ...}
      - {name: topk_ids, type: "list<int32>", ...}

Writes are atomic (temporary file in the same folder, then ``os.replace``), use
zstd compression and deterministic settings, so identical tables give
byte-identical files and a killed job never leaves half a file behind.
"""

from __future__ import annotations

import os
import tempfile
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"

_SCALAR_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "date": pa.date32(),
}


class TableError(ValueError):
    """A table does not match its schema, or a Parquet file cannot be read."""


def parse_type(spec: str) -> pa.DataType:
    """Turn ``int32`` or ``list<float32>`` into an Arrow type."""
    spec = spec.strip()
    if spec.startswith("list<") and spec.endswith(">"):
        return pa.list_(parse_type(spec[5:-1]))
    if spec not in _SCALAR_TYPES:
        raise TableError(f"unknown column type {spec!r}; known: {sorted(_SCALAR_TYPES)}")
    return _SCALAR_TYPES[spec]


@cache
def load_schema(name: str) -> pa.Schema:
    """The Arrow schema declared in ``workflow/schemas/{name}.schema.yaml``."""
    path = SCHEMA_DIR / f"{name}.schema.yaml"
    if not path.exists():
        raise TableError(f"no table schema {name!r}: expected {path}")
    spec = yaml.safe_load(path.read_text())
    fields = [
        pa.field(
            col["name"],
            parse_type(col["type"]),
            nullable=col.get("nullable", False),
            metadata={"description": col.get("description", "")},
        )
        for col in spec["columns"]
    ]
    return pa.schema(fields, metadata={"exitbench.table": name})


def conform(table: pa.Table, name: str) -> pa.Table:
    """Select, order and cast ``table``'s columns to schema ``name``.

    Fails naming the column when one is missing, cannot be cast, or holds
    nulls where the schema forbids them.
    """
    schema = load_schema(name)
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise TableError(f"table {name!r} is missing column(s) {missing}; has {table.column_names}")
    columns = []
    for field in schema:
        column = table.column(field.name)
        if not field.nullable and column.null_count:
            raise TableError(f"table {name!r}: column {field.name!r} has {column.null_count} nulls")
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise TableError(
                f"table {name!r}: column {field.name!r} of type {column.type} "
                f"cannot be stored as {field.type}: {err}"
            ) from err
    return pa.Table.from_arrays(columns, schema=schema)


def write_table(table: pa.Table, path: str | os.PathLike, name: str) -> Path:
    """Check ``table`` against schema ``name`` and write it to ``path`` atomically."""
    path = Path(path)
    table = conform(table, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            use_dictionary=True,
            write_statistics=True,
            row_group_size=1 << 20,
        )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_table(path: str | os.PathLike, name: str, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file written for schema ``name``.

    A truncated or corrupt file, or one whose columns do not match the schema,
    fails with a :class:`TableError` naming the file and how to recompute it.
    """
    path = Path(path)
    schema = load_schema(name)
    try:
        file = pq.ParquetFile(path)
        found = file.schema_arrow
    except (OSError, pa.ArrowInvalid) as err:
        raise TableError(
            f"{path}: not a readable Parquet file ({err}); delete it and rerun "
            f"snakemake with --rerun-incomplete to recompute it"
        ) from err
    for field in schema:
        if field.name not in found.names:
            raise TableError(f"{path}: column {field.name!r} of table {name!r} is missing")
        if not found.field(field.name).type.equals(field.type):
            raise TableError(
                f"{path}: column {field.name!r} is {found.field(field.name).type}, "
                f"table {name!r} expects {field.type}"
            )
    try:
        return file.read(columns=columns)
    except (OSError, pa.ArrowInvalid) as err:
        raise TableError(
            f"{path}: Parquet data is corrupt ({err}); delete it and rerun "
            "snakemake with --rerun-incomplete to recompute it"
        ) from err
