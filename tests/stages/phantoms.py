"""Analytic phantoms shared by the reconstructor tests (``fbp``, ``fourier_fbp``): exact
sinograms, the voxelised truth, the field of view and the relative L2 error."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from streamer.sources.phantom import Ellipsoid, project, voxelise

Float32 = npt.NDArray[np.float32]
ROWS = 2

#: Off-centre, asymmetric, tall along z (every row sees the same slice): a uniform body of
#: 1.0 with features of both signs.
ASYMMETRIC = (
    Ellipsoid(0.08, -0.06, 0.0, 0.82, 0.62, 2.0, 20.0, 1.0),
    Ellipsoid(0.38, 0.18, 0.0, 0.18, 0.09, 2.0, 30.0, 0.5),
    Ellipsoid(-0.32, -0.22, 0.0, 0.12, 0.12, 2.0, 0.0, -0.6),
    Ellipsoid(-0.12, 0.36, 0.0, 0.16, 0.06, 2.0, -40.0, 0.8),
)


def uniform_angles(count: int, span: float = 180.0) -> npt.NDArray[np.float64]:
    return np.arange(count, dtype=np.float64) * (span / count)


def sinogram(
    ellipsoids: Sequence[Ellipsoid],
    angles: npt.NDArray[np.float64],
    cols: int,
    *,
    radius: float,
    cor: float | None = None,
    rows: int = ROWS,
) -> Float32:
    """``(rows, angles, cols)`` float32 sinogram block of the phantom."""
    proj = project(ellipsoids, angles, rows, cols, radius_px=radius, cor_px=cor, z_scale_px=radius)
    return np.ascontiguousarray(proj.transpose(1, 0, 2), dtype=np.float32)


def truth(ellipsoids: Sequence[Ellipsoid], n: int, *, radius: float) -> Float32:
    return voxelise(ellipsoids, ROWS, n, radius_px=radius, z_scale_px=radius, supersample=8)


def fov(n: int) -> npt.NDArray[np.bool_]:
    grid = np.arange(n) - (n - 1) / 2
    inside: npt.NDArray[np.bool_] = grid[:, None] ** 2 + grid[None, :] ** 2 < (0.45 * n) ** 2
    return inside


def rel_l2(rec: Float32, truth: Float32) -> float:
    fov_mask = fov(truth.shape[-1])
    error = np.linalg.norm((rec - truth)[..., fov_mask])
    return float(error / np.linalg.norm(truth[..., fov_mask]))
