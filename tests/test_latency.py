"""LatencyRecorder with an injected clock: exact figures, no sleeps."""

from __future__ import annotations

import json

import pytest

from streamer.errors import StreamerError
from streamer.run.latency import Distribution, LatencyRecorder, percentile


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_frame_to_preview_and_last_frame_to_volume() -> None:
    clock = Clock()
    recorder = LatencyRecorder(clock=clock, streaming=True)
    lags = [0.5, 0.25, 2.0, 1.0]
    for frame, lag in enumerate(lags):
        clock.now = 10.0 * frame
        recorder.frames_received([2 * frame, 2 * frame + 1])
        clock.now += lag
        recorder.preview_published(2 * frame + 1)
    clock.now = 42.0
    recorder.volume_complete()
    summary = recorder.summary()
    assert summary.frame_to_preview == Distribution(count=4, p50=0.5, p95=2.0, max=2.0)
    assert summary.last_frame_to_volume == pytest.approx(12.0)  # last frames at 30.0
    report = json.loads(json.dumps(summary.as_dict()))
    assert report == {
        "frame_to_preview": {"count": 4, "p50_s": 0.5, "p95_s": 2.0, "max_s": 2.0},
        "last_frame_to_volume_s": 12.0,
        "reconstruction": "streaming",
    }
    assert summary.line() == ("latency: frame→preview p50 0.50 s, p95 2.00 s, max 2.00 s "
                              "(4 previews); last frame→volume 12.00 s (streaming)")


def test_preview_of_an_older_frame_measures_that_frame() -> None:
    clock = Clock()
    recorder = LatencyRecorder(clock=clock)
    clock.now = 1.0
    recorder.frames_received([0])
    clock.now = 2.0
    recorder.frames_received([1, 0])  # a repeated frame keeps its first time
    clock.now = 5.0
    recorder.preview_published(0)
    assert recorder.summary().frame_to_preview.max == pytest.approx(4.0)


def test_nothing_measured() -> None:
    summary = LatencyRecorder(clock=Clock()).summary()
    assert summary.frame_to_preview == Distribution(0, None, None, None)
    assert summary.line() == ("latency: frame→preview: no preview published; "
                              "last frame→volume: not complete")
    assert summary.as_dict()["reconstruction"] == "at close"


def test_mistakes_refused() -> None:
    recorder = LatencyRecorder(clock=Clock())
    with pytest.raises(StreamerError, match="expected frames first, got none"):
        recorder.volume_complete()
    recorder.frames_received([3])
    with pytest.raises(StreamerError, match="expected a received frame, got 7"):
        recorder.preview_published(7)


@pytest.mark.parametrize(
    ("fraction", "expected"), [(0.5, 50.0), (0.95, 95.0), (1.0, 100.0), (0.001, 1.0)]
)
def test_nearest_rank_percentile(fraction: float, expected: float) -> None:
    assert percentile([float(v) for v in range(1, 101)], fraction) == expected
