"""The model server: registry, sources, metrics and snapshot together, behind three listeners.

``Server`` holds the state and the operations the APIs call (register, scale, health); the listeners and
their lifecycle live in :mod:`torchship.serving.runner`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchship.devices import resolve_device
from torchship.errors import NotFoundError, TorchshipError, UserInputError
from torchship.serving.handler import ModelAPI
from torchship.serving.mar.handler import TorchServeArchiveAPI
from torchship.serving.mar.model_config import model_yaml_settings, torchserve_model_settings
from torchship.serving.restore import SnapshotRestorer, handler_path
from torchship.serving.runtime.metrics import Metrics
from torchship.serving.runtime.package_files import RegistrationLimits
from torchship.serving.runtime.registry import Registry
from torchship.serving.runtime.snapshot import (
    Snapshot,
    SnapshotEntry,
    read_snapshot,
    write_snapshot,
)
from torchship.serving.runtime.sources import ModelSources, Source
from torchship.serving.runtime.versions import ServedVersion, VersionSpec
from torchship.serving.settings import ModelSettings, ServerSettings
from torchship.serving.store_serving import empty_store_reason, store_watcher
from torchship.serving.text_classifier import BUILTIN_HANDLERS
from torchship.store import ModelStore

__all__ = ["Health", "Registration", "Server"]

logger = logging.getLogger("torchship.serving")


class Server:
    """Everything one torchship server serves. Start it with :func:`~torchship.serving.runner.run`.

    ``apis`` are models given as ``ModelAPI`` objects (``ModelAPI.start()``); their classes may also
    serve new versions registered through the management API. ``packages`` are package directories
    given on the command line, each under its own name or, given as ``(path, name)``, under ``name``
    (KServe's InferenceService name); with ``settings.store`` every version in the store is served too.
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        apis: Sequence[ModelAPI] = (),
        packages: Sequence[Path | tuple[Path, str]] = (),
    ) -> None:
        for device in {settings.model_defaults.device, *(api.settings.device for api in apis)}:
            if device not in ("auto", "cpu"):
                resolve_device(device)  # a GPU asked for on a machine without one fails here, not per worker
        self.settings = settings
        self.metrics = Metrics()
        self.registry = Registry(self.metrics)
        store = ModelStore(settings.store_dir) if settings.store_dir is not None else None
        self.sources = ModelSources(
            store,
            settings.model_roots,
            {api.name: type(api) for api in apis},
            limits=RegistrationLimits.of(settings),
            allow_code_models=settings.allow_code_models,
            model_store=settings.model_store,
            archive_cache=settings.archive_cache,
            archive_api=TorchServeArchiveAPI,
            allow_unpickling=settings.allow_unpickling,
        )
        self.urls: dict[str, str] = {}
        # Where each archive version's handler object was unpacked from, for the snapshot. Keyed by the
        # object, so a registration that fails (a name and version already served) changes no record.
        self._archives: weakref.WeakKeyDictionary[ModelAPI, _ArchiveOrigin] = weakref.WeakKeyDictionary()
        # Default versions the archive settings ask for at start (TorchServe's defaultVersion).
        self._archive_defaults: dict[str, str] = {}
        self._apis = list(apis)
        self._packages = list(packages)
        # Store versions the server has decided about (served, or unregistered since): the snapshot records
        # them, so that after a restart an unregistered one stays unregistered while a version published
        # since, or one that could not load before, is served like any new version.
        self._known_store: dict[str, set[int]] = {}
        # With an object store or --watch_store, the store's versions come from the watcher, not the sources.
        self.watcher = store_watcher(settings, self.registry, self.metrics, self._store_version)
        self._restorer = SnapshotRestorer(settings, self.sources, self._apis, self._spec)

    # ----------------------------------------------------------------------------------- startup
    async def load_initial(self) -> list[ServedVersion]:
        """Register what the snapshot, the store, the APIs and the packages say (workers start loading)."""
        snapshot_path = self.settings.snapshot_path
        snapshot = read_snapshot(snapshot_path) if snapshot_path is not None else None
        registered: list[ServedVersion] = []
        for spec, workers in self._initial_specs(snapshot):
            if any(s.name == spec.api.name and s.version == spec.version for s in registered):
                continue
            registered.append(await self.registry.register(spec, workers=workers, synchronous=False))
        if self.watcher is not None:  # registers the store's versions; they load while the server starts
            await self.watcher.reconcile(wait=False)
            registered += [v for v in self.registry.all_versions() if v not in registered]
        for name, version in [
            *self._archive_defaults.items(),
            *(snapshot.defaults if snapshot else {}).items(),
        ]:
            try:
                self.registry.set_default(name, version)
            except NotFoundError as exc:  # a default that no longer exists is not worth failing the start for
                logger.warning("snapshot default %s/%s not restored: %s", name, version, exc)
        if snapshot_path is not None:
            self.registry.on_change = self.write_snapshot
            self.write_snapshot()
        return registered

    def _initial_specs(self, snapshot: Snapshot | None) -> list[tuple[VersionSpec, int]]:
        defaults = self.settings.model_defaults
        specs: list[tuple[VersionSpec, int]] = []
        known_before: dict[str, list[int]] = {}
        if snapshot is not None:
            restored, lost = self._restorer.restore_all(snapshot.entries)
            specs += restored
            # A store version whose entry could not be restored (files moved, handler gone) is not decided
            # about: served like a new version, never dropped for good because of an unreadable entry.
            known_before = {
                name: [v for v in versions if (name, str(v)) not in lost]
                for name, versions in snapshot.store_versions.items()
            }
        store_sources = self.sources.store_sources() if self.watcher is None else []
        for name, versions in known_before.items():
            self._known_store.setdefault(name, set()).update(versions)
        for source in store_sources:
            self._known_store.setdefault(source.name, set()).add(int(source.version))
        latest: dict[str, int] = {}
        for source in store_sources:
            latest[source.name] = max(latest.get(source.name, 0), int(source.version))
        for source in store_sources:
            known = known_before.get(source.name, [])
            if snapshot is None or int(source.version) not in known:
                # Unless --workers says otherwise, a model's latest version (its default) gets the default
                # worker count and older ones one worker each: every version stays callable, and a store
                # of many versions does not multiply the processes (~280 MB each for the demo model).
                older = int(source.version) < latest[source.name] and defaults.workers is None
                workers = 1 if older else defaults.worker_count
                specs.append((self._spec(source, defaults, loaded_at_startup=True), workers))
        for api in self._apis:
            url = str(api.model_path) if api.model_path is not None else ""
            specs.append(
                (VersionSpec(api, "1", url, handler_path(type(api)), True), api.settings.worker_count)
            )
        for package in self._packages:
            path, served_as = package if isinstance(package, tuple) else (package, "")
            source = self.sources.package(path, served_as or None)
            specs.append((self._spec(source, defaults, True), defaults.worker_count))
        from_snapshot = {(spec.api.name, spec.version) for spec, _ in specs}
        for source in self.sources.startup_archives(self.settings.models):
            if (source.name, source.version) in from_snapshot:  # the snapshot's record of it wins
                continue
            try:
                settings, is_default = self._archive_settings(source)
            except TorchshipError as exc:  # one archive's bad settings must not stop the others
                logger.error("not serving the archive %s: %s", source.url, exc.message)
                continue
            if is_default:
                self._archive_defaults[source.name] = source.version
            specs.append((self._spec(source, settings, True), settings.worker_count))
        return specs

    def _archive_settings(
        self, source: Source, registration: Registration | None = None
    ) -> tuple[ModelSettings, bool]:
        """An archive's settings as TorchServe 0.12 ranks them, and whether ``defaultVersion`` asks for it
        to be the default. ModelManager.createModel: ``batch_size``/``max_batch_delay`` given at
        registration win, then ``model-config.yaml``, then ``config.properties``' ``models=``, then the
        defaults; the timeouts: ``model-config.yaml``, then ``models=``, then the registration's or the
        defaults. Workers at start (ModelServer.initModelStore): ``model-config.yaml``'s min/maxWorkers,
        then ``models=``' minWorkers/maxWorkers, then the default; registered through the API
        (ApiUtils.handleRegister): ``model-config.yaml``'s, then ``initial_workers``. Keys torchship does
        not honour are logged by name."""
        assert source.archive is not None
        where = f"model {source.name} version {source.version}"
        entry = dict(self.settings.archive_settings.get(source.name, {}).get(source.version, {}))
        asked_default = entry.pop("defaultVersion", False)
        is_default = asked_default is True or str(asked_default).lower() == "true"
        # ConfigManager.getJsonIntValue: a number at 0 or below there means "not set".
        entry = {k: v for k, v in entry.items() if not (type(v) is int and v <= 0)}
        from_properties, ignored = torchserve_model_settings(entry, f"models= ({where})")
        _log_ignored(ignored, f"config.properties models= for {where}")
        from_yaml, ignored = model_yaml_settings(source.archive)
        _log_ignored(ignored, f"model-config.yaml of {where}")
        defaults = self.settings.model_defaults
        if registration is None:
            return defaults.replace(**{**from_properties, **from_yaml}), is_default
        # Through the API, models= gives no workers (TorchServe reads minWorkers there only at start).
        from_properties = {k: v for k, v in from_properties.items() if k not in ("workers", "max_workers")}
        asked = registration.setting_changes()
        batching: dict[str, Any] = {k: asked[k] for k in ("batch_size", "max_batch_delay") if k in asked}
        others = {k: v for k, v in asked.items() if k not in batching}
        if registration.initial_workers is not None:
            others["workers"] = registration.initial_workers
        ranked: dict[str, Any] = {**others, **from_properties, **from_yaml, **batching}
        return defaults.replace(**ranked), is_default

    # ----------------------------------------------------------------------------- the store watcher
    def _store_version(self, name: str, version: int, path: Path) -> tuple[VersionSpec, int, int]:
        """What the watcher registers for a store version fetched into ``path`` (off the event loop), and
        its workers as the default and otherwise."""
        source = self.sources.package(path, name, str(version))
        if self.settings.store_url is not None:  # shown as where it came from, not the cache folder
            source = dataclasses.replace(
                source, url=f"{self.settings.store_url.rstrip('/')}/{name}/{version}"
            )
        defaults = self.settings.model_defaults
        # As at start from a directory store: older versions one worker each unless --workers says.
        otherwise = defaults.worker_count if defaults.workers is not None else 1
        return self._spec(source, defaults), defaults.worker_count, otherwise

    def start_watching(self) -> None:
        """Poll the store from now on (with ``watch_store``; the server listens already)."""
        if self.watcher is not None:
            self.watcher.start()

    async def stop_watching(self) -> None:
        """Stop polling the store (first thing at shutdown)."""
        if self.watcher is not None:
            await self.watcher.stop()

    # -------------------------------------------------------------------------------- operations
    async def register(self, registration: Registration) -> tuple[ServedVersion, int]:
        """``POST /models``: resolve the URL (file work off the event loop), then register and start.
        Returns the new version and its worker count."""
        name = registration.name
        next_version = 1 + max(
            (int(v.version) for v in self._versions_of(name) if v.version.isdigit()), default=0
        )
        settings = self.settings.model_defaults.replace(**registration.setting_changes())
        workers = (
            settings.worker_count if registration.initial_workers is None else registration.initial_workers
        )
        if workers < 0:
            raise UserInputError(
                f"Parameter initial_workers must be 0 or more, got {workers}; register with 0 and use the "
                "scale workers API (PUT /models/{model}?min_worker=N) to add workers later"
            )
        self._check_workers("initial_workers", workers)
        # An archive's handler= overrides its manifest's (TorchServe's meaning): it is not a class here.
        archive_url = self.sources.is_archive_reference(registration.url)
        handler = None
        if registration.handler is not None and not archive_url:
            handler = self._handler_named(registration.handler)
        source = await asyncio.to_thread(
            self.sources.resolve,
            registration.url,
            name,
            next_version,
            handler=registration.handler if archive_url else None,
        )
        if source.archive is not None:
            settings, _ = self._archive_settings(source, registration)
            workers = settings.worker_count
            self._check_workers("initial_workers", workers)
        elif registration.handler is not None and handler is not source.handler:
            raise UserInputError(
                f"Parameter handler={registration.handler!r} does not match {registration.url}, which is "
                f"served by {handler_path(source.handler)}; leave handler out to use the model's own"
            )
        spec = self._spec(source, settings.replace(workers=workers), by_api=True)
        # Again, now: other registrations may have taken workers while this one resolved off the loop.
        # From here to registry.register's count of the workers nothing awaits, so the cap holds.
        self._check_workers("initial_workers", workers)
        served = await self.registry.register(spec, workers=workers, synchronous=registration.synchronous)
        if self.sources.store_version(source.path) == (source.name, source.version):
            # A store version registered under its own name is decided about from now on: one unregistered
            # later stays unregistered after a restart. (The registry wrote the snapshot before this.)
            self._known_store.setdefault(source.name, set()).add(int(source.version))
            self.write_snapshot()
        return served, workers

    async def scale(
        self, name: str, version: str | None, workers: int, max_workers: int, *, synchronous: bool
    ) -> ServedVersion:
        """``PUT /models/{name}[/{version}]``: a 400 naming the limit when the counts exceed the caps."""
        served = self.registry.get(name, version)
        self._check_workers("min_worker", workers, served)
        self._check_workers("max_worker", max_workers, served, total=False)
        served.max_workers = max_workers
        return await self.registry.scale(name, version, workers, synchronous=synchronous)

    def health(self) -> Health:
        """TorchServe's ``/ping`` status over the default versions, and which of them cannot serve, why.

        A server that serves its store's versions (an object store, or ``--watch_store``) and has no model
        is not ready: it has nothing to answer with until a version is published. (A server given its
        models otherwise, or none to be registered later, is healthy empty, as TorchServe is.)"""
        if self.watcher is not None and not self.registry.names():
            return Health("Unhealthy", ({"reason": empty_store_reason(self.watcher)},))
        defaults = [self.registry.get(name) for name in self.registry.names()]
        unavailable = [(served, why) for served in defaults if (why := _cannot_serve(served)) is not None]
        if not unavailable:
            status = "Healthy"
        elif len(unavailable) < len(defaults):
            status = "Partial Healthy"
        else:
            status = "Unhealthy"
        return Health(
            status,
            tuple({"modelName": s.name, "modelVersion": s.version, "reason": why} for s, why in unavailable),
        )

    def _check_workers(
        self, parameter: str, workers: int, replacing: ServedVersion | None = None, *, total: bool = True
    ) -> None:
        """400 when ``workers`` for one version (``replacing`` its current count) would pass a cap."""
        per_version = self.settings.max_workers_per_version
        if workers > per_version:
            raise UserInputError(
                f"Parameter {parameter}={workers} is more than max_workers_per_version={per_version}, the "
                "most workers one version may have; ask for fewer, or start the server with a larger "
                "--max_workers_per_version"
            )
        if not total:
            return
        others = sum(v.target_workers for v in self.registry.all_versions() if v is not replacing)
        limit = self.settings.max_workers_total
        if others + workers > limit:
            raise UserInputError(
                f"Parameter {parameter}={workers} would bring the server to {others + workers} workers, more "
                f"than max_workers_total={limit} ({max(0, limit - others)} more fit now); scale other "
                "versions down, or start the server with a larger --max_workers_total"
            )

    def write_snapshot(self) -> None:
        """Record the registry (called after every change)."""
        path = self.settings.snapshot_path
        if path is None:
            return
        entries = [
            SnapshotEntry(
                served.name,
                served.version,
                _absolute(served.spec.api.model_path),
                served.spec.url,
                served.spec.handler,
                served.target_workers,
                served.settings.to_dict(),
                **self._archive_fields(served),
            )
            for served in self.registry.all_versions()
        ]
        defaults = {
            name: self.registry.get(name).version
            for name in self.registry.names()
            if self.registry.has_explicit_default(name)
        }
        known = {name: sorted(versions) for name, versions in sorted(self._known_store.items())}
        write_snapshot(path, Snapshot(entries, defaults, known))

    def _archive_fields(self, served: ServedVersion) -> dict[str, Any]:
        """What the snapshot records to unpack an archive version again after a restart."""
        origin = self._archives.get(served.spec.api)
        if origin is None:
            return {}
        return {"archive": origin.archive, "options": dict(origin.options), "by_api": origin.by_api}

    def _spec(
        self,
        source: Source,
        settings: ModelSettings,
        loaded_at_startup: bool = False,
        *,
        by_api: bool = False,
    ) -> VersionSpec:
        api = source.handler(model_path=source.path, name=source.name, **source.options, **settings.to_dict())
        shown = None
        if source.archive is not None:
            shown = str(source.options.get("handler") or source.archive.handler)
            options = {k: v for k, v in source.options.items() if k == "handler"}
            self._archives[api] = _ArchiveOrigin(str(source.archive.source.resolve()), options, by_api)
        return VersionSpec(
            api, source.version, source.url, handler_path(source.handler), loaded_at_startup, shown
        )

    def _handler_named(self, handler: str) -> type[ModelAPI]:
        """The class ``handler=`` names (a built-in's name, or a known class's ``module:Class``); a 400
        that says what is supported otherwise: the server never imports handler code by name."""
        known: dict[str, type[ModelAPI]] = dict(BUILTIN_HANDLERS)
        known.update(
            {handler_path(cls): cls for cls in (*BUILTIN_HANDLERS.values(), *self.sources.custom.values())}
        )
        if handler in known:
            return known[handler]
        names = ", ".join(known)
        if ":" not in handler and "." not in handler:
            raise UserInputError(f"Parameter handler={handler[:80]!r} is not a known handler; known: {names}")
        opt_in = (
            "even with --allow_code_models"
            if self.settings.allow_code_models
            else "(code handlers would also need the operator's --allow_code_models)"
        )
        raise UserInputError(
            f"Parameter handler={handler[:80]!r} names handler code to import: this server does not import "
            f"handler classes by module path {opt_in}. Known handlers: {names}. A custom handler is a "
            "ModelAPI subclass served with ModelAPI.start(); register model files for it by url"
        )

    def _versions_of(self, name: str | None) -> list[ServedVersion]:
        return self.registry.versions(name) if name is not None and name in self.registry.names() else []


