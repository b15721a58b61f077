"""Vo's stripe removal methods for any array namespace (the device path).

algotom has no device twin, so these are written from the algorithms (Vo et al. 2018,
algorithms 1 (fitting), 2 (filtering), 4 (detection), 5 (large), 6 (dead) and their
combination) as algotom implements them, for a whole
sinogram block ``(rows, angles, cols)`` at once: each step works along the angle axis or
along the columns of one sinogram, never across sinograms, so the block is the same as
the sinograms one by one. algotom's CPU result is the oracle
(``tests/stages/test_stripe_device.py``): the filtering, fitting and large-stripe
results equal algotom's bit for bit on the CPU namespace (same FFTs, filters and
float64 steps). Where this differs from algotom, and why:

* **Stripe detection** (algorithm 4) fits a line to the middle half of the sorted
  normalised column profile. algotom calls ``np.polyfit`` per sinogram (an SVD
  least-squares solve); here the line comes from the closed-form centred least-squares
  formulas for every sinogram at once. The coefficients differ in the last bits
  (~1e-16 relative), so a column whose value lies within that of the detection threshold
  could be classified differently; on real and test data the masks are identical.
* **Dead-stripe interpolation**: algotom interpolates the detected columns with a
  degree-1 ``RectBivariateSpline`` (FITPACK); here it is the straight line between the
  nearest undetected columns (:func:`stages.prep.device_correct.fill_rows`), which is
  what a degree-1 spline through the data is; FITPACK's coefficients carry rounding, so
  the values agree to float32 rounding, not bit for bit.
* **Sorting** uses ``argsort`` as algotom does; among equal values in a column the order
  (and so which filtered value each gets) may differ (see
  :func:`stages.prep.stripe._sorting_on_device`).

algotom computes the sorted sinograms in float64 (its ``sort_forward`` stacks the data
with a float64 index); so does this code, so the medians, means and ratios are the same
numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stages.backends.xp import array_module, ndimage_module
from stages.prep.device_correct import fill_rows
from streamer.errors import StageError


def _detect(fact: Any, snr: float, stage: str) -> Any:
    """Algorithm 4 for each row of ``fact`` (``(sinograms, cols)``): a float32 mask of
    the columns whose value stands out of the sorted profile's fitted line by more than
    ``snr`` × its spread (algotom's ``detect_stripe``)."""
    xp = array_module(fact)
    npoint = fact.shape[1]
    ordered = xp.sort(fact, axis=1)
    xlist = xp.arange(0, npoint, 1.0)
    ndrop = int(np.int16(0.25 * npoint))
    x = xlist[ndrop:-ndrop - 1]
    y = ordered[:, ndrop:-ndrop - 1].astype(xp.float64)
    if x.shape[0] < 2:
        raise StageError(f"{stage}: block.shape: expected at least 6 columns to detect "
                         f"stripes, got {npoint}")
    x_mean = x.mean()
    y_mean = y.mean(axis=1)
    dx = x - x_mean
    slope = ((y - y_mean[:, None]) * dx).sum(axis=1) / (dx * dx).sum()
    intercept = y_mean - slope * x_mean
    y_end = intercept + slope * float(npoint - 1)
    noise = xp.abs(y_end - intercept)
    if bool((noise < 1.0e-5).any()):
        raise StageError(f"{stage}: expected noisy data (a stripe stands out of the noise), "
                         "got a noise-free sinogram; add noise to simulated data")
    above = xp.abs(ordered[:, -1] - y_end) / noise >= snr
    below = xp.abs(intercept - ordered[:, 0]) / noise >= snr
    upper = (y_end + noise * snr * 0.5)[:, None]
    lower = (intercept - noise * snr * 0.5)[:, None]
    hit = (above[:, None] & (fact > upper)) | (below[:, None] & (fact <= lower))
    return hit.astype(xp.float32)


def _dilate(mask: Any) -> Any:
    """``ndimage.binary_dilation(mask_row, iterations=1)`` for each row (1-D cross)."""
    xp = array_module(mask)
    on = mask > 0
    grown = on.copy()
    grown[:, 1:] |= on[:, :-1]
    grown[:, :-1] |= on[:, 1:]
    return grown.astype(xp.float32)


def _sort_columns(data: Any) -> tuple[Any, Any]:
    """Each column of each sinogram sorted along the angles (float64, as algotom's
    ``sort_forward``) and the permutation that undoes it."""
    xp = array_module(data)
    order = xp.argsort(data, axis=1)
    ordered = xp.take_along_axis(data.astype(xp.float64), order, axis=1)
    return ordered, xp.argsort(order, axis=1)


def large_stripe(data: Any, *, snr: float, size: int, drop_ratio: float, norm: bool,
                 stage: str = "remove_large_stripe") -> Any:
    """Algorithm 5 on a ``(rows, angles, cols)`` block (float32 in; float64 out where
    algotom's is, float32 otherwise): sort the columns, median-filter across columns,
    detect the columns whose trimmed mean differs from the filtered one, optionally
    equalise every column by that ratio, and replace the detected ones by the filtered
    values sorted back."""
    xp = array_module(data)
    sino = xp.array(data, dtype=xp.float32, copy=True)
    angles = sino.shape[1]
    ndrop = int(0.5 * float(np.clip(drop_ratio, 0.0, 0.8)) * angles)
    ordered, back = _sort_columns(sino)
    smooth = ndimage_module(xp).median_filter(ordered, size=(1, 1, size))
    list1 = ordered[:, ndrop:angles - ndrop].mean(axis=1)
    list2 = smooth[:, ndrop:angles - ndrop].mean(axis=1)
    nonzero = list2 != 0
    fact = xp.where(nonzero, list1 / xp.where(nonzero, list2, 1.0), 1.0)
    mask = _dilate(_detect(fact, snr, stage))
    if norm:
        sino = sino / fact[:, None, :]
    corrected = xp.take_along_axis(smooth, back, axis=1)
    return xp.where(mask[:, None, :] > 0, corrected.astype(sino.dtype), sino)


def dead_stripe(data: Any, *, snr: float, size: int, residual: bool,
                smooth_strength: int, stage: str = "remove_dead_stripe") -> Any:
    """Algorithm 6 on a ``(rows, angles, cols)`` block: columns whose fluctuation along
    the angles stands out of a median-filtered background (or that do not fluctuate at
    all) are detected and interpolated from their neighbours along the row; then, with
    ``residual``, :func:`large_stripe` (``drop_ratio`` 0.1, ``norm``)."""
    xp = array_module(data)
    nd = ndimage_module(xp)
    sino = xp.array(data, dtype=xp.float32, copy=True)
    cols = sino.shape[2]
    smooth = nd.uniform_filter1d(sino, smooth_strength, axis=1)
    diff = xp.abs(sino - smooth).sum(axis=1)
    background = nd.median_filter(diff, size=(1, size))
    level = xp.abs(background).mean(axis=1)
    background = xp.where(background == 0.0, level[:, None], background)
    mask = _dilate(_detect(diff / background, snr, stage))
    mask[:, 0:2] = 0.0
    mask[:, -2:] = 0.0
    detected = (mask > 0).sum(axis=1)
    repair = (detected > 0) & (detected < cols // 3)  # algotom: ncol // 3 > n > 0
    bad = (mask > 0) & repair[:, None]
    if bool(bad.any()):
        fill_rows(sino, xp.broadcast_to(bad[:, None, :], sino.shape).copy(), 0.0)
    if residual:
        sino = large_stripe(sino, snr=snr, size=size, drop_ratio=0.1, norm=True,
                            stage=stage)
    return sino


def sorting(data: Any, *, size: int, dim: int) -> Any:
    """Algorithm 3 (sort, median-filter across columns, sort back) on the float32 values
    of ``data``, as algotom's ``remove_stripe_based_sorting`` (which casts first)."""
    xp = array_module(data)
    data = data.astype(xp.float32)
    order = xp.argsort(data, axis=1)
    ordered = xp.take_along_axis(data, order, axis=1)
    window = (1, size, size) if dim == 2 else (1, 1, size)
    filtered = ndimage_module(xp).median_filter(ordered, size=window)
    return xp.take_along_axis(filtered, xp.argsort(order, axis=1), axis=1)


def all_stripe(data: Any, *, snr: float, la_size: int, sm_size: int, drop_ratio: float,
               dim: int, norm: bool = True, stage: str = "remove_all_stripe") -> Any:
    """algotom's ``remove_all_stripe``: dead stripes (no residual step), large stripes
    (normalised with ``norm``, algotom's default; httomolibgpu's switch), then the
    sorting-based method, in algotom's order and precision."""
    sino = dead_stripe(data, snr=snr, size=la_size, residual=False, smooth_strength=10,
                       stage=stage)
    sino = large_stripe(sino, snr=snr, size=la_size, drop_ratio=drop_ratio, norm=norm,
                        stage=stage)
    return sorting(sino, size=sm_size, dim=dim)


def _frequency_split(data: Any, sigma: float) -> tuple[Any, Any]:
    """algotom's ``separate_frequency_component`` along the angles of every column: the
    low-pass part (a Gaussian window on the FFT of the reflect-padded column, centred by
    the ``(-1)^k`` modulation) in float32, and the rest."""
    from scipy.signal import windows  # noqa: PLC0415 - host facts, only where needed

    xp = array_module(data)
    angles = data.shape[1]
    pad = min(150, int(0.1 * angles))
    window = xp.asarray(windows.gaussian(angles + 2 * pad, sigma))
    sign = xp.asarray(np.power(-1.0, np.arange(angles + 2 * pad)))
    lines = xp.pad(xp.moveaxis(data, 1, 2), ((0, 0), (0, 0), (pad, pad)), mode="reflect")
    spectrum = xp.fft.fft(lines * sign, axis=-1) * window
    low = xp.real(xp.fft.ifft(spectrum, axis=-1) * sign)[..., pad:angles + pad]
    smooth = xp.ascontiguousarray(xp.moveaxis(low, 2, 1)).astype(xp.float32)
    return smooth, data - smooth


def filtering(data: Any, *, sigma: float, size: int, dim: int, sort: bool) -> Any:
    """Algorithm 2 (algotom's ``remove_stripe_based_filtering``) on a float32 sinogram
    block: split each column's profile into low and high frequencies, median-filter the
    low part across columns (sorted first with ``sort``), add the high part back."""
    xp = array_module(data)
    smooth, sharp = _frequency_split(data, sigma)
    window = (1, size, size) if dim == 2 else (1, 1, size)
    median = ndimage_module(xp).median_filter
    if sort:
        ordered, back = _sort_columns(smooth)
        smooth = xp.take_along_axis(median(ordered, size=window), back, axis=1)
    else:
        smooth = median(smooth, size=window)
    return smooth + sharp


def _gaussian_2d(data: Any, sigma_x: float, sigma_y: float, pad: int) -> Any:
    """algotom's ``apply_gaussian_filter`` on every sinogram: edge-pad the columns and
    mean-pad the angles by ``pad``, multiply the centred 2-D spectrum by a Gaussian
    window (``sigma_x`` across columns, ``sigma_y`` along angles), crop."""
    xp = array_module(data)
    padded = xp.pad(data, ((0, 0), (0, 0), (pad, pad)), mode="edge")
    padded = xp.pad(padded, ((0, 0), (pad, pad), (0, 0)), mode="mean")
    height, width = padded.shape[1:]
    xc, yc = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    y, x = np.ogrid[-yc:height - yc, -xc:width - xc]
    window = xp.asarray(np.exp(-(x ** 2 / (2 * sigma_x ** 2) + y ** 2 / (2 * sigma_y ** 2))))
    column, row = np.meshgrid(np.arange(0, width), np.arange(0, height))
    sign = xp.asarray(np.power(-1.0, column + row))
    spectrum = xp.fft.fft2(padded * sign, axes=(1, 2)) * window
    filtered = xp.real(xp.fft.ifft2(spectrum, axes=(1, 2)) * sign)
    return filtered[:, pad:height - pad, pad:width - pad]


def _mean_abs(data: Any) -> Any:
    """``np.mean(np.abs(sinogram))`` of every sinogram, shaped to broadcast."""
    magnitude = array_module(data).abs(data)
    return magnitude.reshape(magnitude.shape[0], -1).mean(axis=1)[:, None, None]


def fitting(data: Any, *, order: int, sigma: int, sort: bool, num_chunk: int,
            stage: str = "remove_stripe_based_fitting") -> Any:
    """Algorithm 1 (algotom's ``remove_stripe_based_fitting``) on a float32 sinogram
    block: fit each column along the angles (a Savitzky-Golay polynomial of ``order``
    over ``angles // num_chunk`` angles, mirrored edges: scipy's ``savgol_filter`` is
    this convolution), low-pass the fit in 2-D, and scale the sinogram by
    ``filtered / fit``."""
    from scipy.signal import savgol_coeffs  # noqa: PLC0415 - host facts, only where needed

    xp = array_module(data)
    _, angles, cols = data.shape
    pad = min(150, int(0.1 * angles))
    sigma_y = int(np.clip(min(60, int(0.1 * cols)), 10, None))
    span = angles // num_chunk
    length = span if span % 2 == 1 else span - 1
    if length <= order:
        raise StageError(f"{stage}: order: expected below the fitting window of "
                         f"{length} angles (angles // num_chunk, odd), got {order}")
    sino, back = _sort_columns(data) if sort else (data, None)
    weights = xp.asarray(savgol_coeffs(length, order))
    fit = ndimage_module(xp).convolve1d(sino, weights, axis=1, mode="mirror")
    filtered = _gaussian_2d(fit, sigma, sigma_y, pad)
    filtered = _mean_abs(fit) * filtered / _mean_abs(filtered)
    corrected = (sino / fit) * filtered
    if back is not None:
        corrected = xp.take_along_axis(corrected, back, axis=1)
    return corrected
