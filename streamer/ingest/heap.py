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
next ones. It is a process-wide allocator setting (it cannot be read back, so it is not
restored); calling it again with the same value changes nothing. Elsewhere than glibc it
does nothing and says so.
"""

from __future__ import annotations

import ctypes
import os
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


def check_keep_bytes(keep_bytes: int) -> None:
    """Refuse a value :func:`keep_freed_heap` cannot set, naming what is allowed."""
    if type(keep_bytes) is not int or not 0 <= keep_bytes <= MAX_KEEP_BYTES:
        raise ConfigError(
            f"heap_keep_bytes: expected an integer in 0..{MAX_KEEP_BYTES} "
            f"(0: leave the allocator alone), got {keep_bytes!r}"
        )


def keep_freed_heap(keep_bytes: int) -> str | None:
    """Keep up to ``keep_bytes`` of freed memory at the top of each glibc heap mapped.

    Returns None once set (or when ``keep_bytes`` is 0: nothing asked), else the reason
    it could not be (not glibc, ``mallopt`` refused), for a log line: the service works
    the same either way, only slower per message.
    """
    check_keep_bytes(keep_bytes)
    if keep_bytes == 0:
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


def c_library() -> str:
    """``glibc 2.36`` on glibc; a description of what else it is otherwise."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or "unknown"
    except (ValueError, OSError, AttributeError):  # not a GNU C library (or not POSIX)
        return "not GNU"
