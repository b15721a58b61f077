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
pixel keeps its mass. The adjoint is the transpose of the same sparse matrix, so
``<A x, y> = <x, Aᵀ y>`` holds to float32 rounding.

Two ways to hold ``A`` (the same entries, the same products to float32 rounding):

* **The matrix** (``2 × angles × N²`` entries of 12 bytes: 3.8 GB at N = 512 with 600
  angles), built once per geometry and, through :class:`PixelMatrixCache` (the stage's
  ``StageSpec.cache``, ADR 0010), once per scan and subset instead of once per band; up to
  :data:`MATRIX_ENTRIES`.
* **Angle by angle, matrix-free** above that (N = 1024 with 1200 angles: 2.5 billion
  entries, 30 GB as a matrix): each product builds one angle's ``cols × N²`` matrix at a
  time from the geometry (its two columns and weights per pixel: about 45 bytes per pixel,
  47 MB at N = 1024, whatever the angles), applies it to every row of the band and drops
  it. Building costs a few products' worth per angle, shared by the band's rows, and
  :meth:`PixelProjector.forward_adjoint` (OSEM's ``Aᵀ f(A x)``) builds each angle once
  for both products.

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
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse

from stages.recon.projector import ROW_SIGN
from streamer.errors import StageError

__all__ = ["CHUNK_ENTRIES", "MATRIX_ENTRIES", "MAX_ENTRIES", "PixelMatrixCache",
           "PixelProjector", "pixel_matrix"]

#: The largest matrix :func:`pixel_matrix` builds (entries; 12 bytes each on the host):
#: 2 × angles × N² must stay under it, e.g. 1,800 angles of 512² (about 4.5 GB).
MAX_ENTRIES = 400_000_000
#: :class:`PixelProjector` holds the whole matrix up to this many entries (1.2 GB: e.g.
#: 1,200 angles of 200², 180 angles of 512²) and goes angle by angle, matrix-free, above.
MATRIX_ENTRIES = 100_000_000
#: Bytes per pixel of one angle's matrix-free build (float64 positions and floors, int32
#: columns, float32 weights, the CSC arrays, a mask).
ANGLE_BYTES_PER_PIXEL = 45
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
    cache : PixelMatrixCache, optional
        Where the matrix of this geometry is found or kept (one per scan).
    matrix_free : bool, optional
        Go angle by angle without the matrix; None: above :data:`MATRIX_ENTRIES`.
    """

    def __init__(self, angles_deg: npt.NDArray[np.float64], cols: int, size: int,
                 center: float, rows: int, *, xp: Any = np,
                 matrix: scipy.sparse.csc_matrix | None = None,
                 cache: PixelMatrixCache | None = None,
                 matrix_free: bool | None = None) -> None:
        if min(cols, size, rows, len(angles_deg)) < 1:
            raise StageError(
                f"pixel projector: expected >= 1 angles, columns, slices and rows, got "
                f"{len(angles_deg)} angles, {cols} columns, size {size}, {rows} rows"
            )
        self.rows, self.angles, self.cols, self.size = rows, len(angles_deg), cols, size
        self.xp = xp
        if matrix_free is None:
            matrix_free = matrix is None and 2 * self.angles * size * size > MATRIX_ENTRIES
        self.matrix_free = matrix_free
        self._forward: Any = None
        self._adjoint: Any = None
        if matrix_free:
            self._angles = _AngleWise(np.asarray(angles_deg, dtype=np.float64), cols, size,
                                      center, xp)
            return
        if matrix is None:
            matrix = (pixel_matrix(angles_deg, cols, size, center) if cache is None
                      else cache.matrix(angles_deg, cols, size, center))
        if xp is np:
            self._forward, self._adjoint = matrix, matrix.T  # a CSC matrix and its CSR view
        else:
            sparse = _device_sparse(xp)  # cuSPARSE's products want CSR for both
            self._forward = sparse.csr_matrix(matrix.tocsr())
            self._adjoint = sparse.csr_matrix(matrix.T.tocsr())

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
        if self.matrix_free:
            out = xp.empty((self.rows, self.angles, self.cols), dtype=xp.float32)
            for angle in range(self.angles):
                out[:, angle, :] = self._angles.forward(angle, columns)
            return out
        out = self._forward @ columns  # (angles·cols, rows)
        return xp.ascontiguousarray(out.T, dtype=xp.float32).reshape(self.shape_sinogram)

    def adjoint(self, sinogram: Any) -> Any:
        """``Aᵀ y``: sinograms ``(rows, angles, cols)`` to slices ``(rows, N, N)``, float32."""
        self._check(sinogram, self.shape_sinogram, "sinogram")
        if self.matrix_free:
            return self.forward_adjoint(None, lambda _, angle: sinogram[:, angle, :])
        xp = self.xp
        columns = xp.ascontiguousarray(sinogram.reshape(self.rows, -1).T, dtype=xp.float32)
        out = self._adjoint @ columns  # (N², rows)
        return xp.ascontiguousarray(out.T, dtype=xp.float32).reshape(self.shape_image)

    def forward_adjoint(self, image: Any, between: Callable[[Any, Any], Any]) -> Any:
        """``Aᵀ between(A x)``, where ``between(projections, angles)`` maps the band's
        projections at ``angles`` (an index: ``(rows, cols)``, or a slice of all angles:
        ``(rows, angles, cols)``) to what is back-projected there, angle by angle
        (elementwise: OSEM's ``b / A x``); ``image`` None: ``between(None, angles)``.
        Matrix-free, each angle's matrix is built once for both products."""
        xp = self.xp
        if not self.matrix_free:
            ax = None if image is None else self.forward(image)
            return self.adjoint(between(ax, slice(None)))
        if image is not None:
            self._check(image, self.shape_image, "image")
            image = xp.ascontiguousarray(image.reshape(self.rows, -1).T, dtype=xp.float32)
        out = xp.zeros((self.size * self.size, self.rows), dtype=xp.float32)
        for angle in range(self.angles):
            matrix = self._angles.matrix(angle)
            ax = None if image is None else self._angles.forward(angle, image, matrix)
            y = between(ax, angle)
            if tuple(y.shape) != (self.rows, self.cols):
                raise StageError(f"pixel projector: projections at angle {angle}: expected "
                                 f"shape {(self.rows, self.cols)}, got {tuple(y.shape)}")
            out += self._angles.adjoint(angle, y, matrix)
        return xp.ascontiguousarray(out.T).reshape(self.shape_image)

    def normal(self, image: Any) -> Any:
        """``Aᵀ A x``."""
        return self.forward_adjoint(image, lambda ax, _: ax)


class _AngleWise:
    """``A`` one angle at a time, never whole: angle ``a``'s ``(cols + 2) × N²`` CSC
    matrix (the detector with one dropped column each side, where the rays just beside it
    land) built from the geometry when needed. Its entries are :func:`pixel_matrix`'s
    for that angle (the same positions, floors and weights, float64 then float32)."""

    def __init__(self, angles_deg: npt.NDArray[np.float64], cols: int, size: int,
                 center: float, xp: Any) -> None:
        half = (size - 1) / 2
        self.x = np.arange(size, dtype=np.float64) - half
        self.y = ROW_SIGN * (np.arange(size, dtype=np.float64) - half)
        theta = np.deg2rad(angles_deg)
        self.cos, self.sin = np.cos(theta), np.sin(theta)
        self.cols, self.size, self.center, self.xp = cols, size, center, xp
        # int32 offsets: scipy then takes the arrays as they are (no scan for their range)
        index = np.int32 if 2 * size * size + cols + 2 < 2**31 else np.int64
        self.index = index
        self.indptr = np.arange(0, 2 * size * size + 1, 2, dtype=index)
        self.reach = half * (np.abs(self.cos) + np.abs(self.sin))  # max |t − center|

    def matrix(self, angle: int) -> tuple[Any, Any]:
        """Angle ``angle``'s ``A`` (``(cols + 2) × N²``) and ``Aᵀ`` in the band's module,
        on the host a CSC matrix and the CSR matrix of its transpose over the same arrays
        (a pixel's two entries are one column of ``A``, one row of ``Aᵀ``)."""
        cols, pixels = self.cols, self.size * self.size
        t = np.add.outer(self.center + self.y * self.sin[angle],
                         self.x * self.cos[angle]).reshape(-1)
        floor = np.floor(t)
        weights = np.empty((pixels, 2), dtype=np.float32)
        np.subtract(t, floor, out=weights[:, 1], casting="same_kind")
        np.subtract(np.float32(1.0), weights[:, 1], out=weights[:, 0])
        columns = np.empty((pixels, 2), dtype=self.index)
        columns[:, 0] = floor  # ⌊t⌋; the padded detector's row ⌊t⌋ + 1 next
        columns[:, 0] += 1
        if not (self.center - self.reach[angle] >= 0
                and self.center + self.reach[angle] < cols - 1):  # some pixels may miss
            outside = (columns[:, 0] < 0) | (columns[:, 0] > cols)  # both columns off
            columns[outside, 0] = 0
            weights[outside] = 0.0
        np.add(columns[:, 0], 1, out=columns[:, 1])
        arrays = (weights.reshape(-1), columns.reshape(-1), self.indptr)
        forward = scipy.sparse.csc_matrix(arrays, shape=(cols + 2, pixels), copy=False)
        adjoint = scipy.sparse.csr_matrix(arrays, shape=(pixels, cols + 2), copy=False)
        if self.xp is np:
            return forward, adjoint
        sparse = _device_sparse(self.xp)
        return sparse.csr_matrix(forward.tocsr()), sparse.csr_matrix(adjoint)

    def forward(self, angle: int, columns: Any,
                matrix: tuple[Any, Any] | None = None) -> Any:
        """The band's projections at ``angle``, ``(rows, cols)``, from its slices as
        columns ``(N², rows)``."""
        matrix = self.matrix(angle) if matrix is None else matrix
        return (matrix[0] @ columns)[1:-1].T  # (cols + 2, rows) → (rows, cols)

    def adjoint(self, angle: int, projections: Any,
                matrix: tuple[Any, Any] | None = None) -> Any:
        """``Aₐᵀ y`` as columns ``(N², rows)`` from the band's projections ``(rows, cols)``
        at ``angle`` (the padded columns are 0: what lands there is dropped)."""
        xp = self.xp
        matrix = self.matrix(angle) if matrix is None else matrix
        padded = xp.zeros((self.cols + 2, projections.shape[0]), dtype=xp.float32)
        padded[1:-1] = projections.T
        return matrix[1] @ padded


class PixelMatrixCache:
    """Per-scan cache of :class:`PixelProjector` matrices (``StageSpec.cache`` of
    ``osem``, ADR 0010): the bands of a scan share the angles, detector, size and CoR, so
    each subset's matrix is built once per scan instead of once per band. Keyed by the
    whole geometry; a new geometry (another scan, another CoR) replaces what is held. It
    holds the matrices between calls: 12 bytes per entry, ``2 × angles × N²`` entries over
    all subsets (up to :data:`MATRIX_ENTRIES`, 1.2 GB); a matrix is read-only once built,
    so concurrent calls may share it."""

    def __init__(self) -> None:
        self._geometry: tuple[int, int, float] | None = None
        self._matrices: dict[bytes, scipy.sparse.csc_matrix] = {}
        self._lock = threading.Lock()
        #: Matrices found here, and matrices built.
        self.hits = 0
        self.misses = 0

    def matrix(self, angles_deg: npt.NDArray[np.float64], cols: int, size: int,
               center: float) -> scipy.sparse.csc_matrix:
        """The matrix of this geometry, built if not held."""
        angles = np.ascontiguousarray(angles_deg, dtype=np.float64)
        geometry, key = (cols, size, float(center)), angles.tobytes()
        with self._lock:
            if geometry != self._geometry:
                self._geometry, self._matrices = geometry, {}
            held = self._matrices.get(key)
            if held is not None:
                self.hits += 1
                return held
            built = pixel_matrix(angles, cols, size, center)
            self._matrices[key] = built
            self.misses += 1
            return built
