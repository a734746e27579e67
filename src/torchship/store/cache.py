"""Local copies of versions from an object store, checked before use and bounded in size.

A serving replica loads a package from a local directory; :class:`VersionCache` makes one:

    <cache>/<store id>/<name>/<version>/     the package files, and the store's commit marker
    <cache>/<store id>/<name>/<version>.lock a lock file: shared-locked by every process using the version
    <cache>/<store id>/STORE                 the store's URL (the id is a short hash of it)

so one cache folder serves several stores, and several processes. A version is downloaded into a
temporary folder next to its place (``.tmp-<pid>-<host>-...``), every object streamed, counted and hashed
against the size and sha256 its commit marker lists, and renamed into place only when all match: a
folder in place is a verified version, and nothing half-downloaded is ever in place. A corrupt or
partial download is retried a few times, then fails with a ``PackageError`` that names the file and the
reason; the caller (a store watcher) tries again on its next pass. Temporary folders of processes that
are gone (killed mid-download) are removed when a cache is opened.

A version already in place is used after two cheap checks: its commit marker still equals the store's
(one small read: a number unpublished and published again with other files is downloaded again), and
every file is there with its published size (a full sha256 pass over a large model on every use would
cost what the cache saves).

Each use stamps the version's folder; :meth:`VersionCache.evict` removes the least recently used
versions until the cache is within its bound, never the ones it is told to keep (those being served),
nor any that a process holds locked (:meth:`VersionCache.hold`): processes sharing a cache folder never
remove each other's versions in use. Room for a version is made before it is downloaded.

    cache = VersionCache(Path("~/.cache/torchship/store"), max_bytes=20 << 30)
    view = RemoteStoreView(ObjectStore("s3://models/prod"), cache)
    view.local("bbc", 3)        # downloads and checks once, then returns the cached folder
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from torchship.errors import NotFoundError, PackageError, TorchshipError
from torchship.store.remote import MARKER_FILE, DownloadCancelled, ObjectStore
from torchship.store.store import validate_name, validate_version

__all__ = ["CacheEntry", "RemoteStoreView", "VersionCache", "store_id"]

DOWNLOAD_ATTEMPTS = 3
"""Downloads of one version tried per :meth:`VersionCache.get` before it gives up."""
STALE_TEMPORARY_S = 24 * 3600
"""Age after which any leftover temporary folder is removed (one of another host, whose process this
host cannot check)."""
_TMP_PREFIX = ".tmp-"
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TMP_OWNER = re.compile(r"^\.tmp-([0-9]+)-([0-9a-f]{8})-")
_LOCK_SUFFIX = ".lock"
_ACTIVE: set[Path] = set()
"""Temporary folders this process is writing now (its own pid may be a dead predecessor's after a
container restart, so for this pid the set, not the pid, says what is alive)."""
_ACTIVE_GUARD = threading.Lock()
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
    downloaded (a version bigger than the whole cache is refused as well). :meth:`close` cancels a
    download in progress (between chunks) and every later one.
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
        self._cancelled = threading.Event()
        self._held: dict[Path, int] = {}
        """Lock files this cache holds shared (path -> open descriptor)."""
        self._guard = threading.Lock()
        self._remove_stale_temporaries()

    def path(self, store: ObjectStore, name: str, version: int) -> Path:
        """Where ``name`` at ``version`` of ``store`` is (or would be) cached."""
        return self.root / store_id(store.url) / validate_name(name) / str(validate_version(version))

    def get(
        self, store: ObjectStore, name: str, version: int, *, keep: Collection[tuple[str, int]] = ()
    ) -> Path:
        """A verified local copy of ``name`` at ``version``: the cached one, or a fresh download.

        ``PackageError`` with the reason (the file, and what was wrong) when no attempt gave a copy that
        matches the commit marker, or when the version is not published. Before a download, versions
        not in ``keep`` (nor locked) are evicted to make room for it.
        """
        self._check_cancelled(store.url)
        target = self.path(store, name, version)
        manifest = self._manifest(store, name, version)  # one small read, even on a hit: see the module
        if target.is_dir():
            cached = _cached_marker(target)
            if cached == manifest:
                self._stamp(target)
                return target
            if cached is None:
                _log.warning("cached %s is damaged; downloading it again", target)
            else:
                _log.warning(
                    "%s version %d in %s differs from the cached %s (published again under the same "
                    "number); downloading it again",
                    name,
                    version,
                    store.url,
                    target,
                )
            _remove(target)
        declared = self._check_size(store, name, version, manifest)
        self.evict({*keep, (name, version)}, room=declared)
        self._download(store, name, version, target, manifest)
        self._stamp(target)
        return target

    def hold(self, store: ObjectStore, name: str, version: int) -> None:
        """Lock ``name`` at ``version`` as in use (a shared lock on its lock file) until :meth:`release`:
        no process's :meth:`evict` removes it meanwhile. Holding a held version again does nothing."""
        lock = _lock_path(self.path(store, name, version))
        with self._guard:
            if lock in self._held:
                return
            lock.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_SH)  # waits only while an evict removes it
            except BaseException:
                os.close(descriptor)
                raise
            self._held[lock] = descriptor

    def release(self, store: ObjectStore, name: str, version: int) -> None:
        """Unlock what :meth:`hold` locked (nothing when it is not held)."""
        with self._guard:
            descriptor = self._held.pop(_lock_path(self.path(store, name, version)), None)
        if descriptor is not None:
            os.close(descriptor)  # closing the only descriptor drops the flock

    def close(self) -> None:
        """Cancel the download in progress (it stops between chunks, leaving no temporary folder) and
        every later one: ``get`` raises :class:`~torchship.store.remote.DownloadCancelled`."""
        self._cancelled.set()

    def entries(self) -> list[CacheEntry]:
        """The cached versions, least recently used first."""
        found: list[CacheEntry] = []
        try:
            store_dirs = list(self.root.iterdir())
        except FileNotFoundError:
            return found
        for store_dir in store_dirs:
            if not store_dir.is_dir() or store_dir.name.startswith("."):
                continue
            for version_dir in store_dir.glob("*/*"):
                if version_dir.name.isdigit() and version_dir.is_dir():
                    entry = _entry(store_dir.name, version_dir)
                    if entry is not None:  # None: another process removed it meanwhile
                        found.append(entry)
        return sorted(found, key=lambda entry: (entry.last_used, str(entry.path)))

    def size(self) -> int:
        """Bytes of all cached versions."""
        return sum(entry.size for entry in self.entries())

    def evict(self, keep: Collection[tuple[str, int]] = (), *, room: int = 0) -> list[CacheEntry]:
        """Remove least recently used versions until the cache is within ``max_bytes`` (less ``room``
        bytes, for a download to come); returns them.

        A ``(name, version)`` in ``keep`` is never removed (of any store in the cache): pass the versions
        being served. Neither is a version any process holds (:meth:`hold`). Leftover temporary folders of
        crashed downloads are removed too.
        """
        self._remove_stale_temporaries()
        entries = self.entries()
        total = sum(entry.size for entry in entries)
        bound = max(self.max_bytes - room, 0)
        removed: list[CacheEntry] = []
        for entry in entries:
            if total <= bound:
                break
            if (entry.name, entry.version) in keep or not self._remove_unheld(entry.path):
                continue
            total -= entry.size
            removed.append(entry)
        if total > bound:
            _log.warning(
                "the model cache %s holds %d bytes of versions in use, more than its bound of %d bytes "
                "(--store_cache_size)%s: raise the bound, or serve fewer versions",
                self.root,
                total,
                self.max_bytes,
                f" less {room} for a download" if room else "",
            )
        return removed

    def _remove_unheld(self, path: Path) -> bool:
        """Remove a cached version unless a process holds it; whether it was removed."""
        lock = _lock_path(path)
        with self._guard:
            if lock in self._held:
                return False
        try:
            descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # its folder is gone: another process removed the version
            return False
        try:
            # flock is per open file description: this conflicts with any other descriptor's lock,
            # in this process too.
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        try:
            _remove(path)
        finally:
            os.close(descriptor)
        return True

    def _manifest(self, store: ObjectStore, name: str, version: int) -> dict[str, Any]:
        try:
            return store.manifest(name, version)
        except NotFoundError as exc:
            raise PackageError(f"{name} version {version} from {store.url}: {exc.message}") from exc

    def _check_size(self, store: ObjectStore, name: str, version: int, manifest: Mapping[str, Any]) -> int:
        """Refuse a version whose marker declares more bytes or files than allowed, before downloading;
        returns the bytes it declares."""
        files = manifest["files"]
        total = sum(int(entry["size"]) for entry in files.values())
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
        return total

    def _download(
        self, store: ObjectStore, name: str, version: int, target: Path, manifest: Mapping[str, Any]
    ) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        _note_store(target.parent.parent, store.url)
        failure: TorchshipError | None = None
        for attempt in range(self.attempts):
            # Back-off between network attempts; close() ends the wait at once.
            if attempt and self._cancelled.wait(self.retry_delay * 2 ** (attempt - 1)):
                break
            self._check_cancelled(store.url)
            try:
                self._download_once(store, name, version, target, manifest)
                return
            except DownloadCancelled:
                raise
            except NotFoundError as exc:
                raise PackageError(f"{name} version {version} from {store.url}: {exc.message}") from exc
            except TorchshipError as exc:  # a corrupt or partial download, or the store unreachable
                _log.warning("download %d/%d failed: %s", attempt + 1, self.attempts, exc.message)
                failure = exc
        self._check_cancelled(store.url)
        assert failure is not None
        raise PackageError(
            f"{name} version {version} from {store.url} could not be downloaded intact after "
            f"{self.attempts} attempts: {failure.message}"
        ) from failure

    def _download_once(
        self, store: ObjectStore, name: str, version: int, target: Path, manifest: Mapping[str, Any]
    ) -> None:
        with _ACTIVE_GUARD:  # made and noted at once: another cache here never sees it unnoted
            temporary = Path(tempfile.mkdtemp(prefix=_temporary_prefix(f"{version}-"), dir=target.parent))
            _ACTIVE.add(temporary)
        try:
            marker = store.download(name, version, temporary, manifest=manifest, cancel=self._cancelled)
            (temporary / MARKER_FILE).write_text(json.dumps(marker, indent=1), encoding="utf-8")
            try:
                os.rename(temporary, target)
            except OSError:
                if _cached_marker(target) != marker:  # unless another process put it there first
                    raise
        finally:
            _remove(temporary)
            with _ACTIVE_GUARD:
                _ACTIVE.discard(temporary)

    def _check_cancelled(self, where: str) -> None:
        if self._cancelled.is_set():
            raise DownloadCancelled(f"{where}: download cancelled (the server is stopping)")

    def _stamp(self, path: Path) -> None:
        # Strictly increasing within this process: two uses in one clock tick still have an order.
        stamp = max(int(self.clock() * 1e9), self._last_stamp + 1)
        self._last_stamp = stamp
        os.utime(path, ns=(stamp, stamp))

    def _remove_stale_temporaries(self) -> None:
        oldest = self.clock() - STALE_TEMPORARY_S
        for temporary in self.root.glob(f"*/*/{_TMP_PREFIX}*"):
            try:
                old = temporary.stat().st_mtime < oldest
            except FileNotFoundError:  # another process finished or removed it meanwhile
                continue
            if old or _owner_gone(temporary):
                _remove(temporary)


