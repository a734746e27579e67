"""TorchServe model archives, unpacked safely: ``.mar`` (a zip, the archiver's ``default`` format),
``.tar.gz``/``.tgz`` (its ``tgz`` format) and unpacked ``no-archive`` folders, each read into a
:class:`ModelArchive` whose ``path`` looks like TorchServe's ``model_dir``: the files at the top and
``MAR-INF/MANIFEST.json``.

An archive is unpacked once per content into ``cache/<sha256 prefix>/`` (through a staging folder and one
rename) and reused from there. Nothing in it may leave its folder: absolute names, ``..``, links, devices
and FIFOs are refused before anything is written, the file count and the declared sizes are checked against
the registration limits, and the bytes actually written are counted again (declared sizes can lie); see
:mod:`torchship.serving.mar.extraction`. A ``no-archive`` folder is checked the same way and served in
place.

``model-config.yaml`` (the archiver's ``--config-file``) and config.properties' ``models=`` entries map onto
:class:`~torchship.serving.settings.ModelSettings` in :mod:`torchship.serving.mar.model_config`; an
archive's ``requirements.txt`` is never installed, only checked (:func:`check_requirements`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

from torchship.errors import ConfigError, PackageError, UserInputError
from torchship.serving.mar.extraction import RECREATE as _RECREATE
from torchship.serving.mar.extraction import extract_tar, extract_zip, named_errors
from torchship.serving.mar.model_config import (
    check_requirements,
    model_yaml_settings,
    torchserve_model_settings,
)
from torchship.serving.runtime.package_files import RegistrationLimits, directory_manifest

__all__ = [
    "ARCHIVE_SUFFIXES",
    "MANIFEST_PATH",
    "ModelArchive",
    "archive_files",
    "check_requirements",
    "default_archive_cache",
    "has_archive_suffix",
    "is_archive",
    "model_yaml_settings",
    "read_model_dir",
    "torchserve_model_settings",
    "unpack_archive",
]

ARCHIVE_SUFFIXES = (".mar", ".tar.gz", ".tgz")
MANIFEST_PATH = "MAR-INF/MANIFEST.json"
MAX_MANIFEST_BYTES = 1 << 20
# The archiver's rule for model names; it also keeps a name safe in URLs, file names and metric labels.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.]{0,127}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.+]{0,63}")
_DIGEST_CHARS = 32
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelArchive:
    """An unpacked TorchServe archive and what its ``MAR-INF/MANIFEST.json`` says."""

    path: Path
    """The unpacked model folder (TorchServe's ``model_dir``): holds ``MAR-INF/MANIFEST.json``."""
    source: Path
    """The ``.mar`` / ``.tar.gz`` / ``.tgz`` file, or the ``no-archive`` folder."""
    manifest: dict[str, Any]
    name: str
    """``model.modelName``."""
    version: str
    """``model.modelVersion``, ``"1.0"`` when the manifest has none."""
    handler: str
    """``model.handler``: a built-in name (``text_classifier``), a file (``handler.py``) or ``file:function``;
    empty when the manifest names none (the registration's ``handler`` parameter must then name one)."""
    runtime: str = "python"
    config_file: str | None = None
    """``model.configFile`` (``model-config.yaml``), a path inside :attr:`path`."""
    requirements_file: str | None = None
    """``model.requirementsFile`` (``requirements.txt``), a path inside :attr:`path`."""


def has_archive_suffix(name: str) -> bool:
    """Whether ``name`` ends like an archive file: ``.mar``, ``.tar.gz`` or ``.tgz``."""
    return name.endswith(ARCHIVE_SUFFIXES)


def is_archive(path: Path) -> bool:
    """A ``.mar``/``.tar.gz``/``.tgz`` file, or a folder holding ``MAR-INF/MANIFEST.json`` (a ``no-archive``
    model, or a folder whose only entry is one, as TorchServe also accepts)."""
    if path.is_file():
        return has_archive_suffix(path.name)
    return path.is_dir() and _model_root(path) is not None


def archive_files(model_store: Path) -> list[Path]:
    """What ``--models all`` serves from ``model_store``: its archive files and model folders, sorted;
    hidden entries are skipped, as TorchServe skips them."""
    if not model_store.is_dir():
        raise ConfigError(f"model_store {model_store} is not a folder; point it at the folder of .mar files")
    found = [item for item in model_store.iterdir() if not item.name.startswith(".") and is_archive(item)]
    return sorted(found)


def default_archive_cache() -> Path:
    """A folder only this user can use, in the temporary folder, where archives are unpacked; created on
    first use. One another user made (or made writable to others) is refused: what is unpacked there is
    code the server runs."""
    who = str(os.getuid()) if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    path = Path(tempfile.gettempdir()) / f"torchship-archives-{who}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    status = path.lstat()
    mine = not hasattr(os, "getuid") or status.st_uid == os.getuid()
    if stat.S_ISLNK(status.st_mode) or not stat.S_ISDIR(status.st_mode) or not mine:
        raise ConfigError(
            f"The archive cache {path} is not a folder of this user; set archive_cache to a folder only the "
            "server's user can write"
        )
    if status.st_mode & 0o077:
        path.chmod(0o700)
    return path


def unpack_archive(source: Path, cache: Path, limits: RegistrationLimits) -> ModelArchive:
    """Unpack ``source`` (a ``.mar``, ``.tar.gz`` or ``.tgz`` file) into ``cache/<sha256 prefix>/``, or
    reuse what an earlier call unpacked from the same bytes; a ``no-archive`` folder is checked and served
    in place. Raises :class:`PackageError` (or :class:`UserInputError` for a limit) saying what to do::

        archive = unpack_archive(Path("store/news.mar"), default_archive_cache(), RegistrationLimits())
        archive.name, archive.version, archive.handler  # ('news', '1.0', 'text_classifier')
    """
    if source.is_dir():
        return _checked_folder(source, limits)
    if not has_archive_suffix(source.name):
        raise PackageError(
            f"{source.name} is not a model archive: expected a .mar, .tar.gz or .tgz file, or a folder "
            f"holding {MANIFEST_PATH}"
        )
    with _open_archive(source, limits) as file:
        digest = _sha256(file)
        target = cache / digest[:_DIGEST_CHARS]
        if target.is_dir():
            return _reused(target, source, limits)
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
        try:
            root = _unpack_into(file, source, staging / "content", limits)
            archive = _load(root, source)
            _publish(root, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dataclasses.replace(archive, path=target)


def read_model_dir(path: Path, source: Path | None = None) -> ModelArchive:
    """An unpacked model folder (what :func:`unpack_archive` returned as ``path``) read back, its manifest
    checked; ``source`` (default: the folder) names it in messages."""
    root = _model_root(path) if path.is_dir() else None
    if root is None:
        raise PackageError(f"{path} is not an unpacked TorchServe archive: it has no {MANIFEST_PATH}")
    return _load(root, source if source is not None else path)


# ----------------------------------------------------------------------------------------- the manifest


def _model_root(folder: Path) -> Path | None:
    """``folder`` when it holds the manifest, else its only entry when that is a folder holding it (a tgz
    made by hand with its files in one top folder)."""
    if (folder / MANIFEST_PATH).is_file():
        return folder
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        inner = entries[0]
        if (inner / MANIFEST_PATH).is_file():
            return inner
    return None


def _load(root: Path, source: Path) -> ModelArchive:
    """The archive unpacked at ``root``, its manifest read and checked."""
    manifest = _read_manifest(root, source.name)
    model = manifest["model"]
    return ModelArchive(
        path=root,
        source=source,
        manifest=manifest,
        name=model.get("modelName") or _default_name(source),
        version=_version(model.get("modelVersion"), source.name),
        handler=_optional_text(model, "handler", source.name) or "",
        runtime=_optional_text(manifest, "runtime", source.name) or "python",
        config_file=_inner_file(root, model, "configFile", source.name),
        requirements_file=_inner_file(root, model, "requirementsFile", source.name),
    )


def _read_manifest(root: Path, label: str) -> dict[str, Any]:
    path = root / MANIFEST_PATH
    status = path.lstat()
    if not stat.S_ISREG(status.st_mode):
        raise PackageError(f"{label}: {MANIFEST_PATH} is not a regular file; {_RECREATE}")
    if status.st_size > MAX_MANIFEST_BYTES:
        raise PackageError(f"{label}: {MANIFEST_PATH} is larger than {MAX_MANIFEST_BYTES} bytes; {_RECREATE}")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise PackageError(f"{label}: {MANIFEST_PATH} is not valid JSON ({exc}); {_RECREATE}") from exc
    model = manifest.get("model") if isinstance(manifest, dict) else None
    if not isinstance(model, dict):
        raise PackageError(f'{label}: {MANIFEST_PATH} has no "model" object; {_RECREATE}')
    name = model.get("modelName")
    if name is not None and name != "" and (not isinstance(name, str) or not _MODEL_NAME.fullmatch(name)):
        raise PackageError(
            f"{label}: {MANIFEST_PATH} has no usable model.modelName ({name!r}); names are letters, digits, "
            f"'_', '-' and '.', starting with a letter or digit: {_RECREATE} --model-name NAME"
        )
    return cast(dict[str, Any], manifest)


def _default_name(source: Path) -> str:
    """The name TorchServe gives an archive whose manifest names none: its file name without the suffix,
    other characters than letters, digits, '-' and '.' made '_'."""
    stem = next(
        (source.name[: -len(end)] for end in ARCHIVE_SUFFIXES if source.name.endswith(end)), source.name
    )
    name = re.sub(r"[^A-Za-z0-9_\-.]", "_", stem).lstrip("_.-")
    if not _MODEL_NAME.fullmatch(name):
        raise PackageError(
            f"{source.name}: {MANIFEST_PATH} names no model.modelName; {_RECREATE} --model-name NAME"
        )
    return name


def _version(value: object, label: str) -> str:
    if value is None:
        return "1.0"
    text = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _VERSION.fullmatch(text):
        raise PackageError(
            f"{label}: model.modelVersion {value!r} is not a usable version (letters, digits, '_', '-', '.', "
            f"'+'); {_RECREATE} --version 1.0"
        )
    return text


def _optional_text(section: dict[str, Any], key: str, label: str) -> str | None:
    value = section.get(key)
    if value is None or (isinstance(value, str) and value):
        return value
    raise PackageError(f"{label}: {key} in {MANIFEST_PATH} must be a non-empty string, got {value!r}")


def _inner_file(root: Path, model: dict[str, Any], key: str, label: str) -> str | None:
    """A file the manifest names (``configFile``, ``requirementsFile``): a plain file inside the archive."""
    name = _optional_text(model, key, label)
    if name is None:
        return None
    inner = PurePosixPath(name)
    if inner.is_absolute() or ".." in inner.parts or "\\" in name or "\x00" in name:
        raise PackageError(f"{label}: model.{key} {name!r} must name a file inside the archive; {_RECREATE}")
    try:
        status = (root / inner).lstat()
    except OSError:
        status = None
    if status is None or not stat.S_ISREG(status.st_mode):
        raise PackageError(
            f"{label}: the manifest names model.{key} {name!r}, which the archive does not hold as a file; "
            f"{_RECREATE}"
        )
    return name


# -------------------------------------------------------------------------------------- folders, cache


def _checked_folder(folder: Path, limits: RegistrationLimits) -> ModelArchive:
    """A ``no-archive`` model folder, served in place once its files pass the limits (no links, devices or
    FIFOs, at most max_package_files files and max_package_size bytes)."""
    root = _model_root(folder)
    if root is None:
        raise PackageError(
            f"{folder} holds no {MANIFEST_PATH}: it is not a model folder made by torch-model-archiver "
            "--archive-format no-archive"
        )
    directory_manifest(root, limits)
    return _load(root.resolve(), folder)


def _reused(target: Path, source: Path, limits: RegistrationLimits) -> ModelArchive:
    """What an earlier unpack of the same bytes left, checked again (the limits may have changed)."""
    if target.is_symlink() or (target / MANIFEST_PATH).is_symlink() or not (target / MANIFEST_PATH).is_file():
        raise PackageError(
            f"The archive cache entry {target} for {source.name} is damaged; delete that folder and register "
            "again"
        )
    with named_errors(source.name):
        directory_manifest(target, limits)
    return _load(target, source)


def _publish(root: Path, target: Path) -> None:
    """Move the unpacked folder into place in one rename: a reader never sees half an archive, and of two
    concurrent unpacks of the same bytes the second finds the first's folder and drops its own."""
    try:
        root.rename(target)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not target.is_dir():
            raise


@contextlib.contextmanager
def _open_archive(source: Path, limits: RegistrationLimits) -> Iterator[IO[bytes]]:
    """``source`` for reading when it is a regular file within max_archive_size (O_NONBLOCK: a FIFO put in
    its place must not block the open)."""
    try:
        descriptor = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise PackageError(f"{source} does not exist; check the file name in the model store") from exc
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise PackageError(f"{source.name} is not a regular file; archives are plain files")
        if status.st_size > limits.max_archive_size:
            raise UserInputError(
                f"{source.name} is {status.st_size} bytes, more than max_archive_size="
                f"{limits.max_archive_size} (a server setting)"
            )
        os.set_blocking(descriptor, True)
        file = os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
    with file:
        yield file


def _sha256(file: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := file.read(_CHUNK):
        digest.update(chunk)
    file.seek(0)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- extraction


def _unpack_into(file: IO[bytes], source: Path, content: Path, limits: RegistrationLimits) -> Path:
    """Extract ``file`` into ``content`` and return the model folder inside it."""
    content.mkdir()
    label = source.name
    if label.endswith(".mar"):
        extract_zip(file, label, content, limits)
    else:
        extract_tar(file, label, content, limits)
    root = _model_root(content)
    if root is None:
        raise PackageError(
            f"{label} holds no {MANIFEST_PATH}: it is not a model archive made by torch-model-archiver; "
            f"{_RECREATE}"
        )
    return root
