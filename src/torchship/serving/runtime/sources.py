"""Where a model to register comes from: the ``url`` of ``POST /models``, checked and made safe.

``url`` may be

* a model in the store: ``bbc`` (its latest version) or ``bbc/2`` (``bbc:2`` also works);
* a package directory or a ``.zip`` of one, as a path inside the store root or inside a directory the
  operator allowed with ``--model_roots`` (relative paths are taken from the store root);
* for a model served by ``ModelAPI.start()``, a model file (TorchScript, ``.pt2``) for a new version,
  only when the operator allowed it (``allow_code_models``): loading such a file runs code from it.

Anything else is refused with 400 and the reason: remote URLs (the server never downloads), paths that
leave the allowed directories through ``..`` or a symlink, packages that contain symlinks. A package
from outside the store, and every archive, is published into the store as a new version (an archive is
extracted member by member, refusing absolute names, ``..``, links and oversized contents), so that the
store stays the record of what is served and the snapshot can find it again after a restart.

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
from dataclasses import dataclass
from pathlib import Path

from torchship.errors import NotFoundError, PackageError, UserInputError, VersionExistsError
from torchship.serving.handler import ModelAPI
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
        *,
        limits: RegistrationLimits | None = None,
        allow_code_models: bool = False,
    ) -> None:
        self.store = store
        self.model_roots = tuple(Path(root).resolve() for root in model_roots)
        self.custom = dict(custom or {})
        self.limits = limits or RegistrationLimits()
        self.allow_code_models = allow_code_models
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
        if not self.allow_code_models:
            raise UserInputError(
                f"Cannot register {url}: loading a model file (TorchScript or torch.export .pt2) runs code "
                "from it, so the management API registers one only when the operator starts the server "
                "with --allow_code_models. Register a torchship package (safetensors) instead"
            )
        return Source(path, name, str(next_version), str(path), self.custom[name])

    def _allowed_path(self, url: str) -> Path:
        roots = ([self.store.root.resolve()] if self.store is not None else []) + list(self.model_roots)
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
