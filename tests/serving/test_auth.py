"""Token authorization (TorchServe's, 0.11+), on by default: the key file, the keys each API needs, the
token API, expiry, keys given by the operator, and the ``torchship key`` command. The servers here run
with the real default (``auth_settings``), keys in ``tmp_path``."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest
from serving_support import auth_settings, bearer, publish_classifier, read_key, running, settings

from torchship.cli import main
from torchship.errors import ConfigError
from torchship.serving.http.addresses import Address
from torchship.serving.http.auth import Keys, _write_private, guards, inference_key_required
from torchship.serving.settings import ServerSettings


def _assert_401(response: httpx.Response, kind: str) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert set(body) == {"code", "type", "message"}  # TorchServe's error body
    assert (body["code"], body["type"]) == (401, "InvalidKeyException")
    assert f"{kind} key" in body["message"] and "Authorization: Bearer" in body["message"]
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_keys_are_generated_into_an_owner_only_file_of_torchserve_shape_and_removed_at_shutdown(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "key_file.json"
    with running(auth_settings(key_file)):
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        data = json.loads(key_file.read_text())
        assert set(data) == {"management", "inference", "API"}
        keys = [data[kind]["key"] for kind in data]
        assert len(set(keys)) == 3 and all(len(key) >= 40 for key in keys)  # 256 random bits each
        assert all("expiration time" not in data[kind] for kind in data)  # no expiry unless asked
    assert not key_file.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_the_key_file_is_never_readable_by_others_even_with_a_permissive_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        _write_private(tmp_path / "keys.json", "{}")
        _write_private(tmp_path / "keys.json", '{"again": 1}')  # replaced atomically, still private
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    assert [path.name for path in tmp_path.iterdir()] == ["keys.json"]


def test_management_needs_its_key_inference_and_health_stay_open_on_loopback(tmp_path: Path) -> None:
    key_file = tmp_path / "key_file.json"
    with running(auth_settings(key_file)) as server:
        models = server.urls["management"] + "/models"
        _assert_401(httpx.get(models), "management")
        _assert_401(httpx.get(models, headers=bearer("not-the-key-at-all")), "management")
        _assert_401(httpx.get(models, headers=bearer(read_key(key_file, "inference"))), "management")
        _assert_401(
            httpx.get(models, headers={"Authorization": read_key(key_file, "management")}), "management"
        )
        assert httpx.get(models, headers=bearer(read_key(key_file, "management"))).status_code == 200
        lower = {"Authorization": "bearer " + read_key(key_file, "management")}  # the scheme is case-blind
        assert httpx.get(models, headers=lower).status_code == 200
        assert httpx.get(server.urls["inference"] + "/ping").json() == {"status": "Healthy"}
        assert httpx.get(server.urls["inference"] + "/v2/health/live").status_code == 200
        assert httpx.get(server.urls["metrics"] + "/metrics").status_code == 200
        # Inference is open on a loopback-only server: unknown models are a 404, not a 401.
        assert httpx.post(server.urls["inference"] + "/predictions/none", json={}).status_code == 404


def test_a_web_page_cannot_register_a_model_cross_origin(tmp_path: Path) -> None:
    """Issue 13, case 4: ``curl -X POST -H 'Origin: http://attacker.example' '127.0.0.1:8081/models?url=M/1
    &model_name=x'`` registered a model with a 200."""
    roots = tmp_path / "packages"
    publish_classifier(roots, "news", seed=1)
    key_file = tmp_path / "key_file.json"
    with running(auth_settings(key_file, model_roots=(roots,))) as server:
        url = server.urls["management"] + f"/models?url={roots / 'news' / '1'}&model_name=x"
        attacker = {"Origin": "http://attacker.example"}
        refused = httpx.post(url, headers=attacker)  # what a web page's form or fetch() sends
        assert refused.status_code in (401, 403), refused.text
        with_key = httpx.post(url, headers={**attacker, **bearer(read_key(key_file, "management"))})
        assert with_key.status_code == 403
        assert with_key.json()["type"] == "ForbiddenException"
        assert "--management_allowed_origins http://attacker.example" in with_key.json()["message"]
        assert "access-control-allow-origin" not in with_key.headers
        assert server.registry.names() == []


