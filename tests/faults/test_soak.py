"""Soak: 20 consecutive scans through one running ``tomo-streamer run`` process.

Memory, open files/sockets and threads of the service are read from ``/proc`` after
every scan (the service has written that scan's volume and report when it prints its
``volume:`` line). Identical scans (same seed) must give bit-identical volumes.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zmq

from streamer.sources.sender import SendOptions, send_scan
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.transport import Endpoint, open_socket
from tests.conftest import start_consumer_cli
from tests.faults.conftest import Lines

SCANS = 20
PIPELINE = "pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n  - method: fbp\n"
RSS_GROWTH = 0.05  # issue 8: RSS after scan 20 within 5 % of RSS after scan 2


def usage(pid: int) -> dict[str, int]:
    """Resident memory (KiB), open descriptors (files, sockets, pipes) and threads."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines()
               if line.startswith("VmRSS:"))
    return {"rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task"))}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
def test_twenty_scans_through_one_service_do_not_grow_or_differ(
    tmp_path: Path, python: str, cli_env: dict[str, str], context: zmq.Context[Any]
) -> None:
    out = tmp_path / "volumes"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    process, address = start_consumer_cli(
        python, cli_env, "run", str(pipeline), "--out", str(out), "--scans", str(SCANS),
        "--center", "31.5", "--idle-timeout", "30", "--quiet")
    assert process.stdout is not None and process.stderr is not None
    lines = Lines(process.stdout)
    push = open_socket(context, "push", Endpoint(address, bind=False), hwm=16,
                       send_timeout_ms=30_000)
    config = SimulationConfig(rows=64, cols=64, projections=60, flats=10, darks=5, seed=3)
    samples: list[dict[str, int]] = []
    began = time.perf_counter()
    try:
        for number in range(SCANS):
            send_scan(push, SimulatedScan(config), SendOptions(scan_id=f"soak-{number:02d}"))
            line = lines.wait_for("volume: ")
            assert "complete)" in line, line
            samples.append(usage(process.pid))
        process.wait(timeout=60)
    finally:
        push.close()
        process.kill()
        process.wait(timeout=60)
        lines.close()
        stderr = process.stderr.read()
        process.stderr.close()
    seconds = time.perf_counter() - began
    assert process.returncode == 0, stderr
    second, last = samples[1], samples[-1]
    rss = [s["rss_kib"] for s in samples]
    growth = last["rss_kib"] / second["rss_kib"] - 1
    print(f"soak: {SCANS} scans in {seconds:.1f} s; RSS after scan 2 {second['rss_kib']} KiB, "
          f"after scan {SCANS} {last['rss_kib']} KiB ({growth:+.2%}), min {min(rss)} max "
          f"{max(rss)}; fds {second['fds']} -> {last['fds']}; threads {second['threads']} -> "
          f"{last['threads']}")
    assert last["rss_kib"] <= second["rss_kib"] * (1 + RSS_GROWTH), rss
    assert last["fds"] <= second["fds"], samples
    assert last["threads"] <= second["threads"], samples
    volumes = []
    for number in range(SCANS):
        with h5py.File(out / f"soak-{number:02d}.h5", "r") as f:
            assert bool(f["entry"].attrs["complete"]) is True
            volumes.append(f["/entry/reconstruction/data"][...])
    assert volumes[0].shape == (64, 64, 64) and np.isfinite(volumes[0]).all()
    for number, volume in enumerate(volumes[1:], 1):
        np.testing.assert_array_equal(volume, volumes[0], err_msg=f"scan {number}")
