"""Where a model to register comes from: the ``url`` of ``POST /models``, checked and made safe.

``url`` may be

* a model in the store: ``bbc`` (its latest version) or ``bbc/2`` (``bbc:2`` also works);
* a package directory or a ``.zip`` of one, as a path inside the store root or inside a directory the
  operator allowed with ``--model_roots`` (relative paths are taken from the store root);
* for a model served by ``ModelAPI.start()``, a model file (TorchScript, ``.pt2``) for a new version,
  only when the operator allowed it (``allow_code_models``): loading such a file runs code from it;
* a TorchServe archive (``.mar``, ``.tar.gz``/``.tgz``, or an unpacked ``no-archive`` folder), by its file
  name in the ``model_store`` as TorchServe takes it, or as a path inside the store, the model store or a
  ``--model_roots`` directory. An archive holds handler code, so the management API registers one only
  when the operator allowed code (``allow_code_models``, TorchServe's ``enable_model_api``); the archives
  the operator names at start (``models``) need no flag. It is unpacked safely into the archive cache
  (:mod:`torchship.serving.mar.archive`) and served under its manifest's name and version.

Anything else is refused with 400 and the reason: remote URLs (the server never downloads), paths that
leave the allowed directories through ``..`` or a symlink, packages that contain symlinks. A package
from outside the store, and every ``.zip`` of one, is published into the store as a new version (a
``.zip`` is extracted member by member, refusing absolute names, ``..``, links and oversized contents), so
that the store stays the record of what is served and the snapshot can find it again after a restart.
TorchServe archives are not published: the model store keeps them, and the snapshot records the archive
each version was unpacked from.

What a registration may cost is bounded by :class:`RegistrationLimits` (the server's settings), checked
before anything is copied: the archive's size as stored, the package's size and file count (declared
sizes first, then the bytes actually written), and the store's quota after the copy. A package whose
content is identical to a version already in the store (every file the same, config.json apart from its
version) is not copied again: that version is served instead, so re-registering cannot grow the store.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import threading
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchship.errors import (
    ConfigError,
    NotFoundError,
    PackageError,
    TorchshipError,
    UserInputError,
    VersionExistsError,
)
from torchship.serving.handler import ModelAPI
from torchship.serving.mar.archive import (
    ModelArchive,
    archive_files,
    default_archive_cache,
    has_archive_suffix,
    is_archive,
    unpack_archive,
)
from torchship.serving.runtime.package_files import (
    Budget,
    Manifest,
    Opener,
    RegistrationLimits,
    archive_members,
    comparable,
    copy_package,
    directory_manifest,
    extract,
    open_file,
    open_member,
    read_json_config,
    same_bytes,
    tree_size,
)
from torchship.serving.text_classifier import BUILTIN_HANDLERS
from torchship.store import ModelStore, read_config, validate_name

__all__ = ["ModelSources", "Source"]

logger = logging.getLogger("torchship.serving")

_STORE_REF = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})(?:[/:]([1-9][0-9]{0,17}))?$")  # < 10**18
_MAX_PATH = 4096  # PATH_MAX on Linux
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PYTHON_RUNTIMES = ("python", "python3")


@dataclass(frozen=True)
class Source:
    """A resolved registration: what to load, under which name and version, with which handler class."""

    path: Path
    name: str
    version: str
    url: str
    handler: type[ModelAPI]
    options: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments for the handler class's constructor besides the path, name and settings (for an
    archive: the handler override and ``allow_unpickling``)."""
    archive: ModelArchive | None = None
    """The TorchServe archive it was unpacked from; None for everything else."""


