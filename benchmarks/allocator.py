"""Keep freed memory in the process (glibc malloc), as a caching allocator would, so that step times measure
training rather than page faults.

By default glibc serves every allocation above 32 MiB with a fresh ``mmap`` and returns it on ``free``: each
step of a 64M-parameter model then faults in about 770 MB of new pages (196K minor faults, half of its step
time on the benchmark machine), and on a virtual machine that cost wanders by +-10% from one model copy to
the next. ``mallopt(M_MMAP_MAX, 0)`` and a high ``M_TRIM_THRESHOLD`` make freed memory stay in the heap for
the next step, which is what jemalloc or tcmalloc (the allocators PyTorch's CPU performance guide suggests)
do anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> str | None:
    """Configure glibc's malloc as described above; returns a description, or None where it is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    if not (mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1))):
        return None
    return "glibc malloc keeping freed memory (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)"
