"""Overload: a source faster than the pipeline.

By default the source is held back (backpressure; see test_streaming.py). A detector
that cannot wait (``SendOptions.cannot_wait`` / ``--cannot-wait``) drops what the
consumer cannot take at once: the sender counts and names the dropped frames, and the
consumer's report lists exactly those as missing — never silent.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from stages.registry import REGISTRY
from streamer.ingest.service import IngestSettings
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.plan import block_sizes, default_budget_bytes
from streamer.sources.memory import ArrayScan
from streamer.sources.sender import SendOptions, SendSummary, send_scan
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.transport import Endpoint, bound_address, open_socket
from tests.conftest import start_consumer_cli
from tests.ingest.test_streaming import JOIN_S, Collector, make_scan, only_report, running_ingest


class LastReadSignal:
    """Wraps a scan; sets ``done`` when the sender reads its last block."""

    def __init__(self, scan: ArrayScan) -> None:
        self.scan = scan
        self.layout = scan.layout
        self.done = threading.Event()

    def read(self, first: int, stop: int) -> Any:
        if stop == self.layout.frames:
            self.done.set()
        return self.scan.read(first, stop)

    def close(self) -> None:
        self.scan.close()


def test_cannot_wait_source_drops_are_counted_and_reported_missing(loopback_pair) -> None:
    push, pull = loopback_pair(hwm=2)
    scan = make_scan(projections=400, rows=64, cols=256)  # 32 KiB frames, 13 MB in all
    source = LastReadSignal(scan)
    collector = Collector()
    collector.hold.set()  # downstream stalled for the whole acquisition
    settings = IngestSettings(store_bytes=256 * 1024, poll_ms=20)
    summaries: list[SendSummary] = []

    def send() -> None:
        summaries.append(send_scan(push, source, SendOptions(block=4, scan_id="drops",
                                                             cannot_wait=True)))

    with running_ingest(pull, settings, drain=collector) as service:
        sender = threading.Thread(target=send)
        sender.start()
        # The detector never waits for frames: it reaches its last block while ingest
        # is still stalled (only `end` is waited for).
        assert source.done.wait(JOIN_S)
        collector.hold.clear()
        sender.join(JOIN_S)
        assert not sender.is_alive()
    summary = summaries[0]
    report = only_report(service)
    frames = scan.layout.frames
    assert 0 < summary.frames_dropped < frames
    assert summary.frames_sent + summary.frames_dropped == frames
    assert report.sent_by_source == summary.frames_sent
    assert report.status == "incomplete"
    received = len(collector.frames)
    assert received == summary.frames_sent  # everything that went out arrived
    dropped = np.zeros(frames, dtype=bool)
    for first, stop in summary.dropped_ranges:
        dropped[first:stop] = True
    assert sorted(collector.frames) == np.flatnonzero(~dropped).tolist()
    missing = sum(report.missing.values())
    assert missing == summary.frames_dropped
    edges = np.diff(np.concatenate(([0], dropped.view(np.int8), [0])))
    runs = [[int(a), int(b)] for a, b in zip(np.flatnonzero(edges == 1),
                                              np.flatnonzero(edges == -1), strict=True)]
    assert [list(r) for r in report.missing_ranges] == runs


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


SLOW_PIPELINE = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: median_filter
    parameters: {size: 5}
  - method: fbp
"""


