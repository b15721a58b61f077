"""find_center_360 against a NumPy port of its upstream source and on a simulated
offset-axis 360° scan.

The port follows httomolibgpu ``httomolibgpu/recon/rotation.py`` (commit 2ec6a929, Aug
2026: ``_find_overlap``, ``_search_overlap``, ``_calculate_curvature``) with its CUDA
kernel ``cuda_kernels/calc_metrics.cu`` (``_calc_metrics_no_overlap``) written as a plain
loop per window position, and algotom's ``cor`` formula (``prep/calculation.py``
``find_center_360``; httomolibgpu since Feb 2026 returns ``ncol`` in its place).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from numpy.polynomial import Polynomial
from scipy.ndimage import gaussian_filter

from stages.recon.center_360 import find_center_360
from stages.recon.centering import FindCenter360Params, center_360_of_scan
from stages.registry import REGISTRY
from streamer.errors import StageError
from streamer.sources.simulate import SimulatedScan, SimulationConfig


# ------------------------------------------------------------------ upstream port
def _upstream_metrics(  # noqa: PLR0917 -- upstream's signature
        mat1: npt.NDArray[np.float32], mat2: npt.NDArray[np.float32],
                      win_width: int, side: int, denoise: bool, norm: bool
                      ) -> tuple[npt.NDArray[np.float64], int]:
    if denoise:
        mat1 = gaussian_filter(mat1, (2, 2), mode="reflect")
        mat2 = gaussian_filter(mat2, (2, 2), mode="reflect")
    ncol1, ncol2 = mat1.shape[1], mat2.shape[1]
    win_width = int(np.clip(win_width, 6, min(ncol1, ncol2) // 2 - 1))
    offset = win_width // 2
    win_width = 2 * offset
    roi2 = mat2[:, :win_width] if side == 1 else mat2[:, ncol2 - win_width :]
    metrics = []
    for i in range(ncol1 - win_width):  # one CUDA block per position
        roi1 = mat1[:, i : i + win_width].astype(np.float64)
        if norm:
            roi1 = roi1 * (np.abs(roi2).sum(axis=1) / np.abs(roi1).sum(axis=1))[:, None]
        r = np.corrcoef(roi1.ravel(), roi2.ravel().astype(np.float64))[0, 1]
        metrics.append(abs(1.0 - np.clip(r, -1.0, 1.0)))
    out = np.array(metrics)
    if out.min() != 0.0:
        out /= out.min()
    return out, offset


def _upstream_curvature(list_metric: npt.NDArray[np.float64]) -> tuple[float, float]:
    radi = 2
    min_pos = int(np.clip(int(np.argmin(list_metric)), radi, list_metric.size - radi - 1))
    list1 = list_metric[min_pos - radi : min_pos + radi + 1]
    afact1 = Polynomial.fit(np.arange(0, 2 * radi + 1), list1, deg=2).convert().coef[-1]
    list2 = list_metric[min_pos - 1 : min_pos + 2]
    coef2 = Polynomial.fit(np.arange(min_pos - 1, min_pos + 2), list2, deg=2).convert().coef
    position = float(min_pos)
    if coef2[-1] != 0.0:
        num = -coef2[-2] / (2 * coef2[-1])
        if min_pos - 1 <= num <= min_pos + 1:
            position = float(num)
    return abs(float(afact1)), position


def upstream_find_center_360(sino: npt.NDArray[np.float32], win_width: int = 10,
                             denoise: bool = True, norm: bool = False
                             ) -> tuple[float, float, str, float]:
    nrow, ncol = sino.shape
    half = nrow // 2 + 1
    mat1, mat2 = sino[:half], np.fliplr(sino[-half:])
    win_width = int(np.clip(win_width, 6, min(mat1.shape[1], mat2.shape[1]) // 2))
    m1, off1 = _upstream_metrics(mat1, mat2, win_width, 1, denoise, norm)
    m2, off2 = _upstream_metrics(mat1, mat2, win_width, 0, denoise, norm)
    c1, p1 = _upstream_curvature(m1)
    c2, p2 = _upstream_curvature(m2)
    if c1 > c2:
        position = p1 + off1
        overlap = ncol - position + win_width // 2
        return ncol - overlap / 2.0 - 1.0, overlap, "right", position
    position = p2 + off2
    overlap = position + win_width // 2
    return overlap / 2.0 - 1.0, overlap, "left", position


# ------------------------------------------------------------------ data
def _offset_axis_sinogram(columns: slice, seed: int = 0) -> tuple[npt.NDArray[np.float32],
                                                                  float]:
    """A 360° scan (361 angles, 0° and 360° both) of the simulator's phantom, with the
    detector cut to ``columns`` so the axis (127.5 on the full 256 columns) sits near one
    edge and the object reaches past the other: an offset-axis scan. Light noise."""
    config = SimulationConfig(rows=4, cols=256, projections=361, flats=0, darks=0,
                              scan_range_deg=360, endpoint=True)
    scan = SimulatedScan(config)
    sino = scan.attenuation(0, 361)[:, 2, columns]
    rng = np.random.default_rng(seed)
    noisy = sino + 0.002 * rng.standard_normal(sino.shape)
    return noisy.astype(np.float32), scan.config.centre_of_rotation - (columns.start or 0)


@pytest.mark.parametrize(("columns", "denoise", "norm", "win_width"), [
    (slice(100, 256), True, False, 10),
    (slice(0, 160), True, False, 10),
    (slice(90, 256), False, True, 14),
    (slice(0, 171), False, False, 7),
])
def test_matches_the_upstream_port(columns: slice, denoise: bool, norm: bool,
                                   win_width: int) -> None:
    sino, _ = _offset_axis_sinogram(columns)
    ours = find_center_360(sino, win_width=win_width, denoise=denoise, norm=norm)
    cor, overlap, side, position = upstream_find_center_360(sino, win_width, denoise, norm)
    assert ours.side == side
    # float64 running sums against per-window corrcoef: measured agreement < 2e-6 px
    assert ours.cor == pytest.approx(cor, abs=1e-4)
    assert ours.overlap == pytest.approx(overlap, abs=1e-4)
    assert ours.overlap_position == pytest.approx(position, abs=1e-4)


@pytest.mark.parametrize("columns", [slice(100, 256), slice(110, 256), slice(0, 160),
                                     slice(0, 171)])
def test_finds_the_axis_of_a_simulated_offset_axis_scan(columns: slice) -> None:
    sino, truth = _offset_axis_sinogram(columns)
    expected_side = "left" if truth < sino.shape[1] / 2 else "right"
    plain = find_center_360(sino, denoise=False, norm=True)
    assert plain.side == expected_side
    # measured error -0.79 … -0.40 px without the Gaussian (noise-free: -0.50, algotom's
    # "- 1" in the cor formula against this simulator's pixel-centre convention) ...
    assert abs(plain.cor - truth) < 1.0
    # ... and -1.60 … +0.80 px with upstream's default denoise (a σ = 2 px Gaussian over
    # the sinogram, mirrored at the edges where the overlap is measured)
    smoothed = find_center_360(sino)
    assert smoothed.side == expected_side
    assert abs(smoothed.cor - truth) < 2.0
    # the test discriminates: a window off by 5 columns is far from the truth
    assert abs(find_center_360(sino[:, 5:]).cor - truth) > 3.0


def test_registered_as_a_cor_finder() -> None:
    (spec,) = [s for s in REGISTRY.values()
               if "httomolibgpu.recon.rotation.find_center_360" in s.aliases]
    assert spec.name == "find_center_360" and spec.finds_center is not None
    sino, truth = _offset_axis_sinogram(slice(100, 256))
    projections = np.repeat(sino[:, None, :], 3, axis=1)
    angles = np.linspace(0.0, 360.0, sino.shape[0])
    estimate = spec.finds_center(projections, angles,
                                 FindCenter360Params(denoise=False, norm=True))
    assert abs(float(estimate) - truth) < 1.0
    assert estimate.confidence == 1.0 and not estimate.warnings
    assert "on the left" in estimate.notes[0]
    # a 180° scan is a warning, never silence
    half = spec.finds_center(projections[:181], angles[:181], FindCenter360Params())
    assert half.warnings and half.confidence < 0.5
    with pytest.raises(StageError, match="ind: expected a row in 0 … 2, got 7"):
        center_360_of_scan(projections, angles, FindCenter360Params(ind=7))
    with pytest.raises(Exception, match="use_overlap"):
        FindCenter360Params.model_validate({"use_overlap": True})


def test_bad_sinograms_are_one_clear_error() -> None:
    with pytest.raises(StageError, match="expected a real 2-D array"):
        find_center_360(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(StageError, match="at least 4 angles and 16 columns, got 3 x 40"):
        find_center_360(np.ones((3, 40), np.float32))
