"""``sino_360_to_180`` and ``average_projection_frames`` against NumPy ports of their
upstream sources, on a simulated offset-axis 360° scan and on the real neutron 360° scan.

The ports follow httomolibgpu ``httomolibgpu/misc/morph.py`` (commit 2ec6a929, Aug 2026:
``sino_360_to_180`` with even overlaps, negative overlaps and edge padding;
``average_projection_frames``), tomopy ``source/tomopy/misc/morph.py``
(``sino_360_to_180``) and HTTomo's ``method_wrappers/average_frames.py`` (the angles),
with ``cp`` replaced by ``np``. Upstream works on ``(angles, rows, cols)``; our stages on
sinogram blocks ``(rows, angles, cols)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import tifffile
from algotom.prep.calculation import find_center_vo
from algotom.rec.reconstruction import fbp_reconstruction

from stages.misc.scan_shape import (
    AverageFramesParams,
    Sino360Params,
    average_projection_frames,
    sino_360_to_180,
    sino_360_to_180_tomopy,
)
from stages.recon.center_360 import find_center_360
from stages.recon.fbp import fbp
from stages.registry import REGISTRY
from stages.spec import Geometry
from streamer.errors import StageError
from streamer.sources.simulate import SimulatedScan, SimulationConfig

Array = npt.NDArray[np.float32]


# ------------------------------------------------------------------ upstream ports
def upstream_sino_360_to_180(data: Array, overlap: float, side: str) -> Array:
    """httomolibgpu 2ec6a929 ``sino_360_to_180`` (checks left out), NumPy."""
    dx, dy, dz = data.shape
    overlap = int(np.round(overlap))
    if overlap % 2 != 0:
        overlap += 1
    overlap_pos = abs(overlap)
    n = dx // 2
    out = np.empty((n, dy, 2 * dz - overlap), dtype=data.dtype)
    if side == "left":
        if overlap == 0:
            out[:, :, -dz:] = data[:n, :, :]
            out[:, :, :dz] = data[n : 2 * n, :, :][:, :, ::-1]
            return out
        if overlap < 0:
            out[:, :, -dz:] = data[:n, :, :]
            out[:, :, : (dz + overlap_pos)] = np.pad(
                data[n : 2 * n, :, :][:, :, ::-1], ((0, 0), (0, 0), (0, overlap_pos)),
                mode="edge")
            return out
        weights = np.linspace(0, 1.0, overlap, dtype=np.float32)
        out[:, :, -dz + overlap :] = data[:n, :, overlap:]
        out[:, :, : dz - overlap] = data[n : 2 * n, :, overlap:][:, :, ::-1]
        out[:, :, dz - overlap : dz] = (weights * data[:n, :, :overlap]
                                        + (weights * data[n : 2 * n, :, :overlap])[:, :, ::-1])
    if side == "right":
        if overlap == 0:
            out[:, :, :dz] = data[:n, :, :]
            out[:, :, dz::] = data[n : 2 * n, :, :][:, :, ::-1]
            return out
        if overlap < 0:
            out[:, :, : (dz + overlap_pos)] = np.pad(
                data[:n, :, :], ((0, 0), (0, 0), (0, overlap_pos)), mode="edge")
            out[:, :, (dz + overlap_pos) : :] = data[n : 2 * n, :, :][:, :, ::-1]
            return out
        weights = np.linspace(1.0, 0, overlap, dtype=np.float32)
        out[:, :, : dz - overlap] = data[:n, :, :-overlap]
        out[:, :, -dz + overlap :] = data[n : 2 * n, :, :-overlap][:, :, ::-1]
        out[:, :, dz - overlap : dz] = (weights * data[:n, :, -overlap:]
                                        + (weights * data[n : 2 * n, :, -overlap:])[:, :, ::-1])
    return np.pad(out, ((0, 0), (0, 0), (overlap_pos // 2, overlap_pos // 2)), mode="edge")


def upstream_tomopy_sino_360_to_180(data: Array, overlap: float, rotation: str) -> Array:
    """tomopy ``sino_360_to_180``, as upstream."""
    dx, dy, dz = data.shape
    overlap = int(np.round(overlap))
    n = dx // 2
    out = np.empty((n, dy, 2 * dz - overlap), dtype=data.dtype)
    if rotation == "left":
        weights = np.linspace(0, 1.0, overlap)
        out[:, :, -dz + overlap:] = data[:n, :, overlap:]
        out[:, :, :dz - overlap] = data[n:2 * n, :, overlap:][:, :, ::-1]
        out[:, :, dz - overlap:dz] = (weights * data[:n, :, :overlap]
                                      + (weights * data[n:2 * n, :, :overlap])[:, :, ::-1])
    elif rotation == "right":
        weights = np.linspace(1.0, 0, overlap)
        out[:, :, :dz - overlap] = data[:n, :, :-overlap]
        out[:, :, -dz + overlap:] = data[n:2 * n, :, :-overlap][:, :, ::-1]
        out[:, :, dz - overlap:dz] = (weights * data[:n, :, -overlap:]
                                      + (weights * data[n:2 * n, :, -overlap:])[:, :, ::-1])
    return out


def upstream_average_projection_frames(data: Array, k: int) -> Array:
    """httomolibgpu ``average_projection_frames``, NumPy."""
    if k <= 1:
        return data
    n_proj = data.shape[0]
    n_full, remainder = n_proj // k, n_proj % k
    averaged = np.empty((n_full + (remainder > 0), *data.shape[1:]), dtype=data.dtype)
    if n_full:
        averaged[:n_full] = data[: n_full * k].reshape(n_full, k, *data.shape[1:]).mean(axis=1)
    if remainder:
        averaged[-1] = data[n_full * k :].mean(axis=0)
    return averaged


def upstream_averaged_angles(angles: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.float64]:
    """HTTomo's ``AverageFramesWrapper._preprocess_data`` (the angles)."""
    n_full, remainder = angles.size // k, angles.size % k
    out = np.empty(n_full + (remainder > 0))
    if n_full:
        out[:n_full] = angles[: n_full * k].reshape(n_full, k).mean(axis=1)
    if remainder:
        out[-1] = angles[n_full * k :].mean()
    return out


