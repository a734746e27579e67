"""``management_api``: ``read_only`` (replicas of a fleet: list and describe, never change what is served)
and ``off`` (no management listener, no management routes on a shared address), on real servers.

One read-only server (with token authorization at its real default: keys still apply) and one server with
the management API off, each shared by this module's tests; nothing here changes what they serve.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serving_support import (
    auth_settings,
    bearer,
    publish_classifier,
    read_key,
    running,
    settings,
    wait_ready,
)

from torchship.errors import ConfigError
from torchship.serving import Server, ServerSettings
from torchship.serving.http.addresses import listener_addresses, listener_groups
from torchship.serving.runner import print_urls

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("modes-keys") / "key_file.json"


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --model_roots directory holding a package that a register call could load."""
    root = tmp_path_factory.mktemp("modes-uploads")
    publish_classifier(root / "staging", "other", seed=5)
    return root


@pytest.fixture(scope="module")
def read_only(store_root: Path, key_file: Path, uploads: Path) -> Iterator[Server]:
    store = uploads.parent / "modes-store"
    shutil.copytree(store_root, store)  # a refused call must not touch it; a private copy proves that
    with running(
        auth_settings(key_file, store=store, model_roots=(uploads,), management_api="read_only")
    ) as server:
        wait_ready(server)
        yield server


@pytest.fixture(scope="module")
def manage(read_only: Server, key_file: Path) -> Iterator[httpx.Client]:
    headers = bearer(read_key(key_file, "management"))
    with httpx.Client(base_url=read_only.urls["management"], headers=headers, timeout=60) as client:
        yield client


def _state(manage: httpx.Client) -> list[Any]:
    """What describe says of every version, without what changes by itself (memory use)."""
    listing = manage.get("/models")
    assert listing.status_code == 200
    described = []
    for entry in listing.json()["models"]:
        response = manage.get(f"/models/{entry['modelName']}/all")
        assert response.status_code == 200
        for version in response.json():
            for worker in version["workers"]:
                worker.pop("memoryUsage")
            described.append(version)
    return described


def test_read_only_lists_describes_and_describes_its_api(manage: httpx.Client) -> None:
    assert manage.get("/models").json()["models"] == [{"modelName": "news", "modelUrl": "news/2"}]
    versions = manage.get("/models/news/all").json()
    assert [(v["modelVersion"], v["isDefault"]) for v in versions] == [("1", False), ("2", True)]
    assert manage.get("/models/news/1").json()[0]["modelVersion"] == "1"
    for response in (manage.options("/"), manage.get("/api-description")):
        assert response.status_code == 200
        assert "/models/{model_name}" in response.json()["paths"] or "/models" in response.json()["paths"]


@pytest.mark.parametrize(
    ("method", "path", "action"),
    [
        ("POST", "/models?url=staging/other&model_name=other&synchronous=true", "registering a model"),
        ("PUT", "/models/news?min_worker=2&synchronous=true", "scaling workers"),
        ("PUT", "/models/news/2?min_worker=0", "scaling workers"),
        ("PUT", "/models/news/1/set-default", "setting the default version"),
        ("DELETE", "/models/news/1", "unregistering a model"),
        ("DELETE", "/models/news", "unregistering a model"),
    ],
)
def test_read_only_refuses_every_change_with_a_403_and_changes_nothing(
    manage: httpx.Client, read_only: Server, method: str, path: str, action: str
) -> None:
    before = _state(manage)

    response = manage.request(method, path)

    assert response.status_code == 403
    body = response.json()
    assert body["code"] == 403
    assert body["type"] == "ForbiddenException"
    assert f"read-only on this server (--management_api read_only), so {action} is refused" in body["message"]
    assert "Publish the version to the store" in body["message"]
    assert "--management_api on" in body["message"]
    assert _state(manage) == before
    assert manage.get("/models/other").status_code == 404
    assert read_only.registry.get("news").version == "2"


def test_read_only_refuses_to_replace_a_key(read_only: Server, key_file: Path) -> None:
    """A key replaced on one replica would differ from the others': the key file is the record."""
    before = key_file.read_text(encoding="utf-8")
    response = httpx.get(
        f"{read_only.urls['management']}/token",
        params={"type": "inference"},
        headers=bearer(read_key(key_file, "API")),
        timeout=30,
    )
    assert response.status_code == 403
    assert "so replacing a key is refused" in response.json()["message"]
    assert key_file.read_text(encoding="utf-8") == before


def test_read_only_still_needs_the_key_and_still_serves_predictions(
    read_only: Server, key_file: Path
) -> None:
    management = read_only.urls["management"]
    assert httpx.get(f"{management}/models", timeout=30).status_code == 401
    assert httpx.delete(f"{management}/models/news", timeout=30).status_code == 401  # the key first

    answer = httpx.post(
        f"{read_only.urls['inference']}/predictions/news",
        json={"text": "the team won the match"},
        headers=bearer(read_key(key_file, "inference")),
        timeout=60,
    )
    assert answer.status_code == 200
    assert set(answer.json()) >= {"label"}


@pytest.fixture(scope="module")
def off(store_root: Path) -> Iterator[Server]:
    """Management off, with inference and management given one address (KServe's TorchServe layout)."""
    shared = "http://127.0.0.1:0"
    changes = dict(management_api="off", inference_address=shared, management_address=shared)
    with running(settings(store=store_root, **changes)) as server:
        wait_ready(server)
        yield server


def test_off_serves_no_management_routes_even_on_a_shared_address(off: Server) -> None:
    assert set(off.urls) == {"inference", "metrics"}
    inference = off.urls["inference"]
    for method, path in (("GET", "/models"), ("POST", "/models?url=news"), ("DELETE", "/models/news")):
        response = httpx.request(method, f"{inference}{path}", timeout=30)
        assert response.status_code == 404, (method, path)
        assert response.json()["type"] == "ResourceNotFoundException"
    assert httpx.get(f"{inference}/ping", timeout=30).json() == {"status": "Healthy"}
    answer = httpx.post(f"{inference}/predictions/news", json={"text": "shares rose"}, timeout=60)
    assert answer.status_code == 200


def test_off_says_so_in_the_start_banner(off: Server, capsys: pytest.CaptureFixture[str]) -> None:
    print_urls(off)

    out = capsys.readouterr().out
    assert "torchship: management off (--management_api off)" in out
    assert "list models" not in out
    assert f"torchship: inference  {off.urls['inference']}" in out


def test_read_only_says_so_in_the_start_banner(read_only: Server, capsys: pytest.CaptureFixture[str]) -> None:
    print_urls(read_only)

    out = capsys.readouterr().out
    management = read_only.urls["management"]
    assert f"torchship: management {management} (read-only: --management_api read_only)" in out


@pytest.mark.parametrize(
    ("mode", "groups"),
    [
        ("on", [("inference",), ("management",), ("metrics",)]),
        ("read_only", [("inference",), ("management",), ("metrics",)]),
        ("off", [("inference",), ("metrics",)]),
    ],
)
def test_off_binds_no_management_socket(mode: str, groups: list[tuple[str, ...]]) -> None:
    server_settings = settings(management_api=mode)
    assert listener_groups(server_settings, listener_addresses(server_settings)) == groups


def test_an_unknown_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="management_api: 'readonly' is not one of on, read_only, off"):
        ServerSettings(management_api="readonly")
