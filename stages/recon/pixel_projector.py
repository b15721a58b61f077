"""A non-negative parallel-beam projector pair: pixel-driven, linear interpolation.

OSEM (:func:`stages.recon.iterative.osem`) multiplies the iterate by ``Aᵀ(b / A x) /
Aᵀ1``, which stays non-negative and meaningful only if every entry of ``A`` is ``≥ 0``.
The NUFFT pair of :mod:`stages.recon.projector` models each voxel as a band-limited point,
whose shadow rings (negative side lobes), so ``A x`` can be negative for ``x ≥ 0``. This
pair uses the simplest non-negative model instead: each pixel's value lands on the
detector at ``t = center + x cos θ + y sin θ`` and is split between the columns
``⌊t⌋`` and ``⌊t⌋ + 1`` with the linear weights ``1 − f`` and ``f`` (``f = t − ⌊t⌋``),
so ``A`` has two entries per pixel and angle, all in ``[0, 1]``, and every column of
``A`` (a pixel at one angle) sums to 1 where the detector sees it: the projection of a
pixel keeps its mass. The adjoint is the transpose of the same sparse matrix (one matrix
built per geometry, ``2 × angles × N²`` entries), so ``<A x, y> = <x, Aᵀ y>``
holds to float32 rounding.

Geometry: the NUFFT pair's (and ``fourier_fbp``'s): ``img[iy, ix]`` with
``x = ix − (N−1)/2``, ``y = ROW_SIGN · (iy − (N−1)/2)``, CoR at detector column
``center``, angles in degrees in any order and span
(``tests/stages/test_pixel_projector.py`` checks ``A`` against the NUFFT ``A`` on a
phantom). Rays that leave the detector are dropped (the detector sees what it sees).

Array module: the matrix is built on the host (scipy.sparse) and, for a CuPy band,
uploaded once as ``cupyx.scipy.sparse`` CSR matrices (``A`` and ``Aᵀ``): the products
are then cuSPARSE's. That path has not run on a device (no GPU was lent).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse

from stages.recon.projector import ROW_SIGN
from streamer.errors import StageError

__all__ = ["CHUNK_ENTRIES", "MAX_ENTRIES", "PixelProjector", "pixel_matrix"]

#: The largest matrix built (entries; 12 bytes each on the host): 2 × angles × N² must
#: stay under it, e.g. 1,800 angles of 512² or 180 angles of 1,400² (about 4.5 GB).
MAX_ENTRIES = 400_000_000
#: Matrix entries built per chunk of pixel rows (bounds the build's temporaries to about
#: 40 bytes per entry of a chunk, ~80 MB).
CHUNK_ENTRIES = 2_000_000


def pixel_matrix(angles_deg: npt.NDArray[np.float64], cols: int, size: int,
                 center: float) -> scipy.sparse.csc_matrix:
    """``A`` as a sparse matrix of shape ``(angles × cols, size²)``, float32: row
    ``a · cols + k`` is detector column ``k`` at angle ``a``, column ``iy · N + ix`` the
    pixel. Built directly as the CSR form of ``Aᵀ`` (a pixel's entries, angle by angle,
    are already in column order: no sort, no COO) and returned as its transpose, a CSC
    view. Raises :class:`StageError` when it would hold more than :data:`MAX_ENTRIES`."""
    angles = np.asarray(angles_deg, dtype=np.float64)
    entries = 2 * angles.size * size * size
    if entries > MAX_ENTRIES:
        raise StageError(
            f"pixel projector: expected at most {MAX_ENTRIES:,} matrix entries "
            f"(2 × angles × N²), got {entries:,} ({angles.size} angles, N = {size}); "
            "use fewer angles or a smaller recon_size"
        )
    half = (size - 1) / 2
    x = np.arange(size, dtype=np.float64) - half
    y = ROW_SIGN * (np.arange(size, dtype=np.float64) - half)
    theta = np.deg2rad(angles)
    cos, sin = np.cos(theta), np.sin(theta)
    base = np.arange(angles.size, dtype=np.int64) * cols  # first row of each angle
    chunk = max(1, CHUNK_ENTRIES // (2 * angles.size * size))  # pixel rows per chunk
    index_type = np.int32 if angles.size * cols < 2**31 else np.int64
    counts, indices, weights = [], [], []
    for first in range(0, size, chunk):
        # t[pixel, angle] for the pixel rows first … first+chunk−1
        t = (center + np.multiply.outer(x, cos)[None, :, :]
             + np.multiply.outer(y[first : first + chunk], sin)[:, None, :])
        t = t.reshape(-1, angles.size)
        k0 = np.floor(t)
        k = k0.astype(np.int64)
        # (pixels, angles, 2): columns k0 and k0 + 1 with weights 1 − f and f
        weight = np.empty((*t.shape, 2), dtype=np.float32)
        weight[..., 1] = t - k0
        weight[..., 0] = 1.0 - weight[..., 1]
        both = np.empty((*t.shape, 2), dtype=index_type)
        both[..., 0] = k + base
        both[..., 1] = both[..., 0] + 1
        if k.min() >= 0 and k.max() + 1 < cols:  # the detector sees the whole slice
            counts.append(np.full(t.shape[0], 2 * angles.size, dtype=np.int64))
            indices.append(both.reshape(-1))
            weights.append(weight.reshape(-1))
            continue
        keep = np.stack((k >= 0, k + 1 >= 0), axis=-1) & np.stack((k < cols, k + 1 < cols),
                                                                   axis=-1)
        counts.append(keep.reshape(keep.shape[0], -1).sum(axis=1))
        indices.append(both[keep])
        weights.append(weight[keep])
    indptr = np.concatenate(([0], np.cumsum(np.concatenate(counts))))
    transpose = scipy.sparse.csr_matrix(
        (np.concatenate(weights), np.concatenate(indices), indptr),
        shape=(size * size, angles.size * cols),
    )
    result: scipy.sparse.csc_matrix = transpose.T
    return result


def _device_sparse(xp: Any) -> Any:
    """``cupyx.scipy.sparse`` for a CuPy band (or the twin a test namespace carries as
    ``scipy_sparse``)."""
    twin = getattr(xp, "scipy_sparse", None)
    if twin is not None:
        return twin
    try:
        return importlib.import_module("cupyx.scipy.sparse")
    except ImportError as error:  # pragma: no cover - the gpu extra
        raise StageError(f"pixel projector: a {xp.__name__} band needs cupyx.scipy.sparse "
                         "(pip install 'tomo-streamer[gpu]')") from error


class PixelProjector:
    """``A`` and ``Aᵀ`` (pixel-driven, linear interpolation) for a band of ``rows`` slices
    of ``size × size``; the same constructor and methods as
    :class:`stages.recon.projector.Projector` (``eps``/``threads``/``split`` are the
    NUFFT's and do not apply).

    Parameters
    ----------
    angles_deg : ndarray of shape (angles,)
        Projection angles in degrees.
    cols : int
        Detector columns.
    size : int
        Edge ``N`` of the slices.
    center : float
        Rotation axis, 0-based detector column.
    rows : int
        Slices per call.
    xp : module
        ``numpy`` or ``cupy``: where the band lives.
    matrix : scipy.sparse matrix, optional
        ``A`` already built for this geometry (shared between calls).
    """

    def __init__(self, angles_deg: npt.NDArray[np.float64], cols: int, size: int,
                 center: float, rows: int, *, xp: Any = np,
                 matrix: scipy.sparse.csc_matrix | None = None) -> None:
        if min(cols, size, rows, len(angles_deg)) < 1:
            raise StageError(
                f"pixel projector: expected >= 1 angles, columns, slices and rows, got "
                f"{len(angles_deg)} angles, {cols} columns, size {size}, {rows} rows"
            )
        self.rows, self.angles, self.cols, self.size = rows, len(angles_deg), cols, size
        self.xp = xp
        host = pixel_matrix(angles_deg, cols, size, center) if matrix is None else matrix
        if xp is np:
            self._forward, self._adjoint = host, host.T  # a CSC matrix and its CSR view
        else:
            sparse = _device_sparse(xp)  # cuSPARSE's products want CSR for both
            self._forward = sparse.csr_matrix(host.tocsr())
            self._adjoint = sparse.csr_matrix(host.T.tocsr())

    @property
    def shape_image(self) -> tuple[int, int, int]:
        """``(rows, N, N)``."""
        return (self.rows, self.size, self.size)

    @property
    def shape_sinogram(self) -> tuple[int, int, int]:
        """``(rows, angles, cols)``."""
        return (self.rows, self.angles, self.cols)

    def _check(self, array: Any, shape: tuple[int, int, int], what: str) -> None:
        if tuple(array.shape) != shape:
            raise StageError(
                f"pixel projector: {what}: expected shape {shape}, got {tuple(array.shape)}"
            )

    def forward(self, image: Any) -> Any:
        """``A x``: slices ``(rows, N, N)`` to sinograms ``(rows, angles, cols)``, float32."""
        self._check(image, self.shape_image, "image")
        xp = self.xp
        columns = xp.ascontiguousarray(image.reshape(self.rows, -1).T, dtype=xp.float32)
        out = self._forward @ columns  # (angles·cols, rows)
        return xp.ascontiguousarray(out.T, dtype=xp.float32).reshape(self.shape_sinogram)

    def adjoint(self, sinogram: Any) -> Any:
        """``Aᵀ y``: sinograms ``(rows, angles, cols)`` to slices ``(rows, N, N)``, float32."""
        self._check(sinogram, self.shape_sinogram, "sinogram")
        xp = self.xp
        columns = xp.ascontiguousarray(sinogram.reshape(self.rows, -1).T, dtype=xp.float32)
        out = self._adjoint @ columns  # (N², rows)
        return xp.ascontiguousarray(out.T, dtype=xp.float32).reshape(self.shape_image)

    def normal(self, image: Any) -> Any:
        """``Aᵀ A x``."""
        return self.adjoint(self.forward(image))
