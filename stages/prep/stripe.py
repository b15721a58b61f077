"""Stripe (ring-artefact) removal.

Vo's methods are applied through :mod:`algotom.prep.removal`, one sinogram at a time,
with algotom's parameter names and defaults; their blocks are ``sinogram`` blocks
``(rows, angles, cols)``. Münch's wavelet-Fourier filter and Titarenko's regularised
method are re-implementations of ``tomopy.prep.stripe.remove_stripe_fw`` and
``remove_stripe_ti``. They filter along every angle of a sinogram, so, as in HTTomo's
method database (pattern ``sinogram``), the stages take ``sinogram`` blocks
``(rows, angles, cols)`` (``remove_stripe_fw_sino`` / ``remove_stripe_ti_sino``): every
angle of a few rows is at hand, and the result does not depend on the block size nor on
the rank count (ADR 0023). ``remove_stripe_fw`` / ``remove_stripe_ti`` are the same
filters in TomoPy's layout and call, ``(angles, rows, cols)``.

References
----------
N. T. Vo, R. C. Atwood, M. Drakopoulos, "Superior techniques for eliminating ring
artifacts in X-ray micro-tomography", Opt. Express 26, 28396 (2018).
B. Münch, P. Trtik, F. Marone, M. Stampanoni, "Stripe and ring artifact removal with
combined wavelet-Fourier filtering", Opt. Express 17, 8567 (2009).
S. Titarenko, "1-D filter for ring artifact suppression", IEEE Signal Process. Lett.
23, 800 (2016).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pywt
from algotom.prep import removal
from pydantic import AliasChoices, Field

from stages.backends.xp import array_module, ndimage_module
from stages.prep import fw_device, stripe_device, ti_device
from stages.spec import MemoryEstimate, Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError

__all__ = [
    "SPECS",
    "remove_all_stripe",
    "remove_dead_stripe",
    "remove_large_stripe",
    "remove_stripe_based_filtering",
    "remove_stripe_based_fitting",
    "remove_stripe_based_sorting",
    "remove_stripe_fw",
    "remove_stripe_fw_sino",
    "remove_stripe_ti",
    "remove_stripe_ti_sino",
]

Array = npt.NDArray[Any]
F32 = npt.NDArray[np.float32]


def _check_block(stage: str, block: Array, layout: str) -> None:
    shape = getattr(block, "shape", None)
    if shape is None or getattr(block, "dtype", None) is None or len(shape) != 3:
        got = shape if shape is not None else type(block).__name__
        raise StageError(f"{stage}: block: expected a 3-D {layout} array, got {got}")
    if block.dtype.kind not in "uif":
        raise StageError(f"{stage}: block.dtype: expected a real numeric type, got {block.dtype}")
    if 0 in block.shape:
        raise StageError(f"{stage}: block.shape: expected no empty axis, got {block.shape}")


def _per_sinogram(stage: str, block: Array, apply: Callable[[F32], Array]) -> F32:
    """Apply ``apply`` to each ``(angles, cols)`` sinogram of a sinogram block."""
    _check_block(stage, block, "sinogram (rows, angles, cols)")
    rows, angles, cols = block.shape
    if angles < 2 or cols < 2:
        raise StageError(
            f"{stage}: block.shape: expected at least 2 angles and 2 columns, got {block.shape}"
        )
    data = np.asarray(block, dtype=np.float32)
    out = np.empty((rows, angles, cols), dtype=np.float32)
    for row in range(rows):
        out[row] = apply(np.ascontiguousarray(data[row]))
    return out


def _on_device(stage: str, block: Array, apply: Callable[[Any], Any]) -> F32 | None:
    """``apply`` on the whole block when it is not a NumPy one (the device path of
    :mod:`stages.prep.stripe_device`), as a C-contiguous float32 block; ``None`` for a
    NumPy block (the caller goes through algotom)."""
    xp = array_module(block)
    if xp is np:
        return None
    _check_block(stage, block, "sinogram (rows, angles, cols)")
    if block.shape[1] < 2 or block.shape[2] < 2:
        raise StageError(f"{stage}: block.shape: expected at least 2 angles and 2 columns, "
                         f"got {block.shape}")
    result: F32 = xp.ascontiguousarray(apply(block), dtype=xp.float32)
    return result


def _check_positive(stage: str, name: str, size: int) -> None:
    if size < 1:
        raise StageError(f"{stage}: {name}: expected a positive integer, got {size}")


# ---------------------------------------------------------------------------------------
# Vo's methods (algotom)


def tomopy_size(cols: int) -> int:
    """tomopy's window when ``size`` is None: 21 above 2000 columns, else
    ``max(5, int(0.01 · cols))``."""
    return 21 if cols > 2000 else max(5, int(0.01 * cols))


def remove_stripe_based_sorting(block: Array, *, size: int | None = 21, dim: int = 1) -> F32:
    """Remove full and partial stripes by sorting each column and median filtering.

    Parameters
    ----------
    block : ndarray, shape (rows, angles, cols)
        Sinogram block (any real dtype; attenuation or intensity).
    size : int or None
        Median-filter window size, in pixels (across columns); None: tomopy's rule
        (:func:`tomopy_size`).
    dim : {1, 2}
        1-D or 2-D median filter.

    Returns
    -------
    ndarray of float32, shape (rows, angles, cols)
        ``algotom.prep.removal.remove_stripe_based_sorting`` of each sinogram.
    """
    size = tomopy_size(block.shape[-1]) if size is None else size
    _check_positive("remove_stripe_based_sorting", "size", size)
    if dim not in (1, 2):
        raise StageError(f"remove_stripe_based_sorting: dim: expected 1|2, got {dim!r}")
    if array_module(block) is not np:
        return _sorting_on_device(block, size=size, dim=dim)
    return _per_sinogram(
        "remove_stripe_based_sorting", block,
        lambda s: removal.remove_stripe_based_sorting(s, size=size, dim=dim),
    )


def _sorting_on_device(block: Array, *, size: int, dim: int) -> F32:
    """Vo's algorithm 3 written from the paper for any array namespace (CuPy has no
    algotom): sort every column of every sinogram along the angles, median-filter the
    sorted block across columns (``1 × size``, or ``size × size`` with ``dim=2``;
    scipy's ``reflect`` edges, as algotom), and put each value back where it came from.
    The whole block at once: the window never spans two sinograms. Equals algotom's
    result where a column has no two equal values; among equal values algotom's
    (unstable) sort order decides which filtered value each gets, so results there may
    differ by the filter's spread."""
    stage = "remove_stripe_based_sorting"
    _check_block(stage, block, "sinogram (rows, angles, cols)")
    if block.shape[1] < 2 or block.shape[2] < 2:
        raise StageError(f"{stage}: block.shape: expected at least 2 angles and 2 columns, "
                         f"got {block.shape}")
    xp = array_module(block)
    data = xp.asarray(block, dtype=xp.float32)
    order = xp.argsort(data, axis=1)
    ordered = xp.take_along_axis(data, order, axis=1)
    window = (1, size, size) if dim == 2 else (1, 1, size)
    filtered = ndimage_module(xp).median_filter(ordered, size=window)
    back = xp.argsort(order, axis=1)  # the inverse permutation, as algotom's sort_backward
    result: F32 = xp.ascontiguousarray(xp.take_along_axis(filtered, back, axis=1))
    return result


def remove_stripe_based_filtering(
    block: Array, *, sigma: float = 3, size: int | None = 21, dim: int = 1, sort: bool = True
) -> F32:
    """Remove stripes by separating low/high frequencies along angles and filtering.

    Parameters
    ----------
    block : ndarray, shape (rows, angles, cols)
        Sinogram block.
    sigma : float
        Sigma of the Gaussian window that splits low and high frequencies, in
        (angle-axis) frequency samples.
    size : int or None
        Median-filter window size, in pixels; None: tomopy's rule (:func:`tomopy_size`).
    dim : {1, 2}
        1-D or 2-D median filter.
    sort : bool
        Apply the sorting-based method to the low-frequency part.

    Returns
    -------
    ndarray of float32, shape (rows, angles, cols)
    """
    size = tomopy_size(block.shape[-1]) if size is None else size
    _check_positive("remove_stripe_based_filtering", "size", size)
    device = _on_device("remove_stripe_based_filtering", block,
                        lambda data: stripe_device.filtering(
                            data.astype(np.float32), sigma=sigma, size=size, dim=dim,
                            sort=sort))
    if device is not None:
        return device
    return _per_sinogram(
        "remove_stripe_based_filtering", block,
        lambda s: removal.remove_stripe_based_filtering(
            s, sigma=sigma, size=size, dim=dim, sort=sort
        ),
    )


def remove_stripe_based_fitting(
    block: Array, *, order: int = 2, sigma: int = 10, sort: bool = False, num_chunk: int = 1
) -> F32:
    """Remove stripes by polynomial fitting along angles and 2-D filtering of the residual.

    Parameters
    ----------
    block : ndarray, shape (rows, angles, cols)
        Sinogram block.
    order : int
        Polynomial order of the fit along angles.
    sigma : int
        Sigma of the Gaussian window in the 2-D Fourier filter, in frequency samples.
    sort : bool
        Sort each column before fitting (for partial stripes).
    num_chunk : int
        Number of angle chunks fitted separately.

    Returns
    -------
    ndarray of float32, shape (rows, angles, cols)
    """
    if num_chunk < 1:
        raise StageError(
            f"remove_stripe_based_fitting: num_chunk: expected >= 1, got {num_chunk}"
        )
    device = _on_device("remove_stripe_based_fitting", block,
                        lambda data: stripe_device.fitting(
                            data.astype(np.float32), order=order, sigma=sigma, sort=sort,
                            num_chunk=num_chunk))
    if device is not None:
        return device
    return _per_sinogram(
        "remove_stripe_based_fitting", block,
        lambda s: removal.remove_stripe_based_fitting(
            s, order=order, sigma=sigma, sort=sort, num_chunk=num_chunk
        ),
    )


def remove_dead_stripe(
    block: Array,
    *,
    snr: float = 3.0,
    size: int = 51,
    residual: bool = True,
    smooth_strength: int = 10,
) -> F32:
    """Remove unresponsive and fluctuating stripes (detected, then interpolated over).

    Parameters
    ----------
    block : ndarray, shape (rows, angles, cols)
        Sinogram block.
    snr : float
        Detection ratio: a column is a stripe where its deviation exceeds ``snr`` × the
        background noise.
    size : int
        Median-filter window size used for detection, in pixels.
    residual : bool
        Remove the remaining small stripes with the sorting-based method.
    smooth_strength : int
        Window size of the uniform filter used for detection, in pixels.

    Returns
    -------
    ndarray of float32, shape (rows, angles, cols)
    """
    _check_positive("remove_dead_stripe", "size", size)
    device = _on_device("remove_dead_stripe", block, lambda data: stripe_device.dead_stripe(
        data, snr=snr, size=size, residual=residual, smooth_strength=smooth_strength))
    if device is not None:
        return device
    return _per_sinogram(
        "remove_dead_stripe", block,
        lambda s: removal.remove_dead_stripe(
            s, snr=snr, size=size, residual=residual, smooth_strength=smooth_strength
        ),
    )


def remove_large_stripe(
    block: Array,
    *,
    snr: float = 3.0,
    size: int = 51,
    drop_ratio: float = 0.1,
    norm: bool = True,
) -> F32:
    """Remove large stripes (detected on the sorted sinogram, then normalised).

    Parameters
    ----------
    block : ndarray, shape (rows, angles, cols)
        Sinogram block.
    snr : float
        Detection ratio (see :func:`remove_dead_stripe`).
    size : int
        Median-filter window size, in pixels.
    drop_ratio : float
        Fraction of the sorted values at each end of a column dropped from the
        detection statistics, in [0, 0.8].
    norm : bool
        Normalise (equalise) the columns of detected stripes.

    Returns
    -------
    ndarray of float32, shape (rows, angles, cols)
    """
    _check_positive("remove_large_stripe", "size", size)
    device = _on_device("remove_large_stripe", block, lambda data: stripe_device.large_stripe(
        data, snr=snr, size=size, drop_ratio=drop_ratio, norm=norm))
    if device is not None:
        return device
    return _per_sinogram(
        "remove_large_stripe", block,
        lambda s: removal.remove_large_stripe(
            s, snr=snr, size=size, drop_ratio=drop_ratio, norm=norm
        ),
    )


def remove_all_stripe(
    block: Array,
    *,
    snr: float = 3.0,
    la_size: int = 51,
    sm_size: int = 21,
    drop_ratio: float = 0.1,
    dim: int = 1,
) -> F32:
    """Remove all stripe types: dead, then large, then small (Vo et al. 2018, algorithm 6).

    Parameters
    ----------
    block : ndarray, shape (rows, angles, cols)
        Sinogram block.
    snr : float
        Detection ratio.
    la_size : int
        Median-filter window for large stripes, in pixels.
    sm_size : int
        Median-filter window for small stripes, in pixels.
    drop_ratio : float
        Fraction of sorted values dropped at each end for detection, in [0, 0.8].
    dim : {1, 2}
        1-D or 2-D median filter.

    Returns
    -------
    ndarray of float32, shape (rows, angles, cols)
    """
    _check_positive("remove_all_stripe", "la_size", la_size)
    _check_positive("remove_all_stripe", "sm_size", sm_size)
    device = _on_device("remove_all_stripe", block, lambda data: stripe_device.all_stripe(
        data, snr=snr, la_size=la_size, sm_size=sm_size, drop_ratio=drop_ratio, dim=dim))
    if device is not None:
        return device
    return _per_sinogram(
        "remove_all_stripe", block,
        lambda s: removal.remove_all_stripe(
            s, snr=snr, la_size=la_size, sm_size=sm_size, drop_ratio=drop_ratio, dim=dim
        ),
    )


# ---------------------------------------------------------------------------------------
# Münch's wavelet-Fourier filter (tomopy.prep.stripe.remove_stripe_fw)


def _to_sinograms(block: Array) -> Array:
    """Projection ``(angles, rows, cols)`` ↔ sinogram ``(rows, angles, cols)`` (the same
    swap both ways), C-contiguous, in the block's own array namespace."""
    result: Array = array_module(block).ascontiguousarray(block.transpose(1, 0, 2))
    return result


def remove_stripe_fw(
    block: Array,
    *,
    level: int | None = None,
    wname: str = "db5",
    sigma: float = 2,
    pad: bool = True,
) -> F32:
    """:func:`remove_stripe_fw_sino` on a projection block ``(angles, rows, cols)``,
    TomoPy's layout and call (``tomopy.prep.stripe.remove_stripe_fw``): each sinogram
    ``block[:, row, :]`` is filtered on its own, over the block's angles.

    Returns
    -------
    ndarray of float32, shape (angles, rows, cols)
    """
    _check_block("remove_stripe_fw", block, "projection (angles, rows, cols)")
    return _to_sinograms(remove_stripe_fw_sino(_to_sinograms(block), level=level, wname=wname,
                                               sigma=sigma, pad=pad))


def remove_stripe_fw_sino(
    block: Array,
    *,
    level: int | None = None,
    wname: str = "db5",
    sigma: float = 2,
    pad: bool = True,
) -> F32:
    """Remove stripes with Münch's combined wavelet-Fourier filter, as tomopy does, on a
    sinogram block (the stage ``remove_stripe_fw``: every angle of a few rows, as
    HTTomo's method database has it, so the result does not depend on the block size).

    Each sinogram ``block[row]`` (angles × cols) is zero-padded along the angle
    axis by ``angles // 8`` in all, centred (``pad``), decomposed with ``level``
    single-level 2-D DWTs (``pywt.dwt2``, mode ``symmetric``); at every level the
    vertical detail band (``cV``: stripes are constant along angles, i.e. vertical) is
    Fourier transformed along the angle axis and damped by
    ``1 - exp(-k² / (2 σ²))`` with ``k = (-m+1)/2 … (m-1)/2`` the centred frequency
    index of its ``m`` samples, then the sinogram is rebuilt (cropping the
    approximation to each level's detail size before ``idwt2``).

    Parameters
    ----------
    block : ndarray, shape (rows, angles, cols)
        Sinogram block.
    level : int, optional
        Number of decomposition levels; ``None`` → ``ceil(log2(max(angles, cols)))``.
        tomopy uses ``max(tomo.shape)``, the same unless a block has more rows than
        angles and columns; leaving rows out keeps the result independent of how the
        detector rows are split into blocks.
    wname : str
        PyWavelets discrete wavelet name.
    sigma : float
        Damping width, in frequency samples of the angle-axis FFT, > 0.
    pad : bool
        Pad the angle axis by ``angles // 8`` zeros (half each side) first.

    Returns
    -------
    ndarray of float32, shape (rows, angles, cols)
    """
    stage = "remove_stripe_fw"
    _check_block(stage, block, "sinogram (rows, angles, cols)")
    if wname not in pywt.wavelist(kind="discrete"):
        raise StageError(f"{stage}: wname: expected a discrete pywt wavelet, got {wname!r}")
    if not sigma > 0:
        raise StageError(f"{stage}: sigma: expected > 0, got {sigma}")
    if level is None:
        level = int(np.ceil(np.log2(max(block.shape[1], block.shape[2]))))
    if level < 1:
        raise StageError(f"{stage}: level: expected >= 1 or None, got {level}")
    if array_module(block) is not np:  # filter banks for every sinogram at once
        on_device: F32 = fw_device.remove_stripe_fw(block, level=level, wname=wname,
                                                    sigma=sigma, pad=pad)
        return on_device
    rows, angles, cols = block.shape
    padded = angles + angles // 8 if pad else angles
    shift = (padded - angles) // 2
    data = np.asarray(block, dtype=np.float32)
    out = np.empty((rows, angles, cols), dtype=np.float32)
    for row in range(rows):
        sino: Array = np.zeros((padded, cols), dtype=np.float32)
        sino[shift:shift + angles] = data[row]
        details: list[tuple[Array, Array, Array]] = []
        for _ in range(level):
            sino, (c_h, c_v, c_d) = pywt.dwt2(sino, wname)
            details.append((c_h, c_v, c_d))
        damped: list[tuple[Array, Array, Array]] = []
        for c_h, c_v, c_d in details:
            spectrum = np.fft.fftshift(np.fft.fft(c_v, axis=0), axes=0)
            m = spectrum.shape[0]
            k = (np.arange(-m, m, 2, dtype=np.float32) + 1) / 2
            damp = -np.expm1(-np.square(k) / (2 * sigma**2))
            spectrum *= damp[:, np.newaxis]
            filtered = np.real(np.fft.ifft(np.fft.ifftshift(spectrum, axes=0), axis=0))
            damped.append((c_h, filtered, c_d))
        for c_h, c_v, c_d in reversed(damped):
            sino = sino[: c_h.shape[0], : c_h.shape[1]]
            sino = pywt.idwt2((sino, (c_h, c_v, c_d)), wname)
        out[row] = sino[shift:shift + angles, :cols]
    return out


# ---------------------------------------------------------------------------------------
# Titarenko's method (tomopy.prep.stripe.remove_stripe_ti)

_TI_KERNELS: dict[int, npt.NDArray[np.float64]] = {
    1: np.array([1.0, -1.0]),  # first difference (tomopy's _kernel(1, 1))
    2: np.array([-1.0, 2.0, -1.0]),  # second difference (tomopy's _kernel(2, 1))
}


def _ti_matvec(h: npt.NDArray[np.float64], x: npt.NDArray[np.float64]) -> Any:
    """``Hᵀ H x`` for the difference operator ``H`` with kernel ``h`` (valid part)."""
    valid = np.convolve(x, h[::-1])[h.size - 1 : x.size]
    return np.convolve(valid, h)


def _ti_solve(
    h: npt.NDArray[np.float64], alpha: float, f: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Conjugate gradients for ``(HᵀH + α I) x = f`` (tomopy's ``_ringCGM``)."""
    x: npt.NDArray[np.float64] = np.zeros(f.size)
    r = f.copy()
    w = -r
    z = _ti_matvec(h, w) + alpha * w
    a = np.dot(r, w) / np.dot(w, z)
    x = x + a * w
    for _ in range(10 * f.size + 100):
        r = r - a * z
        if np.linalg.norm(r) < 1e-7:
            break
        beta = np.dot(r, z) / np.dot(w, z)
        w = -r + beta * w
        z = _ti_matvec(h, w) + alpha * w
        a = np.dot(r, w) / np.dot(w, z)
        x = x + a * w
    return x


def _ti_ring(sino: npt.NDArray[np.float64], order: int) -> npt.NDArray[np.float32]:
    """One correction of ``sino`` (angles × cols): add the column offsets ``q`` that
    minimise ``‖H(mean + q)‖² + α‖q‖²``, ``mean`` the angle-mean profile and
    α = 1 / (2 (max - min) of the per-angle sums over columns), as tomopy has it."""
    sums = sino.sum(axis=1)
    spread = float(sums.max() - sums.min())
    if spread == 0.0:  # flat sinogram: no stripe to remove (tomopy divides by zero)
        return sino.astype(np.float32)
    alpha = 1.0 / (2.0 * spread)
    h = _TI_KERNELS[order]
    q = _ti_solve(h, alpha, -_ti_matvec(h, sino.mean(axis=0)))
    return (sino + q[np.newaxis, :]).astype(np.float32)


def remove_stripe_ti(block: Array, *, nblock: int = 0, alpha: float = 1.5) -> F32:
    """:func:`remove_stripe_ti_sino` on a projection block ``(angles, rows, cols)``,
    TomoPy's layout and call (``tomopy.prep.stripe.remove_stripe_ti``): each sinogram
    ``block[:, row, :]`` is corrected on its own, over the block's angles.

    Returns
    -------
    ndarray of float32, shape (angles, rows, cols)
    """
    _check_block("remove_stripe_ti", block, "projection (angles, rows, cols)")
    return _to_sinograms(remove_stripe_ti_sino(_to_sinograms(block), nblock=nblock,
                                               alpha=alpha))


def remove_stripe_ti_sino(block: Array, *, nblock: int = 0, alpha: float = 1.5) -> F32:
    """Remove stripes with Titarenko's regularised 1-D filter, as tomopy does, on a
    sinogram block (the stage ``remove_stripe_ti``: every angle of a few rows, as
    HTTomo's method database has it, so the result does not depend on the block size).

    For each sinogram ``block[row]`` two corrections are computed, with the first-
    and second-difference regularisers (``d1``, ``d2``), and combined as
    ``sqrt(d1·d2 + alpha·|min(d1·d2)|)`` (tomopy's formula, including its geometric mean).

    Parameters
    ----------
    block : ndarray, shape (rows, angles, cols)
        Sinogram block.
    nblock : int
        0: one correction over all angles; ``n > 0``: the angles are split into ``n``
        equal blocks of ``angles // n`` corrected separately. Unlike tomopy, which
        leaves any remainder angles at 1.0, the remainder joins the last block.
    alpha : float
        Offset factor of the combination, >= 0.

    NaN pixels are treated as 0 (tomopy intends this but its NaN test never matches).

    Returns
    -------
    ndarray of float32, shape (rows, angles, cols)
    """
    stage = "remove_stripe_ti"
    _check_block(stage, block, "sinogram (rows, angles, cols)")
    rows, angles, cols = block.shape
    if cols < 4:
        raise StageError(f"{stage}: block.shape: expected at least 4 columns, got {block.shape}")
    if nblock < 0 or nblock > angles:
        raise StageError(f"{stage}: nblock: expected 0 … {angles} (angles), got {nblock}")
    if alpha < 0:
        raise StageError(f"{stage}: alpha: expected >= 0, got {alpha}")
    if array_module(block) is not np:  # all sinograms' CG problems at once, on the device
        result: F32 = ti_device.remove_stripe_ti(block, nblock=nblock, alpha=alpha)
        return result
    bounds = [0, angles] if nblock == 0 else [k * (angles // nblock) for k in range(nblock)]
    if nblock:
        bounds.append(angles)
    data = np.asarray(block)
    out = np.empty((rows, angles, cols), dtype=np.float32)
    for row in range(rows):
        sino = np.nan_to_num(data[row].astype(np.float64), nan=0.0)
        d1 = np.empty((angles, cols), dtype=np.float32)
        d2 = np.empty((angles, cols), dtype=np.float32)
        for lo, hi in itertools.pairwise(bounds):
            d1[lo:hi] = _ti_ring(sino[lo:hi], 1)
            d2[lo:hi] = _ti_ring(sino[lo:hi], 2)
        product = d1 * d2
        out[row] = np.sqrt(product + alpha * np.abs(product.min()))
    return out


# ---------------------------------------------------------------------------------------
# Parameter models and specs


class SortingParams(StageParams):
    size: int | None = Field(21, ge=1, description="median window, px; None: tomopy's "
                             "rule from the width")
    dim: int = Field(1, ge=1, le=2, description="1-D or 2-D median filter")


class FilteringParams(StageParams):
    sigma: float = Field(3, gt=0, description="Gaussian window sigma, frequency samples")
    size: int | None = Field(21, ge=1, description="median window, px; None: tomopy's "
                             "rule from the width")
    dim: int = Field(1, ge=1, le=2)
    sort: bool = True


class FittingParams(StageParams):
    order: int = Field(2, ge=1, le=10, description="polynomial order along angles")
    sigma: int = Field(10, ge=1, description="Fourier-filter sigma, frequency samples")
    sort: bool = False
    num_chunk: int = Field(1, ge=1)


class DeadStripeParams(StageParams):
    snr: float = Field(3.0, gt=0)
    size: int = Field(51, ge=1, description="median window, px")
    residual: bool = Field(True, validation_alias=AliasChoices("residual", "norm"))
    smooth_strength: int = Field(10, ge=1, description="uniform-filter window, px")


class LargeStripeParams(StageParams):
    snr: float = Field(3.0, gt=0)
    size: int = Field(51, ge=1, description="median window, px")
    drop_ratio: float = Field(0.1, ge=0.0, le=0.8)
    norm: bool = True


class AllStripeParams(StageParams):
    snr: float = Field(3.0, gt=0)
    la_size: int = Field(51, ge=1, description="large-stripe median window, px")
    sm_size: int = Field(21, ge=1, description="small-stripe median window, px")
    drop_ratio: float = Field(0.1, ge=0.0, le=0.8)
    dim: int = Field(1, ge=1, le=2)


class FwParams(StageParams):
    level: int | None = Field(
        None, ge=1, le=32, description="None: ceil(log2(max(angles, cols)))"
    )
    wname: str = "db5"
    sigma: float = Field(2, gt=0, description="damping width, frequency samples")
    pad: bool = True


class TiParams(StageParams):
    nblock: int = Field(0, ge=0)
    alpha: float = Field(1.5, ge=0)


# Aliases map other packages' names onto these functions with *our* (algotom's) defaults;
# tomopy/httomolibgpu defaults differ in places (e.g. their remove_all_stripe has
# la_size=61), so a pipeline naming an alias gets algotom's defaults unless it sets them.
#
# Memory: every method holds the float32 input (converted if needed) and the float32
# output block, plus per-sinogram temporaries (algotom: a few float64 (angles, cols)
# copies; fw: the padded sinogram and its wavelet bands). For Vo's methods these are
# 9-21 float64 sinograms, measured (see _vo_memory): one more block does not bound them
# when a block holds few sinograms. fw: one more block, 3 in all. Ti works one sinogram
# at a time in float64 (a few (angles, cols) copies) on top of input and output: 4 bounds
# it with room (it converted the whole block to float64 before it took sinogram blocks).


def _vo_memory(sinogram_copies: float) -> MemoryEstimate:
    """Input and float32 output blocks, plus ``sinogram_copies`` float64 ``(angles,
    cols)`` sinograms that algotom holds at once on one sinogram (sorted copies, index
    arrays, filtered and fitted images), counted from tracemalloc's peak on blocks of
    (8, 180, 256), (4, 360, 512) and (2, 900, 300) (the largest count, rounded up), and
    256 KiB for NumPy's small objects; tests/stages/test_memory_estimates_measured.py."""

    def estimate(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
        rows, angles, cols = shape
        block = rows * angles * cols
        data = block * (np.dtype(dtype).itemsize + (0 if np.dtype(dtype) == np.float32 else 4))
        return int(data + 4 * block + sinogram_copies * 8 * angles * cols) + (256 << 10)

    return estimate
#: The device path (stages.prep.stripe_device) holds the whole block at once, in float64
#: where algotom is: the float32 copy (1), the sort order and its inverse (int64: 2 + 2),
#: the sorted and filtered float64 blocks (2 + 2), the sorted-back one (2), the float64
#: result (2), the dead-stripe step's filtered copy and mask (2): 15 float32 blocks.
_VO_DEVICE_MEMORY = scaled_memory(15.0)

SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="remove_stripe_based_sorting", fn=remove_stripe_based_sorting,
        angle_local=False,  # the whole sinogram
        pattern=Pattern.SINOGRAM, params=SortingParams, memory=_vo_memory(10), device=True,
        # the whole block at once: input, float32 copy, int64 order and inverse (2 each),
        # sorted, filtered, result
        device_memory=scaled_memory(9.0),
        summary="Vo's sorting-based stripe removal (algotom)",
        aliases=(
            "algotom.prep.removal.remove_stripe_based_sorting",
            "tomopy.prep.stripe.remove_stripe_based_sorting",
            "httomolibgpu.prep.stripe.remove_stripe_based_sorting",
        ),
    ),
    StageSpec(
        name="remove_stripe_based_filtering", fn=remove_stripe_based_filtering,
        angle_local=False,  # the whole sinogram
        device=True, device_memory=_VO_DEVICE_MEMORY,
        pattern=Pattern.SINOGRAM, params=FilteringParams, memory=_vo_memory(11),
        summary="Vo's filtering-based stripe removal (algotom)",
        aliases=(
            "algotom.prep.removal.remove_stripe_based_filtering",
            "tomopy.prep.stripe.remove_stripe_based_filtering",
        ),
    ),
    StageSpec(
        name="remove_stripe_based_fitting", fn=remove_stripe_based_fitting,
        angle_local=False,  # the whole sinogram
        device=True, device_memory=_VO_DEVICE_MEMORY,
        pattern=Pattern.SINOGRAM, params=FittingParams, memory=_vo_memory(22),
        summary="Vo's fitting-based stripe removal (algotom)",
        aliases=(
            "algotom.prep.removal.remove_stripe_based_fitting",
            "tomopy.prep.stripe.remove_stripe_based_fitting",
        ),
    ),
    StageSpec(
        name="remove_dead_stripe", fn=remove_dead_stripe,
        angle_local=False,  # the whole sinogram
        device=True, device_memory=_VO_DEVICE_MEMORY,
        pattern=Pattern.SINOGRAM, params=DeadStripeParams, memory=_vo_memory(13),
        summary="Vo's unresponsive/fluctuating stripe removal (algotom)",
        aliases=(
            "algotom.prep.removal.remove_dead_stripe",
            "tomopy.prep.stripe.remove_dead_stripe",
        ),
    ),
    StageSpec(
        name="remove_large_stripe", fn=remove_large_stripe,
        angle_local=False,  # the whole sinogram
        device=True, device_memory=_VO_DEVICE_MEMORY,
        pattern=Pattern.SINOGRAM, params=LargeStripeParams, memory=_vo_memory(11),
        summary="Vo's large-stripe removal (algotom)",
        aliases=(
            "algotom.prep.removal.remove_large_stripe",
            "tomopy.prep.stripe.remove_large_stripe",
        ),
    ),
    StageSpec(
        name="remove_all_stripe", fn=remove_all_stripe,
        angle_local=False,  # the whole sinogram
        device=True, device_memory=_VO_DEVICE_MEMORY,
        pattern=Pattern.SINOGRAM, params=AllStripeParams, memory=_vo_memory(12),
        summary="Vo's combined dead/large/small stripe removal (algotom)",
        aliases=(
            "algotom.prep.removal.remove_all_stripe",
            "tomopy.prep.stripe.remove_all_stripe",
        ),  # httomolibgpu's (other parameters): remove_all_stripe_httomo, httomo_prep.py
    ),
    StageSpec(
        name="remove_stripe_fw", fn=remove_stripe_fw_sino,
        angle_local=False,  # the whole sinogram (wavelets along the angles)
        pattern=Pattern.SINOGRAM, params=FwParams, memory=scaled_memory(3.0),
        # the padded block (1.2) and its level-1 bands (about 1.2), float64 from the
        # first damped band on (x2), the filter banks' temporaries (2), input, output (2)
        device=True, device_memory=scaled_memory(9.0),
        summary="Münch wavelet-Fourier stripe removal (tomopy's algorithm)",
        aliases=(
            "tomopy.prep.stripe.remove_stripe_fw",
            "httomolibgpu.prep.stripe.remove_stripe_fw",
        ),
    ),
    StageSpec(
        name="remove_stripe_ti", fn=remove_stripe_ti_sino,
        angle_local=False,  # the whole sinogram
        pattern=Pattern.SINOGRAM, params=TiParams, memory=scaled_memory(4.0),
        # the whole block in float64 (2), the two corrections (2), one ring's float64
        # sinograms and correction (4), the product and the result (2), the input (1)
        device=True, device_memory=scaled_memory(11.0),
        summary="Titarenko regularised stripe removal (tomopy's algorithm)",
        aliases=("tomopy.prep.stripe.remove_stripe_ti",),
    ),
)
