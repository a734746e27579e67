"""The batch contract, run in-process: decoding, one result per request, errors per request."""

from __future__ import annotations

import json
from typing import Any

import pytest
from serving_handlers import EchoAPI, WrongCountAPI

from torchship.serving.execution import Outcome, decode_payload, encode_result, run_batch


def test_payloads_are_decoded_by_media_type() -> None:
    assert decode_payload("application/json; charset=utf-8", b'{"a": 1}') == {"a": 1}
    assert decode_payload("application/vnd.api+json", b"[1]") == [1]
    assert decode_payload("text/plain", "é".encode()) == "é"
    assert decode_payload("application/x-www-form-urlencoded", b"a=1") == b"a=1"
    assert decode_payload("", b"\x00") == b"\x00"


@pytest.mark.parametrize(
    ("result", "content_type", "body"),
    [
        ({"a": 1}, "application/json", b'{"a": 1}'),
        ("hi", "text/plain; charset=utf-8", b"hi"),
        (b"\x01", "application/octet-stream", b"\x01"),
    ],
)
def test_results_are_encoded_by_type(result: Any, content_type: str, body: bytes) -> None:
    assert encode_result(result) == Outcome(200, content_type, body)


def test_a_result_that_is_not_json_is_a_500_not_a_crash() -> None:
    outcome = encode_result({"x": object()})
    assert (outcome.status, outcome.error_type) == (500, "InternalServerException")
    assert b"cannot be sent as JSON" in outcome.body


def _api() -> EchoAPI:
    api = EchoAPI(name="echo")
    api.setup()
    return api


def test_run_batch_answers_each_request_in_order() -> None:
    outcomes = run_batch(_api(), [("application/json", b'{"i": 1}'), ("text/plain", b"two")])
    assert [json.loads(o.body)["echo"] for o in outcomes] == [{"i": 1}, "two"]
    assert all(json.loads(o.body)["batch"] == 2 for o in outcomes)


def test_undecodable_bodies_fail_alone_with_400() -> None:
    outcomes = run_batch(_api(), [("application/json", b"{oops"), ("application/json", b"{}")])
    assert [o.status for o in outcomes] == [400, 200]
    assert b"not valid JSON" in outcomes[0].body


def test_a_failing_batch_is_retried_one_by_one() -> None:
    requests = [("application/json", b'{"fail": true}'), ("application/json", b'{"n": 1}')]
    outcomes = run_batch(_api(), requests)
    assert [o.status for o in outcomes] == [500, 200]
    assert b"EchoAPI.postprocess raised ValueError: asked to fail" in outcomes[0].body


def test_an_exception_as_a_result_fails_only_its_request() -> None:
    outcomes = run_batch(_api(), [("application/json", b'{"reject": true}'), ("application/json", b"{}")])
    assert [(o.status, o.error_type) for o in outcomes] == [(400, "BadRequestException"), (200, "")]


def test_the_wrong_number_of_results_names_the_handler_and_counts() -> None:
    api = WrongCountAPI(name="wrong")
    api.setup()
    outcomes = run_batch(api, [("application/json", b"1"), ("application/json", b"2")])
    assert all(o.status == 500 for o in outcomes)
    assert b"WrongCountAPI returned 1 result(s) for a batch of 2 request(s)" in outcomes[0].body
