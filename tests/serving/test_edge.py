"""The HTTP edge before routing: Host (DNS rebinding), Origin (browsers) and CORS, and the key check, as
pure decisions on an ASGI scope and through a real server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_support import auth_settings, bearer, read_key, running, settings

from torchship.serving.http.auth import Guard, Keys
from torchship.serving.http.edge import ADMITTED, Edge, ForbiddenError
from torchship.serving.settings import ServerSettings


def _scope(method: str = "GET", path: str = "/ping", **headers: str) -> dict[str, Any]:
    raw = [(name.replace("_", "-").lower().encode(), value.encode()) for name, value in headers.items()]
    return {"type": "http", "method": method, "path": path, "headers": raw}


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost:8080", "127.0.0.1:8080", "127.0.0.2", "[::1]:8081", "LOCALHOST.", "a.localhost"],
)
def test_loopback_names_pass_the_host_check(host: str) -> None:
    assert Edge("inference", check_host=True).admit(_scope(host=host)) is ADMITTED


@pytest.mark.parametrize(
    "host",
    [
        *("attacker.example", "attacker.example:8080", "10.0.0.5", "[::2]:80", "127.0.0.1.evil"),
        *("localhost:evil", "[::1]evil.example"),  # what follows a name must be a port
    ],
)
def test_other_names_are_refused_on_a_loopback_bind(host: str) -> None:
    refusal = Edge("management", check_host=True).admit(_scope(host=host)).refusal
    assert isinstance(refusal, ForbiddenError) and "--allowed_hosts" in refusal.message


def test_allowed_hosts_take_an_ingress_name_and_non_loopback_binds_skip_the_check() -> None:
    edge = Edge("inference", check_host=True, allowed_hosts=["api.example.com"])
    assert edge.admit(_scope(host="API.example.com:443")) is ADMITTED
    assert edge.admit(_scope(host="other.example.com")).refusal is not None
    assert Edge("inference", check_host=False).admit(_scope(host="anything.example")) is ADMITTED


def test_an_origin_not_allowlisted_is_refused_and_an_allowed_one_gets_cors_headers() -> None:
    edge = Edge("inference", origins=["https://app.example.com/"])
    refused = edge.admit(_scope(origin="https://evil.example")).refusal
    assert (
        isinstance(refused, ForbiddenError)
        and "--cors_allowed_origins https://evil.example" in refused.message
    )
    admitted = edge.admit(_scope(origin="https://app.example.com"))
    assert admitted.refusal is None and not admitted.preflight
    assert (b"access-control-allow-origin", b"https://app.example.com") in admitted.cors
    assert Edge("inference", origins=["*"]).admit(_scope(origin="null")).refusal is None


def test_a_preflight_from_an_allowed_origin_is_answered_without_a_key() -> None:
    keys = Keys({}, Path("unused"), writable=False)
    guard = Guard(keys, "management", "management", {})
    edge = Edge("management", origins=["https://ops.example"], guard=guard)
    preflight = _scope(
        "OPTIONS",
        "/models",
        origin="https://ops.example",
        access_control_request_method="POST",
        access_control_request_headers="authorization",
    )
    admission = edge.admit(preflight)
    assert admission.preflight and admission.refusal is None
    headers = dict(admission.cors)
    assert headers[b"access-control-allow-methods"] == b"GET, POST, PUT, DELETE, OPTIONS"
    assert headers[b"access-control-allow-headers"] == b"authorization"


def test_repeated_host_or_origin_headers_are_refused() -> None:
    scope = _scope(host="localhost")
    scope["headers"].append((b"host", b"attacker.example"))
    assert Edge("inference", check_host=True).admit(scope).refusal is not None


def test_through_a_server_cors_headers_reach_errors_and_preflights(tmp_path: Path) -> None:
    key_file = tmp_path / "key_file.json"
    server_settings = auth_settings(key_file, management_allowed_origins=("https://ops.example",))
    with running(server_settings) as server:
        models = server.urls["management"] + "/models"
        origin = {"Origin": "https://ops.example"}
        unauthorized = httpx.get(models, headers=origin)  # the page's script can read the 401
        assert unauthorized.status_code == 401
        assert unauthorized.headers["access-control-allow-origin"] == "https://ops.example"
        assert "www-authenticate" in unauthorized.headers["access-control-expose-headers"]
        preflight = httpx.options(models, headers={**origin, "Access-Control-Request-Method": "PUT"})
        assert preflight.status_code == 200
        assert "PUT" in preflight.headers["access-control-allow-methods"]
        listed = httpx.get(models, headers={**origin, **bearer(read_key(key_file, "management"))})
        assert listed.status_code == 200 and listed.json() == {"models": []}
        assert listed.headers["vary"] == "origin"
        # Inference has its own list (empty): the same page may not call it.
        ping = httpx.get(server.urls["inference"] + "/ping", headers=origin)
        assert ping.status_code == 403


def test_a_dns_rebinding_request_is_refused_by_every_loopback_listener() -> None:
    with running(settings()) as server:  # even with token authorization off
        for listener, path in (("inference", "/ping"), ("management", "/models"), ("metrics", "/metrics")):
            response = httpx.get(server.urls[listener] + path, headers={"Host": "rebound.attacker.example"})
            assert response.status_code == 403, listener
            assert json.loads(response.text)["type"] == "ForbiddenException"
            assert httpx.get(server.urls[listener] + path, headers={"Host": "localhost"}).status_code == 200


def test_edges_follow_the_settings_per_listener() -> None:
    from torchship.serving.http.addresses import listener_addresses
    from torchship.serving.http.auth import guards
    from torchship.serving.http.edge import build_edges

    server_settings = ServerSettings(
        inference_address="0.0.0.0:0", cors_allowed_origins=("https://app.example",), token_auth=False
    )
    addresses = listener_addresses(server_settings)
    edges = build_edges(server_settings, addresses, guards(server_settings, addresses, None))
    assert (
        edges["inference"].admit(_scope(host="inference.example", origin="https://app.example")).refusal
        is None
    )
    assert edges["management"].admit(_scope(host="inference.example")).refusal is not None  # loopback bind
    assert edges["metrics"].admit(_scope(origin="https://app.example")).refusal is not None
