"""The worker's own housekeeping, in process."""

from __future__ import annotations

import platform

from torchship.serving.workers.child import _allocator_trim


def test_freed_memory_can_be_returned_where_the_c_library_is_glibc() -> None:
    trim = _allocator_trim()
    if platform.libc_ver()[0] == "glibc":
        assert trim is not None
        trim()  # returns nothing, raises nothing
    else:
        assert trim is None
