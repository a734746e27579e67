"""What a store watcher reads: the published versions, the operators' pins, and a local copy to load.

A directory store is read in place; an object store (:mod:`torchship.store.remote`) is listed remotely and
each version downloaded into a bounded local cache, checked against the checksums written when it was
published. Both answer the same three questions, so the serving side watches either one the same way.

The pin file: ``<store>/<name>/PINNED`` holds one version number (``3``, a trailing newline allowed).
While it names a published version, that version is the model's default and is kept served whatever
``keep_versions`` says; without it, the newest version is the default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from torchship.errors import ConfigError, NotFoundError
from torchship.store.store import ModelStore, validate_version

__all__ = ["PIN_FILE", "LocalStoreView", "StoreView", "parse_pin"]

PIN_FILE = "PINNED"
MAX_PIN_SIZE = 64
"""Bytes of a pin file read at most (a version number and whitespace)."""


class StoreView(Protocol):
    """The store as a watcher sees it (methods may block: call them off the event loop)."""

    location: str
    """The store as the operator named it (a directory or ``s3://bucket/prefix``), for messages."""

    def listing(self) -> dict[str, list[int]]:
        """Each model's published versions, ascending (only complete ones)."""
        ...

    def pin(self, name: str) -> int | None:
        """The version the model's pin file names, or None (no pin file). A malformed pin file raises
        ``ConfigError`` with the reason."""
        ...

    def local(self, name: str, version: int) -> Path:
        """A local package directory of ``name`` at ``version``, ready to load (downloaded and checked
        for an object store). Raises ``PackageError`` with the reason when it cannot be had."""
        ...


def parse_pin(text: bytes, where: str) -> int:
    """The version a pin file's content names; ``ConfigError`` naming ``where`` when it is not one."""
    if len(text) > MAX_PIN_SIZE:
        raise ConfigError(f"{where}: a pin file holds one version number, this one has {len(text)} bytes")
    try:
        return validate_version(text.decode("ascii").strip())
    except (UnicodeDecodeError, ConfigError):
        raise ConfigError(
            f"{where}: a pin file holds one version number (like 3), not {text[:20]!r}"
        ) from None


class LocalStoreView:
    """A directory store, read in place."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.location = str(store.root)

    def listing(self) -> dict[str, list[int]]:
        # A missing root is an unmounted volume or a typo, not an empty store: a watcher must not unload
        # everything because of it.
        if not self.store.root.is_dir():
            raise NotFoundError(f"the store {self.store.root} is not a directory (not mounted, or moved?)")
        return {name: self.store.versions(name) for name in self.store.models()}

    def pin(self, name: str) -> int | None:
        path = self.store.root / name / PIN_FILE
        try:
            with open(path, "rb") as handle:
                text = handle.read(MAX_PIN_SIZE + 1)
        except FileNotFoundError:
            return None
        return parse_pin(text, str(path))

    def local(self, name: str, version: int) -> Path:
        return self.store.path(name, version)
