"""Total-variation denoising of reconstructed slices: ROF (explicit) and primal-dual.

Both minimise, slice by slice, ``TV(u) + 1/(2λ) ‖u − f‖²`` (``λ`` =
``regularisation_parameter``, larger is smoother), the models of the CCPi regularisation
toolkit that HTTomo calls as ``httomolibgpu.misc.denoise.total_variation_ROF`` and
``total_variation_PD`` (ToMoBAR's ``regularisersCuPy``), with the same parameters and step
rules:

* **ROF** (Rudin, Osher, Fatemi 1992): explicit time marching on the smoothed TV flow,
  ``u ← u + τ (λ div(∇u / |∇u|_ε) − (u − f))``, ``τ`` = ``time_marching_parameter``,
  one-sided differences with CCPi's minmod denominators and mirrored (Neumann) borders,
  ``ε = 1e-8``. Small ``τ``, many iterations.
* **PD** (Chambolle & Pock 2011): the dual ascent ``p ← Π(p + σ ∇ū)`` (``Π`` the
  projection on the unit ball, per pixel for isotropic TV, per component for
  anisotropic), the primal step ``u ← (u + τ div p + (τ/λ) f) / (1 + τ/λ)``, optional
  clamp at 0, over-relaxation ``ū = 2u − u_old``; ``τ = 0.1 λ`` and ``σ = 1/(L τ)`` with
  ``L`` = ``lipschitz_const`` (``‖∇‖² ≤ 8`` in 2-D, so ``L ≥ 8`` converges).

Blocks are ``(rows, N, N)`` slices (the output of a reconstruction, which the pipeline
passes on in the sinogram section's row-major layout); each slice is denoised on its own
(2-D TV), so the result does not depend on how rows are split into bands or ranks.
HTTomo's versions are 3-D (they also smooth across slices): same model, one more
difference direction. ``half_precision`` is accepted for HTTomo pipelines and changes
nothing here (float32 throughout).

The arithmetic uses the block's array module (numpy or cupy) only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

from stages.backends.xp import array_module
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError

__all__ = [
    "SPECS",
    "TvPdParams",
    "TvRofParams",
    "pd_tv",
    "rof_tv",
    "total_variation_pd",
    "total_variation_rof",
]

_EPS = 1e-8


class TvRofParams(StageParams):
    """Parameters of :func:`total_variation_rof` (HTTomo's names and defaults)."""

    regularisation_parameter: float = Field(
        1e-5, gt=0.0, allow_inf_nan=False, description="λ: larger is smoother"
    )
    iterations: int = Field(3000, ge=1, description="explicit time steps")
    time_marching_parameter: float = Field(
        0.001, gt=0.0, le=0.25, description="τ, the time step (small: stable)"
    )
    half_precision: bool = Field(False, description="accepted for HTTomo; float32 here")


class TvPdParams(StageParams):
    """Parameters of :func:`total_variation_pd` (HTTomo's names and defaults)."""

    regularisation_parameter: float = Field(
        1e-5, gt=0.0, allow_inf_nan=False, description="λ: larger is smoother"
    )
    iterations: int = Field(1000, ge=1, description="primal-dual iterations")
    isotropic: bool = Field(True, description="isotropic TV (False: anisotropic)")
    nonnegativity: bool = Field(False, description="clamp the slices at 0 each iteration")
    lipschitz_const: float = Field(
        8.0, ge=8.0, allow_inf_nan=False, description="L in σ = 1/(Lτ); >= 8 converges in 2-D"
    )
    half_precision: bool = Field(False, description="accepted for HTTomo; float32 here")


def _slices(block: Any, stage: str) -> Any:
    xp = array_module(block)
    if block.ndim != 3 or block.dtype.kind not in "uif" or 0 in block.shape:
        raise StageError(
            f"stage {stage!r}: block: expected a non-empty real 3-D block of slices "
            f"(rows, N, N), got shape {block.shape} of {block.dtype.name!r}"
        )
    return xp.ascontiguousarray(block, dtype=xp.float32)


def _mirror(n: int, step: int, xp: Any) -> Any:
    """Neighbour index ``i + step`` with mirrored borders (CCPi's ``i1``/``i2``)."""
    index = np.arange(n) + step
    index[index < 0] = 1 if n > 1 else 0
    index[index > n - 1] = n - 2 if n > 1 else 0
    return xp.asarray(index)


def _minmod_squared(a: Any, b: Any, xp: Any) -> Any:
    value = 0.5 * (xp.sign(a) + xp.sign(b)) * xp.minimum(xp.abs(a), xp.abs(b))
    return value * value


def rof_tv(
    image: Any, regularisation_parameter: float, iterations: int, time_step: float
) -> Any:
    """ROF-TV by explicit time marching (CCPi's scheme) on ``(rows, N, M)`` float32 slices."""
    xp = array_module(image)
    rows_next, rows_prev = _mirror(image.shape[-2], 1, xp), _mirror(image.shape[-2], -1, xp)
    cols_next, cols_prev = _mirror(image.shape[-1], 1, xp), _mirror(image.shape[-1], -1, xp)
    lam, tau = np.float32(regularisation_parameter), np.float32(time_step)
    u = image.copy()
    for _ in range(iterations):
        a1 = xp.take(u, rows_next, axis=-2) - u  # forward difference along rows
        a0 = u - xp.take(u, rows_prev, axis=-2)
        b1 = xp.take(u, cols_next, axis=-1) - u  # along columns
        b0 = u - xp.take(u, cols_prev, axis=-1)
        d1 = a1 / xp.sqrt(a1 * a1 + _minmod_squared(b0, b1, xp) + _EPS)
        d2 = b1 / xp.sqrt(_minmod_squared(a0, a1, xp) + b1 * b1 + _EPS)
        divergence = d1 - xp.take(d1, rows_prev, axis=-2)
        divergence += d2 - xp.take(d2, cols_prev, axis=-1)
        u += tau * (lam * divergence - (u - image))
    return u


def pd_tv(
    image: Any,
    regularisation_parameter: float,
    iterations: int,
    *,
    isotropic: bool = True,
    nonnegativity: bool = False,
    lipschitz_const: float = 8.0,
) -> Any:
    """Primal-dual TV (Chambolle-Pock, CCPi's steps) on ``(rows, N, M)`` float32 slices.

    Forward differences with Neumann borders (the last difference is 0) and their exact
    negative transpose as divergence; every buffer is allocated once (9 images).
    """
    xp = array_module(image)
    tau = np.float32(0.1 * regularisation_parameter)
    sigma = np.float32(1.0 / (lipschitz_const * float(tau)))
    lt = np.float32(float(tau) / regularisation_parameter)
    shrink = np.float32(1.0 / (1.0 + float(lt)))
    data_term = image * lt
    u = image.copy()
    u_bar = image.copy()
    py, px = xp.zeros_like(image), xp.zeros_like(image)
    gy, gx = xp.zeros_like(image), xp.zeros_like(image)  # last row / column stay 0
    work, spare = xp.empty_like(image), xp.empty_like(image)
    for _ in range(iterations):
        xp.subtract(u_bar[..., 1:, :], u_bar[..., :-1, :], out=gy[..., :-1, :])
        xp.subtract(u_bar[..., :, 1:], u_bar[..., :, :-1], out=gx[..., :, :-1])
        gy *= sigma
        gx *= sigma
        py += gy
        px += gx
        if isotropic:
            xp.multiply(py, py, out=work)
            xp.multiply(px, px, out=spare)
            work += spare
            xp.sqrt(work, out=work)
            xp.maximum(work, np.float32(1.0), out=work)
            py /= work
            px /= work
        else:
            xp.clip(py, -1.0, 1.0, out=py)
            xp.clip(px, -1.0, 1.0, out=px)
        # work = div p = −∇ᵀp
        work[..., :-1, :] = py[..., :-1, :]
        work[..., -1, :] = 0.0
        work[..., 1:, :] -= py[..., :-1, :]
        work[..., :, :-1] += px[..., :, :-1]
        work[..., :, 1:] -= px[..., :, :-1]
        # u_new = (u + τ div p + (τ/λ) f) / (1 + τ/λ), into work; ū = 2 u_new − u
        work *= tau
        work += u
        work += data_term
        work *= shrink
        if nonnegativity:
            xp.maximum(work, np.float32(0.0), out=work)
        xp.multiply(work, np.float32(2.0), out=u_bar)
        u_bar -= u
        u, work = work, u
    return u


def total_variation_rof(
    block: npt.NDArray[Any],
    *,
    regularisation_parameter: float = 1e-5,
    iterations: int = 3000,
    time_marching_parameter: float = 0.001,
    half_precision: bool = False,
) -> npt.NDArray[np.float32]:
    """Denoise each slice of ``(rows, N, M)`` by ROF-TV (see the module docstring)."""
    slices = _slices(block, "total_variation_rof")
    result: npt.NDArray[np.float32] = rof_tv(
        slices, regularisation_parameter, iterations, time_marching_parameter
    )
    return result


def total_variation_pd(
    block: npt.NDArray[Any],
    *,
    regularisation_parameter: float = 1e-5,
    iterations: int = 1000,
    isotropic: bool = True,
    nonnegativity: bool = False,
    lipschitz_const: float = 8.0,
    half_precision: bool = False,
) -> npt.NDArray[np.float32]:
    """Denoise each slice of ``(rows, N, M)`` by primal-dual TV (see the module docstring)."""
    slices = _slices(block, "total_variation_pd")
    result: npt.NDArray[np.float32] = pd_tv(
        slices, regularisation_parameter, iterations, isotropic=isotropic,
        nonnegativity=nonnegativity, lipschitz_const=lipschitz_const,
    )
    return result


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="total_variation_rof",
        angle_local=False,  # whole slices
        fn=total_variation_rof,
        pattern=Pattern.SINOGRAM,
        params=TvRofParams,
        memory=scaled_memory(9.0),
        device=True,
        summary="ROF total-variation denoising of reconstructed slices (explicit time "
        "marching, CCPi's scheme), slice by slice",
        aliases=("httomolibgpu.misc.denoise.total_variation_ROF",),
    ),
    StageSpec(
        name="total_variation_pd",
        angle_local=False,  # whole slices
        fn=total_variation_pd,
        pattern=Pattern.SINOGRAM,
        params=TvPdParams,
        memory=scaled_memory(10.0),
        device=True,
        summary="primal-dual (Chambolle-Pock) total-variation denoising of reconstructed "
        "slices, slice by slice",
        aliases=("httomolibgpu.misc.denoise.total_variation_PD",),
    ),
)