class ModelSources:
    """Resolves registration URLs against the store and the allowed roots."""

    def __init__(
        self,
        store: ModelStore | None,
        model_roots: Sequence[Path] = (),
        custom: Mapping[str, type[ModelAPI]] | None = None,
        *,
        limits: RegistrationLimits | None = None,
        allow_code_models: bool = False,
        model_store: Path | None = None,
        archive_cache: Path | None = None,
        archive_api: type[ModelAPI] | None = None,
        allow_unpickling: bool = False,
    ) -> None:
        self.store = store
        self.model_roots = tuple(Path(root).resolve() for root in model_roots)
        self.custom = dict(custom or {})
        self.limits = limits or RegistrationLimits()
        self.allow_code_models = allow_code_models
        self.model_store = Path(model_store).resolve() if model_store is not None else None
        self.archive_cache = archive_cache
        # The class that serves archives, given by the server (the runtime does not import handler code).
        self.archive_api = archive_api
        self.allow_unpickling = allow_unpickling
        # One publish at a time: the quota check and the identical-package check must see the store as
        # the copy will leave it (registrations resolve in worker threads).
        self._publishing = threading.Lock()

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

    def resolve(
        self, url: str, model_name: str | None, next_version: int, *, handler: str | None = None
    ) -> Source:
        """Resolve ``url`` for ``POST /models``. ``next_version`` numbers a model file for a custom model;
        ``handler`` overrides an archive's own (the caller checks it for anything else)."""
        if not url:
            raise UserInputError("Parameter url is required.")
        if _SCHEME.match(url):
            raise UserInputError(
                f"Cannot register {url}: the server does not download models. Copy the package into the "
                "store (or a --model_roots directory) and register it by name or path"
            )
        in_model_store = self._model_store_entry(url)
        if in_model_store is not None or has_archive_suffix(url):
            self._check_code_allowed(url)
            path = in_model_store or self._allowed_path(url, archives=True)
            return self.archive(path, model_name, handler=handler)
        reference = _STORE_REF.match(url)
        if reference and self.store is not None and self.store.versions(reference[1]):
            version = int(reference[2]) if reference[2] else None
            return self.package(self.store.path(reference[1], version), model_name)
        path = self._allowed_path(url)
        if path.is_dir() and is_archive(path):  # an unpacked (no-archive) TorchServe model folder
            self._check_code_allowed(url)
            return self.archive(path, model_name, handler=handler)
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
        if not self.allow_code_models:
            raise UserInputError(
                f"Cannot register {url}: loading a model file (TorchScript or torch.export .pt2) runs code "
                "from it, so the management API registers one only when the operator starts the server "
                "with --allow_code_models. Register a torchship package (safetensors) instead"
            )
        return Source(path, name, str(next_version), str(path), self.custom[name])

    def is_archive_reference(self, url: str) -> bool:
        """Whether ``url`` names a TorchServe archive (by its suffix, or an archive in the model store)."""
        return has_archive_suffix(url) or self._model_store_entry(url) is not None

    def archive(self, path: Path, model_name: str | None, *, handler: str | None = None) -> Source:
        """A TorchServe archive the server may serve (checked by the caller), unpacked into the cache."""
        if self.archive_api is None:
            raise ConfigError(f"Cannot serve {path.name}: this server does not serve TorchServe archives")
        cache = self.archive_cache if self.archive_cache is not None else default_archive_cache()
        unpacked = unpack_archive(path, cache, self.limits)
        if unpacked.runtime.lower() not in _PYTHON_RUNTIMES:
            raise PackageError(
                f"Cannot serve {path.name}: its manifest asks for runtime {unpacked.runtime!r}; torchship "
                "runs archives on Python only (re-archive it with --runtime python)"
            )
        options: dict[str, Any] = {"allow_unpickling": self.allow_unpickling}
        if handler is not None:
            options["handler"] = handler
        name = validate_name(model_name or unpacked.name)
        display = self._archive_display(unpacked.source)
        return Source(unpacked.path, name, unpacked.version, display, self.archive_api, options, unpacked)

    def startup_archives(self, models: Sequence[str]) -> list[Source]:
        """The archives ``models`` names (TorchServe's ``--models``: ``all``, ``x.mar``, ``name=x.mar``,
        paths), each unpacked. One that cannot be served is logged by name; the others still are."""
        wanted: list[tuple[str | None, str]] = []
        for item in models:
            if item.strip().lower() == "all":
                if self.model_store is None:
                    logger.error("--models all: no model store is set (--model_store DIR); serving none")
                    continue
                try:
                    wanted += [(None, str(path)) for path in archive_files(self.model_store)]
                except ConfigError as exc:  # as TorchServe: logged, and the rest of the start goes on
                    logger.error("--models all: %s", exc.message)
            elif item.strip():
                # TorchServe splits at the first "=": name=url, or a url alone.
                first, equals, rest = item.strip().partition("=")
                wanted.append((first, rest) if equals else (None, first))
        sources = []
        for served_as, url in wanted:
            try:
                sources.append(self.archive(self._operator_path(url), served_as))
            except TorchshipError as exc:  # one archive that cannot be served must not stop the others
                logger.error("not serving the archive %s: %s", url, exc.message)
        return sources

    def _operator_path(self, url: str) -> Path:
        """An archive the operator named at start: a path, relative ones from the model store."""
        if _SCHEME.match(url):
            raise UserInputError(
                f"the server does not download models; copy {url} into the model store and name its file"
            )
        path = Path(url).expanduser()
        if not path.is_absolute() and self.model_store is not None:
            path = self.model_store / path
        if not path.exists():
            where = f"in the model store {self.model_store}" if self.model_store is not None else "here"
            raise NotFoundError(f"Model not found {where}: {url}")
        if not is_archive(path):
            raise UserInputError(
                f"{url} is not a TorchServe archive (.mar, .tar.gz, .tgz, or a folder with "
                "MAR-INF/MANIFEST.json)"
            )
        return path

    def _model_store_entry(self, url: str) -> Path | None:
        """The archive ``url`` names in the model store (TorchServe: a url is a file name there), or None."""
        if self.model_store is None or len(url) > _MAX_PATH or "\x00" in url:
            return None
        try:
            path = (self.model_store / url).resolve()
            if path.is_relative_to(self.model_store) and path.exists() and is_archive(path):
                return path
        except (OSError, ValueError):  # a name too long for the file system: not in the store
            return None
        return None

    def _check_code_allowed(self, url: str) -> None:
        if not self.allow_code_models:
            raise UserInputError(
                f"Cannot register {url[:200]}: a TorchServe archive holds handler code that runs when it "
                "loads, so the management API registers one only when the operator starts the server with "
                "--allow_code_models (TorchServe's enable_model_api=true). Archives named at start "
                "(--models) need no flag"
            )

    def _archive_display(self, source: Path) -> str:
        """``modelUrl`` as TorchServe shows it: the file name in the model store, else the path."""
        resolved = source.resolve()
        if self.model_store is not None and resolved.is_relative_to(self.model_store):
            return str(resolved.relative_to(self.model_store))
        return str(resolved)

    def _allowed_path(self, url: str, *, archives: bool = False) -> Path:
        roots = ([self.store.root.resolve()] if self.store is not None else []) + list(self.model_roots)
        if archives and self.model_store is not None:
            roots.insert(0, self.model_store)  # an archive's relative path is taken from the model store
        if not roots:
            raise UserInputError(
                f"Cannot register {url}: the server has no store and no --model_roots, so it loads no paths"
            )
        if len(url) > _MAX_PATH or "\x00" in url:
            raise UserInputError(
                f"Cannot register {url[:80]!r}: a path has at most {_MAX_PATH} characters and no NUL"
            )
        # Containment first, on the fully resolved path (.. and symlinks followed), so that the answer
        # never tells whether something exists outside the allowed directories.
        try:
            path = (roots[0] / url).resolve()
            contained = any(path.is_relative_to(root) for root in roots)
            found = contained and path.exists()
        except (OSError, ValueError) as exc:  # a name too long for the file system, say
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise UserInputError(f"Cannot register {url[:80]!r}: not a usable path ({reason})") from None
        if not contained:
            raise UserInputError(
                f"Cannot register {url}: it resolves to a path outside the model store and the allowed "
                "--model_roots (.. and symlinks may not leave them). Copy the package there, or start the "
                "server with --model_roots DIR"
            )
        if not found:
            raise NotFoundError(f"Model not found in model store: {url}")
        return path

    def _from_directory(self, path: Path, model_name: str | None) -> Source:
        in_store = self.store_version(path)
        manifest = directory_manifest(path, self.limits)  # refuses symlinks and too many files first
        if in_store is not None:
            return self.package(path, model_name, in_store[1])
        if self.store is None:
            return self.package(path, model_name)
        config = read_json_config(functools.partial(open_file, path), manifest)
        budget = Budget(self.limits.max_package_size)
        return self._publish(
            model_name or str(config.get("name", "")),
            manifest,
            config,
            functools.partial(open_file, path),
            lambda tmp: copy_package(path, tmp, budget),
        )

    def _from_archive(self, path: Path, model_name: str | None) -> Source:
        if self.store is None:
            raise UserInputError(
                f"Cannot register {path.name}: archives are published into a store; "
                "start the server with --store DIR"
            )
        size = path.stat().st_size
        if size > self.limits.max_archive_size:
            raise UserInputError(
                f"Cannot register {path.name}: the archive has {size} bytes, more than max_archive_size="
                f"{self.limits.max_archive_size} (a server setting)"
            )
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as exc:
            raise PackageError(
                f"Cannot register {path.name}: it is not a readable .zip archive ({exc})"
            ) from exc
        with archive:
            members = archive_members(archive, self.limits)
            manifest = {name: member.file_size for name, member in members.items()}
            opener = functools.partial(open_member, archive, members)
            budget = Budget(self.limits.max_package_size)
            try:
                config = read_json_config(opener, manifest)
                return self._publish(
                    model_name or str(config.get("name", path.stem)),
                    manifest,
                    config,
                    opener,
                    lambda tmp: extract(archive, members, tmp, budget),
                )
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                # A damaged member (bad CRC, truncated data) or one compressed in a way zipfile cannot read.
                raise PackageError(f"Cannot register {path.name}: the archive is damaged ({exc})") from exc

    def _publish(
        self,
        name: str,
        manifest: Manifest,
        config: dict[str, object],
        opener: Opener,
        fill: Callable[[Path], None],
    ) -> Source:
        assert self.store is not None
        name = validate_name(name)
        with self._publishing:
            same = self._identical_version(name, manifest, config, opener)
            if same is not None:
                logger.info("the package is identical to %s version %d: serving that version", name, same)
                return self.package(self.store.path(name, same))
            self._check_quota(sum(manifest.values()))
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

    def _identical_version(
        self, name: str, manifest: Manifest, config: dict[str, object], opener: Opener
    ) -> int | None:
        """The newest store version of ``name`` with the same files and config (apart from name and
        version), or None. Sizes are compared first, so only a likely match is read."""
        assert self.store is not None
        for version in reversed(self.store.versions(name)):
            folder = self.store.path(name, version)
            try:
                theirs = directory_manifest(folder, self.limits)
            except UserInputError:
                continue
            if theirs.keys() != manifest.keys() or any(
                theirs[item] != size for item, size in manifest.items() if item != "config.json"
            ):
                continue
            if comparable(read_json_config(functools.partial(open_file, folder), theirs)) != comparable(
                config
            ):
                continue
            if all(
                same_bytes(opener, functools.partial(open_file, folder), item)
                for item in manifest
                if item != "config.json"
            ):
                return version
        return None

    def _check_quota(self, incoming: int) -> None:
        assert self.store is not None
        quota = self.limits.store_quota
        if quota is None:
            return
        used = tree_size(self.store.root)
        if used + incoming > quota:
            raise UserInputError(
                f"Cannot register the package: it has {incoming} bytes and the store holds {used}, more "
                f"than store_quota={quota} together (a server setting). Delete old versions from the store, "
                "or start the server with a larger --store_quota"
            )

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
