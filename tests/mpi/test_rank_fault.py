"""A rank of ``mpiexec -n 3 tomo-streamer run`` is killed mid-scan.

The launcher (MPICH's hydra, from pip) ends the job: the test bounds how long that
takes, checks the exit status, that the launcher's message names the killed process
and our start-up line maps it to rank 1, that the scan completed before the fault is
intact and marked complete, and that the interrupted scan's master file is rank 0's
placeholder: it opens, names the scan and says incomplete (parts are written only when a
scan closes). Not an ``mpi``-marked test: it launches mpiexec itself.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import zmq

from streamer.sources.sender import SendOptions, send_scan, start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.protocol import FramesHeader, encode_frames, encode_header
from streamer.wire.transport import Endpoint, bound_address, open_socket
from tests.mpi.test_launch import mpiexec
from tests.mpi.test_mpi_ingest import wait_for_peers

RANKS = 3
JOIN_S = 60.0
END_WITHIN_S = 30.0
PIPELINE = "pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n  - method: fbp\n"


def descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.append(child)
            queue.append(child)
    return found


def rank_pid(launcher_pid: int, rank: int) -> int | None:
    for pid in descendants(launcher_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PMI_RANK={rank}".encode() in environ:
            return pid
    return None


def master_complete(path: Path) -> bool:
    """The master file exists and says complete (it replaces rank 0's placeholder)."""
    try:
        with h5py.File(path, "r") as handle:
            return bool(handle["/entry"].attrs["complete"])
    except (OSError, KeyError):
        return False


def test_killed_rank_ends_the_job_quickly_and_leaves_no_false_complete(tmp_path: Path,
                                                                       cli_env: dict[str, str]
                                                                       ) -> None:
    launcher = mpiexec()
    if launcher is None:
        pytest.skip("mpiexec not found: pip install 'tomo-streamer[mpi]'")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    out = tmp_path / "volumes"
    config = SimulationConfig.from_kwargs(rows=6, cols=32, projections=90, flats=3, darks=2)
    first, second = SimulatedScan(config), SimulatedScan(config)
    with zmq.Context() as context:
        push = open_socket(context, "push", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=4,
                           send_timeout_ms=int(JOIN_S * 1000), linger_ms=0)
        monitor = push.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        job = subprocess.Popen(
            [launcher, "-n", str(RANKS), sys.executable, "-m", "streamer.cli", "run",
             str(pipeline), "--from", bound_address(push), "--out", str(out),
             "--idle-timeout", "20"],  # not --quiet: the "scan …: plan:" lines are read below
            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            wait_for_peers(push, monitor, RANKS)
            send_scan(push, first, SendOptions(scan_id="before", block=5))
            deadline = time.monotonic() + JOIN_S
            while not master_complete(out / "before.h5"):  # rank 0 writes it last
                assert time.monotonic() < deadline, "the first scan was never written"
                assert job.poll() is None, job.communicate()[0]
                time.sleep(0.05)
            layout = second.layout
            push.send(encode_header(start_header(layout, "during")))
            for begin in range(0, 45, 5):
                header = FramesHeader(scan="during", first=begin, count=5,
                                      keys=layout.image_keys[begin:begin + 5].tolist(),
                                      angles=layout.angles_deg[begin:begin + 5].tolist(),
                                      dtype="uint16", shape=(6, 32))
                push.send_multipart(encode_frames(header, second.read(begin, begin + 5)))
            while not (out / "during.h5").exists():  # rank 0 opened the scan everywhere
                assert time.monotonic() < deadline + JOIN_S, "the second scan never opened"
                assert job.poll() is None, job.communicate()[0]
                time.sleep(0.05)
            victim = rank_pid(job.pid, 1)
            assert victim is not None, "rank 1's process not found"
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            output, _ = job.communicate(timeout=END_WITHIN_S)
            ended_after = time.monotonic() - killed_at
        finally:
            if job.poll() is None:
                job.kill()
                job.communicate()
            push.disable_monitor()
            monitor.close(linger=0)
            push.close()
    assert job.returncode != 0, output
    assert ended_after < END_WITHIN_S
    assert "BAD TERMINATION" in output and "Killed" in output, output[-3000:]
    # The last scan the job named before the launcher's message is the interrupted one.
    before_fault = output[:output.index("BAD TERMINATION")]
    assert before_fault.rfind("scan during:") > before_fault.rfind("scan before:") >= 0
    with h5py.File(out / "before.h5", "r") as volume:
        assert bool(volume["/entry"].attrs["complete"])
        assert volume["/entry/reconstruction/data"].shape == (6, 32, 32)
    # Every rank printed its pid at start, so the process the launcher names (the first
    # bad termination it saw: the killed rank, or one it killed while cleaning up) reads
    # as a rank.
    assert f"run: rank 1 is pid {victim}" in output
    pids = {int(m.group(2)): int(m.group(1))
            for m in re.finditer(r"run: rank (\d+) is pid (\d+)", output)}
    assert len(pids) == RANKS
    named = re.search(r"PID (\d+) RUNNING", output)
    assert named is not None and int(named.group(1)) in pids, output[-2000:]
    # The interrupted scan's master is rank 0's placeholder: it opens, names the scan and
    # says it is incomplete, and why; no part claims completeness.
    with h5py.File(out / "during.h5", "r") as master:
        entry = master["/entry"]
        assert entry.attrs["scan"] == "during" and not bool(entry.attrs["complete"])
        assert entry.attrs["status"] == "in progress"
        assert "the job ended before that" in entry.attrs["incomplete_reasons"]
        assert "reconstruction" not in entry
    for part in out.glob("during.part*.h5"):  # none expected; if any, never "complete"
        with h5py.File(part, "r") as handle:
            assert not bool(handle["/entry"].attrs["complete"])
