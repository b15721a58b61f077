"""httomolibgpu methods behind a device guard (backend ``httomolibgpu``).

The CPU-mode trap
-----------------
Without a usable GPU, httomolibgpu imports in a "CPU mode" (``cupywrapper.cupy_run``
False, ``cp`` replaced by numpy) in which ``median_filter``, ``remove_outlier`` and
``remove_stripe_ti`` silently return their input unchanged. So every adapter here goes
through :func:`require_device` first, which raises :class:`StageError` unless
:func:`~stages.backends.xp.gpu_available` — *before* httomolibgpu is imported, because
importing it is what picks CPU mode. After the import, a second check refuses to run if
httomolibgpu itself reports CPU mode.

Layout
------
httomolibgpu expects HTTomo's projection layout ``(angles, rows, cols)``. Projection
blocks are passed as they are; sinogram blocks ``(rows, angles, cols)`` are transposed
once on the way in and once on the way out (on the device, by
:func:`_to_projection` / :func:`_from_projection`). The 3-D median/outlier filters use a
cubic window, which is symmetric in the axes, so they need no transpose.

Data stay on the device
-----------------------
Adapters take and return cupy arrays (darks/flats included) and never copy to the host.
Moving a block to the GPU where a run of GPU stages begins, and back where it ends, is
the caller's job (:func:`stages.backends.xp.to_device` / ``to_host`` with a
``TransferStats``); uploading darks/flats once per scan likewise.

Install: ``pip install 'tomo-streamer[gpu]'`` then
``pip install --no-deps httomolibgpu tomobar`` (see docs/how-to/gpu-and-backends.md).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from stages.backends.xp import array_module, gpu_available
from stages.prep import device_correct
from stages.prep.repair import NO_SIGNAL, RepairCounts
from streamer.errors import StageError

BACKEND = "httomolibgpu"
INSTALL_HINT = (
    "pip install 'tomo-streamer[gpu]' && pip install --no-deps httomolibgpu tomobar "
    "(see docs/how-to/gpu-and-backends.md)"
)
#: Kernel sizes httomolibgpu's median kernels are compiled for.
MEDIAN_KERNEL_SIZES = (3, 5, 7, 9, 11, 13)
#: httomolibgpu's remove_all_stripe fixes the large-stripe drop ratio at this value.
FIXED_DROP_RATIO = 0.1
#: "No cutoff": httomolibgpu always clips, so None becomes this bound (its own default
#: for a missing upper bound).
NO_CUTOFF = 1e12


# ------------------------------------------------------------------------------ guard


def require_device(method_name: str) -> None:
    """Raise :class:`StageError` unless a CUDA device is usable (checked before import)."""
    if not gpu_available():
        raise StageError(
            f"backend {BACKEND!r}: method {method_name!r} needs a CUDA device, and none is "
            "available (cupy.is_available() is False or cupy is not installed); without "
            "one httomolibgpu runs in 'CPU mode', where some methods silently return their "
            "input unchanged. Use backend 'numpy'"
        )


def _module(method_name: str, dotted: str) -> ModuleType:
    """Import ``httomolibgpu.<dotted>`` after the device guard, refusing CPU mode."""
    require_device(method_name)
    try:
        module = importlib.import_module(f"{BACKEND}.{dotted}")
    except ImportError as exc:
        raise StageError(
            f"backend {BACKEND!r}: method {method_name!r} needs httomolibgpu, which could "
            f"not be imported ({exc}): {INSTALL_HINT}"
        ) from exc
    wrapper = sys.modules.get(f"{BACKEND}.cupywrapper")
    if wrapper is not None and not getattr(wrapper, "cupy_run", True):
        raise StageError(
            f"backend {BACKEND!r}: method {method_name!r}: httomolibgpu started in 'CPU "
            "mode' (cupywrapper.cupy_run is False) although cupy reports a device; "
            "refusing to run it. Use backend 'numpy'"
        )
    return module


def _function(method_name: str, dotted: str, name: str) -> Callable[..., Any]:
    module = _module(method_name, dotted)
    fn = getattr(module, name, None)
    if fn is None:
        raise StageError(
            f"backend {BACKEND!r}: method {method_name!r}: httomolibgpu.{dotted} has no "
            f"{name!r} (unsupported httomolibgpu version)"
        )
    result: Callable[..., Any] = fn
    return result


def _accepts(fn: Callable[..., Any], parameter: str) -> bool:
    try:
        return parameter in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------- layout


def _check_block(method_name: str, block: Any) -> None:
    if getattr(block, "ndim", None) != 3:
        raise StageError(
            f"backend {BACKEND!r}: method {method_name!r}: block: expected a 3-D array, got "
            f"{getattr(block, 'shape', type(block).__name__)}"
        )


def _to_projection(block: Any) -> Any:
    """Sinogram ``(rows, angles, cols)`` → a C-contiguous projection-layout *copy*.

    Always a copy (even when the transpose happens to be contiguous), so methods that
    update their input in place never touch the caller's block.
    """
    return block.transpose(1, 0, 2).copy(order="C")


def _from_projection(block: Any) -> Any:
    """Projection ``(angles, rows, cols)`` → C-contiguous sinogram ``(rows, angles, cols)``."""
    return array_module(block).ascontiguousarray(block.transpose(1, 0, 2))


def _supported_dtype(block: Any, accepted: tuple[str, ...]) -> Any:
    """The block itself when httomolibgpu accepts its dtype, else a float32 copy."""
    if np.dtype(block.dtype).name in accepted:
        return block
    return block.astype(np.float32)


# ---------------------------------------------------------------------------- methods


def normalize(
    block: Any,
    *,
    darks: Any,
    flats: Any,
    averaging: str = "mean",
    cutoff: float | None = None,
    minus_log: bool = False,
    nonnegative: bool = False,
    remove_nans: bool = False,
    eps: float = 1e-6,
    repairs: RepairCounts | None = None,
) -> Any:
    """Stage ``normalize`` (projection block) with httomolibgpu's flat-field kernel.

    Calls ``httomolibgpu.prep.normalize.normalize`` (httomolibgpu < 5) with
    ``minus_log=False, nonnegativity=False, remove_nans=False`` or, where that is gone,
    ``dark_flat_field_correction`` (``cutoff=`` or ``upper_bound=``, by version). The
    cutoff therefore bounds the transmission, as in our numpy stage. Then, on the device,
    as our stage does: values without signal (not finite, on a pixel whose mean flat is
    not above its mean dark, and before ``-log`` also ``<= 0``) are repaired from their
    row neighbours and counted in ``repairs`` (:mod:`stages.prep.device_correct`; no
    clamp), then ``-log``, nonnegativity and NaN removal. Differences: the cutoff comes
    before the repair (an infinite value becomes the cutoff, not a neighbour's value);
    only ``averaging="mean"`` exists there (``median`` is refused); httomolibgpu's
    denominator floor is its own ``1e-7`` (``eps`` is not passed); ``cutoff=None``
    becomes ``1e12``; ``darks`` with 0 frames become one frame of zeros.
    ``darks``/``flats`` must already be on the device, like ``block``.
    """
    method = "normalize"
    if averaging != "mean":
        raise StageError(
            f"backend {BACKEND!r}: method {method!r}: averaging: httomolibgpu supports only "
            f"'mean', got {averaging!r}"
        )
    _check_block(method, block)
    if flats is None or darks is None or getattr(flats, "shape", (0,))[0] == 0:
        raise StageError(
            f"backend {BACKEND!r}: method {method!r}: needs darks and at least 1 flat frame"
        )
    module = _module(method, "prep.normalize")
    xp = array_module(block)
    accepted = ("float32", "uint16")
    data = _supported_dtype(block, accepted)
    flats = _supported_dtype(flats, accepted)
    if darks.shape[0] == 0:
        darks = xp.zeros((1, *block.shape[1:]), dtype=np.float32)
    darks = _supported_dtype(darks, accepted)
    bound = NO_CUTOFF if cutoff is None else float(cutoff)
    dead = ~(flats.mean(axis=0, dtype=np.float32) - darks.mean(axis=0, dtype=np.float32) > 0)
    old = getattr(module, "normalize", None)
    if old is not None:
        out = old(
            data, flats, darks, cutoff=bound, minus_log=False, nonnegativity=False,
            remove_nans=False,
        )
    else:
        new = getattr(module, "dark_flat_field_correction", None)
        if new is None:
            raise StageError(
                f"backend {BACKEND!r}: method {method!r}: httomolibgpu.prep.normalize has "
                "neither 'normalize' nor 'dark_flat_field_correction'"
            )
        key = "cutoff" if _accepts(new, "cutoff") else "upper_bound"
        out = new(data, flats, darks, **{key: bound})
    repaired = device_correct.repair_no_signal(out, dead=dead, positive=minus_log)
    if repairs is not None:
        repairs.add(NO_SIGNAL, repaired)
    if minus_log:
        xp.log(out, out=out)
        xp.negative(out, out=out)
    if nonnegative:
        xp.maximum(out, np.float32(0), out=out)
    if remove_nans:
        out = xp.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def _check_kernel(method: str, size: int) -> None:
    if size not in MEDIAN_KERNEL_SIZES:
        raise StageError(
            f"backend {BACKEND!r}: method {method!r}: size: httomolibgpu supports "
            f"{'|'.join(map(str, MEDIAN_KERNEL_SIZES))}, got {size}"
        )


def median_filter(block: Any, *, size: int = 3, axis: int | None = None) -> Any:
    """Stage ``median_filter`` with ``axis: null`` (a ``size³`` cube).

    ``httomolibgpu.misc.corr.median_filter(data, kernel_size=size, dif=0.0)``. Only the
    3-D filter exists there, so ``axis`` must be ``None``. Edges differ from scipy's
    modes: an out-of-range neighbour takes the centre pixel's value.
    """
    method = "median_filter"
    if axis is not None:
        raise StageError(
            f"backend {BACKEND!r}: method {method!r}: axis: httomolibgpu filters a "
            f"size³ cube, so only axis None (YAML null) is supported, got {axis}"
        )
    _check_block(method, block)
    _check_kernel(method, size)
    fn = _function(method, "misc.corr", "median_filter")
    return fn(_supported_dtype(block, ("float32", "uint16")), kernel_size=size, dif=0.0)


def remove_outlier(block: Any, *, dif: float, size: int = 3) -> Any:
    """Outlier removal with a ``size³`` cube: ``httomolibgpu.misc.corr.remove_outlier``.

    ``kernel_size=size, dif=dif``. Unlike our 2-D stage ``remove_outlier`` (window
    perpendicular to ``axis``, bright outliers only), httomolibgpu uses a 3-D window and
    replaces pixels with ``|pixel - median| >= dif`` (bright and dark).
    """
    method = "remove_outlier"
    _check_block(method, block)
    _check_kernel(method, size)
    fn = _function(method, "misc.corr", "remove_outlier")
    return fn(_supported_dtype(block, ("float32", "uint16")), kernel_size=size, dif=dif)


def remove_stripe_ti(block: Any, *, beta: float = 0.1) -> Any:
    """TomoCuPy's Titarenko filter: ``httomolibgpu.prep.stripe.remove_stripe_ti``.

    A projection block; ``beta`` (lower = stronger) is httomolibgpu's own parameter.
    This is a different formulation from our stage ``remove_stripe_ti``
    (``nblock``, ``alpha``, tomopy's algorithm), so it maps onto no registered stage.
    """
    method = "remove_stripe_ti"
    _check_block(method, block)
    fn = _function(method, "prep.stripe", "remove_stripe_ti")
    return fn(_supported_dtype(block, ("float32", "uint16")), beta=beta)


def remove_all_stripe(
    block: Any,
    *,
    snr: float = 3.0,
    la_size: int = 51,
    sm_size: int = 21,
    drop_ratio: float = FIXED_DROP_RATIO,
    dim: int = 1,
) -> Any:
    """Stage ``remove_all_stripe`` (sinogram block): ``httomolibgpu.prep.stripe``.

    ``snr``, ``la_size``, ``sm_size`` and ``dim`` pass under the same names; the block is
    transposed to ``(angles, rows, cols)`` and back. httomolibgpu fixes ``drop_ratio`` at
    0.1 (other values are refused) and, where it has the ``normalize`` switch, gets
    ``normalize=True`` (algotom's default for large stripes). The input is copied by the
    transpose, so httomolibgpu's in-place update never touches the caller's block.
    """
    method = "remove_all_stripe"
    if drop_ratio != FIXED_DROP_RATIO:
        raise StageError(
            f"backend {BACKEND!r}: method {method!r}: drop_ratio: httomolibgpu fixes it at "
            f"{FIXED_DROP_RATIO}, got {drop_ratio}"
        )
    _check_block(method, block)
    fn = _function(method, "prep.stripe", "remove_all_stripe")
    data = _to_projection(_supported_dtype(block, ("float32",)))
    extra: dict[str, Any] = {"normalize": True} if _accepts(fn, "normalize") else {}
    out = fn(data, snr=snr, la_size=la_size, sm_size=sm_size, dim=dim, **extra)
    return _from_projection(out)
