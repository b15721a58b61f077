"""``run`` and ``recon`` into one OME-Zarr store on several MPI ranks for real: every
rank writes its own chunks of the store, rank 0 finishes the pyramid; no part files, no
master file.

Run by tests/mpi/test_launch.py under ``mpiexec -n R``; every rank runs the same test
(rank 0 also plays the source). The oracle is the one-rank batch path (``run_recon``) on
the same scan into HDF5.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zarr
import zmq

from streamer.cli import main
from streamer.exchange.links import RankLink
from streamer.run.from_file import ReconSettings, run_recon
from streamer.sinks.omezarr import read_written
from streamer.sources.formats import LoadOptions, open_scan, write_nxtomo
from streamer.sources.sender import SendOptions, send_scan
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.mpi.test_mpi_ingest import JOIN_S, link, shared_dir, source
from tests.sinks.ngff import validate_image
from tests.sinks.test_omezarr import mean_of_blocks

__all__ = ["link", "shared_dir"]  # fixtures used by the tests below
pytestmark = pytest.mark.mpi

PIPELINE = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: fbp
    parameters: {filter_name: hann}
"""


def check_store(store: Path, single: Path, rows: int) -> None:
    """Level 0 equals the one-rank HDF5 volume, each level the 2× mean of the one above."""
    group = zarr.open_group(store=str(store), mode="r")
    attributes = group.attrs["tomo_streamer"]
    assert attributes["complete"] is True, attributes.get("incomplete_reasons")
    assert attributes["detector_rows"] == list(range(rows))
    levels = [np.asarray(group[str(level)][:]) for level in range(attributes["levels"])]
    with h5py.File(single, "r") as one:
        expected = one["/entry/reconstruction/data"][()]
        assert attributes["center_of_rotation"] == float(
            one["/entry/process/center_of_rotation"][()])
    np.testing.assert_allclose(levels[0], expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
    for finer, coarser in itertools.pairwise(levels):
        np.testing.assert_allclose(coarser, mean_of_blocks(finer), rtol=1e-5,
                                   atol=1e-6 * np.abs(expected).max())
    assert all(read_written(store, level).all() for level in range(len(levels)))
    assert validate_image(store) == []


def test_run_on_ranks_writes_one_ome_zarr_store(link: RankLink, shared_dir: Path) -> None:
    config = SimulationConfig.from_kwargs(rows=13, cols=40, projections=72, flats=4, darks=3,
                                          cor_px=20.5, seed=5)
    scan = SimulatedScan(config)
    pipeline = shared_dir / "pipeline.yaml"
    if link.rank == 0:
        pipeline.write_text(PIPELINE)
    ready = threading.Event()
    thread = None

    def play(push: zmq.Socket[Any]) -> None:
        send_scan(push, scan, SendOptions(scan_id="zarr:ranks", block=3, order="shuffle",
                                          seed=2))

    if link.rank == 0:
        thread = source(shared_dir, link.size, ready, play)
        assert ready.wait(JOIN_S)
    link.comm.Barrier()
    address = (shared_dir / "address.txt").read_text()
    out = shared_dir / "stores"
    code = main(["run", str(pipeline), "--from", address, "--out", str(out), "--scans", "1",
                 "--idle-timeout", "10", "--quiet", "--output-format", "zarr",
                 "--sinogram-block", "2"])
    if thread is not None:
        thread.join(JOIN_S)
        assert not thread.is_alive()
    assert code == 0
    link.comm.Barrier()
    if link.rank != 0:
        return
    # the report and one store: no part files, no master file, no hidden leftovers
    assert sorted(p.name for p in out.iterdir()) == ["zarr_ranks.json", "zarr_ranks.ome.zarr"]
    single = run_recon(SimulatedScan(config), ReconSettings(
        output=shared_dir / "one-rank.h5", pipeline=pipeline)).output
    check_store(out / "zarr_ranks.ome.zarr", single, 13)


def test_recon_on_ranks_writes_one_ome_zarr_store(link: RankLink, shared_dir: Path) -> None:
    config = SimulationConfig.from_kwargs(rows=11, cols=36, projections=60, flats=3, darks=2,
                                          cor_px=17.0, seed=9)
    stored = shared_dir / "scan.nxs"
    pipeline = shared_dir / "pipeline.yaml"
    if link.rank == 0:
        write_nxtomo(stored, SimulatedScan(config))
        pipeline.write_text(PIPELINE)
    link.comm.Barrier()
    store = shared_dir / "ranks.ome.zarr"
    code = main(["recon", str(stored), "-o", str(store), "--pipeline", str(pipeline),
                 "--block", "7", "--sinogram-block", "3", "--quiet"])
    assert code == 0
    link.comm.Barrier()
    if link.rank != 0:
        return
    assert not list(shared_dir.glob("ranks.part*"))
    single = shared_dir / "single.h5"
    with open_scan(stored, LoadOptions()) as reader:
        run_recon(reader, ReconSettings(output=single, pipeline=pipeline))
    check_store(store, single, 11)
