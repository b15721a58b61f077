"""The early CoR estimate (centre-of-mass sinusoid) on simulated and real scans: the
error bound per scan from the first half of a 180° scan, and the cases it must decline
(a sample wider than the field of view, noise that hides the sinusoid, a short arc)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from streamer.errors import StreamerError
from streamer.run.center_early import (
    EarlyWatch,
    early_center,
    row_moments,
)
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.protocol import IMAGE_KEY_DARK, IMAGE_KEY_FLAT, IMAGE_KEY_PROJECTION
from tests.test_pair_center import _blobs, _diad, _tooth, i13_scan


def _first(projections: npt.NDArray[np.float64], angles: npt.NDArray[np.float64],
           fraction: float, **options: float) -> tuple[float | None, float, str | None]:
    """The estimate from the first ``fraction`` of the scan, 64 rows at most."""
    count = int(fraction * angles.size)
    rows = np.unique(np.linspace(0, projections.shape[1] - 1,
                                 min(projections.shape[1], 64)).round().astype(int))
    mass, moment = row_moments(projections[:count][:, rows])
    found = early_center(mass, moment, angles[:count], projections.shape[2], **options)
    return found.center, found.error, found.reason


@pytest.mark.parametrize("center", [63.5, 58.3, 70.75])
def test_exact_projections_give_the_axis_from_a_third_of_the_scan(center: float) -> None:
    angles = np.linspace(0.0, 180.0, 180, endpoint=False)
    found, error, reason = _first(_blobs(angles, 128, center), angles, 1 / 3)
    assert reason is None and found == pytest.approx(center, abs=1e-6) and error < 1e-6


def test_a_constant_background_is_taken_out() -> None:
    angles = np.linspace(0.0, 180.0, 180, endpoint=False)
    found, _, reason = _first(_blobs(angles, 128, 58.3) + 0.05, angles, 0.5)
    assert reason is None and found == pytest.approx(58.3, abs=1e-6)


def test_the_simulated_detector_with_noise_is_within_a_tenth_of_a_pixel() -> None:
    """The project's simulator (counts with noise, a beam profile, flat/dark), corrected
    as ``normalize`` does: the first half of the scan."""
    config = SimulationConfig.from_kwargs(rows=8, cols=128, projections=180, cor_px=61.25)
    scan = SimulatedScan(config)
    frames = scan.read(0, scan.layout.frames).astype(np.float64)
    keys, angles = scan.layout.image_keys, scan.layout.angles_deg
    dark = frames[keys == IMAGE_KEY_DARK].mean(axis=0)
    flat = frames[keys == IMAGE_KEY_FLAT].mean(axis=0)
    projections = -np.log(np.clip((frames[keys == IMAGE_KEY_PROJECTION] - dark)
                                  / (flat - dark), 1e-6, None))
    found, error, reason = _first(projections, angles[keys == IMAGE_KEY_PROJECTION], 0.5)
    assert reason is None and found == pytest.approx(61.25, abs=0.1) and error <= 0.1


def test_a_sample_wider_than_the_field_of_view_is_declined() -> None:
    """The blobs of a 160-column scan seen through 96 columns: the rows' mass changes
    as parts turn out of view."""
    angles = np.linspace(0.0, 180.0, 180, endpoint=False)
    truncated = _blobs(angles, 160, 70.0)[:, :, 30:126]
    found, _, reason = _first(truncated, angles, 0.5)
    assert found is None and reason is not None
    assert "keep their mass over the angles" in reason and "truncated" in reason


def test_noise_that_hides_the_sinusoid_is_declined() -> None:
    angles = np.linspace(0.0, 180.0, 180, endpoint=False)
    rng = np.random.default_rng(3)
    clean = _blobs(angles, 128, 58.3)
    found, _, reason = _first(clean + rng.normal(0, 0.05, clean.shape), angles, 0.5)
    assert found is None and reason is not None


def test_a_short_arc_is_declined_as_uncertain() -> None:
    """A tenth of a 180° scan (18°) with mild noise: the sinusoid cannot be told from
    a constant, so the fit's own error is large."""
    angles = np.linspace(0.0, 180.0, 180, endpoint=False)
    rng = np.random.default_rng(4)
    clean = _blobs(angles, 128, 58.3)
    found, error, reason = _first(clean + rng.normal(0, 0.003, clean.shape), angles, 0.1)
    assert found is None and error > 0.1 and reason is not None and "uncertain" in reason


