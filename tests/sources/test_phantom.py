"""The analytic phantom: exact chords, mass conservation and the geometry convention."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from streamer.errors import ConfigError
from streamer.sources.phantom import (
    Ellipsoid,
    default_z_scale_px,
    fit_radius_px,
    peak_line_integral,
    project,
    shepp_logan_3d,
    voxelise,
)

ROWS, COLS = 24, 96
RADIUS = fit_radius_px(COLS)
Z_SCALE = default_z_scale_px(ROWS, RADIUS)
#: An asymmetric probe: off-centre in x, y and z, rotated, with unequal semi-axes.
OFF_CENTRE = (Ellipsoid(x=0.35, y=-0.2, z=0.15, a=0.3, b=0.12, c=0.6, phi_deg=30.0, value=1.0),)
#: Twice the largest |Hurwitz ζ(-1/2, δ)| = 0.2079 (one per edge), rounded up: see
#: _projection_bound.
SQRT_EDGE = 0.5


def _cross_sections(
    ellipsoids: tuple[Ellipsoid, ...], row: int, rows: int, radius: float, z_scale: float
) -> list[tuple[Ellipsoid, float, float, float, float]]:
    """(ellipsoid, A, B, k, phi) for each ellipsoid cut by the plane of detector ``row``."""
    z = row - (rows - 1) / 2
    cut = []
    for e in ellipsoids:
        k2 = 1 - ((z - e.z * z_scale) / (e.c * z_scale)) ** 2
        if k2 > 0:
            cut.append((e, e.a * radius, e.b * radius, math.sqrt(k2), math.radians(e.phi_deg)))
    return cut


def _projection_bound(cut: list[tuple[Ellipsoid, float, float, float, float]], th: float) -> float:
    """Largest error of a point-sampled row sum of chords against the exact area.

    An ellipse's chord profile is ``c·sqrt(a² - s²)`` (``a = kρ``, ``c = 2AB/ρ²·|v|``),
    smooth except at its two edges, where it rises like a square root. Sampling it at unit
    spacing, whatever the phase, misses the area by at most ``2·0.2079·c·sqrt(2a)``
    (Euler–Maclaurin with the square-root edge: the constant is ``|ζ(-1/2)|``; checked
    numerically for every a ≥ 0.05 and phase), so each ellipse adds ``SQRT_EDGE·c·sqrt(2a)``.
    """
    bound = 0.0
    for e, semi_a, semi_b, k, phi in cut:
        rho = math.hypot(semi_a * math.cos(th - phi), semi_b * math.sin(th - phi))
        bound += SQRT_EDGE * abs(e.value) * 2 * semi_a * semi_b / rho**2 * math.sqrt(2 * k * rho)
    return bound


def _voxel_bound(cut: list[tuple[Ellipsoid, float, float, float, float]], ss: int) -> float:
    """Largest error of the supersampled voxel sum of one slice against the exact area.

    Sub-samples are a regular grid of spacing ``h = 1/ss``. Along each sub-row the count of
    samples inside an ellipse is its chord length to within one sample (error < h, weight
    h); the sub-rows then sample the chord-length profile ``L(y)``, again a square-root
    edged profile, adding ``SQRT_EDGE·c_y·h^1.5·sqrt(2a_y)`` as in _projection_bound.
    """
    h = 1 / ss
    bound = 0.0
    for e, semi_a, semi_b, k, phi in cut:
        half_y = k * math.hypot(semi_a * math.sin(phi), semi_b * math.cos(phi))
        c_y = 2 * semi_a * semi_b / (half_y / k) ** 2
        subrows = 2 * half_y / h + 1
        bound += abs(e.value) * (subrows * h * h + SQRT_EDGE * c_y * h**1.5 * math.sqrt(2 * half_y))
    return bound


def test_sinogram_mass_equals_slice_mass_at_every_angle() -> None:
    """Each projection row integrates to its slice's mass, whatever the angle."""
    phantom = shepp_logan_3d()
    angles = np.arange(0.0, 180.0, 7.5)
    ss = 4
    proj = project(phantom, angles, ROWS, COLS, radius_px=RADIUS)
    volume = voxelise(phantom, ROWS, COLS, radius_px=RADIUS, supersample=ss).astype(np.float64)
    slice_mass = volume.sum(axis=(1, 2))
    assert np.abs(slice_mass).max() > 500  # the slices are not empty
    for row in range(ROWS):
        cut = _cross_sections(phantom, row, ROWS, RADIUS, Z_SCALE)
        # float32 voxels: ~1e-7 relative per voxel, negligible against the bounds here.
        for j, th in enumerate(np.deg2rad(angles)):
            tolerance = _projection_bound(cut, th) + _voxel_bound(cut, ss) + 1e-3
            assert abs(proj[j, row].sum() - slice_mass[row]) <= tolerance, (row, angles[j])


