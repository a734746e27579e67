"""Store locations: a directory, or an object store URL that fsspec opens (``s3://bucket/prefix``)."""

from __future__ import annotations

import re

__all__ = ["OBJECT_STORE_SCHEMES", "is_store_url"]

OBJECT_STORE_SCHEMES = {
    "s3": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
    "memory": "fsspec",
}
"""URL schemes a store may use, and the package that implements each (fsspec's own ``memory://`` is for
tests and experiments)."""

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_store_url(location: str) -> bool:
    """Whether ``location`` is an object store URL rather than a directory (``s3://...`` is; ``./models``
    and ``C:\\models`` are not)."""
    match = _URL.match(location)
    return match is not None and match.group(1).lower() != "file"
