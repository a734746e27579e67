"""``multipart/form-data`` request bodies (``curl -F data=@file.txt``) as TorchServe reads them.

TorchServe turns every form part into a parameter of one request, and its handlers read the ``data`` or
``body`` parameter. :func:`form_input` picks the same part (``data``, else ``body``, else the first file
part) and returns it with its own content type, so that the handler sees the file as if it had been the
whole body: the boundary and the part headers are never classified. Parsing is python-multipart's (the
parser Starlette uses); the number of parts, and the count and length of each part's header lines, are
bounded by :class:`FormLimits`; the body itself is already bounded by ``max_request_size``.

    >>> body = b'--b\\r\\nContent-Disposition: form-data; name="data"\\r\\n\\r\\nhello\\r\\n--b--\\r\\n'
    >>> form_input("multipart/form-data; boundary=b", body, FormLimits())
    ('', b'hello')
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from torchship.errors import UserInputError
from torchship.serving.settings import ServerSettings

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = ["FormLimits", "FormPart", "form_input", "form_parameters", "is_form"]

# The parser logs a warning for every malformed body it meets; the client already gets a 400 naming the
# problem, and a warning per request would let any client flood the server's log.
logging.getLogger("python_multipart.multipart").setLevel(logging.ERROR)

_MEDIA = "multipart/form-data"
_URLENCODED = "application/x-www-form-urlencoded"
_FILE_TYPE = "application/octet-stream"  # Netty's type for a file part that names none
_INPUT_FIELDS = ("data", "body")  # TorchServe's handlers read row.get("data") or row.get("body")
_USAGE = "send the input as a part named data (curl -F data=@file.txt) or body, or as a file part"


@dataclass(frozen=True)
class FormLimits:
    """What one form body may hold (``ServerSettings``' ``max_form_*`` fields)."""

    max_parts: int = 16
    max_part_headers: int = 8
    max_header_size: int = 4096

    @classmethod
    def of(cls, settings: ServerSettings) -> FormLimits:
        return cls(settings.max_form_parts, settings.max_form_part_headers, settings.max_form_header_size)


@dataclass(frozen=True)
class FormPart:
    """One part of a form body: its field name, file name (None for a plain field), type and bytes."""

    name: str
    filename: str | None
    content_type: str
    body: bytes


def is_form(content_type: str) -> bool:
    """Whether a request's ``Content-Type`` is ``multipart/form-data``."""
    return content_type.split(";", 1)[0].strip().lower() == _MEDIA


def form_input(content_type: str, body: bytes, limits: FormLimits) -> tuple[str, bytes]:
    """The content type and bytes of the part that holds the input; 400 when there is none."""
    parts = parse_form(content_type, body, limits)
    chosen = next((part for name in _INPUT_FIELDS for part in parts if part.name == name), None)
    if chosen is None:
        chosen = next((part for part in parts if part.filename is not None), None)
    if chosen is None:
        names = ", ".join(repr(part.name[:40]) for part in parts[:10]) or "none"
        raise UserInputError(f"The multipart/form-data body has no input part (parts: {names}); {_USAGE}")
    return chosen.content_type, chosen.body


def form_parameters(
    content_type: str, body: bytes, limits: FormLimits
) -> list[tuple[str, str, bytes]] | None:
    """Every field of a ``multipart/form-data`` or ``application/x-www-form-urlencoded`` body as
    ``(name, content_type, bytes)``, in order, as TorchServe's frontend makes request parameters of them:
    a plain field has no content type (``""``), a file part its own media type (without parameters), or
    ``application/octet-stream``. None when the body is not a form; 400 when it is a malformed one."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == _MEDIA:
        return [
            (part.name, "" if part.filename is None else _media_type(part.content_type), part.body)
            for part in parse_form(content_type, body, limits)
        ]
    if media != _URLENCODED:
        return None
    try:
        fields = parse_qsl(
            body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=limits.max_parts
        )
    except ValueError:
        raise UserInputError(
            f"The application/x-www-form-urlencoded body has more than max_form_parts={limits.max_parts} "
            "fields; send fewer"
        ) from None
    return [(name, "", value.encode("utf-8")) for name, value in fields]


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip() or _FILE_TYPE


def parse_form(content_type: str, body: bytes, limits: FormLimits) -> list[FormPart]:
    """Every part of a ``multipart/form-data`` body, in order; 400 naming the problem otherwise."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    if not boundary:
        raise UserInputError(
            "The multipart/form-data Content-Type has no boundary; let the client build the header "
            "(curl -F data=@file.txt)"
        )
    reader = _PartReader(limits.max_parts)
    try:
        parser = MultipartParser(
            boundary,
            reader.callbacks(),
            max_header_count=limits.max_part_headers,
            max_header_size=limits.max_header_size,
        )
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        bounds = (
            f" (at most {limits.max_part_headers} header lines of {limits.max_header_size} bytes per part: "
            "max_form_part_headers, max_form_header_size)"
            if "header" in str(exc).lower()
            else ""
        )
        raise UserInputError(f"The multipart/form-data body is malformed: {exc}{bounds}; {_USAGE}") from None
    if not reader.ended:
        raise UserInputError(f"The multipart/form-data body ends before its closing boundary; {_USAGE}")
    return reader.parts


class _PartReader:
    """python-multipart's callbacks, collecting whole parts (the body is in memory already)."""

    def __init__(self, max_parts: int) -> None:
        self.max_parts = max_parts
        self.parts: list[FormPart] = []
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._data: list[bytes] = []

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise UserInputError(
                f"The multipart/form-data body has more than max_form_parts={self.max_parts} parts; send "
                "one part per request (the server batches for you)"
            )
        self._headers, self._data = {}, []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field, self._value = b"", b""

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data.append(data[start:end])

    def _part_end(self) -> None:
        _, disposition = parse_options_header(self._headers.get(b"content-disposition", b""))
        filename = disposition.get(b"filename")
        self.parts.append(
            FormPart(
                disposition.get(b"name", b"").decode("utf-8", "replace"),
                filename.decode("utf-8", "replace") if filename is not None else None,
                self._headers.get(b"content-type", b"").decode("latin-1"),
                b"".join(self._data),
            )
        )

    def _end(self) -> None:
        self.ended = True