class RemoteStoreView:
    """An object store as a store watcher sees it (:class:`~torchship.store.view.StoreView`): listed
    remotely, each version served from a verified local copy in ``cache``.

    Versions handed out by :meth:`local` are held (locked in the cache, for every process sharing it)
    until :meth:`evict` says which are still in use; each :meth:`local` evicts what else the bound
    requires. :meth:`close` cancels a download in progress.
    """

    def __init__(self, store: ObjectStore, cache: VersionCache) -> None:
        self.store = store
        self.cache = cache
        self.location = store.url
        self._in_use: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def listing(self) -> dict[str, list[int]]:
        return self.store.listing()

    def pin(self, name: str) -> int | None:
        return self.store.pin(name)

    def local(self, name: str, version: int) -> Path:
        self.cache.hold(self.store, name, version)
        try:
            path = self.cache.get(self.store, name, version, keep=self._in_use_now())
        except BaseException:
            with self._lock:
                held = (name, version) in self._in_use
            if not held:
                self.cache.release(self.store, name, version)
            raise
        with self._lock:
            self._in_use.add((name, version))
        self.cache.evict(self._in_use_now())
        return path

    def evict(self, keep: Collection[tuple[str, int]]) -> list[CacheEntry]:
        """Say which versions are in use now (those served); evict others as the cache's bound requires."""
        keep = set(keep)
        with self._lock:
            dropped = self._in_use - keep
            self._in_use = keep
        for name, version in dropped:
            self.cache.release(self.store, name, version)
        return self.cache.evict(self._in_use_now())

    def _in_use_now(self) -> set[tuple[str, int]]:
        with self._lock:  # local() may run in several threads at once
            return set(self._in_use)

    def close(self) -> None:
        """Cancel a download in progress and every later one (the server is stopping)."""
        self.cache.close()


