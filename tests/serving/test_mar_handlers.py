"""TorchServe handlers run unchanged (``serving/mar/handler.py``): real archives made by the real
``torch-model-archiver`` from tiny models built here, served by a real server on port 0, over HTTP.

One server serves every archive the module needs (each worker imports torch and ``ts``, seconds on a small
machine): an eager ``BaseHandler`` subclass with ``model.py`` and a state dict, a TorchScript model with a
``BaseHandler`` subclass, a module-level ``handle(data, context)`` function that reports what it was given
(the request data's shape, headers, ``system_properties``, ``model_yaml_config``) and does what the query
asks (set the status, content type and headers, raise, return a tensor, update ``context.metrics``, wait on
a gate so that a batch forms), and a whole pickled module that loads only with ``allow_unpickling``.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from mar_support import archive, eager_model, python_file, reference_model, torchscript_model
from serving_support import metric, running, settings, wait_until

from torchship.errors import ConfigError, PackageError
from torchship.serving import Server
from torchship.serving.mar.archive import unpack_archive
from torchship.serving.mar.handler import TorchServeArchiveAPI, read_predict_response
from torchship.serving.protocols.multipart import FormLimits, form_parameters
from torchship.serving.protocols.torchserve import MAX_HANDLER_HEADERS, handler_headers, outcome_response
from torchship.serving.runtime.metrics import MAX_HANDLER_METRICS, MAX_HANDLER_SERIES, Metrics
from torchship.serving.runtime.package_files import RegistrationLimits
from torchship.serving.workers.batch import Outcome

EAGER_HANDLER = '''
import torch
from ts.torch_handler.base_handler import BaseHandler


class TinyHandler(BaseHandler):
    """Rows of 4 floats in (JSON bodies), logits out."""

    def preprocess(self, data):
        rows = [row.get("data") or row.get("body") for row in data]
        return torch.tensor(rows, dtype=torch.float32, device=self.device)

    def postprocess(self, output):
        return output.tolist()
'''

SCRIPTED_HANDLER = """
import torch
from ts.torch_handler.base_handler import BaseHandler


class ScriptedHandler(BaseHandler):
    def preprocess(self, data):
        return torch.tensor([row["body"] for row in data], dtype=torch.float32, device=self.device)

    def postprocess(self, output):
        return [{"logits": row} for row in output.tolist()]
"""

ECHO_HANDLER = '''
"""A module-level handler: reports what it got, and does what the request header X-Do says."""

import os

import torch
from ts.handler_utils.utils import send_intermediate_predict_response
from ts.metrics.metric_type_enum import MetricTypes
from ts.utils.util import PredictionException


def _plain(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    return value


def _describe(idx, row, data, context):
    properties = context.system_properties
    return {
        "keys": sorted(row),
        "types": {key: type(value).__name__ for key, value in row.items()},
        "values": {key: _plain(value) for key, value in row.items()},
        "custom_header": context.get_request_header(idx, "X-Custom"),
        "explain": context.get_request_header(idx, "explain"),
        "url_path": context.get_request_header(idx, "url_path"),
        "lower_header": context.get_request_header(idx, "x-custom"),
        "request_id": bool(context.get_request_id(idx)),
        "system": {key: properties[key] for key in ("model_dir", "gpu_id", "batch_size")},
        "yaml": context.model_yaml_config,
        "model_name": context.manifest["model"]["modelName"],
        "cwd": os.getcwd(),
        "batch": len(data),
    }


def _gate(path):
    open(path + ".started", "w").close()
    with open(path) as gate:  # a FIFO: opening it blocks until the test opens its other end
        gate.read()
    return "opened"


def handle(data, context):
    if data is None:  # TorchServe calls a function handler once with no data to initialize it
        return None
    answers = []
    for idx, row in enumerate(data):
        do = context.get_request_header(idx, "x-do") or "describe"
        if do == "raise":
            raise PredictionException("teapot", 418)
        if do == "fail":
            raise ValueError("boom")
        if do == "short":
            return []
        if do == "stream":
            send_intermediate_predict_response(["part"], context.request_ids, "Intermediate", 200, context)
        if do == "status":
            context.set_response_status(201, "Made", idx)
            context.set_response_content_type(idx, "text/x-made")
            context.set_response_header(idx, "X-Made-By", "echo")
            answers.append("made")
        elif do == "tensor":
            answers.append(torch.tensor([1.5, -2.0]))
        elif do == "metrics":
            context.metrics.add_counter("EchoRequests", 1)
            context.metrics.add_metric_to_cache("EchoSize", "MB", ["Kind"], MetricTypes.GAUGE)
            context.metrics.get_metric("EchoSize", MetricTypes.GAUGE).add_or_update(3.5, ["small"])
            answers.append("counted")
        elif do == "gate":
            answers.append(_gate(context.get_request_header(idx, "x-gate")))
        else:
            answers.append(_describe(idx, row, data, context))
    return answers
'''

PICKLED_HANDLER = '''
import os

import torch


class WholeModule:
    """Loads a whole pickled nn.Module, as handlers written for older torch do."""

    def initialize(self, context):
        self.model = torch.load(os.path.join(context.system_properties["model_dir"], "whole.pt"))

    def handle(self, data, context):
        rows = torch.tensor([row["body"] for row in data], dtype=torch.float32)
        return self.model(rows).tolist()
'''

MODEL_CONFIG = """\
minWorkers: 1
handler:
  greeting: hello
  threshold: 0.5