@pytest.mark.parametrize(
    ("name", "truth", "bound"),
    [
        # Vo 85.5 (85.75 on row 40); from the first half: 85.51, error 0.04 px.
        ("i13", 85.5, 0.1),
        # Vo 295.0; 295 and 296 both reconstruct sharp, the pair reads 295.9 (data
        # README). The first half reads 295.8 (two rows, error 0.17 px).
        ("tooth", 295.0, 1.0),
    ],
)
def test_real_scans_from_their_first_half(shared_data: Path, name: str, truth: float,
                                          bound: float) -> None:
    projections, angles = {"i13": i13_scan, "tooth": _tooth}[name](shared_data / "real")
    found, _, reason = _first(projections, angles, 0.5, max_error=0.5)
    assert reason is None and found is not None
    assert abs(found - truth) <= bound, found


def test_real_i13_sure_enough_from_half_but_not_from_a_quarter(shared_data: Path) -> None:
    projections, angles = i13_scan(shared_data / "real")
    assert _first(projections, angles, 0.5)[2] is None  # default 0.1 px
    quarter, error, reason = _first(projections, angles, 0.25)
    assert quarter is None and error > 0.1 and "uncertain" in (reason or "")


def test_real_diad_window_is_truncated_and_declined(shared_data: Path) -> None:
    """DIAD's 26-column window of a larger sample (Vo 12.5): no row keeps its mass."""
    projections, angles = _diad(shared_data / "real")
    found, _, reason = _first(projections, angles, 0.5)
    assert found is None and "0 of 22 rows keep their mass" in (reason or "")


def _watch(projections: npt.NDArray[np.float64], angles: npt.NDArray[np.float64],
           order: list[int], block: int, **options: float) -> tuple[EarlyWatch, int | None]:
    watch = EarlyWatch(angles.size, np.arange(projections.shape[1]), **options)
    for count, number in enumerate(order, start=1):
        part = slice(number * block, (number + 1) * block)
        if watch.add(angles[part], projections[part]) is not None:
            assert watch.add(angles[:1], projections[:1]) is None  # once
            return watch, count
    return watch, None


def test_watch_estimates_once_half_the_blocks_are_in_in_any_order() -> None:
    angles = np.linspace(0.0, 180.0, 180, endpoint=False)
    projections = _blobs(angles, 128, 58.3)
    order = [int(i) for i in np.random.default_rng(1).permutation(18)]
    watch, blocks = _watch(projections, angles, order, 10, fraction=0.5)
    assert blocks == 9 and watch.found is not None
    assert watch.found.center == pytest.approx(58.3, abs=1e-6)


def test_watch_retries_and_gives_up_at_the_last_fraction() -> None:
    angles = np.linspace(0.0, 180.0, 180, endpoint=False)
    truncated = _blobs(angles, 160, 70.0)[:, :, 30:126]
    watch, blocks = _watch(truncated, angles, list(range(18)), 10, fraction=0.5,
                           last_fraction=0.75)
    assert blocks is None and watch.done and watch.found is None
    assert watch.last is not None and watch.last.angles <= 0.75 * 180 + 10


def test_bad_input_refused() -> None:
    with pytest.raises(StreamerError, match="at least 16 columns"):
        row_moments(np.zeros((3, 2, 8)))
    with pytest.raises(StreamerError, match="expected finite projections"):
        row_moments(np.full((3, 2, 32), np.nan))
    with pytest.raises(StreamerError, match="one angle each"):
        early_center(np.ones((4, 2)), np.ones((4, 2)), np.zeros(3), 32)
    with pytest.raises(StreamerError, match="max_error: expected a positive number"):
        early_center(np.ones((9, 2)), np.ones((9, 2)), np.zeros(9), 32, max_error=0.0)
    with pytest.raises(StreamerError, match="0 < first <= last <= 1"):
        EarlyWatch(100, np.arange(2), fraction=0.9, last_fraction=0.75)
