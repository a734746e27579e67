"""Token authorization, compatible with TorchServe's (0.11+): three keys, a key file, and the token API.

* the **management** key authorizes the management API (and ``/metrics`` with ``metrics_auth``);
* the **inference** key authorizes the inference API where it is required (``inference_auth``);
* the **API** key authorizes only ``GET /token?type=management|inference`` on the management listener,
  which replaces that key (and answers the new one).

A client sends ``Authorization: Bearer <key>``; the key is compared in constant time. Each key comes,
in this order, from the environment (``TORCHSHIP_MANAGEMENT_KEY``, ``TORCHSHIP_INFERENCE_KEY``,
``TORCHSHIP_API_KEY``), from the operator's key file (``keys_from_file``), or is generated at start
(``secrets``, 256 bits). Generated keys are written to ``key_file`` in TorchServe's shape, owner-only
from the moment the file exists::

    {
      "management": {"key": "...", "expiration time": "YYYY-MM-DDThh:mm:ss.ffffffZ"},
      "inference": {"key": "..."},
      "API": {"key": "..."}
    }

(``expiration time`` only when keys expire, ``key_expiration``). The file holds only the keys the server
generated, never an operator's secret, and is deleted at shutdown; an operator's file is never written.
A refused request gets 401 with TorchServe's body and type (``InvalidKeyException``; TorchServe itself
answers 400) and ``WWW-Authenticate: Bearer``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from torchship.errors import ConfigError, TorchshipError, UserInputError
from torchship.files import atomic_write
from torchship.serving.http.addresses import Address
from torchship.serving.settings import ServerSettings

__all__ = [
    "ENVIRONMENT",
    "HEALTH_PATHS",
    "KEY_KINDS",
    "Guard",
    "Key",
    "Keys",
    "UnauthorizedError",
    "guards",
    "inference_key_required",
    "read_key_file",
]

logger = logging.getLogger("torchship.serving")

KEY_KINDS = ("management", "inference", "API")
ENVIRONMENT = {
    "management": "TORCHSHIP_MANAGEMENT_KEY",
    "inference": "TORCHSHIP_INFERENCE_KEY",
    "API": "TORCHSHIP_API_KEY",
}
HEALTH_PATHS = ("/ping", "/v2/health/live", "/v2/health/ready")
_EXPIRATION = "expiration time"  # TorchServe's spelling, space included
_MIN_KEY_LENGTH = 8  # TorchServe's own keys are 8 characters: an operator may bring them over


class UnauthorizedError(TorchshipError):
    """No key, a wrong key or an expired key for what the request asks (401, ``WWW-Authenticate``)."""

    status = 401
    type = "InvalidKeyException"

    def __init__(self, message: str, realm: str, invalid: bool) -> None:
        super().__init__(message)
        self.challenge = f'Bearer realm="{realm}"' + (', error="invalid_token"' if invalid else "")

    def headers(self) -> dict[str, str]:
        return {"www-authenticate": self.challenge}


@dataclass(frozen=True)
class Key:
    """One key: its value, when it expires (seconds since the epoch; None: never), where it came from."""

    value: str
    expires_at: float | None = None
    source: Literal["generated", "environment", "file"] = "generated"

    @property
    def generated(self) -> bool:
        """Made by this server (at start or by the token API), so written to its key file."""
        return self.source == "generated"

    def entry(self) -> dict[str, str]:
        """The key's object in the key file."""
        entry = {"key": self.value}
        if self.expires_at is not None:
            entry[_EXPIRATION] = _iso(self.expires_at)
        return entry


