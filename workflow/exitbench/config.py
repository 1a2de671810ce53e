"""Study configuration: validation against ``workflow/schemas/config.schema.yaml``.

Validation runs before Snakemake builds its DAG, so a wrong key or type stops
the run with the key's path (``models.gpt2.dtype``) and what was expected,
before any job starts. Defaults from the schema are filled in, and what a study
with a ``zoo:`` would otherwise copy by hand is derived from it (the zoo's model
entries, the held-out workloads' ``heldout_fraction``; :mod:`exitbench.zoo.plan`).
:func:`validate_config` is the one validator: the rest of the code trusts its result.
"""

from __future__ import annotations

import copy
import os
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from exitbench.tables import SCHEMA_DIR

WORKFLOW_ROOT = SCHEMA_DIR.parent.parent
CONFIG_SCHEMA = "config.schema.yaml"
#: Schemas that config.schema.yaml refers to by file name (``$ref: zoo.schema.yaml``).
REFERENCED_SCHEMAS = ("zoo.schema.yaml",)


class ConfigError(ValueError):
    """The study configuration is invalid; the message names the key to fix."""


@cache
def _load_yaml_schema(name: str) -> dict:
    return yaml.safe_load((SCHEMA_DIR / name).read_text())


@cache
def _registry() -> Registry:
    resources = []
    for name in REFERENCED_SCHEMAS:
        # Without its `$schema`, jsonschema keeps DefaultsValidator inside the referenced file
        # (with it, it would switch to the plain draft validator and fill no defaults there).
        contents = {k: v for k, v in _load_yaml_schema(name).items() if k != "$schema"}
        resources.append((name, Resource(contents=contents, specification=DRAFT202012)))
    return Registry().with_resources(resources)


def _validator(schema: dict) -> jsonschema.protocols.Validator:
    """A :data:`DefaultsValidator` for ``schema`` that resolves the referenced schema files."""
    return DefaultsValidator(schema, registry=_registry())


def _is_strict_integer(checker: Any, instance: Any) -> bool:
    """``type: integer`` without draft 2020-12's 48.0: a float in the YAML is a mistake there."""
    return isinstance(instance, int) and not isinstance(instance, bool)


def _with_defaults(validator_class: type) -> type:
    """A validator that also writes each property's ``default`` into the instance, and
    whose ``integer`` type rejects floats (``seq_len: 48.0``)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, subschema in properties.items():
                if "default" in subschema and key not in instance:
                    instance[key] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(
        validator_class,
        {"properties": set_defaults},
        type_checker=validator_class.TYPE_CHECKER.redefine("integer", _is_strict_integer),
    )


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
    expected = error.validator_value if error.validator == "type" else ()
    if isinstance(error.instance, float) and "integer" in (
        [expected] if isinstance(expected, str) else expected
    ):
        hint = f" (write {int(error.instance)})" if error.instance.is_integer() else ""
        return f"expected an integer, got the float {error.instance!r}{hint}"
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

    One pass of the schema (``zoo:`` included, through ``$ref: zoo.schema.yaml``), then,
    for a study with a zoo, :func:`exitbench.zoo.plan.derive_study` checks the runs and adds
    their model entries; then the cross-references (``base_model``, ``revision``).
    Raises :class:`ConfigError` naming the offending key path(s).
    """
    given = config
    config = copy.deepcopy(dict(config))
    schema = _load_yaml_schema(CONFIG_SCHEMA)
    _raise_first(list(_validator(schema).iter_errors(config)))
    if "zoo" in config:
        from exitbench.zoo import plan  # imported here: exitbench.zoo imports this module

        plan.derive_study(config, given)
        written = given.get("models") or {}
        for name, entry in config["models"].items():  # defaults (dtype) of the generated ones
            if name not in written:
                errors = _validator(schema["$defs"]["model"]).iter_errors(entry)
                _raise_first(list(errors), prefix=f"models.{name}")
        if not config["models"]:
            raise ConfigError(
                "config key 'models': the study has no models; add models or zoo.runs"
            )
    _check_references(config)
    return config


def section_defaults(section: str) -> dict[str, Any]:
    """The schema's defaults of the top-level config section ``section`` (``score``, ...)."""
    values: dict[str, Any] = {}
    schema = _load_yaml_schema(CONFIG_SCHEMA)["properties"][section]
    _raise_first(list(_validator(schema).iter_errors(values)), prefix=section)
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


class _StrictLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects a key given twice in one mapping."""


def _strict_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(
                f"{key_node.start_mark.name}: key {key!r} is given twice in one mapping "
                f"(lines {seen[key]} and {line}); YAML would silently keep only the last "
                "one: delete or rename one of them"
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def load_yaml_strict(path: str | Path) -> Any:
    """The YAML file ``path``, raising :class:`ConfigError` on a duplicate key (naming it
    and both lines) where ``yaml.safe_load`` would keep the last value without a word."""
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def check_config_files(paths: list[str | Path]) -> None:
    """Re-read the study's config files (Snakemake's ``--configfile``) strictly: Snakemake's
    own loader has already merged them, silently keeping the last of a duplicated key."""
    for path in paths:
        if str(path).endswith((".yaml", ".yml")) and Path(path).is_file():
            load_yaml_strict(path)


def check_writable(directory: str | Path) -> None:
    """Raise :class:`ConfigError` unless ``directory`` (``results``) can be created and
    written, once before any job starts, instead of a Snakemake traceback mid-run."""
    directory = Path(directory)
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    target = directory if directory.exists() else existing
    probe = target / f".exitbench-write-check-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"directory {target.resolve()} is not writable ({err.strerror}): the workflow writes "
            f"its outputs under {directory}/; make it writable (chmod u+w) or run in another "
            "working directory (--directory)"
        ) from err


def n_lens_shards(config: dict[str, Any]) -> int:
    """Lens shards per (model, workload) pair: ceil(max_sequences / shard_sequences)."""
    return -(-config["tokenize"]["max_sequences"] // config["extract"]["shard_sequences"])
