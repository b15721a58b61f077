"""A protocol-valid scan with bad data ends that scan only; the service serves the next.

Every scan here is sent with raw pyzmq (headers packed with msgpack by hand, not with
``streamer.sources.sender``) to a running in-process service (``IngestService`` +
the runner on one rank in the background mode ``tomo-streamer run`` uses:
:func:`tests.run.ranks.one_rank`), followed by a
normal scan that must come back complete. Synchronisation is by queues with timeouts.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import msgpack
import numpy as np
import pytest
import zmq

from stages.registry import REGISTRY
from streamer.ingest.accounting import ScanReport
from streamer.ingest.service import IngestService, IngestSettings
from streamer.pipeline.config import parse_pipeline
from streamer.run.output import ScanOutput
from streamer.run.ranks import RankedReconstruction
from tests.run.ranks import one_rank

PIPELINE = "pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n  - method: fbp\n"
WAIT_S = 60.0
ROWS, COLS, PROJECTIONS, FLATS, DARKS = 4, 32, 48, 4, 2
BUDGET = 64 * 2**20


def start_header(scan: str, *, projections: int = PROJECTIONS, flats: int = FLATS,
                 darks: int = DARKS, normalisation: str = "flat_dark",
                 rows: int = ROWS, cols: int = COLS) -> bytes:
    return msgpack.packb({
        "v": 1, "type": "start", "scan": scan, "rows": rows, "cols": cols,
        "dtype": "uint16", "frames": projections + flats + darks,
        "projections": projections, "flats": flats, "darks": darks,
        "normalisation": normalisation})


def frames_parts(scan: str, first: int, keys: list[int], angles: list[float],
                 data: np.ndarray) -> list[bytes]:
    header = msgpack.packb({
        "v": 1, "type": "frames", "scan": scan, "first": first, "count": len(keys),
        "keys": keys, "angles": angles, "dtype": "uint16",
        "shape": [int(data.shape[1]), int(data.shape[2])]})
    return [header, np.ascontiguousarray(data, dtype="<u2").tobytes()]


def end_header(scan: str, sent: int) -> bytes:
    return msgpack.packb({"v": 1, "type": "end", "scan": scan, "sent": sent})


def phantom_scan(*, darks: int = DARKS, flats: int = FLATS, seed: int = 0
                 ) -> tuple[np.ndarray, list[int], list[float]]:
    """A disc absorbing in a flat field: darks 100, flats 4000, projections in between."""
    angles = np.linspace(0.0, 180.0, PROJECTIONS, endpoint=False)
    x = np.arange(COLS) - (COLS - 1) / 2
    thickness = 2 * np.sqrt(np.clip(10.0**2 - (x[None, :] - 4 * np.cos(
        np.radians(angles))[:, None]) ** 2, 0, None))
    rng = np.random.default_rng(seed)
    projections = 100 + 3900 * np.exp(-0.05 * thickness)
    projections = np.repeat(projections[:, None, :], ROWS, axis=1) + rng.normal(0, 5, (
        PROJECTIONS, ROWS, COLS))
    frames = np.concatenate([np.full((darks, ROWS, COLS), 100.0),
                             np.full((flats, ROWS, COLS), 4000.0), projections])
    keys = [2] * darks + [1] * flats + [0] * PROJECTIONS
    return frames.round().astype(np.uint16), keys, [0.0] * (darks + flats) + angles.tolist()


def send_scan(push: zmq.Socket[Any], scan: str, frames: np.ndarray, keys: list[int],
              angles: list[float], *, start: bytes | None = None, block: int = 9) -> None:
    push.send(start if start is not None else start_header(scan))
    for first in range(0, len(keys), block):
        last = min(first + block, len(keys))
        push.send_multipart(frames_parts(scan, first, keys[first:last], angles[first:last],
                                         frames[first:last]))
    push.send(end_header(scan, len(keys)))


@dataclass
class Service:
    push: zmq.Socket[Any]
    live: RankedReconstruction
    ingest: IngestService
    outputs: queue.Queue[ScanOutput]
    reports: queue.Queue[ScanReport]

    def next_output(self) -> ScanOutput:
        return self.outputs.get(timeout=WAIT_S)

    def next_report(self) -> ScanReport:
        return self.reports.get(timeout=WAIT_S)


@pytest.fixture
def service(loopback_pair: Any, tmp_path: Path) -> Iterator[Service]:
    steps = parse_pipeline(PIPELINE, REGISTRY, source="faults.yaml").steps
    outputs: queue.Queue[ScanOutput] = queue.Queue()
    reports: queue.Queue[ScanReport] = queue.Queue()
    runner = one_rank(steps, PIPELINE, tmp_path / "volumes", memory_bytes=BUDGET,
                      on_output=outputs.put, background=True)
    live = runner.ranked
    push, pull = loopback_pair()
    ingest = runner.service(pull, IngestSettings(idle_timeout_s=30), on_report=reports.put)
    stop = threading.Event()
    live.stop = stop
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            ingest.run(stop=stop)
        except BaseException as error:  # the test checks the service never died
            failures.append(error)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield Service(push, live, ingest, outputs, reports)
    finally:
        stop.set()
        thread.join(WAIT_S)
        live.wait(WAIT_S)
    assert not thread.is_alive()
    assert not failures, f"the service died: {failures[0]!r}"


def assert_next_scan_is_served(service: Service, scan: str = "good") -> None:
    frames, keys, angles = phantom_scan()
    send_scan(service.push, scan, frames, keys, angles)
    report = service.next_report()
    output = service.next_output()
    assert report.scan == scan and report.complete, report
    assert output.scan == scan and output.complete and output.error is None, output
    assert output.path is not None
    with h5py.File(output.path) as file:
        assert file["/entry"].attrs["complete"]
        volume = file["/entry/reconstruction/data"][...]
    assert volume.shape == (ROWS, COLS, COLS) and np.isfinite(volume).all()


def _bad_frames(case: str) -> tuple[np.ndarray, list[int], list[float]]:
    frames, keys, angles = phantom_scan()
    references = DARKS + FLATS
    if case == "closed_shutter":  # flats taken with the shutter closed: equal to darks
        frames[DARKS:references] = frames[:DARKS].mean(axis=0)
    elif case == "all_zero":
        frames[:] = 0
    elif case == "saturated":
        frames[:] = np.iinfo(np.uint16).max
    return frames, keys, angles


@pytest.mark.parametrize("case", ["closed_shutter", "all_zero", "saturated"])
def test_bad_data_fails_that_scan_only(service: Service, case: str) -> None:
    frames, keys, angles = _bad_frames(case)
    send_scan(service.push, case, frames, keys, angles)
    report = service.next_report()
    output = service.next_output()
    assert report.scan == case and report.status == "failed" and not report.complete
    assert report.failure is not None and "flat − dark > 0" in report.failure
    assert report.as_dict()["failure"] == report.failure
    # Every frame sent is in one bucket: received before the failure, rejected after it.
    handled = (sum(report.received.values()) + report.duplicate
               + report.total_rejected_frames)
    assert handled == len(keys)
    assert output.scan == case and not output.complete and output.path is None
    assert output.error is not None and "flat − dark > 0" in output.error
    assert_next_scan_is_served(service)


@pytest.mark.parametrize("normalisation", ["air", "none"])
def test_a_normalisation_the_pipeline_cannot_do_is_refused_at_start(
        service: Service, normalisation: str) -> None:
    frames, keys, angles = phantom_scan(darks=0, flats=0)
    send_scan(service.push, normalisation, frames, keys, angles,
              start=start_header(normalisation, flats=0, darks=0,
                                 normalisation=normalisation))
    report = service.next_report()
    output = service.next_output()
    assert report.status == "failed" and report.failure is not None
    assert "refused at its start" in report.failure and repr(normalisation) in report.failure
    # refused before any frame was held: every frame counted rejected, none received
    assert sum(report.received.values()) == 0
    assert report.rejected["scan_failed"]["frames"] == len(keys)
    assert output.path is None and output.error == report.failure
    assert_next_scan_is_served(service)


def test_a_scan_bigger_than_the_memory_budget_is_refused_at_start(service: Service) -> None:
    projections = 9_999_996 - FLATS - DARKS
    service.push.send(start_header("huge", projections=projections, rows=32, cols=32))
    service.push.send_multipart(frames_parts("huge", 0, [2, 2], [0.0, 0.0],
                                             np.zeros((2, 32, 32), np.uint16)))
    service.push.send(end_header("huge", 2))
    report = service.next_report()
    output = service.next_output()
    assert report.status == "failed" and report.failure is not None
    # the figures: what the scan needs, and the budget
    assert "sinogram buffer 32 rows x 9999990 projections x 32 columns" in report.failure
    needed = 32 * projections * 32 * 4 / 2**20  # float32 sinograms of every row
    assert f"{needed:,.1f} MiB" in report.failure and "budget is 64.0 MiB" in report.failure
    assert report.rejected["scan_failed"]["frames"] == 2 and sum(report.received.values()) == 0
    assert output.error == report.failure
    assert_next_scan_is_served(service)


def test_stop_during_a_reconstruction_writes_what_is_done_marked_incomplete(
        loopback_pair: Any, tmp_path: Path) -> None:
    """SIGINT/SIGTERM set the service's stop event: the reconstruction stops at the next
    block (here: right after the first block is written), the volume keeps the slices
    written and says complete = False and why."""
    steps = parse_pipeline(PIPELINE, REGISTRY, source="faults.yaml").steps
    stop = threading.Event()
    outputs: queue.Queue[ScanOutput] = queue.Queue()

    def after_block(scan: str, written: int, rows: int) -> None:
        stop.set()  # as the signal handler does, mid-reconstruction (after the 1st block)

    runner = one_rank(steps, PIPELINE, tmp_path, block_sinograms=1, memory_bytes=BUDGET,
                      on_output=outputs.put, background=True, stop=stop,
                      on_block=after_block)
    live = runner.ranked
    push, pull = loopback_pair()
    ingest = runner.service(pull, IngestSettings(idle_timeout_s=30))
    thread = threading.Thread(target=ingest.run, kwargs={"max_scans": 1})
    thread.start()
    frames, keys, angles = phantom_scan()
    send_scan(push, "interrupted", frames, keys, angles)
    thread.join(WAIT_S)
    assert not thread.is_alive() and live.wait(WAIT_S)
    output = outputs.get(timeout=WAIT_S)
    assert not output.complete and output.slices == 1 and output.path is not None
    assert output.error is not None and f"after 1 of {ROWS} slices" in output.error
    with h5py.File(output.path) as file:
        assert not file["/entry"].attrs["complete"]
        assert np.isfinite(file["/entry/reconstruction/data"][0]).all()
        report = json.loads(file["/entry/process/report"][()])
        # the report says why (one line per rank, as on R ranks)
        assert any("stopped by the service" in error
                   for error in report["reconstruction_errors"]), report
