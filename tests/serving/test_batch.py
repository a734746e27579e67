"""The batch contract, run in-process: decoding, one result per request, errors per request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from serving_handlers import EchoAPI, WrongCountAPI

from torchship.serving import ModelAPI
from torchship.serving.workers.batch import Outcome, decode_payload, encode_result, run_batch


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


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b"[" + b"1" * 5000 + b"]", "4300 digits"),
        (b'{"text": "caf\xe9"}', "not valid UTF-8"),
        (b'{"text": "\\ud800"}', "lone surrogate"),
        (b"{oops", "not valid JSON"),
    ],
)
def test_a_body_that_cannot_be_decoded_is_a_400_that_names_the_problem(body: bytes, words: str) -> None:
    bad, good = run_batch(
        _api(), [("application/json", body), ("application/json", b'{"text": "\\ud83d\\ude00"}')]
    )
    assert (bad.status, bad.error_type) == (400, "BadRequestException")
    assert words in bad.body.decode()
    assert (good.status, json.loads(good.body)["echo"]) == (200, {"text": "\U0001f600"})


def test_invalid_utf8_text_is_a_400() -> None:
    [outcome] = run_batch(_api(), [("text/plain", b"caf\xe9")])
    assert outcome.status == 400 and b"not valid UTF-8" in outcome.body


class _Rude(BaseException):
    pass


class _TroubleAPI(ModelAPI):
    """Misbehaves as each payload asks."""

    inference_calls_steps = True

    def load(self, model_path: Path | None) -> Any:
        return None

    def inference(self, data: list[Any]) -> list[Any]:
        for item in data:
            if item == "rude":
                raise _Rude("not an Exception")
            if item == "exit":
                raise SystemExit(3)
        return [_result(item) for item in data]


def _result(item: Any) -> Any:
    if item == "deep":
        nested: list[Any] = []
        for _ in range(100_000):
            nested = [nested]
        return nested
    if item == "surrogate":
        return {"text": "\ud800"}
    if item == "surrogate text":
        return "\ud800"
    return {"echo": item}


def _trouble() -> _TroubleAPI:
    api = _TroubleAPI(name="trouble")
    api.setup()
    return api


def test_any_exception_but_an_exit_fails_only_its_request() -> None:
    requests = [("text/plain", b"rude"), ("text/plain", b"fine")]
    rude, fine = run_batch(_trouble(), requests)
    assert (rude.status, rude.error_type) == (500, "InternalServerException")
    assert b"_Rude" in rude.body
    assert (fine.status, json.loads(fine.body)) == (200, {"echo": "fine"})


def test_a_handler_that_exits_ends_its_worker() -> None:
    with pytest.raises(SystemExit):
        run_batch(_trouble(), [("text/plain", b"exit")])


def test_a_result_too_deep_to_encode_is_a_500_for_its_request_alone() -> None:
    deep, fine = run_batch(_trouble(), [("text/plain", b"deep"), ("text/plain", b"fine")])
    assert deep.status == 500 and b"nested too deeply to send as JSON" in deep.body
    assert fine.status == 200


def test_a_lone_surrogate_in_a_result_is_sent_as_an_escape_or_refused_as_text() -> None:
    as_json, as_text = run_batch(
        _trouble(), [("text/plain", b"surrogate"), ("text/plain", b"surrogate text")]
    )
    assert (as_json.status, as_json.body) == (200, b'{"text": "\\ud800"}')
    assert as_text.status == 500 and b"not valid Unicode" in as_text.body
