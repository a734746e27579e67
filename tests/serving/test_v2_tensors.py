"""Splitting v2 input tensors into requests and gathering results into output tensors."""

from __future__ import annotations

import json
import time

import pytest

from torchship.errors import UserInputError
from torchship.serving.protocols.v2_tensors import (
    outputs_from_results,
    read_inputs,
    split_inputs,
    to_requests,
)


def test_bytes_become_text_requests_and_numbers_become_json_rows() -> None:
    texts = split_inputs([{"name": "t", "datatype": "BYTES", "shape": [2], "data": ["a", "é"]}])
    assert texts == [("text/plain; charset=utf-8", b"a"), ("text/plain; charset=utf-8", "é".encode())]
    rows = split_inputs([{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}])
    assert [json.loads(body) for _, body in rows] == [[1, 2], [3, 4]]


def test_several_inputs_become_one_dict_per_row() -> None:
    rows = split_inputs(
        [
            {"name": "a", "datatype": "INT64", "shape": [2], "data": [1, 2]},
            {"name": "b", "datatype": "BYTES", "shape": [2], "data": ["x", "y"]},
        ]
    )
    assert [json.loads(body) for _, body in rows] == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]


@pytest.mark.parametrize(
    "inputs",
    [
        None,
        [],
        [{"name": "t", "datatype": "BYTES", "shape": [3], "data": ["a"]}],
        [{"name": "t", "datatype": "BYTES", "shape": "3", "data": ["a"]}],
        [{"name": "t", "datatype": "COMPLEX", "shape": [1], "data": [1]}],
        [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]},
         {"name": "b", "datatype": "FP32", "shape": [2], "data": [1, 2]}],
        # Shapes: integers only (not true, not 2.0), a bounded rank, a batch of at least one.
        [{"name": "t", "datatype": "BYTES", "shape": [True], "data": ["a"]}],
        [{"name": "t", "datatype": "FP32", "shape": [2.0], "data": [1, 2]}],
        [{"name": "t", "datatype": "FP32", "shape": [1] * 33, "data": [1]}],
        [{"name": "t", "datatype": "FP32", "shape": [0], "data": []}],
        [{"name": "t", "datatype": "FP32", "shape": [-1], "data": []}],
        # A 0 deeper than the second dimension would claim 10**9 lists to build for no value.
        [{"name": "t", "datatype": "FP32", "shape": [1, 10**9, 0], "data": []}],
        # Data must fit the datatype.
        [{"name": "t", "datatype": "FP32", "shape": [2], "data": ["1", "2"]}],
        [{"name": "t", "datatype": "FP32", "shape": [1], "data": [True]}],
        [{"name": "t", "datatype": "FP32", "shape": [1], "data": [10**400]}],
        [{"name": "t", "datatype": "FP32", "shape": [1], "data": [float("inf")]}],
        [{"name": "t", "datatype": "INT8", "shape": [1], "data": [128]}],
        [{"name": "t", "datatype": "INT64", "shape": [1], "data": [1.5]}],
        [{"name": "t", "datatype": "BOOL", "shape": [1], "data": [1]}],
        [{"name": "t", "datatype": "BYTES", "shape": [1], "data": [1]}],
        [{"name": "t", "datatype": "BYTES", "shape": [1], "data": [{"a": 1}]}],
        # Data nested deeper than the shape, or ragged.
        [{"name": "t", "datatype": "FP32", "shape": [1], "data": [[1]]}],
        [{"name": "t", "datatype": "FP32", "shape": [2, 1], "data": [[1], 2]}],
        [{"name": "t", "datatype": "FP32", "shape": [1, 1], "data": [[[[[[1]]]]]]}],
        # A dimension past INT64: its product would be an integer too long to print in the message.
        [{"name": "t", "datatype": "FP32", "shape": [int("9" * 4000), int("9" * 4000)], "data": []}],
        # Two inputs with one name.
        [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]},
         {"name": "a", "datatype": "FP32", "shape": [1], "data": [2]}],
    ],
)  # fmt: skip
def test_malformed_inputs_are_400(inputs: object) -> None:
    with pytest.raises(UserInputError):
        split_inputs(inputs)


def test_a_claimed_batch_is_read_without_building_it() -> None:
    # The 87-byte request: a 0 dimension made the data check pass, then 10**9 rows were built.
    start = time.perf_counter()
    [tensor] = read_inputs([{"name": "text", "datatype": "BYTES", "shape": [1_000_000_000, 0], "data": []}])
    assert (tensor.rows, tensor.values) == (1_000_000_000, [])
    assert time.perf_counter() - start < 0.1  # nothing proportional to the claim was done
    rows = to_requests(read_inputs([{"name": "x", "datatype": "FP32", "shape": [3, 0], "data": []}]))
    assert [json.loads(body) for _, body in rows] == [[], [], []]


def test_data_flat_or_nested_like_the_shape() -> None:
    nested = {"name": "x", "datatype": "INT64", "shape": [2, 2, 1], "data": [[[1], [2]], [[3], [4]]]}
    flat = {**nested, "data": [1, 2, 3, 4]}
    assert to_requests(read_inputs([nested])) == to_requests(read_inputs([flat]))
    assert [json.loads(body) for _, body in split_inputs([flat])] == [[[1], [2]], [[3], [4]]]


def test_classifier_results_become_typed_outputs() -> None:
    results = [
        {"label": "a", "score": 0.9, "probabilities": {"b": 0.1, "a": 0.9}},
        {"label": "b", "score": 0.6, "probabilities": {"a": 0.4, "b": 0.6}},
    ]
    label, score, probabilities = outputs_from_results(results)
    assert label == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}
    assert score["datatype"] == "FP32"
    assert probabilities["shape"] == [2, 2]
    assert probabilities["data"] == [0.9, 0.1, 0.4, 0.6]
    assert probabilities["parameters"] == {"labels": ["a", "b"]}


def test_other_results_fall_back_to_json_strings_and_outputs_can_be_chosen() -> None:
    assert outputs_from_results([[1, "x"]])[0]["data"] == ['[1, "x"]']
    assert outputs_from_results([{"a": 1, "b": 2}], ["b"]) == [
        {"name": "b", "datatype": "INT64", "shape": [1], "data": [2]}
    ]
    with pytest.raises(UserInputError, match="Unknown output"):
        outputs_from_results([{"a": 1}], ["z"])
