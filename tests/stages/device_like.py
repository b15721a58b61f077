"""A CPU array namespace that behaves toward NumPy as CuPy does, to prove on a machine
without a GPU that a stage never falls back to ``np.`` on its data path.

:class:`DeviceLikeArray` holds a numpy array but, like ``cupy.ndarray``:

* refuses implicit conversion to numpy (``np.asarray(block)`` raises ``TypeError``);
* is not an ``np.ndarray`` (``isinstance`` checks that assume numpy fail);
* does not take part in NumPy's dispatch at all (``np.sqrt(block)``, ``np.where(...)``
  raise ``TypeError``; CuPy would run them on the device but a stage should not rely on
  it), and refuses arithmetic with a host array (``block + np.ones(3)``), as CuPy does;
* returns 0-d arrays, not numpy scalars, from reductions.

Its namespace (``array_module(block)``, reached by ``__array_namespace__``) forwards to
numpy and wraps what comes back; it carries ``scipy_ndimage`` and ``scipy_fft`` twins
built the same way, as ``cupyx.scipy`` is for CuPy, a ``finufft`` twin (finufft's
``Plan`` taking and giving device arrays, as ``cufinufft.Plan`` does) and a
``scipy_sparse`` twin (``csr_matrix(host_matrix) @ device_array``, as
``cupyx.scipy.sparse``). Only ``asarray``/``array``/
``ascontiguousarray`` accept a host array (the explicit upload). Because the data are
the same numpy arrays underneath, a stage's result here must equal its numpy result
exactly.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import scipy.fft
import scipy.ndimage

_UPLOADS = frozenset({"asarray", "array", "asanyarray", "ascontiguousarray"})


def _unwrap(value: Any, *, where: str, allow_host: bool) -> Any:
    if isinstance(value, DeviceLikeArray):
        return value._data
    if isinstance(value, np.ndarray) and value.ndim > 0 and not allow_host:
        raise TypeError(f"{where}: got a host numpy array of shape {value.shape} next to "
                        "device arrays (CuPy refuses this; upload it with xp.asarray)")
    if isinstance(value, tuple):
        return tuple(_unwrap(v, where=where, allow_host=allow_host) for v in value)
    if isinstance(value, list):
        return [_unwrap(v, where=where, allow_host=allow_host) for v in value]
    return value


def _wrap(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return DeviceLikeArray(value)
    if isinstance(value, np.generic) and not isinstance(value, np.dtype):
        return DeviceLikeArray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _forward(function: Callable[..., Any], where: str, *, allow_host: bool) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        plain_args = _unwrap(args, where=where, allow_host=allow_host)
        plain_kwargs = {k: _unwrap(v, where=where, allow_host=allow_host)
                        for k, v in kwargs.items()}
        return _wrap(function(*plain_args, **plain_kwargs))

    return call


class _Namespace:
    """numpy (or a SciPy module) seen through :func:`_forward`."""

    def __init__(self, module: ModuleType, name: str) -> None:
        self._module = module
        self.__name__ = name

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._module, name)
        if isinstance(value, ModuleType):
            return _Namespace(value, f"{self.__name__}.{name}")
        if isinstance(value, type) or not callable(value):
            return value  # dtypes, constants
        return _forward(value, f"{self.__name__}.{name}", allow_host=name in _UPLOADS)


class _Plan:
    """finufft's ``Plan`` with device arrays in and out (as ``cufinufft.Plan``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import finufft

        self._plan = finufft.Plan(*args, **kwargs)

    def setpts(self, *points: Any) -> None:
        self._plan.setpts(*_unwrap(points, where="Plan.setpts", allow_host=False))

    def execute(self, data: Any, out: Any = None) -> Any:
        plain = _unwrap(data, where="Plan.execute", allow_host=False)
        if out is None:
            return _wrap(self._plan.execute(plain))
        self._plan.execute(plain, out=_unwrap(out, where="Plan.execute", allow_host=False))
        return out


class _FinufftTwin:
    __name__ = "device_like.finufft"
    Plan = _Plan


class _SparseMatrix:
    """A host sparse matrix held "on the device": ``@`` takes and gives device arrays."""

    def __init__(self, matrix: Any) -> None:
        self._matrix = matrix

    def __matmul__(self, other: Any) -> Any:
        if not isinstance(other, DeviceLikeArray):
            raise TypeError("sparse @: expected a device array (CuPy refuses host ones)")
        return _wrap(self._matrix @ other._data)


class _SparseTwin:
    __name__ = "device_like.scipy_sparse"

    @staticmethod
    def csr_matrix(matrix: Any) -> _SparseMatrix:
        """Upload a scipy CSR matrix (``cupyx.scipy.sparse.csr_matrix(scipy_matrix)``)."""
        return _SparseMatrix(matrix.tocsr())


