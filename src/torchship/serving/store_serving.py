"""The server's side of a watched store: which view it reads, where an object store's versions are cached,
and what health says while the store gives it no model."""

from __future__ import annotations

import os
from pathlib import Path

from torchship.serving.runtime.metrics import Metrics
from torchship.serving.runtime.registry import Registry
from torchship.serving.runtime.watch import StoreWatcher, VersionBuilder
from torchship.serving.settings import ServerSettings
from torchship.store import ModelStore
from torchship.store.view import LocalStoreView, StoreView

__all__ = ["default_store_cache", "empty_store_reason", "store_view", "store_watcher"]


def store_watcher(
    settings: ServerSettings, registry: Registry, metrics: Metrics, build: VersionBuilder
) -> StoreWatcher | None:
    """The watcher of a server that serves an object store, or watches a directory store
    (``watch_store``); None otherwise (a directory store is then read once, at start)."""
    if settings.store_url is None and (settings.store_dir is None or settings.watch_store is None):
        return None
    return StoreWatcher(
        store_view(settings),
        registry,
        metrics,
        build,
        interval=settings.watch_store,
        keep_versions=settings.keep_versions,
    )


def store_view(settings: ServerSettings) -> StoreView:
    """The store as the watcher reads it: a directory in place, or an object store through a version
    cache (``store_cache``, bounded by ``store_cache_size`` and the package limits)."""
    if settings.store_url is None:
        assert settings.store_dir is not None
        return LocalStoreView(ModelStore(settings.store_dir))
    from torchship.store.cache import RemoteStoreView, VersionCache
    from torchship.store.remote import ObjectStore

    cache = VersionCache(
        settings.store_cache or default_store_cache(),
        settings.store_cache_size,
        max_package_bytes=settings.max_package_size,
        max_package_files=settings.max_package_files,
    )
    return RemoteStoreView(ObjectStore(settings.store_url), cache)


def empty_store_reason(watcher: StoreWatcher) -> str:
    """Why a server that serves its store's versions has no model, and what to do."""
    location, watching = watcher.view.location, watcher.interval is not None
    if failing := watcher.failing:  # versions there are, but none could be had
        shown = ", ".join(f"{name} version {version}" for name, version in failing)
        return (
            f"no model from the store {location} serves: {shown} could not be fetched or loaded (the "
            "log says why; torchship_store_failures_total counts the tries); "
            + ("the watcher tries again" if watching else "fix it, then restart the server")
        )
    return f"no model in the store {location} yet: publish one (torchship train --store {location} ...); " + (
        "the server loads it on its next look at the store"
        if watching
        else "then restart the server, or serve with --watch_store to pick new versions up"
    )


def default_store_cache() -> Path:
    """``$XDG_CACHE_HOME/torchship/store`` (``~/.cache/torchship/store``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "torchship" / "store"
