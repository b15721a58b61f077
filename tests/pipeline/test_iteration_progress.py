"""Progress per iteration in pipeline runs: every iteration of an iterative stage reaches
the run's listener, in order, per band, and the run's summary counts them."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from stages.registry import REGISTRY
from stages.spec import Iteration
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.executor import process_reader
from streamer.pipeline.iterations import BandIteration, IterationLog
from streamer.run.progress import Progress
from streamer.sources.sender import start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig

ROWS, COLS, ANGLES, ITERATIONS, BAND = 5, 32, 30, 4, 2


def _run(method_yaml: str) -> tuple[list[BandIteration], list[str]]:
    scan = SimulatedScan(SimulationConfig(rows=ROWS, cols=COLS, projections=ANGLES,
                                          flats=4, darks=2, seed=1))
    text = ("pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n"
            + method_yaml)
    steps = parse_pipeline(text, REGISTRY, source="test.yaml").steps
    events: list[BandIteration] = []
    processor = process_reader(steps, scan, start_header(scan.layout, "s"), block_frames=8,
                               block_sinograms=BAND, on_iteration=events.append)
    return events, processor.iterations.summary()


@pytest.mark.parametrize("method", ["sirt", "cgls", "fista", "osem"])
def test_every_iteration_of_every_band_is_reported_in_order(method: str) -> None:
    events, summary = _run(f"  - method: {method}\n    parameters: {{iterations: "
                           f"{ITERATIONS}, center: 15.5}}\n")
    bands = math.ceil(ROWS / BAND)
    assert [(e.stage, e.band, e.done, e.total) for e in events] == [
        (method, band, done, ITERATIONS)
        for band in range(bands) for done in range(1, ITERATIONS + 1)
    ]
    assert all(e.bands == bands for e in events)
    assert [(e.first, e.last) for e in events[::ITERATIONS]] == [(0, 2), (2, 4), (4, 5)]
    assert summary == [summary[0]] and summary[0].startswith(
        f"{method}: {ITERATIONS} iterations in each of {bands} bands ({bands * ITERATIONS})")
    if method in ("sirt", "cgls"):  # the data residual, free for these two
        for band in range(bands):
            residuals = [e.residual for e in events if e.band == band]
            assert all(r is not None and 0 < r < 1 for r in residuals)
            assert residuals[-1] < residuals[0]  # type: ignore[operator]
        assert "final residual" in summary[0]
    else:  # the relative update of the ordered-subset methods
        assert all(e.change is not None and e.change > 0 for e in events)
        assert "final change" in summary[0]


def test_a_pipeline_without_iterative_stages_reports_no_iteration() -> None:
    events, summary = _run("  - method: fourier_fbp\n    parameters: {center: 15.5}\n")
    assert events == [] and summary == []


def test_a_band_that_stopped_short_is_named_in_the_summary() -> None:
    log = IterationLog()
    tell = log.listener(0, 2, 0, 4)
    for done in (1, 2, 3):
        tell(parse_step("sirt"), Iteration(done, 3, residual=0.5 / done))
    tell = log.listener(1, 2, 4, 8)
    tell(parse_step("sirt"), Iteration(1, 3, residual=0.4))
    assert log.iterations == 4
    assert log.summary() == ["sirt: 3 iterations in each of 2 bands (4), final residual "
                             "0.1667 … 0.4; STOPPED SHORT in band(s) 2"]


def parse_step(method: str):  # type: ignore[no-untyped-def]
    return parse_pipeline(f"pipeline:\n  - method: {method}\n", REGISTRY,
                          source="test.yaml").steps[0]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_line_shows_iterations_and_starts_a_line_per_stage() -> None:
    out = Terminal()
    now = [0.0]
    progress = Progress(out, "reading", clock=lambda: now[0], interval_s=1.0)
    progress.update(10, 10)
    for done in (1, 2, 3):
        now[0] += 0.4  # iteration 2 comes too soon after 1; 3 is the band's last
        progress.iteration(BandIteration("sirt", 1, 3, 2, 4, done, 3, 0.25, None))
    progress.close()
    text = out.getvalue()
    assert text.startswith("\rreading: 10/10 frames (100 %)")
    lines = [part.strip() for part in text.split("\n")[1].split("\r") if part.strip()]
    assert lines == ["sirt band 2/3 (rows 2-3): iteration 1/3, residual 0.25",
                     "sirt band 2/3 (rows 2-3): iteration 3/3, residual 0.25"]
    assert text.endswith("\n")


def test_a_stage_called_directly_reports_through_the_same_record() -> None:
    """The stage contract: ``StageSpec.run(on_iteration=...)`` reaches the function."""
    from stages.recon.iterative import SirtParams

    spec = REGISTRY["sirt"]
    assert spec.reports_progress and not REGISTRY["fourier_fbp"].reports_progress
    angles = np.linspace(0.0, 180.0, 20, endpoint=False)
    seen: list[Iteration] = []
    spec.run(np.ones((1, 20, 16), dtype=np.float32), SirtParams(iterations=2),
             angles_deg=angles, on_iteration=seen.append)
    assert [(s.done, s.total) for s in seen] == [(1, 2), (2, 2)]
    assert seen[0].iterate.shape == (1, 16, 16)
