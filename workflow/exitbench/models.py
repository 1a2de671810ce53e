"""Loading the models of a study: configs, tokenizers and weights, with errors a user can act on.

A ``models:`` entry of the study config names its weights by ``path`` (a
``save_pretrained`` folder, e.g. a zoo model) or by ``hf_id`` plus an optional
``revision`` (a Hugging Face hub repository, e.g. a Pythia checkpoint
``step1000``), and a ``dtype``. Zoo models and hub models go through exactly the
same code.

Every failure raises :class:`ModelLoadError` with one message that names the
config key to fix (``models.<name>.path``, ``.hf_id``, ``.revision``,
``.dtype``), its value, and what to do. The architecture is checked against the
architecture table (:func:`exitbench.architectures.check_supported`) from the config alone,
before any weights are read.

The hub's offline switch (``HF_HUB_OFFLINE=1``) and cache location
(``HF_HUB_CACHE`` or ``HF_HOME``) are read from the environment at call time,
so they can change within one process.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import transformers
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from exitbench import architectures

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that use it, not here: a tokenize job loads only a
# tokenizer and runs without torch (exitbench.tokens.hide_torch), 2.5 CPU s less per job.

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16", "auto")  # torch dtype names; auto: the checkpoint's own
HUB = "https://huggingface.co"


class ModelLoadError(ValueError):
    """A model of the study cannot be loaded; the message names the config key to fix."""


# ---------------------------------------------------------------------------
# Sources and the hub cache


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether hub look-ups are switched off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return _truthy(env) or bool(hub_constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    """The hub cache folder: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else the library default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(hub_constants.HF_HUB_CACHE).expanduser()


def resolve_source(name: str, entry: dict[str, Any]) -> tuple[str, str | None]:
    """The local folder or hub id of ``models.<name>``, and its revision (None: default branch).

    A ``path`` must be an existing folder (relative paths are relative to the
    working directory); it has no revision.
    """
    if "path" in entry:
        path = Path(entry["path"]).expanduser()
        if not path.is_dir():
            raise ModelLoadError(
                f"config key 'models.{name}.path' ({entry['path']!r}): folder does not exist "
                f"(looked at {path.resolve()}); expected a save_pretrained folder with "
                "config.json, e.g. a zoo model under results/zoo/, or use 'hf_id' for a hub model"
            )
        return str(path), None
    if "hf_id" in entry:
        return str(entry["hf_id"]), entry.get("revision")
    raise ModelLoadError(
        f"config key 'models.{name}': needs 'path' (a save_pretrained folder) or 'hf_id' "
        f"(a hub id org/name); has {sorted(entry)}"
    )


def _hub_kwargs(entry: dict[str, Any], revision: str | None) -> dict[str, Any]:
    if "hf_id" not in entry:
        return {}
    return {
        "revision": revision,
        "cache_dir": str(hub_cache_dir()),
        "local_files_only": hub_offline(),
    }


def _cached_revisions(repo_dir: Path) -> list[str]:
    """Names of cached refs, then commits that no ref points to."""
    ref_files = [p for p in (repo_dir / "refs").rglob("*") if p.is_file()]
    refs = sorted(str(p.relative_to(repo_dir / "refs")) for p in ref_files)
    targets = {p.read_text().strip() for p in ref_files}
    snapshots = sorted(p.name for p in (repo_dir / "snapshots").glob("*") if p.is_dir())
    return refs + [sha for sha in snapshots if sha not in targets]


def _revision_cached(repo_dir: Path, revision: str) -> bool:
    return (repo_dir / "refs" / revision).is_file() or (repo_dir / "snapshots" / revision).is_dir()


