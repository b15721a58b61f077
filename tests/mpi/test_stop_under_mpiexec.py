"""Ctrl-C under a real ``mpiexec -n 2 tomo-streamer run`` while a scan is reconstructed.

MPICH's launcher (hydra, from pip) forwards SIGINT to the ranks. The test waits for the
log line that says a rank is reconstructing (written once its first block of slices is:
a handshake, not a sleep), sends
SIGINT to mpiexec, and checks that every rank stops within a generous bound, the job
exits non-zero, and the volume written so far opens and is marked incomplete, saying
why. Not an ``mpi``-marked test: it launches mpiexec itself (2 ranks: MPICH busy-polls,
so no more ranks than this machine's cores).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq

from streamer.sources.sender import SendOptions, send_scan
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.transport import Endpoint, bound_address, open_socket
from tests.faults.conftest import Lines
from tests.mpi.test_launch import mpiexec
from tests.mpi.test_mpi_ingest import wait_for_peers

RANKS = 2
WAIT_S = 120.0
STOP_WITHIN_S = 30.0
# 48 slices per rank, one per block: a rank's band takes several times the stop latency
# (1.3-4.1 s at load 5-10), so neither rank can finish its band before the stop reaches it
# (with 16 slices a loaded run once saw rank 0 finish first and say no "stopped")
ROWS, COLS, PROJECTIONS = 96, 512, 720
PIPELINE = "pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n  - method: fbp\n"


def test_ctrl_c_under_mpiexec_stops_every_rank_and_keeps_an_incomplete_volume(
        tmp_path: Path, cli_env: dict[str, str]) -> None:
    launcher = mpiexec()
    if launcher is None:
        pytest.skip("mpiexec not found: pip install 'tomo-streamer[mpi]'")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    out = tmp_path / "volumes"
    scan = SimulatedScan(SimulationConfig.from_kwargs(rows=ROWS, cols=COLS,
                                                      projections=PROJECTIONS, flats=4,
                                                      darks=2))
    with zmq.Context() as context:
        push = open_socket(context, "push", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=8,
                           send_timeout_ms=int(WAIT_S * 1000), linger_ms=0)
        monitor = push.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        job = subprocess.Popen(
            [launcher, "-n", str(RANKS), sys.executable, "-m", "streamer.cli", "run",
             str(pipeline), "--from", bound_address(push), "--out", str(out),
             "--center", str((COLS - 1) / 2), "--sinogram-block", "1"],
            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert job.stdout is not None
        lines = Lines(job.stdout)
        try:
            wait_for_peers(push, monitor, RANKS)
            send_scan(push, scan, SendOptions(scan_id="stopped", block=16))
            lines.wait_for("first block written", WAIT_S)
            signalled = time.monotonic()
            job.send_signal(signal.SIGINT)
            job.wait(timeout=STOP_WITHIN_S)
            stopped_after = time.monotonic() - signalled
            lines.rest(WAIT_S)
            lines.close()
        finally:
            if job.poll() is None:
                job.kill()
                job.wait(WAIT_S)
            push.disable_monitor()
            monitor.close(linger=0)
            push.close()
    output = "\n".join(lines.seen)
    print(f"stopped {stopped_after:.2f} s after SIGINT; exit {job.returncode}")
    print(output[-3000:])
    assert stopped_after < STOP_WITHIN_S
    assert job.returncode != 0, output[-3000:]
    assert "Sending Ctrl-C to processes" in output  # hydra forwarded it
    # every rank says it stopped (by the signal, or told by the rank that got it first)
    for rank in range(RANKS):
        assert f"rank {rank}: stopped" in output, output[-3000:]
    assert "INCOMPLETE" in output, output[-3000:]
    with h5py.File(out / "stopped.h5", "r") as master:
        entry = master["/entry"]
        assert not bool(entry.attrs["complete"])
        reasons = json.loads(entry.attrs["incomplete_reasons"])
        for rank in range(RANKS):
            assert any(r.startswith(f"rank {rank}: stopped") and "SIGINT/SIGTERM" in r
                       for r in reasons), reasons
        data = entry["reconstruction/data"]
        assert data.shape == (ROWS, COLS, COLS)
        written = [bool(np.isfinite(data[row]).all()) for row in range(ROWS)]
        assert 0 < int(entry.attrs["slices_written"]) == sum(written) < ROWS, written
    # each rank stopped part-way through its band (the one whose line was read after its
    # first block; the other may have had none yet)
    done = [int(k) for k in re.findall(rf"\(SIGINT/SIGTERM\) after (\d+) of {ROWS // RANKS} slices",
                                        output)]
    assert len(done) >= RANKS and all(k < ROWS // RANKS for k in done), done