"""

ROW = [0.5, -1.0, 2.0, 0.25]


def build_archives(root: Path) -> dict[str, Path]:
    """The module's archives, unpacked (``no-archive``), by model name."""
    sources = root / "sources"
    model_file, weights = eager_model(sources)
    scripted = torchscript_model(sources)
    whole = sources / "whole.pt"
    torch.save(torch.nn.Linear(4, 2), whole)
    config = sources / "model-config.yaml"
    config.write_text(MODEL_CONFIG, encoding="utf-8")
    store = root / "store"
    made = {
        "eager": archive(
            root,
            "eager",
            python_file(sources, "eager_handler.py", EAGER_HANDLER),
            model_file=model_file,
            serialized_file=weights,
            archive_format="no-archive",
            export_path=store,
        ),
        "scripted": unpack_archive(  # a .mar as the archiver makes it by default, unpacked as served
            archive(
                root,
                "scripted",
                python_file(sources, "scripted_handler.py", SCRIPTED_HANDLER),
                serialized_file=scripted,
                export_path=store,
            ),
            root / "cache",
            RegistrationLimits(),
        ).path,
        "echo": archive(
            root,
            "echo",
            python_file(sources, "echo.py", ECHO_HANDLER),
            config_file=config,
            archive_format="no-archive",
            export_path=store,
        ),
        "pickled": archive(
            root,
            "pickled",
            python_file(sources, "pickled_handler.py", PICKLED_HANDLER),
            serialized_file=whole,
            archive_format="no-archive",
            export_path=store,
        ),
    }
    return made


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_archives(tmp_path_factory.mktemp("mar"))


@pytest.fixture(scope="module")
def server(archives: dict[str, Path]) -> Iterator[Server]:
    apis = [
        TorchServeArchiveAPI(archives["eager"], name="eager", batch_size=1, workers=1),
        TorchServeArchiveAPI(archives["scripted"], name="scripted", batch_size=1, workers=1),
        TorchServeArchiveAPI(archives["echo"], name="echo", batch_size=4, workers=1),
        TorchServeArchiveAPI(
            archives["pickled"], name="pickled", batch_size=1, workers=1, allow_unpickling=True
        ),
    ]
    with running(settings(), apis) as server:
        wait_ready(server)
        yield server


def wait_ready(server: Server) -> None:
    def ready() -> bool:
        for version in server.registry.all_versions():
            if version.load_error is not None and version.serving_workers == 0:
                raise AssertionError(f"{version.name} cannot load: {version.load_error}")
        return all(v.serving_workers >= v.target_workers for v in server.registry.all_versions())

    wait_until(ready, 240, "the archives' workers to load")


