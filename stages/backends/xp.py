"""Array module of a block, GPU availability and counted host↔device transfers.

The array module comes from the input (``cupy.get_array_module``), so a stage written
against ``xp = array_module(block)`` runs on whichever device holds its block. cupy is
imported lazily inside the functions, never at import time, so this module costs
nothing where the ``gpu`` extra is not installed.

Data stay on the device between consecutive GPU stages: the pipeline calls
:func:`to_device` once where a run of GPU stages begins and :func:`to_host` once where it
ends, with a :class:`TransferStats` it owns (no globals), so a report can show how many
round trips a pipeline made.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from streamer.errors import StageError

GPU_EXTRA_HINT = "pip install 'tomo-streamer[gpu]'"


@dataclass
class TransferStats:
    """Host↔device transfers made by one caller (a pipeline section, a test).

    Counts only real copies: a block already on the target side is passed through and
    not counted.
    """

    to_device: int = 0
    to_host: int = 0
    bytes_to_device: int = 0
    bytes_to_host: int = 0
    seconds_to_device: float = 0.0
    seconds_to_host: float = 0.0

    @property
    def transfers(self) -> int:
        """Copies in both directions."""
        return self.to_device + self.to_host

    def describe(self) -> str:
        """One line for a run's log and report."""
        return (f"host->device {self.to_device} copies, {self.bytes_to_device / 2**20:,.1f} "
                f"MiB in {self.seconds_to_device:.3f} s; device->host {self.to_host} copies, "
                f"{self.bytes_to_host / 2**20:,.1f} MiB in {self.seconds_to_host:.3f} s")


def _import_cupy() -> ModuleType | None:
    try:
        import cupy  # noqa: PLC0415 - lazy on purpose: cupy is an optional extra
    except ImportError:
        return None
    module: ModuleType = cupy
    return module


def array_module(block: Any) -> Any:
    """The array namespace of ``block``: ``numpy``, ``cupy``, or the namespace an array
    names through the Array API's ``__array_namespace__`` (numpy without cupy).

    numpy arrays and scalars are checked first, so the common case never imports cupy.
    """
    if isinstance(block, (np.ndarray, np.generic)):
        return np
    cupy = _import_cupy()
    if cupy is not None and cupy.get_array_module(block) is cupy:
        return cupy
    namespace = getattr(block, "__array_namespace__", None)
    if namespace is not None:
        return namespace()
    return np


def _twin(xp: Any, attribute: str, host: str, device: str) -> Any:
    """The SciPy module ``host`` for numpy, its CuPy twin ``device`` for cupy, or the
    twin a namespace carries as ``attribute`` (one made for tests)."""
    import importlib  # noqa: PLC0415 - the twins are imported only where asked for

    if xp is np:
        return importlib.import_module(host)
    twin = getattr(xp, attribute, None)
    if twin is not None:
        return twin
    if getattr(xp, "__name__", "") == "cupy":
        return importlib.import_module(device)
    raise StageError(f"array namespace {getattr(xp, '__name__', xp)!r}: expected numpy or "
                     f"cupy, got one without a {host} twin")


def ndimage_module(xp: Any) -> Any:
    """``scipy.ndimage`` for numpy blocks, ``cupyx.scipy.ndimage`` for cupy blocks."""
    return _twin(xp, "scipy_ndimage", "scipy.ndimage", "cupyx.scipy.ndimage")


def fft_module(xp: Any) -> Any:
    """``scipy.fft`` for numpy blocks, ``cupyx.scipy.fft`` for cupy blocks."""
    return _twin(xp, "scipy_fft", "scipy.fft", "cupyx.scipy.fft")


def host_copy(value: Any) -> np.ndarray[Any, Any]:
    """A host copy of a small table computed on the device (a per-sinogram factor, a
    kernel probe): ``cupy.asnumpy`` or the namespace's ``asnumpy``; numpy passes
    through. Not counted as a block transfer: blocks move with :func:`to_host`."""
    if isinstance(value, np.ndarray):
        return value
    download = getattr(array_module(value), "asnumpy", None)
    if download is None:
        return np.asarray(value)
    host: np.ndarray[Any, Any] = download(value)
    return host


def gpu_available() -> bool:
    """Whether cupy is importable and sees a usable CUDA device.

    Never raises: a missing driver, a CUDA runtime error or a broken install all read
    as ``False``.
    """
    cupy = _import_cupy()
    if cupy is None:
        return False
    try:
        return bool(cupy.is_available())
    except Exception:  # CUDARuntimeError and friends: no usable device
        return False


def require_gpu(backend: str = "cupy") -> ModuleType:
    """The cupy module, or a :class:`StageError` saying why the GPU cannot be used."""
    cupy = _import_cupy()
    if cupy is None:
        raise StageError(f"backend {backend!r} needs the gpu extra: {GPU_EXTRA_HINT}")
    if not gpu_available():
        raise StageError(
            f"backend {backend!r}: no CUDA device is available (cupy.is_available() is "
            "False); use backend 'numpy'"
        )
    return cupy


def to_device(block: Any, stats: TransferStats, *, backend: str = "cupy") -> Any:
    """Copy a host block to the GPU (counted in ``stats``); device blocks pass through."""
    cupy = require_gpu(backend)
    if cupy.get_array_module(block) is cupy:
        return block
    start = time.perf_counter()
    out = cupy.asarray(block)
    stats.seconds_to_device += time.perf_counter() - start
    stats.to_device += 1
    stats.bytes_to_device += int(block.nbytes)
    return out


def to_host(block: Any, stats: TransferStats) -> Any:
    """Copy a device block to a numpy array (counted in ``stats``); numpy passes through."""
    if isinstance(block, np.ndarray):
        return block
    cupy = _import_cupy()
    if cupy is None or cupy.get_array_module(block) is not cupy:
        return np.asarray(block)
    start = time.perf_counter()
    out = cupy.asnumpy(block)  # synchronous: waits for the device work producing it
    stats.seconds_to_host += time.perf_counter() - start
    stats.to_host += 1
    stats.bytes_to_host += int(out.nbytes)
    return out
