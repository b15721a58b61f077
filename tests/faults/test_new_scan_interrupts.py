"""A new scan's ``start`` interrupts the previous scan's reconstruction in progress
(``RankedReconstruction.interrupt_after_s``, issue 19) on the ``run`` service of one
rank: the interrupted volume keeps the slices written, is marked incomplete and says it
was interrupted and by which scan; the new scan is then served complete. With the
interruption off (``run``'s default, ADR 0024), or when the start comes after the last
block, the same order of events leaves both volumes complete.

Deterministic: the reconstruction of scan A pauses after its first (or last) block (its
``on_block`` waits, bounded) until the service has admitted B's start, which the test
sends only once that first block is written; no timing is asserted (the grace is 0 s
here, the order of events decides).
"""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import Any

import h5py
import pytest

from stages.registry import REGISTRY
from streamer.ingest.service import IngestSettings
from streamer.ingest.state import ScanOpened
from streamer.pipeline.config import parse_pipeline
from streamer.run.output import ScanOutput
from tests.faults.test_bad_scan_service import (
    BUDGET,
    PIPELINE,
    ROWS,
    WAIT_S,
    end_header,
    frames_parts,
    phantom_scan,
    start_header,
)
from tests.run.ranks import one_rank


@pytest.mark.parametrize(("interrupt", "pause_after"), [(True, 1), (False, 1), (True, ROWS)])
def test_a_new_scan_interrupts_the_reconstruction_in_progress(
        loopback_pair: Any, tmp_path: Path, interrupt: bool, pause_after: int) -> None:
    """``pause_after``: A's slices written when B's start is sent (all of them: A is
    complete, a band fully written is never cut)."""
    steps = parse_pipeline(PIPELINE, REGISTRY, source="interrupt.yaml").steps
    outputs: queue.Queue[ScanOutput] = queue.Queue()
    first_block = threading.Event()  # A's first block is written
    b_admitted = threading.Event()  # the service has taken B's start up
    events: list[str] = []  # the order things happened in

    def on_block(scan: str, written: int, rows: int) -> None:
        events.append(f"{scan}: {written} of {rows} written")
        if scan == "A" and written == pause_after:
            first_block.set()
            assert b_admitted.wait(WAIT_S), "B's start was never taken up"

    def on_output(output: ScanOutput) -> None:
        events.append(f"{output.scan}: output")
        outputs.put(output)

    stop = threading.Event()
    runner = one_rank(steps, PIPELINE, tmp_path, block_sinograms=1, memory_bytes=BUDGET,
                      on_output=on_output, background=True, stop=stop, on_block=on_block,
                      interrupt_after_s=0.0 if interrupt else None)
    ranked = runner.ranked

    def on_event(event: Any) -> None:
        ranked.on_event(event)
        if isinstance(event, ScanOpened) and event.start.scan == "B":
            events.append("B: started")
            b_admitted.set()

    push, pull = loopback_pair()
    service = runner.service(pull, IngestSettings(idle_timeout_s=30), on_event=on_event)
    thread = threading.Thread(target=service.run, kwargs={"max_scans": 2, "stop": stop})
    thread.start()
    try:
        frames, keys, angles = phantom_scan()
        push.send(start_header("A"))
        push.send_multipart(frames_parts("A", 0, keys, angles, frames))
        push.send(end_header("A", len(keys)))
        assert first_block.wait(WAIT_S), "A's reconstruction never reached the pause"
        push.send(start_header("B"))
        push.send_multipart(frames_parts("B", 0, keys, angles, frames))
        push.send(end_header("B", len(keys)))
        first, second = outputs.get(timeout=WAIT_S), outputs.get(timeout=WAIT_S)
    finally:
        thread.join(WAIT_S)
        stop.set()
    assert not thread.is_alive() and ranked.wait(WAIT_S)
    assert (first.scan, second.scan) == ("A", "B")
    assert second.complete and second.slices == ROWS
    assert first.path is not None
    if not interrupt or pause_after == ROWS:
        assert first.complete and first.slices == ROWS
        assert events.index("A: output") > events.index("B: started")
        return
    assert events[:3] == [f"A: 1 of {ROWS} written", "B: started", "A: output"]
    assert not first.complete and first.slices == 1
    assert first.error is not None
    assert f"interrupted: scan 'B' started after 1 of {ROWS} slices" in first.error
    with h5py.File(first.path) as file:
        assert not file["/entry"].attrs["complete"]
        report = json.loads(file["/entry/process/report"][()])
        assert any("interrupted: scan 'B' started" in error
                   for error in report["reconstruction_errors"]), report
