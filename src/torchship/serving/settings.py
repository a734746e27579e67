"""Typed settings for one served model version and for the server as a whole.

Both are frozen dataclasses validated once, in ``__post_init__``, with messages that name the field. The
names and units follow TorchServe's configuration (``batch_size``, ``max_batch_delay`` in milliseconds,
``response_timeout`` in seconds) so that its users find what they know.

    >>> ModelSettings(batch_size=16, max_batch_delay=5)
    ModelSettings(batch_size=16, max_batch_delay=5.0, workers=None, ...)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchship.dataclass_fields import reject_unknown_fields
from torchship.devices import check_device
from torchship.errors import ConfigError
from torchship.store.urls import is_store_url

__all__ = [
    "DEFAULT_MAX_REQUEST_SIZE",
    "ModelSettings",
    "ServerSettings",
    "default_torch_threads",
    "default_workers",
    "usable_cores",
]

MAX_DEFAULT_CPU_WORKERS = 4
"""The most worker processes a version gets by default on the CPU (see :func:`default_workers`)."""

DEFAULT_MAX_REQUEST_SIZE = 6_553_500
"""TorchServe's default ``max_request_size`` in bytes (6.5 MB)."""

# Hard ceilings on what any setting may say, whoever sets it (a register call's parameters included): the
# operator's own limits (``ServerSettings.max_workers_per_version`` and friends) sit below these.
MAX_BATCH_SIZE = 4096
MAX_BATCH_DELAY_MS = 60_000.0
MAX_JOB_QUEUE_SIZE = 1_000_000
MAX_TIMEOUT_S = 86_400.0
MAX_WORKERS_LIMIT = 4096

GiB = 1 << 30

MANAGEMENT_API_MODES = ("on", "read_only", "off")


