"""The members of a TorchServe archive, extracted one by one after checks of their own: a ``.mar`` (zip)
and a ``.tar.gz`` (the archiver's ``tgz`` format). Used by :mod:`torchship.serving.mar.archive`, which
extracts into a private staging folder and moves the result into its cache only when all went well.

Before anything is written: member names (no absolute name, no ``..``), kinds (links, devices, FIFOs and
sparse files refused, a link named with its target), the file count and the declared sizes. While writing:
the bytes actually written (zip's declared sizes can lie). Tar members also pass tarfile's ``data`` filter,
and the decompressed tar stream is bounded, headers included.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, cast

from torchship.errors import PackageError, UserInputError
from torchship.serving.runtime.package_files import Budget, RegistrationLimits, archive_members, extract

__all__ = ["RECREATE", "extract_tar", "extract_zip", "named_errors"]

RECREATE = "re-create it with torch-model-archiver"
_RECREATE = RECREATE
_REFUSED_LINKS = "archives with links are refused: re-create it with torch-model-archiver from plain files"
_CHUNK = 256 << 10
# Bytes a tar stream may hold beyond its members' data: a 512-byte header per member, padding to the next
# block, long-name and pax headers; generous, so that only a stream built to waste work reaches it.
_TAR_OVERHEAD_PER_ENTRY = 16 << 10
# A single read of the tar stream beyond this is a header of absurd size (a pax header that would be held
# in memory whole); member data is read in smaller chunks.
_MAX_TAR_READ = 2 << 20
# Central directory bytes allowed per member: its fixed 46 bytes, a long name, extra fields and a comment.
_MAX_CD_ENTRY = 4096
_ECD_SIZE, _ECD_ENTRIES_TOTAL = 5, 4  # fields of zipfile's end record (zipfile._ECD_SIZE, _ECD_ENTRIES_TOTAL)


@contextlib.contextmanager
def named_errors(label: str) -> Iterator[None]:
    """Prefix the archive's name to the limit errors of the shared package-file helpers."""
    try:
        yield
    except UserInputError as exc:
        raise type(exc)(f"{label}: {exc.message}") from exc


def _check_name(name: str, label: str) -> None:
    """Refuse a member name that is absolute or climbs out of the archive's folder."""
    pure = PurePosixPath(name)
    if "\x00" in name or pure.is_absolute() or name.startswith("\\") or re.match(r"[A-Za-z]:", name):
        raise PackageError(f"{label} holds a member with an absolute name {name!r}; {_RECREATE}")
    if ".." in pure.parts or ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise PackageError(f"{label} holds a member {name!r} that leaves its folder ('..'); {_RECREATE}")


def extract_zip(file: IO[bytes], label: str, target: Path, limits: RegistrationLimits) -> None:
    try:
        _check_zip_directory(file, label, limits)
        with zipfile.ZipFile(file) as archive:
            _check_zip(archive, label, limits)
            with named_errors(label):
                members = archive_members(archive, limits)
                extract(archive, members, target, Budget(limits.max_package_size))
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise PackageError(f"{label} is not a readable zip archive ({exc}); {_RECREATE}") from exc


def _check_zip_directory(file: IO[bytes], label: str, limits: RegistrationLimits) -> None:
    """The member count and central directory size the zip's end record declares, checked before zipfile
    reads the whole central directory into memory (an object per member: millions of empty members fit
    in an archive within max_archive_size)."""
    end_record = getattr(zipfile, "_EndRecData", None)  # zipfile's own reader of the end record
    if end_record is None:
        return
    record = end_record(file)
    file.seek(0)
    if not record:
        return  # not a zip: zipfile.ZipFile says so
    entries, directory_size = int(record[_ECD_ENTRIES_TOTAL]), int(record[_ECD_SIZE])
    if entries > limits.max_package_files or directory_size > limits.max_package_files * _MAX_CD_ENTRY:
        raise UserInputError(
            f"{label} declares {entries} members in a central directory of {directory_size} bytes, more than "
            f"max_package_files={limits.max_package_files} (a server setting) allows"
        )


def _check_zip(archive: zipfile.ZipFile, label: str, limits: RegistrationLimits) -> None:
    """Names, member kinds, count and declared sizes, before anything is written."""
    infos = archive.infolist()
    if len(infos) > limits.max_package_files:
        raise UserInputError(
            f"{label} has {len(infos)} members, more than max_package_files={limits.max_package_files} "
            "(a server setting)"
        )
    declared = 0
    for info in infos:
        _check_name(info.filename, label)
        mode = info.external_attr >> 16 if info.create_system == 3 else 0
        kind = stat.S_IFMT(mode)
        if stat.S_ISLNK(mode):
            raise PackageError(
                f"{label} holds a symlink {info.filename!r} -> {_zip_link_target(archive, info)!r}; "
                f"{_REFUSED_LINKS}"
            )
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise PackageError(
                f"{label} holds {info.filename!r}, which is not a regular file or folder (a device, FIFO or "
                f"socket); {_RECREATE} from plain files"
            )
        declared += info.file_size
    if declared > limits.max_package_size:
        raise UserInputError(
            f"{label} unpacks to {declared} bytes, more than max_package_size={limits.max_package_size} "
            "(a server setting)"
        )