class Keys:
    """The server's three keys: where they came from, checks, rotation and the key file.

    Build with :meth:`start`, which generates what the operator did not give and writes the key file;
    :meth:`close` deletes the file at shutdown if this server wrote it."""

    def __init__(
        self,
        keys: Mapping[str, Key],
        path: Path,
        *,
        writable: bool,
        expiration_minutes: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.writable = writable
        self.expiration_minutes = expiration_minutes
        self.clock = clock
        self._keys: dict[str, Key] = {}
        self._encoded: dict[str, bytes] = {}
        self._headers: dict[str, bytes] = {}  # b"Bearer <key>": the header as clients usually send it
        for kind, key in keys.items():
            self._set(kind, key)
        self._written: str | None = None

    @classmethod
    def start(
        cls,
        settings: ServerSettings,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Keys:
        """The keys for a server with ``settings``: environment, then the operator's file, then generated."""
        environ = os.environ if environ is None else environ
        given = {
            kind: Key(_checked(environ[variable], variable), source="environment")
            for kind, variable in ENVIRONMENT.items()
            if environ.get(variable)
        }
        if settings.keys_from_file:
            for kind, key in read_key_file(settings.key_file).items():
                given.setdefault(kind, key)
            missing = [kind for kind in KEY_KINDS if kind not in given]
            if missing:
                raise ConfigError(
                    f"key_file {settings.key_file} has no {', '.join(missing)} key (and the environment "
                    f"gives none: {', '.join(ENVIRONMENT[kind] for kind in missing)}); add "
                    f'"{missing[0]}": {{"key": "..."}} to the file, or start without --keys_from_file to '
                    "have keys generated"
                )
        keys = cls(
            given,
            settings.key_file,
            writable=not settings.keys_from_file,
            expiration_minutes=settings.key_expiration,
            clock=clock,
        )
        for kind in KEY_KINDS:
            if kind not in given:
                keys._set(kind, keys._new_key(kind))
        if any(key.generated for key in keys._keys.values()):
            keys._write()
        return keys

    def key(self, kind: str) -> Key:
        """The current ``management``, ``inference`` or ``API`` key."""
        return self._keys[kind]

    @property
    def owns_file(self) -> bool:
        """Whether this server wrote ``path`` (and deletes it at shutdown)."""
        return self._written is not None

    def check(self, kind: str, authorization: bytes | None) -> str | None:
        """None when ``authorization`` (the header's value) carries the current ``kind`` key; else why not:
        ``missing``, ``scheme`` (not ``Bearer <key>``), ``wrong`` or ``expired``."""
        if not authorization:
            return "missing"
        if not hmac.compare_digest(authorization, self._headers[kind]):  # else: other spacing or case?
            scheme, _, token = authorization.strip().partition(b" ")
            if scheme.lower() != b"bearer" or not token.strip():
                return "scheme"
            if not hmac.compare_digest(token.strip(), self._encoded[kind]):
                return "wrong"
        expires_at = self._keys[kind].expires_at
        if expires_at is not None and self.clock() >= expires_at:
            return "expired"
        return None

    def rotate(self, kind: str) -> Key:
        """Replace the ``management`` or ``inference`` key with a new one (the token API)."""
        if kind not in ("management", "inference"):
            raise UserInputError(f"Parameter type must be management or inference, got {kind!r}")
        key = self._new_key(kind)
        self._set(kind, key)
        if self.writable:
            self._write()
        logger.info("the %s key was regenerated through the token API", kind)
        return key

    def close(self) -> None:
        """Delete the key file if this server wrote it and it still holds what it wrote (another server
        started with the same ``key_file`` since may have replaced it)."""
        if self._written is None:
            return
        try:
            if self.path.read_text(encoding="utf-8") == self._written:
                self.path.unlink()
        except OSError:
            pass  # already gone, or unreadable: nothing of ours to delete
        self._written = None

    def _new_key(self, kind: str) -> Key:
        minutes = self.expiration_minutes if kind != "API" else None  # TorchServe's API key never expires
        expires_at = self.clock() + minutes * 60.0 if minutes is not None else None
        return Key(secrets.token_urlsafe(32), expires_at)

    def _set(self, kind: str, key: Key) -> None:
        self._keys[kind] = key
        self._encoded[kind] = key.value.encode("latin-1")
        self._headers[kind] = b"Bearer " + self._encoded[kind]

    def _write(self) -> None:
        data = {kind: key.entry() for kind, key in self._keys.items() if key.generated}
        text = json.dumps(data, indent=2) + "\n"
        _write_private(self.path, text)
        self._written = text


def read_key_file(path: Path) -> dict[str, Key]:
    """The keys in a key file of TorchServe's shape (``expiration time`` optional); a :class:`ConfigError`
    names what is wrong with it."""
    try:
        info = path.stat()
        mode = info.st_mode
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"key_file {path} does not exist; give the file with the keys (--key_file), or start without "
            "--keys_from_file to have keys generated"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"key_file {path} cannot be read as JSON ({exc})") from exc
    # Group access is fine for a group this process runs in: Kubernetes mounts a Secret into a pod with
    # an fsGroup as mode 0440, owned by the pod's own group.
    own_groups = {os.getegid(), *os.getgroups()}
    if mode & stat.S_IRWXO or (mode & stat.S_IRWXG and info.st_gid not in own_groups):
        logger.warning("key_file %s can be read by other users (mode %o); chmod 600 it", path, mode & 0o777)
    if not isinstance(data, dict):
        raise ConfigError(f'key_file {path}: expected a JSON object like {{"management": {{"key": "..."}}}}')
    keys: dict[str, Key] = {}
    for kind in KEY_KINDS:
        if kind in data:
            keys[kind] = _entry(data[kind], f"key_file {path}: {kind}")
    return keys


def _entry(entry: Any, where: str) -> Key:
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
        raise ConfigError(f'{where}: expected {{"key": "..."}}, got {json.dumps(entry)[:80]}')
    value = _checked(entry["key"], where)
    expiration = entry.get(_EXPIRATION)
    if expiration is None:
        return Key(value, source="file")
    try:
        expires_at = datetime.fromisoformat(str(expiration).replace("Z", "+00:00")).timestamp()
        return Key(value, expires_at, source="file")
    except ValueError as exc:
        raise ConfigError(f"{where}: {_EXPIRATION} {expiration!r} is not an ISO 8601 time") from exc


def _checked(value: str, where: str) -> str:
    value = value.strip()
    if len(value) < _MIN_KEY_LENGTH or not value.isascii() or not value.isprintable() or " " in value:
        raise ConfigError(
            f"{where}: a key must be at least {_MIN_KEY_LENGTH} printable ASCII characters without spaces "
            '(e.g. python -c "import secrets; print(secrets.token_urlsafe(32))")'
        )
    return value


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically; the file is owner-only (0600) from the moment it exists."""
    try:
        atomic_write(path, text, mode=0o600)  # replaces a link at ``path`` itself, never what it points to
    except OSError as exc:
        raise ConfigError(
            f"cannot write the key file {path} ({exc.strerror or exc}); choose a writable place with "
            "--key_file"
        ) from exc


def _iso(timestamp: float) -> str:
    """TorchServe's ``Instant.toString()`` form: ``YYYY-MM-DDThh:mm:ss.ffffffZ`` (UTC, microseconds)."""
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------- guards
_WHAT = {"management": "the management API", "inference": "the inference API", "API": "the token API"}


class Guard:
    """Which key a listener's paths need (``default``, or ``paths[path]``; None: open), and the check."""

    __slots__ = ("default", "keys", "paths", "realm")

    def __init__(self, keys: Keys, realm: str, default: str | None, paths: Mapping[str, str | None]) -> None:
        self.keys = keys
        self.realm = realm
        self.default = default
        self.paths = dict(paths)

    def check(self, path: str, authorization: bytes | None) -> None:
        """Raise :class:`UnauthorizedError` unless ``authorization`` carries the key ``path`` needs."""
        kind = self.paths.get(path.rstrip("/") or "/", self.default) if self.paths else self.default
        if kind is None:
            return
        problem = self.keys.check(kind, authorization)
        if problem is not None:
            raise UnauthorizedError(
                _message(kind, problem), self.realm, invalid=problem in ("wrong", "expired")
            )


def _message(kind: str, problem: str) -> str:
    send = f'send it as the header "Authorization: Bearer <{kind} key>"'
    if problem == "expired":
        return (
            f"Token Authorization failed: the {kind} key has expired; get a new one with GET "
            f"/token?type={kind} on the management API and the API key, then {send}"
        )
    if problem == "wrong":
        return (
            f"Token Authorization failed: the key sent is not the current {kind} key (a key replaced through "
            f"/token stops working); {send}"
        )
    where = "the server's key file (key_file.json; `torchship key " + kind + "` prints it)"
    return f"Token Authorization failed: {_WHAT[kind]} needs the {kind} key, from {where}; {send}"


def inference_key_required(settings: ServerSettings, addresses: Mapping[str, Address]) -> bool:
    """``inference_auth``, or when it is None: whether any listener binds a non-loopback address."""
    if settings.inference_auth is not None:
        return settings.inference_auth
    return any(not address.loopback for address in addresses.values())


def guards(
    settings: ServerSettings, addresses: Mapping[str, Address], keys: Keys | None
) -> dict[str, Guard | None]:
    """One guard per listener (None where nothing needs a key): management always, inference and health
    as :func:`inference_key_required` and ``health_auth`` say, metrics with ``metrics_auth``."""
    if keys is None:
        asked = [
            name for name in ("inference_auth", "health_auth", "metrics_auth") if getattr(settings, name)
        ]
        if asked:
            raise ConfigError(
                f"{', '.join(asked)} asks for keys, but token_auth is off; turn one of them off"
            )
        exposed = sorted(name for name, address in addresses.items() if not address.loopback)
        if exposed:
            logger.warning(
                "token authorization is off and the %s listener(s) bind a non-loopback address: whoever can "
                "reach them can call them (keep a proxy that authenticates in front)",
                ", ".join(exposed),
            )
        return dict.fromkeys(("inference", "management", "metrics"))
    inference = "inference" if inference_key_required(settings, addresses) else None
    health = "inference" if settings.health_auth else None
    return {
        "inference": _guard(keys, "inference", inference, dict.fromkeys(HEALTH_PATHS, health)),
        "management": Guard(keys, "management", "management", {"/token": "API"}),
        "metrics": _guard(keys, "metrics", "management" if settings.metrics_auth else None, {}),
    }


def _guard(keys: Keys, realm: str, default: str | None, paths: dict[str, str | None]) -> Guard | None:
    if default is None and not any(paths.values()):
        return None
    return Guard(keys, realm, default, {path: kind for path, kind in paths.items() if kind != default})
