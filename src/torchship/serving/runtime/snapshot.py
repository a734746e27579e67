"""The registry snapshot: what is served, written atomically on every change and read back at start.

The file records each registered version (name, version, where it loads from, its handler, settings and
worker count), the explicit default versions, and which store versions existed when it was written. On
restart the same versions come back with the same defaults and workers; store versions published since
(not in the record) are added, so a model trained while the server was down is served after a restart.
A version that was unregistered stays unregistered.

The write goes to a temporary file in the same directory, is flushed to disk, then renamed over the old
file: a crash leaves the old snapshot or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torchship.errors import ConfigError

__all__ = ["Snapshot", "SnapshotEntry", "read_snapshot", "write_snapshot"]

FORMAT = 1


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
            "models": [entry.__dict__ | {"settings": dict(entry.settings)} for entry in self.entries],
            "defaults": self.defaults,
            "store_versions": self.store_versions,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        entries = [SnapshotEntry(**dict(item)) for item in data.get("models", [])]
        defaults = {str(k): str(v) for k, v in dict(data.get("defaults", {})).items()}
        known = {str(k): [int(v) for v in vs] for k, vs in dict(data.get("store_versions", {})).items()}
        return cls(entries, defaults, known)


def write_snapshot(path: Path, snapshot: Snapshot) -> None:
    """Replace ``path`` with ``snapshot`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(snapshot.to_dict(), file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(
            f"the registry snapshot {path} is damaged ({exc}); delete it to start from the store, or "
            "start with --no_snapshot"
        ) from exc