def _cause(err: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of ``kinds`` in ``err``'s cause chain (transformers wraps hub errors)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _explain(name: str, entry: dict[str, Any], err: Exception, what: str) -> ModelLoadError:
    """Turn a transformers / huggingface_hub failure into one actionable :class:`ModelLoadError`."""
    if "path" in entry:
        path = entry["path"]
        if not (Path(path) / "config.json").is_file():
            return ModelLoadError(
                f"config key 'models.{name}.path' ({path!r}): folder has no config.json; expected "
                "a folder written by save_pretrained (model and tokenizer)"
            )
        return ModelLoadError(
            f"config key 'models.{name}.path' ({path!r}): cannot load the {what}: {err}; "
            "check that the folder holds a complete save_pretrained output"
        )

    hf_id, revision = entry["hf_id"], entry.get("revision")
    rev_note = f" --revision {revision}" if revision else ""
    download = f"`hf download {hf_id}{rev_note}`"
    if isinstance(_cause(err, (GatedRepoError,)), GatedRepoError):
        return ModelLoadError(
            f"config key 'models.{name}.hf_id' ({hf_id!r}): the repository is gated; accept its "
            f"licence on {HUB}/{hf_id} while logged in, then authenticate here with "
            "`hf auth login` or by setting HF_TOKEN"
        )
    if _cause(err, (RevisionNotFoundError,)) is not None:
        return ModelLoadError(
            f"config key 'models.{name}.revision' ({revision!r}): no such branch, tag or commit "
            f"in {hf_id!r}; see {HUB}/{hf_id}/tree/main or "
            f"`huggingface_hub.list_repo_refs({hf_id!r})` for the revisions that exist"
        )
    if _cause(err, (RepositoryNotFoundError,)) is not None:
        return ModelLoadError(
            f"config key 'models.{name}.hf_id' ({hf_id!r}): no such model on the Hugging Face hub "
            f"(check the spelling at {HUB}/models; a private repository needs `hf auth login` "
            "or HF_TOKEN)"
        )
    if _cause(err, (HFValidationError,)) is not None:
        return ModelLoadError(
            f"config key 'models.{name}.hf_id' ({hf_id!r}): not a valid hub id; expected "
            "'org/name' (use 'path' for a local folder)"
        )
    if _cause(err, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError)) is not None:
        cache = hub_cache_dir()
        why = (
            "hub look-ups are off (HF_HUB_OFFLINE=1)"
            if hub_offline()
            else "the hub could not be reached (no network)"
        )
        repo_dir = cache / repo_folder_name(repo_id=hf_id, repo_type="model")
        if revision and repo_dir.is_dir() and not _revision_cached(repo_dir, revision):
            cached = ", ".join(_cached_revisions(repo_dir)) or "none"
            return ModelLoadError(
                f"config key 'models.{name}.revision' ({revision!r}): revision not in the local "
                f"Hugging Face cache ({cache}) and {why}; cached revisions of {hf_id}: {cached}. "
                f"Download it with {download} on a machine with network (same HF_HOME), or run "
                "online"
            )
        state = "not in" if not repo_dir.is_dir() else f"incomplete ({what} missing) in"
        return ModelLoadError(
            f"config key 'models.{name}.hf_id' ({hf_id!r}): {state} the local Hugging Face "
            f"cache ({cache}) and {why}. Download it with {download} on a machine with "
            "network (same HF_HOME / HF_HUB_CACHE), or run online (unset HF_HUB_OFFLINE)"
        )
    at_revision = f", revision {revision!r}" if revision else ""
    return ModelLoadError(
        f"config key 'models.{name}.hf_id' ({hf_id!r}{at_revision}): cannot load the {what}: {err}"
    )


def _corrupt_weights(
    name: str, entry: dict[str, Any], source: str, err: Exception
) -> ModelLoadError:
    """A weights file that safetensors cannot read: name the model and the file(s)."""
    folder = Path(source)
    if folder.is_dir():
        broken = []
        for file in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(file, framework="pt"):
                    pass
            except (SafetensorError, OSError) as why:
                broken.append(f"{file} ({why})")
        files = "; ".join(broken) or f"a .safetensors file in {folder} ({err})"
        return ModelLoadError(
            f"{_source_key(name, entry)}: model {name!r} has a corrupt or truncated weights "
            f"file: {files}; copy or save_pretrained the model again"
        )
    return ModelLoadError(
        f"{_source_key(name, entry)}: model {name!r} has a corrupt or truncated .safetensors "
        f"file in the Hugging Face cache ({hub_cache_dir()}): {err}; delete the model from the "
        f"cache (`hf cache delete`) and download it again"
    )


def _source_key(name: str, entry: dict[str, Any]) -> str:
    key = "path" if "path" in entry else "hf_id"
    return f"config key 'models.{name}.{key}' ({entry.get(key)!r})"


# ---------------------------------------------------------------------------
# Config, tokenizer, weights


def load_config(name: str, entry: dict[str, Any]) -> PretrainedConfig:
    """The model's ``PretrainedConfig`` (no weights), checked against the lens table.

    Raises :class:`ModelLoadError` for a missing source, revision, gated repo,
    or a ``model_type`` the lens does not support.
    """
    source, revision = resolve_source(name, entry)
    try:
        config = AutoConfig.from_pretrained(source, **_hub_kwargs(entry, revision))
    except (OSError, ValueError) as err:
        if "does not recognize this architecture" in str(err):
            raise ModelLoadError(
                f"{_source_key(name, entry)}: transformers {transformers.__version__} does not "
                "know the model_type in its config.json; upgrade transformers, or pick a "
                "supported model"
            ) from err
        raise _explain(name, entry, err, "config.json") from err
    try:
        architectures.check_supported(config.model_type)
    except architectures.UnsupportedArchitecture as err:
        raise ModelLoadError(f"{_source_key(name, entry)}: {err}") from err
    return config