def test_mass_matches_the_exact_cross_section_areas() -> None:
    """Σ value·π·A·B·k² is the exact slice mass; the projections reproduce it."""
    phantom = shepp_logan_3d()
    proj = project(phantom, [0.0, 41.0, 90.0], ROWS, COLS, radius_px=RADIUS)
    for row in range(ROWS):
        cut = _cross_sections(phantom, row, ROWS, RADIUS, Z_SCALE)
        exact = sum(e.value * math.pi * a * b * k * k for e, a, b, k, _ in cut)
        for j, th in enumerate(np.deg2rad([0.0, 41.0, 90.0])):
            assert abs(proj[j, row].sum() - exact) <= _projection_bound(cut, th) + 1e-9


def _point_sum_bound(ellipsoids: tuple[Ellipsoid, ...]) -> float:
    # Summing point samples (supersample=1) along a ray at unit spacing measures each
    # ellipse's chord to within one pixel: the error is below Σ|value| on any ray.
    return sum(abs(e.value) for e in ellipsoids) + 1e-4


@pytest.mark.parametrize("phantom", [shepp_logan_3d(), OFF_CENTRE], ids=["shepp", "off-centre"])
def test_zero_degrees_integrates_along_y_and_ninety_along_x(
    phantom: tuple[Ellipsoid, ...],
) -> None:
    """The convention u = cor + x·cosθ + y·sinθ, checked against the voxel grid."""
    volume = voxelise(phantom, ROWS, COLS, radius_px=RADIUS, supersample=1).astype(np.float64)
    proj = project(phantom, [0.0, 90.0], ROWS, COLS, radius_px=RADIUS)
    bound = _point_sum_bound(phantom)
    np.testing.assert_allclose(proj[0], volume.sum(axis=1), rtol=0, atol=bound)  # along y
    # along x: u = cor + y, and y grows up the image (row 0 at the top)
    np.testing.assert_allclose(proj[1], volume.sum(axis=2)[:, ::-1], rtol=0, atol=bound)
    # The comparison has teeth: swapped axes (and, for the asymmetric probe, a mirrored
    # column axis or rows running down) are far outside the bound.
    assert np.abs(proj[0] - volume.sum(axis=2)).max() > 5 * bound
    if phantom is OFF_CENTRE:
        assert np.abs(proj[0] - volume.sum(axis=1)[:, ::-1]).max() > 5 * bound
        assert np.abs(proj[1] - volume.sum(axis=2)).max() > 5 * bound


def test_off_centre_ellipsoid_lands_where_the_convention_says() -> None:
    """Centroid of the projection of an ellipsoid at (x0, y0) is cor + x0·cosθ + y0·sinθ."""
    (e,) = OFF_CENTRE
    angles = np.array([0.0, 30.0, 90.0, 135.0, 180.0, 270.0])
    cols = 256
    radius = fit_radius_px(cols)
    cor = (cols - 1) / 2
    proj = project(OFF_CENTRE, angles, 1, cols, radius_px=radius, z_scale_px=50.0)
    centroid = (proj[:, 0] * np.arange(cols)).sum(axis=1) / proj[:, 0].sum(axis=1)
    th = np.deg2rad(angles)
    expected = cor + e.x * radius * np.cos(th) + e.y * radius * np.sin(th)
    np.testing.assert_allclose(centroid, expected, atol=0.05)


def test_rotated_ellipsoid_is_seen_along_its_long_axis_at_phi_plus_90() -> None:
    """The a axis points along (cos φ, sin φ); rays run along (-sin θ, cos θ).

    At θ = φ + 90° the rays run along the a axis: the chord through the centre is 2A and
    the shadow is 2B wide; at θ = φ it is the other way round.
    """
    phi, semi_a, semi_b, radius, cols = 30.0, 0.6, 0.15, 40.0, 101
    e = (Ellipsoid(0.0, 0.0, 0.0, semi_a, semi_b, 0.5, phi_deg=phi),)
    proj = project(e, [phi + 90.0, phi], 1, cols, radius_px=radius, z_scale_px=10.0)[:, 0]
    centre = (cols - 1) // 2
    np.testing.assert_allclose(proj[:, centre], [2 * semi_a * radius, 2 * semi_b * radius])
    widths = (proj > 0).sum(axis=1)  # pixel centres strictly inside ±ρ
    assert widths[0] == 2 * math.ceil(semi_b * radius) - 1
    assert widths[1] == 2 * math.ceil(semi_a * radius) - 1


def test_half_turn_mirrors_the_projection() -> None:
    proj = project(shepp_logan_3d(), [17.0, 197.0], ROWS, COLS, radius_px=RADIUS)
    np.testing.assert_allclose(proj[1], proj[0][:, ::-1], atol=1e-9)


