"""A model store: a directory of ``<name>/<version>/`` model packages, published atomically.

A version, once published, never changes. Publishing writes the package into a hidden temporary directory
inside the store and then renames it into place, so a crash can never leave a half-written version
visible: readers either see the complete version or none at all.

    store = ModelStore("./models")
    version = store.publish("bbc", lambda tmp: write_package(tmp, ...))
    store.path("bbc", version)          # ./models/bbc/1
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from torchship.errors import (
    ConfigError,
    NotFoundError,
    PackageError,
    VersionExistsError,
    VersionNotFoundError,
)
from torchship.files import fsync_directory

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TMP_PREFIX = ".tmp-"
CONFIG_FILE = "config.json"
MARKER_FILE = ".published.json"
"""An object store version's commit marker (:mod:`torchship.store.remote`), written last."""
CLAIM_FILE = ".claim"
"""An object store version's claim, written first."""


def validate_name(name: str) -> str:
    """Return ``name`` if it can be a model name, else raise a ``ConfigError`` that says what is allowed."""
    if not isinstance(name, str) or not _NAME.match(name) or name in {".", ".."}:
        raise ConfigError(
            f"Invalid model name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit."
        )
    return name


def validate_version(version: int | str) -> int:
    """Return ``version`` as a positive int, else raise a ``ConfigError``."""
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise ConfigError(f"Invalid model version {version!r}: versions are positive integers.") from None
    if number < 1 or str(version).strip() != str(number):
        raise ConfigError(f"Invalid model version {version!r}: versions are positive integers.")
    return number


class ModelStore:
    """Versioned model packages under one root directory.

    >>> store = ModelStore("./models")
    >>> store.versions("bbc")
    [1, 2]
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    def models(self) -> list[str]:
        """Names of the models that have at least one published version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and _NAME.match(entry.name) and self.versions(entry.name)
        )

    def versions(self, name: str) -> list[int]:
        """Published versions of ``name``, ascending; empty when the model is unknown."""
        folder = self.root / validate_name(name)
        if not folder.is_dir():
            return []
        return sorted(
            int(entry.name)
            for entry in folder.iterdir()
            if entry.name.isdigit()
            and not entry.name.startswith("0")
            and (entry / CONFIG_FILE).is_file()
            and not _unfinished_copy(entry)
        )

    def latest(self, name: str) -> int | None:
        """The highest published version of ``name``, or ``None``."""
        versions = self.versions(name)
        return versions[-1] if versions else None

    def path(self, name: str, version: int | None = None) -> Path:
        """The directory of ``name`` at ``version`` (latest when ``None``)."""
        versions = self.versions(name)
        if not versions:
            raise NotFoundError(f"Model not found: {name} (no versions under {self.root / name}).")
        if version is None:
            return self.root / name / str(versions[-1])
        if version not in versions:
            raise VersionNotFoundError(
                f"Model version not found: {name} version {version}; "
                f"published versions are {', '.join(map(str, versions))}."
            )
        return self.root / name / str(version)

    def publish(self, name: str, write: Callable[[Path], None], version: int | None = None) -> int:
        """Publish a new version of ``name`` whose files ``write(tmp_dir)`` creates; return its number.

        ``version=None`` takes the next free number (1 for a new model). An existing version is never
        overwritten: asking for one raises ``VersionExistsError``.
        """
        validate_name(name)
        if version is not None:
            version = validate_version(version)
            if version in self.versions(name):
                raise VersionExistsError(
                    f"{name} version {version} is already published; versions never change. "
                    "Publish a new version instead."
                )
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self.root))
        try:
            write(tmp)
            if not (tmp / CONFIG_FILE).is_file():
                raise PackageError(f"Refusing to publish {name}: the package has no {CONFIG_FILE}.")
            _fsync_tree(tmp)
            return self._rename_into_place(tmp, model_dir, version)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _rename_into_place(self, tmp: Path, model_dir: Path, version: int | None) -> int:
        # mkdir is the atomic claim on a version number: two publishers racing for the same number cannot
        # both win, and rename() of a directory onto the claimed (empty) directory replaces it atomically.
        while True:
            number = version if version is not None else (self._highest_claimed(model_dir) + 1)
            target = model_dir / str(number)
            try:
                target.mkdir()
            except FileExistsError:
                if version is not None:
                    raise VersionExistsError(
                        f"{model_dir.name} version {version} is already published; versions never change."
                    ) from None
                continue
            try:
                os.rename(tmp, target)
            except OSError as exc:  # pragma: no cover - only on exotic file systems
                target.rmdir()
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    continue
                raise
            fsync_directory(model_dir)
            return number

    @staticmethod
    def _highest_claimed(model_dir: Path) -> int:
        numbers = [int(e.name) for e in model_dir.iterdir() if e.name.isdigit()]
        return max(numbers, default=0)


def resolve_model(ref: str | Path) -> Path:
    """Turn a model reference into a package directory.

    ``./models/bbc`` is the latest version of ``bbc`` in the store ``./models``; ``./models/bbc:3`` is
    version 3; a package directory (one holding ``config.json``) is itself.
    """
    text = str(ref)
    candidate = Path(text)
    if (candidate / CONFIG_FILE).is_file():
        return candidate
    version: int | None = None
    head, sep, tail = text.rpartition(":")
    if sep and tail and "/" not in tail and "\\" not in tail:
        candidate, version = Path(head), validate_version(tail)
    if not candidate.exists():
        raise NotFoundError(
            f"Model not found: {text}. Give a package directory or <store>/<name>[:VERSION], "
            "e.g. ./models/bbc or ./models/bbc:2."
        )
    if not candidate.is_dir():
        raise PackageError(f"{candidate} is not a model package directory (it is a file).")
    store = ModelStore(candidate.parent)
    return store.path(validate_name(candidate.name), version)


def _unfinished_copy(version_dir: Path) -> bool:
    """Whether ``version_dir`` is a copy of an object store version whose publish had not committed (a
    claim without a commit marker: KServe's storage initializer copies a whole prefix as it finds it)."""
    return (version_dir / CLAIM_FILE).is_file() and not (version_dir / MARKER_FILE).is_file()


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_directory(root)
