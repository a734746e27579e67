"""A registered package's files, read and copied within the registration limits (the server side of
``POST /models``, used by :mod:`torchship.serving.sources`).

A directory and a ``.zip`` archive look alike here: a *manifest* (each file's path inside the package and
its size, taken from the directory or from the archive's declared sizes) and an *opener* for each file.
Sizes and counts are checked on the manifest before anything is copied, and the bytes actually written are
counted again while copying (an archive's declared sizes can lie). Archives are extracted member by member,
refusing absolute names, ``..``, links and oversized contents.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import zipfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from torchship.errors import PackageError, UserInputError
from torchship.serving.settings import ServerSettings
from torchship.store import PackageConfig
from torchship.store.package import MAX_CONFIG_BYTES

__all__ = [
    "Budget",
    "Manifest",
    "Opener",
    "RegistrationLimits",
    "archive_members",
    "comparable",
    "copy_package",
    "directory_manifest",
    "extract",
    "open_file",
    "open_member",
    "read_json_config",
    "same_bytes",
    "tree_size",
]


@dataclass(frozen=True)
class RegistrationLimits:
    """What one registration may put into the store (see :class:`ServerSettings` for each field)."""

    max_archive_size: int = ServerSettings.max_archive_size
    max_package_size: int = ServerSettings.max_package_size
    max_package_files: int = ServerSettings.max_package_files
    store_quota: int | None = ServerSettings.store_quota

    @classmethod
    def of(cls, settings: ServerSettings) -> RegistrationLimits:
        return cls(
            settings.max_archive_size,
            settings.max_package_size,
            settings.max_package_files,
            settings.store_quota,
        )


# A package's files by path inside it ("model.safetensors", "plots/loss.png") → size in bytes, and a way
# to open each for reading; for a directory and for an archive alike.
Manifest = dict[str, int]
Opener = Callable[[str], AbstractContextManager[IO[bytes]]]


class Budget:
    """Bytes a registration may still write: counts what is actually written (declared sizes can lie)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def take(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise UserInputError(
                f"The package unpacks to more than max_package_size={self.limit} bytes (a server setting)"
            )


def directory_manifest(root: Path, limits: RegistrationLimits) -> Manifest:
    """Every file under ``root`` and its size; symlinks, too many files or bytes are refused on the way."""
    manifest: Manifest = {}
    total = 0
    for folder, directories, files in os.walk(root):
        for entry in (*directories, *files):
            item = Path(folder) / entry
            if item.is_symlink():
                raise UserInputError(
                    f"Cannot register {root}: it contains a symlink ({entry}); copy real files"
                )
        for entry in files:
            item = Path(folder) / entry
            manifest[item.relative_to(root).as_posix()] = size = item.stat().st_size
            total += size
            if len(manifest) > limits.max_package_files:
                raise UserInputError(
                    f"Cannot register {root}: it has more than max_package_files={limits.max_package_files} "
                    "files (a server setting)"
                )
    if total > limits.max_package_size:
        raise UserInputError(
            f"Cannot register {root}: it holds {total} bytes, more than max_package_size="
            f"{limits.max_package_size} (a server setting)"
        )
    return manifest


def open_file(root: Path, name: str) -> IO[bytes]:
    return (root / name).open("rb")


def open_member(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], name: str) -> IO[bytes]:
    return archive.open(members[name])


def read_json_config(opener: Opener, manifest: Manifest) -> dict[str, object]:
    if "config.json" not in manifest:
        raise PackageError("The package holds no torchship package (no config.json at its root)")
    with opener("config.json") as file:
        raw = file.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise PackageError(f"The package's config.json is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise PackageError(f"The package's config.json cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise PackageError("The package's config.json must hold a JSON object")
    return data


def comparable(config: dict[str, object]) -> dict[str, object]:
    """The config as the store writes it (defaults filled in), without the name and version it stamps."""
    # One that does not parse is compared as it is: _fill_and_stamp refuses it later, with the reason.
    with contextlib.suppress(UserInputError, TypeError, ValueError, AttributeError):
        config = PackageConfig.from_dict(config).to_dict()
    return {key: value for key, value in config.items() if key not in ("name", "version")}


def same_bytes(ours: Opener, theirs: Opener, name: str) -> bool:
    with ours(name) as left, theirs(name) as right:
        while True:
            chunk = left.read(1 << 20)
            if chunk != right.read(len(chunk) or 1):
                return False
            if not chunk:
                return True


def tree_size(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for entry in files:
            try:
                total += (Path(folder) / entry).lstat().st_size
            except OSError:  # removed meanwhile (a temporary directory of a publish)
                continue
    return total


def copy_package(source: Path, target: Path, budget: Budget) -> None:
    for item in source.rglob("*"):
        destination = target / item.relative_to(source)
        if item.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        elif item.is_file() and not item.is_symlink():
            destination.parent.mkdir(parents=True, exist_ok=True)
            with item.open("rb") as reader, destination.open("wb") as sink:
                _copy_stream(reader, sink, budget)


def _copy_stream(reader: IO[bytes], sink: IO[bytes], budget: Budget) -> None:
    while chunk := reader.read(1 << 20):
        budget.take(len(chunk))
        sink.write(chunk)


def _archive_prefix(names: list[str]) -> str:
    """``"pkg/"`` when every member sits in one top-level folder and config.json is not at the root."""
    if "config.json" in names:
        return ""
    tops = {name.split("/", 1)[0] for name in names}
    return f"{tops.pop()}/" if len(tops) == 1 and any(n.endswith("/config.json") for n in names) else ""


def archive_members(archive: zipfile.ZipFile, limits: RegistrationLimits) -> dict[str, zipfile.ZipInfo]:
    """The archive's files by their path inside the package, checked before anything is extracted:
    count, declared sizes, names that would land outside the package, links."""
    infos = archive.infolist()
    if len(infos) > limits.max_package_files:
        raise UserInputError(
            f"The archive has {len(infos)} members, more than max_package_files={limits.max_package_files} "
            "(a server setting)"
        )
    prefix = _archive_prefix([info.filename for info in infos])
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename[len(prefix) :] if info.filename.startswith(prefix) else info.filename
        if not name or name.endswith("/"):
            continue
        if name.startswith(("/", "\\")) or ".." in Path(name).parts or Path(name).is_absolute():
            raise UserInputError(f"The archive member {info.filename!r} would land outside the package")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UserInputError(f"The archive member {info.filename!r} is a symlink; packages hold files")
        members[Path(name).as_posix()] = info
    declared = sum(info.file_size for info in members.values())
    if declared > limits.max_package_size:
        raise UserInputError(
            f"The archive unpacks to {declared} bytes, more than max_package_size={limits.max_package_size} "
            "(a server setting)"
        )
    return members


def extract(
    archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], target: Path, budget: Budget
) -> None:
    root = target.resolve()
    for name, member in members.items():
        destination = (target / name).resolve()
        if not destination.is_relative_to(root):
            raise UserInputError(f"The archive member {member.filename!r} would land outside the package")
        destination.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(member) as source, destination.open("wb") as sink:
            _copy_stream(source, sink, budget)
