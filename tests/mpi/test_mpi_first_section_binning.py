"""Binning before the first reslice under ``mpiexec -n R`` for real (ADR 0029): every rank
works out the binned frame before the band exchange, the bands of the binned rows go
through MPI, and the volume equals the one-rank volume.

Run by tests/mpi/test_launch.py under ``mpiexec -n R``; every rank runs the same test.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest

from streamer.exchange.links import RankLink
from streamer.run.from_file import ReconSettings, run_recon
from streamer.run.ranks import recon_on_ranks
from streamer.sources.simulate import SimulatedScan
from tests.mpi.test_mpi_ingest import link, shared_dir
from tests.run.test_later_reslices_on_ranks import assert_same_volume
from tests.run.test_row_change_first_section_on_ranks import CASES, CONFIG

__all__ = ["link", "shared_dir"]  # fixtures used by the test below
pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("name", ["binning", "binning-halo"])
def test_recon_with_binning_first_on_ranks_equals_one_rank(
        link: RankLink, shared_dir: Path, name: str) -> None:
    text, _, shape = CASES[name]
    pipeline = shared_dir / "binning.yaml"
    if link.rank == 0:
        pipeline.write_text(text)
    link.comm.Barrier()
    out = shared_dir / "ranks.h5"
    recon_on_ranks(SimulatedScan(CONFIG), ReconSettings(out, pipeline=pipeline,
                                                        block_frames=3), link)
    link.comm.Barrier()
    if link.rank != 0:
        return
    single = shared_dir / "single.h5"
    run_recon(SimulatedScan(CONFIG), ReconSettings(single, pipeline=pipeline, block_frames=3))
    with h5py.File(out) as file:
        assert file["/entry/reconstruction/data"].shape == shape
    assert_same_volume(single, out)
