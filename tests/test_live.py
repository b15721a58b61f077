"""`tomo-streamer run`: frames corrected as they arrive, each scan reconstructed at close."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stages.registry import REGISTRY
from streamer.cli import main
from streamer.ingest.service import IngestSettings
from streamer.ingest.state import ScanOpened
from streamer.pipeline.config import parse_pipeline
from streamer.run.output import ScanOutput, keep_newest
from streamer.sources.sender import SendOptions, send_scan, start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.protocol import AbortHeader, FramesHeader, encode_frames, encode_header
from tests.conftest import start_consumer_cli
from tests.run.ranks import one_rank

REPO = Path(__file__).resolve().parents[1]
PIPELINE = "pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n  - method: fbp\n"
JOIN_S = 60.0


def test_complete_and_aborted_scans_both_get_volumes(loopback_pair, tmp_path: Path) -> None:
    steps = parse_pipeline(PIPELINE, REGISTRY, source="live.yaml").steps
    runner = one_rank(steps, PIPELINE, tmp_path, block_frames=16, block_sinograms=2)
    live = runner.ranked
    push, pull = loopback_pair()
    service = runner.service(pull, IngestSettings(idle_timeout_s=5))
    thread = threading.Thread(target=service.run, kwargs={"max_scans": 2})
    thread.start()
    whole = SimulatedScan(SimulationConfig(rows=3, cols=64, projections=120, cor_px=33.5))
    send_scan(push, whole, SendOptions(scan_id="whole", order="shuffle", block=5))
    cut = SimulatedScan(SimulationConfig(rows=3, cols=64, projections=120, seed=4))
    layout = cut.layout
    push.send(encode_header(start_header(layout, "cut")))
    first, count = 0, 30 + 90  # references and 90 of 120 projections, then the beam dies
    header = FramesHeader(scan="cut", first=first, count=count,
                          keys=layout.image_keys[:count].tolist(),
                          angles=layout.angles_deg[:count].tolist(), dtype="uint16",
                          shape=(3, 64))
    push.send_multipart(encode_frames(header, cut.read(0, count)))
    push.send(encode_header(AbortHeader(scan="cut", reason="beam lost")))
    thread.join(JOIN_S)
    assert not thread.is_alive()
    done, aborted = live.outputs
    assert done.complete and abs(done.center - 33.5) <= 0.25  # auto CoR (Vo)
    assert aborted.scan == "cut" and not aborted.complete and aborted.path is not None
    with h5py.File(done.path) as file:
        volume = file["/entry/reconstruction/data"][...]
        assert file["/entry"].attrs["complete"]
    truth = whole.ground_truth()
    inside = np.hypot(*np.meshgrid(np.arange(64) - 31.5, np.arange(64) - 31.5)) < 26
    error = np.linalg.norm((volume - truth)[:, inside]) / np.linalg.norm(truth[:, inside])
    assert error < 0.3, error  # noise + discontinuous phantom at N = 64 (cf. test_recon)
    with h5py.File(aborted.path) as file:
        assert not file["/entry"].attrs["complete"]
        report = json.loads(file["/entry/process/report"][()])
        assert report["status"] == "aborted" and report["missing"]["projections"] == 30
        assert file["/entry/process/angles_deg"].shape == (90,)  # reconstructed from what came


def test_run_command_serves_a_scan(tmp_path: Path, python: str, cli_env) -> None:
    out = tmp_path / "volumes"
    process, address = start_consumer_cli(
        python, cli_env, "run", str(REPO / "configs/standard.yaml"), "--scans", "1",
        "--out", str(out))
    try:
        assert main(["simulate", "--connect", address, "--rows", "2", "--cols", "48",
                     "--projections", "90", "--scan-id", "served"]) == 0
        stdout, stderr = process.communicate(timeout=JOIN_S)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "COMPLETE" in stdout and "volume:" in stdout
    assert "latency:" in stdout and "last frame→volume" in stdout
    with h5py.File(out / "served.h5") as file:
        assert file["/entry"].attrs["complete"]
        assert file["/entry/reconstruction/data"].shape == (2, 48, 48)
        assert "remove_all_stripe" in file["/entry/process/pipeline"][()].decode()
    report = json.loads((out / "served.json").read_text())
    assert report["complete"]
    # Written when the scan closed, completed once the volume was: the latency is in it.
    assert report["latency"]["last_frame_to_volume_s"] >= 0


def test_a_long_running_service_keeps_only_the_newest_outputs(monkeypatch) -> None:
    import streamer.run.output as output_module

    monkeypatch.setattr(output_module, "MAX_KEPT_OUTPUTS", 2)
    outputs: list[ScanOutput] = []
    for number in range(3):
        keep_newest(outputs, ScanOutput(f"s{number}", None, 0, None, False))
    assert [output.scan for output in outputs] == ["s1", "s2"]


def test_a_doubtful_cor_is_reported_not_silent(loopback_pair, tmp_path: Path) -> None:
    # the axis at 42.5 of 64 columns, a finder window of ±2 px around the middle (31.5):
    # Vo's minimum lands on the window's edge, which the output must say
    text = ("pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n"
            "  - method: find_center_vo\n    parameters: {smin: -2, smax: 2}\n"
            "  - method: fbp\n")
    steps = parse_pipeline(text, REGISTRY, source="live.yaml").steps
    runner = one_rank(steps, text, tmp_path, block_frames=16, block_sinograms=2)
    live = runner.ranked
    push, pull = loopback_pair()
    service = runner.service(pull, IngestSettings(idle_timeout_s=5))
    thread = threading.Thread(target=service.run, kwargs={"max_scans": 1})
    thread.start()
    scan = SimulatedScan(SimulationConfig(rows=2, cols=64, projections=120, cor_px=42.5))
    send_scan(push, scan, SendOptions(scan_id="doubt", block=10))
    thread.join(JOIN_S)
    assert not thread.is_alive()
    (output,) = live.outputs
    assert output.complete and output.path is not None
    assert any("edge of the search window" in w for w in output.center_warnings)
    with h5py.File(output.path) as file:
        assert "WARNING: Vo's minimum lies on the edge" in (
            file["/entry/process/center_of_rotation"].attrs["method"])


class RecordingFeed:
    """Stands in for ``LiveFeed``: records each call and its thread; ``slices`` of the
    first scan waits for ``release`` (the reconstruction held open)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []  # (method, scan, thread)
        self.release = threading.Event()
        self.holding = threading.Event()
        self._scan = ""

    def _note(self, method: str, scan: str) -> None:
        self.calls.append((method, scan, threading.current_thread().name))

    def watch(self, state: Any) -> None:
        self._note("watch", "")

    def scan_opened(self, start: Any, **_: Any) -> None:
        self._scan = start.scan
        self._note("scan_opened", start.scan)

    def frames_accepted(self, event: Any) -> None:
        self._note("frames_accepted", event.start.scan)

    def projections(self, block: Any) -> None:
        self._note("projections", self._scan)

    def slices(self, block: Any) -> None:
        self.holding.set()
        assert self.release.wait(JOIN_S)

    def scan_closing(self) -> None:
        self._note("scan_closing", self._scan)

    def scan_closed(self, report: Any, **_: Any) -> None:
        self._note("scan_closed", report.scan)


