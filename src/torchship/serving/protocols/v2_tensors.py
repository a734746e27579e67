"""Between v2 tensors and per-request payloads: split inputs into requests, gather results into outputs.

Pure functions, tested without a server.

    >>> split_inputs([{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}])
    [('text/plain; charset=utf-8', b'a'), ('text/plain; charset=utf-8', b'b')]
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from dataclasses import dataclass
from typing import Any

from torchship.errors import UserInputError

__all__ = ["MAX_RANK", "InputTensor", "outputs_from_results", "read_inputs", "split_inputs", "to_requests"]

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


MAX_RANK = 32
"""Most dimensions in an input ``shape`` (numpy's classic limit)."""
MAX_DIMENSION = 2**63 - 1
"""The largest value of one dimension (an INT64, as tensors count), so that products stay printable."""

_INT_RANGES = {
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
}
_FLOATS = {"FP16", "FP32", "FP64", "BF16"}
_LARGEST_FLOAT = sys.float_info.max


@dataclass(frozen=True)
class InputTensor:
    """One checked input: its ``shape`` agrees with its flat ``values``, whose types fit ``datatype``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: list[Any]

    @property
    def rows(self) -> int:
        """The batch dimension: how many requests this input becomes."""
        return self.shape[0]


def read_inputs(inputs: Any) -> list[InputTensor]:
    """Check ``inputs`` without building anything its ``shape`` claims: shape first (integers, rank at most
    :data:`MAX_RANK`), then the data (nested no deeper than the shape, as many values as the shape's
    product, types that fit the datatype). The work is bounded by the size of the body, never by a size
    the client states. The caller checks :attr:`InputTensor.rows` against its queue before
    :func:`to_requests`."""
    if not isinstance(inputs, list) or not inputs:
        raise UserInputError('"inputs" must be a non-empty list of {"name", "datatype", "shape", "data"}')
    tensors = [_read_tensor(tensor) for tensor in inputs]
    if len({tensor.rows for tensor in tensors}) > 1:
        raise UserInputError("All inputs must have the same first dimension (one element per request)")
    if len({tensor.name for tensor in tensors}) < len(tensors):
        raise UserInputError("Each input needs a name of its own")
    return tensors


def to_requests(tensors: list[InputTensor]) -> list[tuple[str, bytes]]:
    """One ``(content_type, body)`` per element of the batch dimension (the first of ``shape``)."""
    columns = [(tensor.name, _split_rows(tensor)) for tensor in tensors]
    if len(columns) == 1:
        rows = columns[0][1]
        if tensors[0].datatype == "BYTES" and len(tensors[0].shape) == 1:
            return [(TEXT, row.encode("utf-8")) for row in rows]
        return [(JSON, json.dumps(row).encode("utf-8")) for row in rows]
    return [
        (JSON, json.dumps({name: rows[i] for name, rows in columns}).encode("utf-8"))
        for i in range(tensors[0].rows)
    ]


def split_inputs(inputs: Any) -> list[tuple[str, bytes]]:
    """:func:`read_inputs` then :func:`to_requests`, for callers with no queue to check in between."""
    return to_requests(read_inputs(inputs))


def _read_tensor(tensor: Any) -> InputTensor:
    if not isinstance(tensor, dict):
        raise UserInputError("Each input must be an object with name, datatype, shape and data")
    name, datatype, shape, data = (tensor.get(k) for k in ("name", "datatype", "shape", "data"))
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise UserInputError('Each input needs a string "name" and "datatype"')
    if datatype != "BYTES" and datatype not in _NUMERIC:
        raise UserInputError(f"Input {name}: unknown datatype {datatype[:40]!r}")
    dims = _check_shape(name, shape)
    values = _flatten(name, data, len(dims))
    if len(values) != math.prod(dims):
        raise UserInputError(
            f"Input {name}: shape {list(dims)} needs {math.prod(dims)} values, got {len(values)}"
        )
    # Every prefix of the shape is a level of nested lists to build; with a 0 further in, a prefix can
    # claim far more lists than there are values ([1, 10**9, 0]). Only the batch dimension may do that,
    # and the caller bounds it by its queue.
    for depth in range(2, len(dims)):
        if math.prod(dims[:depth]) > len(values):
            raise UserInputError(
                f"Input {name}: shape {list(dims)} has a 0 after its second dimension; only the batch "
                "(first) dimension may precede a 0"
            )
    _check_values(name, datatype, values)
    return InputTensor(name, datatype, dims, values)


def _check_shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not 1 <= len(shape) <= MAX_RANK:
        raise UserInputError(f'Input {name}: "shape" must be a list of 1 to {MAX_RANK} non-negative integers')
    if not all(type(dim) is int and 0 <= dim <= MAX_DIMENSION for dim in shape):  # type(): not true, 2.0
        raise UserInputError(
            f'Input {name}: "shape" must hold non-negative integers up to {MAX_DIMENSION}, '
            f"got {str(shape)[:80]}"
        )
    if shape[0] == 0:
        raise UserInputError(f"Input {name}: the first (batch) dimension must be at least 1")
    return tuple(shape)


def _flatten(name: str, data: Any, rank: int) -> list[Any]:
    """The values of ``data`` (flat, or nested like the shape), one level at a time (no recursion)."""
    if not isinstance(data, list):
        raise UserInputError(f'Input {name}: "data" must be a (possibly nested) list')
    level, depth = data, 1
    while any(isinstance(item, list) for item in level):
        if depth >= rank:
            raise UserInputError(f'Input {name}: "data" is nested deeper than its shape has dimensions')
        if not all(isinstance(item, list) for item in level):
            raise UserInputError(f'Input {name}: "data" mixes lists and values at one level')
        level, depth = list(itertools.chain.from_iterable(level)), depth + 1
    return level


def _check_values(name: str, datatype: str, values: list[Any]) -> None:
    kinds = set(map(type, values))
    allowed: set[type]
    if datatype == "BYTES":
        allowed, what = {str}, "strings"
    elif datatype == "BOOL":
        allowed, what = {bool}, "true or false"
    elif datatype in _FLOATS:
        allowed, what = {int, float}, "numbers"
    else:
        allowed, what = {int}, "integers"
    if not kinds <= allowed:
        found = ", ".join(sorted(_JSON_NAMES.get(kind, kind.__name__) for kind in kinds - allowed))
        raise UserInputError(f"Input {name}: {datatype} data must be {what}, got {found}")
    if not values or datatype in ("BYTES", "BOOL"):
        return
    low, high = min(values), max(values)
    bounds = _INT_RANGES.get(datatype, (-_LARGEST_FLOAT, _LARGEST_FLOAT))
    if not bounds[0] <= low <= high <= bounds[1]:  # also catches 1e999, which JSON reads as infinity
        raise UserInputError(f"Input {name}: {datatype} data must lie in [{bounds[0]:g}, {bounds[1]:g}]")


_JSON_NAMES = {str: "strings", bool: "booleans", int: "integers", float: "numbers", dict: "objects"}


def _split_rows(tensor: InputTensor) -> list[Any]:
    inner = list(tensor.shape[1:])
    width = math.prod(inner)
    values = tensor.values
    if not inner:
        return values
    return [_nest(values[i * width : (i + 1) * width], inner) for i in range(tensor.rows)]


def _nest(values: list[Any], shape: list[int]) -> Any:
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
