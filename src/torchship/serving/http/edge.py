"""The HTTP edge: who may reach a listener, checked once per request before routing.

In this order, from one pass over the headers:

1. **Host**, on a loopback bind: a name other than a loopback one (``localhost``, ``127.0.0.1``, ``[::1]``,
   any port) or one of ``allowed_hosts`` is refused with 403. A web page whose DNS name an attacker
   re-points at 127.0.0.1 (DNS rebinding) sends its own name here.
2. **Origin**: browsers send it on cross-origin requests; one that is not allowlisted
   (``cors_allowed_origins`` on inference, ``management_allowed_origins`` on management and metrics) is
   refused with 403, so no web page can drive the server, not even with a simple ``POST`` that needs no
   preflight. An allowlisted one gets CORS headers, and its ``OPTIONS`` preflight is answered here.
3. **Key**: the listener's :class:`~torchship.serving.http.auth.Guard` (401).

The common request (no Origin, a loopback Host seen before, no key needed) costs the header loop and a
set lookup, and allocates nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torchship.errors import TorchshipError
from torchship.serving.http.addresses import Address, is_loopback
from torchship.serving.http.auth import Guard, UnauthorizedError
from torchship.serving.settings import ServerSettings

__all__ = ["ADMITTED", "Admission", "Edge", "ForbiddenError", "build_edges"]

Headers = tuple[tuple[bytes, bytes], ...]


class ForbiddenError(TorchshipError):
    """A request from a web page that is not allowed, or for a host name this server does not answer."""

    status = 403
    type = "ForbiddenException"


@dataclass(frozen=True, slots=True)
class Admission:
    """What the edge decided: a refusal to answer instead, CORS headers to add, or a preflight to answer."""

    refusal: TorchshipError | None = None
    cors: Headers = ()
    preflight: bool = False


ADMITTED = Admission()
_REPEATED = Admission(ForbiddenError("A request may carry one Host and one Origin header, not several"))

_METHODS = {
    "inference": b"GET, POST, OPTIONS",
    "management": b"GET, POST, PUT, DELETE, OPTIONS",
    "metrics": b"GET, OPTIONS",
}
_ORIGIN_SETTING = {
    "inference": "cors_allowed_origins",
    "management": "management_allowed_origins",
    "metrics": "management_allowed_origins",
}
_HOST_CACHE_SIZE = 64  # distinct accepted Host values remembered; refused ones are never stored


class Edge:
    """One listener's checks; :meth:`admit` runs them on a request's ASGI scope."""

    __slots__ = ("_accepted_hosts", "_any_host", "_any_origin", "_hosts", "_origins", "api", "guard")

    def __init__(
        self,
        api: str,
        *,
        origins: Iterable[str] = (),
        check_host: bool = False,
        allowed_hosts: Iterable[str] = (),
        guard: Guard | None = None,
    ) -> None:
        self.api = api
        self.guard = guard
        self._origins = frozenset(origin.strip().rstrip("/").lower() for origin in origins)
        self._any_origin = "*" in self._origins
        self._hosts = frozenset(host.strip().rstrip(".").lower() for host in allowed_hosts)
        self._any_host = not check_host or "*" in self._hosts
        self._accepted_hosts: set[bytes] = set()

    def admit(self, scope: Mapping[str, Any]) -> Admission:
        """Decide on a request before it is routed (nothing here reads the body)."""
        host = origin = authorization = None
        for name, value in scope["headers"]:
            if name == b"host":
                if host is not None:
                    return _REPEATED
                host = value
            elif name == b"origin":
                if origin is not None:
                    return _REPEATED
                origin = value
            elif name == b"authorization":
                authorization = value
        if host is not None and not self._any_host and host not in self._accepted_hosts:
            refusal = self._check_host(host)
            if refusal is not None:
                return Admission(refusal)
        cors: Headers = ()
        if origin is not None:
            if not self._any_origin and origin.decode("latin-1").lower() not in self._origins:
                return Admission(self._foreign_origin(origin))
            cors = ((b"access-control-allow-origin", origin), (b"vary", b"origin"))
            if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
                return Admission(cors=cors + self._preflight(scope), preflight=True)
            cors += ((b"access-control-expose-headers", b"retry-after, www-authenticate"),)
        if self.guard is not None:
            try:
                self.guard.check(scope["path"], authorization)
            except UnauthorizedError as exc:
                return Admission(exc, cors)
        return Admission(cors=cors) if cors else ADMITTED

    def _check_host(self, value: bytes) -> ForbiddenError | None:
        name = _host_name(value.decode("latin-1"))
        if is_loopback(name) or name.endswith(".localhost") or name in self._hosts:
            if len(self._accepted_hosts) < _HOST_CACHE_SIZE:
                self._accepted_hosts.add(value)
            return None
        return ForbiddenError(
            f"Host {name!r} is not a name of this server: the {self.api} listener binds a loopback address, "
            "so it answers only localhost, 127.0.0.1 and [::1] (a web page's own name pointed at this "
            "machine is a DNS rebinding attack). If a proxy forwards this name, start the server with "
            f"--allowed_hosts {name}"
        )

    def _foreign_origin(self, origin: bytes) -> ForbiddenError:
        shown = origin.decode("latin-1")
        return ForbiddenError(
            f"Requests from web pages are refused: Origin {shown!r} may not call the {self.api} API. If that "
            f"site's browsers should, start the server with --{_ORIGIN_SETTING[self.api]} {shown}"
        )

    def _preflight(self, scope: Mapping[str, Any]) -> Headers:
        requested = _header(scope, b"access-control-request-headers")
        return (
            (b"access-control-allow-methods", _METHODS[self.api]),
            (b"access-control-allow-headers", requested or b"authorization, content-type"),
            (b"access-control-max-age", b"600"),
        )


def _header(scope: Mapping[str, Any], wanted: bytes) -> bytes | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return value  # type: ignore[no-any-return]
    return None


def _host_name(host: str) -> str:
    """``Host`` without its port, brackets and trailing dot, in lower case: ``[::1]:8080`` is ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, port = host[1:].partition("]")
        return name if _is_port(port) else host  # "[::1]evil.example" names nothing of ours
    if host.count(":") == 1:
        host, port = host.rsplit(":", 1)
        if not _is_port(":" + port):
            return host + ":" + port  # "localhost:evil" is not localhost
    return host.rstrip(".")


def _is_port(suffix: str) -> bool:
    """``""`` or ``":8080"``: what may follow a host name in a Host header."""
    digits = suffix[1:]
    return suffix == "" or (suffix[:1] == ":" and (digits == "" or (digits.isascii() and digits.isdigit())))


def build_edges(
    settings: ServerSettings, addresses: Mapping[str, Address], guards: Mapping[str, Guard | None]
) -> dict[str, Edge]:
    """One :class:`Edge` per listener, from the settings, where each binds, and its guard."""
    return {
        name: Edge(
            name,
            origins=getattr(settings, _ORIGIN_SETTING[name]),
            check_host=address.loopback,
            allowed_hosts=settings.allowed_hosts,
            guard=guards.get(name),
        )
        for name, address in addresses.items()
    }
