"""HTTomo's image tail in the ``run`` service under ``mpiexec -n R`` for real: every rank
writes the images of its band with ``calculate_stats`` merged over MPI, into
``<out>/<scan>/images``; the folder equals ``recon``'s on one rank, file by file, and the
terminal says how many were written.

Run by tests/mpi/test_launch.py under ``mpiexec -n R``; every rank runs the same test.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zmq

from streamer.cli import main
from streamer.exchange.links import RankLink
from streamer.run.from_file import ReconSettings, run_recon
from streamer.sources.sender import SendOptions, send_scan
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.mpi.test_mpi_ingest import JOIN_S, link, shared_dir, source

__all__ = ["link", "shared_dir"]  # fixtures used by the tests below
pytestmark = pytest.mark.mpi

PIPELINE = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: fbp
    parameters: {filter_name: hann, center: 20.5}
  - method: calculate_stats
    id: statistics
    side_outputs: {glob_stats: glob_stats}
  - method: rescale_to_int
    parameters: {bits: 16, perc_range_min: 2.0, perc_range_max: 98.0,
                 glob_stats: "${{statistics.side_outputs.glob_stats}}"}
  - method: save_to_images
    parameters: {subfolder_name: images}
"""


def test_run_on_ranks_writes_the_images_of_one_rank(
        link: RankLink, shared_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = SimulationConfig.from_kwargs(rows=7, cols=40, projections=48, flats=4, darks=3,
                                          cor_px=20.5, seed=4)
    pipeline = shared_dir / "pipeline.yaml"
    if link.rank == 0:
        pipeline.write_text(PIPELINE)
    ready = threading.Event()
    thread = None

    def play(push: zmq.Socket[Any]) -> None:
        send_scan(push, SimulatedScan(config), SendOptions(scan_id="tail", block=3))

    if link.rank == 0:
        thread = source(shared_dir, link.size, ready, play)
        assert ready.wait(JOIN_S)
    link.comm.Barrier()
    address = (shared_dir / "address.txt").read_text()
    out = shared_dir / "volumes"
    code = main(["run", str(pipeline), "--from", address, "--out", str(out), "--scans", "1",
                 "--idle-timeout", "10", "--quiet"])
    if thread is not None:
        thread.join(JOIN_S)
        assert not thread.is_alive()
    assert code == 0
    link.comm.Barrier()
    if link.rank != 0:
        return
    folder = out / "tail" / "images"
    assert f"save_to_images: 7 TIFFs in {folder}" in capsys.readouterr().out
    one = run_recon(SimulatedScan(config), ReconSettings(output=shared_dir / "one" / "v.h5",
                                                         pipeline=pipeline))
    assert one.images is not None
    expected = sorted(one.images[0].glob("*.tif"))
    found = sorted(folder.glob("*.tif"))
    assert [path.name for path in found] == [path.name for path in expected]
    assert len(found) == 7
    for mine, theirs in zip(found, expected, strict=True):
        image = tifffile.imread(mine)
        assert image.dtype == np.uint16
        np.testing.assert_array_equal(image, tifffile.imread(theirs))
