"""Parallel-beam projector pair (forward ``A`` and its exact adjoint ``Aᵀ``) by NUFFT.

The iterative reconstructors (:mod:`stages.recon.iterative`) need ``A`` (slices to a
sinogram) and ``Aᵀ`` (sinogram to slices, the unfiltered back-projection) many times, so
both go through the Fourier slice theorem at the cost of about one Fourier FBP each:

* **forward**: the 2-D Fourier transform of each slice is evaluated at the polar points
  ``2πω (sin θ, cos θ)`` by a type-2 NUFFT (finufft), multiplied by a phase that puts the
  rotation axis at detector column ``center``, and each angle's half spectrum is turned
  into a projection by an inverse real FFT of ``M`` samples (the window of detector
  columns the slice can reach), of which the detector's columns are kept;
* **adjoint**: exactly the transpose of each step, in reverse: the detector columns are
  placed in the window, the real FFT's transpose (``c_m/M · rfft``, ``c_m = 2`` except at
  0 and Nyquist), the conjugate phase, and a type-1 NUFFT onto the slice's modes, whose
  real part is the back-projection.

On numpy the NUFFTs are split as in ``fourier_fbp``'s gridder: finufft only spreads
(type 1) or interpolates (type 2) on the oversampled grid, scipy's FFT and
``fourier_fbp``'s kernel deconvolution (its private ``_grid_size``/``_deconvolution``,
reused so both share one kernel model) do the rest; finufft's complete transforms (with
its FFTW-estimate plans, about 2× slower here) remain as ``split=False``, the path cupy with
cufinufft takes. Each step is the transpose of its partner, so ``<A x, y> = <x, Aᵀ y>``
holds to float32 rounding whatever the tolerance (``tests/stages/test_projector.py``).

Model: each voxel is a band-limited point (the Dirac pixel seen through the detector's
Nyquist band), so a projection is the trigonometric interpolation of the voxels' shadows
on the window; this is the model whose approximate inverse is
:func:`stages.recon.fourier.fourier_fbp` (``A · fourier_fbp(sino) ≈ sino``, tested), not
ASTRA's strip or linear kernels (CGLS with it and LSQR with a pixel-driven linear matrix
agree at Pearson r 0.996 on the I13 scan).

Geometry: that of :func:`stages.recon.fbp.fbp` and :func:`~stages.recon.fourier.fourier_fbp`
(``img[iy, ix]`` with ``x = ix − (N−1)/2``, ``y = ROW_SIGN · (iy − (N−1)/2)``, the ray
through ``(x, y)`` at angle ``θ`` meets column ``center + x cos θ + y sin θ``). The slice
orientation is the one constant :data:`ROW_SIGN`: if the reconstructors flip their rows,
this constant follows (``test_forward_inverts_fourier_fbp`` fails otherwise).

Array module: the arithmetic uses the module of the data (``xp``): ``numpy``, or ``cupy``
with ``cufinufft`` (which has finufft's ``Plan``/``setpts``/``execute``:
:func:`_nufft_backend`) on the ``split=False`` path, with cufinufft's default
oversampling (2; finufft's 1.25 here). The iterative stages build their projectors in the
module of their band, so a CuPy band is solved on its device. That GPU path has never run
(no GPU was lent); on the CPU it is exercised through ``tests/stages/device_like.py``'s
namespace (CuPy's manners over numpy, with a finufft twin), which proves that no step
falls back to numpy on the data path and gives numpy's numbers bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.fft

from stages.backends.nufft import nufft_library
from stages.backends.xp import fft_module
from stages.recon import fourier as fourier_grid
from streamer.errors import StageError

__all__ = ["ROW_SIGN", "Projector", "window_geometry"]

#: Slice orientation: ``y = ROW_SIGN · (iy − (N−1)/2)``; −1: ``y`` up the image, row 0 at
#: the top (TomoPy's, ASTRA's and algotom's orientation). It must match the reconstructors
#: in :mod:`stages.recon.fbp` and :mod:`stages.recon.fourier` (checked by the tests
#: ``A · fourier_fbp(sino) ≈ sino`` on an asymmetric phantom).
ROW_SIGN = -1
#: Samples beyond the farthest detector position the slice reaches, each side of the window.
_MARGIN = 8
#: Oversampling of finufft's grid; the same for both types keeps them exact transposes.
#: (fourier_fbp's: its kernel deconvolution is reused by the split transforms).
_UPSAMPFAC = fourier_grid._UPSAMPFAC
#: The kernel probe of the deconvolution holds from 1e-4 (float32 rounding below).
_EPS_MIN, _EPS_MAX = 1e-4, 1e-1




def window_geometry(size: int, center: float) -> tuple[int, int]:
    """``(start, M)``: the window of ``M`` detector columns ``start … start+M−1`` that the
    shadow of an ``N × N`` slice (``N = size``) can reach when the axis is at ``center``,
    plus a margin; ``M`` even and FFT-friendly."""
    reach = (size - 1) / math.sqrt(2.0)
    length = int(scipy.fft.next_fast_len(2 * math.ceil(reach) + 2 * _MARGIN + 2))
    while length % 2:
        length = int(scipy.fft.next_fast_len(length + 1))
    start = math.floor(center + 0.5) - length // 2
    return start, length


def _nufft_backend(xp: Any) -> Any:
    """The NUFFT library for arrays of ``xp`` (finufft, cufinufft or a test namespace's
    twin): :func:`stages.backends.nufft.nufft_library`, the adapter ``fourier_fbp``
    shares."""
    return nufft_library(xp, stage="projector")


@dataclass(frozen=True)
class _Geometry:
    rows: int
    angles: int
    cols: int
    size: int
    start: int
    window: int


class Projector:
    """``A`` and ``Aᵀ`` for a band of ``rows`` slices of ``size × size`` voxels.

    Parameters
    ----------
    angles_deg : ndarray of shape (angles,)
        Projection angles in degrees (any order, spacing and span).
    cols : int
        Detector columns of the sinograms.
    size : int
        Edge ``N`` of the square slices (voxels of one detector pixel).
    center : float
        Rotation axis as a 0-based detector column (any real value).
    rows : int
        Slices per call (the NUFFT plans transform them together).
    eps : float
        Relative tolerance of the single-precision NUFFT (``1e-6 … 1e-1``).
    threads : int, optional
        Threads of the NUFFT and FFTs; the CPUs this process may use when omitted.
    xp : module
        ``numpy`` (default) or ``cupy``: where the arrays live.
    split : bool, optional
        NUFFT as finufft's spreading/interpolation only plus scipy's FFT and
        :mod:`~stages.recon.fourier`'s kernel deconvolution (the default for numpy, about
        1.6x faster than finufft's own FFTW-estimate plans, and for a namespace that
        carries a finufft twin), or finufft/cufinufft's complete transforms (the default
        and only choice for cupy). Both are exact transpose pairs.
    """

    def __init__(
        self,
        angles_deg: npt.NDArray[np.float64],
        cols: int,
        size: int,
        center: float,
        rows: int,
        *,
        eps: float = 1e-3,
        threads: int | None = None,
        xp: Any = np,
        split: bool | None = None,
    ) -> None:
        if not _EPS_MIN <= eps <= _EPS_MAX:
            raise StageError(
                f"projector: eps: expected {_EPS_MIN:g} <= eps <= {_EPS_MAX:g}, got {eps}"
            )
        if min(cols, size, rows, len(angles_deg)) < 1:
            raise StageError(
                f"projector: expected >= 1 angles, columns, slices and rows, got "
                f"{len(angles_deg)} angles, {cols} columns, size {size}, {rows} rows"
            )
        start, window = window_geometry(size, center)
        self.geometry = _Geometry(rows, len(angles_deg), cols, size, start, window)
        self.xp = xp
        self.threads = fourier_grid._threads(threads)
        theta = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
        omega = np.arange(window // 2 + 1) / window  # rfft frequencies, cycles/pixel
        radial = 2.0 * np.pi * omega
        along_y = (ROW_SIGN * np.multiply.outer(np.sin(theta), radial)).ravel()
        along_x = np.multiply.outer(np.cos(theta), radial).ravel()
        # Pixel ix sits at x = kx + half (kx the NUFFT mode), likewise y: half a pixel for
        # even N. The phase also moves the axis from column `center` to the window start.
        half = 0.5 if size % 2 == 0 else 0.0
        offset = center - start + half * (np.cos(theta) + ROW_SIGN * np.sin(theta))
        turns = np.mod(np.multiply.outer(offset, omega), 1.0)
        phase = np.exp(-2j * np.pi * turns).astype(np.complex64)
        # Transpose of irfft: c_m / M · rfft, c_m = 2 except at 0 and Nyquist.
        weight = np.full(omega.size, 2.0 / window)
        weight[0] = weight[-1] = 1.0 / window
        self._phase = xp.asarray(phase)  # (angles, M/2+1)
        self._adjoint_phase = xp.asarray((np.conj(phase) * weight).astype(np.complex64))
        # Detector column k is window sample k - start; those inside the window:
        self._det = (max(0, start), min(cols, start + window))
        points_y = xp.asarray(along_y.astype(np.float32))
        points_x = xp.asarray(along_x.astype(np.float32))
        host_nufft = xp is np or getattr(xp, "finufft", None) is not None
        #: scipy.fft's threads where the FFTs run on the host (cupyx has no ``workers``)
        self._workers: dict[str, Any] = {"workers": self.threads} if host_nufft else {}
        self._split = host_nufft if split is None else bool(split)
        if self._split and not host_nufft:
            raise StageError(f"projector: split=True needs finufft's spreading on the host; "
                             f"expected a numpy band, got {getattr(xp, '__name__', xp)}")
        if self._split:
            self._gridding: _SplitGridding | _PlainGridding = _SplitGridding(
                points_y, points_x, size=size, rows=rows, eps=eps, xp=xp,
                threads=self.threads
            )
        else:
            self._gridding = _PlainGridding(points_y, points_x, size=size, rows=rows,
                                            eps=eps, xp=xp, threads=self.threads)

    @property
    def shape_image(self) -> tuple[int, int, int]:
        """``(rows, N, N)``."""
        g = self.geometry
        return (g.rows, g.size, g.size)

    @property
    def shape_sinogram(self) -> tuple[int, int, int]:
        """``(rows, angles, cols)``."""
        g = self.geometry
        return (g.rows, g.angles, g.cols)

    def _check(self, array: Any, shape: tuple[int, int, int], what: str) -> None:
        if tuple(array.shape) != shape:
            raise StageError(f"projector: {what}: expected shape {shape}, got {array.shape}")

    def forward(self, image: Any) -> Any:
        """``A x``: slices ``(rows, N, N)`` to sinograms ``(rows, angles, cols)``, float32."""
        self._check(image, self.shape_image, "image")
        xp, g = self.xp, self.geometry
        spectrum = self._gridding.forward(image).reshape(g.rows, g.angles, -1)
        spectrum *= self._phase
        projections = self._irfft(spectrum, g.window)
        out = xp.zeros((g.rows, g.angles, g.cols), dtype=xp.float32)
        lo, hi = self._det
        if hi > lo:
            out[..., lo:hi] = projections[..., lo - g.start : hi - g.start]
        return out

    def adjoint(self, sinogram: Any) -> Any:
        """``Aᵀ y``: sinograms ``(rows, angles, cols)`` to slices ``(rows, N, N)``, float32."""
        self._check(sinogram, self.shape_sinogram, "sinogram")
        xp, g = self.xp, self.geometry
        window = xp.zeros((g.rows, g.angles, g.window), dtype=xp.float32)
        lo, hi = self._det
        if hi > lo:
            window[..., lo - g.start : hi - g.start] = sinogram[..., lo:hi]
        spectrum = self._rfft(window)
        spectrum *= self._adjoint_phase
        return self._gridding.adjoint(spectrum.reshape(g.rows, -1))

    def normal(self, image: Any) -> Any:
        """``Aᵀ A x``."""
        return self.adjoint(self.forward(image))

    def _irfft(self, spectrum: Any, length: int) -> Any:
        result = fft_module(self.xp).irfft(spectrum, n=length, axis=-1, **self._workers)
        return result.astype(self.xp.float32, copy=False)

    def _rfft(self, window: Any) -> Any:
        return fft_module(self.xp).rfft(window, axis=-1, **self._workers)


class _PlainGridding:
    """finufft's (cufinufft's) complete type-2 and type-1 transforms, one plan each."""

    def __init__(self, points_y: Any, points_x: Any, *, size: int, rows: int, eps: float,
                 xp: Any, threads: int) -> None:
        nufft = _nufft_backend(xp)
        options: dict[str, Any] = {}
        if nufft.__name__ != "cufinufft":  # cufinufft: its default oversampling (2)
            options["upsampfac"] = _UPSAMPFAC
            options["nthreads"] = threads
        self.xp = xp
        self.forward_plan = nufft.Plan(2, (size, size), n_trans=rows, eps=eps, isign=-1,
                                       dtype="complex64", **options)
        self.forward_plan.setpts(points_y, points_x)
        self.adjoint_plan = nufft.Plan(1, (size, size), n_trans=rows, eps=eps, isign=1,
                                       dtype="complex64", **options)
        self.adjoint_plan.setpts(points_y, points_x)

    def forward(self, image: Any) -> Any:
        """``Σ_k f_k exp(−i k·x_j)`` for each row: ``(rows, points)`` complex64."""
        return self.forward_plan.execute(image.astype(self.xp.complex64))

    def adjoint(self, strengths: Any) -> Any:
        """Real part of ``Σ_j c_j exp(+i k·x_j)``: ``(rows, N, N)`` float32."""
        image = self.adjoint_plan.execute(strengths)
        return self.xp.ascontiguousarray(image.real, dtype=self.xp.float32)


class _SplitGridding:
    """The same two transforms, as in :class:`stages.recon.fourier._Gridder`: finufft only
    spreads (type 1) or interpolates (type 2) on the ``G × G`` oversampled grid (points
    sorted once); scipy's FFT, pruned to the slice's modes, and the division by the
    kernel's transform (fourier_fbp's, with the grid's centring sign) do the rest. Each
    step of the forward is the transpose of the adjoint's, so the pair stays exact."""

    def __init__(self, points_y: Any, points_x: Any, *, size: int, rows: int, eps: float,
                 xp: Any, threads: int) -> None:
        finufft = _nufft_backend(xp)
        grid = fourier_grid._grid_size(size)
        self.size, self.grid, self.threads = size, grid, threads
        self.xp, self.fft = xp, fft_module(xp)
        self.deconvolution = xp.asarray(fourier_grid._deconvolution(eps, size))
        common: dict[str, Any] = {"n_trans": rows, "eps": eps, "dtype": "complex64",
                                  "spreadinterponly": 1, "upsampfac": _UPSAMPFAC,
                                  "nthreads": threads}
        self.spread = finufft.Plan(1, (grid, grid), **common)
        self.spread.setpts(points_y, points_x)
        self.interp = finufft.Plan(2, (grid, grid), **common)
        self.interp.setpts(points_y, points_x)
        # Mode k sits at grid index k mod G: -N//2 … -1 at the end, 0 … at the start.
        self.negative, self.nonnegative = size // 2, size - size // 2

    def _runs(self) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        neg, nonneg, grid = self.negative, self.nonnegative, self.grid
        return ((slice(0, neg), slice(grid - neg, grid)), (slice(neg, neg + nonneg),
                                                            slice(0, nonneg)))

    def forward(self, image: Any) -> Any:
        xp, fft, rows = self.xp, self.fft, image.shape[0]
        weighted = (image * self.deconvolution).astype(xp.complex64)
        # Zero-padded modes, FFT along x on the N mode rows only, then along y.
        half = xp.zeros((rows, self.size, self.grid), dtype=xp.complex64)
        for image_part, grid_part in self._runs():
            half[:, :, grid_part] = weighted[:, :, image_part]
        half = fft.fft(half, axis=-1, workers=self.threads, overwrite_x=True)
        full = xp.zeros((rows, self.grid, self.grid), dtype=xp.complex64)
        for image_part, grid_part in self._runs():
            full[:, grid_part, :] = half[:, image_part, :]
        del half
        full = fft.fft(full, axis=-2, workers=self.threads, overwrite_x=True)
        return self.interp.execute(full)

    def adjoint(self, strengths: Any) -> Any:
        xp, fft, rows = self.xp, self.fft, strengths.shape[0]
        spread = self.spread.execute(strengths).reshape(rows, self.grid, self.grid)
        spread = fft.ifft(spread, axis=-2, norm="forward", workers=self.threads,
                          overwrite_x=True)
        half = xp.empty((rows, self.size, self.grid), dtype=xp.complex64)
        for image_part, grid_part in self._runs():
            half[:, image_part, :] = spread[:, grid_part, :]
        del spread
        half = fft.ifft(half, axis=-1, norm="forward", workers=self.threads,
                        overwrite_x=True)
        image = xp.empty((rows, self.size, self.size), dtype=xp.float32)
        for image_part, grid_part in self._runs():
            image[:, :, image_part] = half[:, :, grid_part].real
        image *= self.deconvolution
        return image
