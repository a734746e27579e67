"""Restoring the registry snapshot at start: each entry back into a :class:`VersionSpec`, within today's
settings (worker caps, ``allow_code_models``), or left out with the reason logged."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from torchship.errors import ConfigError, TorchshipError
from torchship.serving.handler import ModelAPI
from torchship.serving.runtime.snapshot import SnapshotEntry, current_handler_path
from torchship.serving.runtime.sources import ModelSources
from torchship.serving.runtime.versions import VersionSpec
from torchship.serving.settings import ModelSettings, ServerSettings
from torchship.serving.text_classifier import BUILTIN_HANDLERS

__all__ = ["SnapshotRestorer", "handler_path"]

logger = logging.getLogger("torchship.serving")

SpecBuilder = Callable[..., VersionSpec]
"""The server's ``_spec(source, settings, loaded_at_startup, *, by_api=...)``."""


def handler_path(cls: type[ModelAPI]) -> str:
    """``module:Class`` of a handler class, as the snapshot and describe record it."""
    return f"{cls.__module__}:{cls.__qualname__}"


class SnapshotRestorer:
    """Turns snapshot entries back into versions to register, for one server."""

    def __init__(
        self, settings: ServerSettings, sources: ModelSources, apis: Sequence[ModelAPI], spec: SpecBuilder
    ) -> None:
        self._settings = settings
        self._sources = sources
        self._apis = apis
        self._spec = spec

    def restore_all(
        self, entries: Sequence[SnapshotEntry]
    ) -> tuple[list[tuple[VersionSpec, int]], set[tuple[str, str]]]:
        """The snapshot's versions, with at most the worker caps of today's settings: a snapshot records
        what clients asked for, and replaying it must not spawn more than a client may ask for now. Also
        ``(name, version)`` of each entry that could not be restored."""
        budget = self._settings.max_workers_total
        restored: list[tuple[VersionSpec, int]] = []
        lost: set[tuple[str, str]] = set()
        for entry in entries:
            try:
                workers = min(entry.workers, self._settings.max_workers_per_version, budget)
                spec = self._restore(entry, workers)
            except (ConfigError, TypeError, ValueError) as exc:  # a hand-edited or older snapshot entry
                logger.warning("snapshot entry %s/%s not restored: %s", entry.name, entry.version, exc)
                spec = None
            if spec is None:
                lost.add((entry.name, entry.version))
                continue
            if workers < entry.workers:
                logger.warning(
                    "snapshot entry %s/%s asked for %d workers; starting %d (max_workers_per_version=%d, "
                    "max_workers_total=%d)",
                    entry.name,
                    entry.version,
                    entry.workers,
                    workers,
                    self._settings.max_workers_per_version,
                    self._settings.max_workers_total,
                )
            budget -= workers
            restored.append((spec, workers))
        return restored, lost

    def _restore(self, entry: SnapshotEntry, workers: int) -> VersionSpec | None:
        if entry.archive:
            return self._restore_archive(entry, workers)
        classes = {
            handler_path(cls): cls for cls in (*BUILTIN_HANDLERS.values(), *self._sources.custom.values())
        }
        handler = classes.get(current_handler_path(entry.handler))
        if handler is None or (entry.path and not Path(entry.path).exists()):
            logger.warning(
                "snapshot entry %s/%s not restored: its handler or files are gone", entry.name, entry.version
            )
            return None
        own_files = {str(api.model_path.resolve()) for api in self._apis if api.model_path is not None}
        is_code = (
            bool(entry.path)
            and Path(entry.path).is_file()
            and str(Path(entry.path).resolve()) not in own_files
        )
        if is_code and not self._settings.allow_code_models:  # registered while allowed; no longer allowed
            logger.warning(
                "snapshot entry %s/%s not restored: its model file runs code when loaded and "
                "allow_code_models is off",
                entry.name,
                entry.version,
            )
            return None
        settings = self._restored_settings(entry, workers)
        api = handler(model_path=entry.path or None, name=entry.name, **settings.to_dict())
        return VersionSpec(api, entry.version, entry.url, handler_path(handler), True)

    def _restore_archive(self, entry: SnapshotEntry, workers: int) -> VersionSpec | None:
        """An archive version from the snapshot, unpacked again from the archive it was registered from."""
        if entry.by_api and not self._settings.allow_code_models:  # registered while allowed; no longer
            logger.warning(
                "snapshot entry %s/%s not restored: it is a TorchServe archive (handler code) registered "
                "through the management API, and allow_code_models is off",
                entry.name,
                entry.version,
            )
            return None
        handler = entry.options.get("handler")
        try:
            source = self._sources.archive(
                Path(entry.archive), entry.name, handler=str(handler) if handler is not None else None
            )
        except TorchshipError as exc:
            logger.warning("snapshot entry %s/%s not restored: %s", entry.name, entry.version, exc.message)
            return None
        if source.version != entry.version:
            logger.warning(
                "snapshot entry %s/%s not restored: %s now holds version %s",
                entry.name,
                entry.version,
                entry.archive,
                source.version,
            )
            return None
        return self._spec(source, self._restored_settings(entry, workers), True, by_api=entry.by_api)

    def _restored_settings(self, entry: SnapshotEntry, workers: int) -> ModelSettings:
        """A snapshot entry's settings with ``workers`` (already capped) and ``max_workers`` within today's
        ``max_workers_per_version``."""
        settings = dict(entry.settings)
        settings["workers"] = workers
        if settings.get("max_workers") is not None:
            settings["max_workers"] = max(
                workers, min(settings["max_workers"], self._settings.max_workers_per_version)
            )
        return ModelSettings.from_dict(settings)