def test_inference_needs_its_key_when_a_listener_binds_a_non_loopback_address(tmp_path: Path) -> None:
    key_file = tmp_path / "key_file.json"
    with running(auth_settings(key_file, metrics_address="0.0.0.0:0")) as server:
        assert server.urls["metrics"].startswith("http://0.0.0.0:")
        predict = server.urls["inference"] + "/predictions/none"
        _assert_401(httpx.post(predict, json={}), "inference")
        _assert_401(
            httpx.post(predict, json={}, headers=bearer(read_key(key_file, "management"))), "inference"
        )
        assert (
            httpx.post(predict, json={}, headers=bearer(read_key(key_file, "inference"))).status_code == 404
        )
        assert httpx.get(server.urls["inference"] + "/ping").status_code == 200  # probes stay open


def test_the_inference_key_requirement_follows_the_bind_addresses_unless_set() -> None:
    loopback = {"inference": Address("127.0.0.1", 0, False), "management": Address("::1", 0, False)}
    exposed = {**loopback, "inference": Address("0.0.0.0", 0, False)}
    named = {**loopback, "metrics": Address("myhost.example", 0, False)}  # unresolved names count as exposed
    assert not inference_key_required(ServerSettings(), loopback)
    assert inference_key_required(ServerSettings(), exposed)
    assert inference_key_required(ServerSettings(), named)
    assert inference_key_required(ServerSettings(inference_auth=True), loopback)
    assert not inference_key_required(ServerSettings(inference_auth=False), exposed)


def test_health_and_metrics_can_be_closed_too(tmp_path: Path) -> None:
    key_file = tmp_path / "key_file.json"
    with running(auth_settings(key_file, health_auth=True, metrics_auth=True)) as server:
        ping = server.urls["inference"] + "/ping"
        _assert_401(httpx.get(ping), "inference")
        v2 = httpx.get(server.urls["inference"] + "/v2/health/ready/")  # the v2 routes answer in v2's body
        assert v2.status_code == 401 and "inference key" in v2.json()["error"]
        assert v2.headers["www-authenticate"] == 'Bearer realm="inference"'
        assert httpx.get(ping, headers=bearer(read_key(key_file, "inference"))).status_code == 200
        # The rest of inference stays open on loopback: only health asked for a key.
        assert httpx.post(server.urls["inference"] + "/predictions/none", json={}).status_code == 404
        metrics = server.urls["metrics"] + "/metrics"
        _assert_401(httpx.get(metrics), "management")
        assert httpx.get(metrics, headers=bearer(read_key(key_file, "management"))).status_code == 200


def test_the_token_api_replaces_a_key_with_the_api_key_only(tmp_path: Path) -> None:
    key_file = tmp_path / "key_file.json"
    with running(auth_settings(key_file, inference_auth=True)) as server:
        token = server.urls["management"] + "/token"
        models = server.urls["management"] + "/models"
        old = read_key(key_file, "management")
        _assert_401(httpx.get(token, params={"type": "management"}, headers=bearer(old)), "API")
        api = bearer(read_key(key_file, "API"))
        response = httpx.get(token, params={"type": "management"}, headers=api)
        assert response.status_code == 200, response.text
        new = response.json()["management"]["key"]
        assert new == read_key(key_file, "management") != old  # the file has it too
        _assert_401(httpx.get(models, headers=bearer(old)), "management")
        assert httpx.get(models, headers=bearer(new)).status_code == 200
        inference_key = read_key(key_file, "inference")
        assert httpx.get(token, params={"type": "inference"}, headers=api).status_code == 200
        assert read_key(key_file, "inference") != inference_key
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        wrong = httpx.get(token, params={"type": "API"}, headers=api)
        assert wrong.status_code == 400 and "management or inference" in wrong.json()["message"]
        assert httpx.get(token, headers=api).status_code == 400


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_keys_expire_after_key_expiration_minutes_and_the_api_key_never_does(tmp_path: Path) -> None:
    clock = _Clock()
    expiring = ServerSettings(key_file=tmp_path / "keys.json", key_expiration=30)
    keys = Keys.start(expiring, environ={}, clock=clock)
    management = ("Bearer " + keys.key("management").value).encode()
    api = ("Bearer " + keys.key("API").value).encode()
    data = json.loads((tmp_path / "keys.json").read_text())
    assert data["management"]["expiration time"] == "1970-01-12T14:16:40.000000Z"  # now + 30 min, UTC
    assert "expiration time" not in data["API"]
    clock.now += 30 * 60 - 1
    assert keys.check("management", management) is None
    clock.now += 1
    assert keys.check("management", management) == "expired"
    assert keys.check("API", api) is None
    renewed = keys.rotate("management")
    assert keys.check("management", ("Bearer " + renewed.value).encode()) is None
    assert renewed.expires_at == clock.now + 30 * 60


