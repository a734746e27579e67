"""The registry of served models: several versions per model, one default, all changeable at runtime.

Routing a request is two dictionary lookups. Changes are atomic on the event loop: a version registered
is routable at once, a new default takes the next request, and an unregistered version stops being
routable at once while the requests already queued or running on it complete (it is drained before its
workers stop). A request routed to a version before its body arrived and submitted after the version was
unregistered finds it marked ``retired`` and is routed again (:meth:`Registry.reroute`): to the new
default, or a 404 when it named the version.

The default version, unless one was set explicitly (``set-default``), is the latest version (by number)
that is *serving*: it has workers and at least one of them has loaded the model. A version registered
later takes the default only once one of its workers is ready, so requests keep going to the warm older
version while it loads, and a version that fails to load never takes it. Only while no version is serving
(at startup, say) is the default the latest version with workers that is not failing to load, so that the
latest store version is the default from the start. A version with 0 workers never becomes the default
by itself. The default is picked again on every registration, unregistration and scaling, and whenever a
worker of a version becomes ready, is lost or fails to load. ``on_change`` runs after every change (the
snapshot).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from torchship.errors import ConflictError, NotFoundError, VersionNotFoundError
from torchship.serving.errors import HandlerError
from torchship.serving.runtime.metrics import Metrics
from torchship.serving.runtime.versions import ServedVersion, VersionSpec

__all__ = ["Registry", "version_key"]

logger = logging.getLogger("torchship.serving")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders ``"2" < "10"`` and ``"1.0" < "1.1"`` (numeric parts as numbers)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.\-_]", version))


@dataclass(eq=False)
class _Model:
    versions: dict[str, ServedVersion] = field(default_factory=dict)
    default: str | None = None
    explicit_default: bool = False

    def latest(self) -> str | None:
        return max(self.versions, key=version_key) if self.versions else None

    def pick_default(self) -> None:
        """Unless set explicitly: the latest serving version, else the latest with workers that is not
        failing to load, else the latest with workers, else the latest (None when empty); see the module
        docstring."""
        if self.explicit_default and self.default in self.versions:
            return
        staffed = {version: served for version, served in self.versions.items() if served.target_workers > 0}
        serving = [version for version, served in staffed.items() if served.serving_workers > 0]
        loading = [version for version, served in staffed.items() if served.load_error is None]
        for candidates in (serving, loading, list(staffed)):
            if candidates:
                self.default = max(candidates, key=version_key)
                break
        else:
            self.default = self.latest()
        self.explicit_default = False


class Registry:
    """Model name → versions → :class:`ServedVersion`, with a default version per model."""

    def __init__(self, metrics: Metrics) -> None:
        self._models: dict[str, _Model] = {}
        self._metrics = metrics
        self.on_change: Callable[[], None] | None = None

    # ---------------------------------------------------------------------------------- lookups
    def reroute(self, served: ServedVersion, version: str | None) -> ServedVersion:
        """Where a request routed to ``served`` (asking for ``version``, None for the default) goes now:
        ``served`` itself unless it was unregistered meanwhile, then what :meth:`get` finds (404 if gone)."""
        return self.get(served.name, version) if served.retired else served

    def get(self, name: str, version: str | None = None) -> ServedVersion:
        """The version asked for, or the default; 404 errors name what is missing."""
        model = self._models.get(name)
        if model is None:
            raise NotFoundError(f"Model not found: {name}")
        if version is None:
            version = model.default
            assert version is not None  # a registered model always has a default
        served = model.versions.get(version)
        if served is None:
            raise VersionNotFoundError(f"Model version: {version} does not exist for model: {name}")
        return served

    def names(self) -> list[str]:
        """Registered model names, sorted."""
        return sorted(self._models)

    def versions(self, name: str) -> list[ServedVersion]:
        """All versions of ``name``, oldest first."""
        model = self._model(name)
        return [model.versions[v] for v in sorted(model.versions, key=version_key)]

    def is_default(self, served: ServedVersion) -> bool:
        model = self._models.get(served.name)
        return model is not None and model.default == served.version

    def has_explicit_default(self, name: str) -> bool:
        return self._model(name).explicit_default

    def all_versions(self) -> list[ServedVersion]:
        return [served for name in self.names() for served in self.versions(name)]

    # ---------------------------------------------------------------------------------- changes
    async def register(self, spec: VersionSpec, *, workers: int, synchronous: bool = True) -> ServedVersion:
        """Serve ``spec`` with ``workers`` workers; with ``synchronous``, return once they are loaded
        (a model that fails to load is unregistered again and the error raised)."""
        name, version = spec.api.name, spec.version
        model = self._models.setdefault(name, _Model())
        if version in model.versions:
            raise ConflictError(
                f"Model version {version} is already registered for model {name}; unregister it first "
                f"(DELETE /models/{name}/{version}) or register it under another model_name"
            )
        served = ServedVersion(spec, self._metrics.for_version(name, version))
        served.on_serving_change = model.pick_default
        model.versions[version] = served
        try:
            served.scale(workers)
        except Exception:
            await self.unregister(name, version)
            raise
        model.pick_default()
        self._changed()
        if synchronous and workers > 0:
            try:
                await served.wait_ready()
            except HandlerError:
                # Not when unregistered or scaled to 0 meanwhile (that ended the wait): not ours to undo.
                if model.versions.get(version) is served and served.target_workers > 0:
                    await self.unregister(name, version)
                raise
        return served

    async def unregister(self, name: str, version: str | None = None) -> list[ServedVersion]:
        """Remove one version (or, with ``version=None``, the whole model), then drain and stop it."""
        model = self._model(name)
        if version is not None and version not in model.versions:
            raise VersionNotFoundError(f"Model version: {version} does not exist for model: {name}")
        removed = [
            model.versions.pop(v) for v in ([version] if version is not None else list(model.versions))
        ]
        for served in removed:
            served.retired = True  # requests routed here before and submitted from now on go elsewhere
        model.pick_default()
        if not model.versions:
            del self._models[name]
        self._changed()
        for served in removed:
            await served.drain()
            await served.stop()
        return removed

    def set_default(self, name: str, version: str) -> None:
        """Route ``/predictions/{name}`` to ``version`` from the next request on."""
        model = self._model(name)
        if version not in model.versions:
            raise VersionNotFoundError(f"Model version: {version} does not exist for model: {name}")
        model.default, model.explicit_default = version, True
        self._changed()

    def clear_default(self, name: str) -> None:
        """Forget an explicit default: the default is picked by the rule again (the latest serving
        version), from the next request on."""
        model = self._model(name)
        model.explicit_default = False
        model.pick_default()
        self._changed()

    async def scale(
        self, name: str, version: str | None, workers: int, *, synchronous: bool
    ) -> ServedVersion:
        """Set the number of workers of one version (the default when ``version`` is None)."""
        served = self.get(name, version)
        served.scale(workers)
        self._model(name).pick_default()
        self._changed()
        if synchronous:
            await served.wait_ready()
        return served

    def begin_shutdown(self) -> None:
        """From now on no worker is started or replaced (one that exits is gone for good): the server is
        shutting down. Called first thing at shutdown, before the HTTP side drains."""
        for served in self.all_versions():
            served.begin_shutdown()

    async def stop_all(self, timeout: float) -> None:
        """Drain every version for up to ``timeout`` seconds, then stop them all (server shutdown)."""
        self.begin_shutdown()
        drains = [served.drain() for served in self.all_versions()]
        if drains:
            try:
                await asyncio.wait_for(asyncio.gather(*drains), timeout)
            except asyncio.TimeoutError:
                logger.warning("requests still running after %gs at shutdown; stopping anyway", timeout)
        for served in self.all_versions():
            await served.stop()

    def _model(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            raise NotFoundError(f"Model not found: {name}")
        return model

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except OSError as exc:  # a full disk must not fail the request that changed the registry
                logger.error("could not write the registry snapshot: %s", exc)