def _zip_link_target(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    try:
        with archive.open(info) as member:
            return member.read(1024).decode("utf-8", "replace")
    except Exception:  # only for the message: an unreadable target must not hide the refusal
        return "?"


class _CappedStream:
    """The decompressed tar stream, refused past ``cap`` bytes in all or ``_MAX_TAR_READ`` in one read:
    tarfile walks every header of the stream and holds long-name and pax headers in memory whole."""

    def __init__(self, inner: IO[bytes], cap: int, label: str) -> None:
        self.inner = inner
        self.cap = cap
        self.label = label

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > _MAX_TAR_READ:
            raise PackageError(
                f"{self.label} holds a tar header larger than {_MAX_TAR_READ} bytes; {_RECREATE}"
            )
        data = self.inner.read(size)
        self._check()
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self.inner.seek(offset, whence)
        self._check()
        return position

    def tell(self) -> int:
        return self.inner.tell()

    def _check(self) -> None:
        if self.inner.tell() > self.cap:
            raise UserInputError(
                f"{self.label} unpacks to more than max_package_size (a server setting) counting its tar "
                "headers"
            )


def extract_tar(file: IO[bytes], label: str, target: Path, limits: RegistrationLimits) -> None:
    """Extract member by member: each one checked (name, kind, count, running total of declared sizes)
    before it is written, then passed through tarfile's ``data`` filter, then written with the bytes
    counted."""
    cap = limits.max_package_size + (2 * limits.max_package_files + 16) * _TAR_OVERHEAD_PER_ENTRY
    try:
        with gzip.GzipFile(fileobj=file, mode="rb") as unzipped:
            stream = cast(IO[bytes], _CappedStream(cast(IO[bytes], unzipped), cap, label))
            with tarfile.open(fileobj=stream, mode="r:") as archive:
                _extract_tar(archive, label, target, limits)
    except (tarfile.ReadError, gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise PackageError(
            f"{label} is not a readable gzip-compressed tar archive ({exc}); {_RECREATE}"
        ) from exc


def _extract_tar(archive: tarfile.TarFile, label: str, target: Path, limits: RegistrationLimits) -> None:
    budget = Budget(limits.max_package_size)
    files = declared = 0
    root = target.resolve()
    for entries, member in enumerate(archive, start=1):
        _check_tar_member(member, label)
        if member.isreg():
            files += 1
            declared += member.size
        if files > limits.max_package_files or entries > 2 * limits.max_package_files + 16:
            raise UserInputError(
                f"{label} has more than max_package_files={limits.max_package_files} members (a server "
                "setting)"
            )
        if declared > limits.max_package_size:
            raise UserInputError(
                f"{label} unpacks to more than max_package_size={limits.max_package_size} bytes (a server "
                "setting)"
            )
        try:
            checked = tarfile.data_filter(member, str(root))
        except tarfile.FilterError as exc:
            raise PackageError(
                f"{label} holds a member tarfile refuses to extract ({exc}); {_RECREATE}"
            ) from exc
        _write_tar_member(archive, member, root / checked.name, root, label, budget)


def _check_tar_member(member: tarfile.TarInfo, label: str) -> None:
    _check_name(member.name, label)
    if member.issym():
        raise PackageError(
            f"{label} holds a symlink {member.name!r} -> {member.linkname!r}; {_REFUSED_LINKS}"
        )
    if member.islnk():
        raise PackageError(
            f"{label} holds a hard link {member.name!r} -> {member.linkname!r}; {_REFUSED_LINKS}"
        )
    if member.issparse() or not (member.isreg() or member.isdir()):
        raise PackageError(
            f"{label} holds {member.name!r}, which is not a regular file or folder (a device, FIFO or "
            f"sparse file); {_RECREATE} from plain files"
        )


def _write_tar_member(
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    destination: Path,
    root: Path,
    label: str,
    budget: Budget,
) -> None:
    try:
        if not destination.resolve().is_relative_to(root):
            raise PackageError(f"{label} holds a member {member.name!r} that leaves its folder; {_RECREATE}")
        if member.isdir():
            destination.mkdir(parents=True, exist_ok=True)
            return
        destination.parent.mkdir(parents=True, exist_ok=True)
        reader = archive.extractfile(member)
        assert reader is not None  # a regular file, checked above
        with reader, destination.open("wb") as sink:
            while chunk := reader.read(_CHUNK):
                budget.take(len(chunk))
                sink.write(chunk)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS):  # the server's disk: a 500
            raise
        raise PackageError(
            f"{label}: the member {member.name!r} cannot be extracted ({exc.strerror or exc}); use short, "
            "plain file names, and no name that is both a file and a folder"
        ) from exc
