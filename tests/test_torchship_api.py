from __future__ import annotations

import subprocess
import sys

import torchship


def test_all_is_sorted_and_every_name_resolves() -> None:
    names = [name for name in torchship.__all__ if name != "__version__"]
    assert names == sorted(names)
    for name in torchship.__all__:
        assert getattr(torchship, name) is not None, name


def test_importing_torchship_does_not_import_lightning() -> None:
    code = "import sys, torchship, torchship.serving; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_lazy_training_names_load_lightning_on_demand() -> None:
    from torchship.training import train

    assert torchship.train is train
