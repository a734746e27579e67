"""A property-based fuzz of every route on the three listeners of one real server.

Whatever a client sends (random and hostile bodies, headers, query parameters, broken HTTP framing):

* no 5xx but the documented ones (:data:`DOCUMENTED_5XX`);
* every error body is JSON of the documented shape (TorchServe's ``{"code", "type", "message"}``, the
  Open Inference Protocol's ``{"error"}`` on ``/v2``), and no JSON body holds NaN or Infinity;
* no management call succeeds without the management key or from a web page (any Origin), no call
  reaches a model from a foreign Origin, and no call succeeds with a foreign Host (DNS rebinding);
* no worker dies (the worker pids of the fixture models are the same before and after), and the memory
  of the server (this process) and of every worker grows less than a stated bound.

The server has two models with two workers each (``news``, a tiny text classifier; ``echo``); calls that
change the registry go to a throwaway name only. Examples are derandomized (CI reproducible) and not
shrunk (each failing try could cost a worker). Run deeper with ``TORCHSHIP_FUZZ_EXAMPLES=2000``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
from fuzz_strategies import (
    CONTENT_TYPES,
    FIXTURE_MODELS,
    HOSTILE_BODIES,
    HOSTILE_STRINGS,
    MAX_REQUEST_SIZE,
    THROWAWAY,
    Headers,
    RawRequest,
    bodies,
    headers,
    hostile_text,
    mostly,
    query_string,
    quote_any,
    raw_requests,
    v2_documents,
)
from fuzz_support import (
    DOCUMENTED_5XX,
    MANAGER,
    PLAIN,
    Call,
    Fuzz,
    claimed_rows,
    exchange,
    inputs,
    strict_json,
    v2_problem,
)
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from serving_handlers import EchoAPI
from serving_support import publish_classifier, running, settings, wait_ready

from torchship.serving import ModelAPI, ModelSettings

pytestmark = pytest.mark.slow

TOKEN_AUTH = True
"""Serve with token authorization, as the server does by default; the fuzz reads the keys from the key
file the server writes. False fuzzes a server without auth (the Origin and Host rules still hold)."""

EXAMPLES = int(os.environ.get("TORCHSHIP_FUZZ_EXAMPLES", "100"))
"""Random examples per test, besides the explicit ones (raise it for a deeper run)."""

SERVER_RSS_GROWTH = (64 << 20) + EXAMPLES * (1 << 18)
"""Bytes this process may grow over the module, after a warm-up. It hosts the server and the fuzzing
client, and hypothesis keeps every example's choices (about 0.2 MiB per example over the six tests)."""
WORKER_RSS_GROWTH = 48 << 20
"""Bytes each worker may grow over the module, after a warm-up."""

JOB_QUEUE_SIZE = 512
"""The fixture models' job_queue_size (ModelSettings' default): a v2 call with more rows can never fit."""
WORKERS = 2
"""Workers per fixture model, and the fuzz server's max_workers_per_version."""

FUZZ = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    """One server for the module; its memory is measured from the end of the warm-up."""
    root = tmp_path_factory.mktemp("fuzz")
    publish_classifier(root / "store", "news", seed=1)
    key_file = root / "key_file.json"
    server_settings = settings(
        store=root / "store",
        token_auth=TOKEN_AUTH,
        key_file=key_file,
        max_request_size=MAX_REQUEST_SIZE,
        max_workers_per_version=WORKERS,
        header_timeout=2.0,
        body_timeout=2.0,
        model_defaults=ModelSettings(workers=WORKERS),
    )
    apis: list[ModelAPI] = [EchoAPI(name="echo", workers=WORKERS, batch_size=8, max_batch_delay=5)]
    with running(server_settings, apis) as server:
        wait_ready(server)
        if TOKEN_AUTH:
            assert key_file.exists(), "token_auth is on but the server wrote no key file"
        fuzz = Fuzz(server, key_file, token_auth=TOKEN_AUTH)
        _warm_up(fuzz)
        fuzz.record_baseline(WORKERS)
        try:
            yield fuzz
        finally:
            for client in fuzz.clients.values():
                client.close()


