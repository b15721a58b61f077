"""Every command's documented example, run for real (small sizes, loopback/ipc only)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq

from streamer.cli import COMMANDS, build_parser, main
from streamer.sources.capture import read_capture
from streamer.sources.formats import open_scan
from streamer.wire.protocol import StartHeader, decode, decode_header
from streamer.wire.transport import Endpoint, bound_address, open_socket
from tests.conftest import start_consumer_cli

TIMEOUT_S = 120


def run_cli(python: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [python, "-m", "streamer.cli", *args], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    finally:
        process.kill()
    return process.returncode, out, err


# Sockets here are TCP on loopback with random ports, never ipc://: libzmq's ipc transport
# can drop messages still queued when a PUSH closes (libzmq issue #4660).


# One module per command, named as the command (streamer/cli/run.py is ``run``).
COMMAND_NAMES = sorted(module.__name__.rsplit(".", 1)[1] for module in COMMANDS)


@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_every_command_has_help_with_an_example(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "example" in text and f"tomo-streamer {command}" in text


def test_demo_prints_the_accounting_and_writes_a_complete_report(tmp_path: Path, capsys) -> None:
    code = main(["demo", "--projections", "45", "--rows", "8", "--cols", "48",
                 "--order", "shuffle", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "COMPLETE" in out and "projections" in out
    assert "corrected 45 projections as they arrived" in out
    error = float(out.split("phantom line integral| = ")[1].split()[0])
    assert error < 0.02  # Poisson noise of ~20000 counts: σ(-log) ≈ 0.01-0.02
    assert "reconstructed 8 slices (Fourier-domain FBP, CoR 23.50 found by Vo's method)" in out
    volume_error = float(out.split("error against the phantom: ")[1].split()[0])
    # N = 48 with 45 angles and Poisson noise; measured ≈ 0.2 (0.117 at the default
    # 128 × 180); a wrong CoR or orientation gives > 0.5
    assert volume_error < 0.35, volume_error
    assert (tmp_path / "demo.h5").exists()
    (report_path,) = tmp_path.glob("*.json")
    report = json.loads(report_path.read_text())
    assert report["complete"] and report["received"] == {"projections": 45, "flats": 20,
                                                         "darks": 10}
    assert str(report_path) in out


def test_simulate_save_then_replay_into_ingest(tmp_path: Path, python: str, cli_env) -> None:
    scan_file = tmp_path / "scan.nxs"
    assert main(["simulate", "--rows", "6", "--cols", "40", "--projections", "30",
                 "--flats-at", "start_end", "--save", str(scan_file)]) == 0
    with open_scan(scan_file) as reader:
        assert reader.layout.projections == 30 and reader.layout.flats == 20
    reports = tmp_path / "reports"
    ingest, address = start_consumer_cli(python, cli_env, "ingest", "--scans", "1",
                                         "--report-dir", str(reports))
    try:
        assert main(["replay", str(scan_file), "--connect", address, "--scan-id", "saved",
                     "--order", "interleave", "--block", "7"]) == 0
    finally:
        code, out, err = finish(ingest)
    assert code == 0, err
    report = json.loads((reports / "saved.json").read_text())
    assert report["status"] == "complete"
    assert report["received"] == {"projections": 30, "flats": 20, "darks": 10}
    assert "COMPLETE" in out


def test_ingest_exits_1_and_reports_missing_frames_when_the_source_aborts(
    tmp_path: Path, python: str, cli_env, context
) -> None:
    ingest, address = start_consumer_cli(python, cli_env, "ingest", "--scans", "1",
                                         "--report-dir", str(tmp_path), "--json")
    push = open_socket(context, "push", Endpoint(address, bind=False), hwm=4,
                       send_timeout_ms=60_000)
    try:
        start = StartHeader(scan="cut", rows=2, cols=3, dtype="uint8", frames=4,
                            projections=4, flats=0, darks=0, normalisation="air")
        from streamer.wire.protocol import AbortHeader, FramesHeader, encode_frames, encode_header

        push.send(encode_header(start))
        header = FramesHeader(scan="cut", first=0, count=2, keys=[0, 0], angles=[0.0, 1.0],
                              dtype="uint8", shape=(2, 3))
        push.send_multipart(encode_frames(header, np.ones((2, 2, 3), np.uint8)))
        push.send(encode_header(AbortHeader(scan="cut", reason="beam lost")))
    finally:
        code, out, err = finish(ingest)
        push.close(linger=0)
    assert code == 1, err
    report = json.loads(out)
    assert report["status"] == "aborted" and report["close_reason"] == "abort: beam lost"
    assert report["missing"]["projections"] == 2 and report["missing_ranges"] == [[2, 4]]


def test_record_then_replay_capture_is_byte_exact(
    tmp_path: Path, python: str, cli_env, context
) -> None:
    capture = tmp_path / "capture.h5"
    recorder, record_address = start_consumer_cli(python, cli_env, "record", "-o",
                                                  str(capture))
    try:
        assert main(["simulate", "--connect", record_address, "--rows", "4", "--cols", "16",
                     "--projections", "12", "--block", "5", "--scan-id", "rec"]) == 0
    finally:
        code, _out, err = finish(recorder)
    assert code == 0, err
    recorded = list(read_capture(capture))
    assert len(recorded) == 1 + 9 + 1  # start, ceil(42 / 5) blocks, end
    with h5py.File(capture) as file:
        assert file["capture"].attrs["complete"]
        assert np.all(np.diff(file["capture/arrival_s"][:]) >= 0)

    pull = open_socket(context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=64)
    replay_address = bound_address(pull)
    try:
        assert main(["replay", str(capture), "--connect", replay_address]) == 0
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        received = []
        while len(received) < len(recorded):
            assert poller.poll(TIMEOUT_S * 1000), "replayed capture stopped early"
            received.append(pull.recv_multipart())
    finally:
        pull.close(linger=0)
    assert [m.parts for m in recorded] == received
    assert isinstance(decode_header(received[0][0]), StartHeader)
    assert decode(received[1]).data.shape == (5, 4, 16)  # type: ignore[union-attr]


def test_replay_real_scan_into_ingest(shared_data: Path, tmp_path: Path, python: str,
                                      cli_env) -> None:
    ingest, address = start_consumer_cli(python, cli_env, "ingest", "--scans", "1",
                                         "--report-dir", str(tmp_path))
    try:
        assert main(["replay", str(shared_data / "real/aps_tooth/tooth.h5"), "--connect",
                     address, "--scan-id", "tooth", "--order", "shuffle"]) == 0
    finally:
        code, _out, err = finish(ingest)
    assert code == 0, err
    report = json.loads((tmp_path / "tooth.json").read_text())
    assert report["received"] == {"projections": 181, "flats": 10, "darks": 10}
    assert report["start"]["dtype"] == "float32" and report["start"]["cols"] == 640


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "/nonexistent/scan.h5"], "no such file"),
        (["simulate", "--rows", "0", "--save", "x.nxs"], "rows"),
        (["ingest", "--listen", "tcp://0.0.0.0:5999", "--scans", "1"], "non-loopback"),
        (["ingest", "--from", "http://x"], "expected tcp://"),
        (["ingest", "--max-frame-bytes", "0"], "max_frame_bytes"),
        (["ingest", "--listen", "tcp://[127.0.0.1]:5999", "--scans", "1"], "IPv6 address"),
        (["record", "--from", "tcp://[127.0.0.1]:5999", "-o", "x.h5"], "IPv6 address"),
        (["simulate", "--bind", "tcp://[127.0.0.1]:5999"], "IPv6 address"),
        (["simulate", "--connect", "tcp://[::1:5999"], "IPv6 address"),
        (["simulate", "--connect", "tcp://::1:5999"], "in brackets"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err
