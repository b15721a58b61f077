"""``demo`` is a thin driver of ``run``'s path: a simulated scan sent over TCP into ingest
and the one runner on one rank, with ``run``'s observer (the feed relay) for the feed and
the latency; what it adds is the check against the phantom."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from stages.spec import Pattern
from streamer.live.client import Preview, ScanEnd, Slice, Subscription
from streamer.live.feed import FeedSettings, LiveFeed
from streamer.live.relay import FeedRelay
from streamer.pipeline.executor import ProcessedBlock
from streamer.run.demo import ERROR_BIN, ProjectionCheck, demo_steps, run_demo
from streamer.sinks.hdf5 import VOLUME_PATH
from streamer.sources.sender import SendOptions
from streamer.sources.simulate import SimulatedScan, SimulationConfig

TIMEOUT_S = 60.0
CONFIG = SimulationConfig(rows=4, cols=48, projections=60, cor_px=24.5)


def test_the_median_error_is_exact_to_one_bin() -> None:
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(10, 3, 5))
    corrected = (truth + rng.normal(scale=0.02, size=truth.shape)).astype(np.float32)
    corrected[4, 0, 0] = np.nan  # counted, as the largest error
    check = ProjectionCheck(lambda start, stop: truth[start:stop])
    for first in (0, 6):  # two blocks, as the processor hands them
        indices = np.arange(first, min(first + 6, 10))
        check.add(ProcessedBlock(Pattern.PROJECTION, indices, np.zeros(len(indices)),
                                 corrected[indices], True))
    errors = np.abs(corrected.astype(np.float64) - truth).ravel()
    errors[np.isnan(errors)] = np.inf
    expected = np.sort(errors)[(errors.size + 1) // 2 - 1]  # the lower middle value
    median = check.median()
    assert check.corrected == 10 and median is not None
    assert abs(median - expected) <= ERROR_BIN, (median, expected)
    assert ProjectionCheck(None).median() is None


def relay_for(feed: LiveFeed | None) -> Any:
    """``run``'s observer, as the command makes it."""
    def observer(link: Any) -> FeedRelay:
        return FeedRelay(link, feed.settings if feed is not None else None, feed=feed,
                         steps=demo_steps())
    return observer


def test_demo_runs_on_the_runner_with_its_report_and_latency(tmp_path: Path) -> None:
    scan = SimulatedScan(CONFIG)
    result = run_demo(scan, SendOptions(scan_id="demo-runner", order="shuffle", block=7),
                      tmp_path, observer=relay_for(None))
    assert result.complete and result.error is None
    assert result.corrected == CONFIG.projections
    assert result.median_abs_error is not None and result.median_abs_error < 0.02
    assert result.center is not None and abs(result.center - 24.5) <= 0.25  # Vo's method
    assert result.center_method == "vo"
    assert result.volume_path == tmp_path / "demo.h5"
    # the runner's output: the volume with its report inside, complete
    with h5py.File(result.volume_path) as file:
        assert bool(file["/entry"].attrs["complete"])
        assert file[VOLUME_PATH].shape == (CONFIG.rows, CONFIG.cols, CONFIG.cols)
        inside = json.loads(file["/entry/process/report"][()])
        assert inside["scan"] == "demo-runner" and inside["complete"]
        volume = file[VOLUME_PATH][()]
    # the error read back slab by slab is the whole volume's
    truth = scan.ground_truth()
    axis = np.arange(CONFIG.cols) - (CONFIG.cols - 1) / 2
    disc = np.hypot(*np.meshgrid(axis, axis)) < 0.42 * CONFIG.cols
    whole = np.linalg.norm((volume - truth)[:, disc]) / np.linalg.norm(truth[:, disc])
    assert result.volume_error == pytest.approx(whole, rel=1e-5)
    # the JSON report: the accounting, then the latency the runner's observer measured
    report = json.loads(result.report_path.read_text())
    assert report["complete"] and report["received"]["projections"] == CONFIG.projections
    assert report["latency"]["last_frame_to_volume_s"] >= 0
    assert result.latency is not None and "last frame→volume" in result.latency


def test_demo_feed_gets_previews_every_final_slice_and_the_end(tmp_path: Path) -> None:
    feed = LiveFeed(FeedSettings(sndhwm=100_000, sndbuf_bytes=1 << 24))
    try:
        with Subscription(feed.address, timeout_s=TIMEOUT_S, hwm=100_000) as sub:
            sub.wait_connected()
            result = run_demo(SimulatedScan(CONFIG), SendOptions(scan_id="demo-feed"),
                              tmp_path, observer=relay_for(feed))
            seen = []
            while not seen or not isinstance(seen[-1], ScanEnd):
                seen.append(sub.receive(TIMEOUT_S))
    finally:
        feed.close()
    assert result.complete
    assert any(isinstance(m, Preview) for m in seen)
    rows = sorted({row for m in seen if isinstance(m, Slice)
                   for row in range(*m.header.band)})
    assert rows == list(range(CONFIG.rows))
    end = seen[-1].header
    assert end.complete and end.output == str(tmp_path / "demo.h5")