def load_tokenizer(name: str, entry: dict[str, Any]) -> Any:
    """The model's fast tokenizer, unchanged (a tokenizer without a pad token is fine)."""
    source, revision = resolve_source(name, entry)
    try:
        return AutoTokenizer.from_pretrained(source, use_fast=True, **_hub_kwargs(entry, revision))
    except (OSError, ValueError) as err:
        raise _explain(name, entry, err, "tokenizer") from err


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; a missing GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(
            f"config key 'extract.device' ({device!r}): no CUDA device is visible; "
            "use 'auto' or 'cpu'"
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise ModelLoadError(
            f"config key 'extract.device' ({device!r}): expected auto, cpu, cuda or cuda:N"
        )
    return device


def torch_dtype(name: str, entry: dict[str, Any]) -> torch.dtype | str:
    """The ``dtype`` key as a torch dtype (``"auto"``: the checkpoint's own dtype)."""
    import torch

    value = entry.get("dtype", "float32")
    if value not in DTYPES:
        raise ModelLoadError(
            f"config key 'models.{name}.dtype' ({value!r}): expected one of {', '.join(DTYPES)}"
        )
    return value if value == "auto" else getattr(torch, value)


def load_model(
    name: str, entry: dict[str, Any], device: str = "auto"
) -> tuple[torch.nn.Module, torch.dtype]:
    """The model in eval mode on ``device`` and the dtype its weights have.

    The config is checked first (no weights read for an unsupported model).
    With more than one GPU the model is split over them (``device_map="auto"``).
    """
    import torch

    config = load_config(name, entry)
    dtype = torch_dtype(name, entry)
    device = resolve_device(device)
    source, revision = resolve_source(name, entry)
    placement: dict[str, Any] = {}
    if device == "cuda" and torch.cuda.device_count() > 1:
        placement["device_map"] = "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, config=config, dtype=dtype, **placement, **_hub_kwargs(entry, revision)
        )
    except SafetensorError as err:
        raise _corrupt_weights(name, entry, source, err) from err
    except (OSError, ValueError) as err:
        raise _explain(name, entry, err, "weights") from err
    if not placement:
        model = model.to(device)
    model.eval()
    weights_dtype = next(model.parameters()).dtype
    if device == "cpu" and weights_dtype in (torch.bfloat16, torch.float16):
        logger.warning(
            "models.%s.dtype=%s gives %s weights on CPU: slow and less precise than float32 "
            "(the lens reductions still run in float32); prefer dtype float32 on CPU",
            name,
            entry.get("dtype", "float32"),
            str(weights_dtype).removeprefix("torch."),
        )
    logger.info(
        "loaded %s (%s%s) as %s on %s",
        name,
        source,
        f"@{revision}" if revision else "",
        weights_dtype,
        placement.get("device_map", device),
    )
    return model, weights_dtype


# ---------------------------------------------------------------------------
# Config-only description


def max_positions(config: PretrainedConfig) -> int | None:
    """Longest context (``max_position_embeddings`` / ``n_positions``); None for SSMs."""
    value = architectures.config_value(config, "max_positions", default=None)
    return value if isinstance(value, int) and value > 0 else None


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def describe_model(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Architecture facts from the config alone (written to ``results/models/{model}.json``).

    ``num_layers`` (L) and ``layer_numbers`` come from the lens applied to a
    weightless copy of the model on the ``meta`` device, so they are exactly
    the layers extraction writes.
    """
    import torch

    from exitbench.lens import LogitLens

    config = load_config(name, entry)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    lens = LogitLens.from_model(skeleton)
    source, revision = resolve_source(name, entry)
    return {
        "name": name,
        "source": {
            "path" if "path" in entry else "hf_id": source if "hf_id" in entry else entry["path"],
            "revision": revision,
        },
        "model_type": config.model_type,
        "num_layers": int(lens.num_layers),
        "layer_numbers": [int(layer) for layer in lens.layer_numbers],
        "hidden_size": int(architectures.config_value(config, "hidden_size", default=0)),
        "vocab_size": int(architectures.config_value(config, "vocab_size")),
        "max_positions": max_positions(config),
        "config": _json_safe(config.to_dict()),
    }