def test_run_under_a_faster_source_stays_within_its_memory_cap_and_loses_nothing(
    tmp_path: Path, python: str, cli_env: dict[str, str], context: zmq.Context[Any]
) -> None:
    """Scans sent flat out into a ``run`` whose pipeline is slower than the source:
    every scan complete, and the service's peak RSS stays under the stated cap:
    baseline (after start-up) + one scan's corrected projections (kept for its
    reconstruction) + the memory plan's peak of each section + 64 MiB for queues and
    allocator slack — after every scan, however long the source keeps pushing."""
    pipeline = tmp_path / "slow.yaml"
    pipeline.write_text(SLOW_PIPELINE)
    # CI: 3 scans; the longer run in docs/explanation/reliability.md sets
    # TOMO_OVERLOAD_SCANS (e.g. 40: several minutes of a source faster than the pipeline).
    scans = int(os.environ.get("TOMO_OVERLOAD_SCANS", "3"))
    rows, cols, projections = 32, 256, 300
    out = tmp_path / "volumes"
    process, address = start_consumer_cli(
        python, cli_env, "run", str(pipeline), "--out", str(out), "--quiet", "--hwm", "4")
    peaks: list[int] = []
    try:
        baseline = vm_kib(process.pid, "VmRSS")
        push = open_socket(context, "push", Endpoint(address, bind=False), hwm=4,
                           send_timeout_ms=int(JOIN_S * 1000), linger_ms=5000)
        for number in range(scans):
            config = SimulationConfig.from_kwargs(rows=rows, cols=cols,
                                                  projections=projections, seed=number)
            send_scan(push, SimulatedScan(config), SendOptions(scan_id=f"flat-out-{number}",
                                                               block=4))
            deadline = time.monotonic() + JOIN_S
            while not (out / f"flat-out-{number}.json").exists():  # its report: done
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.02)
            peaks.append(vm_kib(process.pid, "VmHWM"))
        push.close()
    finally:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=JOIN_S)
    # The ingest verdict of each scan ("scan NAME: COMPLETE (end)"); a volume line may say
    # INCOMPLETE for the last scan when the SIGINT interrupts its reconstruction.
    verdicts = re.findall(r"^scan (\S+): COMPLETE \(end\)$", stdout, flags=re.MULTILINE)
    assert verdicts == [f"flat-out-{n}" for n in range(scans)], stdout + stderr[-2000:]
    steps = parse_pipeline(SLOW_PIPELINE, REGISTRY, source="slow.yaml").steps
    *_, plans = block_sizes(steps, rows=rows, cols=cols, angles=projections,
                            dtype=np.dtype("uint16"), budget_bytes=default_budget_bytes())
    plan_kib = sum(plan.peak_bytes for plan in plans) // 1024
    corrected_kib = projections * rows * cols * 4 // 1024
    cap = baseline + corrected_kib + plan_kib + 64 * 1024
    print(f"overload: {scans} scans, peak RSS after each (KiB): {peaks}; cap {cap} KiB")
    assert max(peaks) <= cap, f"peak RSS {peaks} KiB, cap {cap} KiB (baseline {baseline})"


def test_simulate_cannot_wait_prints_what_it_dropped(context: zmq.Context[Any],
                                                     capsys: Any) -> None:
    """``tomo-streamer simulate --cannot-wait`` into a consumer that reads slowly."""
    from streamer.cli import main

    pull = open_socket(context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=1)
    address = bound_address(pull)
    stop = threading.Event()
    taken: list[int] = []

    def slow_reader() -> None:  # a consumer far slower than the source
        while not stop.is_set():
            if pull.poll(5):
                pull.recv_multipart()
                taken.append(1)
                stop.wait(0.005)  # pacing: this consumer is slow on purpose

    reader = threading.Thread(target=slow_reader)
    reader.start()
    try:
        code = main(["simulate", "--connect", address, "--cannot-wait", "--block", "1",
                     "--projections", "300", "--rows", "64", "--cols", "256", "--hwm", "1",
                     "--quiet"])
    finally:
        stop.set()
        reader.join(JOIN_S)
        pull.close(linger=0)
    out = capsys.readouterr().out
    assert code == 0
    assert "DROPPED" in out and "--cannot-wait" in out, out
    dropped = int(out.split("DROPPED ")[1].split()[0])
    sent = int(out.split("frames,")[0].split()[-1])
    assert dropped > 0 and sent + dropped == 300 + 20 + 10  # projections + flats + darks