@dataclass(frozen=True)
class Registration:
    """What ``POST /models`` asks for, typed (the protocol parses the query or body into it)."""

    url: str
    """A store model (``name`` or ``name/version``), a package or archive file, or a model file."""
    name: str | None = None
    """The name to serve it under; None: the name the source gives."""
    handler: str | None = None
    """TorchServe's ``handler``: the model's own handler by name (``text-classifier``) or ``module:Class``;
    None: the one the source declares. Another handler, or code to import, is a 400."""
    initial_workers: int | None = None
    """Workers to start; None: the model defaults' worker count."""
    synchronous: bool = False
    """Answer only once the workers serve (else 202 right away)."""
    batch_size: int | None = None
    max_batch_delay: float | None = None
    job_queue_size: int | None = None
    response_timeout: float | None = None
    startup_timeout: float | None = None

    def setting_changes(self) -> dict[str, Any]:
        """The ``ModelSettings`` fields this registration sets (the others keep the server's defaults)."""
        names = ("batch_size", "max_batch_delay", "job_queue_size", "response_timeout", "startup_timeout")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass(frozen=True)
class _ArchiveOrigin:
    """Where an archive version was unpacked from (the snapshot re-resolves it after a restart)."""

    archive: str
    """The archive file or no-archive folder, absolute."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """The handler override, if any (``allow_unpickling`` follows the server's setting at restore)."""
    by_api: bool = False
    """Registered through the management API (restored only while allow_code_models is on)."""


@dataclass(frozen=True)
class Health:
    """The server's health: TorchServe's status word, and the default versions that cannot serve."""

    status: str
    """``Healthy``, ``Partial Healthy`` (some default versions cannot serve) or ``Unhealthy`` (none can)."""
    unavailable: tuple[dict[str, str], ...] = ()
    """``{"modelName", "modelVersion", "reason"}`` for each default version that cannot serve."""

    @property
    def healthy(self) -> bool:
        return self.status == "Healthy"

    def body(self) -> dict[str, Any]:
        """``{"status": ...}`` as TorchServe answers ``/ping``, plus ``unavailable`` when not healthy."""
        body: dict[str, Any] = {"status": self.status}
        if self.unavailable:
            body["unavailable"] = list(self.unavailable)
        return body


def _cannot_serve(served: ServedVersion) -> str | None:
    """Why a default version cannot answer a request now, or None when it can."""
    if served.target_workers == 0:
        return "it has 0 workers: scale it up (PUT /models/{model}/{version}?min_worker=N)"
    if served.serving_workers > 0:
        return None
    if served.load_error is not None:
        return f"no worker could load the model: {served.load_error}"
    return "its workers are still loading the model"


def _log_ignored(keys: Sequence[str], where: str) -> None:
    if keys:
        logger.warning("%s: torchship does not honour %s; ignored", where, ", ".join(sorted(keys)))


def _absolute(path: Path | None) -> str:
    """A model path as the snapshot records it: absolute, so that a restart from another working
    directory (a relative --store) finds the same files."""
    return str(path.resolve()) if path is not None else ""
