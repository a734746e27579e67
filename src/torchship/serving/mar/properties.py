"""TorchServe's ``config.properties``, read into torchship's settings with TorchServe's meaning.

    >>> config = read_ts_config(Path("config.properties"), os.environ)
    >>> config.values        # ServerSettings / ModelSettings field names -> values
    {'inference_address': 'http://0.0.0.0:8085', 'models': ('mnist=mnist.mar',), 'job_queue_size': 10, ...}
    >>> config.not_honoured  # (key, why) for every key torchship does not act on
    [('grpc_inference_port', 'torchship serves no gRPC API: ...'), ...]

The file is a Java properties file (``#``/``!`` comments, ``=``/``:``/space separators, ``\\`` line
continuations and escapes), parsed by ``jproperties``. As in TorchServe's ``ConfigManager``:
``$$NAME$$`` in a value is replaced by the environment variable ``NAME``; with
``enable_envvars_config=true`` the ``TS_*`` environment variables (``TS_INFERENCE_ADDRESS``, ...)
override the file's keys (``TS_ALLOWED_URLS`` only with ``use_env_allowed_urls=true`` too);
``model_snapshot`` loads the models it lists and then ``load_models`` is not read; an address without a
port takes TorchServe's default for it (80/443 for inference, 8081/8444 management, 8082/8445 metrics).

Nothing is dropped silently: every key of the file, and every ``TS_*`` variable that names one, is applied,
or listed in :attr:`TsConfig.not_needed` (what it tunes does not exist in torchship: JVM and Netty
settings) or in :attr:`TsConfig.not_honoured` (a behaviour torchship does not have), with the reason.
A value torchship cannot read is a :class:`~torchship.errors.ConfigError` naming the key and its line.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchship.errors import ConfigError
from torchship.serving.mar.ts_keys import BOOLEANS, ENVIRONMENT_KEYS, NOT_HONOURED, NOT_NEEDED
from torchship.serving.settings import ModelSettings, ServerSettings

__all__ = ["ENVIRONMENT_KEYS", "TsConfig", "read_ts_config"]

_TS_ADDRESS = re.compile(r"(?i)(https?)://(\[[0-9a-f:.]+\]|[^:/\[\]]+)(?::([0-9]+))?/?")
_DEFAULT_PORTS = {  # TorchServe's Connector.parse: the port of an address that names none
    "inference_address": (80, 443),
    "management_address": (8081, 8444),
    "metrics_address": (8082, 8445),
}
_ENV_REFERENCE = re.compile(r"\$\$([^$]+[^$])\$\$")
_MODEL_FIELDS = {setting.name for setting in dataclasses.fields(ModelSettings)}


@dataclass(frozen=True)
class TsConfig:
    """What a ``config.properties`` asks of torchship."""

    path: Path
    values: dict[str, Any]
    """``ServerSettings`` and ``ModelSettings`` field names -> values (paths as str, lists as tuples)."""
    not_honoured: list[tuple[str, str]] = field(default_factory=list)
    """(key, why) for each key (or ``TS_*`` variable) asking for something torchship does not do."""
    not_needed: list[tuple[str, str]] = field(default_factory=list)
    """(key, why) for each key that tunes something torchship does not have (the JVM, Netty)."""

    def report(self) -> list[str]:
        """One line per key not applied: the not-honoured ones first."""
        return [f"{self.path}: {key} is not honoured: {why}" for key, why in self.not_honoured] + [
            f"{self.path}: {key} is not needed: {why}" for key, why in self.not_needed
        ]

    def server_settings(self, **changes: Any) -> ServerSettings:
        """The settings these values give, with ``changes`` (field names) over them."""
        values = {**self.values, **changes}
        model = {name: value for name, value in values.items() if name in _MODEL_FIELDS}
        server = {name: value for name, value in values.items() if name not in _MODEL_FIELDS}
        return ServerSettings(**server, model_defaults=ModelSettings(**model))


def read_ts_config(path: Path, environ: Mapping[str, str]) -> TsConfig:
    """Read TorchServe's ``config.properties`` at ``path`` (``environ``: for ``$$NAME$$`` and ``TS_*``)."""
    path = Path(path)
    entries = {
        key: (_substitute(value, f"{path.name}:{line}", key, environ), f"{path.name}:{line}")
        for key, (value, line) in _load(path).items()
    }
    reader = _Reader(TsConfig(path, {}))
    _environment(entries, environ, path, reader)
    snapshot = "model_snapshot" in entries
    for key, (value, where) in entries.items():
        if key == "load_models" and snapshot:
            reader.skip(key, "model_snapshot is set, so its models are loaded instead (as in TorchServe)")
            continue
        reader.read(key, value.strip(), where)
    if "models" in entries and "model_snapshot" in entries:
        reader.merge_snapshot_settings()
    return reader.config


