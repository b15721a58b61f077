"""Iterations of iterative stages on 1 and 2 ranks (in-memory link, ranks in threads): every
rank's events reach rank 0's listener, each rank's in order; a rank other than 0 hears only
its own; the output's summary and the report's per-method ``iterations`` (iterations and
final residual per band) count every band of every rank and agree with one rank's.

And ``run`` (the command, one rank): the summary line on stdout and the same
``iterations`` in the scan's JSON report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import pytest

from streamer.cli import main
from streamer.errors import ExchangeError
from streamer.exchange.links import MemoryLink
from streamer.pipeline.iterations import BandIteration
from streamer.run.from_file import ReconSettings
from streamer.run.output import ScanOutput
from streamer.run.rank_iterations import ScanIterations
from streamer.run.ranks import recon_on_ranks
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.conftest import start_consumer_cli
from tests.run.ranks import run_ranks

ROWS, ITERATIONS, BLOCK = 8, 3, 2
CONFIG = SimulationConfig.from_kwargs(rows=ROWS, cols=32, projections=40, cor_px=16.0)
PIPELINE = f"""\
pipeline:
  - method: normalize
    parameters: {{minus_log: true}}
  - method: sirt
    parameters: {{iterations: {ITERATIONS}, center: 16.0}}
"""
JOIN_S = 60.0


def _recon(tmp_path: Path, ranks: int) -> tuple[list[list[BandIteration]], ScanOutput]:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    heard: list[list[BandIteration]] = [[] for _ in range(ranks)]

    def rank(link: MemoryLink) -> ScanOutput | None:
        settings = ReconSettings(tmp_path / f"r{ranks}.h5", pipeline=pipeline,
                                 block_frames=8, block_sinograms=BLOCK)
        return recon_on_ranks(SimulatedScan(CONFIG), settings, link,
                              on_iteration=heard[link.rank].append)

    results = run_ranks(ranks, rank)
    output = results[0]
    assert output is not None and output.complete, output
    return heard, output


def _expected(rank: int, ranks: int) -> list[tuple[int, int, int, int, int]]:
    """(rank, band, bands, first row, done) of each iteration of ``rank``'s band, in order."""
    rows = ROWS // ranks
    bands = rows // BLOCK
    return [(rank, band, bands, rank * rows + band * BLOCK, done)
            for band in range(bands) for done in range(1, ITERATIONS + 1)]


def _key(event: BandIteration) -> tuple[int, int, int, int, int]:
    return (event.rank, event.band, event.bands, event.first, event.done)


