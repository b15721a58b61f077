"""Filtered back-projection (FBP) of parallel-beam sinograms.

Geometry
--------
Exactly the inverse of :mod:`streamer.sources.phantom`: a slice is ``img[iy, ix]`` of
shape ``(N, N)`` with ``x = ix - (N-1)/2``, ``y = (N-1)/2 - iy`` (pixels, origin on the
rotation axis, ``y`` pointing up the image: TomoPy's, ASTRA's and algotom's orientation),
and at angle ``θ`` the ray through ``(x, y)`` hits detector column
``u = center + x·cos θ + y·sin θ``. The output is in attenuation per pixel of path, the
unit of ``SimulatedScan.ground_truth()`` and ``phantom.voxelise`` (a sinogram of ``-log``
transmissions whose pixel is the voxel edge).

Algorithm (Kak & Slaney [1]_, ch. 3.3)
-------------------------------------
1. **Padding.** Each projection is padded to ``L``, the next power of two ``>= 2·cols``,
   with its edge values (``pad=True``, like TomoPy's padded gridrec) or with zeros
   (``pad=False``). ``L >= 2·cols`` keeps the circular convolution of the FFT from
   wrapping one edge onto the other; edge padding keeps a truncated object (interior
   tomography) from seeing a jump to zero at the detector edge, which the ramp filter
   would turn into a bright rim.
2. **Filter.** The discrete ramp is built in the spatial domain, ``h[0] = 1/4``,
   ``h[n] = -1/(π n)²`` for odd ``n``, ``0`` for even ``n`` (Kak & Slaney eq. 61), and
   transformed: unlike the sampled ``|f|`` its DC term is not zero, which avoids the
   cupping / offset of the naive ramp. It is multiplied by a window ``W(f)``
   (``f`` in cycles/pixel, ``|f| <= 1/2``): ``ramlak`` 1; ``shepp`` ``sinc(f)``;
   ``cosine`` ``cos(π f)``; ``hamming`` ``0.54 + 0.46 cos(2π f)``; ``hann``
   ``0.5 + 0.5 cos(2π f)``; ``parzen`` the Parzen window of ``q = 2|f|``
   (``1 - 6q²(1-q)`` for ``q <= 1/2``, ``2(1-q)³`` above). The FFTs are ``scipy.fft``'s
   real ones.
3. **Centre of rotation.** An off-centre axis is taken into account where the filtered
   projections are sampled (``u = center + x·cos θ + y·sin θ``), so the data are
   interpolated once, by the back-projection, whatever ``center``. (A Fourier phase-ramp
   shift to the middle column was tried: exact for whole pixels, but at half a pixel it
   rings at every edge of the discontinuous phantom, relative L2 0.047 vs 0.036.)
4. **Back-projection.** For each angle the detector position of every pixel of the grid
   is computed once and used for all rows of the block (linear interpolation; a position
   off the padded detector reads 0). Each projection is weighted by its angular
   spacing: the angles are reduced modulo 180° (a ray at ``θ + 180°`` is the ray at
   ``θ``), sorted, and each gets half the distance between its neighbours, so uniform and
   non-uniform scans, and 360° scans (every ray measured twice, each copy gets half the
   weight), are all normalised to ``∫₀^π dθ``. A gap of more than four typical steps is
   taken as a missing wedge (limited-angle scan) and contributes one typical step only.

References
----------
.. [1] A. C. Kak and M. Slaney, *Principles of Computerized Tomographic Imaging*,
   IEEE Press, 1988, ch. 3.3.3, eqs. (61)-(65).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import scipy.fft
from pydantic import Field

from stages.backends.xp import array_module, fft_module
from stages.checks import sinogram_inputs
from stages.misc.geometry import circle_inside
from stages.recon.backproject import backproject
from stages.spec import Pattern, StageParams, StageSpec
from streamer.errors import StageError

__all__ = ["SPECS", "FbpParams", "angle_weights", "fbp", "filter_response", "padded_length"]

FilterName = Literal["ramlak", "shepp", "cosine", "hamming", "hann", "parzen"]
_FILTERS: tuple[str, ...] = get_args(FilterName)
_STAGE = "fbp"
#: A gap between sorted angles (mod 180°) larger than this many typical steps is a
#: missing wedge, not a sparse stretch of the scan.
_WEDGE_STEPS = 4.0


class FbpParams(StageParams):
    """Parameters of :func:`fbp`."""

    center: float | None = Field(
        None,
        allow_inf_nan=False,
        description="rotation axis, 0-based detector column; None: (cols-1)/2",
    )
    filter_name: FilterName = Field(
        "ramlak", description="window on the ramp filter: ramlak|shepp|cosine|hamming|hann|parzen"
    )
    pad: bool = Field(
        True, description="pad projections with edge values (False: zeros) before filtering"
    )
    output_size: int | None = Field(
        None, ge=1, description="edge N of the square output slices; None: cols"
    )
    circle_mask: bool = Field(
        False, description="set pixels outside the inscribed circle of each slice to 0"
    )


def padded_length(cols: int) -> int:
    """Length of a padded projection: the next power of two ``>= 2·cols``."""
    return 1 << max(1, (2 * cols - 1).bit_length())


def filter_response(length: int, filter_name: str = "ramlak") -> npt.NDArray[np.float64]:
    """Real frequency response (``rfft`` bins of a length-``length`` signal) of the filter.

    The ramp is the transform of Kak & Slaney's spatial-domain ramp (see the module
    docstring), so bin 0 holds its small positive DC term; the window multiplies it.
    """
    if filter_name not in _FILTERS:
        raise StageError(
            f"stage {_STAGE!r}: filter_name: expected one of {'|'.join(_FILTERS)}, "
            f"got {filter_name!r}"
        )
    n = np.arange(length)
    n = np.where(n < length // 2 + length % 2, n, n - length)  # circular offsets
    h = np.zeros(length, dtype=np.float64)
    h[0] = 0.25
    odd = n % 2 == 1
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    ramp = scipy.fft.rfft(h).real
    f = scipy.fft.rfftfreq(length)  # 0 … 1/2 cycles per pixel
    if filter_name == "ramlak":
        window = np.ones_like(f)
    elif filter_name == "shepp":
        window = np.sinc(f)
    elif filter_name == "cosine":
        window = np.cos(np.pi * f)
    elif filter_name == "hamming":
        window = 0.54 + 0.46 * np.cos(2 * np.pi * f)
    elif filter_name == "hann":
        window = 0.5 + 0.5 * np.cos(2 * np.pi * f)
    else:  # parzen
        q = 2.0 * f
        window = np.where(q <= 0.5, 1.0 - 6.0 * q**2 * (1.0 - q), 2.0 * (1.0 - q) ** 3)
    response: npt.NDArray[np.float64] = ramp * window
    return response


def angle_weights(angles_deg: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Quadrature weights (radians) of the projections, summing to about π.

    Angles are reduced modulo 180° and sorted; each gets half the distance to its two
    neighbours (circularly), so duplicates (360° scans) share one step. A gap of more
    than four typical steps (a missing wedge) counts as one typical step.
    """
    count = angles_deg.shape[0]
    if count == 1:
        return np.array([np.pi])
    reduced = np.mod(angles_deg, 180.0)
    order = np.argsort(reduced, kind="stable")
    ordered = reduced[order]
    gaps = np.diff(np.append(ordered, ordered[0] + 180.0))  # gaps[i]: i -> i+1
    positive = gaps[gaps > 1e-9]
    if positive.size:
        typical = float(np.median(positive))
        gaps = np.where(gaps > _WEDGE_STEPS * typical, typical, gaps)
    half = 0.5 * (gaps + np.roll(gaps, 1))  # half the distance to both neighbours
    weights = np.empty(count, dtype=np.float64)
    weights[order] = np.deg2rad(half)
    return weights


