"""Where each listener binds: TorchServe's address forms, read once at start, and what counts as loopback.

    >>> parse_address("https://0.0.0.0:8443", default_port=8080, name="inference", tls_default=False)
    Address(host='0.0.0.0', port=8443, tls=True)
    >>> parse_address("127.0.0.1", default_port=8081, name="management", tls_default=False)
    Address(host='127.0.0.1', port=8081, tls=False)

Pure: no sockets. The listeners bind what :func:`listener_addresses` returns, one socket per group of
:func:`listener_groups` (KServe's TorchServe config puts inference and management on one port).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from torchship.errors import ConfigError
from torchship.serving.settings import ServerSettings

__all__ = ["LISTENERS", "Address", "is_loopback", "listener_addresses", "listener_groups", "parse_address"]

LISTENERS = ("inference", "management", "metrics")


@dataclass(frozen=True)
class Address:
    """One listener's interface, port (0: any free one) and whether it speaks HTTPS."""

    host: str
    port: int
    tls: bool

    @property
    def loopback(self) -> bool:
        """Only this machine can connect (127.0.0.0/8, ::1 or ``localhost``)."""
        return is_loopback(self.host)

    def url(self, port: int | None = None) -> str:
        """``http://host:port`` (IPv6 in brackets), with the bound ``port`` when given."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port if port is None else port}"


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP; a name that must be resolved first is not (the safe answer)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_address(text: str, *, default_port: int, name: str, tls_default: bool) -> Address:
    """Read ``http://host:port``, ``https://host:port``, ``host:port``, ``[v6]:port`` or a bare host.

    A bare host takes ``default_port``; without a scheme the listener speaks HTTPS when ``tls_default``
    (a certificate was given)."""
    field = f"{name}_address"
    scheme, rest = text.split("://", 1) if "://" in text else ("", text)
    scheme = scheme.lower()
    if scheme not in ("", "http", "https"):
        raise ConfigError(f"{field}: the scheme must be http or https, got {text!r}")
    rest = rest.rstrip("/")
    if "/" in rest or "?" in rest or "@" in rest or "#" in rest:
        raise ConfigError(f"{field}: expected [http[s]://]host[:port], got {text!r}")
    if rest.count(":") > 1 and not rest.startswith("["):  # a bare IPv6 address: no port
        rest = f"[{rest}]"
    try:
        parts = urlsplit("//" + rest)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigError(f"{field}: {exc} in {text!r}; expected [http[s]://]host[:port]") from exc
    if not host:
        raise ConfigError(f"{field}: no host in {text!r}; use 0.0.0.0 for every interface")
    return Address(
        host, default_port if port is None else port, scheme == "https" or (not scheme and tls_default)
    )


def listener_addresses(settings: ServerSettings) -> dict[str, Address]:
    """Each listener's address: its ``*_address`` setting, else ``host`` and its ``*_port``.

    An ``https`` address without ``tls_cert``/``tls_key`` is a :class:`ConfigError`; with them, every
    listener speaks HTTPS unless its address says ``http://``."""
    tls = settings.tls_cert is not None
    addresses: dict[str, Address] = {}
    for name in LISTENERS:
        port: int = getattr(settings, f"{name}_port")
        text: str | None = getattr(settings, f"{name}_address")
        if text is None:
            addresses[name] = Address(settings.host, port, tls)
            continue
        address = parse_address(text, default_port=port, name=name, tls_default=tls)
        if address.tls and not tls:
            raise ConfigError(
                f"{name}_address {text!r} asks for HTTPS: give the certificate and key with --tls_cert and "
                "--tls_key, or use http://"
            )
        addresses[name] = address
    return addresses


def listener_groups(settings: ServerSettings, addresses: dict[str, Address]) -> list[tuple[str, ...]]:
    """The listeners that share one socket, in :data:`LISTENERS` order: those on the same host and port.

    As in TorchServe, two ``*_address`` settings that say the same host and port share it even at port 0
    (one free port for both); a port 0 from ``*_port`` is a free port of that listener's own. Listeners on
    one socket speak the same scheme (a :class:`ConfigError` otherwise). With ``management_api="off"``
    there is no management listener: no socket of its own, no management routes on a shared one."""
    groups: dict[tuple[str, int] | str, list[str]] = {}
    for name in LISTENERS:
        if name == "management" and settings.management_api == "off":
            continue
        address = addresses[name]
        own_free_port = address.port == 0 and getattr(settings, f"{name}_address") is None
        key: tuple[str, int] | str = name if own_free_port else (address.host.lower(), address.port)
        group = groups.setdefault(key, [])
        if group and addresses[group[0]].tls != address.tls:
            raise ConfigError(
                f"{group[0]}_address and {name}_address share {address.host}:{address.port}, but only one "
                "speaks HTTPS; give them the same scheme or different ports"
            )
        group.append(name)
    return [tuple(group) for group in groups.values()]
