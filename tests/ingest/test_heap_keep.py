"""The ingest service keeps freed receive buffers mapped (ADR 0031).

glibc trims freed memory at the top of a heap back to the kernel once more than its
trim threshold (by default about twice the largest buffer freed) is free there; the next
buffers of that size fault every page in again. Each check runs in a fresh interpreter,
because the allocator setting is process-wide and cannot be undone: a loop that holds
and frees 16 buffers of 512 KiB (as the receive queue does with 512² uint16 frames)
counts the minor page faults of its later rounds, with the allocator left alone, after
an :class:`IngestService` ran with and without the setting, and after one ran in an
environment that pins the allocator itself (``MALLOC_MMAP_THRESHOLD_``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streamer.errors import ConfigError
from streamer.ingest.heap import (
    MAX_KEEP_BYTES,
    PINNING_VARIABLES,
    c_library,
    keep_freed_heap,
    pinned_by_environment,
)
from streamer.ingest.service import IngestSettings
from tests.conftest import REPO

BUFFERS, BUFFER_BYTES, ROUNDS = 16, 512 * 1024, 8
PAGES_PER_ROUND = BUFFERS * BUFFER_BYTES // 4096

CHURN = f"""
import resource, sys, threading
import numpy as np
import zmq
from streamer.ingest.service import IngestService, IngestSettings

how = sys.argv[1]
if how.startswith("service"):
    stop = threading.Event()
    stop.set()  # run() sets the allocator up, then finds itself stopped
    keep = 0 if how == "service_off" else IngestSettings().heap_keep_bytes
    with zmq.Context() as context:
        pull = context.socket(zmq.PULL)
        IngestService(pull, IngestSettings(heap_keep_bytes=keep)).run(stop=stop)
        pull.close(linger=0)
faults = 0
for round_ in range({ROUNDS}):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    held = [np.ones({BUFFER_BYTES}, np.uint8) for _ in range({BUFFERS})]  # written: mapped
    del held
    if round_ > 0:  # the first round maps the heap whatever the setting
        faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(faults)
"""


def _faults_after(how: str, **environment: str) -> int:
    clean = {name: value for name, value in os.environ.items()
             if name not in PINNING_VARIABLES and name != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", CHURN, how], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=True, env={**clean, **environment})
    return int(done.stdout.strip())


@pytest.mark.skipif(not c_library().startswith("glibc "),
                    reason="the setting is glibc's (elsewhere it is a no-op)")
def test_freed_buffers_stay_mapped_once_the_service_ran() -> None:
    later_pages = (ROUNDS - 1) * PAGES_PER_ROUND
    # Left alone, glibc hands most of the freed buffers back and faults them in again.
    assert _faults_after("none") > later_pages // 2
    assert _faults_after("service_off") > later_pages // 2
    # Kept: the later rounds reuse mapped pages (a few faults for Python's own objects).
    assert _faults_after("service") < later_pages // 20
    # An allocator the environment pins is left as the user set it (here: trimming).
    assert _faults_after("service", MALLOC_MMAP_THRESHOLD_=str(2**20)) > later_pages // 2


@pytest.mark.parametrize("environment", [
    {"MALLOC_MMAP_THRESHOLD_": "1048576"},
    {"MALLOC_TRIM_THRESHOLD_": "0"},
    {"GLIBC_TUNABLES": "glibc.malloc.arena_max=1:glibc.malloc.top_pad=0"},
])
def test_an_allocator_pinned_by_the_environment_is_left_alone(
        environment: dict[str, str]) -> None:
    assert pinned_by_environment(environment)


def test_other_allocator_settings_do_not_pin_it() -> None:
    assert not pinned_by_environment({"MALLOC_ARENA_MAX": "1",
                                      "GLIBC_TUNABLES": "glibc.malloc.arena_max=1"})


@pytest.mark.parametrize("bad", [-1, MAX_KEEP_BYTES + 1, True, 1.5])
def test_heap_keep_bytes_is_checked(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"heap_keep_bytes: expected an integer in 0\.\.\d+"):
        IngestSettings(heap_keep_bytes=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="heap_keep_bytes"):
        keep_freed_heap(bad)  # type: ignore[arg-type]


def test_zero_leaves_the_allocator_alone() -> None:
    assert keep_freed_heap(0) is None
