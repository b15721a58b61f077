"""HTTomo's ``save_result: true`` under ``mpiexec -n R tomo-streamer recon`` for real: each
rank writes its parts, rank 0 the files over them (HDF5 virtual datasets), and each file
read through h5py equals the one-rank file; the run names each file once.

Run by tests/mpi/test_launch.py under ``mpiexec -n R``; every rank runs the same test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.cli import main
from streamer.exchange.links import RankLink
from streamer.run.from_file import ReconSettings, run_recon
from streamer.sources.formats import LoadOptions, open_scan
from tests.mpi.test_mpi_ingest import link, shared_dir
from tests.pipeline.test_intermediate import FULL, _saving
from tests.run.test_save_result_on_ranks import TOOTH_FILES, assert_same_result

__all__ = ["link", "shared_dir"]  # fixtures used by the test below
pytestmark = pytest.mark.mpi


def test_recon_with_save_result_on_ranks_equals_one_rank(
        link: RankLink, shared_dir: Path, shared_data: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    tooth = shared_data / "real/aps_tooth/tooth.h5"
    pipeline = shared_dir / "saving.yaml"
    if link.rank == 0:
        text = _saving((FULL / "FBP3d_tomobar.yaml").read_text())
        pipeline.write_text(text[:text.index("- method: calculate_stats")])
        (shared_dir / "ranks").mkdir()
        (shared_dir / "one").mkdir()
    link.comm.Barrier()
    assert main(["recon", str(tooth), "-o", str(shared_dir / "ranks" / "rec.h5"),
                 "--pipeline", str(pipeline), "--block", "16", "--quiet"]) == 0
    said = capsys.readouterr().err.splitlines()
    link.comm.Barrier()
    if link.rank != 0:
        assert not [line for line in said if line.startswith("save_result:")]
        return
    for name in TOOTH_FILES:
        assert said.count(f"save_result: {shared_dir / 'ranks' / name}") == 1
    with open_scan(tooth, LoadOptions()) as reader:
        run_recon(reader, ReconSettings(shared_dir / "one" / "rec.h5", pipeline=pipeline,
                                        block_frames=16))
    for name in TOOTH_FILES:
        assert_same_result(shared_dir / "one" / name, shared_dir / "ranks" / name)
