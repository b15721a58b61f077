"""httomolibgpu's corrections, in its names, parameters and semantics, on the CPU.

httomolibgpu's methods differ from tomopy's namesakes, so they are separate stages here
(each file-named method maps to one of them; see docs/reference/httomo-methods.md):

* ``dark_flat_field_correction`` (``httomolibgpu.prep.normalize``): ``(data - d·D) /
  max(f·F - d·D, 1e-7)`` with ``D``, ``F`` the mean dark and flat and ``d``, ``f`` the
  ``darks_multiplier`` / ``flats_multiplier``; then values above ``upper_bound`` become
  ``upper_bound`` and values at or below ``lower_bound`` become ``lower_bound``. No
  ``-log`` (that is ``minus_log``).
* ``remove_outlier3d`` (``httomolibgpu.misc.corr.remove_outlier``): a 3-D
  ``kernel_size³`` median; a voxel whose distance to it is ``>= dif`` **in either
  direction** is replaced by it (tomopy's only replaces bright outliers). Out-of-volume
  neighbours are replaced by the voxel's own coordinate along that axis, as the CUDA
  kernel does. The cube is symmetric, so the result does not depend on the layout: the
  stage runs in either section.
* ``median_filter3d`` (``httomolibgpu.misc.corr.median_filter``): the same 3-D median;
  with ``dif > 0`` it is the dezinger above.
* ``remove_stripe_ti_httomo`` (``httomolibgpu.prep.stripe.remove_stripe_ti``, TomoCuPy's
  Titarenko filter with one parameter ``beta``): the mean over angles of each detector
  row, minus its first column, is convolved (circularly, by FFT) with
  ``γ(k) = β ((1-β)/(1+β))^|k| - δ(k)`` and added to every angle. An odd width is padded
  with one edge column first.
* ``raven_filter`` (``httomolibgpu.prep.stripe.raven_filter``): see :func:`raven_filter`.
* ``remove_all_stripe_httomo`` (``httomolibgpu.prep.stripe.remove_all_stripe``): Vo's
  dead/fluctuating stripe removal (``la_size``), then large-stripe removal (``la_size``,
  normalised when ``normalize``), then sorting-based small stripe removal
  (``sm_size``, ``dim``), NaN set to 0 — algotom's building blocks in httomolibgpu's
  order.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from algotom.prep import removal
from pydantic import Field, model_validator

from stages.backends.xp import array_module
from stages.prep import stripe_device
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError

__all__ = ["SPECS", "dark_flat_field_correction", "median_filter3d", "raven_filter",
           "remove_all_stripe_httomo", "remove_outlier3d", "remove_stripe_ti_httomo"]

#: httomolibgpu's floor on ``flat - dark``.
EPS = 1.0e-7


def _block(stage: str, block: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    shape = getattr(block, "shape", None)
    if shape is None or getattr(block, "dtype", None) is None or len(shape) != 3 or 0 in shape:
        raise StageError(f"stage {stage!r}: block: expected a non-empty 3-D array, got "
                         f"{shape if shape is not None else type(block).__name__}")
    if block.dtype.kind not in "uif":
        raise StageError(f"stage {stage!r}: block.dtype: expected real numbers, got "
                         f"{block.dtype}")
    xp = array_module(block)
    data: npt.NDArray[np.float32] = xp.ascontiguousarray(block, dtype=xp.float32)
    return data


# ------------------------------------------------------------ dark_flat_field_correction


class DarkFlatParams(StageParams):
    """httomolibgpu 1.3's ``dark_flat_field_correction`` parameters and defaults.

    ``clipping_warning`` is accepted for compatibility; the clipped fraction is not
    printed (HTTomo prints a warning above 50 %).
    """

    flats_multiplier: float = Field(default=1.0, allow_inf_nan=False)
    darks_multiplier: float = Field(default=1.0, allow_inf_nan=False)
    upper_bound: float | None = Field(default=None, allow_inf_nan=False)
    lower_bound: float | None = Field(default=None, allow_inf_nan=False)
    clipping_warning: bool = False

    @model_validator(mode="after")
    def _bounds_in_order(self) -> DarkFlatParams:
        if (self.upper_bound is not None and self.lower_bound is not None
                and self.lower_bound >= self.upper_bound):
            raise ValueError(f"lower_bound: expected below upper_bound {self.upper_bound}, "
                             f"got {self.lower_bound}")
        return self


def dark_flat_field_correction(
    block: npt.NDArray[Any], *, darks: npt.NDArray[Any] | None,
    flats: npt.NDArray[Any] | None, flats_multiplier: float = 1.0,
    darks_multiplier: float = 1.0, upper_bound: float | None = None,
    lower_bound: float | None = None, clipping_warning: bool = False,
) -> npt.NDArray[np.float32]:
    """Flat/dark correction without ``-log`` (see the module notes).

    Parameters
    ----------
    block : ndarray of shape (angles, rows, cols)
        Raw projections.
    darks, flats : ndarray of shape (n, rows, cols)
        The scan's references (``n >= 1`` flats; no dark means a zero dark).
    flats_multiplier, darks_multiplier : float
        Scale of the mean flat / mean dark (intensity compensation).
    upper_bound, lower_bound : float, optional
        Clip values above / at or below these.
    clipping_warning : bool
        Accepted, not used (see :class:`DarkFlatParams`).
    """
    stage = "dark_flat_field_correction"
    data = _block(stage, block)
    xp = array_module(data)
    rows, cols = data.shape[1:]
    if flats is None or flats.ndim != 3 or flats.shape[0] == 0 or flats.shape[1:] != (
            rows, cols):
        raise StageError(f"stage {stage!r}: flats: expected (n >= 1, {rows}, {cols}), got "
                         f"{getattr(flats, 'shape', None)}")
    if darks is not None and darks.ndim == 3 and darks.shape[0] > 0:
        if darks.shape[1:] != (rows, cols):
            raise StageError(f"stage {stage!r}: darks: expected (n, {rows}, {cols}), got "
                             f"{darks.shape}")
        dark = darks.mean(axis=0, dtype=np.float32) * np.float32(darks_multiplier)
    else:
        dark = xp.zeros((rows, cols), xp.float32)
    flat = flats.mean(axis=0, dtype=np.float32) * np.float32(flats_multiplier)
    denominator = xp.maximum(flat - dark, np.float32(EPS))
    out = (data - dark) / denominator
    if upper_bound is not None:
        out[out > upper_bound] = np.float32(upper_bound)
    if lower_bound is not None:
        out[out <= lower_bound] = np.float32(lower_bound)
    result: npt.NDArray[np.float32] = xp.ascontiguousarray(out, dtype=xp.float32)
    return result


# ------------------------------------------------------------------- remove_outlier3d


class Outlier3dParams(StageParams):
    """httomolibgpu's ``remove_outlier`` parameters (template defaults)."""

    kernel_size: Literal[3, 5, 7, 9, 11, 13] = 3
    dif: float = Field(default=0.1, gt=0, allow_inf_nan=False)


