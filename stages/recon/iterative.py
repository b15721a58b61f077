"""Model-based reconstruction of sinogram bands: SIRT, CGLS, FISTA-TV, ADMM-TV and OSEM.

The first four solve, per slice, a least-squares problem ``min ½‖A x − b‖² (+ TV)`` with
the NUFFT projector pair of :mod:`stages.recon.projector` (one ``A`` plus one ``Aᵀ`` costs
about two Fourier FBPs), following ToMoBAR's algorithms, which HTTomo runs as
``httomolibgpu.recon.algorithm.SIRT3d_tomobar``, ``CGLS3d_tomobar``, ``FISTA3d_tomobar``,
``ADMM3d_tomobar`` and ``OSEM3d_tomobar`` (their names and parameters are accepted):

* **SIRT**: ``x ← x + C Aᵀ R (b − A x)``, ``R = 1/A1``, ``C = 1/Aᵀ1`` (0 where the
  denominators vanish: rays missing the slice), clamped at 0 with ``nonnegativity``.
* **CGLS**: conjugate gradients on the normal equations, per slice (each slice has its
  own step lengths, so a band gives the same slices as one row at a time). With
  ``nonnegativity`` the result is clamped at the end only: clamping inside the loop, as
  ToMoBAR does, breaks the conjugacy of the directions.
* **FISTA** (Beck & Teboulle 2009) with ordered subsets: per subset of angles (every
  ``S``-th angle), ``x ← prox(y − Aₛᵀ(Aₛ y − bₛ)/L)``, the TV proximal step being
  :func:`stages.misc.denoise.pd_tv` (``PD_TV``) or :func:`~stages.misc.denoise.rof_tv`
  (``ROF_TV``) with ``λ = regularisation_parameter`` as ToMoBAR passes it (so the
  objective is ``½‖Ax−b‖² + λ L TV(x)``), then the momentum step; ``L`` is ``‖Aₛ‖²`` by
  power iteration.
* **ADMM** (ToMoBAR's linearised, relaxed variant): a gradient step on
  ``½‖Aₛz − bₛ‖² + ρ/2 ‖z − x + u‖²`` with step ``0.9/(L + ρ)``, relaxation, the TV
  proximal step with ``λ/ρ`` for ``x``, and the dual update, from an FBP or CGLS start.
* **OSEM** (Hudson & Larkin 1994; MLEM with one subset): the Poisson maximum-likelihood
  update ``x ← x · Aₛᵀ(bₛ / Aₛ x) / Aₛᵀ1`` per subset, which needs ``A ≥ 0``: it uses the
  pixel-driven pair of :mod:`stages.recon.pixel_projector` (the NUFFT model rings). The
  start is the constant image whose projections hold the data's total; negative data
  (noise after −log) count as 0. With a regulariser, the TV proximal step follows each
  iteration with ``λ τ``, ``τ`` the slice's mean EM step ``x / Aᵀ1`` over the pixels the
  rays see (our scaling: a forward-backward step on ``KL(b, Ax) + λ TV(x)``; ToMoBAR's own
  scaling was not available to check).

Common parameters: ``center`` (0-based detector column), ``recon_size`` (edge ``N``),
``detector_pad`` (edge-value padding of ``True``: HTTomo's automatic width, or an
integer: that many columns each side; the slices are then solved on a grid that covers
the padded detector and cropped), ``recon_mask_radius`` (voxels outside
``radius · N/2`` set to 0 at the end, as ToMoBAR; 2.0: no mask) and ``initialisation``.

Each slice is solved on its own and no step depends on other rows, so bands on 1..R ranks
give the same volume (bit-identical with the same thread count; with another, finufft's
threaded spreading rounds differently and CGLS may amplify it to ~0.5 % in its middle
iterations, see the explanation page). Progress: ``on_iteration`` gets a
:class:`stages.spec.Iteration` after each iteration, with the relative residual
``‖A x − b‖/‖b‖`` (SIRT, CGLS: free, they hold ``b − A x``) or the relative update
``‖Δx‖/‖x‖`` (FISTA, ADMM); a pipeline run passes one per band (the stages declare
``reports_progress``). The arithmetic uses the band's array module, so cupy with
cufinufft runs the same code (not tested here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from stages.backends.xp import array_module
from stages.checks import sinogram_inputs
from stages.misc.denoise import pd_tv, rof_tv
from stages.misc.geometry import circle_inside
from stages.recon.fourier import fourier_fbp
from stages.recon.pixel_projector import (
    ANGLE_BYTES_PER_PIXEL,
    CHUNK_ENTRIES,
    MATRIX_ENTRIES,
    PixelMatrixCache,
    PixelProjector,
)
from stages.recon.projector import Projector, window_geometry
from stages.spec import Iteration, IterationCallback, Pattern, StageParams, StageSpec
from streamer.errors import StageError

__all__ = [
    "SPECS",
    "AdmmParams",
    "CglsParams",
    "FistaParams",
    "OsemParams",
    "SirtParams",
    "admm",
    "cgls",
    "fista",
    "lipschitz",
    "osem",
    "sirt",
]

#: ``on_iteration(Iteration)``: its ``iterate`` is the working ``(rows, n, n)`` float32
#: slices (before the final clamp, crop and mask), to read, not to modify.
Progress = IterationCallback
Regulariser = Literal["PD_TV", "ROF_TV"]
Start = Literal["FBP", "CGLS"]
#: Power iterations for ``‖A‖²`` (from the constant image, the top eigenvector's
#: neighbour: converges to ~0.1 % in a few steps) and the safety factor on the result.
_POWER_STEPS, _POWER_SAFETY = 8, 1.05
#: Time step of the ROF proximal step inside FISTA/ADMM (ToMoBAR's default).
_ROF_STEP = 0.005
#: Detector values of ``A 1`` below this fraction of its maximum are rays that miss the
#: slice: SIRT gives them no weight.
_SIRT_FLOOR = 1e-3
#: PD-TV's Lipschitz constant inside FISTA/ADMM (2-D: ``‖∇‖² ≤ 8``).
_PD_LIPSCHITZ = 8.0
#: CGLS iterations of the ``initialisation="CGLS"`` start (ToMoBAR's ADMM uses 15).
_CGLS_START = 15


class IterativeParams(StageParams):
    """Parameters every iterative method takes (HTTomo's names)."""

    center: float | None = Field(
        None, allow_inf_nan=False, description="rotation axis, 0-based detector column; "
        "None: (cols-1)/2"
    )
    detector_pad: bool | int = Field(
        False, description="edge-pad the detector: True (HTTomo's width) or columns per side"
    )
    recon_size: int | None = Field(None, ge=1, description="edge N of the slices; None: cols")
    recon_mask_radius: float = Field(
        0.95, gt=0.0, allow_inf_nan=False,
        description="zero voxels outside radius·N/2 at the end (2.0: no mask)",
    )
    nonnegativity: bool = Field(True, description="clamp the slices at 0")
    eps: float = Field(1e-3, ge=1e-4, le=1e-1, description="tolerance of the NUFFT projector")
    threads: int | None = Field(None, ge=1, description="threads; None: the CPUs allowed")


class SirtParams(IterativeParams):
    """Parameters of :func:`sirt`."""

    iterations: int = Field(300, ge=1, description="SIRT iterations")
    initialisation: Start | None = Field(None, description="start: None (zeros), FBP or CGLS")


class CglsParams(IterativeParams):
    """Parameters of :func:`cgls`."""

    iterations: int = Field(20, ge=1, description="CGLS iterations")


class RegularisedParams(IterativeParams):
    """Parameters of the TV-regularised methods (FISTA, ADMM)."""

    subsets_number: int = Field(6, ge=1, description="ordered subsets of angles")
    regularisation_type: Regulariser | None = Field(
        "PD_TV", description="TV proximal step: PD_TV, ROF_TV or None (no regularisation)"
    )
    regularisation_parameter: float = Field(
        1e-6, ge=0.0, allow_inf_nan=False, description="λ of the TV proximal step"
    )
    regularisation_iterations: int = Field(50, ge=1, description="inner TV iterations")
    regularisation_half_precision: bool = Field(
        True, description="accepted for HTTomo; float32 here"
    )
    data_fidelity: Literal["LS"] = Field(
        "LS", description="data term: LS (least squares, httomolibgpu's default) only; "
        "ToMoBAR's PWLS/SWLS/KL need raw counts, which a sinogram section does not have"
    )


class FistaParams(RegularisedParams):
    """Parameters of :func:`fista`."""

    iterations: int = Field(20, ge=1, description="FISTA iterations (each over all subsets)")
    initialisation: Start | None = Field(None, description="start: None (zeros), FBP or CGLS")


class AdmmParams(RegularisedParams):
    """Parameters of :func:`admm` (HTTomo's defaults)."""

    iterations: int = Field(3, ge=1, description="ADMM iterations (each over all subsets)")
    subsets_number: int = Field(24, ge=1, description="ordered subsets of angles")
    initialisation: Start | None = Field("FBP", description="start: FBP, CGLS or None")
    ADMM_rho_const: float = Field(1.0, gt=0.0, allow_inf_nan=False, description="ρ")
    ADMM_relax_par: float = Field(1.7, gt=0.0, lt=2.0, description="relaxation (1.5-1.8)")
    regularisation_parameter: float = Field(
        0.0025, ge=0.0, allow_inf_nan=False, description="λ of the TV proximal step"
    )
    regularisation_iterations: int = Field(40, ge=1, description="inner TV iterations")
    nonnegativity: bool = Field(False, description="clamp the slices at 0")


class OsemParams(IterativeParams):
    """Parameters of :func:`osem` (the httomo-backends template's names and defaults)."""

    iterations: int = Field(20, ge=1, description="OSEM iterations (each over all subsets)")
    subsets_number: int = Field(12, ge=1, description="ordered subsets of angles (1: MLEM)")
    regularisation_type: Regulariser | None = Field(
        "PD_TV", description="TV proximal step after each iteration: PD_TV, ROF_TV or None"
    )
    regularisation_parameter: float = Field(
        1.0, ge=0.0, allow_inf_nan=False,
        description="λ, times the mean EM step (0: plain OSEM)",
    )
    regularisation_iterations: int = Field(30, ge=1, description="inner TV iterations")
    regularisation_half_precision: bool = Field(
        True, description="accepted for HTTomo; float32 here"
    )


#: The projector models: the NUFFT pair (least squares) and the non-negative pixel pair.
Model = Literal["nufft", "pixel"]


class _Problem:
    """One band's problem: padded data, the projector(s), the output crop."""

    def __init__(self, stage: str, block: Any, angles_deg: Any, params: dict[str, Any],
                 subsets: int = 1, *, model: Model = "nufft",
                 cache: PixelMatrixCache | None = None) -> None:
        sino, angles = sinogram_inputs(stage, block, angles_deg, params.get("center"),
                                       params.get("recon_size"))
        rows, n_angles, cols = sino.shape
        self.xp = xp = array_module(sino)
        pad = _pad_width(stage, params.get("detector_pad", False), cols)
        center = (cols - 1) / 2 if params.get("center") is None else float(params["center"])
        size = cols if params.get("recon_size") is None else int(params["recon_size"])
        if pad:
            sino = xp.pad(sino, ((0, 0), (0, 0), (pad, pad)), mode="edge")
        self.stage, self.size, self.angles = stage, size, angles
        self.center, self.cols = center + pad, cols + 2 * pad
        self.work = max(size, self.cols) if pad else size  # grid covering the padding
        if subsets < 1 or subsets > n_angles:
            raise StageError(
                f"stage {stage!r}: subsets_number: expected 1 … {n_angles} (the angles), "
                f"got {subsets}"
            )
        self.eps, self.threads = float(params["eps"]), params.get("threads")
        self.mask_radius = float(params["recon_mask_radius"])
        self.nonnegativity = bool(params["nonnegativity"])
        self.data = sino
        self.rows = rows
        self.model = model
        self.cache = cache
        # The pixel pair's matrices (all subsets together) or angle by angle without them.
        self.matrix_free = _pixel_matrix_free(n_angles, self.work)
        order = np.argsort(np.mod(angles, 180.0), kind="stable")
        self.subsets = [np.sort(order[s::subsets]) for s in range(subsets)]
        self._full: Projector | PixelProjector | None = None
        self.parts = (
            [self.full] if subsets == 1 else [self.projector(s) for s in self.subsets]
        )

    @property
    def full(self) -> Projector | PixelProjector:
        """The projector over all angles (made on first use: FISTA/ADMM with subsets need
        it only for a CGLS start)."""
        if self._full is None:
            self._full = self.projector(np.arange(self.angles.shape[0]))
        return self._full

    def projector(self, chosen: npt.NDArray[np.intp]) -> Projector | PixelProjector:
        if self.model == "pixel":
            return PixelProjector(self.angles[chosen], self.cols, self.work, self.center,
                                  self.rows, xp=self.xp, cache=self.cache,
                                  matrix_free=self.matrix_free)
        return Projector(self.angles[chosen], self.cols, self.work, self.center, self.rows,
                         eps=self.eps, threads=self.threads, xp=self.xp)

    def subset_data(self, index: int) -> Any:
        if len(self.parts) == 1:
            return self.data
        chosen = self.xp.asarray(self.subsets[index])
        return self.xp.ascontiguousarray(self.data[:, chosen, :])

    def start(self, initialisation: str | None) -> Any:
        """The first iterate: zeros, Fourier FBP of the data (computed on the host: a
        device band makes one round trip), or 15 CGLS iterations."""
        xp, shape = self.xp, (self.rows, self.work, self.work)
        if initialisation is None:
            return xp.zeros(shape, dtype=xp.float32)
        if initialisation == "FBP":
            host = self.data if xp is np else xp.asnumpy(self.data)
            return xp.asarray(fourier_fbp(host, angles_deg=self.angles, center=self.center,
                                          output_size=self.work, threads=self.threads))
        return _cgls_loop(self.full, self.data, xp.zeros(shape, dtype=xp.float32),
                          _CGLS_START, None)

    def finish(self, x: Any) -> npt.NDArray[np.float32]:
        """Clamp, crop the padded grid to ``recon_size`` and apply the circular mask; the
        slices stay in the band's module (numpy or cupy)."""
        xp = self.xp
        if self.nonnegativity:
            x = _clamp(x)
        if self.work != self.size:
            lo = (self.work - self.size) // 2
            x = x[:, lo : lo + self.size, lo : lo + self.size]
        out = xp.ascontiguousarray(x, dtype=xp.float32)
        if self.mask_radius < math.sqrt(2.0):
            outside = xp.asarray(~circle_inside(self.size, self.size, self.mask_radius))
            out[:, outside] = 0.0
        result: npt.NDArray[np.float32] = out
        return result


def _pixel_matrix_free(angles: int, work: int) -> bool:
    """Whether the pixel pair goes angle by angle: the matrices of all the angles would
    hold more than ``MATRIX_ENTRIES`` entries."""
    return 2 * angles * work * work > MATRIX_ENTRIES


def _pad_width(stage: str, detector_pad: bool | int, cols: int) -> int:
    """Columns of edge padding per side: HTTomo's estimate for ``True``."""
    if detector_pad is True:
        half = cols // 2
        exact = int(math.sqrt(2 * half**2)) - half
        return exact + exact // 2
    if detector_pad is False:
        return 0
    if int(detector_pad) < 0:
        raise StageError(
            f"stage {stage!r}: detector_pad: expected true, false or columns >= 0, "
            f"got {detector_pad}"
        )
    return int(detector_pad)


def _per_slice(values: Any) -> Any:
    """Sum of squares of each slice, float64 ``(rows,)`` in the band's module (rows of a
    band are independent problems)."""
    xp = array_module(values)
    flat = values.reshape(values.shape[0], -1).astype(xp.float64)
    return (flat * flat).sum(axis=1)


def _clamp(x: Any) -> Any:
    """``x`` clamped at 0, in place."""
    xp = array_module(x)
    xp.maximum(x, xp.float32(0.0), out=x)
    return x


def _divide(numerator: Any, denominator: Any, floor: float = 0.0) -> Any:
    """``numerator / denominator`` where ``denominator > floor``, else 0 (any module)."""
    xp = array_module(denominator)
    valid = denominator > floor
    safe = xp.where(valid, denominator, xp.ones_like(denominator))
    return xp.where(valid, numerator / safe, xp.zeros_like(safe))


def lipschitz(projector: Projector | PixelProjector) -> float:
    """``‖A‖²`` (the largest eigenvalue of ``AᵀA``) by power iteration from a constant
    image, times a 5 % margin; the same for every band of the same geometry."""
    xp = projector.xp
    x = xp.ones(projector.shape_image, dtype=xp.float32)
    value = 1.0
    for _ in range(_POWER_STEPS):
        y = projector.normal(x)
        value = math.sqrt(float(_per_slice(y).max()) / max(float(_per_slice(x).max()),
                                                           1e-30))
        x = y / np.float32(max(float(xp.abs(y).max()), 1e-30))
    return _POWER_SAFETY * value


def _norm(values: Any) -> float:
    """The 2-norm of a whole band, in float64 (a host float)."""
    flat = values.reshape(-1).astype(array_module(values).float64)
    return math.sqrt(float((flat * flat).sum()))


def _relative(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0


def _notify(on_iteration: Progress | None, done: int, total: int, iterate: Any, *,
            residual: Callable[[], float] | None = None,
            change: Callable[[], float] | None = None) -> None:
    """Tell ``on_iteration``; the measures are computed only then (each is a host sync
    on a device)."""
    if on_iteration is not None:
        on_iteration(Iteration(done, total, None if residual is None else residual(),
                               None if change is None else change(), iterate))


def _misfit(residual: Any, data_norm: float) -> Callable[[], float]:
    """``‖b − A x‖ / ‖b‖`` from the residual held, to compute when someone listens."""
    return lambda: _relative(_norm(residual), data_norm)


def _change(x: Any, previous: Any) -> Callable[[], float]:
    """``‖x − previous‖ / ‖x‖``, to compute when someone listens (a slice-sized pass)."""
    return lambda: _relative(_norm(x - previous), _norm(x))


def _cgls_loop(
    projector: Projector | PixelProjector,
    data: Any,
    x: Any,
    iterations: int,
    on_iteration: Progress | None,
) -> Any:
    residual = data - projector.forward(x)
    s = projector.adjoint(residual)
    direction = s.copy()
    gamma = _per_slice(s)
    data_norm = _norm(data) if on_iteration is not None else 0.0
    for done in range(iterations):
        ad = projector.forward(direction)
        a32 = _divide(gamma, _per_slice(ad)).astype(np.float32)[:, None, None]
        x += a32 * direction
        residual -= a32 * ad
        s = projector.adjoint(residual)
        gamma_new = _per_slice(s)
        beta = _divide(gamma_new, gamma)
        direction = s + beta.astype(np.float32)[:, None, None] * direction
        gamma = gamma_new
        _notify(on_iteration, done + 1, iterations, x,
                residual=_misfit(residual, data_norm))
    return x


def _prox(x: npt.NDArray[np.float32], kind: str | None, strength: float, inner: int,
          nonnegativity: bool) -> npt.NDArray[np.float32]:
    if kind is None or strength == 0.0:
        return x
    if kind == "ROF_TV":
        result: npt.NDArray[np.float32] = rof_tv(x, strength, inner, _ROF_STEP)
        return result
    result = pd_tv(x, strength, inner, nonnegativity=nonnegativity,
                   lipschitz_const=_PD_LIPSCHITZ)
    return result


def sirt(
    block: npt.NDArray[Any],
    *,
    angles_deg: npt.NDArray[np.float64],
    on_iteration: Progress | None = None,
    **params: Any,
) -> npt.NDArray[np.float32]:
    """SIRT of a sinogram band ``(rows, angles, cols)`` to slices ``(rows, N, N)``.

    ``params`` are :class:`SirtParams` (validated here too). Raises :class:`StageError`
    on a bad block, angles or parameter.
    """
    p = dict(_validated("sirt", SirtParams, params))
    problem = _Problem("sirt", block, angles_deg, p)
    a = problem.full
    xp = problem.xp
    row_sum = a.forward(xp.ones(a.shape_image, dtype=xp.float32))
    weight_r = _divide(1.0, row_sum, _SIRT_FLOOR * float(row_sum.max()))
    col_sum = a.adjoint(xp.ones(a.shape_sinogram, dtype=xp.float32))
    weight_c = _divide(1.0, col_sum, _SIRT_FLOOR * float(col_sum.max()))
    x = problem.start(p["initialisation"])
    data_norm = _norm(problem.data) if on_iteration is not None else 0.0
    residual = problem.data - a.forward(x)
    for done in range(p["iterations"]):
        x += weight_c * a.adjoint(weight_r * residual)
        if problem.nonnegativity:
            x = _clamp(x)
        if done + 1 < p["iterations"] or on_iteration is not None:
            residual = problem.data - a.forward(x)  # the next step's, reported now
        _notify(on_iteration, done + 1, p["iterations"], x,
                residual=_misfit(residual, data_norm))
    return problem.finish(x)


def cgls(
    block: npt.NDArray[Any],
    *,
    angles_deg: npt.NDArray[np.float64],
    on_iteration: Progress | None = None,
    **params: Any,
) -> npt.NDArray[np.float32]:
    """CGLS of a sinogram band ``(rows, angles, cols)`` to slices ``(rows, N, N)``, from
    zeros; ``params`` are :class:`CglsParams`."""
    p = dict(_validated("cgls", CglsParams, params))
    problem = _Problem("cgls", block, angles_deg, p)
    x = _cgls_loop(problem.full, problem.data, problem.start(None), p["iterations"],
                   on_iteration)
    return problem.finish(x)


def fista(
    block: npt.NDArray[Any],
    *,
    angles_deg: npt.NDArray[np.float64],
    on_iteration: Progress | None = None,
    **params: Any,
) -> npt.NDArray[np.float32]:
    """FISTA with ordered subsets and a TV proximal step; ``params`` are
    :class:`FistaParams`."""
    p = dict(_validated("fista", FistaParams, params))
    problem = _Problem("fista", block, angles_deg, p, subsets=p["subsets_number"])
    step = np.float32(1.0 / lipschitz(problem.parts[0]))
    x = problem.start(p["initialisation"])
    y = x.copy()
    t = 1.0
    for done in range(p["iterations"]):
        before = x
        for index, part in enumerate(problem.parts):
            x_old = x
            gradient = part.adjoint(part.forward(y) - problem.subset_data(index))
            x = y - step * gradient
            if problem.nonnegativity:
                x = _clamp(x)
            x = _prox(x, p["regularisation_type"], p["regularisation_parameter"],
                      p["regularisation_iterations"], problem.nonnegativity)
            t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
            y = x + np.float32((t - 1.0) / t_new) * (x - x_old)
            t = t_new
        _notify(on_iteration, done + 1, p["iterations"], x,
                change=_change(x, before))
    return problem.finish(x)


def admm(
    block: npt.NDArray[Any],
    *,
    angles_deg: npt.NDArray[np.float64],
    on_iteration: Progress | None = None,
    **params: Any,
) -> npt.NDArray[np.float32]:
    """Linearised, relaxed ADMM with ordered subsets and a TV proximal step (ToMoBAR's);
    ``params`` are :class:`AdmmParams`."""
    p = dict(_validated("admm", AdmmParams, params))
    problem = _Problem("admm", block, angles_deg, p, subsets=p["subsets_number"])
    rho, relax = float(p["ADMM_rho_const"]), float(p["ADMM_relax_par"])
    step = np.float32(0.9 / (lipschitz(problem.parts[0]) + rho))
    x = problem.start(p["initialisation"])
    z = x.copy()
    z_old: npt.NDArray[np.float32] | None = None
    u = problem.xp.zeros_like(x)
    for done in range(p["iterations"]):
        before = x
        for index, part in enumerate(problem.parts):
            gradient = part.adjoint(part.forward(z) - problem.subset_data(index))
            gradient += np.float32(rho) * (z - x + u)
            z = z - step * gradient
            if problem.nonnegativity:
                z = _clamp(z)
            if done > 1 and z_old is not None:  # ToMoBAR relaxes from the third pass
                z = np.float32(1.0 - relax) * z_old + np.float32(relax) * z
            z_old = z.copy()
            x = _prox(z + u, p["regularisation_type"], p["regularisation_parameter"] / rho,
                      p["regularisation_iterations"], problem.nonnegativity)
        u += z - x
        _notify(on_iteration, done + 1, p["iterations"], x,
                change=_change(x, before))
    return problem.finish(x)


def osem(
    block: npt.NDArray[Any],
    *,
    angles_deg: npt.NDArray[np.float64],
    on_iteration: Progress | None = None,
    cache: PixelMatrixCache | None = None,
    **params: Any,
) -> npt.NDArray[np.float32]:
    """OSEM (MLEM with ``subsets_number=1``) of a sinogram band with the non-negative
    pixel-driven projector, optionally with a TV proximal step; ``params`` are
    :class:`OsemParams`. The result is ``≥ 0`` (before the mask) whatever the data.
    ``cache`` (the scan's, ADR 0010) keeps the projector's matrices for the next band;
    above ``MATRIX_ENTRIES`` the projector goes angle by angle without them."""
    p = dict(_validated("osem", OsemParams, params))
    problem = _Problem("osem", block, angles_deg, p, subsets=p["subsets_number"],
                       model="pixel", cache=cache)
    xp = problem.xp
    data = [_clamp(problem.subset_data(i).copy()) for i in range(len(problem.parts))]
    sensitivity = [part.adjoint(xp.ones(part.shape_sinogram, dtype=xp.float32))
                   for part in problem.parts]
    seen = sum(sensitivity[1:], sensitivity[0])  # Aᵀ1 over all angles
    visible = seen > 0
    # The constant start whose projections hold the data's total, per slice.
    total = _clamp(problem.data.copy()).astype(xp.float64).sum(axis=(1, 2))
    level = _divide(total, seen.astype(xp.float64).sum(axis=(1, 2))).astype(xp.float32)
    x = xp.where(visible, level[:, None, None], xp.zeros_like(seen))
    inverse = [_divide(1.0, s) for s in sensitivity]
    inverse_seen = _divide(1.0, seen)
    for done in range(p["iterations"]):
        before = x.copy() if on_iteration is not None else x
        for index, part in enumerate(problem.parts):
            assert isinstance(part, PixelProjector)
            update = part.forward_adjoint(x, _em_ratio(data[index]))
            update *= inverse[index]
            # pixels this subset does not see keep their value (update factor 1)
            x *= xp.where(sensitivity[index] > 0, update, xp.ones_like(update))
            if p["regularisation_type"] is not None and p["regularisation_parameter"] > 0:
                x = _em_prox(x, inverse_seen, visible, p)
        _notify(on_iteration, done + 1, p["iterations"], x,
                change=_change(x, before))
    return problem.finish(x)


def _em_ratio(measured: Any) -> Callable[[Any, Any], Any]:
    """``between`` of :meth:`PixelProjector.forward_adjoint` for the EM update: the
    measured ``b`` over ``A x`` at the angles given (0 where ``A x`` is 0)."""
    return lambda projected, angles: _divide(measured[:, angles], projected)


def _em_prox(x: Any, inverse: Any, seen: Any, p: dict[str, Any]) -> Any:
    """The TV proximal step after a subset's EM update, with ``λ τ``: a subset's update
    is about a full-gradient step preconditioned by ``x / Aᵀ1`` (``Aₛᵀ1 ≈ Aᵀ1 / S``
    and the subset's gradient ≈ the full one / S), so ``τ`` is the slice's mean
    ``x / Aᵀ1`` over the pixels the rays see (each slice its own: bands stay
    independent). Clamped at 0: the next EM update needs ``x ≥ 0`` (ROF does not clamp)."""
    counts = seen.reshape(x.shape[0], -1).sum(axis=1)
    for row in range(x.shape[0]):
        count = int(counts[row])  # inverse is 0 on the pixels no ray sees
        tau = float((x[row] * inverse[row]).sum()) / count if count else 0.0
        x[row : row + 1] = _prox(x[row : row + 1], p["regularisation_type"],
                                 p["regularisation_parameter"] * tau,
                                 p["regularisation_iterations"], True)
    return _clamp(x)


def _validated(stage: str, model: type[StageParams], params: dict[str, Any]) -> StageParams:
    """The parameters as the model's instance: unknown names and bad values are refused
    with the stage's name (also when the functions are called directly)."""
    try:
        return model(**params)
    except ValueError as error:
        first = str(error).splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) if len(first) > 1 else str(error)
        raise StageError(f"stage {stage!r}: bad parameters: {detail}") from None


def _iterative_memory(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
    """Upper bound of one band's peak: the padded data, about 8 slice-sized and 4
    sinogram-sized float32 buffers (iterates, gradients, weights, the projector's
    complex spectra), the NUFFT points (``angles × (M/2+1)`` × 40 bytes per projector)
    and finufft's oversampled grids (``(2N)²`` complex64 per transform and plan)."""
    rows, angles, cols = shape
    pad = _pad_width("memory", getattr(params, "detector_pad", False), cols)
    size = cols if getattr(params, "recon_size", None) is None else int(params.recon_size)
    work = max(size, cols + 2 * pad) if pad else size
    _, window = window_geometry(work, (cols - 1) / 2 + pad)
    points = angles * (window // 2 + 1)
    subsets = int(getattr(params, "subsets_number", 1))
    plans = 2 if subsets > 1 else 1  # the full projector, and the subsets' together
    return int(
        rows * angles * cols * max(4, np.dtype(dtype).itemsize)
        + 8 * rows * work * work * 4
        + 4 * rows * angles * (cols + 2 * pad + window) * 4
        + plans * points * 40
        + 2 * rows * (2 * work) ** 2 * 8
    )


def _osem_memory(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
    """One band's peak: the projector (up to ``MATRIX_ENTRIES``: the sparse matrices, 12
    bytes per entry, ``2 × angles × N²`` entries, held by the scan's cache between bands,
    plus their build's temporaries, ~40 bytes per entry of a chunk; above: one angle's
    matrix-free build, ``ANGLE_BYTES_PER_PIXEL × N²``, and the accumulated back-projection,
    ``N² × rows`` float32), the data and its per-subset copy, ratio and ones (4
    sinogram-sized float32 buffers) and about ``8 + 2 × subsets`` slice-sized buffers
    (iterate, sensitivities and their inverses, update, TV's work)."""
    rows, angles, cols = shape
    pad = _pad_width("memory", getattr(params, "detector_pad", False), cols)
    size = cols if getattr(params, "recon_size", None) is None else int(params.recon_size)
    work = max(size, cols + 2 * pad) if pad else size
    subsets = int(getattr(params, "subsets_number", 1))
    entries = 2 * angles * work * work
    projector = (
        ANGLE_BYTES_PER_PIXEL * work * work + rows * work * work * 4
        if _pixel_matrix_free(angles, work)
        else entries * 12 + 40 * min(entries, CHUNK_ENTRIES)
    )
    return int(
        projector
        + 4 * rows * angles * (cols + 2 * pad) * 4
        + (8 + 2 * subsets) * rows * work * work * 4
    )


_ALIAS = "httomolibgpu.recon.algorithm."
SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="sirt", fn=sirt, pattern=Pattern.SINOGRAM, params=SirtParams,
        angle_local=False,  # all angles, every iteration
        memory=_iterative_memory, needs_angles=True, reports_progress=True, device=True,
        summary="SIRT with the NUFFT projector pair (about 2 Fourier FBPs per iteration)",
        aliases=(_ALIAS + "SIRT3d_tomobar",),
    ),
    StageSpec(
        name="cgls", fn=cgls, pattern=Pattern.SINOGRAM, params=CglsParams,
        angle_local=False,  # all angles, every iteration
        memory=_iterative_memory, needs_angles=True, reports_progress=True, device=True,
        summary="CGLS (conjugate gradients on the normal equations), per slice",
        aliases=(_ALIAS + "CGLS3d_tomobar",),
    ),
    StageSpec(
        name="fista", fn=fista, pattern=Pattern.SINOGRAM, params=FistaParams,
        angle_local=False,  # all angles, every iteration
        memory=_iterative_memory, needs_angles=True, reports_progress=True, device=True,
        summary="FISTA with ordered subsets and a TV proximal step (PD_TV or ROF_TV)",
        aliases=(_ALIAS + "FISTA3d_tomobar",),
    ),
    StageSpec(
        name="admm", fn=admm, pattern=Pattern.SINOGRAM, params=AdmmParams,
        angle_local=False,  # all angles, every iteration
        memory=_iterative_memory, needs_angles=True, reports_progress=True, device=True,
        summary="linearised ADMM with ordered subsets and a TV proximal step (ToMoBAR's)",
        aliases=(_ALIAS + "ADMM3d_tomobar",),
    ),
    StageSpec(
        name="osem", fn=osem, pattern=Pattern.SINOGRAM, params=OsemParams,
        angle_local=False,  # all angles, every iteration
        memory=_osem_memory, needs_angles=True, reports_progress=True, device=True,
        cache=PixelMatrixCache,
        summary="OSEM (MLEM with 1 subset): Poisson maximum likelihood with the "
        "non-negative pixel-driven projector, optional TV proximal step",
        aliases=(_ALIAS + "OSEM3d_tomobar",),
    ),
)
