"""The public surface of torchship.serving: sorted, every name importable, and importing it stays cheap."""

from __future__ import annotations

import subprocess
import sys

import torchship.serving


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert torchship.serving.__all__ == sorted(torchship.serving.__all__)
    for name in torchship.serving.__all__:
        assert getattr(torchship.serving, name) is not None


def test_importing_serving_loads_neither_lightning_nor_uvicorn() -> None:
    code = (
        "import sys, torchship.serving; "
        "print(any(m.split('.')[0] in ('lightning', 'uvicorn') for m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_worker_processes_never_import_lightning() -> None:
    code = (
        "import sys, torchship.serving.workers.child, torchship.serving.text_classifier, torchship.store; "
        "print(any(m.split('.')[0] == 'lightning' for m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
