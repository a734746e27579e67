"""The commit marker of an object store version: what it lists, how it is read, and how files are checked
against it.

``<prefix>/<name>/<version>/.published.json``, written last when a version is published, is
``{"format": 1, "name": ..., "version": ..., "files": {"config.json": {"size": 123, "sha256": "..."}}}``.
A reader bounds it (:data:`MAX_MARKER_BYTES`), refuses a file name that would land outside the version's
folder, and checks every downloaded or copied file against its size and sha256.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from torchship.errors import PackageError
from torchship.store.store import CLAIM_FILE, CONFIG_FILE, MARKER_FILE

__all__ = [
    "MARKER_FORMAT",
    "MAX_MARKER_BYTES",
    "check_marker_size",
    "file_digest",
    "package_files",
    "parse_marker",
    "verify_copied_version",
    "verify_files",
]

MARKER_FORMAT = 1
MAX_MARKER_BYTES = 1 << 20
"""Largest commit marker read (a real one lists a few files in a few hundred bytes)."""

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def file_digest(path: Path) -> str:
    """The sha256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(directory: Path, files: Mapping[str, Any], where: str) -> None:
    """Check that every file of a marker's ``files`` is in ``directory`` with its size and sha256;
    ``PackageError`` naming the first that is not (``where`` says where it came from)."""
    for relative, expected in files.items():
        path = directory.joinpath(*PurePosixPath(relative).parts)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise PackageError(f"{where}/{relative}: missing after download") from None
        if size != expected["size"]:
            raise PackageError(
                f"{where}/{relative}: {size} bytes, but {expected['size']} were published "
                "(a partial or changed object)"
            )
        if file_digest(path) != expected["sha256"]:
            raise PackageError(
                f"{where}/{relative}: sha256 differs from the one written when it was published "
                "(a corrupt or changed object)"
            )


def package_files(package: Path) -> dict[str, Any]:
    files: dict[str, Any] = {}
    for path in sorted(package.rglob("*")):
        if path.is_symlink():
            raise PackageError(f"Refusing to publish {path.name}: a package holds plain files, not links.")
        if path.is_file():
            relative = path.relative_to(package).as_posix()
            if relative in (MARKER_FILE, CLAIM_FILE):
                raise PackageError(f"Refusing to publish: {relative} is the store's own file name.")
            files[relative] = {"size": path.stat().st_size, "sha256": file_digest(path)}
    return files


def check_marker_size(name: str, files: Mapping[str, Any]) -> None:
    # Readers refuse a marker over MAX_MARKER_BYTES, so such a version could never be served: refuse it
    # here, before a number is claimed. The largest version number a marker could carry bounds its size.
    marker = {"format": MARKER_FORMAT, "name": name, "version": 10**18, "files": files}
    size = len(json.dumps(marker, indent=1).encode())
    if size > MAX_MARKER_BYTES:
        raise PackageError(
            f"Refusing to publish {name}: its {len(files)} files need a commit marker of {size} bytes, more "
            f"than the {MAX_MARKER_BYTES} readers accept; package fewer files (e.g. archive small ones)"
        )


def verify_copied_version(directory: Path) -> None:
    """Check a version that something else copied out of an object store (KServe's storage initializer
    into ``/mnt/models``, ``aws s3 sync``): a claim without a commit marker is a publish that had not
    finished, and with a marker every file must have its published size and sha256. ``PackageError``
    says what is wrong; a folder with neither file (a package made some other way) passes as it is."""
    marker_path, claim_path = directory / MARKER_FILE, directory / CLAIM_FILE
    if not marker_path.is_file():
        if claim_path.is_file():
            raise PackageError(
                f"{directory} is a copy of a version whose publish had not finished ({CLAIM_FILE} but no "
                f"{MARKER_FILE}): copy it again once it is published, or point at a published version"
            )
        return
    with open(marker_path, "rb") as handle:
        raw = handle.read(MAX_MARKER_BYTES + 1)
    try:
        named = json.loads(raw) if len(raw) <= MAX_MARKER_BYTES else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        named = {}
    name, version = (named.get("name"), named.get("version")) if isinstance(named, dict) else (None, None)
    marker = parse_marker(raw, str(marker_path), str(name), version if isinstance(version, int) else -1)
    verify_files(directory, marker["files"], str(directory))


def parse_marker(raw: bytes, where: str, name: str, version: int) -> dict[str, Any]:
    if len(raw) > MAX_MARKER_BYTES:
        raise PackageError(f"{where}: larger than {MAX_MARKER_BYTES} bytes; not a commit marker")
    try:
        marker = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{where}: not valid JSON ({exc}); publish the version again") from None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        raise PackageError(f"{where}: not a format-{MARKER_FORMAT} commit marker; upgrade torchship")
    if marker.get("name") != name or marker.get("version") != version:
        raise PackageError(f"{where}: the marker is for {marker.get('name')} {marker.get('version')}")
    files = marker.get("files")
    if not isinstance(files, dict) or CONFIG_FILE not in files:
        raise PackageError(f"{where}: the marker lists no {CONFIG_FILE}")
    for relative, entry in files.items():
        check_entry(where, relative, entry)
    return marker


def check_entry(where: str, relative: object, entry: object) -> None:
    # A marker names where files land on this machine: nothing may point outside the version's folder.
    parts = PurePosixPath(str(relative)).parts
    if not isinstance(relative, str) or not parts or relative.startswith("/") or ".." in parts:
        raise PackageError(f"{where}: the marker lists an unsafe file name {relative!r}")
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("size"), int)
        or entry["size"] < 0
        or not _HEX64.match(str(entry.get("sha256", "")))
    ):
        raise PackageError(f"{where}: the marker's entry for {relative} has no valid size and sha256")
