"""Single-distance phase retrieval (Paganin et al., J. Microsc. 206, 33, 2002).

:func:`paganin` follows ``tomopy.prep.phase.retrieve_phase`` (units cm, cm, keV; its
defaults) and reproduces TomoPy's test reference ``retrieve_phase.npy`` to a relative
error of 1.6e-7. Each frame is low-pass filtered in Fourier space with

    H(u, v) = 1 / (λ · dist · (u² + v²) / (4π) + α),   then normalised to max(H) = 1,

where ``λ = 2π ħ c / E`` is the wavelength. As in TomoPy, the frequencies of an
``n``-pixel axis are the ``n`` evenly spaced values from ``-1/(2·pixel_size)`` to
``+1/(2·pixel_size)`` (not the exact FFT grid), arranged with ``fftshift`` (so for an odd
padded size the filter's peak is not at the zero frequency: TomoPy's behaviour, kept).
The output is the filtered frame (no logarithm), in the unit of the input.

Padding (``pad=True``): each frame axis of ``n`` pixels is extended on both sides by
``p = int((2**ceil(log2(n + m)) - n) / 2)`` pixels, ``m = ceil(π λ dist / pixel_size²)``
the width of the Fresnel zone, repeating the edge pixels. (TomoPy's loop overwrites the
whole frame with its last row when ``p == 0``; here ``p == 0`` simply means no padding.)
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import AliasChoices, Field, model_validator
from scipy import fft

from stages.backends.xp import array_module, fft_module
from stages.spec import Pattern, StageParams, StageSpec
from streamer.errors import StageError

#: reduced Planck constant ħ in keV·s and the speed of light in cm/s (TomoPy's values)
HBAR_KEV_S = 6.58211928e-19
SPEED_OF_LIGHT_CM_S = 2.99792458e10

#: scratch budget for the frames filtered together (float64 frames + complex spectrum)
_SCRATCH_BYTES = 1 << 28
_BYTES_PER_PADDED_PIXEL = 8 + 16


def _workers(xp: Any) -> dict[str, int]:
    """scipy.fft's ``workers`` (all cores) for numpy; cupyx.scipy.fft has no such option."""
    return {"workers": -1} if xp is np else {}


def wavelength_cm(energy_kev: float) -> float:
    """Wavelength in cm of a photon of ``energy_kev`` keV: ``λ = 2π ħ c / E``."""
    return 2.0 * math.pi * HBAR_KEV_S * SPEED_OF_LIGHT_CM_S / energy_kev


def pad_width(n: int, pixel_size: float, dist: float, energy: float) -> int:
    """Pixels added on each side of an ``n``-pixel axis (TomoPy's power-of-two rule)."""
    fresnel = math.ceil(math.pi * wavelength_cm(energy) * dist / pixel_size**2)
    return int((2 ** math.ceil(math.log2(n + fresnel)) - n) * 0.5)


def _frames_per_chunk(padded_pixels: int, n_frames: int) -> int:
    """How many padded frames fit in the scratch budget (at least 1, at most 16)."""
    fit = _SCRATCH_BYTES // (padded_pixels * _BYTES_PER_PADDED_PIXEL)
    return max(1, min(16, n_frames, fit))


def _frequencies(n: int, pixel_size: float) -> npt.NDArray[np.float64]:
    """``n`` values evenly spaced over ``[-1/(2 pixel_size), 1/(2 pixel_size)]``."""
    if n == 1:
        return np.zeros(1)
    steps = 2.0 * np.arange(n, dtype=np.float64) - (n - 1)
    coords: npt.NDArray[np.float64] = steps * (0.5 / ((n - 1) * pixel_size))
    return coords


def paganin_transfer(
    shape: tuple[int, int], pixel_size: float, dist: float, energy: float, alpha: float
) -> npt.NDArray[np.float64]:
    """TomoPy's Paganin filter for a padded frame of ``shape``, in FFT order, max 1."""
    u2 = _frequencies(shape[0], pixel_size) ** 2
    v2 = _frequencies(shape[1], pixel_size) ** 2
    w2 = u2[:, None] + v2[None, :]
    transfer = 1.0 / (wavelength_cm(energy) * dist * w2 / (4.0 * math.pi) + alpha)
    transfer = fft.fftshift(transfer)
    normalised: npt.NDArray[np.float64] = transfer / transfer.max()
    return normalised