def predict(server: Server, model: str, do: str = "", gate: str = "", **kwargs: Any) -> httpx.Response:
    """POST to the model; ``do`` (and ``gate``) tell the echo handler what to do, as request headers."""
    headers = dict(kwargs.pop("headers", {}))
    headers.update({"X-Do": do} if do else {})
    headers.update({"X-Gate": gate} if gate else {})
    url = f"{server.urls['inference']}/predictions/{model}"
    return httpx.post(url, headers=headers, timeout=60, **kwargs)


@pytest.mark.slow
def test_eager_base_handler_answers_what_the_model_computes(server: Server) -> None:
    response = predict(server, "eager", json=ROW)
    assert response.status_code == 200
    expected = reference_model()(torch.tensor([ROW])).tolist()[0]
    assert "content-type" not in response.headers  # TorchServe sends none when the handler set none
    torch.testing.assert_close(torch.tensor(json.loads(response.content)), torch.tensor(expected))
    assert response.content == json.dumps(expected, indent=2).encode()  # TorchServe's json.dumps(indent=2)


@pytest.mark.slow
def test_torchscript_model_with_a_base_handler_subclass(server: Server) -> None:
    response = predict(server, "scripted", json=ROW)
    assert response.status_code == 200
    logits = response.json()["logits"]
    torch.testing.assert_close(torch.tensor(logits), reference_model()(torch.tensor(ROW)))


@pytest.mark.slow
def test_the_data_has_torchserve_shape(server: Server, archives: dict[str, Path]) -> None:
    described = predict(server, "echo", json={"text": "hi"}, headers={"X-Custom": "abc"}).json()
    assert described["keys"] == ["body"]
    assert described["types"] == {"body": "dict"}
    assert described["values"]["body"] == {"text": "hi"}
    assert described["custom_header"] == "abc"
    assert described["lower_header"] == "abc"
    assert described["request_id"] is True
    model_dir = archives["echo"].resolve()
    gpu_id = 0 if torch.cuda.is_available() else None  # the server's device "auto"
    assert described["system"] == {"model_dir": str(model_dir), "gpu_id": gpu_id, "batch_size": 4}
    assert described["cwd"] == str(model_dir)
    assert described["yaml"]["handler"] == {"greeting": "hello", "threshold": 0.5}
    assert described["model_name"] == "echo"

    text = predict(
        server, "echo", content=b"plain words", headers={"Content-Type": "text/plain; charset=utf-8"}
    )
    assert text.json()["types"] == {"body": "str"}
    assert text.json()["values"] == {"body": "plain words"}

    raw = predict(server, "echo", content=b"\x00\xff", headers={"Content-Type": "application/octet-stream"})
    assert raw.json()["types"] == {"body": "bytearray"}
    assert raw.json()["values"] == {"body": "\x00\xff"}


@pytest.mark.slow
def test_form_fields_arrive_by_name_and_query_parameters_do_not(server: Server) -> None:
    # curl -F data=@words.txt -F note=value 'http://.../predictions/echo?extra=1': TorchServe's
    # /predictions passes no query parameters to the handler (InferenceRequestHandler.handlePredictions).
    files = {"data": ("words.txt", b"from a file", "text/plain")}
    url = f"{server.urls['inference']}/predictions/echo?extra=1"
    described = httpx.post(url, files=files, data={"note": "value"}, timeout=60).json()
    assert described["keys"] == ["data", "note"]
    assert described["types"] == {"data": "str", "note": "bytearray"}
    assert described["values"] == {"data": "from a file", "note": "value"}
    # The headers TorchServe's frontend adds: BaseHandler reads "explain" to pick explain_handle.
    assert (described["explain"], described["url_path"]) == ("False", "")

    urlencoded = predict(server, "echo", data={"a": "1", "b": "two words"}).json()
    assert urlencoded["values"] == {"a": "1", "b": "two words"}


