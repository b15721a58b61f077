"""Shared fixtures: ZeroMQ context and sockets that are always closed, data paths."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from streamer.wire.transport import Endpoint, bound_address, open_socket

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real scans of ../shared/data (skips where they are not present)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    """A private ZeroMQ context; fails the test if a socket was left open."""
    ctx: zmq.Context[Any] = zmq.Context()
    opened: list[zmq.Socket[Any]] = []
    original = ctx.socket

    def tracking_socket(*args: Any, **kwargs: Any) -> zmq.Socket[Any]:
        sock = original(*args, **kwargs)
        opened.append(sock)
        return sock

    ctx.socket = tracking_socket  # type: ignore[method-assign]
    yield ctx
    left_open = [sock for sock in opened if not sock.closed]
    for sock in left_open:
        sock.close(linger=0)
    ctx.term()
    assert not left_open, f"{len(left_open)} sockets were left open by the test"


PairFactory = Callable[..., tuple[zmq.Socket[Any], zmq.Socket[Any]]]


@pytest.fixture
def loopback_pair(context: zmq.Context[Any]) -> Iterator[PairFactory]:
    """Make (push, pull) sockets on a random loopback TCP port; closed after the test."""
    made: list[zmq.Socket[Any]] = []

    def make(hwm: int = 16, max_message_bytes: int | None = None) -> tuple[Any, Any]:
        pull = open_socket(
            context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=hwm,
            max_message_bytes=max_message_bytes,
        )
        push = open_socket(
            context, "push", Endpoint(bound_address(pull), bind=False), hwm=hwm,
            send_timeout_ms=10_000,
        )
        made.extend((push, pull))
        return push, pull

    yield make
    for sock in made:
        sock.close(linger=0)


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running ``python -m streamer.cli`` in a subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def python() -> str:
    return sys.executable


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``mpi`` tests run only under mpiexec (tests/mpi/test_launch.py starts them)."""
    from streamer.exchange.links import launched_with_ranks

    under_mpi = launched_with_ranks() > 1
    skip = pytest.mark.skip(reason="runs under mpiexec: see tests/mpi/test_launch.py")
    for item in items:
        if item.get_closest_marker("mpi") is not None and not under_mpi:
            item.add_marker(skip)


RANDOM_LOOPBACK = "tcp://127.0.0.1:*"


def start_consumer_cli(python: str, env: dict[str, str], *args: str) -> tuple[Any, str]:
    """Start ``tomo-streamer ingest|record --listen tcp://127.0.0.1:* …`` and return the
    process and the address it bound, read from its announcement line (a readiness
    handshake: the socket is bound once the line is printed)."""
    import re
    import subprocess

    process = subprocess.Popen(
        [python, "-m", "streamer.cli", *args, "--listen", RANDOM_LOOPBACK], env=env,
        text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    line = process.stderr.readline()  # bounded: the process prints it right after binding
    match = re.search(r"listening on (tcp://\S+);", line)
    if match is None:
        process.kill()
        rest = process.stderr.read()
        raise AssertionError(f"no address announced: {line!r} {rest[-2000:]!r}")
    return process, match.group(1)