class PaganinParams(StageParams):
    """Parameters of :func:`paganin` (TomoPy's names, units and defaults)."""

    pixel_size: float = Field(1e-4, gt=0.0, description="detector pixel size, cm")
    dist: float = Field(50.0, gt=0.0, description="sample-detector distance, cm")
    energy: float = Field(20.0, gt=0.0, description="photon energy, keV")
    alpha: float = Field(1e-3, gt=0.0, description="regularisation parameter")
    pad: bool = Field(True, description="edge-pad each frame to a power of two")


def paganin(
    block: npt.NDArray[Any],
    *,
    pixel_size: float = 1e-4,
    dist: float = 50.0,
    energy: float = 20.0,
    alpha: float = 1e-3,
    pad: bool = True,
) -> npt.NDArray[np.float32]:
    """Paganin phase retrieval of every frame, as ``tomopy.prep.phase.retrieve_phase``.

    Parameters
    ----------
    block : ndarray of shape (angles, rows, cols)
        Projections, normally flat-field corrected transmission (dimensionless).
    pixel_size : float
        Detector pixel size in cm.
    dist : float
        Propagation (sample to detector) distance in cm.
    energy : float
        Photon energy in keV.
    alpha : float
        Regularisation parameter (larger: less smoothing).
    pad : bool
        Edge-pad each frame before filtering (see the module notes).

    Returns
    -------
    ndarray of shape (angles, rows, cols), float32, C-contiguous
        The filtered frames, in the unit of the input.

    Raises
    ------
    StageError
        If ``block`` is not a real 3-D array or a physical parameter is not positive.
    """
    stage = "paganin"
    if block.ndim != 3:
        raise StageError(f"stage {stage!r}: block: expected a 3-D array, got shape {block.shape}")
    if block.dtype.kind not in "uif":
        raise StageError(
            f"stage {stage!r}: block.dtype: expected an integer or real float type, "
            f"got {block.dtype.name!r}"
        )
    for name, value in (
        ("pixel_size", pixel_size), ("dist", dist), ("energy", energy), ("alpha", alpha)
    ):
        if not (math.isfinite(value) and value > 0):
            raise StageError(f"stage {stage!r}: {name}: expected a finite value > 0, got {value}")
    n_frames, rows, cols = block.shape
    p_r = pad_width(rows, pixel_size, dist, energy) if pad else 0
    p_c = pad_width(cols, pixel_size, dist, energy) if pad else 0
    host_transfer = paganin_transfer((rows + 2 * p_r, cols + 2 * p_c), pixel_size, dist,
                                     energy, alpha)
    xp = array_module(block)
    transforms, workers = fft_module(xp), _workers(xp)
    transfer = xp.asarray(host_transfer)
    out: npt.NDArray[np.float32] = xp.empty(block.shape, dtype=xp.float32)
    chunk = _frames_per_chunk(host_transfer.size, n_frames)
    for start in range(0, n_frames, chunk):
        frames = xp.asarray(block[start : start + chunk], dtype=xp.float64)
        padded = xp.pad(frames, ((0, 0), (p_r, p_r), (p_c, p_c)), mode="edge")
        spectrum = transforms.fft2(padded, axes=(-2, -1), **workers)
        spectrum *= transfer
        filtered = transforms.ifft2(spectrum, axes=(-2, -1), overwrite_x=True, **workers).real
        out[start : start + chunk] = filtered[:, p_r : p_r + rows, p_c : p_c + cols]
    return out


