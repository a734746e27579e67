"""JSON request bodies, parsed by one function (in the HTTP process and in workers) that turns every
failure into a 400.

``json.loads`` alone lets a client cause more than ``JSONDecodeError``: deep nesting raises
``RecursionError``, an integer of more than ``sys.get_int_max_str_digits()`` digits a ``ValueError``, a
lone surrogate (``"\\ud800"``) parses into a ``str`` that fails later wherever it is encoded, and
``NaN``/``Infinity`` (not JSON) parse into floats that no JSON answer can carry. :func:`parse_json`
refuses all of them here, with a message that says what to send instead.

Depth: the C decoder stops at the interpreter's recursion limit (``RecursionError``, here a 400), which
bounds the parse itself. What a route does with the document is bounded by its own checks, not by a
second walk over every node here (a 6 MB tensor would pay for it on every request): v2 data may nest no
deeper than its ``shape``, management bodies hold scalars, v2 ``id`` is a string.

    >>> parse_json(b'{"url": "bbc"}', "The registration body")
    {'url': 'bbc'}
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

from torchship.errors import UserInputError

__all__ = ["NotJSONError", "parse_json"]

# A number that may overflow to inf: an exponent of three digits or more, or 309+ digits in a row. Only
# bodies that hold one pay for the per-float check (a Python call per number).
_HUGE_NUMBER = re.compile(rb"[eE]\+?0*[1-9][0-9]{2}|[0-9]{309}")
# A \uD800-\uDFFF escape: either half of a surrogate pair, or a lone one (only those fail to encode).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


class NotJSONError(UserInputError):
    """The body is not JSON at all (as opposed to JSON the server refuses)."""


def parse_json(body: bytes, what: str) -> Any:
    """The JSON document in ``body``; :class:`UserInputError` naming ``what`` and the problem otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        finite = _finite_float if _HUGE_NUMBER.search(body) else float
        document = json.loads(text, parse_constant=_refuse_constant, parse_float=finite)
    except json.JSONDecodeError as exc:
        raise NotJSONError(
            f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); send a JSON "
            "document with Content-Type: application/json"
        ) from None
    except RecursionError:
        raise _too_deep(what) from None
    except ValueError as exc:  # an integer longer than the interpreter's digit limit, NaN or Infinity
        reason = str(exc).split(";")[0]  # Python's own advice (set_int_max_str_digits) is not the client's
        raise UserInputError(
            f"{what} holds a number that cannot be read ({reason}); send finite JSON numbers of at most "
            f"{sys.get_int_max_str_digits()} digits"
        ) from None
    if _SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(document, what):
        raise UserInputError(
            f"{what} holds a lone surrogate escape (\\ud800-\\udfff without its pair), which is not text; "
            "send valid Unicode"
        )
    return document


def _finite_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise ValueError(f"{literal[:20]}... is out of range for a float; send finite numbers")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; send finite numbers")


def _too_deep(what: str) -> UserInputError:
    return UserInputError(
        f"{what} is nested too deeply (the server parses about {sys.getrecursionlimit()} levels of arrays "
        "and objects); send a flatter document"
    )


def _has_lone_surrogate(document: Any, what: str) -> bool:
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except RecursionError:  # the encoder starts from a deeper stack than the decoder did
        raise _too_deep(what) from None
    return False
