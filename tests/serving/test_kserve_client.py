"""KServe's own SDK (``kserve.InferenceRESTClient``, async: the SDK has no synchronous REST client) against a
real server, with its defaults: v1 liveness, readiness and predict, and v2 readiness and ``infer`` with
binary tensor data (the SDK's default) and with JSON. Answers are compared with ``/predictions``."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import kserve
import numpy as np
import pytest

from torchship.serving import Server

pytestmark = pytest.mark.slow

TEXTS = ["the team won the cup", "shares rose after strong profits", "a new phone chip"]


def _expected(server: Server) -> list[dict[str, Any]]:
    url = server.urls["inference"] + "/predictions/news"
    return [httpx.post(url, json={"text": text}, timeout=60).json() for text in TEXTS]


def test_v1_liveness_readiness_and_predict(shared_server: Server) -> None:
    url = shared_server.urls["inference"]

    async def talk() -> tuple[bool, bool, bool, Any]:
        async with kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v1")) as client:
            return (
                await client.is_server_live(url),
                await client.is_model_ready(url, "news"),
                await client.is_model_ready(url, "echo"),
                await client.infer(url, {"instances": TEXTS}, model_name="news"),
            )

    live, news_ready, echo_ready, answer = asyncio.run(talk())
    assert (live, news_ready, echo_ready) == (True, True, True)
    expected = _expected(shared_server)
    assert [p["label"] for p in answer["predictions"]] == [e["label"] for e in expected]
    for prediction, wanted in zip(answer["predictions"], expected, strict=True):
        assert prediction["score"] == pytest.approx(wanted["score"], abs=1e-5)


def test_v1_errors_reach_the_sdk_with_kserves_message(shared_server: Server) -> None:
    url = shared_server.urls["inference"]

    async def talk() -> None:
        async with kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v1")) as client:
            await client.infer(url, {"instances": TEXTS}, model_name="nope")

    with pytest.raises(httpx.HTTPStatusError, match=r"nope.*404"):
        asyncio.run(talk())


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_v2_readiness_and_infer(shared_server: Server, binary: bool) -> None:
    url = shared_server.urls["inference"]
    text = kserve.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array(TEXTS, dtype=np.object_), binary_data=binary)
    request = kserve.InferRequest(model_name="news", infer_inputs=[text])

    async def talk() -> tuple[bool, bool, bool, Any]:
        async with kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2")) as client:
            return (
                await client.is_server_live(url),
                await client.is_server_ready(url),
                await client.is_model_ready(url, "news"),
                await client.infer(url, request, model_name="news"),
            )

    live, ready, news_ready, response = asyncio.run(talk())
    assert (live, ready, news_ready) == (True, True, True)
    outputs = {output.name: output.as_numpy() for output in response.outputs}
    labels = [label.decode() if isinstance(label, bytes) else label for label in outputs["label"].tolist()]
    expected = _expected(shared_server)
    assert labels == [e["label"] for e in expected]
    assert outputs["score"].tolist() == pytest.approx([e["score"] for e in expected], abs=1e-5)