@dataclass(frozen=True)
class ModelSettings:
    """How one model version is batched and run. The defaults work untuned on a small CPU machine."""

    batch_size: int = 32
    """Largest number of requests run together in one call of the handler. 32 served best at 64
    concurrent clients, on a CPU and on a GPU (see the performance page of the docs)."""
    max_batch_delay: float = 0.0
    """Milliseconds a request may wait for others to join its batch while other batches of the same version
    run (a request that finds nothing else in flight goes at once). At 0, the default, a free worker takes
    whatever is waiting, up to ``batch_size``: batches still form under load, from the requests that
    arrive while every worker is busy, and no core idles while a half-full batch waits (0 served more
    than 1 or 5 ms up to 64 concurrent clients, on a CPU and on a GPU: see the performance page of the
    docs). With one worker (the default on a machine with one GPU) the delay never applies."""
    workers: int | None = None
    """Worker processes for this version (TorchServe's ``min_worker``/``initial_workers``); None: one per
    GPU (one on ``cuda:N`` or ``mps``), on the CPU one per core, at most 4."""
    max_workers: int | None = None
    """Reported as TorchServe's ``maxWorkers``; defaults to ``workers`` (there is no autoscaling)."""
    job_queue_size: int = 512
    """Requests that may wait for a worker; one more is answered 503 with ``Retry-After``."""
    response_timeout: float = 60.0
    """Seconds a request may wait in the queue, and seconds a batch may run in a worker, before the request
    is answered 504. A worker whose batch runs past it is killed and replaced."""
    startup_timeout: float = 120.0
    """Seconds a worker may take to load the model (TorchServe's ``startupTimeout``, same default). One still
    loading then is killed, the version's ``loadError`` says so, and it is retried with back-off."""
    torch_threads: int | None = None
    """``torch.set_num_threads`` in each worker; None: the CPU cores but one, split between the workers."""
    device: str = "auto"
    """Where each worker runs the model: ``auto`` (a GPU when torch sees one, else the CPU), ``cpu``,
    ``cuda`` (workers spread round-robin over the visible GPUs, as TorchServe does), ``cuda:N`` (that GPU),
    ``mps``. ``gpu`` is read as ``cuda``. The handler finds it as ``self.device``."""

    def __post_init__(self) -> None:
        _check_int("batch_size", self.batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
        _check_number("max_batch_delay", self.max_batch_delay, minimum=0.0, maximum=MAX_BATCH_DELAY_MS)
        if self.workers is not None:
            _check_int("workers", self.workers, minimum=0, maximum=MAX_WORKERS_LIMIT)
        _check_int("job_queue_size", self.job_queue_size, minimum=1, maximum=MAX_JOB_QUEUE_SIZE)
        _check_number("response_timeout", self.response_timeout, minimum=0.001, maximum=MAX_TIMEOUT_S)
        _check_number("startup_timeout", self.startup_timeout, minimum=0.001, maximum=MAX_TIMEOUT_S)
        if self.max_workers is not None:
            _check_int("max_workers", self.max_workers, minimum=self.workers or 0, maximum=MAX_WORKERS_LIMIT)
        if self.torch_threads is not None:
            _check_int("torch_threads", self.torch_threads, minimum=1, maximum=1024)
        object.__setattr__(self, "device", check_device(self.device))
        object.__setattr__(self, "max_batch_delay", float(self.max_batch_delay))
        object.__setattr__(self, "response_timeout", float(self.response_timeout))
        object.__setattr__(self, "startup_timeout", float(self.startup_timeout))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSettings:
        """Build settings from a mapping; unknown keys are a :class:`ConfigError` naming them."""
        reject_unknown_fields(cls, data, noun="model setting")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy (used by the snapshot)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ModelSettings:
        """A copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)

    @property
    def worker_count(self) -> int:
        """``workers``, or :func:`default_workers` for ``device`` when it is None."""
        return self.workers if self.workers is not None else default_workers(self.device)

    @property
    def max_batch_delay_s(self) -> float:
        """``max_batch_delay`` in seconds."""
        return self.max_batch_delay / 1000.0


@dataclass(frozen=True)
class ServerSettings:
    """Where the three listeners bind, who may call them, what they accept, and what the server may load.

    Every size, count and time a client controls has a limit here, checked before work proportional to it
    is done. Port 0 asks the OS for a free port."""

    # ------------------------------------------------------------------ listeners
    host: str = "127.0.0.1"
    """Default interface for the three listeners; 127.0.0.1 keeps them private to this machine."""
    inference_address: str | None = None
    """Where the inference listener binds, as TorchServe writes it (``http://0.0.0.0:8080``,
    ``https://10.0.0.5:8443``, ``0.0.0.0:8080`` or a bare host); None: ``host`` and ``inference_port``."""
    management_address: str | None = None
    """Where the management listener binds (see ``inference_address``); None: ``host`` and
    ``management_port``. Keep it on a private interface."""
    metrics_address: str | None = None
    """Where the metrics listener binds (see ``inference_address``); None: ``host`` and ``metrics_port``."""
    inference_port: int = 8080
    """Port of the inference listener unless ``inference_address`` names one; 0: any free port (printed)."""
    management_port: int = 8081
    """Port of the management listener unless ``management_address`` names one; 0: any free port."""
    metrics_port: int = 8082
    """Port of the metrics listener unless ``metrics_address`` names one; 0: any free port."""
    tls_cert: Path | None = None
    """PEM certificate chain: with ``tls_key``, every listener speaks HTTPS (one whose ``*_address`` says
    ``http://`` excepted)."""
    tls_key: Path | None = None
    """PEM private key for ``tls_cert``."""

    # ------------------------------------------------------------------ who may call
    token_auth: bool = True
    """Require ``Authorization: Bearer <key>`` (TorchServe's token authorization): always on management,
    and on inference whenever a listener binds a non-loopback address. Turn off only behind a proxy that
    authenticates (``--token_auth false``, like TorchServe's ``disable_token_authorization``)."""
    key_file: Path = Path("key_file.json")
    """Where the generated keys are written at start (owner-only, TorchServe's ``key_file.json`` shape;
    deleted at shutdown); with ``keys_from_file``, the operator's file the keys are read from (never
    written). ``torchship key management`` prints a key from it."""
    keys_from_file: bool = False
    """Read the keys from ``key_file`` (e.g. a mounted Kubernetes secret) instead of generating them. The
    environment variables ``TORCHSHIP_MANAGEMENT_KEY``, ``TORCHSHIP_INFERENCE_KEY`` and
    ``TORCHSHIP_API_KEY`` give a key in either case, before any file."""
    key_expiration: float | None = None
    """Minutes a generated management or inference key stays valid (TorchServe's ``token_expiration_min``);
    None: keys do not expire. A new key comes from ``/token?type=...`` with the API key, which never
    expires."""
    inference_auth: bool | None = None
    """Require the inference key on the inference API: None decides by the bind address (required when a
    listener binds a non-loopback address), True always, False never."""
    health_auth: bool = False
    """Require the inference key on ``/ping`` and ``/v2/health/*`` too (off, so Kubernetes probes work)."""
    metrics_auth: bool = False
    """Require the management key on ``/metrics`` (off, so Prometheus can scrape)."""
    cors_allowed_origins: tuple[str, ...] = ()
    """Origins (``https://app.example.com``, or ``*``) whose browsers may call the inference API; requests
    from any other Origin are refused with 403."""
    management_allowed_origins: tuple[str, ...] = ()
    """Origins whose browsers may call the management API and ``/metrics`` (none by default: a web page can
    never drive them)."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names (an ingress's) accepted in the ``Host`` header besides loopback names, on a loopback bind,
    where anything else is refused as DNS rebinding (``*``: any)."""
    allow_code_models: bool = False
    """Let the management API register models whose loading runs code (TorchScript or ``torch.export``
    files for a ``ModelAPI``, code handlers). Off: only torchship packages (safetensors and JSON)."""

    # ------------------------------------------------------------------ connections
    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
    """Largest request body in bytes; a larger one is answered 413 before it is read."""
    max_response_size: int = DEFAULT_MAX_REQUEST_SIZE
    """Largest response body in bytes (TorchServe's ``max_response_size``); a larger result is answered
    500 with the reason instead."""
    max_form_parts: int = 16
    """Most parts in one ``multipart/form-data`` request body (``curl -F``); more is a 400."""
    max_form_part_headers: int = 8
    """Most header lines in one part of a ``multipart/form-data`` body; more is a 400."""
    max_form_header_size: int = 4096
    """Longest header line, in bytes, in one part of a ``multipart/form-data`` body; longer is a 400."""
    max_connections: int = 1000
    """Open connections per listener; one more is closed at once (the file descriptors stay free for the
    other listeners and the workers)."""
    max_header_size: int = 65_536
    """Bytes of request line and headers per request; more is answered 431 and the connection closed."""
    header_timeout: float = 10.0
    """Seconds a client may take to send the request line and headers, from the connection's start or the
    first byte of a later request; then the connection is closed."""
    body_timeout: float = 60.0
    """Seconds a client may take to send a whole request body, from the end of its headers; then it is
    answered 408 and closed."""
    keep_alive_timeout: float = 5.0
    """Seconds an idle keep-alive connection is kept open."""
    graceful_timeout: float = 30.0
    """Seconds to wait for in-flight requests at shutdown before closing connections."""

    # ------------------------------------------------------------------ workers
    max_workers_per_version: int = 16
    """Most worker processes one version may have; a register or scale call above it is a 400."""
    max_workers_total: int = 64
    """Most worker processes the server runs in all, over every version."""

    # ------------------------------------------------------------------ models and the store
    store: str | None = None
    """Model store served at start (every model, every version) and where archives are published: a
    directory, or an object store URL (``s3://bucket/prefix``; ``gs://`` and ``az://`` with the ``gcs`` and
    ``azure`` extras), read with the usual credentials of its SDK (``AWS_*`` environment variables, say).
    Versions from an object store are downloaded into ``store_cache`` and checked before they load."""
    store_cache: Path | None = None
    """Where versions from an object store are downloaded; None: ``$XDG_CACHE_HOME/torchship/store``
    (``~/.cache/torchship/store``). Unused for a directory store."""
    store_cache_size: int = 20 * GiB
    """Bytes the store cache may hold; the least recently used versions that are not served are evicted."""
    watch_store: float | None = None
    """Poll the store every this many seconds and converge on it: a newly published version is loaded,
    warmed and then made the default; a version removed from the store is drained and unloaded. None: the
    store is read once, at start. Replicas that watch one store serve the same versions."""
    keep_versions: int | None = None
    """Serve only the newest N versions of each model in the store (plus a pinned one); None: all."""
    management_api: str = "on"
    """``on``; ``read_only`` (describe and list only: calls that change what is served are a 403), for
    replicas that must not drift apart; or ``off`` (no management listener)."""
    model_roots: tuple[Path, ...] = ()
    """Directories outside the store from which the management API may register packages by path."""
    max_archive_size: int = 2 * GiB
    """Largest archive (``.zip``) the management API registers, in bytes as stored."""
    max_package_size: int = 4 * GiB
    """Largest package a registration may unpack or copy into the store, in bytes."""
    max_package_files: int = 1000
    """Most files in one registered package."""
    store_quota: int | None = 50 * GiB
    """Bytes the store may hold after a registration publishes into it; None: no quota."""
    snapshot: Path | None = None
    """Where the registry snapshot lives; None means ``<store>/.serve-snapshot.json`` when a store is set."""
    use_snapshot: bool = True
    """Restore the snapshot at start and rewrite it on every change."""
    model_defaults: ModelSettings = field(default_factory=ModelSettings)
    """Settings for every version registered without its own."""

    # ------------------------------------------------------------------ TorchServe archives
    model_store: Path | None = None
    """TorchServe's model store: a folder of ``.mar`` archives (also ``.tar.gz`` ones and unpacked
    ``no-archive`` model folders). ``models`` serves from it at start, and ``POST /models?url=x.mar``
    registers from it. Archives are unpacked into ``archive_cache``; the folder itself is only read."""
    models: tuple[str, ...] = ()
    """TorchServe's ``--models`` (``load_models``): the archives to serve at start, from ``model_store``:
    ``all``, ``x.mar``, or ``name=x.mar`` to serve it under another name."""
    archive_settings: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Per model and version, TorchServe's model settings (``config.properties``' ``models=`` JSON):
    ``{"bbc": {"1.0": {"batchSize": 8, "maxBatchDelay": 5, "minWorkers": 2, "defaultVersion": true}}}``."""
    archive_cache: Path | None = None
    """Where archives are unpacked (one folder per archive content, reused); None: a private folder in
    the system's temporary directory."""
    allow_unpickling: bool = False
    """Let archives load files by full unpickling (``torch.load(..., weights_only=False)``, a pickled
    ``nn.Module``): such a file runs any code it holds when loaded. Off: ``torch.load`` reads tensors and
    state dicts only, and an archive that needs more fails to load with a message naming this setting."""

    def __post_init__(self) -> None:
        for name in ("inference_port", "management_port", "metrics_port"):
            _check_int(name, getattr(self, name), minimum=0, maximum=65535)
        _check_int("max_request_size", self.max_request_size, minimum=1, maximum=64 * GiB)
        _check_int("max_form_parts", self.max_form_parts, minimum=1, maximum=1_000_000)
        _check_int("max_form_part_headers", self.max_form_part_headers, minimum=1, maximum=1000)
        _check_int("max_form_header_size", self.max_form_header_size, minimum=64, maximum=16 << 20)
        _check_int("max_connections", self.max_connections, minimum=1, maximum=1_000_000)
        _check_int("max_header_size", self.max_header_size, minimum=1024, maximum=16 << 20)
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout"):
            _check_number(name, getattr(self, name), minimum=0.001, maximum=MAX_TIMEOUT_S)
        _check_number("graceful_timeout", self.graceful_timeout, minimum=0.0, maximum=MAX_TIMEOUT_S)
        if self.key_expiration is not None:
            _check_number("key_expiration", self.key_expiration, minimum=0.001, maximum=1e9)
        _check_int(
            "max_workers_per_version", self.max_workers_per_version, minimum=1, maximum=MAX_WORKERS_LIMIT
        )
        _check_int("max_workers_total", self.max_workers_total, minimum=1, maximum=MAX_WORKERS_LIMIT)
        _check_int("max_archive_size", self.max_archive_size, minimum=1)
        _check_int("max_package_size", self.max_package_size, minimum=1)
        _check_int("max_package_files", self.max_package_files, minimum=1)
        if self.store_quota is not None:
            _check_int("store_quota", self.store_quota, minimum=1)
        _check_int("max_response_size", self.max_response_size, minimum=1, maximum=64 * GiB)
        _check_archive_settings(self.archive_settings)
        workers = self.model_defaults.workers
        if workers is not None and workers > self.max_workers_per_version:
            raise ConfigError(
                f"workers: {workers} is more than max_workers_per_version={self.max_workers_per_version}; "
                "ask for fewer workers or raise --max_workers_per_version"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key: give both (HTTPS) or neither (HTTP)")
        if self.watch_store is not None:
            _check_number("watch_store", self.watch_store, minimum=0.1, maximum=MAX_TIMEOUT_S)
        if self.keep_versions is not None:
            _check_int("keep_versions", self.keep_versions, minimum=1, maximum=1_000_000)
        _check_int("store_cache_size", self.store_cache_size, minimum=1)
        if self.management_api not in MANAGEMENT_API_MODES:
            raise ConfigError(
                f"management_api: {self.management_api!r} is not one of {', '.join(MANAGEMENT_API_MODES)}"
            )
        if self.store is not None:
            object.__setattr__(self, "store", str(self.store))
        for name in ("snapshot", "tls_cert", "tls_key", "model_store", "archive_cache", "store_cache"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "key_file", Path(self.key_file))
        object.__setattr__(self, "model_roots", tuple(Path(root) for root in self.model_roots))
        for name in ("cors_allowed_origins", "management_allowed_origins", "allowed_hosts", "models"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def snapshot_path(self) -> Path | None:
        """The snapshot file in use, or None when snapshots are off or there is nowhere to keep one."""
        if not self.use_snapshot:
            return None
        if self.snapshot is not None:
            return self.snapshot
        # Watching a store, or serving an object store, the store is the record of what is served.
        if self.store is None or self.watch_store is not None or self.store_url is not None:
            return None
        return Path(self.store) / ".serve-snapshot.json"

    @property
    def store_url(self) -> str | None:
        """``store`` when it is an object store URL (``s3://...``), else None."""
        return self.store if self.store is not None and is_store_url(self.store) else None

    @property
    def store_dir(self) -> Path | None:
        """``store`` when it is a directory, else None."""
        return Path(self.store) if self.store is not None and not is_store_url(self.store) else None


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and ``taskset`` narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(device: str = "auto") -> int:
    """Worker processes per version when ``workers`` is not set, as TorchServe picks them: one per GPU
    where the workers run on GPUs (``auto`` with GPUs, ``cuda``), one for a single device (``cuda:N``,
    ``mps``), and on the CPU one per core, at most :data:`MAX_DEFAULT_CPU_WORKERS`.

    Why more than one on a CPU: a worker runs one batch at a time, and between two batches it waits while
    the server answers the last one and sends it the next; a second worker computes meanwhile: on a
    2-core machine two workers of one thread served more than one in nearly every run (see the performance
    page of the docs). The cap keeps a big machine from starting a process per core for each model (each
    worker holds its own copy of the model); past it,
    :func:`default_torch_threads` gives each worker more threads instead. Served from a store, a model's older
    versions get one worker each instead. Pass ``--workers`` to choose for every version.
    """
    cpu = min(usable_cores(), MAX_DEFAULT_CPU_WORKERS)
    if device == "cpu":
        return cpu
    if device == "mps" or device.startswith("cuda:"):
        return 1
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1 if device == "cuda" else cpu  # cuda without a GPU: the server refuses it at start anyway


def default_torch_threads(workers: int) -> int:
    """Intra-op threads per worker: the cores left after one for the HTTP process, split between workers,
    at least one.

    Why not every core: a worker's OpenMP threads spin against the HTTP process (and a load generator on
    the same cores). On a 2-core machine under load, one worker of 2 threads served a small fraction of
    what one worker of 1 thread did, and two workers of 1 thread more again (see :func:`default_workers`
    and the performance page of the docs, "Threads per worker").
    """
    return max(1, (usable_cores() - 1) // max(1, workers))


def _check_archive_settings(value: object) -> None:
    """``archive_settings`` is ``{model: {version: {key: value}}}`` with string keys (what the keys mean is
    checked where an archive is registered, so that a mistake names its model)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"archive_settings: expected a JSON object, got {value!r}")
    for model, versions in value.items():
        if not isinstance(model, str) or not isinstance(versions, Mapping):
            raise ConfigError(f"archive_settings: {model!r} must map versions to settings objects")
        for version, settings in versions.items():
            if not isinstance(version, str) or not isinstance(settings, Mapping):
                raise ConfigError(
                    f"archive_settings: {model}/{version!r} must be an object of settings such as "
                    '{"batchSize": 8}'
                )


def _check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(f"{name}: must be {bound}, got {value}")


def _check_number(name: str, value: object, *, minimum: float, maximum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if not minimum <= value <= maximum:  # also false for NaN
        raise ConfigError(f"{name}: must be between {minimum:g} and {maximum:g}, got {value}")
