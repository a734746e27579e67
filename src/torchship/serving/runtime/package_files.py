"""A registered package's files, read and copied within the registration limits (the server side of
``POST /models``, used by :mod:`torchship.serving.runtime.sources`).

A directory and a ``.zip`` archive look alike here: a *manifest* (each file's path inside the package and
its size, taken from the directory or from the archive's declared sizes) and an *opener* for each file.
Sizes and counts are checked on the manifest before anything is copied, and the bytes actually written are
counted again while copying (an archive's declared sizes can lie). Archives are extracted member by member,
refusing absolute names, ``..``, links and oversized contents.
"""

from __future__ import annotations

import contextlib
import errno
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
        sizes = {entry: _entry_size(root, Path(folder) / entry) for entry in (*directories, *files)}
        for entry in files:
            item = Path(folder) / entry
            manifest[item.relative_to(root).as_posix()] = size = sizes[entry]
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


def _entry_size(root: Path, item: Path) -> int:
    """The size of a regular file (0 for a folder); anything else is refused without opening it: a FIFO
    or device would block or never end the read, a symlink could point anywhere."""
    status = item.lstat()
    mode = status.st_mode
    if stat.S_ISLNK(mode):
        raise UserInputError(f"Cannot register {root}: it contains a symlink ({item.name}); copy real files")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UserInputError(
            f"Cannot register {root}: {item.relative_to(root)} is not a regular file or folder (a FIFO, "
            "socket or device); packages hold plain files"
        )
    return status.st_size if stat.S_ISREG(mode) else 0


def open_file(root: Path, name: str) -> IO[bytes]:
    """``root/name`` for reading, only when it is a regular file: O_NONBLOCK so that a FIFO put there since
    the manifest was taken does not block the open, O_NOFOLLOW so that a symlink is not followed."""
    try:
        descriptor = os.open(root / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise UserInputError(f"Cannot register {root}: {name} is a symlink; copy real files") from exc
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise UserInputError(
                f"Cannot register {root}: {name} is not a regular file; packages hold plain files"
            )
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def open_member(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], name: str) -> IO[bytes]:
    member = members[name]
    try:
        return archive.open(member)
    except RuntimeError as exc:  # zipfile's way of saying "encrypted" (it cannot decrypt without a password)
        raise PackageError(
            f"The archive member {member.filename!r} cannot be read ({exc}); packages hold unencrypted files"
        ) from exc


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
            with (
                open_file(source, item.relative_to(source).as_posix()) as reader,
                destination.open("wb") as sink,
            ):
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
    _refuse_file_folder_clashes(members)
    declared = sum(info.file_size for info in members.values())
    if declared > limits.max_package_size:
        raise UserInputError(
            f"The archive unpacks to {declared} bytes, more than max_package_size={limits.max_package_size} "
            "(a server setting)"
        )
    return members


# Extraction failures that are the server's problem, whatever the archive holds.
_SERVER_SIDE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


def _refuse_file_folder_clashes(members: dict[str, zipfile.ZipInfo]) -> None:
    """A name that is a file and also a folder of another member ("x" and "x/y") cannot be extracted."""
    for name in members:
        for folder in Path(name).parents:
            clash = members.get(folder.as_posix())
            if clash is not None:
                raise PackageError(
                    f"The archive member {clash.filename!r} is a file and also the folder of "
                    f"{members[name].filename!r}; rename one of them"
                )


def extract(
    archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], target: Path, budget: Budget
) -> None:
    root = target.resolve()
    for name, member in members.items():
        try:
            destination = (target / name).resolve()
            if not destination.is_relative_to(root):
                raise UserInputError(f"The archive member {member.filename!r} would land outside the package")
            destination.parent.mkdir(parents=True, exist_ok=True)
            with open_member(archive, members, name) as source, destination.open("wb") as sink:
                _copy_stream(source, sink, budget)
        except OSError as exc:  # a name too long for the file system, a file where a folder must be, ...
            if exc.errno in _SERVER_SIDE_ERRNOS:  # the server's disk, not the archive: stays a 500
                raise
            raise PackageError(
                f"The archive member {member.filename!r} cannot be extracted ({exc.strerror or exc}); "
                "use short, plain file names"
            ) from exc
