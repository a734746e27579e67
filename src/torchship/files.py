"""Writing a file so that a reader sees the old content or the new, never part of one, even after a crash.

    atomic_write(package / "config.json", json.dumps(config))     # str is written as UTF-8
    atomic_write(key_file, text, mode=0o600)                      # owner-only from the moment it exists
    with atomic_path(package / "model.safetensors") as temporary:  # for writers that take a file name
        save_file(tensors, str(temporary))

The content goes to a temporary file in the same directory (a rename across file systems would be a
copy), is flushed to disk, and is renamed over the target with ``os.replace``; then the directory is
flushed so that the rename itself survives a crash. On any error the temporary file is removed and the
target keeps its old content.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write", "fsync_directory"]


def atomic_write(path: str | Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically; the file has ``mode`` before its first byte is written."""
    content = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path, mode=mode) as temporary, temporary.open("r+b") as file:
        file.write(content)


@contextmanager
def atomic_path(path: str | Path, *, mode: int = 0o644) -> Iterator[Path]:
    """A temporary file next to ``path`` (already created, with ``mode``) to write into; on a normal exit
    it is flushed to disk and renamed over ``path``, on an error it is removed.

    A writer may also replace the temporary file (safetensors' ``save_file`` does): ``mode`` is set again
    before the rename. Owner-only content belongs in :func:`atomic_write`, whose file never has another mode.
    """
    target = Path(path)
    descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        try:
            os.fchmod(descriptor, mode)  # mkstemp makes it 0600; a wider mode is set before any content
        finally:
            os.close(descriptor)
        yield temporary
        os.chmod(temporary, mode)
        _fsync_file(temporary)
        os.replace(temporary, target)  # replaces a link at ``path`` itself, never what it points to
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)


def fsync_directory(path: str | Path) -> None:
    """Flush a directory's entries to disk: what makes a rename or a new file in it survive a crash."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as file:
        os.fsync(file.fileno())
