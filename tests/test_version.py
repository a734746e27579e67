"""``__version__`` comes from the package metadata (pyproject.toml's ``version``), through one module."""

from __future__ import annotations

from importlib.metadata import version

import torchship
from torchship._version import __version__
from torchship.store.package import PackageConfig


def test_the_version_is_the_installed_package_s() -> None:
    assert torchship.__version__ == __version__ == version("torchship")


def test_a_package_records_the_version_that_wrote_it() -> None:
    field = PackageConfig.__dataclass_fields__["torchship_version"]
    assert field.default == __version__