def _clamped_offsets(length: int, offset: int) -> npt.NDArray[np.intp]:
    """Indices ``i + offset``, with out-of-range ones replaced by ``i`` (the CUDA rule)."""
    index = np.arange(length) + offset
    inside = (index >= 0) & (index < length)
    return np.where(inside, index, np.arange(length)).astype(np.intp)


#: Bound on the neighbour stack of :func:`median3d` (float32 values of one chunk).
MEDIAN_STACK_BYTES = 64 << 20


def median_chunk(shape: tuple[int, int, int], kernel_size: int) -> tuple[int, int]:
    """``(planes, rows)`` of one :func:`median3d` chunk: whole planes while the
    ``kernel_size³`` neighbour stack of one plane fits in :data:`MEDIAN_STACK_BYTES`,
    else one plane cut into row bands (at least one row: a stack of one row may exceed
    the bound, ``kernel_size³ × width × 4`` bytes)."""
    depth, height, width = shape
    per_row = kernel_size**3 * 4 * max(1, width)
    rows = max(1, min(height, MEDIAN_STACK_BYTES // per_row))
    planes = max(1, min(depth, MEDIAN_STACK_BYTES // (per_row * max(1, height))))
    return (planes, height) if rows == height else (1, rows)


def median3d(data: npt.NDArray[np.float32], kernel_size: int) -> npt.NDArray[np.float32]:
    """The ``kernel_size³`` median of every voxel, with httomolibgpu's edge rule; chunks
    of planes (or of rows of one plane, see :func:`median_chunk`) keep the neighbour
    stack within :data:`MEDIAN_STACK_BYTES`, and the median sorts it in place."""
    radius = kernel_size // 2
    depth, height, width = data.shape
    xp = array_module(data)
    offsets = range(-radius, radius + 1)
    rows = [_clamped_offsets(height, o) for o in offsets]
    cols = [xp.asarray(_clamped_offsets(width, o)) for o in offsets]
    out: npt.NDArray[np.float32] = xp.empty_like(data)
    planes_per_chunk, rows_per_chunk = median_chunk(data.shape, kernel_size)
    for first in range(0, depth, planes_per_chunk):
        last = min(depth, first + planes_per_chunk)
        for top in range(0, height, rows_per_chunk):
            bottom = min(height, top + rows_per_chunk)
            stack = xp.empty((kernel_size**3, last - first, bottom - top, width), xp.float32)
            count = 0
            for dz in offsets:
                planes = xp.asarray(_clamped_offsets(depth, dz)[first:last])
                for row_index in rows:
                    band = data[planes][:, xp.asarray(row_index[top:bottom])]
                    for col_index in cols:
                        stack[count] = band[:, :, col_index]
                        count += 1
            out[first:last, top:bottom] = xp.median(stack, axis=0, overwrite_input=True)
            del stack  # free before the next chunk's stack is allocated: one at a time
    return out


def median3d_memory(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
    """Peak bytes of :func:`remove_outlier3d` / :func:`median_filter3d` on one block.

    The median phase holds the input (plus its float32 copy when it is not float32),
    the float32 output, one chunk's neighbour stack (``kernel_size³`` float32 values a
    voxel of the chunk, at most :data:`MEDIAN_STACK_BYTES` unless one row alone is
    larger, see :func:`median_chunk`), the gathered whole planes of the chunk and four
    chunk-sized temporaries (the row band, one shifted copy, the median and its mean).
    With ``dif > 0`` the replacement phase holds data, median, ``data - median``, its
    ``abs``, the mask (1 B) and the result: 4.25 float32 blocks. The peak is the larger
    of the two, plus the clamped index arrays and a fixed 256 KiB for NumPy's small
    objects.
    """
    depth, height, width = shape
    kernel = int(getattr(params, "kernel_size", 3))
    elements = depth * height * width
    itemsize = np.dtype(dtype).itemsize
    data = 4 * elements + (0 if np.dtype(dtype) == np.float32 else itemsize * elements)
    planes, rows = median_chunk(shape, kernel)
    chunk = 4 * planes * rows * width
    gathered_planes = 4 * planes * height * width
    median_phase = data + 4 * elements + kernel**3 * chunk + gathered_planes + 4 * chunk
    replace_phase = data + int(3.25 * 4 * elements) if float(getattr(params, "dif", 0)) > 0 else 0
    indices = 8 * kernel * (depth + height + width) + 8 * (planes + rows)
    return max(median_phase, replace_phase) + indices + (256 << 10)


def remove_outlier3d(block: npt.NDArray[Any], *, kernel_size: int = 3,
                     dif: float = 0.1) -> npt.NDArray[np.float32]:
    """Replace voxels at least ``dif`` from their 3-D median, either sign (module notes)."""
    stage = "remove_outlier3d"
    data = _block(stage, block)
    if kernel_size not in (3, 5, 7, 9, 11, 13):
        raise StageError(f"stage {stage!r}: kernel_size: expected 3, 5, …, 13, got "
                         f"{kernel_size}")
    if not dif > 0:
        raise StageError(f"stage {stage!r}: dif: expected > 0, got {dif}")
    median = median3d(data, kernel_size)
    xp = array_module(data)
    result: npt.NDArray[np.float32] = xp.where(xp.abs(data - median) >= np.float32(dif), median,
                                               data).astype(xp.float32, copy=False)
    return result


class Median3dParams(StageParams):
    """httomolibgpu's ``median_filter`` (``dif`` 0: a plain 3-D median)."""

    kernel_size: Literal[3, 5, 7, 9, 11, 13] = 3
    dif: float = Field(default=0.0, ge=0, allow_inf_nan=False)


def median_filter3d(block: npt.NDArray[Any], *, kernel_size: int = 3, dif: float = 0.0
                    ) -> npt.NDArray[np.float32]:
    """httomolibgpu's 3-D median (``dif > 0``: only voxels at least ``dif`` away)."""
    data = _block("median_filter3d", block)
    median = median3d(data, kernel_size)
    if dif <= 0:
        return median
    xp = array_module(data)
    result: npt.NDArray[np.float32] = xp.where(xp.abs(data - median) >= np.float32(dif), median,
                                               data).astype(xp.float32, copy=False)
    return result


# ------------------------------------------------------------ remove_stripe_ti (TomoCuPy)


class StripeTiParams(StageParams):
    """httomolibgpu's ``remove_stripe_ti`` (``beta``: lower is stronger)."""

    beta: float = Field(default=0.1, gt=0, lt=1)


def remove_stripe_ti_httomo(block: npt.NDArray[Any], *, beta: float = 0.1
                            ) -> npt.NDArray[np.float32]:
    """TomoCuPy's Titarenko stripe filter on a sinogram block ``(rows, angles, cols)``."""
    stage = "remove_stripe_ti_httomo"
    data = _block(stage, block)
    width = data.shape[2]
    xp = array_module(data)
    padded = xp.pad(data, ((0, 0), (0, 0), (0, 1)), mode="edge") if width % 2 else data
    size = padded.shape[2]
    gamma = beta * ((1 - beta) / (1 + beta)) ** np.abs(np.fft.fftfreq(size) * size)
    gamma[0] -= 1
    mean = padded.mean(axis=1)  # (rows, cols): the mean over angles
    mean = mean - mean[:, 0:1]
    gamma_spectrum = xp.asarray(np.fft.rfft(gamma))  # a host constant, uploaded once
    correction = xp.fft.irfft(xp.fft.rfft(mean) * gamma_spectrum, n=size).astype(xp.float32)
    out = padded + correction[:, None, :]
    result: npt.NDArray[np.float32] = xp.ascontiguousarray(out[:, :, :width], dtype=xp.float32)
    return result


# ----------------------------------------------------------- remove_all_stripe (httomo)


class AllStripeHttomoParams(StageParams):
    """httomolibgpu 1.3's ``remove_all_stripe`` parameters and defaults."""

    snr: float = Field(default=3.0, gt=0)
    la_size: int = Field(default=61, ge=3)
    sm_size: int = Field(default=21, ge=3)
    dim: Literal[1, 2] = 1
    normalize: bool = False


def remove_all_stripe_httomo(block: npt.NDArray[Any], *, snr: float = 3.0, la_size: int = 61,
                             sm_size: int = 21, dim: int = 1, normalize: bool = False
                             ) -> npt.NDArray[np.float32]:
    """Dead, large and small stripes removed from each sinogram ``(rows, angles, cols)``."""
    stage = "remove_all_stripe_httomo"
    data = _block(stage, block)
    xp = array_module(data)
    if xp is not np:  # the device path, written from the algorithms (algotom the oracle)
        if data.shape[1] < 2 or data.shape[2] < 2:
            raise StageError(f"stage {stage!r}: block.shape: expected at least 2 angles "
                             f"and 2 columns, got {data.shape}")
        sinos = stripe_device.all_stripe(data, snr=snr, la_size=la_size, sm_size=sm_size,
                                         drop_ratio=0.1, dim=dim, norm=normalize,
                                         stage=stage)
        result: npt.NDArray[np.float32] = xp.nan_to_num(sinos).astype(xp.float32)
        return result
    out = np.empty_like(data)
    for row in range(data.shape[0]):
        sino = removal.remove_dead_stripe(data[row], snr=snr, size=la_size, residual=False)
        sino = removal.remove_large_stripe(sino, snr=snr, size=la_size, norm=normalize)
        sino = removal.remove_stripe_based_sorting(sino, size=sm_size, dim=dim)
        out[row] = np.nan_to_num(sino)
    return out


# ---------------------------------------------------------------------------- raven


class RavenParams(StageParams):
    """httomolibgpu's ``raven_filter`` parameters and defaults."""

    pad_y: int = Field(default=20, ge=0)
    pad_x: int = Field(default=20, ge=0)
    pad_method: Literal["edge", "constant", "reflect", "symmetric", "wrap", "mean",
                        "median", "minimum", "maximum", "linear_ramp"] = "edge"
    uvalue: int = Field(default=20, ge=1)
    nvalue: int = Field(default=4, ge=1)
    vvalue: int = Field(default=2, ge=0)


def raven_filter(block: npt.NDArray[Any], *, pad_y: int = 20, pad_x: int = 20,
                 pad_method: str = "edge", uvalue: int = 20, nvalue: int = 4,
                 vvalue: int = 2) -> npt.NDArray[np.float32]:
    """Raven's Fourier stripe filter on each sinogram of ``(rows, angles, cols)``.

    As httomolibgpu (``prep/stripe.py`` and ``cuda_kernels/raven_filter.cu``): pad angles
    by ``pad_y`` and columns by ``pad_x``; 2-D FFT over (angles, columns), shifted; the
    ``2·vvalue + 1`` angular-frequency rows around the centre are multiplied by
    ``(1 + i)·f`` with ``f = 1 / (1 + ((kx - w//2 + 1) / uvalue)^(2·nvalue))``; inverse
    FFT, real part, padding removed.
    """
    stage = "raven_filter"
    data = _block(stage, block)
    xp = array_module(data)
    padded = xp.pad(data, ((0, 0), (pad_y, pad_y), (pad_x, pad_x)), mode=pad_method)
    spectrum = xp.fft.fftshift(xp.fft.fft2(padded, axes=(1, 2)), axes=(1, 2))
    height, width = padded.shape[1], padded.shape[2]
    centre_x, centre_z = width // 2, height // 2
    base = (np.arange(width) - centre_x + 1).astype(np.float64) / uvalue
    factor = 1.0 / (1.0 + base ** (2 * nvalue))
    band = slice(max(0, centre_z - vvalue), min(height, centre_z + vvalue + 1))
    spectrum[:, band, :] *= xp.asarray(factor * (1 + 1j))[None, None, :]
    filtered = xp.fft.ifft2(xp.fft.ifftshift(spectrum, axes=(1, 2)), axes=(1, 2)).real
    out = filtered[:, pad_y:height - pad_y, pad_x:width - pad_x]
    result: npt.NDArray[np.float32] = xp.ascontiguousarray(out, dtype=xp.float32)
    return result


def raven_memory(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
    """Peak bytes of :func:`raven_filter`: it transforms the whole padded block at once.

    The input (plus its float32 copy when it is not float32) and the float32 result; the
    float32 padded block (4 B a padded voxel) and up to six complex64 arrays of it alive
    at once (8 B each: the transform and its intermediate along the first axis, the
    shifted spectrum, the unshifted one, the inverse and its intermediate; measured 5.6-5.8
    with tracemalloc on (16, 90, 64) and (4, 360, 512)), and 256 KiB for small objects.
    """
    rows, angles, cols = shape
    pad_y, pad_x = int(getattr(params, "pad_y", 20)), int(getattr(params, "pad_x", 20))
    elements = rows * angles * cols
    padded = rows * (angles + 2 * pad_y) * (cols + 2 * pad_x)
    data = 4 * elements + (0 if np.dtype(dtype) == np.float32
                           else np.dtype(dtype).itemsize * elements)
    return data + 4 * elements + (4 + 6 * 8) * padded + (256 << 10)


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="dark_flat_field_correction", fn=dark_flat_field_correction,
        angle_local=True,  # per projection, given the references
        pattern=Pattern.PROJECTION, params=DarkFlatParams, memory=scaled_memory(3),
        device=True,
        summary="flat/dark correction with multipliers and bounds, no -log (httomolibgpu)",
        needs_references=True,
        aliases=("httomolibgpu.prep.normalize.dark_flat_field_correction",),
    ),
    StageSpec(
        name="remove_outlier3d", fn=remove_outlier3d, pattern=Pattern.ALL,
        angle_local=False,  # a 3-D median: neighbouring frames
        halo=lambda p: p.kernel_size // 2,
        params=Outlier3dParams,
        memory=median3d_memory,  # measured: tests/stages/test_memory_estimates_measured.py
        device=True,
        summary="replace voxels at least dif from their 3-D median, both signs "
        "(httomolibgpu)",
        aliases=("httomolibgpu.misc.corr.remove_outlier",),
    ),
    StageSpec(
        name="median_filter3d", fn=median_filter3d, pattern=Pattern.ALL,
        angle_local=False,  # a 3-D median: neighbouring frames
        halo=lambda p: p.kernel_size // 2,
        params=Median3dParams, memory=median3d_memory,
        device=True,
        summary="3-D kernel_size³ median, or a dezinger with dif > 0 (httomolibgpu)",
        aliases=("httomolibgpu.misc.corr.median_filter",),
    ),
    StageSpec(
        name="remove_stripe_ti_httomo", fn=remove_stripe_ti_httomo, pattern=Pattern.SINOGRAM,
        angle_local=False,  # the whole sinogram
        params=StripeTiParams, memory=scaled_memory(3),
        device=True,
        summary="Titarenko stripe filter, TomoCuPy's one-parameter form (httomolibgpu)",
        aliases=("httomolibgpu.prep.stripe.remove_stripe_ti",),
    ),
    StageSpec(
        name="raven_filter", fn=raven_filter, pattern=Pattern.SINOGRAM,
        angle_local=False,  # the whole sinogram (Fourier along the angles)
        params=RavenParams, memory=raven_memory,
        device=True,
        summary="Raven's Fourier-domain stripe filter (httomolibgpu)",
        aliases=("httomolibgpu.prep.stripe.raven_filter",),
    ),
    StageSpec(
        name="remove_all_stripe_httomo", fn=remove_all_stripe_httomo,
        angle_local=False,  # the whole sinogram
        pattern=Pattern.SINOGRAM, params=AllStripeHttomoParams, memory=scaled_memory(6),
        device=True, device_memory=scaled_memory(15),  # as stripe.py's Vo device path
        summary="Vo's dead + large + sorting stripe removal in httomolibgpu's order",
        aliases=("httomolibgpu.prep.stripe.remove_all_stripe",),
    ),
)
