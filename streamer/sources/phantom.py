"""An analytic 3-D phantom made of ellipsoids: exact parallel-beam projections and voxels.

The simulator (:mod:`streamer.sources.simulate`) projects this phantom to make detector
frames, and the reconstruction tests compare their slices with :func:`voxelise`; both
use the same geometry, stated here once. Later FBP / back-projection code must match it.

Geometry convention
-------------------
All lengths are in detector pixels (the detector pixel is the voxel edge).

* **Slices.** A reconstructed slice is ``img[iy, ix]`` of shape ``(N, N)``; voxel
  ``(iy, ix)`` is centred at ``x = ix - (N-1)/2``, ``y = (N-1)/2 - iy`` (``y`` points up
  the image, row 0 at the top: TomoPy's, ASTRA's and algotom's orientation). The origin
  ``x = y = 0`` lies on the rotation axis.
* **Rotation and columns.** At rotation angle ``θ`` (degrees on every public API, radians
  inside) the parallel ray through the point ``(x, y)`` hits the 0-based detector column

  ``u = cor_px + x·cos θ + y·sin θ``,

  i.e. the ray runs along the direction ``(-sin θ, cos θ)``. At ``θ = 0`` a projection
  integrates along ``y`` (``u = cor_px + x``); at ``θ = 90°`` it integrates along ``x``
  (``u = cor_px + y``). ``cor_px`` is the column of the rotation axis, ``(cols-1)/2`` by
  default.
* **Rows.** Detector row ``r`` sees the plane ``z = r - (rows-1)/2`` (one slice per row, no
  tilt, no cone): slice ``r`` of the volume belongs to detector row ``r``.
* **Sampling.** Detector pixels are *point samples* at pixel centres: a projection value
  is the exact line integral (chord length × value, in pixels) along the one ray through
  the centre of the pixel. It is not averaged over the pixel's area.
* **Phantom units.** Ellipsoid centres and semi-axes are given in units of the object
  half-width: in-plane (x, y) they are multiplied by ``radius_px``, along z by
  ``z_scale_px`` (default ``min(radius_px, rows/2)``: isotropic when the detector is tall
  enough, squashed along z when it is short, so every detector shows every feature).

For a projection ``p = project(...)`` at ``θ = 0`` and a volume ``v = voxelise(...)`` with
``N = cols`` and the default CoR, ``p[0] ≈ v.sum(axis=1)``; at ``θ = 90°``
``p[0] ≈ v.sum(axis=2)[:, ::-1]`` (``y`` grows as ``iy`` falls).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from streamer.errors import ConfigError

#: Fraction of the detector half-width that the phantom's radius may use (before the CoR
#: offset is taken off): leaves air columns at both edges for air normalisation.
FIT_FRACTION: Final = 0.45


@dataclass(frozen=True)
class Ellipsoid:
    """One ellipsoid of constant attenuation, in units of the object half-width.

    Parameters
    ----------
    x, y, z : float
        Centre; ``x, y`` in units of ``radius_px``, ``z`` in units of ``z_scale_px``.
    a, b, c : float
        Semi-axes (> 0): ``a`` along the ellipsoid's own first axis, ``b`` along its second
        in-plane axis, ``c`` along z.
    phi_deg : float
        Rotation about the z (rotation) axis: the ``a`` axis points along
        ``(cos φ, sin φ)`` in the ``(x, y)`` plane.
    value : float
        Attenuation added inside (per pixel of path); may be negative, as in Shepp–Logan,
        where inner ellipsoids carve lower densities out of outer ones.
    """

    x: float
    y: float
    z: float
    a: float
    b: float
    c: float
    phi_deg: float = 0.0
    value: float = 1.0

    def __post_init__(self) -> None:
        for name in ("x", "y", "z", "a", "b", "c", "phi_deg", "value"):
            item = getattr(self, name)
            if not math.isfinite(item):
                raise ConfigError(f"phantom.ellipsoid.{name}: expected a finite number, got {item}")
        for name in ("a", "b", "c"):
            if getattr(self, name) <= 0:
                raise ConfigError(
                    f"phantom.ellipsoid.{name}: expected a semi-axis > 0, got {getattr(self, name)}"
                )


def shepp_logan_3d() -> tuple[Ellipsoid, ...]:
    """The 3-D Shepp–Logan head phantom: Kak–Slaney geometry, Yu–Ye–Wang contrasts.

    The ellipsoids are those of the 3-D Shepp–Logan phantom of Kak & Slaney [1]_ (only
    rotations about z, so it fits this module's geometry); the values are the
    higher-contrast set of Yu, Ye & Wang [2]_ (the original 2.0 / −0.98 / ±0.01 … give
    brain contrasts of 1–2 %, lost in the noise of a short simulated scan). Densities in the
    slices: skull 1.0, brain 0.2, ventricles 0.0, and 0.3, 0.4, 0.6 for the small features
    (where they overlap), so a reconstruction shows several distinct grey levels.

    Returns
    -------
    tuple of Ellipsoid
        Ten ellipsoids; the outer one spans ``±0.69 × ±0.92 × ±0.9`` object half-widths.

    References
    ----------
    .. [1] A. C. Kak and M. Slaney, *Principles of Computerized Tomographic Imaging*,
       IEEE Press, 1988, §3.6 (3-D Shepp–Logan phantom table, p. 102).
    .. [2] H. Yu, Y. Ye and G. Wang, "Katsevich-type algorithms for variable radius spiral
       cone-beam CT", Proc. SPIE 5535, 550–557 (2004).
    """
    table = (
        #  x       y       z       a       b      c     phi    value
        (0.0, 0.0, 0.0, 0.69, 0.92, 0.9, 0.0, 1.0),
        (0.0, 0.0, 0.0, 0.6624, 0.874, 0.88, 0.0, -0.8),
        (-0.22, 0.0, -0.25, 0.41, 0.16, 0.21, 108.0, -0.2),
        (0.22, 0.0, -0.25, 0.31, 0.11, 0.22, 72.0, -0.2),
        (0.0, 0.35, -0.25, 0.21, 0.25, 0.5, 0.0, 0.2),
        (0.0, 0.1, -0.25, 0.046, 0.046, 0.046, 0.0, 0.2),
        (-0.08, -0.65, -0.25, 0.046, 0.023, 0.02, 0.0, 0.1),
        (0.06, -0.65, -0.25, 0.046, 0.023, 0.02, 90.0, 0.1),
        (0.06, -0.105, 0.625, 0.056, 0.04, 0.1, 90.0, 0.2),
        (0.0, 0.1, 0.625, 0.056, 0.056, 0.1, 0.0, -0.2),
    )
    return tuple(Ellipsoid(*row) for row in table)


def fit_radius_px(cols: int, cor_px: float | None = None) -> float:
    """Default object half-width: ``0.45·cols`` less the CoR's offset from the centre.

    The Shepp–Logan skull reaches 0.92 half-widths, so the object stays inside about
    83 % of the detector width whatever the angle, leaving air columns at both edges
    (needed by air normalisation) even when the rotation axis is off-centre.

    Raises
    ------
    ConfigError
        If the CoR is so far off-centre that no object fits.
    """
    cor = (cols - 1) / 2 if cor_px is None else float(cor_px)
    radius = FIT_FRACTION * cols - abs(cor - (cols - 1) / 2)
    if not radius > 0:
        raise ConfigError(
            f"phantom.cor_px: expected within {FIT_FRACTION * cols:g} px of the detector "
            f"centre {(cols - 1) / 2:g} so that the phantom fits, got {cor}"
        )
    return radius


def default_z_scale_px(rows: int, radius_px: float) -> float:
    """Default z scale: ``min(radius_px, rows/2)`` (see the module docstring)."""
    return min(float(radius_px), rows / 2)


def _check_geometry(rows: int, cols: int, radius_px: float, z_scale_px: float) -> None:
    if rows < 1 or cols < 1:
        raise ConfigError(f"phantom: expected rows, cols >= 1, got {rows}x{cols}")
    for name, value in (("radius_px", radius_px), ("z_scale_px", z_scale_px)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"phantom.{name}: expected a finite number > 0, got {value}")


def _index_range(centre: float, half: float, offset: float, size: int) -> tuple[int, int]:
    """Indices ``i`` in ``[0, size)`` with ``|i - offset - centre| <= half`` as ``[lo, hi)``."""
    lo = max(0, math.ceil(centre - half + offset))
    hi = min(size, math.floor(centre + half + offset) + 1)
    return lo, hi


def project(
    ellipsoids: Sequence[Ellipsoid],
    angles_deg: npt.ArrayLike,
    rows: int,
    cols: int,
    *,
    radius_px: float,
    cor_px: float | None = None,
    z_scale_px: float | None = None,
) -> npt.NDArray[np.float64]:
    """Exact parallel-beam line integrals of the phantom, sampled at pixel centres.

    In the frame of an ellipsoid scaled to a unit sphere the ray becomes a line, and its
    chord through the sphere is ``2·sqrt(1 - d²)`` for a line at distance ``d`` from the
    centre. Mapped back, a ray at signed in-plane distance ``s'`` from the ellipsoid's
    centre, at height ``z``, has the chord ``(2AB/ρ²)·sqrt(k²ρ² - s'²)`` with
    ``ρ² = A²cos²(θ-φ) + B²sin²(θ-φ)`` (the ellipse's half-width along the detector) and
    ``k² = 1 - ((z - z₀)/C)²`` (the shrink of its cross-section at that height). This
    is evaluated per ellipsoid only over the rows and columns its bounding box touches.

    Parameters
    ----------
    ellipsoids : sequence of Ellipsoid
        The phantom.
    angles_deg : array_like of shape (angles,)
        Rotation angles, degrees (a scalar is taken as one angle).
    rows, cols : int
        Detector shape.
    radius_px : float
        Object half-width in pixels (see :func:`fit_radius_px`).
    cor_px : float, optional
        Column of the rotation axis; ``(cols-1)/2`` when omitted.
    z_scale_px : float, optional
        Pixels per phantom unit along z; :func:`default_z_scale_px` when omitted.

    Returns
    -------
    ndarray of shape (angles, rows, cols), float64
        Sum over ellipsoids of chord length (pixels) × value.
    """
    angles = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64))
    if angles.ndim != 1 or not np.all(np.isfinite(angles)):
        raise ConfigError(f"phantom.angles_deg: expected finite angles in 1-D, got {angles!r}")
    cor = (cols - 1) / 2 if cor_px is None else float(cor_px)
    if not math.isfinite(cor):
        raise ConfigError(f"phantom.cor_px: expected a finite column, got {cor}")
    z_scale = default_z_scale_px(rows, radius_px) if z_scale_px is None else float(z_scale_px)
    _check_geometry(rows, cols, radius_px, z_scale)

    out = np.zeros((angles.shape[0], rows, cols), dtype=np.float64)
    z = np.arange(rows, dtype=np.float64) - (rows - 1) / 2
    s = np.arange(cols, dtype=np.float64) - cor
    theta = np.deg2rad(angles)
    for e in ellipsoids:
        semi_a, semi_b, semi_c = e.a * radius_px, e.b * radius_px, e.c * z_scale
        cx, cy, cz = e.x * radius_px, e.y * radius_px, e.z * z_scale
        r_lo, r_hi = _index_range(cz, semi_c, (rows - 1) / 2, rows)
        if r_lo >= r_hi:
            continue
        k2 = 1.0 - ((z[r_lo:r_hi] - cz) / semi_c) ** 2
        k2 = np.maximum(k2, 0.0)[:, None]
        phi = math.radians(e.phi_deg)
        for j, th in enumerate(theta):
            rel = th - phi
            rho2 = (semi_a * math.cos(rel)) ** 2 + (semi_b * math.sin(rel)) ** 2
            centre_s = cx * math.cos(th) + cy * math.sin(th)
            c_lo, c_hi = _index_range(centre_s, math.sqrt(rho2), cor, cols)
            if c_lo >= c_hi:
                continue
            sp2 = (s[c_lo:c_hi] - centre_s) ** 2
            chord = k2 * rho2 - sp2[None, :]
            np.maximum(chord, 0.0, out=chord)
            np.sqrt(chord, out=chord)
            chord *= e.value * 2.0 * semi_a * semi_b / rho2
            out[j, r_lo:r_hi, c_lo:c_hi] += chord
    return out


def voxelise(
    ellipsoids: Sequence[Ellipsoid],
    rows: int,
    n: int,
    *,
    radius_px: float,
    z_scale_px: float | None = None,
    supersample: int = 4,
) -> npt.NDArray[np.float32]:
    """The phantom's slices on the reconstruction grid, consistent with :func:`project`.

    Slice ``r`` is the plane ``z = r - (rows-1)/2`` (point-sampled along z, like the
    detector rows); in-plane each voxel is the mean over ``supersample²`` sub-samples at
    sub-pixel centres, so boundary voxels get their partial-volume value.

    Parameters
    ----------
    ellipsoids : sequence of Ellipsoid
        The phantom.
    rows : int
        Number of slices (detector rows).
    n : int
        Slice size ``N`` (usually the detector width); ``x = ix - (N-1)/2`` is measured
        from the rotation axis.
    radius_px : float
        Object half-width in pixels, as given to :func:`project`.
    z_scale_px : float, optional
        Pixels per phantom unit along z; :func:`default_z_scale_px` when omitted.
    supersample : int
        Sub-samples per voxel edge (1 = point samples at voxel centres).

    Returns
    -------
    ndarray of shape (rows, n, n), float32
        ``vol[r, iy, ix]``: attenuation per pixel of path.
    """
    z_scale = default_z_scale_px(rows, radius_px) if z_scale_px is None else float(z_scale_px)
    _check_geometry(rows, n, radius_px, z_scale)
    if supersample < 1:
        raise ConfigError(f"phantom.supersample: expected an integer >= 1, got {supersample}")
    ss = int(supersample)
    out = np.zeros((rows, n, n), dtype=np.float64)
    z = np.arange(rows, dtype=np.float64) - (rows - 1) / 2
    sub = (np.arange(ss, dtype=np.float64) + 0.5) / ss - 0.5
    centre_px = (n - 1) / 2
    for e in ellipsoids:
        semi_a, semi_b, semi_c = e.a * radius_px, e.b * radius_px, e.c * z_scale
        cx, cy, cz = e.x * radius_px, e.y * radius_px, e.z * z_scale
        r_lo, r_hi = _index_range(cz, semi_c, (rows - 1) / 2, rows)
        phi = math.radians(e.phi_deg)
        cos_p, sin_p = math.cos(phi), math.sin(phi)
        half_x = math.hypot(semi_a * cos_p, semi_b * sin_p)
        half_y = math.hypot(semi_a * sin_p, semi_b * cos_p)
        # Voxels whose footprint (±0.5 px) may overlap the ellipse's bounding box.
        x_lo, x_hi = _index_range(cx, half_x + 0.5, centre_px, n)
        y_lo, y_hi = _index_range(-cy, half_y + 0.5, centre_px, n)  # row iy: y = c - iy
        if r_lo >= r_hi or x_lo >= x_hi or y_lo >= y_hi:
            continue
        xs = ((np.arange(x_lo, x_hi) - centre_px)[:, None] + sub[None, :]).ravel() - cx
        ys = ((centre_px - np.arange(y_lo, y_hi))[:, None] + sub[None, :]).ravel() - cy
        local_a = xs[None, :] * cos_p + ys[:, None] * sin_p
        local_b = -xs[None, :] * sin_p + ys[:, None] * cos_p
        q = (local_a / semi_a) ** 2 + (local_b / semi_b) ** 2  # (ny·ss, nx·ss)
        k2 = 1.0 - ((z[r_lo:r_hi] - cz) / semi_c) ** 2
        shape = (y_hi - y_lo, ss, x_hi - x_lo, ss)
        for r, k2_r in zip(range(r_lo, r_hi), k2, strict=True):
            if k2_r < 0:
                continue
            fraction = (q <= k2_r).reshape(shape).mean(axis=(1, 3))
            out[r, y_lo:y_hi, x_lo:x_hi] += e.value * fraction
    return out.astype(np.float32)


def peak_line_integral(
    ellipsoids: Sequence[Ellipsoid], *, angles: int = 72, heights: int = 65, samples: int = 257
) -> float:
    """Largest line integral of the phantom per unit ``radius_px`` (all angles and heights).

    In-plane every length scales with ``radius_px`` and ``z`` only selects the
    cross-section, so the largest line integral of a detector is
    ``radius_px × peak_line_integral(...)``. It is found on a grid of ``angles`` angles
    over 180° (parallel projections repeat mirrored after 180°), ``heights`` planes over
    ``z ∈ [-1, 1]`` and ``samples`` rays over ``s ∈ [-1.1, 1.1]`` phantom units; the maxima
    of a smooth phantom sit in smooth places, so the grid value is within a fraction of a
    percent of the true one.

    Returns
    -------
    float
        The peak, in units of ``value × radius_px``.
    """
    radius = (samples - 1) / 2.2
    z_scale = (heights - 1) / 2
    sino = project(
        ellipsoids,
        np.arange(angles) * (180.0 / angles),
        heights,
        samples,
        radius_px=radius,
        z_scale_px=z_scale,
    )
    return float(sino.max()) / radius
