"""Keep freed receive buffers in the process instead of handing them back to the kernel.

libzmq's I/O thread allocates every received message of more than a few KiB with
``malloc`` (one buffer per message: a 512² uint16 frame is 512 KiB) and ingest frees it
once downstream has taken the frame. With glibc's default settings the heap *trims*:
when more than ``M_TRIM_THRESHOLD`` bytes are free at its top (dynamically twice the
largest buffer freed so far, about 1 MiB for 512 KiB frames) it returns them to the
kernel, and the next messages fault those pages in again — zeroed by the kernel, one 4 KiB
page at a time. Measured on the 2-core bench (``tools/bench_ingest.py``, 512² frames):
15–26 minor page faults per frame in the ingest receiver and 5–35 µs of its CPU per
frame; 350 per 8 MiB frame at 2048². With the threshold raised, none (ADR 0031).

:func:`keep_freed_heap` raises glibc's trim threshold to a set number of bytes and fixes
its mmap threshold at glibc's own dynamic maximum (32 MiB on 64-bit), so that buffers up
to that size come from the heap and at most ``keep_bytes`` per heap stay mapped for the
next ones. These are the values glibc adopts by itself once a 32 MiB block has been
freed; ingest of smaller frames never gets there. It is a process-wide allocator setting
(it cannot be read back, so it is not restored); calling it again with the same value
changes nothing. An allocator pinned through the environment (``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_`` or their
``GLIBC_TUNABLES`` names, e.g. to make RSS follow what the code holds, see
``docs/explanation/memory.md``) is left as it is. Elsewhere than glibc it does nothing
and says so.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from typing import Final

from streamer.errors import ConfigError

#: ``mallopt`` parameters (glibc ``malloc.h``).
M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
#: glibc's ``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit hosts: the ceiling its dynamic mmap
#: threshold reaches by itself, and the largest value ``mallopt`` takes for it.
MMAP_THRESHOLD_BYTES: Final = 32 * 1024**2
#: The default: the top 64 MiB of free heap stay mapped (16 frames of 4 MiB in flight).
DEFAULT_KEEP_BYTES: Final = 64 * 1024**2
#: ``mallopt`` takes a C ``int``.
MAX_KEEP_BYTES: Final = 2**31 - 1
#: Environment variables through which a user pins what :func:`keep_freed_heap` sets.
PINNING_VARIABLES: Final = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                            "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
PINNING_TUNABLES: Final = ("glibc.malloc.trim_threshold", "glibc.malloc.mmap_threshold",
                           "glibc.malloc.top_pad", "glibc.malloc.mmap_max")


def check_keep_bytes(keep_bytes: int) -> None:
    """Refuse a value :func:`keep_freed_heap` cannot set, naming what is allowed."""
    if type(keep_bytes) is not int or not 0 <= keep_bytes <= MAX_KEEP_BYTES:
        raise ConfigError(
            f"heap_keep_bytes: expected an integer in 0..{MAX_KEEP_BYTES} "
            f"(0: leave the allocator alone), got {keep_bytes!r}"
        )


def keep_freed_heap(keep_bytes: int) -> str | None:
    """Keep up to ``keep_bytes`` of freed memory at the top of each glibc heap mapped.

    Returns None once set, and when nothing is to be done (``keep_bytes`` 0, or the
    environment pins the allocator: the user's choice stands); else why it could not be
    set (not glibc, ``mallopt`` refused), for a log line: the service works the same
    either way, only with more CPU per message.
    """
    check_keep_bytes(keep_bytes)
    if keep_bytes == 0 or pinned_by_environment(os.environ):
        return None
    library = c_library()
    if not library.startswith("glibc "):
        return f"the C library is {library}, not glibc: freed heap is trimmed as usual"
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        return f"mallopt(M_MMAP_THRESHOLD, {MMAP_THRESHOLD_BYTES}) was refused"
    if not mallopt(M_TRIM_THRESHOLD, keep_bytes):
        return f"mallopt(M_TRIM_THRESHOLD, {keep_bytes}) was refused"
    return None


def pinned_by_environment(environment: Mapping[str, str]) -> bool:
    """The environment sets one of the allocator parameters :func:`keep_freed_heap` would."""
    tunables = environment.get("GLIBC_TUNABLES", "")
    return (any(name in environment for name in PINNING_VARIABLES)
            or any(name in tunables for name in PINNING_TUNABLES))


def c_library() -> str:
    """``glibc 2.36`` on glibc; a description of what else it is otherwise."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or "unknown"
    except (ValueError, OSError, AttributeError):  # not a GNU C library (or not POSIX)
        return "not GNU"