def _check(
    block: npt.NDArray[Any], angles_deg: Any, center: float | None, output_size: int | None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    return sinogram_inputs(_STAGE, block, angles_deg, center, output_size)


def _filtered(
    sino: npt.NDArray[np.float32], filter_name: str, pad: bool
) -> tuple[npt.NDArray[np.float32], int]:
    """Filtered projections as ``(angles, L + 2, rows)`` and the data's offset.

    Detector column ``k`` is at index ``offset + k``; one zero column at each end makes
    positions off the padded detector read 0.
    """
    xp = array_module(sino)
    fft = fft_module(xp)
    rows, _, cols = sino.shape
    length = padded_length(cols)
    left = (length - cols) // 2
    widths = ((0, 0), (0, 0), (left, length - cols - left))
    padded = xp.pad(sino, widths, mode="edge") if pad else xp.pad(sino, widths)
    spectrum = fft.rfft(padded, axis=2)
    del padded
    spectrum *= xp.asarray(filter_response(length, filter_name).astype(np.complex64))
    q = fft.irfft(spectrum, n=length, axis=2)
    del spectrum
    out: npt.NDArray[np.float32] = xp.zeros((sino.shape[1], length + 2, rows), dtype=xp.float32)
    out[:, 1 : length + 1, :] = xp.transpose(q, (1, 2, 0))
    return out, left + 1


def fbp(
    block: npt.NDArray[Any],
    *,
    angles_deg: npt.NDArray[np.float64],
    center: float | None = None,
    filter_name: FilterName = "ramlak",
    pad: bool = True,
    output_size: int | None = None,
    circle_mask: bool = False,
) -> npt.NDArray[np.float32]:
    """Reconstruct the slices of a sinogram block by filtered back-projection.

    Parameters
    ----------
    block : ndarray of shape (rows, angles, cols)
        ``-log`` transmissions (line integrals in attenuation × pixels), one sinogram per
        detector row.
    angles_deg : ndarray of shape (angles,)
        Projection angles in degrees, any order and spacing (weighted by their spacing;
        180° and 360° scans alike).
    center : float, optional
        Rotation axis, 0-based detector column; ``(cols-1)/2`` when omitted.
    filter_name : {"ramlak", "shepp", "cosine", "hamming", "hann", "parzen"}
        Window on the ramp (see the module docstring); ``ramlak`` is the bare ramp.
    pad : bool
        Pad projections with edge values (True) or zeros (False) to the next power of
        two ``>= 2·cols`` before filtering.
    output_size : int, optional
        Edge ``N`` of the square slices; ``cols`` when omitted. The grid is centred on the
        rotation axis with 1-pixel voxels whatever ``N``.
    circle_mask : bool
        Set voxels outside the inscribed circle (``x² + y² < (N/2)²``) to 0.

    Returns
    -------
    ndarray of shape (rows, N, N), float32
        ``img[r, iy, ix]``, attenuation per pixel, in the geometry of
        :mod:`streamer.sources.phantom`.

    Raises
    ------
    StageError
        If ``block`` is not a real non-empty 3-D array, ``angles_deg`` does not give one
        finite angle per projection, or a parameter is out of range.
    """
    sino, angles = _check(block, angles_deg, center, output_size)
    cols = sino.shape[2]
    size = cols if output_size is None else int(output_size)
    axis_col = (cols - 1) / 2 if center is None else float(center)
    q, offset = _filtered(sino, filter_name, pad)
    weights = angle_weights(angles)
    # Fold the weight into the filtered data: one multiply per sample, not per voxel.
    xp = array_module(q)
    q *= xp.asarray(weights.astype(np.float32))[:, None, None]
    dq = xp.zeros_like(q)
    dq[:, :-1, :] = q[:, 1:, :] - q[:, :-1, :]
    # the angle loop (numpy) or the CUDA kernel (cupy) of stages/recon/backproject.py
    out: npt.NDArray[np.float32] = backproject(q, dq, np.deg2rad(angles), size,
                                               float(np.float32(offset + axis_col)))
    if circle_mask:  # where(), not a masked assignment: the same on every namespace
        out = xp.where(xp.asarray(circle_inside(size, size))[None], out, np.float32(0.0))
    return out


def _fbp_memory(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
    """Upper bound: the sum of every buffer :func:`fbp` makes, though not all live at once.

    Beyond "input + padded filtered copy + output", the filtered data are held twice
    (values and their first differences, for the interpolation) and the back-projection
    keeps two gather buffers the size of the output; for N = cols = 512, 512 angles this
    is about 15 input blocks.
    """
    rows, angles, cols = shape
    size = cols if getattr(params, "output_size", None) is None else int(params.output_size)
    length = padded_length(cols)
    voxels = rows * size * size
    return int(
        rows * angles * cols * max(4, np.dtype(dtype).itemsize)  # input
        + rows * angles * cols * 4  # float32 copy (when the input is not float32)
        # Filtering: the padded copy (L floats) and its complex64 spectrum (L/2 + 1 complex)
        # alive together, then the spectrum and the real inverse; at most 2 × L × 4 bytes
        # per projection row beyond the held q.
        + 2 * rows * angles * length * 4
        # q and its first difference dq, (angles, L + 2, rows) float32 each.
        + 2 * rows * angles * (length + 2) * 4
        # Accumulator + two gather buffers (rows × N² float32 each) + the transposed
        # output copy; per-angle position/index arrays are N² × (4 + 4 + 8) bytes.
        + 4 * voxels * 4
        + size * size * 16
    )


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="fbp",
        angle_local=False,  # a reconstructor: all angles (streamed by stages.recon.streaming)
        fn=fbp,
        pattern=Pattern.SINOGRAM,
        params=FbpParams,
        memory=_fbp_memory,
        summary="filtered back-projection of sinograms (ramp × window, edge-padded, any angles)",
        needs_angles=True,
        device=True,
    ),
)
