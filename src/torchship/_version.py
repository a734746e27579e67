"""torchship's version, from the installed package's metadata (``version`` in pyproject.toml).

Its own module, so that what needs the version (``config.json``, the v2 server metadata) does not import
the whole ``torchship`` package for it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("torchship")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
