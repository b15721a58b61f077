"""Repaired pixel values are counted on every rank and summed into the master's report.

Run by tests/mpi/test_launch.py under ``mpiexec -n R``; every rank runs the same test.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from streamer.cli import main
from streamer.exchange.links import RankLink
from streamer.run.from_file import ReconSettings, run_recon
from streamer.sources.formats import LoadOptions, open_scan, write_nxtomo
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.mpi.test_mpi_ingest import link, shared_dir

__all__ = ["link", "shared_dir"]  # fixtures used by the test below
pytestmark = pytest.mark.mpi

PIPELINE = ("pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n"
            "  - method: data_checker\n    parameters: {zeros_warning: true}\n"
            "  - method: fbp\n")
#: Dead (zero) pixels written into the projections: a dead column on 2 rows, and strays.
DEAD_COLUMN, DEAD_ROWS = 11, (3, 4)


def test_repairs_on_ranks_add_up_to_one_rank(link: RankLink, shared_dir: Path) -> None:
    config = SimulationConfig.from_kwargs(rows=8, cols=32, projections=48, flats=3, darks=2,
                                          seed=4)
    stored = shared_dir / "dead.nxs"
    pipeline = shared_dir / "pipeline.yaml"
    if link.rank == 0:
        write_nxtomo(stored, SimulatedScan(config))
        with h5py.File(stored, "r+") as file:
            data = file["/entry/instrument/detector/data"]
            first = config.darks + config.flats
            for row in DEAD_ROWS:
                data[first:, row, DEAD_COLUMN] = 0
            data[first + 7, 1, 5] = 0
        pipeline.write_text(PIPELINE)
    link.comm.Barrier()
    out = shared_dir / "ranks.h5"
    assert main(["recon", str(stored), "-o", str(out), "--pipeline", str(pipeline),
                 "--block", "5", "--quiet"]) == 0
    link.comm.Barrier()
    if link.rank != 0:
        return
    expected = config.projections * len(DEAD_ROWS) + 1
    single = shared_dir / "single.h5"
    with open_scan(stored, LoadOptions()) as reader:
        result = run_recon(reader, ReconSettings(output=single, pipeline=pipeline))
    assert result.repairs.counts == {"no_signal": expected}
    with h5py.File(out, "r") as master:
        report = json.loads(master["/entry/process/report"][()])
        volume = master["/entry/reconstruction/data"][()]
    assert report["repairs"]["counts"] == {"no_signal": expected}
    assert report["repairs"]["pixels"] == config.projections * config.rows * config.cols
    # data_checker's observations are summed over the ranks too
    assert report["repairs"]["observed"] == dict(sorted(result.repairs.observed.items()))
    assert report["repairs"]["observed"]["checked"] == report["repairs"]["pixels"]
    assert np.isfinite(volume).all()