def _chunked_fft_memory(shape: tuple[int, int, int], dtype: np.dtype[Any],
                        padded: tuple[int, int], *, minus_log: bool) -> int:
    """Peak bytes of the chunked padded-FFT loop of :func:`paganin` and
    :func:`_lorentzian_minus_log` (what tracemalloc sees of NumPy's buffers).

    Outside the loop: the input, the float32 output and the float64 filter of one padded
    frame (while the filter is built, about five float64 padded frames of temporaries).
    A chunk of ``c`` frames of ``F`` pixels, padded to ``P``, holds its float64 frames
    (8 B·F), the float64 padded frames (8 B·P), their complex128 spectrum (16 B·P) and
    the complex128 inverse transform (16 B·P). When there is more than one chunk, the
    previous chunk's spectrum and inverse are still referenced while the next ones are
    computed: 16 B·P more. ``-ln`` adds two float64 frame-sized temporaries (16 B·F).
    Not counted: pocketfft's own work buffers (allocated outside NumPy).
    """
    n_frames, rows, cols = shape
    frame, padded_frame = rows * cols, padded[0] * padded[1]
    elements = n_frames * frame
    block_bytes = elements * np.dtype(dtype).itemsize + 4 * elements
    chunk = _frames_per_chunk(padded_frame, n_frames)
    per_padded = 24 + (16 if chunk < n_frames else 0)
    per_frame = 8 + (16 if minus_log else 0)
    loop = 8 * padded_frame + chunk * (per_padded * padded_frame + per_frame * frame)
    build = 5 * 8 * padded_frame
    return block_bytes + max(loop, build) + (256 << 10)  # + NumPy's small objects


