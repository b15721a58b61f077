"""Münch's wavelet-Fourier stripe filter (``remove_stripe_fw``) for any array namespace.

The host stage runs PyWavelets' ``dwt2``/``idwt2`` one sinogram at a time; PyWavelets has
no device twin, so here the single-level transforms are written as the filter banks they
are, for every sinogram of the block at once:

* analysis along an axis (``pywt.dwt``, mode ``symmetric``): extend the signal by
  ``L - 1`` mirrored samples (half-sample symmetric) at each end, convolve with the
  decomposition filter, keep every second value from index ``L`` on:
  ``floor((N + L - 1) / 2)`` coefficients;
* synthesis (``pywt.idwt``): upsample by two, convolve with the reconstruction filters,
  add, keep ``2 N - L + 2`` values from index ``L - 2`` on;
* ``dwt2`` is the analysis along the angles then along the columns (``cH`` is detail
  along the angles and approximation along the columns, ``cV`` the converse);
  ``idwt2`` undoes them in the reverse order.

The filters are PyWavelets' own coefficients (host facts). The sums run in another order
than PyWavelets' C loops, so the result agrees with the host stage to float rounding
(``tests/stages/test_stripe_device.py`` states the tolerance), not bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pywt

from stages.backends.xp import array_module


def _analysis(x: Any, filters: tuple[list[float], list[float]], axis: int) -> tuple[Any, Any]:
    """``pywt.dwt(x, mode="symmetric", axis=axis)``: approximation and detail."""
    xp = array_module(x)
    data = xp.moveaxis(x, axis, -1)
    length = len(filters[0])
    n = data.shape[-1]
    count = (n + length - 1) // 2
    pad = [(0, 0)] * (data.ndim - 1) + [(length - 1, length - 1)]
    extended = xp.pad(data, pad, mode="symmetric")
    out = []
    for taps in filters:
        total = None
        for k, tap in enumerate(taps):
            start = length - k
            term = tap * extended[..., start:start + 2 * count:2]
            total = term if total is None else total + term
        out.append(xp.moveaxis(total, -1, axis))
    return out[0], out[1]


def _synthesis(approx: Any, detail: Any, filters: tuple[list[float], list[float]],
               axis: int) -> Any:
    """``pywt.idwt(approx, detail, mode="symmetric", axis=axis)``."""
    xp = array_module(approx)
    length = len(filters[0])
    parts = [xp.moveaxis(approx, axis, -1), xp.moveaxis(detail, axis, -1)]
    m = parts[0].shape[-1]
    dtype = xp.result_type(parts[0].dtype, parts[1].dtype)
    full = xp.zeros((*parts[0].shape[:-1], 2 * m + length - 1), dtype=dtype)
    for part, taps in zip(parts, filters, strict=True):
        for k, tap in enumerate(taps):
            full[..., k:k + 2 * m:2] += tap * part
    out = full[..., length - 2:length - 2 + 2 * m - length + 2]
    return xp.moveaxis(out, -1, axis)


def _dwt2(x: Any, wavelet: pywt.Wavelet) -> tuple[Any, tuple[Any, Any, Any]]:
    """``pywt.dwt2`` over the last two axes: ``cA, (cH, cV, cD)``."""
    bank = (wavelet.dec_lo, wavelet.dec_hi)
    low, high = _analysis(x, bank, -2)
    aa, ad = _analysis(low, bank, -1)
    da, dd = _analysis(high, bank, -1)
    return aa, (da, ad, dd)


def _idwt2(approx: Any, details: tuple[Any, Any, Any], wavelet: pywt.Wavelet) -> Any:
    """``pywt.idwt2`` over the last two axes."""
    c_h, c_v, c_d = details
    bank = (wavelet.rec_lo, wavelet.rec_hi)
    low = _synthesis(approx, c_v, bank, -1)
    high = _synthesis(c_h, c_d, bank, -1)
    return _synthesis(low, high, bank, -2)


def remove_stripe_fw(block: Any, *, level: int, wname: str, sigma: float,
                     pad: bool) -> Any:
    """The host stage's algorithm on a sinogram block ``(rows, angles, cols)`` (checked
    by the caller), every sinogram at once; float32, C-contiguous."""
    xp = array_module(block)
    wavelet = pywt.Wavelet(wname)
    rows, angles, cols = block.shape
    padded = angles + angles // 8 if pad else angles
    shift = (padded - angles) // 2
    sino = xp.zeros((rows, padded, cols), dtype=xp.float32)
    sino[:, shift:shift + angles] = block.astype(xp.float32)
    details = []
    for _ in range(level):
        sino, bands = _dwt2(sino, wavelet)
        details.append(bands)
    damped = []
    for c_h, c_v, c_d in details:
        spectrum = xp.fft.fftshift(xp.fft.fft(c_v, axis=1), axes=1)
        m = spectrum.shape[1]
        k = (np.arange(-m, m, 2, dtype=np.float32) + 1) / 2
        damp = xp.asarray(-np.expm1(-np.square(k) / (2 * sigma**2)))
        spectrum = spectrum * damp[None, :, None]
        filtered = xp.real(xp.fft.ifft(xp.fft.ifftshift(spectrum, axes=1), axis=1))
        damped.append((c_h, filtered, c_d))
    for c_h, c_v, c_d in reversed(damped):
        sino = sino[:, :c_h.shape[1], :c_h.shape[2]]
        sino = _idwt2(sino, (c_h, c_v, c_d), wavelet)
    return xp.ascontiguousarray(sino[:, shift:shift + angles, :cols], dtype=xp.float32)
