"""The registry snapshot: what is served, written atomically on every change and read back at start.

The file records each registered version (name, version, where it loads from, its handler, settings and
worker count; for a TorchServe archive also the archive it was unpacked from, which a restart unpacks
again), the explicit default versions, and which store versions existed when it was written. On
restart the same versions come back with the same defaults and workers; store versions published since
(not in the record) are added, so a model trained while the server was down is served after a restart.
A version that was unregistered stays unregistered.

The write is atomic (:func:`torchship.files.atomic_write`): a crash leaves the old snapshot or the new
one, never half of one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torchship.dataclass_fields import reject_unknown_fields
from torchship.errors import ConfigError
from torchship.files import atomic_write

__all__ = ["Snapshot", "SnapshotEntry", "current_handler_path", "read_snapshot", "write_snapshot"]

FORMAT = 1

MOVED_MODULES = {
    "torchship.serving.api": "torchship.serving.handler",
    "torchship.serving.handlers": "torchship.serving.text_classifier",
}
"""Modules that held handler classes before ``serving/`` was reorganised into folders: a snapshot written
before then names its handlers by the old module, and still restores."""


@dataclass(frozen=True)
class SnapshotEntry:
    """One registered version."""

    name: str
    version: str
    path: str
    url: str
    handler: str
    """``module:qualname`` of the ModelAPI class; restored only for built-in or the server's own classes."""
    workers: int
    settings: Mapping[str, Any]
    archive: str = ""
    """For a TorchServe archive: the archive file (or no-archive folder) it was unpacked from, absolute;
    a restart unpacks it again (``path``, in the archive cache, may be gone). Empty for everything else."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """For an archive: its handler override (``{"handler": ...}``), if it was registered with one."""
    by_api: bool = False
    """For an archive: registered through the management API, which needed ``allow_code_models``; such a
    version is not restored while that flag is off. Archives the operator named at start need no flag."""


@dataclass(frozen=True)
class Snapshot:
    """Everything needed to bring the registry back."""

    entries: list[SnapshotEntry]
    defaults: dict[str, str] = field(default_factory=dict)
    """Default versions that were set explicitly (the others follow the latest version)."""
    store_versions: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "models": [
                entry.__dict__ | {"settings": dict(entry.settings), "options": dict(entry.options)}
                for entry in self.entries
            ],
            "defaults": self.defaults,
            "store_versions": self.store_versions,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        entries = [_entry(item) for item in data.get("models", [])]
        defaults = {str(k): str(v) for k, v in dict(data.get("defaults", {})).items()}
        known = {str(k): [int(v) for v in vs] for k, vs in dict(data.get("store_versions", {})).items()}
        return cls(entries, defaults, known)


def _entry(item: Any) -> SnapshotEntry:
    values = dict(item)  # TypeError or ValueError when it is not an object: a damaged file
    reject_unknown_fields(SnapshotEntry, values, where="snapshot entry")
    return SnapshotEntry(**values)


def current_handler_path(handler: str) -> str:
    """A snapshot's ``module:qualname`` with a module that has moved replaced by where it lives now."""
    module, sep, qualname = handler.partition(":")
    return f"{MOVED_MODULES.get(module, module)}{sep}{qualname}"


def write_snapshot(path: Path, snapshot: Snapshot) -> None:
    """Replace ``path`` with ``snapshot`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Owner-only, as it always was: only the server that wrote it reads it back.
    atomic_write(path, json.dumps(snapshot.to_dict(), indent=2) + "\n", mode=0o600)


def read_snapshot(path: Path) -> Snapshot | None:
    """The snapshot at ``path``, None if there is none; a damaged file is a :class:`ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the registry snapshot {path}: {exc}") from exc
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"unknown format {data.get('format') if isinstance(data, dict) else data!r}")
        return Snapshot.from_dict(data)
    except (ConfigError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(
            f"the registry snapshot {path} is damaged ({exc}); delete it to start from the store, or "
            "start with --no_snapshot"
        ) from exc
