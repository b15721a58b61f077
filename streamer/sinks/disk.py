"""Disk checks shared by the writers and the commands: free space, writability, reasons.

A full disk must give a clear error, never a half-written file. HDF5 is fragile there:
once a metadata write fails, closing the file can write a half-updated index over a good
file or crash the process. So the HDF5 writer refuses a band *before* writing it when the
filesystem has less free space than the band plus :data:`RESERVE_BYTES`, kept for the
file's own bookkeeping, the report and the final flags (see ``docs/reference/output.md``).
The commands call :func:`check_writable` at startup so that an output path that cannot be
written is reported before a scan is read or received.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from streamer.errors import SinkError

RESERVE_BYTES = 1 << 20
"""Free space never used for slices: room for the metadata, the report and the flags."""

_ERRNO_IN_TEXT = re.compile(r"errno = (\d+)")


def os_reason(error: BaseException) -> str:
    """One line saying why an I/O call failed: ``No space left on device (errno 28)``.

    h5py errors carry the errno either as an attribute or inside a multi-line message
    (``… errno = 28, error message = 'No space left on device' …``); both are found.
    """
    number = getattr(error, "errno", None)
    if not isinstance(number, int) or number <= 0:
        found = _ERRNO_IN_TEXT.search(str(error))
        number = int(found.group(1)) if found else None
    if number:
        reason = f"{os.strerror(number)} (errno {number})"
        filename = getattr(error, "filename", None)
        return f"{reason}: {filename}" if filename else reason
    return " ".join(str(error).split())[:300] or type(error).__name__


def free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem of ``folder``
    (``None`` if the filesystem does not say)."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    return int(stats.f_bavail) * int(stats.f_frsize)


def blocking_file(folder: Path) -> Path | None:
    """The existing non-folder on the way to ``folder`` (``a/file.txt`` for
    ``a/file.txt/b``), which makes the folder impossible to create; ``None`` if none."""
    for candidate in (folder, *folder.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def check_writable(target: Path, *, folder: bool = False, what: str = "output") -> None:
    """Make sure ``target`` can be written, before any work is done.

    ``target`` is a file (its folder must be writable) or, with ``folder=True``, a folder
    (a TIFF stack, the ``run`` service's output folder). Missing folders are created, as
    the writers would. A probe file is created and removed in the folder; the filesystem
    must have at least :data:`RESERVE_BYTES` free.

    Raises
    ------
    SinkError
        Naming ``what`` and the path: not a folder, not writable, read-only, no space.
    """
    target = Path(target)
    where = target if folder else target.parent
    if folder and target.exists() and not target.is_dir():
        raise SinkError(f"{target}: {what}: expected a folder, got an existing file")
    if not folder and target.is_dir():
        raise SinkError(f"{target}: {what}: expected a file path, got a folder")
    blocker = blocking_file(where)
    if blocker is not None:
        raise SinkError(
            f"{target}: {what}: cannot write in {where}: {blocker} is a file, not a folder"
        )
    try:
        where.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".tomo-streamer-probe-", dir=where)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise SinkError(f"{target}: {what}: cannot write in {where}: {os_reason(error)}") from None
    free = free_bytes(where)
    if free is not None and free < RESERVE_BYTES:
        raise SinkError(
            f"{target}: {what}: no space left on device in {where}: {free} bytes free, "
            f"expected at least {RESERVE_BYTES}"
        )
