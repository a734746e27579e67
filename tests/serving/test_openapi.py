"""The OpenAPI description each listener serves (``OPTIONS /``, ``GET /api-description``): valid OpenAPI,
describing every route (a new route without a description fails here, naming it), and true: a
property-based fuzzer (schemathesis) driven by the served document finds no 5xx and no answer that
disagrees with the document, against real servers on port 0."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from serving_support import auth_settings, bearer, read_key, running, wait_ready
from serving_support import settings as server_settings

from torchship.serving import Server
from torchship.serving.apps import inference_app, management_app, metrics_app
from torchship.serving.http.auth import Keys
from torchship.serving.protocols.openapi import OPERATIONS, UNDOCUMENTED, openapi_document, undocumented

LISTENERS = ("inference", "management", "metrics")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_every_route_of_every_listener_is_documented(tmp_path: Path) -> None:
    server = Server(server_settings(store=tmp_path))
    keys = Keys({}, tmp_path / "keys.json", writable=False)  # with keys: the token route is there too
    apps = {
        "inference": inference_app(server),
        "management": management_app(server, keys=keys),
        "metrics": metrics_app(server),
    }
    missing = {api: undocumented(app.router.routes) for api, app in apps.items()}
    assert missing == {api: [] for api in apps}, (
        "Describe these routes in OPERATIONS (src/torchship/serving/protocols/openapi.py): "
        + "; ".join(f"{api}: {', '.join(routes)}" for api, routes in missing.items() if routes)
    )
    for api, app in apps.items():
        document = openapi_document(api, app.router.routes)
        validate(document)
        described = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
        assert described == {(route.method, route.path) for route in app.router.routes}


def test_registration_documents_every_parameter_the_server_reads() -> None:
    from torchship.serving.protocols.torchserve import _REGISTER_PARAMS

    register = OPERATIONS[("POST", "/models")]
    assert {parameter["name"] for parameter in register["parameters"]} == set(_REGISTER_PARAMS)
    body = register["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == set(_REGISTER_PARAMS)


def test_an_undocumented_route_is_listed_and_flagged() -> None:
    from torchship.serving.http.routing import Request, Response, Route

    async def endpoint(request: Request) -> Response:
        return Response(200, b"")

    routes = [Route("GET", "/ping", endpoint), Route("PATCH", "/nothing/{thing}", endpoint)]
    assert undocumented(routes) == ["PATCH /nothing/{thing}"]
    document = openapi_document("inference", routes)
    validate(document)
    assert document["paths"]["/nothing/{thing}"]["patch"][UNDOCUMENTED] is True


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys") / "key_file.json"


@pytest.fixture(scope="module")
def guarded_server(key_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No models, token authorization on: the description is static and needs no model."""
    with running(auth_settings(key_file, store=tmp_path_factory.mktemp("empty"))) as server:
        yield server


@pytest.mark.parametrize("api", LISTENERS)
def test_options_and_api_description_answer_the_listeners_openapi(
    guarded_server: Server, key_file: Path, api: str
) -> None:
    headers = bearer(read_key(key_file, "management")) if api == "management" else {}
    url = guarded_server.urls[api]
    options = httpx.options(url + "/", headers=headers, timeout=30)
    described = httpx.get(url + "/api-description", headers=headers, timeout=30)
    assert options.status_code == described.status_code == 200, options.text
    assert options.headers["content-type"] == "application/json"
    document = options.json()
    assert described.json() == document  # the document itself, unwrapped, as TorchServe answers
    validate(document)
    assert document["openapi"].startswith("3.")
    own = {"inference": "/predictions/{model}", "management": "/models/{model}", "metrics": "/metrics"}
    assert {"/", "/api-description", own[api]} <= set(document["paths"])
    for other, path in own.items():
        if other != api:
            assert path not in document["paths"]  # each listener describes its own routes only


def test_the_management_description_needs_the_management_key(guarded_server: Server, key_file: Path) -> None:
    url = guarded_server.urls["management"]
    assert httpx.options(url + "/", timeout=30).status_code == 401
    assert httpx.get(url + "/api-description", timeout=30).status_code == 401
    wrong = bearer(read_key(key_file, "inference"))
    assert httpx.options(url + "/", headers=wrong, timeout=30).status_code == 401


# ---- the fuzzer ------------------------------------------------------------------------------------------

# Per operation: random path parameters (mostly 404s), pinned to a model that exists, and, where the
# document gives a body example, that body to that model with the other parameters random.
EXAMPLES = 25
PINNED = {"model": "news", "version": "1"}


def fuzz(base_url: str, headers: dict[str, str]) -> dict[str, int]:
    """Run every operation of the document ``base_url`` serves; the requests made, per operation."""
    schema = schemathesis.openapi.from_url(base_url + "/api-description", headers=headers, timeout=30)
    calls: dict[str, int] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda operation: operation.method.upper() == "DELETE")  # unregistering last
    for operation in operations:
        names = {parameter.name for parameter in operation.path_parameters}
        pinned = {name: value for name, value in PINNED.items() if name in names}
        strategies = [
            operation.as_strategy(),
            operation.as_strategy(path_parameters=pinned),
            operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=pinned),  # data off the schema
        ]
        for media_type, content in (
            (operation.definition.raw.get("requestBody") or {}).get("content", {}).items()
        ):
            if "example" in content:  # a body the pinned model answers (200) with varied parameters
                strategies.append(
                    operation.as_strategy(
                        path_parameters=pinned, body=content["example"], media_type=media_type
                    )
                )
        strategy = st.one_of(strategies)

        @given(strategy)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,  # the same requests every run: a failure here reproduces
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            label = f"{case.operation.method.upper()} {case.operation.path}"
            calls[label] = calls.get(label, 0) + 1
            case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=60)

        run()
    return calls


@pytest.mark.slow
def test_fuzzing_the_inference_and_metrics_listeners_finds_no_5xx_and_no_schema_mismatch(
    shared_server: Server,
) -> None:
    calls = fuzz(shared_server.urls["inference"], {})
    assert calls["POST /v2/models/{model}/infer"] > EXAMPLES / 2  # and every operation ran (below)
    assert len(calls) >= 20, calls  # every one but the deprecated GET /api-description, skipped
    assert fuzz(shared_server.urls["metrics"], {}).keys() == {"OPTIONS /", "GET /metrics"}


@pytest.fixture
def throwaway_server(store_root: Path, tmp_path: Path) -> Iterator[Server]:
    """A server of its own (serving the store's news v1 and v2) for the management fuzz, which registers,
    scales and unregisters: few
    workers allowed, so a scaling request cannot start many processes on a small machine."""
    with running(
        auth_settings(
            tmp_path / "key_file.json", store=store_root, max_workers_per_version=1, max_workers_total=2
        )
    ) as server:
        wait_ready(server)
        yield server


@pytest.mark.slow
def test_fuzzing_the_management_listener_finds_no_5xx_and_no_schema_mismatch(
    throwaway_server: Server, tmp_path: Path
) -> None:
    headers = bearer(read_key(tmp_path / "key_file.json", "management"))
    calls = fuzz(throwaway_server.urls["management"], headers)
    assert calls["POST /models"] > EXAMPLES / 2
    assert len(calls) == 11, calls  # every operation but the deprecated GET /api-description