@pytest.mark.parametrize("ranks", [1, 2])
def test_every_ranks_iterations_reach_rank_0_in_order(tmp_path: Path, ranks: int) -> None:
    heard, output = _recon(tmp_path, ranks)
    at_root = heard[0]
    assert len(at_root) == ranks * len(_expected(0, ranks))
    for rank in range(ranks):
        own = [_key(e) for e in at_root if e.rank == rank]
        assert own == _expected(rank, ranks)
        assert all(e.ranks == ranks and e.stage == "sirt" and e.total == ITERATIONS
                   for e in at_root)
    for rank in range(1, ranks):  # the others hear their own, the same events
        assert [_key(e) for e in heard[rank]] == _expected(rank, ranks)
        assert heard[rank] == [e for e in at_root if e.rank == rank]
    bands = ROWS // BLOCK
    assert output.iterations == (
        output.iterations[0],) and output.iterations[0].startswith(
        f"sirt: {ITERATIONS} iterations in each of {bands} bands ({bands * ITERATIONS}), "
        "final residual ")
    summary = output.figures["iterations"]["sirt"]
    assert summary["iterations"] == ITERATIONS and summary["bands"] == bands
    assert summary["iterations_run"] == bands * ITERATIONS and summary["stopped_short"] == []
    per_band = summary["per_band"]
    assert [b["rows"] for b in per_band] == [[f, f + BLOCK] for f in range(0, ROWS, BLOCK)]
    assert [b["rank"] for b in per_band] == [f * ranks // ROWS for f in range(0, ROWS, BLOCK)]
    assert all(b["done"] == ITERATIONS and 0 < b["final_residual"] < 1 for b in per_band)
    last = {e.first: e.residual for e in at_root if e.done == ITERATIONS}
    assert [b["final_residual"] for b in per_band] == [last[f] for f in range(0, ROWS, BLOCK)]
    with h5py.File(tmp_path / f"r{ranks}.h5") as file:  # the report stored with the volume
        stored = json.loads(file["/entry/process/report"][()])
    assert stored["iterations"] == output.figures["iterations"]


def test_two_ranks_report_the_residuals_of_one_rank(tmp_path: Path) -> None:
    """The bands are the same rows on 1 and 2 ranks, and each row is its own problem."""
    _, one = _recon(tmp_path, 1)
    _, two = _recon(tmp_path, 2)
    first = one.figures["iterations"]["sirt"]["per_band"]
    second = two.figures["iterations"]["sirt"]["per_band"]
    assert [b["rows"] for b in first] == [b["rows"] for b in second]
    for a, b in zip(first, second, strict=True):
        assert b["final_residual"] == pytest.approx(a["final_residual"], rel=1e-4)


def test_a_malformed_iteration_message_is_refused_with_its_sender() -> None:
    iterations = ScanIterations(1, 0, 2, send_to_root=lambda payload: None)
    good = BandIteration("sirt", 0, 2, 4, 6, 1, 3, 0.5, None, rank=1, ranks=2).as_message()
    iterations.peer(good, 1)
    assert iterations.log.iterations == 1
    with pytest.raises(ExchangeError, match="rank 1: iteration message: expected"):
        iterations.peer({**good, "done": "many"}, 1)
    with pytest.raises(ExchangeError, match="expected rank 2"):
        iterations.peer(good, 2)  # a rank speaking for another
    with pytest.raises(ExchangeError, match="0 < done <= total"):
        iterations.peer({**good, "done": 4}, 1)


@pytest.mark.parametrize("feed", [(), ("--feed", "tcp://127.0.0.1:*")],
                         ids=["runner", "live path"])
def test_run_prints_the_summary_and_writes_it_to_the_json_report(
        tmp_path: Path, python: str, cli_env: dict[str, str], feed: tuple[str, ...]) -> None:
    """``run`` (the one runner) and ``run --feed`` (the one-rank live path)."""
    pipeline = tmp_path / "sirt.yaml"
    pipeline.write_text(PIPELINE)
    out = tmp_path / "volumes"
    process, address = start_consumer_cli(
        python, cli_env, "run", str(pipeline), "--scans", "1", "--out", str(out),
        "--sinogram-block", str(BLOCK), *feed)
    try:
        assert main(["simulate", "--connect", address, "--rows", str(ROWS), "--cols", "32",
                     "--projections", "40", "--scan-id", "a"]) == 0
        stdout, stderr = process.communicate(timeout=JOIN_S)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    bands = ROWS // BLOCK
    assert f"  sirt: {ITERATIONS} iterations in each of {bands} bands" in stdout
    reports = [json.loads(p.read_text()) for p in out.glob("*.json")]
    found: list[dict[str, Any]] = [r["iterations"] for r in reports if "iterations" in r]
    assert len(found) == 1, reports
    sirt = found[0]["sirt"]
    assert sirt["iterations_run"] == bands * ITERATIONS
    assert [b["rows"] for b in sirt["per_band"]] == [[f, f + BLOCK] for f in range(0, ROWS, BLOCK)]
    assert all(0 < b["final_residual"] < 1 for b in sirt["per_band"])


def test_rank_0_shows_one_summed_line_for_all_ranks() -> None:
    """The terminal has one writer: events of 2 ranks make one line rewritten in place,
    never a line per rank."""
    import io

    from streamer.run.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    progress = Progress(out, "iterations", interval_s=0.0, clock=lambda: 0.0)
    progress.iteration(BandIteration("sirt", 0, 2, 0, 2, 1, 3, 0.5, None, rank=0, ranks=2))
    progress.iteration(BandIteration("sirt", 1, 2, 6, 8, 2, 3, 0.25, None, rank=1, ranks=2))
    progress.close()
    lines = [part.strip() for part in out.getvalue().split("\r") if part.strip()]
    assert lines == [
        "sirt on 2 ranks: 1/6 band iterations (17 %), 1/2 ranks heard, residual 0.5 (rank 0)",
        "sirt on 2 ranks: 6/12 band iterations (50 %), residual 0.25 (rank 1)",
    ]
    assert out.getvalue().count("\n") == 1