def _random(shape: tuple[int, ...], seed: int = 0) -> Array:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# ------------------------------------------------------------------ against upstream
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize(("angles", "overlap"), [(20, 8), (21, 7.4), (20, 0), (18, -5),
                                                 (20, 30.6)])
def test_fold_matches_httomolibgpu(side: str, angles: int, overlap: float) -> None:
    projections = _random((angles, 3, 40))
    expected = upstream_sino_360_to_180(projections, overlap, side)
    ours = sino_360_to_180(np.ascontiguousarray(projections.transpose(1, 0, 2)),
                           overlap=overlap, side=side)  # type: ignore[arg-type]
    np.testing.assert_allclose(ours.transpose(1, 0, 2), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rotation", ["left", "right"])
@pytest.mark.parametrize("overlap", [9, 16.2])
def test_tomopy_fold_matches_tomopy(rotation: str, overlap: float) -> None:
    projections = _random((21, 2, 40), seed=1)
    expected = upstream_tomopy_sino_360_to_180(projections, overlap, rotation)
    ours = sino_360_to_180_tomopy(np.ascontiguousarray(projections.transpose(1, 0, 2)),
                                  overlap=overlap, rotation=rotation)  # type: ignore[arg-type]
    np.testing.assert_allclose(ours.transpose(1, 0, 2), expected, rtol=0, atol=1e-6)


def test_fold_refusals_are_one_clear_line() -> None:
    block = _random((2, 10, 40))
    with pytest.raises(StageError, match="overlap: expected a value or a reference"):
        sino_360_to_180(block, side="left")
    with pytest.raises(StageError, match=r"expected \|overlap\| < 39"):
        sino_360_to_180(block, overlap=39, side="left")
    with pytest.raises(StageError, match="overlap: expected >= 0"):
        sino_360_to_180_tomopy(block, overlap=-2)


@pytest.mark.parametrize(("count", "factor"), [(20, 2), (21, 4), (7, 1), (3, 5)])
def test_averaging_matches_httomolibgpu_and_httomo_angles(count: int, factor: int) -> None:
    projections = _random((count, 3, 8), seed=2)
    expected = upstream_average_projection_frames(projections, factor)
    ours = average_projection_frames(np.ascontiguousarray(projections.transpose(1, 0, 2)),
                                     projection_averaging_factor=factor)
    np.testing.assert_allclose(ours.transpose(1, 0, 2), expected, rtol=1e-6, atol=1e-7)
    spec = REGISTRY["average_projection_frames"]
    angles = np.sort(np.random.default_rng(3).uniform(0, 180, count))
    after = spec.after(Geometry(angles, 8, 3.5), AverageFramesParams(
        projection_averaging_factor=factor))
    np.testing.assert_allclose(after.angles_deg, upstream_averaged_angles(angles, factor)
                               if factor > 1 else angles)
    assert after.angles_deg.size == ours.shape[1] and after.center == 3.5


# ------------------------------------------------------------------ simulated offset axis
def _simulated_360(columns: slice) -> tuple[npt.NDArray[np.float64], SimulatedScan]:
    """A noise-free 360° scan (360 angles) of the simulator's phantom on 256 columns
    (axis 127.5), cut to ``columns``: an offset-axis scan."""
    scan = SimulatedScan(SimulationConfig(rows=4, cols=256, projections=360, flats=0,
                                          darks=0, scan_range_deg=360))
    return scan.attenuation(0, 360)[:, :, columns], scan


@pytest.mark.parametrize("columns", [slice(100, 256), slice(0, 160)])
def test_fold_of_a_simulated_offset_axis_scan_is_the_180_scan(columns: slice) -> None:
    full, scan = _simulated_360(slice(None))
    cut = full[:, :, columns]
    axis = 127.5 - (columns.start or 0)
    found = find_center_360(cut[:, 2, :], denoise=False, norm=True)
    assert found.side == ("left" if axis < cut.shape[2] / 2 else "right")
    folded = sino_360_to_180(np.ascontiguousarray(cut.transpose(1, 0, 2), dtype=np.float32),
                             overlap=found.overlap, side=found.side)
    spec = REGISTRY["sino_360_to_180"]
    geometry = spec.after(Geometry(np.arange(360.0), cut.shape[2], axis),
                          Sino360Params(overlap=found.overlap, side=found.side))
    assert folded.shape == (4, 180, geometry.cols)
    assert geometry.center == (folded.shape[2] - 1) / 2 and geometry.angles_deg[-1] == 179.0
    # the stitched sinogram, centred on its middle, is the full detector's 180° sinogram
    start = int(geometry.center - 127.5)
    stitched = folded[:, :, start : start + 256]
    truth = full[:180].transpose(1, 0, 2)
    inside = slice(8, 248)  # the padded edges hold edge values, not the object
    error = np.abs(stitched[:, :, inside] - truth[:, :, inside]).max() / truth.max()
    assert error < 0.02  # measured 0 (an exact overlap) … 0.01 (half a pixel off)
    # reconstructed at the stitched middle, it is the phantom
    rec = fbp(folded, angles_deg=geometry.angles_deg, center=geometry.center, output_size=256)
    phantom = scan.ground_truth()
    grid = np.arange(256) - 127.5
    fov = np.hypot(*np.meshgrid(grid, grid)) < 0.45 * 256
    r = np.corrcoef(rec[2][fov], phantom[2][fov])[0, 1]
    assert r > 0.97, r
    # and the test discriminates: a fold two columns off blurs it
    wrong = sino_360_to_180(np.ascontiguousarray(cut.transpose(1, 0, 2), dtype=np.float32),
                            overlap=found.overlap + 4, side=found.side)
    blurred = fbp(wrong, angles_deg=geometry.angles_deg, center=(wrong.shape[2] - 1) / 2,
                  output_size=256)
    assert np.corrcoef(blurred[2][fov], phantom[2][fov])[0, 1] < r - 0.02


# ------------------------------------------------------------------ the real neutron scan
def test_fold_of_the_real_neutron_scan_cut_to_an_offset_axis(shared_data: Path) -> None:
    """The sarepy neutron 360° sinogram (axis 245.75 by algotom's Vo on its first half)
    cut at column 200: an offset-axis scan with the axis 45.75 px from its left edge.
    find_center_360 → sino_360_to_180 → FBP at the stitched middle against algotom's FBP
    of the uncut first half at 245.75."""
    raw = tifffile.imread(shared_data / "real/sarepy_neutron360/"
                          "sinogram_360_neutron_image.tif").astype(np.float64)
    norm = raw / raw[:, :30].mean()  # upstream example_02's normalisation
    norm[norm <= 0] = norm.mean()
    sino = -np.log(norm)
    half = sino[:230]  # 0 … 180° (459 angles over 360°, endpoint included)
    axis = find_center_vo(half, 201, 301)
    assert axis == pytest.approx(245.75, abs=0.5)
    cut = sino[:458, 200:]  # drop 360° (= 0°): 458 angles, 229 per half
    found = find_center_360(cut.astype(np.float32))
    assert found.side == "left"
    assert found.cor == pytest.approx(axis - 200, abs=1.5)  # measured 44.58
    angles = np.linspace(0.0, 360.0, 459)[:229]
    grid = np.arange(503) - 251
    fov = np.hypot(*np.meshgrid(grid, grid)) < 0.4 * 503

    def folded_slice(overlap: float) -> Array:
        folded = sino_360_to_180(np.ascontiguousarray(cut[None], dtype=np.float32),
                                 overlap=overlap, side=found.side)
        return fbp(folded, angles_deg=angles, center=(folded.shape[2] - 1) / 2,
                   output_size=503, filter_name="hann")[0]

    ours = folded_slice(found.overlap)
    reference = fbp_reconstruction(half[:229].astype(np.float32), axis,
                                   angles=np.deg2rad(angles), apply_log=False, gpu=False,
                                   filter_name="hann")
    r = np.corrcoef(ours[fov], reference[fov])[0, 1]
    print(f"neutron fold: overlap {found.overlap:.2f}, cor {found.cor:.2f}, r {r:.4f}")
    assert r > 0.98, r  # measured 0.990 (hann on both)
    # the test discriminates: two columns more or less overlap give 0.955 and 0.912
    for wrong in (found.overlap - 2, found.overlap + 2):
        off = folded_slice(wrong)
        assert np.corrcoef(off[fov], reference[fov])[0, 1] < r - 0.02
