"""HTTomo's reconstruction methods on our CPU reconstructors, parameters honoured.

Each method keeps its upstream parameter names and defaults; its filter is applied as a
window ``W(f)`` on our ramp (``f`` in cycles/pixel, ``0 … 1/2``), by filtering the
sinograms with ``W`` first (edge-padded like our FBP), then running our reconstructor with
the bare ramp: filtering is linear and shift-invariant, so this is the product filter.

* ``FBP3d_tomobar`` (httomolibgpu → ToMoBAR's ``FBP3D``): ToMoBAR's SINC filter is
  ``|2/a · sin(a ω/2)|`` for ``ω = 2π f`` with ``a = filter_freq_cutoff``
  (``generate_filtersync.cu``), i.e. the ramp ``|ω|`` times ``W(f) = |sinc(a f)|``.
  Back-projection: :func:`stages.recon.fbp.fbp`.
* ``FBP2d_astra`` (ASTRA's ``FBP_CUDA``): ``filter_type`` ``ram-lak``, ``shepp-logan``,
  ``cosine``, ``hamming``, ``hann`` map onto our windows; ASTRA's other filters and
  ``filter_parameter``/``filter_d`` are refused by name.
* ``LPRec3d_tomobar`` (log-polar Fourier inversion): its windows (ToMoBAR
  ``calc_filter``, ``d = 0.5``: ``shepp`` ``sinc(f)``, ``cosine`` ``cos(π f)``,
  ``cosine2`` ``cos²(π f)``, ``hamming`` ``0.54 + 0.46 cos(2π f)``, ``hann``
  ``(1 + cos(2π f))/2``, ``parzen`` ``(1 - 2f)³``, ``ramp`` 1) and ``filter_freq_cutoff``
  (a gain in ToMoBAR: ``n · cutoff · …``) on our Fourier-domain reconstructor
  :func:`stages.recon.fourier.fourier_fbp`.
* tomopy ``recon``: ``algorithm`` ``gridrec`` → ``fourier_fbp``, ``fbp`` → ``fbp``, with
  tomopy's default ``shepp`` window; the iterative algorithms wait for the model-based
  reconstruction stages; ``sinogram_order`` must be false and ``init_recon`` null.

Common parameters: ``center`` (None: ``(cols - 1)/2``; a ``${{…cor}}`` reference leaves
it for the pipeline's CoR finder), ``recon_size`` (edge of the square slice; None: the
detector width), ``recon_mask_radius`` (voxels outside ``radius · N/2`` from the centre
set to 0; ``>= 2`` or None: no mask), ``detector_pad`` (accepted: our reconstructors
always pad the detector with edge values to ``>= 2·cols`` before filtering, which is
what ``detector_pad: true`` is for). Output units are ours (attenuation per pixel, the
slice orientation of docs/explanation/conventions.md), not ToMoBAR's scaling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from stages.backends.xp import array_module, fft_module
from stages.recon.fbp import fbp, padded_length
from stages.recon.fourier import fourier_fbp
from stages.spec import MemoryEstimate, Pattern, StageParams, StageSpec
from streamer.errors import StageError

__all__ = ["SPECS", "mask_outside", "window_filtered"]

Window = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]


def window_filtered(block: npt.NDArray[Any], window: Window, gain: float = 1.0
                    ) -> npt.NDArray[np.float32]:
    """Sinograms ``(rows, angles, cols)`` filtered by ``gain · window(f)`` along the
    detector, edge-padded to our FBP's padded length and cropped back; in the namespace
    of ``block`` (the window is computed on the host and uploaded)."""
    xp = array_module(block)
    fft = fft_module(xp)
    data = xp.ascontiguousarray(block, dtype=xp.float32)
    cols = data.shape[2]
    length = padded_length(cols)
    left = (length - cols) // 2
    padded = xp.pad(data, ((0, 0), (0, 0), (left, length - cols - left)), mode="edge")
    response = gain * window(np.fft.rfftfreq(length).astype(np.float64))
    spectrum = fft.rfft(padded, axis=2) * xp.asarray(response.astype(np.complex64))
    out = fft.irfft(spectrum, n=length, axis=2)[:, :, left:left + cols]
    result: npt.NDArray[np.float32] = xp.ascontiguousarray(out, dtype=xp.float32)
    return result


def mask_outside(slices: npt.NDArray[np.float32], radius: float | None
                 ) -> npt.NDArray[np.float32]:
    """Zero voxels farther than ``radius · N/2`` from the slice centre (ToMoBAR's
    ``recon_mask_radius``; ``None`` or ``>= 2``: unchanged)."""
    if radius is None or radius >= 2.0:
        return slices
    size = slices.shape[-1]
    axis = np.arange(size) - (size - 1) / 2
    outside = np.hypot(*np.meshgrid(axis, axis)) > radius * size / 2
    slices[:, array_module(slices).asarray(outside)] = 0.0  # the mask goes where the data are
    return slices


def _check_size(stage: str, recon_size: int | None, cols: int) -> int:
    size = cols if recon_size is None else int(recon_size)
    if size < 1:
        raise StageError(f"stage {stage!r}: recon_size: expected >= 1, got {recon_size}")
    return size


class _Common(StageParams):
    center: float | None = Field(default=None, allow_inf_nan=False)
    detector_pad: bool | int = False
    recon_size: int | None = Field(default=None, ge=1)
    recon_mask_radius: float | None = Field(default=0.95, gt=0)


# --------------------------------------------------------------------- FBP3d_tomobar


class Fbp3dTomobarParams(_Common):
    """httomolibgpu's ``FBP3d_tomobar``."""

    filter_freq_cutoff: float = Field(default=0.35, gt=0, le=2)