@pytest.fixture
def fuzz(fuzz_server: Fuzz) -> Fuzz:
    """The server, with the workers to keep alive taken at the start of each test: a worker one test
    kills fails that test only (its replacement is the next test's baseline)."""
    wait_ready(fuzz_server.server)
    fuzz_server.baseline_pids = fuzz_server.worker_pids()
    return fuzz_server


def _warm_up(fuzz: Fuzz) -> None:
    """One of each kind of work, so the baseline RSS includes what every path allocates once."""
    texts = ["the team won the cup", "shares rose"] * 16
    for model in FIXTURE_MODELS:
        for text in texts:
            fuzz.checked(
                Call("inference", "POST", f"/predictions/{model}", body=json.dumps({"text": text}).encode())
            )
        document = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [32], "data": texts}]}
        fuzz.checked(
            Call("inference", "POST", f"/v2/models/{model}/infer", body=json.dumps(document).encode())
        )
    fuzz.manage("GET", "/models")
    fuzz.clients["metrics"].get("/metrics")


# --------------------------------------------------------------------------------- strategies
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE")
INFERENCE_ROUTES = (
    ("GET", "/ping"),
    ("POST", "/predictions/{m}"),
    ("POST", "/predictions/{m}/{v}"),
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/models/{m}"),
    ("GET", "/v2/models/{m}/versions/{v}"),
    ("GET", "/v2/models/{m}/ready"),
    ("GET", "/v2/models/{m}/versions/{v}/ready"),
    ("POST", "/v2/models/{m}/infer"),
    ("POST", "/v2/models/{m}/versions/{v}/infer"),
)
MANAGEMENT_READS = (("GET", "/models"), ("GET", "/models/{m}"), ("GET", "/models/{m}/{v}"))
# Methods that change nothing whatever the route: safe to try on the fixture models' management routes.
HARMLESS_METHODS = ("GET", "HEAD", "OPTIONS", "PATCH", "TRACE")

models = st.one_of(st.sampled_from(FIXTURE_MODELS), hostile_text(16))
versions = st.one_of(st.sampled_from(["1", "2", "0", "01", "all"]), hostile_text(8))
queries = st.dictionaries(
    st.sampled_from(["limit", "next_page_token", "min_worker", "url", "x"]) | hostile_text(8),
    hostile_text(),
    max_size=3,
).map(query_string)


@st.composite
def route_calls(
    draw: st.DrawFn, listener: str, routes: tuple[tuple[str, str], ...], methods: tuple[str, ...]
) -> Call:
    """A call to one of ``routes`` (sometimes a random path), with hostile parts everywhere."""
    method, template = draw(st.sampled_from(routes))
    method = draw(mostly(method, methods))
    path = template.replace("{m}", quote_any(draw(models))).replace("{v}", quote_any(draw(versions)))
    if draw(mostly(False, [True])):
        path = "/" + quote_any(draw(hostile_text(40)))
    default_auth = "management" if listener == "management" else None
    body = draw(bodies()) if method in ("POST", "PUT", "PATCH") or draw(st.booleans()) else b""
    return Call(listener, method, path, draw(queries), draw(headers(default_auth=default_auth)), body)


@st.composite
def payload_calls(draw: st.DrawFn) -> Call:
    """A hostile body to a served model: where a payload can do harm, so half the inference calls."""
    path = draw(st.sampled_from(["/predictions/{m}", "/predictions/{m}/1", "/v2/models/{m}/infer"]))
    call_headers = dataclasses.replace(
        draw(headers()), content_type=draw(mostly(b"application/json", CONTENT_TYPES))
    )
    return Call(
        "inference",
        "POST",
        path.format(m=draw(st.sampled_from(FIXTURE_MODELS))),
        "",
        call_headers,
        draw(bodies()),
    )