class DeviceLikeNamespace(_Namespace):
    """The namespace of :class:`DeviceLikeArray` (numpy's API, CuPy's manners)."""

    ndarray: type[DeviceLikeArray]

    def __init__(self) -> None:
        super().__init__(np, "device_like")
        self.scipy_ndimage = _Namespace(scipy.ndimage, "device_like.scipy_ndimage")
        self.scipy_fft = _Namespace(scipy.fft, "device_like.scipy_fft")
        self.finufft = _FinufftTwin()
        self.scipy_sparse = _SparseTwin()

    def asnumpy(self, value: Any) -> Any:
        """Download, as ``cupy.asnumpy``."""
        return value.get() if isinstance(value, DeviceLikeArray) else np.asarray(value)


class DeviceLikeArray:
    """A numpy array that behaves like a CuPy one toward numpy (see the module doc)."""

    __slots__ = ("_data",)
    __array_ufunc__ = None  # np.<ufunc>(block) raises; operators still work

    def __init__(self, data: np.ndarray[Any, Any]) -> None:
        self._data = data

    def __array_namespace__(self, api_version: str | None = None) -> DeviceLikeNamespace:
        return NAMESPACE

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        raise TypeError("Implicit conversion to a NumPy array is not allowed (a device "
                        "array); use .get() or xp.asnumpy")

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        return NotImplemented  # np.<function>(block) raises TypeError

    def get(self) -> np.ndarray[Any, Any]:
        """Download a copy, as ``cupy.ndarray.get``."""
        return self._data.copy()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # never __array_interface__ & co.: numpy would use them
            raise AttributeError(name)
        value = getattr(self._data, name)
        if callable(value):
            return _forward(value, f"ndarray.{name}", allow_host=False)
        return _wrap(value)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._data.dtype

    @property
    def ndim(self) -> int:
        return self._data.ndim

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"DeviceLikeArray({self._data!r})"

    def __bool__(self) -> bool:
        return bool(self._data)

    def __float__(self) -> float:
        return float(self._data)

    def __int__(self) -> int:
        return int(self._data)

    def __index__(self) -> int:
        return operator.index(self._data)

    def __getitem__(self, key: Any) -> Any:
        # CuPy takes host index arrays (it uploads them), so they are allowed here
        return _wrap(self._data[_unwrap(key, where="indexing", allow_host=True)])

    def __setitem__(self, key: Any, value: Any) -> None:
        # CuPy uploads a host value on assignment, so that is allowed here too
        self._data[_unwrap(key, where="indexing", allow_host=False)] = _unwrap(
            value, where="assignment", allow_host=True)

    def __iter__(self) -> Any:
        return (_wrap(row) for row in self._data)


NAMESPACE = DeviceLikeNamespace()
DeviceLikeNamespace.ndarray = DeviceLikeArray


def _binary(op: Callable[[Any, Any], Any], reflected: bool) -> Callable[..., Any]:
    def method(self: DeviceLikeArray, other: Any) -> Any:
        if isinstance(other, np.ndarray) and other.ndim > 0:
            raise TypeError(f"operator {op.__name__}: a device array and a host numpy "
                            f"array of shape {other.shape} (CuPy refuses this)")
        plain = _unwrap(other, where=op.__name__, allow_host=False)
        return _wrap(op(plain, self._data) if reflected else op(self._data, plain))

    return method


def _inplace(op: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def method(self: DeviceLikeArray, other: Any) -> DeviceLikeArray:
        if isinstance(other, np.ndarray) and other.ndim > 0:
            raise TypeError(f"operator {op.__name__}: a device array and a host numpy array")
        op(self._data, _unwrap(other, where=op.__name__, allow_host=False))
        return self

    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and",
              "or", "xor", "lshift", "rshift"):
    _op = getattr(operator, f"{_name}_" if _name in ("and", "or") else _name)
    setattr(DeviceLikeArray, f"__{_name}__", _binary(_op, reflected=False))
    setattr(DeviceLikeArray, f"__r{_name}__", _binary(_op, reflected=True))
    setattr(DeviceLikeArray, f"__i{_name}__", _inplace(getattr(operator, f"i{_name}")))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(DeviceLikeArray, f"__{_name}__", _binary(getattr(operator, _name), reflected=False))
def _unary(op: Callable[[Any], Any]) -> Callable[..., Any]:
    def method(self: DeviceLikeArray) -> Any:
        return _wrap(op(self._data))

    return method


for _name in ("neg", "pos", "abs", "invert"):
    setattr(DeviceLikeArray, f"__{_name}__", _unary(getattr(operator, _name)))
DeviceLikeArray.__hash__ = None  # type: ignore[assignment]
