"""Study configuration: validation against ``workflow/schemas/config.schema.yaml``.

Validation runs before Snakemake builds its DAG, so a wrong key or type stops
the run with the key's path (``models.gpt2.dtype``) and what was expected,
before any job starts. Defaults from the schema are filled in.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
WORKFLOW_ROOT = SCHEMA_DIR.parent.parent


class ConfigError(ValueError):
    """The study configuration is invalid; the message names the key to fix."""


def _load_yaml_schema(name: str) -> dict:
    return yaml.safe_load((SCHEMA_DIR / name).read_text())


def _with_defaults(validator_class: type) -> type:
    """A validator that also writes each property's ``default`` into the instance."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, subschema in properties.items():
                if "default" in subschema and key not in instance:
                    instance[key] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


#: Draft 2020-12 validator that also fills each property's ``default`` (config and zoo).
DefaultsValidator = _with_defaults(jsonschema.Draft202012Validator)


def key_path(error: jsonschema.ValidationError) -> str:
    """``models.gpt2.dtype`` style path of a validation error ("<top level>" if empty)."""
    return ".".join(str(part) for part in error.absolute_path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"unknown key(s) {', '.join(map(repr, extra))}{hint}"
    if error.validator == "oneOf" and isinstance(error.instance, dict):
        return "expected exactly one of 'path' (a local save_pretrained folder) or 'hf_id'"
    return error.message


def _raise_first(errors: list[jsonschema.ValidationError], prefix: str = "") -> None:
    if not errors:
        return
    errors.sort(key=lambda e: (len(list(e.absolute_path)), str(list(e.absolute_path))))
    lines = []
    for error in errors[:5]:
        path = key_path(error)
        path = f"{prefix}.{path}" if prefix and path != "<top level>" else (prefix or path)
        lines.append(f"config key '{path}': {_describe(error)}")
    more = f"\n(and {len(errors) - 5} more)" if len(errors) > 5 else ""
    raise ConfigError("invalid study configuration:\n  " + "\n  ".join(lines) + more)


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return a validated copy of ``config`` with schema defaults filled in.

    Raises :class:`ConfigError` naming the offending key path(s).
    """
    config = copy.deepcopy(dict(config))
    _raise_first(
        list(DefaultsValidator(_load_yaml_schema("config.schema.yaml")).iter_errors(config))
    )
    if "zoo" in config and (SCHEMA_DIR / "zoo.schema.yaml").exists():
        zoo_schema = _load_yaml_schema("zoo.schema.yaml")
        _raise_first(list(DefaultsValidator(zoo_schema).iter_errors(config["zoo"])), prefix="zoo")
    _check_references(config)
    return config


def section_defaults(section: str) -> dict[str, Any]:
    """The schema's defaults of the top-level config section ``section`` (``score``, ...)."""
    values: dict[str, Any] = {}
    schema = _load_yaml_schema("config.schema.yaml")["properties"][section]
    _raise_first(list(DefaultsValidator(schema).iter_errors(values)), prefix=section)
    return values


def _check_references(config: dict[str, Any]) -> None:
    models = config["models"]
    for name, entry in models.items():
        base = entry.get("base_model")
        if base is not None and base not in models:
            raise ConfigError(
                f"config key 'models.{name}.base_model': {base!r} is not a key of 'models' "
                f"(known: {', '.join(sorted(models))})"
            )
        if entry.get("revision") and "hf_id" not in entry:
            raise ConfigError(
                f"config key 'models.{name}.revision': a revision needs 'hf_id' "
                "(a local 'path' has no revisions)"
            )


def resolve_path(path: str | Path, workdir: Path | None = None) -> Path:
    """A relative data path: the working directory's copy if present, else the workflow's own."""
    path = Path(path)
    if path.is_absolute():
        return path
    local = (workdir or Path.cwd()) / path
    return local if local.exists() else WORKFLOW_ROOT / path


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a study YAML file (for notebooks and tests)."""
    return validate_config(yaml.safe_load(Path(path).read_text()))
