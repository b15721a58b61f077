"""Kernels across the block axis under ``mpiexec -n R`` for real (overlapping bands, ADR
0019's addendum): ``recon`` of our ``configs/standard.yaml`` and of HTTomo's
``FBP3d_tomobar`` (``remove_outlier3d`` first, as HTTomo's standard pipelines start)
on the I13 scan equals the one-rank volume, and so does a pipeline with a halo step in
each section of three reslices.

Run by tests/mpi/test_launch.py under ``mpiexec -n R``; every rank runs the same test.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from streamer.cli import main
from streamer.exchange.links import RankLink
from streamer.run.from_file import ReconSettings, run_recon
from streamer.sources.formats import LoadOptions, open_scan, write_nxtomo
from streamer.sources.simulate import SimulatedScan
from tests.mpi.test_mpi_ingest import link, shared_dir
from tests.pipeline.test_httomo_full_pipelines import FULL
from tests.run.test_finder_place_on_ranks import BEFORE_PAGANIN
from tests.run.test_halo_later_on_ranks import CONFIG as LATER_CONFIG
from tests.run.test_halo_later_on_ranks import PIPELINE as LATER
from tests.run.test_later_reslices_on_ranks import without_image_tail
from tests.run.test_whole_frame_tail_on_ranks import PAGANIN
from tests.test_recon_real import i13_options

__all__ = ["link", "shared_dir"]  # fixtures used by the tests below
pytestmark = pytest.mark.mpi

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["standard", "FBP3d_tomobar"])
def test_recon_with_halo_steps_on_ranks_equals_one_rank(link: RankLink, shared_dir: Path,
                                                        shared_data: Path, name: str) -> None:
    base = shared_data / "real/dls_i13_24737"
    options, args = i13_options(base, (0, 135))
    pipeline = shared_dir / f"{name}.yaml"
    if link.rank == 0:
        text = ((CONFIGS / "standard.yaml").read_text() if name == "standard"
                else without_image_tail((FULL / "FBP3d_tomobar.yaml").read_text()))
        pipeline.write_text(text)
    link.comm.Barrier()
    out = shared_dir / "ranks.h5"
    assert main(["recon", str(base / "tiffs"), "-o", str(out), "--pipeline", str(pipeline),
                 *args, "--quiet"]) == 0
    link.comm.Barrier()
    if link.rank != 0:
        return
    single = shared_dir / "single.h5"
    with open_scan(base / "tiffs", options) as reader:
        run_recon(reader, ReconSettings(output=single, pipeline=pipeline))
    with h5py.File(out, "r") as master, h5py.File(single, "r") as one:
        assert bool(master["/entry"].attrs["complete"])
        cor = "/entry/process/center_of_rotation"
        assert float(master[cor][()]) == float(one[cor][()])
        expected = one["/entry/reconstruction/data"][()]
        # standard.yaml (no halo step; fourier_fbp): on 3 ranks a few values differ by
        # ~1.3e-6 of the max, float32 rounding of other block sizes, hence 1e-5 there
        # as in the other R-rank tests (a missing neighbour differs by > 1e-3)
        tolerance = 1e-5 if name == "standard" else 1e-6
        np.testing.assert_allclose(master["/entry/reconstruction/data"][()], expected,
                                   rtol=0, atol=tolerance * np.abs(expected).max())


def test_halo_steps_in_every_section_of_three_reslices_over_mpi(link: RankLink,
                                                                shared_dir: Path) -> None:
    """The later reslices' overlapping parts (strided pieces through MPI datatypes): a
    halo step in each of the 4 sections (tests/run/test_halo_later_on_ranks.py) equals one
    rank under mpiexec too."""
    stored, pipeline = shared_dir / "scan.nxs", shared_dir / "later.yaml"
    if link.rank == 0:
        write_nxtomo(stored, SimulatedScan(LATER_CONFIG))
        pipeline.write_text(LATER)
    link.comm.Barrier()
    out = shared_dir / "ranks.h5"
    assert main(["recon", str(stored), "-o", str(out), "--pipeline", str(pipeline),
                 "--block", "4", "--quiet"]) == 0
    link.comm.Barrier()
    if link.rank != 0:
        return
    single = shared_dir / "single.h5"
    with open_scan(stored, LoadOptions()) as reader:
        run_recon(reader, ReconSettings(output=single, pipeline=pipeline, block_frames=4))
    with h5py.File(out, "r") as master, h5py.File(single, "r") as one:
        assert bool(master["/entry"].attrs["complete"])
        expected = one["/entry/reconstruction/data"][()]
        np.testing.assert_allclose(master["/entry/reconstruction/data"][()], expected,
                                   rtol=0, atol=1e-6 * np.abs(expected).max())


def _i13_on_ranks_and_one(link: RankLink, shared_dir: Path, shared_data: Path, text: str,
                          name: str) -> tuple[h5py.File, h5py.File] | None:
    """``recon`` of I13 rows 0–135 with the pipeline ``text`` on every rank, then (rank
    0) on one rank in-process: both files open for reading (None on the other ranks)."""
    base = shared_data / "real/dls_i13_24737"
    options, args = i13_options(base, (0, 135))
    pipeline = shared_dir / f"{name}.yaml"
    if link.rank == 0:
        pipeline.write_text(text)
    link.comm.Barrier()
    out = shared_dir / f"{name}-ranks.h5"
    assert main(["recon", str(base / "tiffs"), "-o", str(out), "--pipeline", str(pipeline),
                 *args, "--quiet"]) == 0
    link.comm.Barrier()
    if link.rank != 0:
        return None
    single = shared_dir / f"{name}-single.h5"
    with open_scan(base / "tiffs", options) as reader:
        run_recon(reader, ReconSettings(output=single, pipeline=pipeline))
    return h5py.File(out, "r"), h5py.File(single, "r")


def _assert_volumes_equal(master: h5py.File, one: h5py.File) -> None:
    assert bool(master["/entry"].attrs["complete"])
    expected = one["/entry/reconstruction/data"][()]
    np.testing.assert_allclose(master["/entry/reconstruction/data"][()], expected,
                               rtol=0, atol=1e-5 * np.abs(expected).max())


def test_whole_frame_step_after_a_halo_step_over_mpi(link: RankLink, shared_dir: Path,
                                                     shared_data: Path) -> None:
    """HTTomo's ``remove_outlier3d → normalize → minus_log → Paganin → FBP``: the Paganin
    filter after the halo step runs after a reslice to ranges of whole frames and back
    (tests/run/test_whole_frame_tail_on_ranks.py); under mpiexec it equals one rank."""
    files = _i13_on_ranks_and_one(link, shared_dir, shared_data, PAGANIN, "paganin")
    if files is None:
        return
    with files[0] as master, files[1] as one:
        _assert_volumes_equal(master, one)


def test_finder_before_a_paganin_filter_over_mpi(link: RankLink, shared_dir: Path,
                                                 shared_data: Path) -> None:
    """A CoR finder before a Paganin filter sees the data at its place under mpiexec
    too: its rows tapped from each rank's dealt frames and sent to the CoR owner (tag
    390; the in-process rank tests also run the once-refused halo → finder → Paganin:
    tests/run/test_finder_place_on_ranks.py): the CoR and the volume equal one rank's."""
    files = _i13_on_ranks_and_one(link, shared_dir, shared_data, BEFORE_PAGANIN, "finder")
    if files is None:
        return
    with files[0] as master, files[1] as one:
        cor = "/entry/process/center_of_rotation"
        assert float(master[cor][()]) == float(one[cor][()]) == 85.5
        _assert_volumes_equal(master, one)
