"""One NUFFT adapter for both devices: finufft for numpy blocks, cufinufft for CuPy ones.

finufft and cufinufft share the ``Plan(type, n_modes, n_trans, eps, dtype=…)`` /
``setpts`` / ``execute`` API, but name a few options differently (``spreadinterponly``
is ``gpu_spreadinterponly`` on the device; ``nthreads`` does not exist there) and take
arrays of their own device. :func:`spreading_plan` makes a plan for arrays of ``xp``
(the array module of the block), so a stage calls the same three methods whatever
device holds its data. A namespace made for tests may carry its own twin as
``xp.finufft`` (finufft's ``Plan`` taking and giving that namespace's arrays); it takes
finufft's option names.

cufinufft is imported only when a CuPy block asks for it (the optional ``gpu`` extra).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from stages.backends.xp import host_copy
from streamer.errors import StageError

__all__ = ["download", "nufft_library", "spreading_plan"]

#: A host copy of a small device table (:func:`stages.backends.xp.host_copy`).
download = host_copy


def nufft_library(xp: Any, *, stage: str = "nufft") -> Any:
    """The NUFFT module for arrays of ``xp``: ``finufft`` for numpy, ``cufinufft`` for
    cupy, or the twin a test namespace carries as ``xp.finufft``."""
    twin = None if xp is np else getattr(xp, "finufft", None)
    if twin is not None:
        return twin
    name = "finufft" if xp is np else "cufinufft"
    try:
        return importlib.import_module(name)
    except ImportError:  # pragma: no cover - cufinufft: the optional gpu extra
        raise StageError(
            f"stage {stage!r}: a {getattr(xp, '__name__', xp)} block needs {name} "
            f"(pip install 'tomo-streamer[gpu]'), not installed"
        ) from None


def _on_device(library: Any) -> bool:
    return getattr(library, "__name__", "") == "cufinufft"


def spreading_plan(
    xp: Any,
    nufft_type: int,
    grid: tuple[int, int],
    *,
    n_trans: int,
    eps: float,
    upsampfac: float,
    threads: int,
    stage: str = "nufft",
) -> Any:
    """A single-precision plan that only spreads (type 1) or interpolates (type 2) on
    the ``grid`` (no FFT, no deconvolution: the caller does both), for arrays of ``xp``.

    ``upsampfac`` chooses the kernel's width and shape (the grid is given whole);
    ``threads`` applies on the host only (the device uses its own launch sizes). A
    cufinufft plan runs on the CuPy stream current when it is made (cufinufft's default
    is the null stream, which a non-blocking stream of CuPy's would not wait for): use it
    under that stream.
    """
    library = nufft_library(xp, stage=stage)
    options: dict[str, Any] = {"upsampfac": upsampfac}
    if _on_device(library):
        options["gpu_spreadinterponly"] = 1
        stream = int(xp.cuda.get_current_stream().ptr)
        if stream:
            options["gpu_stream"] = stream
    else:
        options["spreadinterponly"] = 1
        options["nthreads"] = threads
    return library.Plan(nufft_type, grid, n_trans=n_trans, eps=eps, dtype="complex64",
                        **options)

