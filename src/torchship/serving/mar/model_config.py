"""An archive's own settings: its ``model-config.yaml`` (the archiver's ``--config-file``) and
config.properties' ``models=`` entries mapped onto :class:`~torchship.serving.settings.ModelSettings` with
TorchServe's meaning, and its ``requirements.txt`` checked against what is installed (never installed).

TorchServe's keys and what they become here:

    minWorkers       workers            maxWorkers       max_workers
    batchSize        batch_size         maxBatchDelay    max_batch_delay (milliseconds, both)
    responseTimeout  response_timeout   startupTimeout   startup_timeout (seconds, both)
    jobQueueSize     job_queue_size     deviceType       device (cpu; gpu → auto: a GPU when there is one)

Every other key TorchServe reads there (``parallelType``, ``torchrun``, ``continuousBatching``, ...) is
reported by name when it asks for something, never silently dropped. Other top-level keys of
``model-config.yaml`` (``handler:``, ``pt2:``, ...) belong to the handler, which reads them from
``context.model_yaml_config``, and are not reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from torchship.errors import ConfigError, PackageError
from torchship.serving.settings import ModelSettings

if TYPE_CHECKING:
    from torchship.serving.mar.archive import ModelArchive

__all__ = [
    "NOT_HONOURED",
    "check_requirements",
    "model_yaml_settings",
    "read_model_yaml",
    "torchserve_model_settings",
]

MAX_MODEL_YAML_BYTES = 1 << 20
MAX_REQUIREMENTS_BYTES = 1 << 20

# TorchServe key → ModelSettings field, for the integer settings.
_INTEGERS = {
    "minWorkers": "workers",
    "maxWorkers": "max_workers",
    "batchSize": "batch_size",
    "maxBatchDelay": "max_batch_delay",
    "responseTimeout": "response_timeout",
    "startupTimeout": "startup_timeout",
    "jobQueueSize": "job_queue_size",
}
# config.properties' models= entries also carry these; the registration reads them, they are not settings.
_READ_BY_REGISTRATION = frozenset({"defaultVersion", "marName"})

# The keys TorchServe's frontend reads that torchship does not honour, with TorchServe's default (a key left
# at its default asks for nothing and is not reported) and why.
NOT_HONOURED: dict[str, tuple[object, str]] = {
    "deviceIds": (None, "workers spread over the visible GPUs; limit them with CUDA_VISIBLE_DEVICES"),
    "parallelType": ("none", "model parallelism (torchrun) is not supported: each worker loads the model"),
    "parallelLevel": (0, "model parallelism (torchrun) is not supported: each worker loads the model"),
    "torchrun": (None, "model parallelism (torchrun) is not supported: each worker loads the model"),
    "maxRetryTimeoutInSec": (300, "a failed worker is restarted with torchship's own back-off"),
    "clientTimeoutInMills": (0, "requests wait up to responseTimeout"),
    "useJobTicket": (False, "requests queue up to jobQueueSize"),
    "sequenceMaxIdleMSec": (0, "stateful sequence batching is not supported"),
    "sequenceTimeoutMSec": (0, "stateful sequence batching is not supported"),
    "maxSequenceJobQueueSize": (1, "stateful sequence batching is not supported"),
    "maxNumSequence": (1, "stateful sequence batching is not supported"),
    "sequenceBatching": (False, "stateful sequence batching is not supported"),
    "continuousBatching": (False, "continuous batching is not supported: batches run whole"),
    "asyncCommunication": (False, "workers answer each batch in turn"),
    "useVenv": (False, "workers run in the server's environment; install the requirements there"),
    "runtimeType": ("python", "only the python runtime is served"),
}
_FRONTEND_KEYS = frozenset({*_INTEGERS, "deviceType", *NOT_HONOURED})


def torchserve_model_settings(values: Mapping[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """``values`` with TorchServe's keys (a config.properties ``models=`` entry, or the frontend part of a
    ``model-config.yaml``) → the :class:`ModelSettings` changes they make, and the names of the keys
    torchship does not honour. ``defaultVersion`` and ``marName`` are left to the registration. A value out
    of range is a :class:`ConfigError` naming ``where`` and the key.

    >>> torchserve_model_settings({"batchSize": 4, "maxBatchDelay": 50, "useVenv": True}, "models=")
    ({'batch_size': 4, 'max_batch_delay': 50}, ['useVenv'])
    """
    changes: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in values.items():
        change = _setting(key, value)
        if change is not None:
            changes[change[0]] = change[1]
        elif key not in _READ_BY_REGISTRATION and not _asks_nothing(key, value):
            ignored.append(key)
    _validate(changes, values, where)
    return changes, ignored


def _setting(key: str, value: object) -> tuple[str, object] | None:
    if key in _INTEGERS:
        number = _integer(value)
        return None if number is None else (_INTEGERS[key], number)
    if key == "deviceType" and isinstance(value, str) and value.lower() in ("cpu", "gpu"):
        # TorchServe loads a "gpu" model on the CPU of a host without GPUs: torchship's "auto".
        return "device", "cpu" if value.lower() == "cpu" else "auto"
    return None


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,12}", value.strip()):
        return int(value)
    return None


def _asks_nothing(key: str, value: object) -> bool:
    """A key TorchServe reads, left at its default (``useVenv: false``), or a python runtime."""
    if key == "runtimeType":
        return value in ("python", "python3")
    default = NOT_HONOURED.get(key, (object(), ""))[0]
    return value == default or (
        isinstance(default, str) and isinstance(value, str) and value.lower() == default
    )


def _validate(changes: dict[str, Any], values: Mapping[str, Any], where: str) -> None:
    try:
        ModelSettings().replace(**changes)
    except ConfigError as exc:
        keys = {field: key for key, field in _INTEGERS.items()} | {"device": "deviceType"}
        named = ", ".join(
            f"{keys.get(field, field)}={values.get(keys.get(field, field))!r}" for field in changes
        )
        raise ConfigError(f"{where}: {exc.message} (from {named})") from exc


# ------------------------------------------------------------------------------------- model-config.yaml


def read_model_yaml(archive: ModelArchive) -> dict[str, Any]:
    """The archive's ``model-config.yaml`` as TorchServe hands it to the handler
    (``context.model_yaml_config``): ``{}`` when the manifest names none."""
    if archive.config_file is None:
        return {}
    path = archive.path / archive.config_file
    raw = _read_limited(path, MAX_MODEL_YAML_BYTES, archive.source.name)
    try:
        values = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise PackageError(f"{archive.source.name}: {archive.config_file} is not valid YAML ({exc})") from exc
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(key, str) for key in values):
        raise PackageError(
            f"{archive.source.name}: {archive.config_file} must hold a mapping of names to values"
        )
    return values


def model_yaml_settings(archive: ModelArchive) -> tuple[dict[str, Any], list[str]]:
    """The :class:`ModelSettings` changes of the archive's ``model-config.yaml``, and the names of its
    TorchServe keys torchship does not honour (see the module docstring), read with TorchServe's meaning:
    a number at 0 or below is "not set", and the workers count only as a pair (``minWorkers`` above 0,
    ``maxWorkers`` at least as large). A key that looks like one of TorchServe's but is spelled otherwise
    (``batch_size``) is reported too."""
    values = read_model_yaml(archive)
    frontend = {key: value for key, value in values.items() if key in _FRONTEND_KEYS}
    ignored = [key for key in values if key not in _FRONTEND_KEYS and _normal(key) in _NORMAL_FRONTEND]
    for key in list(frontend):
        number = _integer(frontend[key]) if key in _INTEGERS and key not in _WORKERS else None
        if number is not None and number <= 0:
            del frontend[key]
    ignored += _worker_pair(frontend)
    changes, not_honoured = torchserve_model_settings(
        frontend, f"{archive.source.name}: {archive.config_file}"
    )
    return changes, not_honoured + ignored


_WORKERS = ("minWorkers", "maxWorkers")


def _worker_pair(frontend: dict[str, Any]) -> list[str]:
    """Drop the worker counts TorchServe would not apply, returning their names."""
    low, high = (_integer(frontend.get(key)) for key in _WORKERS)
    if low is not None and high is not None and low > 0 and high >= low:
        return []
    return [key for key in _WORKERS if frontend.pop(key, None) is not None]


def _normal(key: str) -> str:
    return re.sub(r"[_\-\s]", "", key).lower()


_NORMAL_FRONTEND = frozenset(_normal(key) for key in _FRONTEND_KEYS)


# --------------------------------------------------------------------------------------- requirements


def check_requirements(archive: ModelArchive) -> None:
    """Check each requirement of the archive's ``requirements.txt`` against the installed distributions;
    torchship never installs them. A missing or unsatisfied one is a :class:`PackageError` naming it and
    the ``pip install`` command; a line that cannot be checked (a URL, a path, ``-e``) is one too."""
    if archive.requirements_file is None:
        return
    from packaging.requirements import InvalidRequirement, Requirement

    label = f"{archive.source.name}: {archive.requirements_file}"
    raw = _read_limited(archive.path / archive.requirements_file, MAX_REQUIREMENTS_BYTES, archive.source.name)
    problems: list[str] = []
    wanted: list[str] = []
    for number, line in _logical_lines(raw.decode("utf-8", "replace")):
        text = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not text or _pip_option(text):
            continue
        try:
            requirement = Requirement(_without_options(text))
        except InvalidRequirement as exc:
            raise PackageError(
                f"{label} line {number} ({text!r}) cannot be checked without installing it ({exc}); "
                "torchship never installs an archive's requirements: install it into the server's "
                "environment and remove the line, or write it as a named requirement (name==version)"
            ) from exc
        problem = _unsatisfied(requirement)
        if problem is not None:
            problems.append(problem)
            wanted.append(str(requirement))
    if problems:
        command = "pip install " + " ".join(f"'{item}'" for item in wanted)
        raise PackageError(
            f"{archive.source.name} needs {'; '.join(problems)}. torchship never installs an archive's "
            f"{archive.requirements_file}: install them into the server's environment ({command}) and "
            "load the model again"
        )


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """The lines of a requirements file with pip's ``\\`` continuations joined, each with the number of its
    first physical line."""
    start, parts = 1, list[str]()
    for number, line in enumerate(text.splitlines(), start=1):
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        yield start, " ".join([*parts, line])
        parts = []
    if parts:
        yield start, " ".join(parts)


def _without_options(text: str) -> str:
    """A requirement without its per-requirement options (``--hash=...``): they do not change what must be
    installed. A line that starts with an option is left whole (it names no requirement to check)."""
    return re.split(r"\s--?[A-Za-z]", text, maxsplit=1)[0].strip()


def _pip_option(text: str) -> bool:
    """An option line of a requirements file that names no package (an index, a trusted host). ``-r``,
    ``-c`` and ``-e`` do name packages: they are refused as lines that cannot be checked."""
    return text.startswith("-") and not text.startswith(
        ("-r", "-c", "-e", "--requirement", "--constraint", "--editable")
    )


def _unsatisfied(requirement: Any) -> str | None:
    if requirement.marker is not None and not requirement.marker.evaluate():
        return None
    try:
        installed = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        return f"{requirement} (not installed)"
    if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
        return f"{requirement} ({installed} is installed)"
    return None


def _read_limited(path: Path, limit: int, label: str) -> bytes:
    try:
        with path.open("rb") as file:
            raw = file.read(limit + 1)
    except OSError as exc:
        raise PackageError(f"{label}: {path.name} cannot be read ({exc.strerror or exc})") from exc
    if len(raw) > limit:
        raise PackageError(f"{label}: {path.name} is larger than {limit} bytes")
    return raw
