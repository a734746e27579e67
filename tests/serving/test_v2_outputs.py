"""Requested outputs, Triton's classification and the inputs' check against a model's metadata."""

from __future__ import annotations

from typing import Any

import pytest

from torchship.errors import UserInputError
from torchship.serving.protocols.v2_outputs import (
    OutputRequest,
    binary_names,
    check_inputs,
    classify,
    read_requested,
)
from torchship.serving.protocols.v2_tensors import InputTensor

PROBABILITIES = {
    "name": "probabilities",
    "datatype": "FP32",
    "shape": [2, 3],
    "data": [0.2, 0.5, 0.3, 0.6, 0.1, 0.3],
    "parameters": {"labels": ["business", "sport", "tech"]},
}
DECLARED = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]


def test_read_requested() -> None:
    document = {
        "outputs": [
            {"name": "label"},
            {"name": "score", "parameters": {"binary_data": True}},
            {"name": "probabilities", "parameters": {"classification": 2, "binary_data": False}},
        ],
        "parameters": {"binary_data_output": True},
    }
    requested, binary_all = read_requested(document)
    assert requested == [
        OutputRequest("label"),
        OutputRequest("score", True),
        OutputRequest("probabilities", False, 2),
    ]
    assert binary_all
    assert read_requested({"outputs": [{"name": "p", "parameters": {"class_count": 3}}]})[0] == [
        OutputRequest("p", None, 3)
    ]
    assert read_requested({}) == (None, False)


@pytest.mark.parametrize(
    "document",
    [
        {"parameters": []},
        {"parameters": {"binary_data_output": "yes"}},
        {"outputs": [{"name": "a", "parameters": {"binary_data": 1}}]},
        {"outputs": [{"name": "a", "parameters": {"classification": -1}}]},
        {"outputs": [{"name": "a", "parameters": {"classification": True}}]},
        {"outputs": [{"name": "a", "parameters": "x"}]},
        {"outputs": [{"nom": "a"}]},
        {"outputs": [{"name": "a"}, {"name": "a"}]},
    ],
)
def test_read_requested_refuses(document: dict[str, Any]) -> None:
    with pytest.raises(UserInputError):
        read_requested(document)


def test_binary_names_follow_each_output_then_the_request() -> None:
    outputs = [{"name": "a"}, {"name": "b"}]
    assert binary_names(outputs, None, True) == {"a", "b"}
    assert binary_names(outputs, None, False) == set()
    requested = [OutputRequest("a", False), OutputRequest("b")]
    assert binary_names(outputs, requested, True) == {"b"}
    assert binary_names(outputs, requested, False) == set()


def test_classify_ranks_each_row() -> None:
    classes = classify(PROBABILITIES, 2)
    assert classes == {
        "name": "probabilities",
        "datatype": "BYTES",
        "shape": [2, 2],
        "data": ["0.500000:1:sport", "0.300000:2:tech", "0.600000:0:business", "0.300000:2:tech"],
    }
    assert classify(PROBABILITIES, 10)["shape"] == [2, 3]  # more than there are classes: all of them
    unlabelled = {key: value for key, value in PROBABILITIES.items() if key != "parameters"}
    assert classify(unlabelled, 1)["data"] == ["0.500000:1", "0.600000:0"]


def test_classify_needs_a_score_matrix() -> None:
    with pytest.raises(UserInputError, match="label: classification needs a numeric"):
        classify({"name": "label", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}, 1)


def test_inputs_that_fit_the_metadata_pass() -> None:
    check_inputs("news", [InputTensor("text", "BYTES", (2,), ["a", "b"])], DECLARED)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (InputTensor("wrongname", "BYTES", (1,), ["a"]), 'wrongname: model "news" has no such input; it'),
        (InputTensor("text", "FP32", (1,), [1.0]), 'text: datatype FP32, model "news" expects BYTES'),
        (InputTensor("text", "BYTES", (2, 1), ["a", "b"]), r"text: shape \[2, 1\] does not fit"),
    ],
)  # fmt: skip
def test_inputs_that_disagree_are_named(tensor: InputTensor, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        check_inputs("news", [tensor], DECLARED)


def test_a_missing_input_is_named() -> None:
    declared = [*DECLARED, {"name": "lang", "datatype": "BYTES", "shape": [-1]}]
    with pytest.raises(UserInputError, match="needs input"):
        check_inputs("news", [InputTensor("text", "BYTES", (1,), ["a"])], declared)
