"""R-rank start-up and the output's existence: only rank 0 looks at the output name.

``recon``'s check that the output is new runs on every rank *before* MPI starts
(``RankLink.world()``); rank 0 writes its in-progress placeholder only when the scan
opens, after the two ``Comm.Dup`` of :func:`~streamer.run.ranks.recon_on_ranks`, which
no rank leaves before every rank has entered them (the new context is agreed by all). So
no rank's check can see rank 0's placeholder. ``run`` checks only that ``--out`` is a
writable folder, and the name is rank 0's alone (sent to the others). What this pins: a
rank that starts after rank 0's placeholder exists (in-process ranks, where ``duplicate``
does not synchronise) neither looks at the name nor refuses; it writes its part and the
master is complete."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import h5py
import pytest

from streamer.errors import SinkError
from streamer.exchange.links import MemoryLink
from streamer.run.from_file import ReconSettings
from streamer.run.output import ScanOutput
from streamer.run.ranks import recon_on_ranks
from streamer.sinks.registry import check_output
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.run.ranks import run_ranks

CONFIG = SimulationConfig.from_kwargs(rows=4, cols=32, projections=40, cor_px=15.5)
PIPELINE = "pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n" \
           "  - method: fbp\n    parameters: {center: 15.5}\n"
WAIT_S = 60.0  # a bound on the handshake below, not a timing


def test_a_rank_that_starts_after_rank_0s_placeholder_does_not_refuse(
        tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    output = tmp_path / "volume.h5"
    seen: list[bool] = []
    check_output(output, "hdf5", overwrite=False)  # what every rank checks at start-up

    def placeholder_written() -> bool:
        """Rank 0's in-progress master (readable: written to a temporary name, renamed)."""
        if not output.exists():
            return False
        with h5py.File(output, "r") as file:
            return file["/entry"].attrs.get("status") == "in progress"

    def rank(link: MemoryLink) -> ScanOutput | None:
        settings = ReconSettings(output, pipeline=pipeline, block_frames=8, overwrite=False)
        if link.rank == 1:  # the slow rank: starts once rank 0 has marked the output
            deadline = time.monotonic() + WAIT_S
            while not placeholder_written():
                assert time.monotonic() < deadline, "rank 0 wrote no placeholder"
                threading.Event().wait(0.01)
            seen.append(True)
            # the start-up check, were it made here, would refuse: it must not be
            with pytest.raises(SinkError, match="expected a new file, got an existing one"):
                check_output(output, "hdf5", overwrite=False)
        return recon_on_ranks(SimulatedScan(CONFIG), settings, link)

    results = run_ranks(2, rank)
    assert seen == [True] and results[1] is None
    assert results[0] is not None and results[0].complete, results[0]
    with h5py.File(output, "r") as file:
        assert bool(file["/entry"].attrs["complete"])
        assert file["/entry/reconstruction/data"].shape == (4, 32, 32)
