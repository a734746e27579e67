"""A model store on object storage (``s3://bucket/prefix``), with the directory store's guarantees.

Any URL fsspec opens works: ``s3://`` through ``s3fs`` (``pip install 'torchship[s3]'``), ``gs://``
through ``gcsfs`` (``[gcs]``), ``az://``/``abfs://`` through ``adlfs`` (``[azure]``). Credentials and
endpoints come from each SDK's usual environment: for S3, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, and ``AWS_ENDPOINT_URL`` for MinIO and other
S3-compatible servers.

The layout mirrors the directory store, plus one marker per version:

    <prefix>/<name>/<version>/config.json ...      the package files
    <prefix>/<name>/<version>/.claim               who claimed the number (written first, never changed,
                                                   kept by an unpublish: numbers are never reused)
    <prefix>/<name>/<version>/.published.json      the commit marker (written last): sizes and sha256
    <prefix>/<name>/PINNED                         an operator's pin (see torchship.store.view)

Object stores cannot rename a folder, so a version becomes visible differently: a version is published
if and only if its marker exists, and the marker is uploaded after every file. A crashed publish leaves
files without a marker, which every reader ignores. The marker lists each file's size and sha256, so a
reader can prove that what it downloaded is what was published.

A version number is claimed before anything is uploaded, by creating ``.claim`` only if it does not
exist yet (S3's ``If-None-Match: *``; ``FileExistsError`` when another publisher has it). Where a
backend ignores that condition, the marker is still written the same way, so a committed version is
never replaced, and the checksums catch files mixed up by two racing publishers.

    store = ObjectStore("s3://models/prod")
    version = store.publish("bbc", lambda tmp: write_package(tmp, ...))
    store.download("bbc", version, Path("/tmp/bbc-1"))     # checked against the marker
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from torchship.errors import (
    ConfigError,
    NotFoundError,
    PackageError,
    TorchshipError,
    VersionExistsError,
    VersionNotFoundError,
)
from torchship.store.marker import (
    MARKER_FORMAT,
    MAX_MARKER_BYTES,
    check_marker_size,
    file_digest,
    package_files,
    parse_marker,
    verify_copied_version,
    verify_files,
)
from torchship.store.store import (
    CLAIM_FILE,
    CONFIG_FILE,
    MARKER_FILE,
    ModelStore,
    validate_name,
    validate_version,
)
from torchship.store.urls import OBJECT_STORE_SCHEMES, is_store_url
from torchship.store.view import MAX_PIN_SIZE, PIN_FILE, parse_pin

__all__ = [
    "CLAIM_FILE",
    "MARKER_FILE",
    "MARKER_FORMAT",
    "DownloadCancelled",
    "ObjectStore",
    "file_digest",
    "open_store",
    "verify_copied_version",
    "verify_files",
]

DOWNLOAD_CHUNK = 1 << 20
"""Bytes handed over at a time while downloading (each one counted, hashed and written as it arrives;
a cancelled download stops between two)."""
DOWNLOAD_BLOCK = 16 << 20
"""Bytes asked of the store per request while downloading (fewer, larger requests are faster)."""
CLAIM_ATTEMPTS = 100
"""Version numbers tried before a publish gives up (each taken one means another publisher won it)."""

_EXTRAS = {"s3fs": "s3", "gcsfs": "gcs", "adlfs": "azure"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_VERSION_MARKER = re.compile(r"/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/([1-9][0-9]*)/" + re.escape(MARKER_FILE))
_log = logging.getLogger(__name__)


def open_store(location: str | Path) -> ModelStore | ObjectStore:
    """The store at ``location``: an :class:`ObjectStore` for a URL (``s3://bucket/prefix``), else a
    directory :class:`~torchship.store.ModelStore`."""
    text = str(location)
    return ObjectStore(text) if is_store_url(text) else ModelStore(text)


class ObjectStore:
    """Versioned model packages under one object store prefix, with :class:`ModelStore`'s contract:
    versions are published atomically and never change.

    >>> store = ObjectStore("s3://models/prod")
    >>> store.versions("bbc")
    [1, 2]
    """

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url = url.rstrip("/")
        self.location = self.url
        # Listings are never cached: the store is shared with other publishers and a watcher must see
        # their new versions on its next pass.
        self.fs, root = _filesystem(self.url, {"use_listings_cache": False, **storage_options})
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    # Reading -----------------------------------------------------------------------------------------

    def listing(self) -> dict[str, list[int]]:
        """Every model's published versions, ascending, from one listing of the store."""
        found: dict[str, list[int]] = {}
        for path in self._find(self.root):
            match = _VERSION_MARKER.fullmatch(path[len(self.root) :])
            if match:
                found.setdefault(match.group(1), []).append(int(match.group(2)))
        return {name: sorted(found[name]) for name in sorted(found)}

    def models(self) -> list[str]:
        """Names of the models that have at least one published version, sorted."""
        return list(self.listing())

    def versions(self, name: str) -> list[int]:
        """Published versions of ``name``, ascending; empty when the model is unknown."""
        folder = self._key(validate_name(name))
        return sorted(
            int(parts[0])
            for parts in self._relative_parts(folder)
            if len(parts) == 2 and parts[1] == MARKER_FILE and _is_number(parts[0])
        )

    def latest(self, name: str) -> int | None:
        """The highest published version of ``name``, or ``None``."""
        versions = self.versions(name)
        return versions[-1] if versions else None

    def next_version(self, name: str) -> int:
        """The number a publish of ``name`` would claim now: one past every published or claimed one
        (the numbers of crashed publishes are never reused)."""
        return self._highest_claimed(validate_name(name)) + 1

    def pin(self, name: str) -> int | None:
        """The version ``<name>/PINNED`` names, or None without one (see :mod:`torchship.store.view`)."""
        key = self._key(validate_name(name), PIN_FILE)
        try:
            with self._errors(f"reading {self._url(key)}"):
                text = self.fs.cat_file(key, start=0, end=MAX_PIN_SIZE + 1)
        except FileNotFoundError:
            return None
        return parse_pin(bytes(text), self._url(key))

    def manifest(self, name: str, version: int) -> dict[str, Any]:
        """The commit marker of ``name`` at ``version``: ``{"format", "name", "version", "files": {path:
        {"size", "sha256"}}}``. ``VersionNotFoundError`` when that version is not published."""
        key = self._key(validate_name(name), str(validate_version(version)), MARKER_FILE)
        try:
            with self._errors(f"reading {self._url(key)}"):
                raw = bytes(self.fs.cat_file(key, start=0, end=MAX_MARKER_BYTES + 1))
        except FileNotFoundError:
            raise self._not_found(name, version) from None
        return parse_marker(raw, self._url(key), name, version)

    def download(
        self,
        name: str,
        version: int,
        dest: Path,
        *,
        manifest: Mapping[str, Any] | None = None,
        cancel: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Download the published files of ``name`` at ``version`` into the directory ``dest`` and check
        each against the marker's size and sha256; returns the marker. A file that does not match raises
        ``PackageError`` naming it (``dest`` then holds what was fetched: discard it).

        Each object is streamed and hashed as it arrives, and abandoned as soon as it holds more bytes
        than the marker declares, so a changed object cannot fill the disk. ``manifest`` is the marker
        when the caller has just read it; setting ``cancel`` stops the download between chunks with
        :class:`DownloadCancelled`.
        """
        marker = dict(manifest) if manifest is not None else self.manifest(name, version)
        folder = self._key(validate_name(name), str(validate_version(version)))
        for relative, expected in marker["files"].items():
            _check_cancel(cancel, self._url(folder))
            path = dest.joinpath(*PurePosixPath(relative).parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fetch(f"{folder}/{relative}", path, expected["size"], expected["sha256"], cancel)
        return marker

    def _fetch(self, key: str, path: Path, size: int, sha256: str, cancel: threading.Event | None) -> None:
        where = self._url(key)
        digest = hashlib.sha256()
        received = 0
        try:
            with (
                self._errors(f"downloading {where}"),
                self.fs.open(key, "rb", block_size=DOWNLOAD_BLOCK) as source,
                open(path, "wb") as target,
            ):
                # One byte past the declared size is enough to know the object is bigger.
                while chunk := source.read(min(DOWNLOAD_CHUNK, size - received + 1)):
                    received += len(chunk)
                    if received > size:
                        raise PackageError(
                            f"{where}: more than the {size} bytes published (a changed object); "
                            "download stopped there. Publish a new version instead of changing one"
                        )
                    digest.update(chunk)
                    target.write(chunk)
                    _check_cancel(cancel, where)
        except FileNotFoundError as exc:
            raise PackageError(
                f"{where}: a published file is missing from the store ({exc}); "
                "the version was changed after it was published: publish a new version"
            ) from None
        if received != size:
            raise PackageError(
                f"{where}: {received} bytes, but {size} were published (a partial or changed object)"
            )
        if digest.hexdigest() != sha256:
            raise PackageError(
                f"{where}: sha256 differs from the one written when it was published "
                "(a corrupt or changed object)"
            )

    def read_file(self, name: str, version: int, relative: str) -> bytes:
        """One published file of ``name`` at ``version`` (``"metrics.json"``), checked against the marker;
        ``NotFoundError`` when the version has no such file."""
        manifest = self.manifest(name, version)
        expected = manifest["files"].get(relative)
        if expected is None:
            raise NotFoundError(f"{name} version {version} in {self.url} has no file {relative!r}")
        key = self._key(name, str(version), relative)
        try:
            with self._errors(f"reading {self._url(key)}"):
                data = bytes(self.fs.cat_file(key))
        except FileNotFoundError:
            raise PackageError(f"{self._url(key)}: a published file is missing from the store") from None
        if len(data) != expected["size"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise PackageError(
                f"{self._url(key)}: differs from the file published (a corrupt or changed object)"
            )
        return data

    # Publishing --------------------------------------------------------------------------------------

    def publish(self, name: str, write: Callable[[Path], None], version: int | None = None) -> int:
        """Publish a new version of ``name`` whose files ``write(tmp_dir)`` creates in a local temporary
        directory; return its number.

        ``version=None`` takes the next free number (1 for a new model). An existing version (published,
        or claimed by a publish in progress or one that crashed) is never overwritten: asking for one
        raises ``VersionExistsError``.
        """
        validate_name(name)
        if version is not None:
            version = validate_version(version)
            self._refuse_taken(name, version)
        with tempfile.TemporaryDirectory(prefix="torchship-publish-") as tmp:
            package = Path(tmp)
            write(package)
            if not (package / CONFIG_FILE).is_file():
                raise PackageError(f"Refusing to publish {name}: the package has no {CONFIG_FILE}.")
            files = package_files(package)
            check_marker_size(name, files)
            number, token = self._claim(name, version)
            try:
                self._upload(name, number, package, files, token)
            except _LostClaim as lost:  # the folder is another publisher's now: leave it alone
                raise VersionExistsError(lost.message) from None
            except BaseException:
                self._abandon(name, number)
                raise
        return number

    def unpublish(self, name: str, version: int) -> None:
        """Remove ``name`` at ``version``: its marker first (readers stop seeing it at once), then its
        files. Serving replicas that watch the store drain and unload it.

        The version's ``.claim`` stays as a tombstone, so its number is never handed out again: a cache
        holding the old files could otherwise take a new version of that number for them.
        """
        folder = self._key(validate_name(name), str(validate_version(version)))
        if version not in self.versions(name):  # deleting a missing object is no error on S3
            raise self._not_found(name, version)
        with self._errors(f"removing {self._url(folder)}"):
            self.fs.rm_file(f"{folder}/{MARKER_FILE}")
        keys = [key for key in self._find(folder) if not key.endswith(f"/{CLAIM_FILE}")]
        if keys:
            with self._errors(f"removing {self._url(folder)}"):
                self.fs.rm(keys)

    def _refuse_taken(self, name: str, version: int) -> None:
        folder = self._key(name, str(version))
        taken = {parts[-1] for parts in self._relative_parts(folder) if len(parts) == 1}
        if MARKER_FILE in taken:
            raise VersionExistsError(
                f"{name} version {version} is already published in {self.url}; versions never change. "
                "Publish a new version instead."
            )
        if CLAIM_FILE in taken:
            raise VersionExistsError(
                f"{name} version {version} is being published by another run, a publish of it crashed, or "
                f"it was unpublished ({self._url(folder)} has a {CLAIM_FILE} but no {MARKER_FILE}); "
                "publish another version (a number is never reused: caches may hold its old files)"
            )

    def _claim(self, name: str, version: int | None) -> tuple[int, bytes]:
        token = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "token": secrets.token_hex(16)}
        ).encode()
        for _ in range(CLAIM_ATTEMPTS):
            number = version if version is not None else self.next_version(name)
            try:
                with self._errors(f"claiming {name} version {number} in {self.url}"):
                    # Exclusive create: If-None-Match: * on S3; the token tells this claim from another's.
                    self.fs.pipe_file(self._key(name, str(number), CLAIM_FILE), token, mode="create")
            except FileExistsError:
                if version is not None:
                    raise VersionExistsError(
                        f"{name} version {version} was claimed by another publisher first; "
                        "publish another version"
                    ) from None
                continue
            return number, token
        raise VersionExistsError(
            f"could not claim a new version of {name} in {self.url} after {CLAIM_ATTEMPTS} tries: other "
            "publishers took every number tried; try again, or give an explicit version"
        )

    def _highest_claimed(self, name: str) -> int:
        numbers = [int(parts[0]) for parts in self._relative_parts(self._key(name)) if _is_number(parts[0])]
        return max(numbers, default=0)

    def _upload(self, name: str, number: int, package: Path, files: dict[str, Any], token: bytes) -> None:
        folder = self._key(name, str(number))
        with self._errors(f"uploading to {self._url(folder)}"):
            self.fs.put(
                [str(package.joinpath(*PurePosixPath(relative).parts)) for relative in files],
                [f"{folder}/{relative}" for relative in files],
            )
            claim = bytes(self.fs.cat_file(f"{folder}/{CLAIM_FILE}"))
        if claim != token:  # only where the backend ignored the exclusive create
            raise _LostClaim(
                f"{name} version {number} was claimed by another publisher at the same time "
                f"({self.url} does not honour exclusive writes); publish again"
            )
        marker = {"format": MARKER_FORMAT, "name": name, "version": number, "files": files}
        try:
            with self._errors(f"committing {self._url(folder)}"):
                self.fs.pipe_file(
                    f"{folder}/{MARKER_FILE}", json.dumps(marker, indent=1).encode(), mode="create"
                )
        except FileExistsError:
            raise _LostClaim(
                f"{name} version {number} was committed by another publisher first; publish again"
            ) from None

    def _abandon(self, name: str, number: int) -> None:
        # Files first, the claim last: while the claim stands no other publisher can take the number, so
        # nothing of theirs is removed here.
        folder = self._key(name, str(number))
        try:
            keys = [key for key in self._find(folder) if not key.endswith(f"/{CLAIM_FILE}")]
            if keys:
                self.fs.rm(keys)
            self.fs.rm_file(f"{folder}/{CLAIM_FILE}")
        except Exception as exc:  # the publish's own error matters more; the folder stays invisible
            _log.warning("could not clean up the failed publish at %s: %s", self._url(folder), exc)

    # Plumbing ----------------------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _url(self, key: str) -> str:
        return self.url + key[len(self.root) :]

    def _not_found(self, name: str, version: int) -> NotFoundError:
        versions = self.versions(name)
        if not versions:
            return NotFoundError(f"Model not found: {name} (no published versions in {self.url}).")
        return VersionNotFoundError(
            f"Model version not found: {name} version {version}; "
            f"published versions are {', '.join(map(str, versions))}."
        )

    def _find(self, key: str) -> list[str]:
        """Every object key under ``key``/ (one paginated listing, never cached)."""
        try:
            with self._errors(f"listing {self._url(key)}"):
                found: list[str] = self.fs.find(key)
        except FileNotFoundError as exc:  # a missing prefix lists as empty: this is the bucket itself
            raise ConfigError(
                f"listing {self.url}: {exc}; check the bucket's name, or create the bucket"
            ) from None
        return found

    def _relative_parts(self, key: str) -> Iterator[tuple[str, ...]]:
        prefix = key + "/"
        for path in self._find(key):
            if path.startswith(prefix):
                yield tuple(path[len(prefix) :].split("/"))

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Storage errors as torchship errors that say what to check; ``FileNotFoundError`` and
        ``FileExistsError`` pass through for the caller to decide what they mean."""
        try:
            yield
        except (FileNotFoundError, FileExistsError, TorchshipError):
            raise
        except PermissionError as exc:
            raise ConfigError(
                f"{doing}: access denied ({exc}); check the store's credentials "
                "(e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the bucket's permissions"
            ) from exc
        except Exception as exc:
            if not _is_storage_error(exc):
                raise
            raise ConfigError(
                f"{doing}: {type(exc).__name__}: {exc}; check that the bucket exists and the store is "
                "reachable with the usual environment (e.g. AWS_ENDPOINT_URL, AWS_DEFAULT_REGION)"
            ) from exc


class DownloadCancelled(PackageError):
    """A download stopped because its cancel flag was set (the server is stopping)."""


class _LostClaim(TorchshipError):
    """Another publisher holds the claimed number after all (a backend that ignores exclusive writes)."""


def _filesystem(url: str, options: dict[str, Any]) -> tuple[Any, str]:
    import fsspec.core

    scheme = _SCHEME.match(url)
    protocol = scheme.group(1).lower() if scheme else ""
    package = OBJECT_STORE_SCHEMES.get(protocol)
    if package is None:
        raise ConfigError(
            f"store {url!r}: unsupported URL scheme {protocol!r}; use a directory or one of "
            + ", ".join(f"{name}://" for name in OBJECT_STORE_SCHEMES)
        )
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except ImportError:
        extra = _EXTRAS.get(package, package)
        raise ConfigError(
            f"store {url!r}: {protocol}:// needs the {package} package: pip install 'torchship[{extra}]'"
        ) from None
    return fs, str(root)


def _check_cancel(cancel: threading.Event | None, where: str) -> None:
    if cancel is not None and cancel.is_set():
        raise DownloadCancelled(f"{where}: download cancelled (the server is stopping)")


def _is_number(text: str) -> bool:
    return text.isdigit() and not text.startswith("0")


def _is_storage_error(exc: Exception) -> bool:
    # Backends raise OSError, or their SDK's own errors (botocore's NoCredentialsError, ...): those are
    # the store's answer, not a bug here.
    module = type(exc).__module__.split(".")[0]
    return isinstance(exc, OSError) or module in {"botocore", "aiobotocore", "google", "azure", "aiohttp"}
