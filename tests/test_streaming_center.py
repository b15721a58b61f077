"""The streaming CoR state machine: event sequences and their decisions (no I/O)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stages.registry import REGISTRY
from streamer.errors import StreamerError
from streamer.pipeline.config import parse_pipeline
from streamer.run.center_final import final_estimate_near
from streamer.run.center_streaming import (
    CenterMemory,
    CenterSource,
    Outcome,
    Start,
    StreamingCenter,
    sample_key,
)
from streamer.run.from_file import auto_center
from streamer.run.streaming import plan_streaming
from streamer.wire.protocol import StartHeader
from tests.test_pair_center import i13_scan


def test_given_centre_starts_at_once_and_is_kept_against_the_final_estimate() -> None:
    machine = StreamingCenter(tolerance=0.5, given=295.0, carried=290.0)
    assert machine.opened() == Start(295.0, CenterSource.GIVEN, restart=False)
    assert machine.pair_found(296.5) is None  # a person's choice is not replaced
    outcome = machine.closed(296.2)
    assert outcome.center == 295.0 and not outcome.redone and not outcome.at_close
    assert outcome.reason == (
        "kept the given CoR 295.00; the final estimate 296.20 differs by 1.20 px"
    )


def test_no_centre_waits_for_the_pair_then_final_agrees() -> None:
    machine = StreamingCenter(tolerance=0.5)
    assert machine.opened() is None
    assert machine.pair_found(85.66) == Start(85.66, CenterSource.PAIR, restart=False)
    assert machine.closed(85.5) == Outcome(85.66, CenterSource.PAIR, False, False, None)


def test_pair_estimate_off_by_more_than_the_tolerance_is_redone_at_close() -> None:
    machine = StreamingCenter(tolerance=0.5)
    machine.opened()
    machine.pair_found(295.9)
    outcome = machine.closed(295.0)
    assert outcome == Outcome(
        295.0, CenterSource.FINAL, True, True,
        "redone: the final CoR estimate 295.00 differs from the pair CoR 295.90 by 0.90 px "
        "(tolerance 0.5)",
    )
    report = json.loads(json.dumps(machine.report()))
    assert report["redone"] and report["estimates"] == {"pair": 295.9, "final": 295.0}


def test_carried_centre_is_replaced_by_a_disagreeing_pair() -> None:
    machine = StreamingCenter(tolerance=0.5, carried=12.0)
    assert machine.opened() == Start(12.0, CenterSource.CARRIED, restart=False)
    assert machine.pair_found(12.3) is None  # agrees: keep streaming
    assert machine.pair_found(13.0) == Start(13.0, CenterSource.PAIR, restart=True)
    assert machine.restarts == 1
    assert not machine.closed(12.9).redone


def test_viewer_wins_over_everything_and_restarts() -> None:
    machine = StreamingCenter(given=100.0)
    machine.opened()
    assert machine.viewer_set(101.5) == Start(101.5, CenterSource.VIEWER, restart=True)
    assert machine.viewer_set(101.5) is None  # unchanged: nothing to redo
    assert machine.pair_found(99.0) is None
    outcome = machine.closed(99.0)
    assert outcome.center == 101.5 and outcome.source is CenterSource.VIEWER
    assert not outcome.redone


def test_nothing_before_close_reconstructs_at_close() -> None:
    machine = StreamingCenter()
    assert machine.opened() is None
    outcome = machine.closed(64.25)
    assert outcome.at_close and not outcome.redone and outcome.center == 64.25


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda m: m.closed(None), "expected a centre .* got none"),
        (lambda m: m.pair_found(float("nan")), "pair: expected a finite column, got nan"),
    ],
)
def test_mistakes_refused(action: Callable[[StreamingCenter], object], message: str) -> None:
    machine = StreamingCenter()
    machine.opened()
    with pytest.raises(StreamerError, match=message):
        action(machine)


def test_closed_scan_refuses_events() -> None:
    machine = StreamingCenter(given=5.0)
    machine.opened()
    machine.closed(None)
    with pytest.raises(StreamerError, match="expected an open scan, got a closed one"):
        machine.viewer_set(6.0)


def test_bad_tolerance_refused() -> None:
    with pytest.raises(StreamerError, match="tolerance: expected a finite value >= 0, got -1"):
        StreamingCenter(tolerance=-1.0)


def test_memory_keeps_the_newest_samples() -> None:
    memory = CenterMemory(limit=2)
    memory.remember("tooth", 295.0)
    memory.remember("rod", 85.5)
    memory.remember("tooth", 295.5)  # refreshed: now the newest
    memory.remember("dendrite", 630.0)
    assert memory.recall("rod") is None
    assert memory.recall("tooth") == 295.5 and memory.recall("dendrite") == 630.0


def _start(**metadata: object) -> StartHeader:
    return StartHeader(scan="s", rows=4, cols=64, dtype="uint16", frames=14, projections=10,
                       flats=2, darks=2, normalisation="flat_dark", metadata=metadata)


def test_the_same_sample_is_the_start_headers_sample_entry_and_width() -> None:
    assert sample_key(_start(sample="mouse-3")) == "mouse-3 (64 columns)"
    assert sample_key(_start(sample=17)) == "17 (64 columns)"
    wider = _start(sample="mouse-3").model_copy(update={"cols": 128})
    assert sample_key(wider) != sample_key(_start(sample="mouse-3"))
    for unnamed in (_start(), _start(sample=""), _start(sample=True), _start(sample=1.5)):
        assert sample_key(unnamed) is None


def test_a_cor_left_to_be_found_streams_only_when_the_kept_blocks_fit_too() -> None:
    steps = parse_pipeline("pipeline:\n  - method: normalize\n    parameters: {}\n"
                           "  - method: fourier_fbp\n    parameters: {}\n", REGISTRY,
                           source="found.yaml").steps
    shape = {"rows": 8, "cols": 64, "projections": 120, "block_sinograms": 2}
    assert plan_streaming(steps, **shape, memory_left=2**30).section is None  # recon
    fits = plan_streaming(steps, **shape, memory_left=2**30, estimate_center=True)
    assert fits.section is not None and fits.section.center is None
    kept = 8 * 120 * 64 * 4  # the whole band, at most (a 180° scan's pair is at its end)
    assert fits.section.keep_limit == kept and "blocks kept until the CoR" in fits.reason
    refused = plan_streaming(steps, **shape, memory_left=fits.section.memory_bytes - 1,
                             estimate_center=True)
    assert refused.section is None
    assert "MiB of blocks kept until the CoR is known" in refused.reason
    assert plan_streaming(steps, **shape, memory_left=fits.section.memory_bytes - kept,
                          estimate_center=False).section is None


def test_final_estimate_near_an_estimate_equals_the_whole_search_on_i13(
        shared_data: Path) -> None:
    """The check near the CoR in use reads what the whole search reads (I13, Vo 85.5);
    an estimate 6 px off puts the near minimum on the window's edge: the whole range is
    searched."""
    projections, angles = i13_scan(shared_data / "real")
    stack = np.ascontiguousarray(projections[:, 67:68], dtype=np.float32)
    whole = auto_center(stack, angles)
    near, searched_all = final_estimate_near(stack, angles, 85.7, auto_center)
    assert not searched_all and near.center == pytest.approx(whole.center, abs=0.01)
    far, searched_all = final_estimate_near(stack, angles, 91.5, auto_center)
    assert searched_all and far.center == whole.center


@pytest.mark.parametrize(("scan", "row", "used"), [
    ("i13", 20, None), ("i13", 110, None), ("tooth", 0, 295.4), ("tooth", 1, 294.7)])
def test_final_estimate_near_reads_what_the_whole_search_reads_on_real_rows(
        shared_data: Path, scan: str, row: int, used: float | None) -> None:
    """The close's check near the CoR in use (± 4 px, the fine search ± 1 px) against the
    CoR policy's whole search, on I13 and tooth rows: the same centre (``used``: a
    streamed estimate a few tenths off the whole search's; None: 0.4 px off it)."""
    if scan == "i13":
        projections, angles = i13_scan(shared_data / "real")
    else:
        from tests.stages.test_center_policy import projections as real_projections

        projections, angles = real_projections(shared_data, "tooth")
    stack = np.ascontiguousarray(projections[:, row:row + 1], dtype=np.float32)
    whole = auto_center(stack, angles)
    near, searched_all = final_estimate_near(
        stack, angles, whole.center + 0.4 if used is None else used, auto_center)
    assert not searched_all
    assert near.center == whole.center


