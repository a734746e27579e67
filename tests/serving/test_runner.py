"""The listeners: HTTPS with a certificate, each listener on its own address, the lines printed at start
(curl lines carry the key without printing it). The options of ``torchship serve``: test_command.py."""

from __future__ import annotations

import importlib.util
import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
from serving_support import auth_settings, bearer, read_key, running, settings

from torchship.errors import ConfigError
from torchship.serving import Server, ServerThread
from torchship.serving.runner import print_urls


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 and its key, made with ``cryptography`` when installed,
    else with the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    if importlib.util.find_spec("cryptography") is not None:
        _with_cryptography(cert, key)
    elif shutil.which("openssl") is not None:
        command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
        names = "subjectAltName=DNS:localhost,IP:127.0.0.1"
        subprocess.run(
            [
                *command.split(),
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-subj",
                "/CN=localhost",
                "-addext",
                names,
            ],
            check=True,
            capture_output=True,
        )
    else:  # pragma: no cover
        pytest.fail("HTTPS is untested: install the cryptography package or the openssl command")
    return cert, key


def _with_cryptography(cert: Path, key: Path) -> None:  # pragma: no cover  (not in every environment)
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def test_every_listener_speaks_https_with_a_certificate_unless_its_address_says_http(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    key_file = tmp_path / "key_file.json"
    server_settings = auth_settings(
        key_file, tls_cert=cert, tls_key=key, metrics_address="http://127.0.0.1:0"
    )
    with running(server_settings) as server:
        assert server.urls["inference"].startswith("https://127.0.0.1:")
        assert server.urls["metrics"].startswith("http://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(cert))
        assert httpx.get(server.urls["inference"] + "/ping", verify=trusted).json() == {"status": "Healthy"}
        models = server.urls["management"] + "/models"
        assert httpx.get(models, verify=trusted).status_code == 401  # the edge is the same over TLS
        manage = bearer(read_key(key_file, "management"))
        assert httpx.get(models, verify=trusted, headers=manage).status_code == 200
        with pytest.raises(httpx.ConnectError):  # the certificate is checked: not trusted by default
            httpx.get(server.urls["inference"] + "/ping")
        plain = server.urls["inference"].replace("https://", "http://") + "/ping"
        with pytest.raises(httpx.TransportError):
            httpx.get(plain)
        assert httpx.get(server.urls["metrics"] + "/metrics").status_code == 200


def test_a_certificate_that_cannot_be_used_stops_the_start_with_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    bad = settings(tls_cert=tmp_path / "cert.pem", tls_key=tmp_path / "key.pem")
    with pytest.raises(ConfigError, match="--tls_cert"), ServerThread(Server(bad)):
        pass


def test_the_printed_lines_carry_the_key_as_a_command_never_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "key_file.json"
    thread = ServerThread(Server(auth_settings(key_file, inference_auth=True)))
    with thread as server:
        capsys.readouterr()
        print_urls(server, thread.runner)
        printed = capsys.readouterr().out
        keys = [read_key(key_file, kind) for kind in ("management", "inference", "API")]
    assert f"keys in {key_file} (owner-only)" in printed
    assert "management and inference APIs need" in printed
    assert f"key management --key_file {key_file})" in printed
    assert '-H "Authorization: Bearer $(' in printed
    assert not any(key in printed for key in keys)


def test_the_printed_curl_line_names_the_environment_variable_a_key_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHSHIP_MANAGEMENT_KEY", "operator-given-management-key")
    thread = ServerThread(Server(auth_settings(tmp_path / "key_file.json")))
    with thread as server:
        capsys.readouterr()
        print_urls(server, thread.runner)
        printed = capsys.readouterr().out
        manage = bearer("operator-given-management-key")
        assert httpx.get(server.urls["management"] + "/models", headers=manage).status_code == 200
    assert '/models -H "Authorization: Bearer $TORCHSHIP_MANAGEMENT_KEY"' in printed
    assert "operator-given-management-key" not in printed
