"""The package surface: a sorted ``__all__``, and no Lightning import outside ``datamodule``."""

from __future__ import annotations

import subprocess
import sys

import torchship.data


def isort_key(name: str) -> tuple[bool, bool, str]:
    # The order ruff (RUF022) keeps: CONSTANTS, then Classes, then functions, each alphabetical.
    return (not name.isupper(), not name[0].isupper(), name)


def test_all_is_sorted_and_importable() -> None:
    assert torchship.data.__all__ == sorted(torchship.data.__all__, key=isort_key)
    for name in torchship.data.__all__:
        assert getattr(torchship.data, name) is not None


def test_data_package_does_not_import_lightning() -> None:
    script = (
        "import sys, torchship.data, torchship.data.formats, torchship.data.tokenizer; "
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'pyarrow')))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