def test_an_expired_key_is_refused_by_the_server_with_a_message_that_says_how_to_renew(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "key_file.json"
    with running(auth_settings(key_file, key_expiration=0.001)) as server:  # 60 ms
        models = server.urls["management"] + "/models"
        response = httpx.get(models, headers=bearer(read_key(key_file, "management")))
        while response.status_code == 200:  # ends within 60 ms of the start
            response = httpx.get(models, headers=bearer(read_key(key_file, "management")))
        _assert_401(response, "management")
        assert (
            "expired" in response.json()["message"] and "/token?type=management" in response.json()["message"]
        )


def test_keys_from_the_operator_file_and_environment_are_used_and_never_written(tmp_path: Path) -> None:
    key_file = tmp_path / "secret.json"
    given = {"management": {"key": "m" * 20}, "inference": {"key": "i" * 20}, "API": {"key": "a" * 20}}
    key_file.write_text(json.dumps(given))
    key_file.chmod(0o400)
    from_file = ServerSettings(key_file=key_file, keys_from_file=True)
    keys = Keys.start(from_file, environ={"TORCHSHIP_INFERENCE_KEY": "from-the-environment"})
    assert keys.key("management").value == "m" * 20
    assert keys.key("inference").value == "from-the-environment"  # the environment wins
    assert not keys.owns_file
    keys.rotate("management")  # in memory only: the operator's file is theirs
    keys.close()
    assert json.loads(key_file.read_text()) == given


def test_keys_from_the_environment_are_not_copied_to_the_key_file(tmp_path: Path) -> None:
    environ = {"TORCHSHIP_MANAGEMENT_KEY": "operator-management-key"}
    keys = Keys.start(ServerSettings(key_file=tmp_path / "keys.json"), environ=environ)
    assert keys.key("management").value == "operator-management-key"
    assert set(json.loads((tmp_path / "keys.json").read_text())) == {"inference", "API"}
    keys.close()
    assert not (tmp_path / "keys.json").exists()


@pytest.mark.parametrize(
    ("content", "environ", "words"),
    [
        (None, {}, "does not exist"),
        ("not json", {}, "cannot be read as JSON"),
        ('{"management": {"key": "m-key-long-enough"}}', {}, "has no inference, API key"),
        ('{"management": "bare"}', {}, 'expected {"key": "..."}'),
        ('{"management": {"key": "short"}}', {}, "at least 8"),
        ("{}", {"TORCHSHIP_API_KEY": "has space in it"}, "TORCHSHIP_API_KEY"),
    ],
)
def test_a_bad_operator_key_is_a_config_error_that_names_it(
    tmp_path: Path, content: str | None, environ: dict[str, str], words: str
) -> None:
    key_file = tmp_path / "keys.json"
    if content is not None:
        key_file.write_text(content)
    with pytest.raises(ConfigError, match=words.replace("{", r"\{").replace("(", r"\(")):
        Keys.start(ServerSettings(key_file=key_file, keys_from_file=True), environ=environ)


def test_a_server_does_not_delete_a_key_file_another_server_has_replaced(tmp_path: Path) -> None:
    shared = ServerSettings(key_file=tmp_path / "keys.json")
    first = Keys.start(shared, environ={})
    second = Keys.start(shared, environ={})
    first.close()
    assert read_key(tmp_path / "keys.json", "API") == second.key("API").value
    second.close()
    assert not (tmp_path / "keys.json").exists()


def test_torchship_key_prints_one_key_from_the_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = Keys.start(ServerSettings(key_file=tmp_path / "keys.json"), environ={})
    assert main(["key", "management", "--key_file", str(tmp_path / "keys.json")]) == 0
    assert capsys.readouterr().out == keys.key("management").value + "\n"
    assert main(["key", "api", "--key_file", str(tmp_path / "keys.json")]) == 0
    assert capsys.readouterr().out == keys.key("API").value + "\n"
    assert main(["key", "root", "--key_file", str(tmp_path / "keys.json")]) == 2
    assert main(["key", "management", "--key_file", str(tmp_path / "missing.json")]) == 2
    assert "a server writes it when it starts" in capsys.readouterr().err


def test_asking_for_keys_with_token_authorization_off_is_a_config_error() -> None:
    addresses = {"inference": Address("127.0.0.1", 0, False)}
    with pytest.raises(ConfigError, match="health_auth asks for keys, but token_auth is off"):
        guards(ServerSettings(token_auth=False, health_auth=True), addresses, None)
    assert guards(ServerSettings(token_auth=False), addresses, None) == dict.fromkeys(
        ("inference", "management", "metrics")
    )


def test_the_token_api_is_not_served_with_token_authorization_off() -> None:
    with running(settings()) as server:
        assert httpx.get(server.urls["management"] + "/token?type=management").status_code == 404