def _paganin_memory(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
    """:func:`_chunked_fft_memory` with TomoPy's power-of-two padding (no ``-ln``)."""
    _, rows, cols = shape
    pad = bool(getattr(params, "pad", True))
    args = (
        float(getattr(params, "pixel_size", 1e-4)),
        float(getattr(params, "dist", 50.0)),
        float(getattr(params, "energy", 20.0)),
    )
    n_r = rows + 2 * pad_width(rows, *args) if pad else rows
    n_c = cols + 2 * pad_width(cols, *args) if pad else cols
    return _chunked_fft_memory(shape, dtype, (n_r, n_c), minus_log=False)


# -------------------------------------------------------------------- paganin_filter
#
# Paganin (2002) as httomolibgpu 1.3 computes it (``httomolibgpu.prep.phase.
# paganin_filter``: pixel size in µm, distance in m, energy in keV, δ/β), ported to NumPy
# so that a pipeline brought over from HTTomo gives the same images at the same δ/β:
#
#     out = -ln( F⁻¹[ F[I] · H ] ),   H = S[ 1 / (1 + a (u² + v²)) ] / max(...),
#     a = λ · distance · (δ/β) / (4π),
#
# with ``u`` (rows) and ``v`` (columns) httomolibgpu's reciprocal grid: the ``n`` evenly
# spaced values from ``-2π/pixel`` to ``+2π/pixel`` (TomoPy's grid with 2π in place of
# 1/2), ``S`` the ``fftshift``. That grid runs to about twice the FFT's Nyquist frequency
# (π/pixel), so the filter is about 4× as strong as the continuous operator
# ``1 + a|k|²`` would ask for: that is httomolibgpu's strength, kept on purpose (HTTomo
# users tune δ/β against it); ``paganin_filter_savu_legacy`` is the same filter at
# δ/β / 4, as upstream. httomolib's CPU ``paganin_filter`` (cm, ``alpha``) is the same
# filter with ``a = λ · dist / (4π · alpha)``. Work is in float64 (upstream: complex64),
# the output float32; the real part of the inverse transform is kept, as upstream.


def reciprocal_coord(n: int, pixel_size: float) -> npt.NDArray[np.float64]:
    """httomolib(gpu)'s ``_reciprocal_coord``: ``n`` values evenly spaced over
    ``[-2π/pixel_size, +2π/pixel_size]`` (a single 0 for ``n == 1``)."""
    if n == 1:
        return np.zeros(1)
    steps = 2.0 * np.arange(n, dtype=np.float64) - (n - 1)
    coords: npt.NDArray[np.float64] = steps * (2.0 * math.pi / ((n - 1) * pixel_size))
    return coords


def lorentzian_transfer(
    shape: tuple[int, int], pixel_size: float, a: float
) -> npt.NDArray[np.float64]:
    """``fftshift(1 / (1 + a (u² + v²)))``, normalised to max 1, on httomolib(gpu)'s
    reciprocal grid of a padded frame of ``shape`` (``a`` in pixel_size units squared)."""
    u2 = reciprocal_coord(shape[0], pixel_size) ** 2
    v2 = reciprocal_coord(shape[1], pixel_size) ** 2
    transfer = fft.fftshift(1.0 / (1.0 + a * (u2[:, None] + v2[None, :])))
    normalised: npt.NDArray[np.float64] = transfer / transfer.max()
    return normalised


def paganin_filter_pad(
    n: int,
    method: Literal["next_power_of_2", "next_fast_length", "use_pad_x_y"],
    pad: int = 0,
) -> tuple[int, int]:
    """Pixels added (before, after) to an ``n``-pixel frame axis, httomolibgpu's rules.

    ``next_power_of_2``: to the smallest power of two *greater* than ``n`` (so a
    power-of-two axis doubles); ``next_fast_length``: to ``scipy.fft.next_fast_len(n)``;
    ``use_pad_x_y``: ``pad`` on each side. An even axis gets ``total // 2`` on each
    side (so an odd ``next_fast_length`` excess loses its last pixel, as upstream); an odd
    axis gets the extra pixel after.
    """
    if method == "next_power_of_2":
        total = (1 << n.bit_length()) - n
    elif method == "next_fast_length":
        total = fft.next_fast_len(n) - n
    else:
        total = 2 * pad
    if n % 2 == 0:
        return total // 2, total // 2
    return total // 2, total - total // 2


def paganin_filter_kernel_um2(
    distance_m: float, energy_kev: float, ratio_delta_beta: float
) -> float:
    """httomolibgpu's ``alpha = λ · distance · (δ/β) / (4π)`` in µm², the coefficient of
    ``u² + v²`` in the filter (``_calculate_alpha``)."""
    wavelength_um = wavelength_cm(energy_kev) * 1e4
    return wavelength_um * distance_m * 1e6 * ratio_delta_beta / (4.0 * math.pi)


PaddingMethod = Literal["next_power_of_2", "next_fast_length", "use_pad_x_y"]


class PaganinFilterParams(StageParams):
    """Parameters of :func:`paganin_filter`; httomolibgpu's names are accepted as aliases
    (``pixel_size`` µm, ``distance`` m, ``energy`` keV), with httomolibgpu's defaults."""

    pixel_size_um: float = Field(
        1.28, gt=0.0, allow_inf_nan=False, description="detector pixel size, µm",
        validation_alias=AliasChoices("pixel_size_um", "pixel_size"),
    )
    distance_m: float = Field(
        1.0, gt=0.0, allow_inf_nan=False, description="sample-detector distance, m",
        validation_alias=AliasChoices("distance_m", "distance"),
    )
    energy_kev: float = Field(
        53.0, gt=0.0, allow_inf_nan=False, description="photon energy, keV",
        validation_alias=AliasChoices("energy_kev", "energy"),
    )
    ratio_delta_beta: float = Field(
        250.0, gt=0.0, allow_inf_nan=False, description="δ/β of the material"
    )
    calculate_padding_value_method: PaddingMethod = "next_power_of_2"
    pad_x_y: tuple[int, int] | None = Field(
        None, description="[x, y] pixels added on each side, with use_pad_x_y only"
    )

    @model_validator(mode="after")
    def _check_padding(self) -> PaganinFilterParams:
        _check_pad_x_y(self.calculate_padding_value_method, self.pad_x_y)
        return self


def _check_pad_x_y(method: str, pad_x_y: tuple[int, int] | None) -> None:
    if method == "use_pad_x_y":
        if pad_x_y is None or len(pad_x_y) != 2 or min(pad_x_y) < 0:
            raise ValueError(
                "pad_x_y: expected two integers >= 0 with "
                f"calculate_padding_value_method='use_pad_x_y', got {pad_x_y!r}"
            )
    elif pad_x_y is not None:
        raise ValueError("pad_x_y: only allowed with calculate_padding_value_method='use_pad_x_y'")


def _paganin_filter_padding(
    shape: tuple[int, int], method: PaddingMethod, pad_x_y: tuple[int, int] | None
) -> tuple[tuple[int, int], tuple[int, int]]:
    pad_x, pad_y = pad_x_y if pad_x_y is not None else (0, 0)
    return paganin_filter_pad(shape[0], method, pad_y), paganin_filter_pad(shape[1], method, pad_x)


def paganin_filter(
    block: npt.NDArray[Any],
    *,
    pixel_size_um: float = 1.28,
    distance_m: float = 1.0,
    energy_kev: float = 53.0,
    ratio_delta_beta: float = 250.0,
    calculate_padding_value_method: PaddingMethod = "next_power_of_2",
    pad_x_y: tuple[int, int] | None = None,
) -> npt.NDArray[np.float32]:
    """Paganin single-material phase retrieval, as httomolibgpu's ``paganin_filter``.

    Each frame ``I`` (flat-field corrected transmission ``I_z/I_0``, not ``-log``) is
    edge-padded, filtered and cropped back, and the stage returns

        -ln( F⁻¹[ F[I] · H ] ),   H = fftshift(1 / (1 + a (u² + v²))) / max,
        a = λ · distance · (δ/β) / (4π),

    on httomolibgpu's reciprocal grid (``u``, ``v`` from -2π/pixel to +2π/pixel, see the
    module notes): the same strength as httomolibgpu for the same parameters (about 4×
    the continuous Paganin operator's; ``ratio_delta_beta / 4`` inverts that operator).

    Parameters
    ----------
    block : ndarray of shape (angles, rows, cols)
        Flat-field corrected transmission (any real dtype).
    pixel_size_um : float
        Detector pixel size in µm (httomolibgpu ``pixel_size``).
    distance_m : float
        Sample to detector distance in m (httomolibgpu ``distance``).
    energy_kev : float
        Photon energy in keV (httomolibgpu ``energy``).
    ratio_delta_beta : float
        δ/β of the material (larger: more smoothing).
    calculate_padding_value_method : {"next_power_of_2", "next_fast_length", "use_pad_x_y"}
        How far each frame is edge-padded (see :func:`paganin_filter_pad`).
    pad_x_y : (int, int) or None
        Columns (x) and rows (y) added on each side; only with ``"use_pad_x_y"``.

    Returns
    -------
    ndarray of shape (angles, rows, cols), float32, C-contiguous
        ``-ln`` of the filtered frame. Where it is not positive the logarithm
        gives ``inf`` or ``nan`` (no warning), as on httomolibgpu.

    Raises
    ------
    StageError
        If ``block`` is not a real 3-D array, a physical parameter is not a finite
        positive number, or the padding arguments do not fit together.
    """
    stage = "paganin_filter"
    _check_block(stage, block)
    _check_positive(stage, (
        ("pixel_size_um", pixel_size_um), ("distance_m", distance_m),
        ("energy_kev", energy_kev), ("ratio_delta_beta", ratio_delta_beta),
    ))
    try:
        _check_pad_x_y(calculate_padding_value_method, pad_x_y)
    except ValueError as error:
        raise StageError(f"stage {stage!r}: {error}") from None
    pads = _paganin_filter_padding(block.shape[1:], calculate_padding_value_method, pad_x_y)
    a = paganin_filter_kernel_um2(distance_m, energy_kev, ratio_delta_beta)
    return _lorentzian_minus_log(block, pads, pixel_size_um, a)


def _check_block(stage: str, block: npt.NDArray[Any]) -> None:
    if block.ndim != 3:
        raise StageError(f"stage {stage!r}: block: expected a 3-D array, got shape {block.shape}")
    if block.dtype.kind not in "uif":
        raise StageError(
            f"stage {stage!r}: block.dtype: expected an integer or real float type, "
            f"got {block.dtype.name!r}"
        )


def _check_positive(stage: str, values: tuple[tuple[str, float], ...]) -> None:
    for name, value in values:
        if not (math.isfinite(value) and value > 0):
            raise StageError(f"stage {stage!r}: {name}: expected a finite value > 0, got {value}")


def _lorentzian_minus_log(
    block: npt.NDArray[Any],
    pads: tuple[tuple[int, int], tuple[int, int]],
    pixel_size: float,
    a: float,
) -> npt.NDArray[np.float32]:
    """Edge-pad each frame by ``pads``, filter with :func:`lorentzian_transfer`, crop,
    and return ``-ln`` of the real part (float32), as httomolib(gpu) do."""
    n_frames, rows, cols = block.shape
    pad_r, pad_c = pads
    padded_shape = (rows + sum(pad_r), cols + sum(pad_c))
    xp = array_module(block)
    transforms, workers = fft_module(xp), _workers(xp)
    transfer = xp.asarray(lorentzian_transfer(padded_shape, pixel_size, a))
    out: npt.NDArray[np.float32] = xp.empty(block.shape, dtype=xp.float32)
    chunk = _frames_per_chunk(padded_shape[0] * padded_shape[1], n_frames)
    for start in range(0, n_frames, chunk):
        frames = xp.asarray(block[start : start + chunk], dtype=xp.float64)
        padded = xp.pad(frames, ((0, 0), pad_r, pad_c), mode="edge")
        spectrum = transforms.fft2(padded, axes=(-2, -1), **workers)
        spectrum *= transfer
        filtered = transforms.ifft2(spectrum, axes=(-2, -1), overwrite_x=True, **workers).real
        cropped = filtered[:, pad_r[0] : pad_r[0] + rows, pad_c[0] : pad_c[0] + cols]
        with np.errstate(divide="ignore", invalid="ignore"):  # numpy's warnings only
            out[start : start + chunk] = -xp.log(cropped)
    return out


class PaganinSavuLegacyParams(StageParams):
    """Parameters of :func:`paganin_filter_savu_legacy` (httomolibgpu's names, units and
    defaults: ``pixel_size`` µm, ``distance`` m, ``energy`` keV)."""

    pixel_size: float = Field(1.28, gt=0.0, allow_inf_nan=False, description="pixel size, µm")
    distance: float = Field(1.0, gt=0.0, allow_inf_nan=False, description="distance, m")
    energy: float = Field(53.0, gt=0.0, allow_inf_nan=False, description="energy, keV")
    ratio_delta_beta: float = Field(
        250.0, gt=0.0, allow_inf_nan=False, description="δ/β as Savu meant it (÷4 inside)"
    )


def paganin_filter_savu_legacy(
    block: npt.NDArray[Any],
    *,
    pixel_size: float = 1.28,
    distance: float = 1.0,
    energy: float = 53.0,
    ratio_delta_beta: float = 250.0,
) -> npt.NDArray[np.float32]:
    """httomolibgpu's ``paganin_filter_savu_legacy``: :func:`paganin_filter` with
    ``ratio_delta_beta / 4`` and ``next_power_of_2`` padding, as upstream (Savu's δ/β
    convention). Output and errors as :func:`paganin_filter`."""
    stage = "paganin_filter_savu_legacy"
    _check_block(stage, block)
    _check_positive(stage, (
        ("pixel_size", pixel_size), ("distance", distance), ("energy", energy),
        ("ratio_delta_beta", ratio_delta_beta),
    ))
    pads = _paganin_filter_padding(block.shape[1:], "next_power_of_2", None)
    a = paganin_filter_kernel_um2(distance, energy, ratio_delta_beta / 4.0)
    return _lorentzian_minus_log(block, pads, pixel_size, a)


class PaganinHttomolibParams(StageParams):
    """Parameters of :func:`paganin_filter_httomolib` (httomolib's CPU ``paganin_filter``:
    names, units and defaults; ``pixel_size`` and ``dist`` in cm)."""

    pixel_size: float = Field(1e-4, gt=0.0, allow_inf_nan=False, description="pixel size, cm")
    dist: float = Field(50.0, gt=0.0, allow_inf_nan=False, description="distance, cm")
    energy: float = Field(53.0, gt=0.0, allow_inf_nan=False, description="energy, keV")
    alpha: float = Field(1e-3, gt=0.0, allow_inf_nan=False, description="regularisation")


def paganin_filter_httomolib(
    block: npt.NDArray[Any],
    *,
    pixel_size: float = 1e-4,
    dist: float = 50.0,
    energy: float = 53.0,
    alpha: float = 1e-3,
) -> npt.NDArray[np.float32]:
    """httomolib's CPU ``paganin_filter`` (cm, keV, ``alpha``): TomoPy's filter
    ``1 / (λ dist w² / (4π) + alpha)`` on httomolib's reciprocal grid (±2π/pixel),
    normalised to max 1, ``next_power_of_2`` edge padding, then ``-ln``. That is
    :func:`lorentzian_transfer` with ``a = λ dist / (4π alpha)`` (cm²). Returns float32,
    errors as :func:`paganin_filter`."""
    stage = "paganin_filter_httomolib"
    _check_block(stage, block)
    _check_positive(stage, (
        ("pixel_size", pixel_size), ("dist", dist), ("energy", energy), ("alpha", alpha),
    ))
    pads = _paganin_filter_padding(block.shape[1:], "next_power_of_2", None)
    a = wavelength_cm(energy) * dist / (4.0 * math.pi * alpha)
    return _lorentzian_minus_log(block, pads, pixel_size, a)


def _power_of_2_memory(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
    """As :func:`_paganin_filter_memory` with ``next_power_of_2`` padding."""
    return _paganin_filter_memory(shape, dtype, PaganinFilterParams())


def _paganin_filter_memory(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
    """:func:`_chunked_fft_memory` with the stage's padding, then ``-ln``."""
    _, rows, cols = shape
    if not isinstance(params, PaganinFilterParams):
        params = PaganinFilterParams()
    pad_r, pad_c = _paganin_filter_padding(
        (rows, cols), params.calculate_padding_value_method, params.pad_x_y
    )
    return _chunked_fft_memory(shape, dtype, (rows + sum(pad_r), cols + sum(pad_c)),
                               minus_log=True)


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="paganin",
        angle_local=True,  # a 2-D filter of each frame
        fn=paganin,
        pattern=Pattern.PROJECTION,
        params=PaganinParams,
        memory=_paganin_memory,
        device=True,
        summary="Paganin single-distance phase retrieval, TomoPy's filter and units (cm, keV)",
        aliases=("tomopy.prep.phase.retrieve_phase",),
    ),
    StageSpec(
        name="paganin_filter",
        angle_local=True,  # a 2-D filter of each frame
        fn=paganin_filter,
        pattern=Pattern.PROJECTION,
        params=PaganinFilterParams,
        memory=_paganin_filter_memory,
        device=True,
        summary="Paganin phase retrieval as httomolibgpu (µm, m, keV, δ/β, its strength); "
        "returns -ln of the filtered frame",
        aliases=("httomolibgpu.prep.phase.paganin_filter",),
    ),
    StageSpec(
        name="paganin_filter_savu_legacy",
        angle_local=True,  # a 2-D filter of each frame
        fn=paganin_filter_savu_legacy,
        pattern=Pattern.PROJECTION,
        params=PaganinSavuLegacyParams,
        memory=_power_of_2_memory,
        device=True,
        summary="httomolibgpu's paganin_filter at δ/β / 4 (Savu's convention)",
        aliases=("httomolibgpu.prep.phase.paganin_filter_savu_legacy",),
    ),
    StageSpec(
        name="paganin_filter_httomolib",
        angle_local=True,  # a 2-D filter of each frame
        fn=paganin_filter_httomolib,
        pattern=Pattern.PROJECTION,
        params=PaganinHttomolibParams,
        memory=_power_of_2_memory,
        device=True,
        summary="httomolib's CPU paganin_filter (cm, keV, alpha); returns -ln of the "
        "filtered frame",
        aliases=("httomolib.prep.phase.paganin_filter",),
    ),
)
