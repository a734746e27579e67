"""TorchServe's pagination and query parameters, as pure functions."""

from __future__ import annotations

import pytest

from torchship.errors import UserInputError
from torchship.serving.protocols.describe import paginate
from torchship.serving.protocols.params import parse_bool, parse_float, parse_int


def test_paginate_like_torchserve() -> None:
    names = ["a", "b", "c", "d"]
    assert paginate(names, 2, 0) == (["a", "b"], 2)
    assert paginate(names, 2, 2) == (["c", "d"], None)
    assert paginate(names, -1, -5) == (names, None)  # out-of-range limit means 100, negative token 0
    assert paginate(names, 500, 3) == (["d"], None)


@pytest.mark.parametrize("limit", [0, -1, 1, 3, 100, 101])
def test_following_next_page_token_always_ends(limit: int) -> None:
    names = [f"m{i}" for i in range(250)]
    pages, token = [], 0
    while token is not None:
        page, token = paginate(names, limit, token)
        pages.append(page)
        assert len(pages) <= 250, "the pages never end"
    assert [name for page in pages for name in page] == names


def test_parameters_refuse_what_no_setting_can_be() -> None:
    for value in ("inf", "-inf", "nan", "1e999"):
        with pytest.raises(UserInputError, match="response_timeout must be a finite number"):
            parse_float({"response_timeout": value}, "response_timeout")
    digits = "9" * 5000  # more than Python's int digit limit: a ValueError of its own
    with pytest.raises(UserInputError, match=r"min_worker must be an integer, got '99.*\(5000 characters\)"):
        parse_int({"min_worker": digits}, "min_worker", 1)
    for other_digits in ("\uff11", "\u0661"):  # a full-width 1 and an Arabic-Indic 1: int() reads both
        with pytest.raises(UserInputError, match="min_worker must be an integer"):
            parse_int({"min_worker": other_digits}, "min_worker", 1)
        with pytest.raises(UserInputError, match="max_batch_delay must be a number"):
            parse_float({"max_batch_delay": other_digits}, "max_batch_delay")


def test_parameters_parse_or_name_the_bad_one() -> None:
    assert parse_int({"limit": "5"}, "limit", 100) == 5
    assert parse_int({}, "limit", 100) == 100
    assert parse_float({"max_batch_delay": "2.5"}, "max_batch_delay") == 2.5
    assert parse_bool({"synchronous": "TRUE"}, "synchronous", False) is True
    with pytest.raises(UserInputError, match="limit must be an integer"):
        parse_int({"limit": "x"}, "limit", 0)
    with pytest.raises(UserInputError, match="synchronous must be true or false"):
        parse_bool({"synchronous": "maybe"}, "synchronous", False)
