"""``run`` under ``mpiexec`` with a pipeline that leaves the CoR to be found (launched by
``tests/mpi/test_launch.py``): the opposite pair of a 360° scan, measured by the rank
that owns the middle row, reaches every rank over MPI half-way through, every band
streams with it, and the final estimate at close agrees; the volume equals the batch
reconstruction at that CoR."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zmq

from streamer.cli import main
from streamer.exchange.links import RankLink
from streamer.run.from_file import ReconSettings, run_recon
from streamer.sources.sender import SendOptions, send_scan
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.mpi.test_mpi_ingest import JOIN_S, link, shared_dir, source

__all__ = ["link", "shared_dir"]  # fixtures used by the test below
pytestmark = pytest.mark.mpi

FOUND = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: fourier_fbp
    parameters: {}
"""


def test_run_on_ranks_streams_with_the_pair_of_a_360_scan(link: RankLink,
                                                          shared_dir: Path) -> None:
    config = SimulationConfig.from_kwargs(rows=7, cols=40, projections=160, flats=4,
                                          darks=3, cor_px=21.5, seed=3, scan_range_deg=360)
    pipeline = shared_dir / "found.yaml"
    ready = threading.Event()
    thread = None
    if link.rank == 0:
        pipeline.write_text(FOUND)

        def play(push: zmq.Socket[Any]) -> None:
            send_scan(push, SimulatedScan(config), SendOptions(scan_id="turn", block=8))

        thread = source(shared_dir, link.size, ready, play)
        assert ready.wait(JOIN_S)
    link.comm.Barrier()
    address = (shared_dir / "address.txt").read_text()
    out = shared_dir / "volumes"
    code = main(["run", str(pipeline), "--from", address, "--out", str(out), "--scans", "1",
                 "--idle-timeout", "10", "--quiet", "--block", "8"])
    if thread is not None:
        thread.join(JOIN_S)
        assert not thread.is_alive()
    assert code == 0
    link.comm.Barrier()
    if link.rank != 0:
        return
    center = json.loads((out / "turn.json").read_text())["center"]
    assert center["source"] == "pair" and center["streamed"] and not center["redone"], center
    assert abs(center["center"] - 21.5) < 0.3 and center["difference"] <= 0.5
    fixed = shared_dir / "fixed.yaml"
    fixed.write_text(FOUND.replace("{}", f"{{center: {center['center']!r}}}"))
    reference = run_recon(SimulatedScan(config), ReconSettings(
        output=shared_dir / "batch.h5", pipeline=fixed))
    with h5py.File(out / "turn.h5") as master, h5py.File(reference.output) as single:
        streamed = master["/entry/reconstruction/data"][()]
        expected = single["/entry/reconstruction/data"][()]
        assert float(master["/entry/process/center_of_rotation"][()]) == center["center"]
    error = np.linalg.norm(streamed - expected) / np.linalg.norm(expected)
    assert error < 1e-5, error
