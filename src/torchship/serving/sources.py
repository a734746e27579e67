"""Where a model to register comes from: the ``url`` of ``POST /models``, checked and made safe.

``url`` may be

* a model in the store: ``bbc`` (its latest version) or ``bbc/2`` (``bbc:2`` also works);
* a package directory or a ``.zip`` of one, as a path inside the store root or inside a directory the
  operator allowed with ``--model_roots`` (relative paths are taken from the store root);
* for a model served by ``ModelAPI.start()``, a model file (TorchScript, ``.pt2``) for a new version.

Anything else is refused with 400 and the reason: remote URLs (the server never downloads), paths that
leave the allowed directories through ``..`` or a symlink, packages that contain symlinks. A package
from outside the store, and every archive, is published into the store as a new version (an archive is
extracted member by member, refusing absolute names, ``..``, links and oversized contents), so that the
store stays the record of what is served and the snapshot can find it again after a restart.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import shutil
import stat
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torchship.errors import NotFoundError, PackageError, UserInputError, VersionExistsError
from torchship.serving.api import ModelAPI
from torchship.serving.handlers import BUILTIN_HANDLERS
from torchship.store import ModelStore, read_config, validate_name

__all__ = ["ModelSources", "Source"]

logger = logging.getLogger("torchship.serving")

MAX_ARCHIVE_BYTES = 4 << 30  # uncompressed; a zip bomb stops here
MAX_ARCHIVE_FILES = 1000
_STORE_REF = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})(?:[/:]([1-9][0-9]*))?$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class Source:
    """A resolved registration: what to load, under which name and version, with which handler class."""

    path: Path
    name: str
    version: str
    url: str
    handler: type[ModelAPI]


class ModelSources:
    """Resolves registration URLs against the store and the allowed roots."""

    def __init__(
        self,
        store: ModelStore | None,
        model_roots: Sequence[Path] = (),
        custom: Mapping[str, type[ModelAPI]] | None = None,
    ) -> None:
        self.store = store
        self.model_roots = tuple(Path(root).resolve() for root in model_roots)
        self.custom = dict(custom or {})

    def store_sources(self) -> list[Source]:
        """Every version of every model in the store (what ``torchship serve --store`` serves)."""
        if self.store is None:
            return []
        sources = []
        for name in self.store.models():
            for version in self.store.versions(name):
                try:
                    sources.append(self.package(self.store.path(name, version)))
                except PackageError as exc:  # one broken package must not keep the others from serving
                    logger.error("not serving %s version %s: %s", name, version, exc.message)
        return sources

    def package(self, path: Path, name: str | None = None, version: str | None = None) -> Source:
        """A package directory served in place (store versions and operator-given paths)."""
        config = read_config(path)
        name = validate_name(name or config.name)
        if version is None:
            in_store = self.store_version(path)
            version = in_store[1] if in_store else str(config.version)
        return Source(path, name, version, _display(path, self.store), self._handler(name, config.handler))

    def resolve(self, url: str, model_name: str | None, next_version: int) -> Source:
        """Resolve ``url`` for ``POST /models``. ``next_version`` numbers a model file for a custom model."""
        if not url:
            raise UserInputError("Parameter url is required.")
        if _SCHEME.match(url):
            raise UserInputError(
                f"Cannot register {url}: the server does not download models. Copy the package into the "
                "store (or a --model_roots directory) and register it by name or path"
            )
        reference = _STORE_REF.match(url)
        if reference and self.store is not None and self.store.versions(reference[1]):
            version = int(reference[2]) if reference[2] else None
            return self.package(self.store.path(reference[1], version), model_name)
        path = self._allowed_path(url)
        if path.is_dir():
            return self._from_directory(path, model_name)
        if path.suffix.lower() == ".zip":
            return self._from_archive(path, model_name)
        name = validate_name(model_name or path.stem)
        if name not in self.custom:
            raise UserInputError(
                f"Cannot register {url}: only torchship packages (directories or .zip archives) can be "
                "registered here; model files need the ModelAPI class that serves them"
            )
        return Source(path, name, str(next_version), str(path), self.custom[name])

    def _allowed_path(self, url: str) -> Path:
        roots = ([self.store.root.resolve()] if self.store is not None else []) + list(self.model_roots)
        if not roots:
            raise UserInputError(
                f"Cannot register {url}: the server has no store and no --model_roots, so it loads no paths"
            )
        # Containment first, on the fully resolved path (.. and symlinks followed), so that the answer
        # never tells whether something exists outside the allowed directories.
        path = (roots[0] / url).resolve()
        if not any(path.is_relative_to(root) for root in roots):
            raise UserInputError(
                f"Cannot register {url}: it resolves to a path outside the model store and the allowed "
                "--model_roots (.. and symlinks may not leave them). Copy the package there, or start the "
                "server with --model_roots DIR"
            )
        if not path.exists():
            raise NotFoundError(f"Model not found in model store: {url}")
        return path

    def _from_directory(self, path: Path, model_name: str | None) -> Source:
        _refuse_links(path)
        in_store = self.store_version(path)
        if in_store is not None:
            return self.package(path, model_name, in_store[1])
        if self.store is None:
            return self.package(path, model_name)
        return self._publish(model_name or read_config(path).name, lambda tmp: _copy_package(path, tmp))

    def _from_archive(self, path: Path, model_name: str | None) -> Source:
        if self.store is None:
            raise UserInputError(
                f"Cannot register {path.name}: archives are published into a store; "
                "start the server with --store DIR"
            )
        with zipfile.ZipFile(path) as archive:
            config = _archive_config(archive)
            return self._publish(
                model_name or str(config.get("name", path.stem)), lambda tmp: _extract(archive, tmp)
            )

    def _publish(self, name: str, fill: Callable[[Path], None]) -> Source:
        assert self.store is not None
        name = validate_name(name)
        for _ in range(5):  # another publisher may take the number we picked; take the next one
            version = (self.store.latest(name) or 0) + 1
            try:
                self.store.publish(
                    name, functools.partial(_fill_and_stamp, fill, name=name, version=version), version
                )
            except VersionExistsError:
                continue
            return self.package(self.store.path(name, version))
        raise PackageError(f"Could not publish {name}: the store kept changing; try again")

    def store_version(self, path: Path) -> tuple[str, str] | None:
        """``(name, version)`` when ``path`` is a version directory of the store, else None."""
        if self.store is None:
            return None
        root = self.store.root.resolve()
        resolved = path.resolve()
        if resolved.parent.parent != root or not resolved.name.isdigit():
            return None
        return resolved.parent.name, resolved.name

    def _handler(self, name: str, handler: str) -> type[ModelAPI]:
        if name in self.custom:
            return self.custom[name]
        if handler not in BUILTIN_HANDLERS:
            raise PackageError(
                f"Package handler {handler!r} is unknown; known: {', '.join(BUILTIN_HANDLERS)}"
            )
        return BUILTIN_HANDLERS[handler]


def _fill_and_stamp(fill: Callable[[Path], None], tmp: Path, *, name: str, version: int) -> None:
    fill(tmp)
    config = read_config(tmp)  # a package must be valid before it enters the store
    stamped = dataclasses.replace(config, name=name, version=version)
    (tmp / "config.json").write_text(json.dumps(stamped.to_dict(), indent=2) + "\n", encoding="utf-8")


def _display(path: Path, store: ModelStore | None) -> str:
    if store is not None and path.resolve().parent.parent == store.root.resolve():
        return f"{path.parent.name}/{path.name}"
    return str(path)


def _refuse_links(root: Path) -> None:
    for item in root.rglob("*"):
        if item.is_symlink():
            raise UserInputError(
                f"Cannot register {root}: it contains a symlink ({item.name}); copy real files"
            )


def _copy_package(source: Path, target: Path) -> None:
    for item in source.rglob("*"):
        destination = target / item.relative_to(source)
        if item.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item, destination, follow_symlinks=False)


def _archive_prefix(names: list[str]) -> str:
    """``"pkg/"`` when every member sits in one top-level folder and config.json is not at the root."""
    if "config.json" in names:
        return ""
    tops = {name.split("/", 1)[0] for name in names}
    return f"{tops.pop()}/" if len(tops) == 1 and any(n.endswith("/config.json") for n in names) else ""


def _archive_config(archive: zipfile.ZipFile) -> dict[str, object]:
    names = archive.namelist()
    prefix = _archive_prefix(names)
    if f"{prefix}config.json" not in names:
        raise PackageError("The archive holds no torchship package (no config.json at its root)")
    try:
        data = json.loads(archive.read(f"{prefix}config.json"))
    except (ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise PackageError(f"The archive's config.json cannot be read: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _extract(archive: zipfile.ZipFile, target: Path) -> None:
    members = archive.infolist()
    if len(members) > MAX_ARCHIVE_FILES:
        raise UserInputError(
            f"The archive has {len(members)} files; a package has at most {MAX_ARCHIVE_FILES}"
        )
    prefix = _archive_prefix([member.filename for member in members])
    budget = MAX_ARCHIVE_BYTES
    root = target.resolve()
    for member in members:
        name = member.filename[len(prefix) :] if member.filename.startswith(prefix) else member.filename
        if not name or name.endswith("/"):
            continue
        destination = (target / name).resolve()
        if name.startswith(("/", "\\")) or ".." in Path(name).parts or not destination.is_relative_to(root):
            raise UserInputError(f"The archive member {member.filename!r} would land outside the package")
        if stat.S_ISLNK(member.external_attr >> 16):
            raise UserInputError(f"The archive member {member.filename!r} is a symlink; packages hold files")
        destination.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(member) as source, destination.open("wb") as sink:
            while chunk := source.read(1 << 20):
                budget -= len(chunk)
                if budget < 0:
                    raise UserInputError(f"The archive unpacks to more than {MAX_ARCHIVE_BYTES >> 30} GiB")
                sink.write(chunk)