@pytest.mark.slow
def test_status_content_type_and_headers_set_through_the_context(server: Server) -> None:
    response = predict(server, "echo", "status", json={})
    assert response.status_code == 201
    assert response.headers["content-type"] == "text/x-made"
    assert response.headers["x-made-by"] == "echo"
    assert response.content == b"made"


@pytest.mark.slow
def test_a_tensor_answer_is_torch_saved(server: Server) -> None:
    response = predict(server, "echo", "tensor", json={})
    assert response.status_code == 200
    torch.testing.assert_close(torch.load(io.BytesIO(response.content)), torch.tensor([1.5, -2.0]))


@pytest.mark.slow
def test_errors_have_torchserve_codes_and_bodies(server: Server) -> None:
    teapot = predict(server, "echo", "raise", json={})
    assert teapot.status_code == 418
    assert teapot.json() == {"code": 418, "type": "InternalServerException", "message": "teapot"}
    failed = predict(server, "echo", "fail", json={})
    assert failed.status_code == 503
    assert failed.json() == {"code": 503, "type": "InternalServerException", "message": "Prediction failed"}
    short = predict(server, "echo", "short", json={})
    assert (short.status_code, short.json()["message"]) == (503, "number of batch response mismatched")
    assert predict(server, "echo", json={}).status_code == 200  # the worker lives on


@pytest.mark.slow
def test_context_metrics_reach_the_metrics_endpoint(server: Server) -> None:
    for _ in range(2):
        assert predict(server, "echo", "metrics", json={}).content == b"counted"
    host = socket.gethostname()
    labels = {"ModelName": "echo", "Level": "Model", "Hostname": host}
    wait_until(lambda: metric(server, "EchoRequests", **labels) == 2.0, 30, "EchoRequests to reach 2")
    assert metric(server, "EchoSize", Kind="small", Hostname=host) == 3.5
    text = httpx.get(server.urls["metrics"] + "/metrics", timeout=30).text
    assert "# TYPE EchoRequests counter" in text
    assert "# TYPE EchoSize gauge" in text
    assert f'PredictionTime{{ModelName="echo",Level="Model",Hostname="{host}"}}' in text
    predict(server, "eager", json=ROW)
    wait_until(
        lambda: (
            f'HandlerTime{{ModelName="eager",Level="Model",Hostname="{host}"}}'
            in (httpx.get(server.urls["metrics"] + "/metrics", timeout=30).text)
        ),
        30,
        "the eager handler's HandlerTime",
    )


