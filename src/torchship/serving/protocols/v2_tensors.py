"""Between v2 tensors and per-request payloads: split inputs into requests, gather results into outputs.

Pure functions, tested without a server.

    >>> split_inputs([{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}])
    [('text/plain; charset=utf-8', b'a'), ('text/plain; charset=utf-8', b'b')]
"""

from __future__ import annotations

import json
import math
from typing import Any

from torchship.errors import UserInputError

__all__ = ["outputs_from_results", "split_inputs"]

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
_NUMERIC = {
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
}


def split_inputs(inputs: Any) -> list[tuple[str, bytes]]:
    """One ``(content_type, body)`` per element of the batch dimension (the first of ``shape``)."""
    if not isinstance(inputs, list) or not inputs:
        raise UserInputError('"inputs" must be a non-empty list of {"name", "datatype", "shape", "data"}')
    columns = [_rows(tensor) for tensor in inputs]
    count = len(columns[0][1])
    if any(len(rows) != count for _, rows in columns):
        raise UserInputError("All inputs must have the same first dimension (one element per request)")
    if len(columns) == 1:
        rows = columns[0][1]
        if inputs[0]["datatype"] == "BYTES" and all(isinstance(row, str) for row in rows):
            return [(TEXT, row.encode("utf-8")) for row in rows]
        return [(JSON, json.dumps(row).encode("utf-8")) for row in rows]
    return [
        (JSON, json.dumps({name: rows[i] for name, rows in columns}).encode("utf-8")) for i in range(count)
    ]


def _rows(tensor: Any) -> tuple[str, list[Any]]:
    if not isinstance(tensor, dict):
        raise UserInputError("Each input must be an object with name, datatype, shape and data")
    name, datatype, shape, data = (tensor.get(k) for k in ("name", "datatype", "shape", "data"))
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise UserInputError('Each input needs a string "name" and "datatype"')
    if datatype != "BYTES" and datatype not in _NUMERIC:
        raise UserInputError(f"Input {name}: unknown datatype {datatype!r}")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise UserInputError(f'Input {name}: "shape" must be a non-empty list of non-negative integers')
    flat = _flatten(data)
    if len(flat) != math.prod(shape):
        raise UserInputError(f"Input {name}: shape {shape} needs {math.prod(shape)} values, got {len(flat)}")
    width = math.prod(shape[1:])
    return name, [_nest(flat[i * width : (i + 1) * width], shape[1:]) for i in range(shape[0])]


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise UserInputError('Each input needs "data" as a (possibly nested) list')
    flat: list[Any] = []
    stack = [data]
    while stack:  # iterative, so deeply nested input cannot exhaust the recursion limit
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def _nest(values: list[Any], shape: list[int]) -> Any:
    if not shape:
        return values[0]
    if len(shape) == 1:
        return values
    step = math.prod(shape[1:])
    return [_nest(values[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def outputs_from_results(results: list[Any], requested: list[str] | None = None) -> list[dict[str, Any]]:
    """Output tensors from one result per element: dict results give one tensor per key."""
    if results and all(isinstance(result, dict) for result in results):
        names = list(results[0])
        tensors = [_tensor(name, [result.get(name) for result in results]) for name in names]
    else:
        tensors = [_tensor("output", results)]
    if requested is None:
        return tensors
    by_name = {tensor["name"]: tensor for tensor in tensors}
    unknown = [name for name in requested if name not in by_name]
    if unknown:
        raise UserInputError(f"Unknown output(s) {', '.join(unknown)}; this model has {', '.join(by_name)}")
    return [by_name[name] for name in requested]


def _tensor(name: str, values: list[Any]) -> dict[str, Any]:
    count = len(values)
    if all(isinstance(v, bool) for v in values):
        return {"name": name, "datatype": "BOOL", "shape": [count], "data": values}
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return {"name": name, "datatype": "INT64", "shape": [count], "data": values}
    if all(_is_number(v) for v in values):
        return {"name": name, "datatype": "FP32", "shape": [count], "data": values}
    if all(isinstance(v, str) for v in values):
        return {"name": name, "datatype": "BYTES", "shape": [count], "data": values}
    if values and all(isinstance(v, dict) for v in values):
        keys = sorted(values[0])
        if all(sorted(v) == keys and all(_is_number(x) for x in v.values()) for v in values):
            data = [v[key] for v in values for key in keys]
            return {
                "name": name,
                "datatype": "FP32",
                "shape": [count, len(keys)],
                "data": data,
                "parameters": {"labels": keys},
            }
    if values and all(isinstance(v, list) and all(_is_number(x) for x in v) for v in values):
        widths = {len(v) for v in values}
        if len(widths) == 1:
            return {
                "name": name,
                "datatype": "FP32",
                "shape": [count, widths.pop()],
                "data": [x for v in values for x in v],
            }
    return {"name": name, "datatype": "BYTES", "shape": [count], "data": [json.dumps(v) for v in values]}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
