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
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field
from scipy import fft

from stages.spec import Pattern, StageParams, StageSpec
from streamer.errors import StageError

#: reduced Planck constant ħ in keV·s and the speed of light in cm/s (TomoPy's values)
HBAR_KEV_S = 6.58211928e-19
SPEED_OF_LIGHT_CM_S = 2.99792458e10

#: scratch budget for the frames filtered together (float64 frames + complex spectrum)
_SCRATCH_BYTES = 1 << 28
_BYTES_PER_PADDED_PIXEL = 8 + 16


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
    transfer = paganin_transfer((rows + 2 * p_r, cols + 2 * p_c), pixel_size, dist, energy, alpha)
    out = np.empty(block.shape, dtype=np.float32)
    chunk = _frames_per_chunk(transfer.size, n_frames)
    for start in range(0, n_frames, chunk):
        frames = np.asarray(block[start : start + chunk], dtype=np.float64)
        padded = np.pad(frames, ((0, 0), (p_r, p_r), (p_c, p_c)), mode="edge")
        spectrum = fft.fft2(padded, axes=(-2, -1), workers=-1)
        spectrum *= transfer
        filtered = fft.ifft2(spectrum, axes=(-2, -1), overwrite_x=True, workers=-1).real
        out[start : start + chunk] = filtered[:, p_r : p_r + rows, p_c : p_c + cols]
    return out


def _paganin_memory(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
    """Input + float32 output, plus the scratch of one chunk of padded frames: float64
    padded frames (8 B), their complex128 spectrum (16 B) and the float64 filter."""
    _, rows, cols = shape
    pad = bool(getattr(params, "pad", True))
    args = (
        float(getattr(params, "pixel_size", 1e-4)),
        float(getattr(params, "dist", 50.0)),
        float(getattr(params, "energy", 20.0)),
    )
    n_r = rows + 2 * pad_width(rows, *args) if pad else rows
    n_c = cols + 2 * pad_width(cols, *args) if pad else cols
    block_bytes = int(np.prod(shape)) * max(4, np.dtype(dtype).itemsize)
    chunk = _frames_per_chunk(n_r * n_c, shape[0])
    scratch = chunk * n_r * n_c * _BYTES_PER_PADDED_PIXEL + n_r * n_c * 8
    return 2 * block_bytes + scratch


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="paganin",
        fn=paganin,
        pattern=Pattern.PROJECTION,
        params=PaganinParams,
        memory=_paganin_memory,
        summary="Paganin single-distance phase retrieval, TomoPy's filter and units (cm, keV)",
        aliases=("tomopy.prep.phase.retrieve_phase",),
    ),
)
