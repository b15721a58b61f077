"""``recon`` on R ranks, a rank stopped (Ctrl-C) or unable to read its part of the file
(a frame with NaN pixels, refused by the reader): that rank's band fails, but it still
takes its part in the close, so rank 0 writes the master (incomplete, naming the rank and
why) and the job exits 1.

Before, a rank that could not read raised out of the reading loop: it printed its error
and never exited (MPI's finalize waited for the others), while rank 0 waited for its
references and part (120 s a step), and there was no master; on Ctrl-C every rank died of
the interrupt, leaving rank 0's placeholder. The in-process test runs the same rank logic
on 2 ranks over a memory link (always); the ``mpiexec -n 2`` tests launch the CLI
(skipped without mpiexec; not ``mpi``-marked tests: they launch mpiexec themselves).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import pytest

from streamer.errors import ScanFormatError
from streamer.exchange.links import MemoryLink
from streamer.run.from_file import ReconSettings
from streamer.run.ranks import recon_on_ranks
from streamer.sources.formats import open_scan
from streamer.sources.formats.nxtomo_writer import write_nxtomo
from streamer.sources.formats.options import LoadOptions
from streamer.sources.scan import ScanLayout
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.mpi.test_launch import mpiexec
from tests.run.ranks import run_ranks

RANKS, BLOCK = 2, 8
CONFIG = SimulationConfig(rows=4, cols=32, projections=40, flats=4, darks=2, seed=3)
REFS = CONFIG.flats + CONFIG.darks
PIPELINE = ("pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n"
            "  - method: fbp\n    parameters: {center: 15.5}\n")
#: A frame in a block each rank reads: blocks of 8 frames are dealt round-robin (block 0,
#: with the references, and block 2 to rank 0; block 1 to rank 1).
BAD_FRAME = {0: 2 * BLOCK + 1, 1: BLOCK + 1}


class WithNaN:
    """The simulated scan as float32, one pixel of frame ``bad`` NaN."""

    def __init__(self, bad: int) -> None:
        self.scan = SimulatedScan(CONFIG)
        self.bad = bad

    @property
    def layout(self) -> ScanLayout:
        return dataclasses.replace(self.scan.layout, dtype=np.dtype("float32"))

    def read(self, start: int, stop: int) -> npt.NDArray[Any]:
        data = self.scan.read(start, stop).astype(np.float32)
        if start <= self.bad < stop:
            data[self.bad - start, 0, 0] = np.nan
        return data

    def close(self) -> None:
        self.scan.close()


def _bad_file(tmp_path: Path, rank: int) -> tuple[Path, int]:
    frame = BAD_FRAME[rank]
    path = tmp_path / f"bad{rank}.nxs"
    write_nxtomo(path, WithNaN(frame))
    with open_scan(path, LoadOptions()) as reader, pytest.raises(ScanFormatError):
        reader.read(frame, frame + 1)  # the reader refuses that frame (the premise)
    return path, frame


def _check_master(master: Path, rank: int, frame: int) -> None:
    with h5py.File(master) as file:
        assert not bool(file["/entry"].attrs["complete"])
        report = json.loads(file["/entry/process/report"][()])
        (error,) = report["reconstruction_errors"]
        assert error.startswith(f"rank {rank}: ") and f"frame {frame} (projection)" in error
        data = file["/entry/reconstruction/data"][...]
        assert data.shape[0] == CONFIG.rows


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_that_cannot_read_its_part_still_closes_the_scan(tmp_path: Path,
                                                                rank: int) -> None:
    path, frame = _bad_file(tmp_path, rank)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE)
    master = tmp_path / "out.h5"

    def work(link: MemoryLink) -> Any:
        settings = ReconSettings(master, pipeline=pipeline, block_frames=BLOCK)
        with open_scan(path, LoadOptions()) as reader:
            return recon_on_ranks(reader, settings, link)

    output = run_ranks(RANKS, work)[0]
    assert output is not None and not output.complete
    assert output.error is not None and f"rank {rank}: " in output.error
    _check_master(master, rank, frame)


@pytest.mark.parametrize("rank", [0, 1])
def test_under_mpiexec_rank_0_writes_the_master_and_the_job_exits_1(
        tmp_path: Path, cli_env: dict[str, str], rank: int) -> None:
    launcher = mpiexec()
    if launcher is None:
        pytest.skip("mpiexec not found: pip install 'tomo-streamer[mpi]'")
    path, frame = _bad_file(tmp_path, rank)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE)
    master = tmp_path / "out.h5"
    result = subprocess.run(
        [launcher, "-n", str(RANKS), sys.executable, "-m", "streamer.cli", "recon", str(path),
         "-o", str(master), "--pipeline", str(pipeline), "--block", str(BLOCK), "--quiet"],
        env=cli_env, capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "BAD TERMINATION" not in output, output[-3000:]
    assert "INCOMPLETE, from 2 ranks" in result.stdout, output[-3000:]
    assert f"errors: rank {rank}: " in result.stderr, output[-3000:]
    _check_master(master, rank, frame)


def test_ctrl_c_under_mpiexec_recon_writes_the_master_of_what_was_done(
        tmp_path: Path, cli_env: dict[str, str]) -> None:
    """SIGINT to ``mpiexec -n 2 tomo-streamer recon`` once a rank reconstructs (the log
    line is the handshake): every rank stops between blocks and leaves with the others,
    so rank 0 writes the master (incomplete, each rank's stop in it) and the job exits 1.
    Before, each rank died of the interrupt and the master stayed rank 0's placeholder.
    The scan's size is the one of the ``run`` test (``test_stop_under_mpiexec.py``): a
    band takes several times the stop's latency, so no rank finishes before it."""
    launcher = mpiexec()
    if launcher is None:
        pytest.skip("mpiexec not found: pip install 'tomo-streamer[mpi]'")
    from tests.mpi.test_stop_under_mpiexec import COLS, PROJECTIONS, ROWS, WAIT_S

    path = tmp_path / "big.nxs"
    write_nxtomo(path, SimulatedScan(SimulationConfig(rows=ROWS, cols=COLS,
                                                      projections=PROJECTIONS, flats=4,
                                                      darks=2)))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE.replace("    parameters: {center: 15.5}\n", ""))
    master = tmp_path / "stopped.h5"
    job = subprocess.Popen(
        [launcher, "-n", str(RANKS), sys.executable, "-m", "streamer.cli", "recon", str(path),
         "-o", str(master), "--pipeline", str(pipeline), "--center", str((COLS - 1) / 2),
         "--sinogram-block", "1"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert job.stdout is not None
    seen: list[str] = []
    try:
        for line in job.stdout:  # bounded: the job ends by itself at the latest
            seen.append(line)
            if "first block written" in line:
                job.send_signal(signal.SIGINT)
                break
        seen.append(job.stdout.read())
        job.wait(timeout=WAIT_S)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(WAIT_S)
        job.stdout.close()
    output = "".join(seen)
    assert job.returncode == 1, output[-3000:]
    assert "BAD TERMINATION" not in output, output[-3000:]
    assert "INCOMPLETE, from 2 ranks" in output, output[-3000:]
    with h5py.File(master) as file:
        entry = file["/entry"]
        assert not bool(entry.attrs["complete"])
        assert 0 < int(entry.attrs["slices_written"]) < ROWS
        errors = json.loads(file["/entry/process/report"][()])["reconstruction_errors"]
        assert any("stopped" in error and "SIGINT/SIGTERM" in error for error in errors)