def tomobar_sinc_window(cutoff: float) -> Window:
    """ToMoBAR's FBP3D SINC filter divided by the ramp: ``|sinc(cutoff · f)|``."""
    return lambda f: np.abs(np.sinc(cutoff * f))


def fbp3d_tomobar(block: npt.NDArray[Any], *, angles_deg: npt.NDArray[np.float64],
                  center: float | None = None, detector_pad: bool | int = False,
                  filter_freq_cutoff: float = 0.35, recon_size: int | None = None,
                  recon_mask_radius: float | None = 0.95) -> npt.NDArray[np.float32]:
    """``FBP3d_tomobar`` on :func:`~stages.recon.fbp.fbp` (see the module notes)."""
    size = _check_size("FBP3d_tomobar", recon_size, block.shape[2])
    filtered = window_filtered(block, tomobar_sinc_window(filter_freq_cutoff))
    slices = fbp(filtered, angles_deg=angles_deg, center=center, filter_name="ramlak",
                 pad=True, output_size=size)
    return mask_outside(slices, recon_mask_radius)


# ----------------------------------------------------------------------- FBP2d_astra

AstraFilter = Literal["ram-lak", "shepp-logan", "cosine", "hamming", "hann"]
_ASTRA_TO_OURS: Mapping[str, str] = MappingProxyType({
    "ram-lak": "ramlak", "shepp-logan": "shepp", "cosine": "cosine", "hamming": "hamming",
    "hann": "hann"})


class Fbp2dAstraParams(_Common):
    """httomolibgpu's ``FBP2d_astra`` (the ASTRA filters we have; no filter parameters)."""

    filter_type: AstraFilter = "ram-lak"
    filter_parameter: None = None
    filter_d: None = None


def fbp2d_astra(block: npt.NDArray[Any], *, angles_deg: npt.NDArray[np.float64],
                center: float | None = None, detector_pad: bool | int = False,
                filter_type: str = "ram-lak", filter_parameter: None = None,
                filter_d: None = None, recon_size: int | None = None,
                recon_mask_radius: float | None = 0.95) -> npt.NDArray[np.float32]:
    """``FBP2d_astra`` on :func:`~stages.recon.fbp.fbp` with the matching window."""
    if filter_type not in _ASTRA_TO_OURS:
        raise StageError(f"stage 'FBP2d_astra': filter_type: expected one of "
                         f"{'|'.join(_ASTRA_TO_OURS)}, got {filter_type!r}")
    size = _check_size("FBP2d_astra", recon_size, block.shape[2])
    slices = fbp(block, angles_deg=angles_deg, center=center,
                 filter_name=_ASTRA_TO_OURS[filter_type],  # type: ignore[arg-type]
                 pad=True, output_size=size)
    return mask_outside(slices, recon_mask_radius)


# ------------------------------------------------------------------- LPRec3d_tomobar

LprecFilter = Literal["ramp", "shepp", "cosine", "cosine2", "hamming", "hann", "parzen"]
_LPREC_WINDOWS: Mapping[str, Window] = MappingProxyType({
    "ramp": np.ones_like,
    "shepp": np.sinc,
    "cosine": lambda f: np.cos(np.pi * f),
    "cosine2": lambda f: np.cos(np.pi * f) ** 2,
    "hamming": lambda f: 0.54 + 0.46 * np.cos(2 * np.pi * f),
    "hann": lambda f: (1 + np.cos(2 * np.pi * f)) / 2,
    "parzen": lambda f: (1 - 2 * f) ** 3,
})


