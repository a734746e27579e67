"""Triton's own HTTP client (``tritonclient[http]``), sync and async, with its defaults (binary tensor data
both ways) against a real server: its answers must match ``POST /predictions/{m}`` for the same texts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from torchship.serving import Server

httpclient = pytest.importorskip("tritonclient.http")
aioclient = pytest.importorskip("tritonclient.http.aio")

pytestmark = pytest.mark.slow

TEXTS = ["the team won the cup", "shares rose after profits", "a new phone chip"]


@pytest.fixture(scope="module")
def address(shared_server: Server) -> str:
    return shared_server.urls["inference"].removeprefix("http://")


@pytest.fixture(scope="module")
def expected(shared_server: Server) -> list[dict[str, Any]]:
    """What ``POST /predictions/news`` answers for each of :data:`TEXTS`."""
    with httpx.Client(base_url=shared_server.urls["inference"], timeout=60) as client:
        return [client.post("/predictions/news", json={"text": text}).json() for text in TEXTS]


@pytest.fixture(scope="module")
def client(address: str) -> Iterator[Any]:
    triton = httpclient.InferenceServerClient(url=address, network_timeout=60)
    yield triton
    triton.close()


def text_input(binary: bool = True) -> Any:
    tensor = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(TEXTS, dtype=object))  # the default: binary data
    else:
        tensor.set_data_from_numpy(np.array(TEXTS, dtype=object), binary_data=False)
    return tensor


def assert_matches(result: Any, expected: list[dict[str, Any]]) -> None:
    # Binary BYTES come back as bytes, JSON ones as str.
    labels = [label if isinstance(label, str) else label.decode() for label in result.as_numpy("label")]
    assert labels == [answer["label"] for answer in expected]
    scores = result.as_numpy("score")
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, [answer["score"] for answer in expected], atol=1e-6)


def test_health_and_metadata(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("news") and client.is_model_ready("news", "1")
    server = client.get_server_metadata()
    assert server["name"] == "torchship"
    assert {"binary_tensor_data", "classification"} <= set(server["extensions"])
    model = client.get_model_metadata("news")
    assert model["versions"] == ["1", "2"]
    assert model["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert client.get_model_metadata("news", "2")["versions"] == ["2"]


def test_infer_with_the_clients_defaults_is_binary_both_ways(
    client: Any, expected: list[dict[str, Any]]
) -> None:
    outputs = [httpclient.InferRequestedOutput("label"), httpclient.InferRequestedOutput("score")]
    result = client.infer("news", [text_input()], outputs=outputs)
    response = result.get_response()
    assert all("data" not in output for output in response["outputs"])
    assert all(output["parameters"]["binary_data_size"] > 0 for output in response["outputs"])
    assert_matches(result, expected)


def test_infer_without_outputs_returns_all_binary(client: Any, expected: list[dict[str, Any]]) -> None:
    result = client.infer("news", [text_input()])
    assert_matches(result, expected)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (len(TEXTS), 3)
    for row, answer in zip(probabilities, expected, strict=True):
        labels = ["business", "sport", "tech"]
        np.testing.assert_allclose(row, [answer["probabilities"][label] for label in labels], atol=1e-6)


def test_infer_json_both_ways(client: Any, expected: list[dict[str, Any]]) -> None:
    outputs = [httpclient.InferRequestedOutput(name, binary_data=False) for name in ("label", "score")]
    result = client.infer("news", [text_input(binary=False)], outputs=outputs, request_id="json")
    assert result.get_response()["id"] == "json"
    assert result.get_response()["outputs"][0]["data"] == [answer["label"] for answer in expected]
    assert_matches(result, expected)


def test_numeric_tensors_go_binary_both_ways(client: Any) -> None:
    values = np.array([[1.5, -2.0], [0.25, 8.0]], dtype=np.float32)
    tensor = httpclient.InferInput("x", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values)
    result = client.infer("echo", [tensor], outputs=[httpclient.InferRequestedOutput("echo")])
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == values.nbytes
    np.testing.assert_array_equal(result.as_numpy("echo"), values)  # each row reached the handler whole


def test_classification(client: Any, expected: list[dict[str, Any]]) -> None:
    outputs = [httpclient.InferRequestedOutput("probabilities", class_count=2)]
    classes = client.infer("news", [text_input()], outputs=outputs).as_numpy("probabilities")
    assert classes.shape == (len(TEXTS), 2)
    for row, answer in zip(classes, expected, strict=True):
        score, index, label = row[0].decode("utf-8").split(":")
        assert label == answer["label"]
        assert float(score) == pytest.approx(answer["score"], abs=1e-6)
        assert ["business", "sport", "tech"][int(index)] == label


def test_statistics_config_and_repository_index(client: Any) -> None:
    before = client.get_inference_statistics("news", "2")["model_stats"][0]
    client.infer("news", [text_input()], model_version="2")
    after = client.get_inference_statistics("news", "2")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == len(TEXTS)
    success = after["inference_stats"]["success"]
    assert success["count"] == before["inference_stats"]["success"]["count"] + 1
    assert success["ns"] > before["inference_stats"]["success"]["ns"]
    everything = client.get_inference_statistics()["model_stats"]
    assert ("news", "1") in {(entry["name"], entry["version"]) for entry in everything}
    config = client.get_model_config("news")
    assert config["max_batch_size"] == 32 and config["input"][0]["data_type"] == "TYPE_STRING"
    index = client.get_model_repository_index()
    assert {"name": "news", "version": "1", "state": "READY"} in index


def test_errors_reach_the_client_as_exceptions(client: Any) -> None:
    wrong = httpclient.InferInput("wrongname", [1], "BYTES")
    wrong.set_data_from_numpy(np.array(["a"], dtype=object))
    with pytest.raises(httpclient.InferenceServerException, match="wrongname") as caught:
        client.infer("news", [wrong])
    assert caught.value.status() == "400"


def test_async_client(address: str, expected: list[dict[str, Any]]) -> None:
    async def session() -> None:
        triton = aioclient.InferenceServerClient(url=address, conn_timeout=60)
        try:
            assert await triton.is_server_live() and await triton.is_server_ready()
            assert await triton.is_model_ready("news")
            assert "binary_tensor_data" in (await triton.get_server_metadata())["extensions"]
            assert (await triton.get_model_metadata("news", "1"))["versions"] == ["1"]
            assert (await triton.get_model_config("news", "1"))["name"] == "news"
            stats = (await triton.get_inference_statistics("news"))["model_stats"]
            assert [entry["version"] for entry in stats] == ["1", "2"]
            tensor = aioclient.InferInput("text", [len(TEXTS)], "BYTES")
            tensor.set_data_from_numpy(np.array(TEXTS, dtype=object))
            outputs = [aioclient.InferRequestedOutput(name) for name in ("label", "score")]
            assert_matches(await triton.infer("news", [tensor], outputs=outputs), expected)
            outputs = [aioclient.InferRequestedOutput("probabilities", class_count=1)]
            classes = (await triton.infer("news", [tensor], outputs=outputs)).as_numpy("probabilities")
            assert [row[0].decode().split(":")[2] for row in classes] == [a["label"] for a in expected]
        finally:
            await triton.close()

    asyncio.run(session())
