"""The peer gate: a listening consumer admits at most ``--max-peers`` connections, only
from ``--allow`` when given, and counts and logs every connection it refuses."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest
import zmq

from streamer.cli import main
from streamer.errors import ConfigError
from streamer.ingest.peers import PeerGate, PeerPolicy
from streamer.wire.transport import Endpoint, bound_address, open_socket
from tests.conftest import start_consumer_cli
from tests.faults.conftest import Lines
from tests.faults.test_bad_scan_service import phantom_scan, send_scan

WAIT_S = 60.0


def test_policy_parses_addresses_and_networks() -> None:
    policy = PeerPolicy.parse(2, ["10.1.0.0/16", "192.168.3.7", "fd00::/8"])
    assert policy.allow[1] == ipaddress.ip_network("192.168.3.7/32")
    assert policy.admits_address("10.1.200.3")
    assert policy.admits_address("::ffff:10.1.0.9")  # IPv4 seen through an IPv6 socket
    assert policy.admits_address("fd12::1")
    assert not policy.admits_address("10.2.0.1")
    assert not policy.admits_address("")  # ipc:// peers have no IP: refused with a list
    assert PeerPolicy.parse(1).admits_address("203.0.113.9")  # no list: any address
    with pytest.raises(ConfigError, match=r"--allow: expected an IP address.*'ten'"):
        PeerPolicy.parse(2, ["ten"])
    with pytest.raises(ConfigError, match="--max-peers: expected at least 1, got 0"):
        PeerPolicy.parse(0)


def test_a_peer_outside_the_allow_list_is_refused_before_anything_is_queued() -> None:
    context: zmq.Context[Any] = zmq.Context()
    gate = PeerGate(context, PeerPolicy.parse(4, ["10.0.0.0/8"]))
    pull = open_socket(context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=4,
                       prepare=gate.attach)
    push = open_socket(context, "push", Endpoint(bound_address(pull), bind=False), hwm=4)
    try:
        refusals: dict[str, int] = {}
        while not refusals:  # each wait bounded by the poll below
            assert not pull.poll(100), "nothing can arrive from a refused peer"
            refusals = gate.take_refusals()
        assert refusals == {"127.0.0.1 (address not allowed)": 1}
        assert gate.connected == 0
        assert not pull.poll(200)
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        gate.close()
        context.term()


def test_a_second_gate_in_one_context_is_a_clear_error() -> None:
    context: zmq.Context[Any] = zmq.Context()
    first = PeerGate(context, PeerPolicy())
    pull = open_socket(context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=4,
                       prepare=first.attach)
    try:
        with pytest.raises(Exception, match="one listening consumer per ZeroMQ context"):
            open_socket(context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=4,
                        prepare=PeerGate(context, PeerPolicy()).attach)
    finally:
        pull.close(linger=0)
        first.close()
        context.term()


@pytest.mark.parametrize(("argv", "needle"), [
    (["--listen", "tcp://127.0.0.1:*", "--allow", "ten"], "--allow: expected an IP address"),
    (["--from", "tcp://127.0.0.1:5999", "--allow", "10.0.0.1"], "--allow: only with --listen"),
    (["--listen", "tcp://127.0.0.1:*", "--max-peers", "0"], "--max-peers: expected at least 1"),
])
def test_bad_peer_options_are_one_line(argv: list[str], needle: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "--scans", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err


def test_ingest_listen_refuses_the_peer_beyond_max_peers_and_reports_it(
        tmp_path: Path, python: str, cli_env: dict[str, str]) -> None:
    """``ingest --listen --max-peers 1``: of two raw pyzmq sources, one is refused (a log
    line, ``peer_refused`` in the report); the admitted one's scan comes in complete."""
    ingest, address = start_consumer_cli(python, cli_env, "ingest", "--scans", "1",
                                         "--max-peers", "1", "--json",
                                         "--report-dir", str(tmp_path))
    assert ingest.stderr is not None
    lines = Lines(ingest.stderr)
    context: zmq.Context[Any] = zmq.Context()
    peers = [open_socket(context, "push", Endpoint(address, bind=False), hwm=64,
                         send_timeout_ms=int(WAIT_S * 1000)) for _ in range(2)]
    try:
        line = lines.wait_for("refused", WAIT_S)
        # one attempt, or more if the refused peer retried before the line was written
        assert re.search(r"refused \d+ connection attempt\(s\) from 127\.0\.0\.1 \(too "
                         r"many peers\); 1 of --max-peers 1 connected", line), line
        frames, keys, angles = phantom_scan()
        for number, peer in enumerate(peers):  # the refused one's stay on its side
            send_scan(peer, f"scan{number}", frames, keys, angles)
        out, _ = ingest.communicate(timeout=WAIT_S)
    finally:
        ingest.kill()
        for peer in peers:
            peer.close(linger=0)
        context.term()
        lines.close()
    assert ingest.returncode == 0, lines.seen
    report = json.loads(out)
    assert report["status"] == "complete"
    refused = report["rejected_outside_scans"]["peer_refused"]
    assert refused["messages"] >= 1 and refused["frames"] == 0, refused
