"""``multipart/form-data`` bodies as TorchServe reads them (``serving/protocols/multipart.py``): which part
is the input, and the limits on parts and part headers. In-process, no server."""

from __future__ import annotations

import pytest

from torchship.errors import UserInputError
from torchship.serving.protocols.multipart import FormLimits, form_input, is_form, parse_form

CONTENT_TYPE = "multipart/form-data; boundary=XyZ"


def form(*parts: tuple[str, str | None, str | None, bytes]) -> bytes:
    """A form body of ``(name, filename, content type, data)`` parts, as curl -F writes one."""
    out = b""
    for name, filename, content_type, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--XyZ\r\nContent-Disposition: {disposition}\r\n".encode()
        if content_type is not None:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + b"--XyZ--\r\n"


def test_is_form_reads_the_media_type_only() -> None:
    assert is_form("Multipart/Form-Data; boundary=a")
    assert not is_form("text/plain")
    assert not is_form("multipart/mixed; boundary=a")


def test_parts_keep_their_names_file_names_types_and_bytes() -> None:
    body = form(("a", None, None, b"1"), ("f", "x.txt", "text/plain", b"line\r\nnext\n"))
    assert [
        (p.name, p.filename, p.content_type, p.body) for p in parse_form(CONTENT_TYPE, body, FormLimits())
    ] == [
        ("a", None, "", b"1"),
        ("f", "x.txt", "text/plain", b"line\r\nnext\n"),
    ]


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([("x", "a.txt", "text/plain", b"file"), ("data", None, None, b"field")], ("", b"field")),
        (
            [("body", None, None, b"b"), ("data", "d.json", "application/json", b"{}")],
            ("application/json", b"{}"),
        ),
        ([("x", None, None, b"plain"), ("body", None, None, b"b")], ("", b"b")),
        ([("x", None, None, b"plain"), ("up", "u.txt", "text/plain", b"u")], ("text/plain", b"u")),
    ],
    ids=["data-first", "data-over-body", "body", "first-file-part"],
)
def test_the_input_is_data_then_body_then_the_first_file_part(
    parts: list[tuple[str, str | None, str | None, bytes]], expected: tuple[str, bytes]
) -> None:
    assert form_input(CONTENT_TYPE, form(*parts), FormLimits()) == expected


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        (
            CONTENT_TYPE,
            form(("x", None, None, b"1"), ("y", None, None, b"2")),
            "no input part (parts: 'x', 'y')",
        ),
        (CONTENT_TYPE, b"--XyZ--\r\n", "no input part (parts: none)"),
        ("multipart/form-data", form(("data", None, None, b"1")), "has no boundary"),
        (CONTENT_TYPE, form(("data", None, None, b"1"))[:-9], "ends before its closing boundary"),
        (CONTENT_TYPE, b"not a form at all", "malformed"),
    ],
    ids=["no-input-part", "no-parts", "no-boundary", "truncated", "garbage"],
)
def test_a_form_without_a_usable_input_is_a_400_that_says_what_to_send(
    content_type: str, body: bytes, message: str
) -> None:
    with pytest.raises(UserInputError) as caught:
        form_input(content_type, body, FormLimits())
    assert caught.value.status == 400
    assert message in caught.value.message
    assert "curl -F data=@file.txt" in caught.value.message


def test_the_part_count_is_bounded_before_more_parts_are_read() -> None:
    body = form(*[(f"p{i}", None, None, b"x") for i in range(5)])
    assert len(parse_form(CONTENT_TYPE, body, FormLimits(max_parts=5))) == 5
    with pytest.raises(UserInputError, match="max_form_parts=4"):
        parse_form(CONTENT_TYPE, body, FormLimits(max_parts=4))


def test_part_header_count_and_size_are_bounded() -> None:
    many = (
        b'--XyZ\r\nContent-Disposition: form-data; name="data"\r\n'
        + b"X-A: 1\r\n" * 3
        + b"\r\nhi\r\n--XyZ--\r\n"
    )
    assert form_input(CONTENT_TYPE, many, FormLimits(max_part_headers=4)) == ("", b"hi")
    with pytest.raises(UserInputError, match=r"header count exceeded.*max_form_part_headers"):
        form_input(CONTENT_TYPE, many, FormLimits(max_part_headers=3))
    long = form(("data", None, "text/plain; x=" + "a" * 200, b"hi"))
    assert form_input(CONTENT_TYPE, long, FormLimits(max_header_size=300))[1] == b"hi"
    with pytest.raises(UserInputError, match=r"header size exceeded.*max_form_header_size"):
        form_input(CONTENT_TYPE, long, FormLimits(max_header_size=100))