# ---------------------------------------------------------------------------------------- tests
def test_inference_routes_answer_hostile_calls_with_4xx(fuzz: Fuzz) -> None:
    @FUZZ
    @given(payload_calls() | route_calls("inference", INFERENCE_ROUTES, METHODS))
    def run(call: Call) -> None:
        fuzz.checked(call)

    for call in corpus():  # every known hostile payload, whatever the random draws reach
        run = hypothesis.example(call)(run)
    run()
    fuzz.assert_unharmed(SERVER_RSS_GROWTH, WORKER_RSS_GROWTH)


def corpus() -> list[Call]:
    """Each hostile body to each model's endpoints (with and without a JSON content type), and each hostile
    string as the text to classify."""
    json_headers = dataclasses.replace(PLAIN, content_type=b"application/json")
    endpoints = [f"/predictions/{model}" for model in FIXTURE_MODELS]
    endpoints += [f"/v2/models/{model}/infer" for model in FIXTURE_MODELS]
    calls = [
        Call("inference", "POST", path, "", json_headers, body)
        for path in endpoints
        for body in HOSTILE_BODIES
    ]
    texts = [json.dumps({"text": text}).encode() for text in HOSTILE_STRINGS]
    calls += [Call("inference", "POST", "/predictions/news", "", json_headers, body) for body in texts]
    # Without a JSON content type the body arrives as bytes, which the classifier reads as JSON itself
    # when it looks like JSON: the same bodies must be as harmless that way.
    calls += [Call("inference", "POST", "/predictions/news", "", PLAIN, body) for body in HOSTILE_BODIES]
    return calls


def test_v2_inference_refuses_hostile_tensors_with_4xx(fuzz: Fuzz) -> None:
    _assert_giant_shapes_are_refused_at_once(fuzz)

    @FUZZ
    @given(
        st.sampled_from(FIXTURE_MODELS),
        st.none() | st.just("1"),
        v2_documents(),
        st.none() | headers(),
    )
    @hypothesis.example(
        "echo", None, {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}]}, None
    )
    @hypothesis.example(
        "echo", None, {"inputs": [{"name": "x", "datatype": "FP32", "shape": [True], "data": [1]}]}, None
    )
    @hypothesis.example(
        "news",
        None,
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["\ud800"]}]},
        None,
    )
    @hypothesis.example(
        "news",
        None,
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [10**9, 0], "data": []}]},
        None,
    )
    def run(model: str, version: str | None, document: Any, hostile: Headers | None) -> None:
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        call_headers = hostile or dataclasses.replace(PLAIN, content_type=b"application/json")
        call = Call("inference", "POST", path, headers=call_headers, body=json.dumps(document).encode())
        response = fuzz.checked(call)
        if 200 <= response.status_code < 300:
            problem = v2_problem(document)
            assert problem is None, f"{problem}, yet answered {response.status_code}: {call}"
        if response.status_code == 503:
            rows = max((claimed_rows(tensor) for tensor in inputs(document)), default=0)
            assert rows <= JOB_QUEUE_SIZE, f"{rows} rows can never fit the queue: a 4xx, not 503: {call}"

    run()
    fuzz.assert_unharmed(SERVER_RSS_GROWTH, WORKER_RSS_GROWTH)


def test_management_reads_answer_hostile_calls_with_4xx(fuzz: Fuzz) -> None:
    @FUZZ
    @given(route_calls("management", MANAGEMENT_READS, HARMLESS_METHODS))
    @hypothesis.example(Call("management", "GET", "/models", "limit=0", MANAGER))
    @hypothesis.example(Call("management", "GET", "/models", "limit=-5&next_page_token=-1", MANAGER))
    @hypothesis.example(Call("management", "GET", "/models", "limit=" + "9" * 5000, MANAGER))
    @hypothesis.example(
        Call(
            "management",
            "GET",
            "/models",
            headers=Headers(None, b"http://attacker.example", None, "management", None, ()),
        )
    )
    def run(call: Call) -> None:
        response = fuzz.checked(call)
        if response.status_code == 200 and call.method == "GET" and call.path == "/models":
            _assert_paging_ends(fuzz, call)

    run()
    fuzz.assert_unharmed(SERVER_RSS_GROWTH, WORKER_RSS_GROWTH)


