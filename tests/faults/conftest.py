"""Fault-test helpers: a small filesystem the test fills, and line reading with timeouts."""

from __future__ import annotations

import queue
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

MountFactory = Callable[..., Path]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[MountFactory]:
    """Mount tmpfs filesystems of a given size (optionally read-only) under ``tmp_path``;
    skip with the reason where this machine does not allow mounting (needs root or
    CAP_SYS_ADMIN, as in a privileged container or CI runner)."""
    mounted: list[Path] = []

    def mount(size_kib: int, *, read_only: bool = False, name: str = "fs") -> Path:
        point = tmp_path / name
        point.mkdir()
        options = f"size={size_kib}k" + (",ro" if read_only else "")
        try:
            result = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                capture_output=True, text=True, timeout=30, check=False,
            )
        except FileNotFoundError:
            pytest.skip("no `mount` command here: cannot make a small filesystem to fill")
        if result.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here ({result.stderr.strip()}): "
                        "the disk-fault tests need root or CAP_SYS_ADMIN")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        done = subprocess.run(["umount", str(point)], capture_output=True, timeout=30,
                              check=False)
        if done.returncode != 0:  # still busy (a process that failed the test): detach
            subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=30,
                           check=False)


class Lines:
    """Lines of a subprocess pipe, read by a thread, taken with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, needle: str, timeout_s: float = 60.0) -> str:
        """The next line containing ``needle``; fails after ``timeout_s`` or at EOF."""
        while True:
            try:
                line = self._queue.get(timeout=timeout_s)
            except queue.Empty:
                raise AssertionError(
                    f"no line with {needle!r} within {timeout_s} s; saw {self.seen[-20:]}"
                ) from None
            if line is None:
                raise AssertionError(f"stream ended before {needle!r}; saw {self.seen[-20:]}")
            self.seen.append(line)
            if needle in line:
                return line

    def rest(self, timeout_s: float = 60.0) -> list[str]:
        """Every remaining line up to EOF."""
        while True:
            line = self._queue.get(timeout=timeout_s)
            if line is None:
                return self.seen
            self.seen.append(line)

    def close(self, timeout_s: float = 30.0) -> None:
        """After the process ended: wait for the reader to reach EOF, close the pipe."""
        self._thread.join(timeout_s)
        self._stream.close()