@pytest.mark.slow
def test_a_batch_of_several_requests_reaches_one_handle_call(server: Server, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    echo = server.registry.get("echo")
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(predict, server, "echo", "gate", str(gate), json={})
        started = tmp_path / "gate.started"
        wait_until(started.exists, 30, "the gated request to run")
        others = [pool.submit(predict, server, "echo", json={"n": n}) for n in range(3)]
        wait_until(lambda: echo.pending == 3, 30, "three requests to wait for the busy worker")
        with open(gate, "w"):  # blocks until the handler holds the read end: then the handler goes on
            pass
        assert first.result().content == b"opened"
        answers = [future.result().json() for future in others]
    assert [answer["batch"] for answer in answers] == [3, 3, 3]
    assert sorted(answer["values"]["body"]["n"] for answer in answers) == [0, 1, 2]


@pytest.mark.slow
def test_a_whole_pickled_module_loads_with_allow_unpickling(server: Server) -> None:
    response = predict(server, "pickled", json=ROW)
    assert response.status_code == 200
    assert len(response.json()) == 2


@pytest.mark.slow
def test_a_whole_pickled_module_is_refused_without_allow_unpickling(archives: dict[str, Path]) -> None:
    api = TorchServeArchiveAPI(archives["pickled"], name="refused", workers=1)
    with running(settings(), [api]) as server:
        version = server.registry.get("refused")
        wait_until(lambda: version.load_error is not None, 120, "the load to fail")
        error = version.load_error or ""
    assert "--allow_unpickling" in error
    assert "unpickling runs any code" in error


@pytest.mark.slow
def test_streaming_fails_its_request_with_501_naming_it(server: Server) -> None:
    response = predict(server, "echo", "stream", json={})
    assert response.status_code == 501
    assert "streams its answer" in response.json()["message"]
    assert "not support" in response.json()["message"]
    assert predict(server, "echo", json={}).status_code == 200


# ---------------------------------------------------------------------------------- in-process checks
def test_answers_are_read_back_as_torchserve_encodes_them() -> None:
    from ts.context import Context, RequestProcessor
    from ts.protocol.otf_message_handler import create_predict_response

    context = Context("m", "/tmp", {}, 4, None, "0.12")
    context.request_processor = [RequestProcessor({}) for _ in range(4)]
    context.set_response_status(202, "Accepted", idx=1)
    context.set_response_content_type(1, "text/x-one")
    context.set_response_header(1, "X-One", "1")
    answers = [b"\x00raw", "text", torch.tensor([1.0]), {"a": [1, 2]}]
    ids = {index: f"id-{index}" for index in range(4)}
    encoded = create_predict_response(answers, ids, "Prediction success", 200, context=context)
    raw, text, tensor, data = read_predict_response(bytes(encoded), 4)
    assert raw == Outcome(200, "", b"\x00raw")
    assert text == Outcome(202, "text/x-one", b"text", "", (("X-One", "1"),))
    torch.testing.assert_close(torch.load(io.BytesIO(tensor.body)), torch.tensor([1.0]))
    assert data.body == json.dumps({"a": [1, 2]}, indent=2).encode()

    failed = create_predict_response(None, ids, "Out of resources", 507)
    assert (
        read_predict_response(bytes(failed), 4)
        == [Outcome(507, "application/json", b"Out of resources", "InternalServerException")] * 4
    )


def test_responses_over_max_response_size_are_500() -> None:
    response = outcome_response(Outcome(200, "text/plain", b"x" * 11), 10)
    assert response.status == 500
    assert b"max_response_size=10" in response.body
    assert outcome_response(Outcome(200, "text/plain", b"x" * 10), 10).status == 200


def test_only_safe_handler_headers_are_sent() -> None:
    sent = handler_headers(
        (
            ("X-Fine", "yes"),
            ("X-Split", "a\r\nSet-Cookie: evil"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "1"),
            ("Bad Name", "x"),
            ("X-Wide", "\u20ac"),
        )
    )
    assert sent == ((b"x-fine", b"yes"),)
    many = tuple((f"X-H{n}", "v") for n in range(MAX_HANDLER_HEADERS + 5))
    assert len(handler_headers(many)) == MAX_HANDLER_HEADERS


def test_handler_metrics_are_bounded_per_version() -> None:
    metrics = Metrics()
    version = metrics.for_version("m", "1")
    names = [
        (f"M{n}", "counter", "count", ("ModelName",), ("m",), 1.0) for n in range(MAX_HANDLER_METRICS + 3)
    ]
    version.handler_updates(names)
    series = [("S", "gauge", "ms", ("Id",), (str(n),), 1.0) for n in range(MAX_HANDLER_SERIES + 3)]
    version.handler_updates(series)
    text = metrics.render().decode()
    assert sum(line.startswith("# TYPE M") for line in text.splitlines()) == MAX_HANDLER_METRICS
    assert "S{" not in text  # the names' limit was reached first: S is a further name
    other = metrics.for_version("n", "1")
    other.handler_updates(series)
    assert sum(line.startswith("S{") for line in metrics.render().decode().splitlines()) == MAX_HANDLER_SERIES
    other.handler_updates([("S", "counter", "ms", ("Id",), ("0",), 1.0)])  # a gauge already: dropped
    assert 'S{Id="0",Hostname="' in metrics.render().decode()
    version.remove()
    other.remove()
    assert "M0" not in metrics.render().decode() and "S{" not in metrics.render().decode()


def test_handler_histograms_use_simpleclient_buckets() -> None:
    metrics = Metrics()
    metrics.for_version("m", "1").handler_updates(
        [("Lat", "histogram", "ms", ("ModelName",), ("m",), value) for value in (0.004, 0.3, 20.0)]
    )
    text = metrics.render().decode()
    host = metrics.hostname
    assert f'Lat_bucket{{ModelName="m",Hostname="{host}",le="0.005"}} 1.0' in text
    assert f'Lat_bucket{{ModelName="m",Hostname="{host}",le="0.5"}} 2.0' in text
    assert f'Lat_bucket{{ModelName="m",Hostname="{host}",le="+Inf"}} 3.0' in text
    assert f'Lat_count{{ModelName="m",Hostname="{host}"}} 3.0' in text
    assert "# TYPE Lat histogram" in text


def test_without_the_ts_package_loading_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ts", None)  # what importing it finds when torchserve is not installed
    with pytest.raises(ConfigError, match=r"pip install 'torchship\[torchserve\]'"):
        TorchServeArchiveAPI(tmp_path, name="m").setup()


@pytest.mark.slow
def test_a_missing_requirement_is_a_load_error_naming_it(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("torchship-surely-not-installed==1.0\n", encoding="utf-8")
    made = archive(
        tmp_path,
        "needs",
        python_file(tmp_path / "src", "echo.py", ECHO_HANDLER),
        requirements_file=requirements,
        archive_format="no-archive",
        export_path=tmp_path / "store",
    )
    with pytest.raises(PackageError, match="torchship-surely-not-installed"):
        TorchServeArchiveAPI(made).setup()  # fails before it changes directory or sys.path


def test_form_fields_become_parameters_as_netty_makes_them() -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="note"\r\nContent-Type: application/json\r\n\r\n{}\r\n'
        b'--b\r\nContent-Disposition: form-data; name="data"; filename="x.txt"\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nhi\r\n"
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.bin"\r\n\r\n\x00\r\n--b--\r\n'
    )
    assert form_parameters("multipart/form-data; boundary=b", body, FormLimits()) == [
        ("note", "", b"{}"),  # a plain field has no content type, whatever its part says
        ("data", "text/plain", b"hi"),
        ("file", "application/octet-stream", b"\x00"),
    ]
    assert form_parameters("application/x-www-form-urlencoded", b"a=1&b=two+words", FormLimits()) == [
        ("a", "", b"1"),
        ("b", "", b"two words"),
    ]
    assert form_parameters("application/json", b"{}", FormLimits()) is None


@pytest.mark.slow
def test_explanations_tell_the_handler_to_explain(server: Server) -> None:
    # POST /explanations/{model}: TorchServe's frontend sets the "explain" header BaseHandler.handle reads.
    response = httpx.post(f"{server.urls['inference']}/explanations/echo", json={}, timeout=60)
    assert response.status_code == 200
    assert response.json()["explain"] == "True"


@pytest.mark.slow
def test_kserve_v1_and_v2_nest_a_handlers_json_answer_as_json(server: Server) -> None:
    # The handler sets no content type (TorchServe's way); its json.dumps answer is still JSON to them.
    base = server.urls["inference"]
    v1 = httpx.post(f"{base}/v1/models/echo:predict", json={"instances": [{"n": 1}, {"n": 2}]}, timeout=60)
    assert v1.status_code == 200
    assert [answer["values"]["body"] for answer in v1.json()["predictions"]] == [{"n": 1}, {"n": 2}]
    request = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}
    v2 = httpx.post(f"{base}/v2/models/echo/infer", json=request, timeout=60)
    assert v2.status_code == 200, v2.text
    outputs = {output["name"]: output for output in v2.json()["outputs"]}  # a dict answer: one per key
    assert outputs["model_name"]["data"] == ["echo"]
    assert [json.loads(value) for value in outputs["values"]["data"]] == [{"body": "hello"}]  # nested: BYTES