REGISTER_KEYS = (
    "url",
    "model_name",
    "initial_workers",
    "synchronous",
    "batch_size",
    "max_batch_delay",
    "response_timeout",
    "startup_timeout",
    "job_queue_size",
    "handler",
    "runtime",
    "x",
)
SCALE_KEYS = ("min_worker", "max_worker", "synchronous", "number_gpu", "timeout")


def _operation() -> st.SearchStrategy[tuple[str, str, dict[str, str], bool]]:
    """``(operation, version, parameters, as_json_body)`` against the throwaway model."""
    overrides = {
        "register": st.dictionaries(
            st.sampled_from(REGISTER_KEYS), hostile_text() | st.sampled_from(["0", "1", "true"]), max_size=3
        ),
        "scale": st.dictionaries(
            st.sampled_from(SCALE_KEYS), hostile_text() | st.sampled_from(["0", "1", "2"]), max_size=3
        ),
    }
    version = st.sampled_from(["", "1", "2", "all"]) | hostile_text(8)
    return st.one_of(
        st.tuples(st.just("register"), st.just(""), overrides["register"], st.booleans()),
        st.tuples(st.just("scale"), version, overrides["scale"], st.just(False)),
        st.tuples(
            st.sampled_from(["set-default", "unregister", "describe"]), version, st.just({}), st.just(False)
        ),
    )


def test_management_changes_of_a_throwaway_model_answer_4xx(fuzz: Fuzz) -> None:
    _assert_worker_counts_are_capped(fuzz)

    @FUZZ
    @given(st.lists(_operation(), min_size=1, max_size=4), st.none() | headers(default_auth="management"))
    @hypothesis.example(
        [("register", "", {"response_timeout": "inf"}, False), ("describe", "", {}, False)], None
    )
    @hypothesis.example([("register", "", {"url": "\ud800"}, False)], None)
    @hypothesis.example([("register", "", {"url": "news/1"}, True)], None)
    def run(operations: list[tuple[str, str, dict[str, str], bool]], hostile: Headers | None) -> None:
        try:
            for operation, version, params, as_json in operations:
                fuzz.checked(_throwaway_call(operation, version, params, as_json, hostile))
        finally:
            fuzz.remove_throwaways()

    run()
    fuzz.assert_unharmed(SERVER_RSS_GROWTH, WORKER_RSS_GROWTH)


def test_token_and_metrics_answer_hostile_calls_with_4xx(fuzz: Fuzz) -> None:
    @FUZZ
    @given(
        st.sampled_from([("management", "/token"), ("metrics", "/metrics")]),
        st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]),
        st.dictionaries(
            st.just("type") | hostile_text(6),
            st.sampled_from(["management", "inference", "API"]) | hostile_text(),
        ),
        headers(),
    )
    def run(route: tuple[str, str], method: str, params: dict[str, str], hostile: Headers) -> None:
        listener, path = route
        response = fuzz.checked(Call(listener, method, path, query_string(params), hostile))
        if listener == "metrics" and response.status_code == 200 and method == "GET":
            assert b"# TYPE" in response.content

    run()
    # Whatever /token did, the key file holds keys that work.
    fuzz.manage("GET", "/models")
    fuzz.assert_unharmed(SERVER_RSS_GROWTH, WORKER_RSS_GROWTH)


