"""TomoPy methods as a backend (``tomopy``), used where TomoPy is importable.

TomoPy is not on PyPI (``conda install -c conda-forge tomopy``), so nothing here imports
it at import time: every adapter calls :func:`require_tomopy` first, which raises a
:class:`StageError` naming the missing package. Adapters take and return numpy blocks in
the layout of the stage they stand for and return C-contiguous float32. ``normalize``,
``remove_outlier`` and ``paganin`` are projection-block stages, ``(angles, rows, cols)``,
TomoPy's own layout: no transpose; ``remove_stripe_fw`` is a sinogram-block stage
(``(rows, angles, cols)``, every angle at hand, as HTTomo runs it), transposed to
TomoPy's layout and back (:func:`remove_stripe_fw_sino`).

Parameter mapping (our stage → TomoPy):

* ``normalize`` → ``tomopy.prep.normalize.normalize(arr, flat, dark, cutoff=cutoff)``;
  ``minus_log``, ``nonnegative`` and ``remove_nans`` are then applied as in our stage.
  TomoPy averages by mean with a fixed denominator floor of 1e-6: ``averaging`` must be
  ``"mean"`` and ``eps`` 1e-6.
* ``remove_outlier`` → ``tomopy.misc.corr.remove_outlier(arr, dif, size=size, axis=axis)``.
* ``paganin`` → ``tomopy.prep.phase.retrieve_phase(tomo, pixel_size=, dist=, energy=,
  alpha=, pad=)`` (same names and units: cm, keV).
* ``remove_stripe_fw`` → ``tomopy.prep.stripe.remove_stripe_fw(tomo, level=, wname=,
  sigma=, pad=)``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from stages.prep.normalize import LOG_FLOOR
from streamer.errors import StageError

BACKEND = "tomopy"
TOMOPY_EPS = 1e-6


def require_tomopy() -> ModuleType:
    """The ``tomopy`` module, or a :class:`StageError` saying how to install it."""
    try:
        import tomopy  # noqa: PLC0415 - optional, conda-only dependency
    except ImportError as exc:
        raise StageError(
            "backend 'tomopy' needs TomoPy, which is not on PyPI: "
            "conda install -c conda-forge tomopy"
        ) from exc
    module: ModuleType = tomopy
    return module


def _check_block(method: str, block: Any, layout: str = "projection") -> npt.NDArray[Any]:
    if not isinstance(block, np.ndarray) or block.ndim != 3:
        shape = getattr(block, "shape", type(block).__name__)
        raise StageError(
            f"backend {BACKEND!r}: method {method!r}: block: expected a 3-D numpy "
            f"{layout} block, got {shape}"
        )
    return block


def _float32(out: Any) -> npt.NDArray[np.float32]:
    return np.ascontiguousarray(out, dtype=np.float32)


def normalize(
    block: npt.NDArray[Any],
    *,
    darks: npt.NDArray[Any] | None,
    flats: npt.NDArray[Any] | None,
    averaging: str = "mean",
    cutoff: float | None = None,
    minus_log: bool = False,
    nonnegative: bool = False,
    remove_nans: bool = False,
    eps: float = TOMOPY_EPS,
) -> npt.NDArray[np.float32]:
    """Stage ``normalize`` through ``tomopy.prep.normalize.normalize``."""
    method = "normalize"
    data = _check_block(method, block)
    if averaging != "mean" or eps != TOMOPY_EPS:
        raise StageError(
            f"backend {BACKEND!r}: method {method!r}: tomopy averages by 'mean' with eps "
            f"{TOMOPY_EPS}, got averaging={averaging!r}, eps={eps}"
        )
    if flats is None or darks is None or flats.shape[0] == 0:
        raise StageError(
            f"backend {BACKEND!r}: method {method!r}: needs darks and at least 1 flat frame"
        )
    tomopy = require_tomopy()
    if darks.shape[0] == 0:
        darks = np.zeros((1, *data.shape[1:]), dtype=np.float32)
    out = _float32(tomopy.prep.normalize.normalize(data, flats, darks, cutoff=cutoff))
    if out is data:  # never modify the caller's block in place below
        out = out.copy()
    if minus_log:
        np.maximum(out, LOG_FLOOR, out=out)
        np.log(out, out=out)
        np.negative(out, out=out)
    if nonnegative:
        np.maximum(out, np.float32(0), out=out)
    if remove_nans:
        np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def remove_outlier(
    block: npt.NDArray[Any], *, dif: float, size: int = 3, axis: int = 0
) -> npt.NDArray[np.float32]:
    """Stage ``remove_outlier`` through ``tomopy.misc.corr.remove_outlier``."""
    data = _check_block("remove_outlier", block)
    tomopy = require_tomopy()
    return _float32(tomopy.misc.corr.remove_outlier(data, dif, size=size, axis=axis))


def paganin(
    block: npt.NDArray[Any],
    *,
    pixel_size: float = 1e-4,
    dist: float = 50.0,
    energy: float = 20.0,
    alpha: float = 1e-3,
    pad: bool = True,
) -> npt.NDArray[np.float32]:
    """Stage ``paganin`` through ``tomopy.prep.phase.retrieve_phase``."""
    data = _check_block("paganin", block)
    tomopy = require_tomopy()
    return _float32(
        tomopy.prep.phase.retrieve_phase(
            data, pixel_size=pixel_size, dist=dist, energy=energy, alpha=alpha, pad=pad
        )
    )


def remove_stripe_fw(
    block: npt.NDArray[Any],
    *,
    level: int | None = None,
    wname: str = "db5",
    sigma: float = 2,
    pad: bool = True,
) -> npt.NDArray[np.float32]:
    """Stage ``remove_stripe_fw`` through ``tomopy.prep.stripe.remove_stripe_fw``."""
    data = _check_block("remove_stripe_fw", block)
    tomopy = require_tomopy()
    return _float32(
        tomopy.prep.stripe.remove_stripe_fw(data, level=level, wname=wname, sigma=sigma, pad=pad)
    )


def remove_stripe_fw_sino(
    block: npt.NDArray[Any],
    *,
    level: int | None = None,
    wname: str = "db5",
    sigma: float = 2,
    pad: bool = True,
) -> npt.NDArray[np.float32]:
    """Stage ``remove_stripe_fw`` (a sinogram block ``(rows, angles, cols)``) through
    ``tomopy.prep.stripe.remove_stripe_fw``, which takes TomoPy's layout: the block is
    transposed to ``(angles, rows, cols)`` and the result back."""
    data = _check_block("remove_stripe_fw", block, "sinogram")
    out = remove_stripe_fw(np.ascontiguousarray(data.transpose(1, 0, 2)), level=level,
                           wname=wname, sigma=sigma, pad=pad)
    return np.ascontiguousarray(out.transpose(1, 0, 2))