def _load(path: Path) -> dict[str, tuple[str, int]]:
    """key -> (raw value, the line its key is on); a key given twice keeps its last value, as Java does."""
    import jproperties  # type: ignore[import-untyped]

    class LineProperties(jproperties.Properties):  # type: ignore[misc]
        """Remembers the line each key starts on (jproperties counts lines but keeps none)."""

        lines: dict[str, int]

        def _parse_key(self, single_line_only: bool = False) -> str:
            line = self._line_number
            key: str = super()._parse_key(single_line_only)
            self.lines[key] = line
            return key

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the TorchServe config {path} ({exc.strerror}); give the config.properties path "
            "with --ts_config"
        ) from exc
    properties = LineProperties()
    properties.lines = {}
    try:
        properties.load(data, "iso-8859-1")  # what java.util.Properties reads
    except jproperties.ParseError as exc:
        why = exc.message or "a \\u escape needs four hexadecimal digits"  # the one error jproperties has
        raise ConfigError(f"{path.name}:{exc.line_number}: cannot read this line: {why}") from exc
    return {key: (properties[key].data, properties.lines.get(key, 0)) for key in properties}


def _substitute(value: str, where: str, key: str, environ: Mapping[str, str]) -> str:
    """``$$NAME$$`` -> the environment variable ``NAME`` (TorchServe's ``resolveEnvVarVals``)."""

    def variable(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ConfigError(
                f"{where}: {key} refers to the environment variable ${name} (as $${name}$$), which is not "
                "set; set it or write the value"
            )
        return environ[name]

    return _ENV_REFERENCE.sub(variable, value)


def _environment(
    entries: dict[str, tuple[str, str]], environ: Mapping[str, str], path: Path, reader: _Reader
) -> None:
    """Apply the ``TS_*`` variables over ``entries`` when the file sets ``enable_envvars_config=true``;
    report them as not read otherwise (TorchServe ignores them then too)."""
    enabled = _boolean(*entries.get("enable_envvars_config", ("false", "")), "enable_envvars_config")
    env_urls = _boolean(*entries.get("use_env_allowed_urls", ("false", "")), "use_env_allowed_urls")
    for variable, key in ENVIRONMENT_KEYS.items():
        if variable not in environ:
            continue
        if not enabled:
            reader.skip(variable, f"not read: {path.name} does not set enable_envvars_config=true")
        elif key == "allowed_urls" and not env_urls:
            reader.skip(variable, f"not read: {path.name} does not set use_env_allowed_urls=true")
        else:
            entries[key] = (environ[variable], f"environment variable {variable}")


def _boolean(value: str, where: str, key: str) -> bool:
    text = value.strip().lower()
    if text not in ("true", "false"):
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    return text == "true"


def _integer(value: str, where: str, key: str, minimum: int = 0) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", value) or int(value) < minimum:
        raise ConfigError(f"{where}: {key} must be a whole number of at least {minimum}, got {value!r}")
    return int(value)


def _number(value: str, where: str, key: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise ConfigError(f"{where}: {key} must be a positive number, got {value!r}")
    return number


def _json_object(value: str, where: str, key: str) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than Python's stack
        raise ConfigError(
            f"{where}: {key} is not valid JSON ({exc}); continue long lines with a backslash at their end"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {key} must be a JSON object, got {type(data).__name__}")
    return data


def _model_versions(data: Any, where: str, key: str) -> dict[str, dict[str, dict[str, Any]]]:
    """``{model: {version: {setting: value}}}``, checked."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {key} must map model names to versions, got {data!r}")
    for model, versions in data.items():
        if not isinstance(versions, dict) or not all(isinstance(v, dict) for v in versions.values()):
            raise ConfigError(
                f'{where}: {key}: model {model!r} must map versions to settings, like {{"1.0": '
                '{"batchSize": 8}}'
            )
    return {model: {str(v): dict(s) for v, s in versions.items()} for model, versions in data.items()}


class _Reader:
    """Reads one key at a time into a :class:`TsConfig`."""

    def __init__(self, config: TsConfig) -> None:
        self.config = config
        self.values = config.values
        self._models_settings: dict[str, dict[str, dict[str, Any]]] = {}
        self._snapshot_settings: dict[str, dict[str, dict[str, Any]]] = {}

    def skip(self, key: str, why: str) -> None:
        self.config.not_honoured.append((key, why))

    def read(self, key: str, value: str, where: str) -> None:
        handler = _HANDLERS.get(key)
        if handler is not None:
            handler(self, key, value, where)
        elif key in BOOLEANS:
            ours, needless, missing = BOOLEANS[key]
            if _boolean(value, where, key) == ours:
                self.config.not_needed.append((key, needless))
            else:
                self.skip(key, missing)
        elif key in NOT_HONOURED:
            self.skip(key, NOT_HONOURED[key])
        elif key in NOT_NEEDED:
            self.config.not_needed.append((key, NOT_NEEDED[key]))
        else:
            self.skip(key, "not a TorchServe 0.12 setting (a typo?)")

    def address(self, key: str, value: str, where: str) -> None:
        if value.lower().startswith("unix:"):
            raise ConfigError(
                f"{where}: {key} {value!r}: torchship does not listen on Unix sockets; use "
                "http://127.0.0.1:PORT"
            )
        match = _TS_ADDRESS.fullmatch(value)
        if match is None:
            raise ConfigError(f"{where}: {key} must be http[s]://HOST[:PORT] as in TorchServe, got {value!r}")
        scheme, host, port = match.group(1).lower(), match.group(2), match.group(3)
        if port is None:
            port = str(_DEFAULT_PORTS[key][scheme == "https"])
        if int(port) > 65535:
            raise ConfigError(f"{where}: {key}: port {port} is above 65535")
        self.values[key] = f"{scheme}://{host}:{int(port)}"

    def load_models(self, key: str, value: str, where: str) -> None:
        if value.lower() == "all":
            self.values["models"] = ("all",)
            return
        if value.lower() == "standalone":
            self.values["models"] = ()
            return
        models: list[str] = []
        for item in (part.strip() for part in value.split(",")):
            url = item.split("=", 1)[-1]
            if "://" in url:
                self.skip(key, f"{item}: torchship never downloads models; copy the archive into model_store")
            elif url:
                models.append(item)
        self.values["models"] = tuple(models)

    def models(self, key: str, value: str, where: str) -> None:
        versions = _model_versions(_json_object(value, where, key), where, key)
        # marName here only documents the file: load_models says what loads (as in TorchServe)
        self._models_settings = {
            model: {version: _without_mar(entry) for version, entry in by_version.items()}
            for model, by_version in versions.items()
        }
        self.values["archive_settings"] = self._models_settings

    def model_snapshot(self, key: str, value: str, where: str) -> None:
        snapshot = _json_object(value, where, key)
        versions = _model_versions(snapshot.get("models", {}), where, f"{key}'s models")
        models: list[str] = []
        settings: dict[str, dict[str, dict[str, Any]]] = {}
        for model, by_version in versions.items():
            for version, entry in by_version.items():
                mar = entry.get("marName")
                if not isinstance(mar, str) or not mar:
                    raise ConfigError(f'{where}: {key}: model {model} version {version} has no "marName"')
                models.append(f"{model}={mar}")
                settings.setdefault(model, {})[version] = _without_mar(entry)
        self._snapshot_settings = settings
        self.values["models"] = tuple(models)
        self.values["archive_settings"] = settings

    def merge_snapshot_settings(self) -> None:
        """``models=`` and ``model_snapshot`` both given: the snapshot's entries win, key by key."""
        merged = {model: dict(versions) for model, versions in self._models_settings.items()}
        for model, versions in self._snapshot_settings.items():
            for version, entry in versions.items():
                merged.setdefault(model, {})[version] = {**merged.get(model, {}).get(version, {}), **entry}
        self.values["archive_settings"] = merged

    def cors(self, key: str, value: str, where: str) -> None:
        self.values["cors_allowed_origins"] = _origins(value, where, key)
        self.skip(
            key,
            "applied to the inference API only: torchship keeps web pages off management and metrics "
            "unless --management_allowed_origins names them",
        )

    def metrics_mode(self, key: str, value: str, where: str) -> None:
        if value.lower() == "prometheus":
            self.config.not_needed.append((key, "torchship's /metrics is always in Prometheus's format"))
        else:
            self.skip(key, f"{value}: torchship writes no metric logs; /metrics is in Prometheus's format")

    def allowed_urls(self, key: str, value: str, where: str) -> None:
        roots: list[str] = []
        for pattern in (part.strip() for part in value.split(",")):
            root = _file_prefix(pattern)
            if root is not None:
                roots.append(root)
            elif pattern.startswith("file:"):
                self.skip(
                    key,
                    f"{pattern} allows any local file; torchship registers archives from model_store and "
                    "packages from folders it is given: list them with --model_roots",
                )
            elif pattern:
                self.skip(key, f"{pattern}: torchship never downloads models; copy archives into model_store")
        self.values["model_roots"] = tuple(roots)


def _without_mar(entry: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in entry.items() if name != "marName"}


def _file_prefix(pattern: str) -> str | None:
    """The folder of a ``file:///folder/.*`` pattern whose folder is a plain path. A ``.`` in it is read
    as itself (as a regex it matches any character: the folder is the stricter reading), as is ``\\.``."""
    match = re.fullmatch(r"file://(/(?:[^\\*+?()\[\]{}|^$]|\\.)*?)(?:\.\*)?", pattern)
    if match is None:
        return None
    folder = re.sub(r"\\(.)", r"\1", match.group(1)).rstrip("/")
    return folder or None


def _path(value: str, where: str, key: str) -> str:
    if not value:
        raise ConfigError(f"{where}: {key} is empty; give a path")
    return value


def _origins(value: str, where: str, key: str) -> tuple[str, ...]:
    return tuple(origin.strip() for origin in value.split(",") if origin.strip())


def _workers(value: str, where: str, key: str) -> int | None:
    workers = _integer(value, where, key)
    return workers or None  # 0: TorchServe picks one per GPU or core, as torchship's default does


def _positive(value: str, where: str, key: str) -> int:
    return _integer(value, where, key, minimum=1)


_Handler = Callable[[_Reader, str, str, str], None]


def _handlers() -> dict[str, _Handler]:
    def named(name: str, convert: Callable[[str, str, str], Any]) -> _Handler:
        def handle(reader: _Reader, key: str, value: str, where: str) -> None:
            reader.values[name] = convert(value, where, key)

        return handle

    def consumed(reader: _Reader, key: str, value: str, where: str) -> None:
        _boolean(value, where, key)  # read by _environment

    return {
        "inference_address": _Reader.address,
        "management_address": _Reader.address,
        "metrics_address": _Reader.address,
        "load_models": _Reader.load_models,
        "models": _Reader.models,
        "model_snapshot": _Reader.model_snapshot,
        "allowed_urls": _Reader.allowed_urls,
        "metrics_mode": _Reader.metrics_mode,
        "metrics_format": _Reader.metrics_mode,  # its older name, still in KServe's config.properties
        "model_store": named("model_store", _path),
        "default_workers_per_model": named("workers", _workers),
        "job_queue_size": named("job_queue_size", _positive),
        "max_request_size": named("max_request_size", _positive),
        "max_response_size": named("max_response_size", _positive),
        "default_response_timeout": named("response_timeout", _positive),
        "default_startup_timeout": named("startup_timeout", _positive),
        "enable_model_api": named("allow_code_models", _boolean),
        "disable_token_authorization": named("token_auth", lambda v, w, k: not _boolean(v, w, k)),
        "enable_token_authorization": named("token_auth", _boolean),
        "token_expiration_min": named("key_expiration", _number),
        "cors_allowed_origin": _Reader.cors,
        "certificate_file": named("tls_cert", _path),
        "private_key_file": named("tls_key", _path),
        "enable_envvars_config": consumed,
        "use_env_allowed_urls": consumed,
    }


_HANDLERS = _handlers()