def test_an_early_estimate_starts_only_without_a_centre_and_the_pair_does_not_restart_it(
) -> None:
    machine = StreamingCenter()
    assert machine.opened() is None
    assert machine.early_found(33.4) == Start(33.4, CenterSource.EARLY, restart=False)
    assert machine.pair_found(35.0) is None  # settled at close, not restarted mid-scan
    assert machine.estimates == {"early": 33.4, "pair": 35.0}
    outcome = machine.closed(35.0)
    assert outcome.redone and outcome.source is CenterSource.FINAL and outcome.center == 35.0
    assert "differs from the early estimate CoR 33.40 by 1.60 px" in (outcome.reason or "")
    carried = StreamingCenter(carried=12.0)
    carried.opened()
    assert carried.early_found(12.9) is None and carried.source is CenterSource.CARRIED
    with pytest.raises(StreamerError, match="early: expected a finite column"):
        StreamingCenter().early_found(float("inf"))


def test_a_180_scan_with_the_cor_left_to_be_found_streams_with_early_estimates() -> None:
    steps = parse_pipeline("pipeline:\n  - method: normalize\n    parameters: {}\n"
                           "  - method: fourier_fbp\n    parameters: {}\n", REGISTRY,
                           source="found.yaml").steps
    shape = {"rows": 8, "cols": 64, "projections": 120, "block_sinograms": 2}
    at_close = plan_streaming(steps, **shape, memory_left=2**30, estimate_center=True,
                              scan_range_deg=180.0)
    assert at_close.section is None and "opposite pair comes with" in at_close.reason
    early = plan_streaming(steps, **shape, memory_left=2**30, estimate_center=True,
                           scan_range_deg=180.0, early_fraction=0.5)
    assert early.section is not None and early.section.keep_limit == 8 * 120 * 64 * 4