def test_broken_http_framing_never_harms_the_server(fuzz: Fuzz) -> None:
    @FUZZ
    @given(st.sampled_from(["inference", "management"]), raw_requests())
    def run(listener: str, request: RawRequest) -> None:
        answer = exchange(fuzz.server.urls[listener], request)
        if answer is not None:
            status, content_type, body = answer
            where = f"{listener}: {request.data[:300]!r}\n-> {status} {body[:300]!r}"
            assert status < 500 or status in DOCUMENTED_5XX, f"undocumented {status}: {where}"
            # Errors the HTTP parser answers itself (uvicorn's plain-text 400) are not ours to shape.
            if status >= 400 and content_type.startswith(b"application/json") and not request.head:
                strict_json(body, where)
        ping = fuzz.clients["inference"].get("/ping", timeout=10)
        assert ping.status_code == 200, f"/ping answered {ping.status_code} after {request.data[:300]!r}"

    run()
    fuzz.assert_unharmed(SERVER_RSS_GROWTH, WORKER_RSS_GROWTH)


# ------------------------------------------------------------------------------------ helpers
def _throwaway_call(
    operation: str, version: str, params: dict[str, str], as_json: bool, hostile: Headers | None
) -> Call:
    target = f"/models/{THROWAWAY}" + (f"/{quote_any(version)}" if version else "")
    call_headers = hostile or MANAGER
    if operation == "register":
        params = {"url": "news/1", "model_name": THROWAWAY, "initial_workers": "0", **params}
        if as_json:
            json_headers = dataclasses.replace(call_headers, content_type=b"application/json")
            return Call(
                "management", "POST", "/models", headers=json_headers, body=json.dumps(params).encode()
            )
        return Call("management", "POST", "/models", query_string(params), call_headers)
    if operation == "scale":
        return Call("management", "PUT", target, query_string(params), call_headers)
    if operation == "set-default":
        return Call(
            "management",
            "PUT",
            f"/models/{THROWAWAY}/{quote_any(version or '1')}/set-default",
            "",
            call_headers,
        )
    method = "DELETE" if operation == "unregister" else "GET"
    return Call("management", method, target, "", call_headers)


def _assert_paging_ends(fuzz: Fuzz, call: Call) -> None:
    """Following nextPageToken from any page ends (``limit=0`` once answered token "0" forever)."""
    query = dict(pair.split("=", 1) for pair in call.query.split("&") if "=" in pair)
    for _ in range(len(fuzz.server.registry.names()) + 2):
        body = fuzz.manage("GET", "/models", query_string(query)).json()
        if "nextPageToken" not in body:
            return
        query["next_page_token"] = body["nextPageToken"]
    raise AssertionError(f"paging never ends from {call}")


def _assert_giant_shapes_are_refused_at_once(fuzz: Fuzz) -> None:
    """A guard before fuzzing giant shapes: a server that builds a row per claimed element would exhaust
    this machine's memory on the fuzz's 10**9-row tensors (issue 13, case 1), so check a million first."""
    document = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [10**6, 0], "data": []}]}
    start = time.monotonic()
    response = fuzz.send(
        Call("inference", "POST", "/v2/models/echo/infer", body=json.dumps(document).encode())
    )
    seconds = time.monotonic() - start
    assert 400 <= response.status_code < 500 and seconds < 2.0, (
        f"a v2 tensor claiming 10**6 rows of nothing got {response.status_code} after {seconds:.1f}s: "
        "refuse it with a 4xx before any work (not fuzzing bigger shapes against this server)"
    )


def _assert_worker_counts_are_capped(fuzz: Fuzz) -> None:
    """A guard before fuzzing worker counts: a server without the cap would spawn whatever count the fuzz
    draws (a 20-digit one included), so check one over the cap first."""
    over = str(WORKERS + 1)
    try:
        register = fuzz.send(_throwaway_call("register", "", {"initial_workers": over}, False, None))
        assert register.status_code == 400, f"initial_workers={over} over the cap got {register.status_code}"
        fuzz.manage(
            "POST",
            "/models",
            query_string({"url": "news/1", "model_name": THROWAWAY, "initial_workers": "0"}),
        )
        scale = fuzz.send(_throwaway_call("scale", "", {"min_worker": over}, False, None))
        assert scale.status_code == 400, f"min_worker={over} over the cap got {scale.status_code}"
    finally:
        fuzz.remove_throwaways()