def test_rows_follow_z_upwards() -> None:
    """Detector row r sees z = r - (rows-1)/2: an ellipsoid at z > 0 shows in the high rows."""
    rows, z_scale = 40, 10.5
    proj = project(OFF_CENTRE, [0.0], rows, COLS, radius_px=RADIUS, z_scale_px=z_scale)[0]
    lit = np.flatnonzero(proj.sum(axis=1) > 0)
    e = OFF_CENTRE[0]
    centre_row = (rows - 1) / 2 + e.z * z_scale  # 21.075: rows 15 … 27 are inside
    assert lit.min() == math.ceil(centre_row - e.c * z_scale) == 15
    assert lit.max() == math.floor(centre_row + e.c * z_scale) == 27


def test_sphere_chord_is_exact() -> None:
    """A sphere of radius R gives 2·sqrt(R² - s² - z²)·value at every pixel centre."""
    rows, cols, radius = 21, 64, 25.0
    value = 0.37
    sphere = (Ellipsoid(0.0, 0.0, 0.0, 0.8, 0.8, 0.8, phi_deg=12.0, value=value),)
    proj = project(sphere, [0.0, 33.3, 250.0], rows, cols, radius_px=radius, z_scale_px=radius)
    s = np.arange(cols) - (cols - 1) / 2
    z = np.arange(rows) - (rows - 1) / 2
    big_r = 0.8 * radius
    expected = 2 * np.sqrt(np.clip(big_r**2 - s[None, :] ** 2 - z[:, None] ** 2, 0, None)) * value
    for j in range(3):
        np.testing.assert_allclose(proj[j], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shift", [3, -5])
def test_cor_shift_moves_the_projection_by_the_shift(shift: int) -> None:
    phantom = shepp_logan_3d()
    angles = [0.0, 61.0, 122.0]
    cor = (COLS - 1) / 2
    radius = fit_radius_px(COLS, cor + 5)  # fits at every CoR used here
    base = project(phantom, angles, ROWS, COLS, radius_px=radius, cor_px=cor)
    moved = project(phantom, angles, ROWS, COLS, radius_px=radius, cor_px=cor + shift)
    if shift > 0:
        np.testing.assert_allclose(moved[..., shift:], base[..., :-shift], atol=1e-9)
    else:
        np.testing.assert_allclose(moved[..., :shift], base[..., -shift:], atol=1e-9)
    assert np.abs(moved - base).max() > 1.0


def test_several_distinct_densities() -> None:
    volume = voxelise(shepp_logan_3d(), 64, 128, radius_px=fit_radius_px(128), supersample=1)
    levels = set(np.round(np.unique(volume).astype(np.float64), 4).tolist())
    # skull, brain, ventricles (0.0 inside the head), and the small features
    assert {0.0, 0.2, 0.3, 0.4, 1.0} <= levels
    assert len(levels - {0.0}) >= 5


def test_voxelise_supersampling_gives_partial_volumes() -> None:
    sphere = (Ellipsoid(0.0, 0.0, 0.0, 0.5, 0.5, 0.5),)
    coarse = voxelise(sphere, 1, 32, radius_px=14.0, supersample=1)
    fine = voxelise(sphere, 1, 32, radius_px=14.0, supersample=8)
    assert set(np.unique(coarse).tolist()) == {0.0, 1.0}
    partial = (fine > 0) & (fine < 1)
    assert partial.sum() > 20  # the rim
    # The partial-volume slice holds the disc's area far better than the point-sampled one.
    area = math.pi * 7.0**2
    assert abs(fine.sum() - area) < abs(coarse.sum() - area) or abs(fine.sum() - area) < 0.5


def test_peak_line_integral_is_the_sinogram_maximum() -> None:
    phantom = shepp_logan_3d()
    peak = peak_line_integral(phantom)
    cols = 200
    radius = fit_radius_px(cols)
    # The peak lies on the plane z = -0.25 (the ventricles' centre), which row 15 of 41
    # samples with z_scale 20; away from it the sinogram drops quickly along z.
    sino: npt.NDArray[np.float64] = project(
        phantom, np.arange(0, 180, 3.0), 41, cols, radius_px=radius, z_scale_px=20.0
    )
    # A different grid of the same phantom reaches the peak to within a percent.
    assert sino.max() <= peak * radius * 1.005
    assert sino.max() >= peak * radius * 0.99


def test_invalid_phantom_values_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"phantom\.ellipsoid\.b: expected a semi-axis > 0"):
        Ellipsoid(0.0, 0.0, 0.0, 0.5, 0.0, 0.5)
    with pytest.raises(ConfigError, match=r"phantom\.ellipsoid\.x: expected a finite number"):
        Ellipsoid(float("nan"), 0.0, 0.0, 0.5, 0.5, 0.5)
    with pytest.raises(ConfigError, match=r"phantom\.cor_px: expected within"):
        fit_radius_px(100, cor_px=95.0)
    with pytest.raises(ConfigError, match=r"phantom\.radius_px: expected a finite number > 0"):
        project(shepp_logan_3d(), [0.0], 4, 4, radius_px=0.0)
    with pytest.raises(ConfigError, match=r"phantom\.angles_deg"):
        project(shepp_logan_3d(), [0.0, math.inf], 4, 4, radius_px=1.0)