class LprecParams(_Common):
    """httomolibgpu's ``LPRec3d_tomobar`` (its memory/oversampling switches accepted)."""

    filter_type: LprecFilter = "shepp"
    filter_freq_cutoff: float = Field(default=1.0, gt=0)
    power_of_2_oversampling: bool = True
    power_of_2_cropping: bool = False
    min_mem_usage_filter: bool = True
    min_mem_usage_ifft2: bool = True


def lprec3d_tomobar(block: npt.NDArray[Any], *, angles_deg: npt.NDArray[np.float64],
                    center: float | None = None, detector_pad: bool | int = False,
                    filter_type: str = "shepp", filter_freq_cutoff: float = 1.0,
                    recon_size: int | None = None, recon_mask_radius: float | None = 0.95,
                    **switches: bool) -> npt.NDArray[np.float32]:
    """``LPRec3d_tomobar`` on :func:`~stages.recon.fourier.fourier_fbp`: ToMoBAR's window
    and gain (module notes); the GPU memory switches change nothing here."""
    if filter_type not in _LPREC_WINDOWS:
        raise StageError(f"stage 'LPRec3d_tomobar': filter_type: expected one of "
                         f"{'|'.join(_LPREC_WINDOWS)}, got {filter_type!r}")
    size = _check_size("LPRec3d_tomobar", recon_size, block.shape[2])
    filtered = window_filtered(block, _LPREC_WINDOWS[filter_type], gain=filter_freq_cutoff)
    slices = fourier_fbp(filtered, angles_deg=angles_deg, center=center,
                         filter_name="ramlak", pad=True, output_size=size)
    return mask_outside(slices, recon_mask_radius)


# ------------------------------------------------------------------------ tomopy recon


class TomopyReconParams(StageParams):
    """tomopy's ``recon`` as HTTomo's template has it."""

    center: float | None = Field(default=None, allow_inf_nan=False)
    sinogram_order: Literal[False] = False
    algorithm: Literal["gridrec", "fbp"] = "gridrec"
    init_recon: None = None


def tomopy_recon(block: npt.NDArray[Any], *, angles_deg: npt.NDArray[np.float64],
                 center: float | None = None, sinogram_order: bool = False,
                 algorithm: str = "gridrec", init_recon: None = None
                 ) -> npt.NDArray[np.float32]:
    """tomopy ``recon``: gridrec → our Fourier-domain FBP, fbp → our FBP, both with
    tomopy's default ``shepp`` window."""
    if algorithm == "gridrec":
        return fourier_fbp(block, angles_deg=angles_deg, center=center, filter_name="shepp")
    if algorithm == "fbp":
        return fbp(block, angles_deg=angles_deg, center=center, filter_name="shepp")
    raise StageError(f"stage 'recon': algorithm: expected gridrec|fbp, got {algorithm!r}")


def _recon_memory(multiplier: float) -> MemoryEstimate:
    """Like our FBP's estimate: input, padded spectra and an ``N²`` output per row."""

    def estimate(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
        rows, angles, cols = shape
        size = getattr(params, "recon_size", None) or cols
        length = padded_length(cols)
        return int(multiplier * rows * (angles * length + size * size) * 4)

    return estimate


def _spec(name: str, fn: Callable[..., npt.NDArray[np.float32]], params: type[StageParams],
          summary: str, alias: str, *, device: bool = False) -> StageSpec:
    """``device``: the method maps onto a device-ready reconstructor (``fbp``,
    ``fourier_fbp``) with device-ready filtering and masking, so it runs on a CuPy block
    as it is."""
    return StageSpec(name=name, fn=fn, pattern=Pattern.SINOGRAM, params=params,
                     memory=_recon_memory(6), summary=summary, needs_angles=True,
                     aliases=(alias,), device=device)


SPECS: tuple[StageSpec, ...] = (
    _spec("FBP3d_tomobar", fbp3d_tomobar, Fbp3dTomobarParams,
          "ToMoBAR's FBP3D (SINC-windowed ramp, filter_freq_cutoff) on our FBP",
          "httomolibgpu.recon.algorithm.FBP3d_tomobar", device=True),
    _spec("FBP2d_astra", fbp2d_astra, Fbp2dAstraParams,
          "ASTRA's FBP with its ram-lak/shepp-logan/cosine/hamming/hann filters on our FBP",
          "httomolibgpu.recon.algorithm.FBP2d_astra", device=True),
    _spec("LPRec3d_tomobar", lprec3d_tomobar, LprecParams,
          "ToMoBAR's log-polar Fourier inversion windows on our Fourier-domain FBP",
          "httomolibgpu.recon.algorithm.LPRec3d_tomobar", device=True),
    _spec("tomopy_recon", tomopy_recon, TomopyReconParams,
          "tomopy recon: gridrec (Fourier-domain FBP) or fbp, shepp window",
          "tomopy.recon.algorithm.recon", device=True),
)
