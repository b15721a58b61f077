"""On R ranks too, a scan with bad data ends alone: ``mpiexec -n 2 tomo-streamer run``
is sent (raw pyzmq) a closed-shutter scan, a scan too big for ``--memory``, a scan whose
``start`` says ``air``, then a normal scan, which comes back complete.

The ``mpi`` test runs under ``mpiexec`` (launched by the first test, like
``tests/mpi/test_launch.py``); every rank runs it, rank 0 also plays the source.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zmq

from tests.faults.test_bad_scan_service import (
    DARKS,
    FLATS,
    PIPELINE,
    end_header,
    frames_parts,
    phantom_scan,
    send_scan,
    start_header,
)

RANKS = 2


def test_bad_scans_on_two_ranks(tmp_path: Path) -> None:
    from tests.mpi.test_launch import launch  # the MPI launcher's helper

    launch(RANKS, tmp_path, Path(__file__).resolve())


def _play(push: zmq.Socket[Any]) -> None:
    frames, keys, angles = phantom_scan()
    shut = frames.copy()
    shut[DARKS:DARKS + FLATS] = shut[:DARKS].mean(axis=0)  # closed shutter
    send_scan(push, "shut", shut, keys, angles)
    projections = 9_999_996 - FLATS - DARKS
    push.send(start_header("huge", projections=projections, rows=32, cols=32))
    push.send_multipart(frames_parts("huge", 0, [2, 2], [0.0, 0.0],
                                     np.zeros((2, 32, 32), np.uint16)))
    push.send(end_header("huge", 2))
    air, air_keys, air_angles = phantom_scan(darks=0, flats=0)
    send_scan(push, "air", air, air_keys, air_angles,
              start=start_header("air", flats=0, darks=0, normalisation="air"))
    send_scan(push, "good", frames, keys, angles)


@pytest.mark.mpi
def test_each_bad_scan_ends_alone_and_the_next_is_served() -> None:
    from streamer.cli import main  # mpi4py only under mpiexec
    from streamer.exchange.links import RankLink
    from tests.mpi.test_mpi_ingest import JOIN_S, source

    link = RankLink.world()
    shared = Path(os.environ["TOMO_MPI_TMP"]) / "bad_scans"
    if link.rank == 0:
        shared.mkdir(parents=True, exist_ok=True)
        (shared / "pipeline.yaml").write_text(PIPELINE)
    link.comm.Barrier()
    ready = threading.Event()
    thread = source(shared, link.size, ready, _play) if link.rank == 0 else None
    if thread is not None:
        assert ready.wait(JOIN_S)
    link.comm.Barrier()
    out = shared / "volumes"
    code = main(["run", str(shared / "pipeline.yaml"), "--from",
                 (shared / "address.txt").read_text(), "--out", str(out), "--scans", "4",
                 "--idle-timeout", "10", "--memory", "0.0625", "--quiet"])
    if thread is not None:
        thread.join(JOIN_S)
        assert not thread.is_alive()
    link.comm.Barrier()
    # three scans failed; the service served all four. Every rank's status says a scan
    # was not complete (a launcher may report any rank's), not only rank 0's.
    assert code == 1
    if link.rank != 0:
        return
    reports = {name: json.loads((out / f"{name}.json").read_text())
               for name in ("shut", "huge", "air", "good")}
    assert reports["shut"]["status"] == "failed"
    assert "flat − dark > 0" in reports["shut"]["failure"]
    assert reports["huge"]["status"] == "failed"
    assert "refused at its start" in reports["huge"]["failure"]
    assert "budget is 64.0 MiB" in reports["huge"]["failure"]
    assert reports["air"]["status"] == "failed" and "'air'" in reports["air"]["failure"]
    assert reports["good"]["status"] == "complete"
    with h5py.File(out / "good.h5", "r") as master:
        assert bool(master["/entry"].attrs["complete"])
        assert np.isfinite(master["/entry/reconstruction/data"][()]).all()
