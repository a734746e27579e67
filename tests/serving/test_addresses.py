"""Listener addresses in TorchServe's forms, and what counts as loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchship.errors import ConfigError
from torchship.serving.http.addresses import Address, is_loopback, listener_addresses, parse_address
from torchship.serving.settings import ServerSettings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://0.0.0.0:8080", Address("0.0.0.0", 8080, False)),
        ("https://10.0.0.5:8443/", Address("10.0.0.5", 8443, True)),
        ("127.0.0.1:9000", Address("127.0.0.1", 9000, False)),
        ("127.0.0.1", Address("127.0.0.1", 7000, False)),
        ("[::1]:8081", Address("::1", 8081, False)),
        ("http://[::]:0", Address("::", 0, False)),
        ("::1", Address("::1", 7000, False)),
        ("LocalHost:1", Address("localhost", 1, False)),
    ],
)
def test_torchserve_address_forms(text: str, expected: Address) -> None:
    assert parse_address(text, default_port=7000, name="inference", tls_default=False) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("ftp://host:1", "scheme must be http or https"),
        ("host:99999", "inference_address"),
        ("http://host:1/path", "expected [http[s]://]host[:port]"),
        (":8080", "no host"),
        ("user@host:1", "expected"),
    ],
)
def test_bad_addresses_name_the_field(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("[", r"\[")):
        parse_address(text, default_port=7000, name="inference", tls_default=False)


def test_each_listener_binds_its_own_address_and_https_needs_a_certificate(tmp_path: Path) -> None:
    addresses = listener_addresses(ServerSettings(management_address="0.0.0.0", metrics_port=9))
    assert addresses["inference"] == Address("127.0.0.1", 8080, False)
    assert addresses["management"] == Address("0.0.0.0", 8081, False)
    assert addresses["metrics"] == Address("127.0.0.1", 9, False)
    with pytest.raises(ConfigError, match="--tls_cert and --tls_key"):
        listener_addresses(ServerSettings(inference_address="https://0.0.0.0:8443"))
    cert = {"tls_cert": tmp_path / "c.pem", "tls_key": tmp_path / "k.pem"}
    tls = listener_addresses(ServerSettings(metrics_address="http://127.0.0.1:9", **cert))
    assert tls["inference"].tls and tls["management"].tls and not tls["metrics"].tls  # http:// stays plain


def test_loopback() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "localhost", "LOCALHOST"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.com", ""]))
    assert Address("::1", 80, True).url(443) == "https://[::1]:443"