def test_the_feed_sees_scans_in_order_while_the_worker_reconstructs(
        loopback_pair, tmp_path: Path) -> None:
    """In the background mode the next scan is received while the previous one is
    reconstructed; the feed still sees scan 1 closed before scan 2 opens, and its
    per-scan calls (open, frames, closing) come from the ingest thread."""
    steps = parse_pipeline(PIPELINE, REGISTRY, source="live.yaml").steps
    feed = RecordingFeed()
    runner = one_rank(steps, PIPELINE, tmp_path, block_frames=16, block_sinograms=3,
                      background=True, feed=feed)
    live = runner.ranked
    push, pull = loopback_pair()
    opened_two = threading.Event()

    def on_event(event: Any) -> None:
        live.on_event(event)
        if isinstance(event, ScanOpened) and event.start.scan == "two":
            opened_two.set()

    service = runner.service(pull, IngestSettings(idle_timeout_s=30), on_event=on_event)
    thread = threading.Thread(target=service.run, kwargs={"max_scans": 2}, name="ingest")
    thread.start()
    config = SimulationConfig(rows=3, cols=32, projections=40)
    send_scan(push, SimulatedScan(config), SendOptions(scan_id="one", block=8))
    assert feed.holding.wait(JOIN_S)  # scan one is being reconstructed
    send_scan(push, SimulatedScan(config), SendOptions(scan_id="two", block=8))
    assert opened_two.wait(JOIN_S), "scan two was not received meanwhile"
    assert ("scan_opened", "two") not in [call[:2] for call in feed.calls]  # … held back
    feed.release.set()
    thread.join(JOIN_S)
    assert not thread.is_alive() and live.wait(JOIN_S)
    order = [call[:2] for call in feed.calls if call[0] in ("scan_opened", "scan_closed")]
    assert order == [("scan_opened", "one"), ("scan_closed", "one"),
                     ("scan_opened", "two"), ("scan_closed", "two")]
    ingest_side = {call[2] for call in feed.calls
                   if call[0] in ("scan_opened", "frames_accepted", "scan_closing")}
    assert ingest_side == {"ingest"}
    assert [output.complete for output in live.outputs] == [True, True]
