"""Senders stop at once on Ctrl-C or SIGTERM, even while no consumer takes messages, and
never claim to have sent a scan they did not finish.

The processes announce where they send (a line printed inside the signal handler's scope),
so a signal sent after that line is always seen; waits are bounded by timeouts, and no
assertion is on a duration."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import zmq

from streamer.errors import TransportError
from streamer.sources.sender import SendOptions, send_message, send_scan
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.transport import Endpoint, bound_address, open_socket

WAIT_S = 30  # far below the senders' 60 s send timeout, which a sender ignoring us would hit


def start_sender(python: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([python, "-m", "streamer.cli", *args], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stderr is not None
    for _ in range(5):  # the "scan:" line comes first, then where it sends
        line = process.stderr.readline()
        if line.startswith("sending on ") or not line:
            break
    if not line.startswith("sending on "):
        process.kill()
        process.wait(WAIT_S)
        pytest.fail(f"no 'sending on' line: {line!r}")
    return process


def stop_and_finish(process: subprocess.Popen[str], sig: int) -> tuple[int, str]:
    process.send_signal(sig)
    try:
        out, _err = process.communicate(timeout=WAIT_S)
    finally:
        process.kill()
        process.communicate()
    return process.returncode, out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_simulate_with_no_consumer_stops_on_a_signal(python: str, cli_env: dict[str, str],
                                                     sig: int) -> None:
    process = start_sender(python, cli_env, "simulate", "--bind", "tcp://127.0.0.1:*",
                           "--rows", "4", "--cols", "16", "--projections", "30")
    code, out = stop_and_finish(process, sig)
    assert code == 130, out
    assert re.search(r"STOPPED scan \S+ after 0 of 60 frames", out), out
    assert "sent scan" not in out


def test_simulate_blocked_by_a_consumer_that_stopped_reading_stops_on_sigterm(
    python: str, cli_env: dict[str, str], context: zmq.Context[Any]
) -> None:
    pull = open_socket(context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=1)
    try:
        # 1000 frames of 256x256 uint16 (128 MB): more than the queues and the kernel's
        # socket buffers hold, so the sender must block once we stop reading.
        process = start_sender(python, cli_env, "simulate", "--connect", bound_address(pull),
                               "--rows", "256", "--cols", "256", "--projections", "970",
                               "--block", "10", "--hwm", "1")
        for _ in range(3):  # the sender is streaming: start and two blocks arrived
            assert pull.poll(WAIT_S * 1000), "nothing arrived"
            pull.recv_multipart()
        code, out = stop_and_finish(process, signal.SIGTERM)
    finally:
        pull.close(linger=0)
    assert code == 130, out
    match = re.search(r"STOPPED scan \S+ after (\d+) of 1000 frames", out)
    assert match is not None, out
    assert 20 <= int(match.group(1)) < 1000
    assert "sent scan" not in out


def test_replay_of_a_capture_with_no_consumer_stops_on_sigint(
    python: str, cli_env: dict[str, str], tmp_path: Path, context: zmq.Context[Any]
) -> None:
    from streamer.sources.capture import record

    capture = tmp_path / "capture.h5"
    pull = open_socket(context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=64)
    push = open_socket(context, "push", Endpoint(bound_address(pull), bind=False), hwm=64,
                       send_timeout_ms=WAIT_S * 1000)
    scan = SimulatedScan(SimulationConfig.from_kwargs(rows=2, cols=8, projections=6,
                                                      flats=1, darks=1))
    try:
        send_scan(push, scan, SendOptions(block=2, scan_id="cap"))
        record(pull, capture, source="test", scans=1)
    finally:
        push.close(linger=0)
        pull.close(linger=0)
    process = start_sender(python, cli_env, "replay", str(capture), "--bind",
                           "tcp://127.0.0.1:*")
    code, out = stop_and_finish(process, signal.SIGINT)
    assert code == 130, out
    assert "STOPPED after replaying 0 messages" in out
    assert "replayed" not in out.replace("replaying", "")


def test_send_scan_with_stop_already_set_sends_nothing_and_says_stopped(
    context: zmq.Context[Any]
) -> None:
    push = open_socket(context, "push", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=1,
                       send_timeout_ms=60_000)
    stop = threading.Event()
    stop.set()
    try:
        scan = SimulatedScan(SimulationConfig.from_kwargs(rows=2, cols=8, projections=4))
        summary = send_scan(push, scan, SendOptions(scan_id="never"), stop=stop)
    finally:
        push.close(linger=0)
    assert summary.aborted and summary.stopped and not summary.abort_sent
    assert (summary.frames_sent, summary.messages_sent, summary.frames) == (0, 0, 34)


def test_send_message_still_times_out_without_a_consumer(context: zmq.Context[Any]) -> None:
    push = open_socket(context, "push", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=1,
                       send_timeout_ms=200)
    try:
        with pytest.raises(TransportError, match="no consumer took a message within 200 ms"):
            send_message(push, [b"x"], threading.Event())
    finally:
        push.close(linger=0)
