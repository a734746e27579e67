"""Local copies of versions from an object store, checked before use and bounded in size.

A serving replica loads a package from a local directory; :class:`VersionCache` makes one:

    <cache>/<store id>/<name>/<version>/     the package files, and the store's commit marker
    <cache>/<store id>/STORE                 the store's URL (the id is a short hash of it)

so one cache folder serves several stores. A version is downloaded into a temporary folder next to its
place, every file checked against the size and sha256 its commit marker lists, and renamed into place
only when all match: a folder in place is a verified version, and nothing half-downloaded is ever in
place. A corrupt or partial download is retried a few times, then fails with a ``PackageError`` that
names the file and the reason; the caller (a store watcher) tries again on its next pass.

A version already in place is trusted after a cheap check: every file is there with its published size
(a full sha256 pass over a large model on every use would cost what the cache saves).

Each use stamps the version's folder; :meth:`VersionCache.evict` removes the least recently used
versions, never the ones it is told to keep (those being served), until the cache is within its bound.

    cache = VersionCache(Path("~/.cache/torchship/store"), max_bytes=20 << 30)
    view = RemoteStoreView(ObjectStore("s3://models/prod"), cache)
    view.local("bbc", 3)        # downloads and checks once, then returns the cached folder
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from torchship.errors import NotFoundError, PackageError, TorchshipError
from torchship.store.remote import MARKER_FILE, ObjectStore
from torchship.store.store import validate_name, validate_version

__all__ = ["CacheEntry", "RemoteStoreView", "VersionCache", "store_id"]

DOWNLOAD_ATTEMPTS = 3
"""Downloads of one version tried per :meth:`VersionCache.get` before it gives up."""
STALE_TEMPORARY_S = 24 * 3600
"""Age after which a leftover temporary download folder (of a crashed process) is removed."""
_TMP_PREFIX = ".tmp-"
_log = logging.getLogger(__name__)


def store_id(url: str) -> str:
    """The cache folder name of the store at ``url``: a short hash of the URL."""
    return hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CacheEntry:
    """One cached version."""

    store: str
    """The store id (:func:`store_id`)."""
    name: str
    version: int
    path: Path
    size: int
    """Bytes of its files."""
    last_used: int
    """When it was last used, in nanoseconds since the epoch."""


class VersionCache:
    """Verified local copies of object-store versions under ``root``, at most ``max_bytes`` once
    :meth:`evict` has run (the versions it must keep may exceed the bound: it warns then).

    ``clock`` gives the time in seconds since the epoch (use stamps); ``retry_delay`` is the pause before
    the second download attempt, doubled before each further one. ``max_package_bytes`` and
    ``max_package_files`` bound one version, checked against its commit marker before anything is
    downloaded (a version bigger than the whole cache is refused as well).
    """

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        *,
        attempts: int = DOWNLOAD_ATTEMPTS,
        retry_delay: float = 0.5,
        clock: Callable[[], float] = time.time,
        max_package_bytes: int | None = None,
        max_package_files: int | None = None,
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be 0 or more, got {max_bytes}")
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.attempts = attempts
        self.retry_delay = retry_delay
        self.clock = clock
        self.max_package_bytes = max_bytes if max_package_bytes is None else min(max_bytes, max_package_bytes)
        self.max_package_files = max_package_files
        self._last_stamp = 0

    def path(self, store: ObjectStore, name: str, version: int) -> Path:
        """Where ``name`` at ``version`` of ``store`` is (or would be) cached."""
        return self.root / store_id(store.url) / validate_name(name) / str(validate_version(version))

    def get(self, store: ObjectStore, name: str, version: int) -> Path:
        """A verified local copy of ``name`` at ``version``: the cached one, or a fresh download.

        ``PackageError`` with the reason (the file, and what was wrong) when no attempt gave a copy that
        matches the commit marker, or when the version is not published.
        """
        target = self.path(store, name, version)
        if target.is_dir():
            if _intact(target):
                self._stamp(target)
                return target
            _log.warning("cached %s is damaged; downloading it again", target)
            _remove(target)
        self._download(store, name, version, target)
        self._stamp(target)
        return target

    def entries(self) -> list[CacheEntry]:
        """The cached versions, least recently used first."""
        found: list[CacheEntry] = []
        if not self.root.is_dir():
            return found
        for store_dir in self.root.iterdir():
            if not store_dir.is_dir() or store_dir.name.startswith("."):
                continue
            for version_dir in store_dir.glob("*/*"):
                if version_dir.is_dir() and version_dir.name.isdigit():
                    found.append(_entry(store_dir.name, version_dir))
        return sorted(found, key=lambda entry: (entry.last_used, str(entry.path)))

    def size(self) -> int:
        """Bytes of all cached versions."""
        return sum(entry.size for entry in self.entries())

    def evict(self, keep: Collection[tuple[str, int]] = ()) -> list[CacheEntry]:
        """Remove least recently used versions until the cache is within ``max_bytes``; returns them.

        A ``(name, version)`` in ``keep`` is never removed (of any store in the cache): pass the versions
        being served. Leftover temporary folders of crashed downloads are removed too.
        """
        self._remove_stale_temporaries()
        entries = self.entries()
        total = sum(entry.size for entry in entries)
        removed: list[CacheEntry] = []
        for entry in entries:
            if total <= self.max_bytes:
                break
            if (entry.name, entry.version) in keep:
                continue
            _remove(entry.path)
            total -= entry.size
            removed.append(entry)
        if total > self.max_bytes:
            _log.warning(
                "the model cache %s holds %d bytes of versions in use, more than its bound of %d bytes "
                "(--store_cache_size): raise the bound, or serve fewer versions",
                self.root,
                total,
                self.max_bytes,
            )
        return removed

    def _check_size(self, store: ObjectStore, name: str, version: int) -> None:
        """Refuse a version whose marker declares more bytes or files than allowed, before downloading."""
        try:
            files = store.manifest(name, version)["files"]
        except NotFoundError as exc:
            raise PackageError(f"{name} version {version} from {store.url}: {exc.message}") from exc
        total = sum(entry["size"] for entry in files.values())
        if total > self.max_package_bytes:
            raise PackageError(
                f"{name} version {version} from {store.url} holds {total} bytes, more than the "
                f"{self.max_package_bytes} allowed (--max_package_size, --store_cache_size)"
            )
        if self.max_package_files is not None and len(files) > self.max_package_files:
            raise PackageError(
                f"{name} version {version} from {store.url} holds {len(files)} files, more than the "
                f"{self.max_package_files} allowed (--max_package_files)"
            )

    def _download(self, store: ObjectStore, name: str, version: int, target: Path) -> None:
        self._check_size(store, name, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        _note_store(target.parent.parent, store.url)
        failure: TorchshipError | None = None
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.retry_delay * 2 ** (attempt - 1))  # back-off between network attempts
            try:
                self._download_once(store, name, version, target)
                return
            except NotFoundError as exc:
                raise PackageError(f"{name} version {version} from {store.url}: {exc.message}") from exc
            except TorchshipError as exc:  # a corrupt or partial download, or the store unreachable
                _log.warning("download %d/%d failed: %s", attempt + 1, self.attempts, exc.message)
                failure = exc
        assert failure is not None
        raise PackageError(
            f"{name} version {version} from {store.url} could not be downloaded intact after "
            f"{self.attempts} attempts: {failure.message}"
        ) from failure

    def _download_once(self, store: ObjectStore, name: str, version: int, target: Path) -> None:
        temporary = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{version}-", dir=target.parent))
        try:
            manifest = store.download(name, version, temporary)
            (temporary / MARKER_FILE).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            try:
                os.rename(temporary, target)
            except OSError:
                if not (target.is_dir() and _intact(target)):  # another process put it there first
                    raise
        finally:
            _remove(temporary)

    def _stamp(self, path: Path) -> None:
        # Strictly increasing within this process: two uses in one clock tick still have an order.
        stamp = max(int(self.clock() * 1e9), self._last_stamp + 1)
        self._last_stamp = stamp
        os.utime(path, ns=(stamp, stamp))

    def _remove_stale_temporaries(self) -> None:
        oldest = self.clock() - STALE_TEMPORARY_S
        for temporary in self.root.glob(f"*/*/{_TMP_PREFIX}*"):
            try:
                stale = temporary.stat().st_mtime < oldest
            except FileNotFoundError:  # another process finished or removed it meanwhile
                continue
            if stale:
                _remove(temporary)


class RemoteStoreView:
    """An object store as a store watcher sees it (:class:`~torchship.store.view.StoreView`): listed
    remotely, each version served from a verified local copy in ``cache``.

    Versions handed out by :meth:`local` are kept in the cache until :meth:`evict` says which are still
    in use; each :meth:`local` evicts what else the bound requires.
    """

    def __init__(self, store: ObjectStore, cache: VersionCache) -> None:
        self.store = store
        self.cache = cache
        self.location = store.url
        self._in_use: set[tuple[str, int]] = set()

    def listing(self) -> dict[str, list[int]]:
        return self.store.listing()

    def pin(self, name: str) -> int | None:
        return self.store.pin(name)

    def local(self, name: str, version: int) -> Path:
        path = self.cache.get(self.store, name, version)
        self._in_use.add((name, version))
        self.cache.evict(self._in_use)
        return path

    def evict(self, keep: Collection[tuple[str, int]]) -> list[CacheEntry]:
        """Say which versions are in use now (those served); evict others as the cache's bound requires."""
        self._in_use = set(keep)
        return self.cache.evict(self._in_use)


def _intact(directory: Path) -> bool:
    """Whether a cached version still has every published file at its published size."""
    try:
        manifest: dict[str, Any] = json.loads((directory / MARKER_FILE).read_text(encoding="utf-8"))
        return all(
            directory.joinpath(*PurePosixPath(relative).parts).stat().st_size == entry["size"]
            for relative, entry in manifest["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _entry(store: str, directory: Path) -> CacheEntry:
    size = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
    return CacheEntry(
        store=store,
        name=directory.parent.name,
        version=int(directory.name),
        path=directory,
        size=size,
        last_used=directory.stat().st_mtime_ns,
    )


def _note_store(store_dir: Path, url: str) -> None:
    # For operators looking into the cache: which store a hashed folder belongs to.
    note = store_dir / "STORE"
    if not note.exists():
        note.write_text(url + "\n", encoding="utf-8")


def _remove(path: Path) -> None:
    if not path.exists():
        return
    # Renamed away first, so no reader sees a half-removed version in place.
    doomed = path.with_name(f"{_TMP_PREFIX}removing-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(path, doomed)
    except OSError:
        doomed = path
    shutil.rmtree(doomed, ignore_errors=True)
