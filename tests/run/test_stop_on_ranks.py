"""SIGINT/SIGTERM during a reconstruction on R ranks (in-memory link, ranks in threads):
the rank whose ``stop`` is set stops between blocks and tells the others, which stop at
their next block; every part keeps what it wrote, marked incomplete, and rank 0's master
says incomplete and why.

Deterministic: rank 0's stop is set from its callback when both ranks have written their
first block; rank 1's first block then waits (bounded) until rank 0 has told it, so rank 1
stops at its second block because of rank 0's message, never because of timing."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import h5py
import numpy as np

from streamer.exchange.links import MemoryLink
from streamer.run.from_file import ReconSettings
from streamer.run.output import ScanOutput
from streamer.run.ranks import recon_on_ranks
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.run.ranks import run_ranks

CONFIG = SimulationConfig.from_kwargs(rows=16, cols=32, projections=30, cor_px=16.0)
PIPELINE = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: fbp
    parameters: {filter_name: hann}
"""
TOLD_TIMEOUT_S = 60.0


def test_a_stop_on_one_rank_stops_every_rank_and_marks_the_master_incomplete(
        tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    output = tmp_path / "ranks.h5"
    stops = [threading.Event(), threading.Event()]
    told = threading.Event()  # rank 0 has sent its stop to rank 1
    first = threading.Event()  # rank 1 has written its first block
    written: list[list[int]] = [[], []]

    def rank(link: MemoryLink) -> ScanOutput | None:
        me = link.rank

        def log(line: str) -> None:
            if me == 0 and "stopped by the service" in line:
                told.set()  # logged after the stop was sent to the others

        def on_block(scan: str, slices: int, rows: int) -> None:
            written[me].append(slices)
            if me == 0 and slices == 2:
                assert first.wait(TOLD_TIMEOUT_S), "rank 1 never wrote a block"
                stops[0].set()  # "Ctrl-C" on rank 0 once both wrote their first block
            if me == 1 and slices == 2:
                first.set()
                assert told.wait(TOLD_TIMEOUT_S), "rank 0 never told its stop"

        settings = ReconSettings(output, pipeline=pipeline, center=16.0, block_frames=8,
                                 block_sinograms=2)
        return recon_on_ranks(SimulatedScan(CONFIG), settings, link, log,
                              stop=stops[me], on_block=on_block)

    results = run_ranks(2, rank)
    result = results[0]
    assert result is not None and not result.complete
    assert result.error is not None
    assert "rank 0: stopped by the service (SIGINT/SIGTERM) after 2 of 8 slices" in result.error
    assert ("rank 1: stopped: rank 0 was stopped (SIGINT/SIGTERM) after 2 of 8 slices"
            in result.error)
    assert stops[1].is_set()  # rank 1's service stops too (the job ends on every rank)
    assert written == [[2], [2]]  # one block each, then the stop
    assert result.slices == 4
    with h5py.File(output) as file:
        assert not bool(file["/entry"].attrs["complete"])
        report = json.loads(file["/entry/process/report"][()])
        data = file["/entry/reconstruction/data"][...]
    assert any("stopped by the service" in e for e in report["reconstruction_errors"])
    # what was written is kept: each band's first block; the rest reads as NaN
    assert data.shape[0] == 16
    assert np.isfinite(data[[0, 1, 8, 9]]).all()
    assert np.isnan(data[[2, 7, 10, 15]]).all()
    for part in sorted(tmp_path.glob("ranks*.h5")):
        if part != output:
            with h5py.File(part) as file:
                assert not bool(file["/entry"].attrs["complete"])


AUTO_PIPELINE = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: fbp
    parameters: {filter_name: hann}
"""


def test_a_stop_before_the_cor_search_skips_it_on_every_rank(tmp_path: Path) -> None:
    """A stop already set when the scan closes: the rank that owns the CoR finder's row
    does not search (Vo's search takes seconds on a real scan), tells the others, and no
    rank writes a slice; nobody waits for a CoR that never comes."""
    pipeline = tmp_path / "auto.yaml"
    pipeline.write_text(AUTO_PIPELINE)
    output = tmp_path / "stopped.h5"
    stops = [threading.Event(), threading.Event()]
    stops[1].set()  # "Ctrl-C" on rank 1, which owns the middle row (8 of 16)
    written: list[int] = []

    def rank(link: MemoryLink) -> ScanOutput | None:
        settings = ReconSettings(output, pipeline=pipeline, block_frames=8,
                                 block_sinograms=2)
        return recon_on_ranks(SimulatedScan(CONFIG), settings, link, stop=stops[link.rank],
                              on_block=lambda scan, slices, rows: written.append(slices))

    results = run_ranks(2, rank)
    result = results[0]
    assert result is not None and not result.complete and result.path is None
    assert result.error is not None
    assert "rank 1: stopped by the service (SIGINT/SIGTERM) before the CoR search" in (
        result.error)
    assert written == []
    assert stops[0].is_set()  # rank 1 told rank 0


def test_a_stop_after_the_last_slice_leaves_the_volume_complete(tmp_path: Path) -> None:
    """A stop that comes once every slice of the band is written does not cut it: the
    volume is complete (it was marked INCOMPLETE "after 32 of 32 slices" when the stop
    came between the last block and the close)."""
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    output = tmp_path / "whole.h5"
    stop = threading.Event()

    def on_block(scan: str, slices: int, rows: int) -> None:
        if slices == CONFIG.rows:
            stop.set()  # "Ctrl-C" right after the last block

    def rank(link: MemoryLink) -> ScanOutput | None:
        settings = ReconSettings(output, pipeline=pipeline, center=16.0, block_frames=8,
                                 block_sinograms=2)
        return recon_on_ranks(SimulatedScan(CONFIG), settings, link, stop=stop,
                              on_block=on_block)

    result = run_ranks(1, rank)[0]
    assert stop.is_set()
    assert result is not None and result.complete, result
    with h5py.File(output) as file:
        assert bool(file["/entry"].attrs["complete"])
        assert np.isfinite(file["/entry/reconstruction/data"][...]).all()