def _cached_marker(directory: Path) -> dict[str, Any] | None:
    """A cached version's commit marker when every published file is there at its published size."""
    try:
        manifest: dict[str, Any] = json.loads((directory / MARKER_FILE).read_text(encoding="utf-8"))
        intact = all(
            directory.joinpath(*PurePosixPath(relative).parts).stat().st_size == entry["size"]
            for relative, entry in manifest["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest if intact else None


def _entry(store: str, directory: Path) -> CacheEntry | None:
    try:
        size = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
        last_used = directory.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    return CacheEntry(
        store=store,
        name=directory.parent.name,
        version=int(directory.name),
        path=directory,
        size=size,
        last_used=last_used,
    )


def _lock_path(version_dir: Path) -> Path:
    # Beside the version's folder, not in it: it exists before the download and outlives a removal.
    return version_dir.with_name(version_dir.name + _LOCK_SUFFIX)


def _temporary_prefix(kind: str) -> str:
    # The pid and host let a later process tell a dead process's leftovers from a live download.
    return f"{_TMP_PREFIX}{os.getpid()}-{_HOST}-{kind}"


def _owner_gone(temporary: Path) -> bool:
    """Whether the process that made a temporary folder is known to be gone (of this host only)."""
    owner = _TMP_OWNER.match(temporary.name)
    if owner is None or owner.group(2) != _HOST:
        return False
    pid = int(owner.group(1))
    if pid == os.getpid():
        with _ACTIVE_GUARD:
            return temporary not in _ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _note_store(store_dir: Path, url: str) -> None:
    # For operators looking into the cache: which store a hashed folder belongs to.
    note = store_dir / "STORE"
    if not note.exists():
        note.write_text(url + "\n", encoding="utf-8")


def _remove(path: Path) -> None:
    if not path.exists():
        return
    # Renamed away first, so no reader sees a half-removed version in place.
    doomed = path.with_name(_temporary_prefix(f"removing-{path.name}-{time.monotonic_ns()}"))
    try:
        os.rename(path, doomed)
    except OSError:
        doomed = path
    shutil.rmtree(doomed, ignore_errors=True)
