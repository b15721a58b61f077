"""Vo's metric done with less work (stages/recon/vo_metric.py) against algotom's own
functions, the reference it replaces: the same mask and shift element for element, the
same scores to float32 rounding, the same fine-search centre, on real rows (I13 24737,
the APS tooth, DIAD k11-18014) and a simulated 1200 × 1024 sinogram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from algotom.prep import calculation
from scipy import ndimage

from stages.recon.vo_metric import (
    VoMetric,
    double_wedge_mask,
    fine_search,
    folded_weight,
    shift_columns,
)
from streamer.sources.phantom import fit_radius_px, project, shepp_logan_3d
from tests.stages.test_center_policy import projections

#: algotom's metric is a float32 mean of float32 magnitudes: its own rounding is ~1e-7.
SCORE_RTOL = 3e-6


def half_sinogram(shared_data: Path, scan: str, row: int | None = None) -> np.ndarray:
    """The 0–180° sinogram of one row of a real scan, float32 (as the CoR policy's)."""
    data, angles = projections(shared_data, scan)
    row = data.shape[1] // 2 if row is None else row
    return np.ascontiguousarray(data[angles - angles[0] <= 180 + 1e-6, row, :],
                                dtype=np.float32)


def simulated_sinogram(cols: int = 1024, angles: int = 1200, axis_offset: float = 3.3,
                       ) -> np.ndarray:
    center = (cols - 1) / 2 + axis_offset
    theta = np.arange(angles) * 180.0 / angles
    sino = project(shepp_logan_3d(), theta, 3, cols, radius_px=fit_radius_px(cols, center),
                   cor_px=center)[:, 1, :]
    noise = np.random.default_rng(0).normal(0, 0.01, sino.shape)
    return (sino + noise).astype(np.float32)


@pytest.mark.parametrize(("height", "width", "radius", "drop"), [
    (2400, 1024, 256.0, 20), (362, 640, 160.0, None), (44, 26, 6.5, 20), (2401, 33, 8.25, 3),
    (100, 51, 12.75, 0)])
def test_the_mask_is_algotoms(height: int, width: int, radius: float, drop: int | None,
                              ) -> None:
    expected = calculation.make_inverse_double_wedge_mask(height, width, radius, drop)
    assert np.array_equal(double_wedge_mask(height, width, radius, drop), expected)


@pytest.mark.parametrize("width", [8, 9, 640, 1024])
def test_the_folded_half_spectrum_sums_as_the_whole(width: int) -> None:
    image = np.random.default_rng(width).normal(size=(40, width))
    mask = double_wedge_mask(40, width, width / 4, 3)
    whole = np.sum(np.abs(np.fft.fftshift(np.fft.fft2(image))) * mask)
    half = np.sum(np.abs(np.fft.fft(np.fft.rfft(image, axis=1), axis=0))
                  * folded_weight(mask))
    assert half == pytest.approx(whole, rel=1e-12)


@pytest.mark.parametrize("shift", [0.5, -0.5, 3.5, -7.5, 1.25, -2.75, 0.3, 25.5, -30.0])
def test_the_column_shift_is_ndimages(shared_data: Path, shift: float) -> None:
    sino = half_sinogram(shared_data, "tooth")
    expected = ndimage.shift(sino, (0, shift), order=3, prefilter=True)
    np.testing.assert_allclose(shift_columns(sino, shift), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scan", ["i13", "tooth", "diad"])
def test_scores_are_algotoms_at_whole_and_fractional_centres(shared_data: Path,
                                                             scan: str) -> None:
    sino = half_sinogram(shared_data, scan)
    cols = sino.shape[1]
    mask = calculation.make_inverse_double_wedge_mask(2 * sino.shape[0], cols,
                                                      0.5 * 0.5 * cols, 20)
    flipped, reversed_ = np.fliplr(sino), np.flipud(sino)
    score = VoMetric(sino, ratio=0.5, drop=20)
    middle = (cols - 1) / 2
    for center in middle + np.array([-5.0, -2.25, -0.5, 0.0, 0.25, 1.5, 4.0, 6.75]):
        expected = calculation.calculate_center_metric(center, sino, flipped, reversed_, mask)
        assert score(center) == pytest.approx(float(expected), rel=SCORE_RTOL), center


@pytest.mark.parametrize(("scan", "start"), [("i13", 85.0), ("tooth", 295.0), ("diad", 12.0)])
def test_fine_search_is_algotoms(shared_data: Path, scan: str, start: float) -> None:
    sino = half_sinogram(shared_data, scan)
    for radius, step in ((1.0, 0.25), (6.0, 0.5)):
        expected = calculation.fine_search_cor(sino, start, radius, step, 0.5, denoise=True,
                                               ncore=1, hor_drop=20)
        assert fine_search(sino, start, radius, step, drop=20) == expected


def test_a_simulated_1024_column_sinogram_scores_as_algotom() -> None:
    """The size the CoR check at close meets (1200 angles × 1024 columns): the scores of
    the check's window and the fine search's result."""
    sino = simulated_sinogram()
    cols = sino.shape[1]
    mask = calculation.make_inverse_double_wedge_mask(2 * sino.shape[0], cols, 256.0, 20)
    flipped, reversed_ = np.fliplr(sino), np.flipud(sino)
    score = VoMetric(sino)
    for center in (510.0, 514.5, 518.0):
        expected = calculation.calculate_center_metric(center, sino, flipped, reversed_, mask)
        assert score(center) == pytest.approx(float(expected), rel=SCORE_RTOL), center
    expected = calculation.fine_search_cor(sino, 514.0, 1.0, 0.25, 0.5, denoise=True, ncore=1,
                                           hor_drop=20)
    assert fine_search(sino, 514.0, 1.0, 0.25, drop=20) == expected == 514.75


class AlgotomMetric:
    """algotom's ``calculate_center_metric`` behind :class:`VoMetric`'s interface: the CoR
    policy as it was before the fast metric."""

    def __init__(self, sinogram: np.ndarray, *, ratio: float = 0.5, drop: int | None = 20,
                 ) -> None:
        self.sino = np.asarray(sinogram, dtype=np.float32)
        rows, cols = self.sino.shape
        self.mask = calculation.make_inverse_double_wedge_mask(2 * rows, cols,
                                                               0.5 * ratio * cols, drop)
        self.flipped, self.reversed = np.fliplr(self.sino), np.flipud(self.sino)

    def __call__(self, center: float) -> float:
        return float(calculation.calculate_center_metric(center, self.sino, self.flipped,
                                                         self.reversed, self.mask))


def algotom_fine_search(sinogram: np.ndarray, start: float, radius: float, step: float, *,
                        ratio: float = 0.5, drop: int | None = 20) -> float:
    return float(calculation.fine_search_cor(sinogram, start, radius, step, ratio,
                                             denoise=True, ncore=1, hor_drop=drop))


@pytest.mark.parametrize(("scan", "rows", "windows"), [
    ("tooth", (0,), ((None, None, None),)),
    ("tooth", (1,), ((-4.0, 4.0, 295.3), (-4.0, 4.0, 299.0))),
    ("i13", (20, 67, 110), ((None, None, None), (-4.0, 4.0, 85.7))),
    ("diad", (3, 11), ((None, None, None), (-4.0, 4.0, 12.4))),
])
def test_the_cor_policy_returns_what_it_returned_with_algotoms_metric(
        shared_data: Path, monkeypatch: pytest.MonkeyPatch, scan: str,
        rows: tuple[int, ...], windows: tuple[tuple[float | None, ...], ...]) -> None:
    """Whole searches and the close's near window (± 4 px, fine radius 1): the same centre,
    method, window, notes and warnings as with algotom's metric; the confidence (a ratio
    of metric differences) to the metric's float32 rounding, which a narrow detector's
    flat curve magnifies (DIAD, 26 columns: 1.3e-5)."""
    from stages.recon import center_policy

    data, angles = projections(shared_data, scan)
    cases = [(row, window) for row in rows for window in windows]
    fast = [center_policy.find_center(data, angles, row=row, smin=lo, smax=hi, around=around,
                                      srad=6.0 if lo is None else 1.0)
            for row, (lo, hi, around) in cases]
    monkeypatch.setattr(center_policy, "VoMetric", AlgotomMetric)
    monkeypatch.setattr(center_policy, "fine_search", algotom_fine_search)
    for (row, (lo, hi, around)), got in zip(cases, fast, strict=True):
        before = center_policy.find_center(data, angles, row=row, smin=lo, smax=hi,
                                           around=around, srad=6.0 if lo is None else 1.0)
        assert (got.center, got.method, got.window, got.notes, got.warnings) == (
            before.center, before.method, before.window, before.notes, before.warnings), row
        assert got.confidence == pytest.approx(before.confidence, abs=1e-4)
