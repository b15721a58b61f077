"""Backends: array module, transfers, the httomolibgpu device guard, TomoPy adapters.

Nothing here needs cupy, a GPU, httomolibgpu or TomoPy: absence is simulated with
``sys.modules[name] = None`` and presence with fake modules recording their calls. The
one test that needs a real device is marked ``gpu`` and skips without one.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from stages.backends import httomolibgpu as hgpu
from stages.backends import tomopy as tp
from stages.backends import xp
from stages.prep import normalize as np_normalize
from stages.prep.repair import RepairCounts
from stages.registry import REGISTRY
from streamer.errors import StageError

RNG = np.random.default_rng(7)


# ----------------------------------------------------------------------------- helpers


class FakeDeviceArray:
    """Stands for a cupy array: wraps a numpy one."""

    def __init__(self, data: np.ndarray[Any, Any]) -> None:
        self.data = data
        self.nbytes = data.nbytes


def fake_cupy(available: bool | Exception = True) -> types.ModuleType:
    cupy = types.ModuleType("cupy")

    def is_available() -> bool:
        if isinstance(available, Exception):
            raise available
        return available

    cupy.is_available = is_available  # type: ignore[attr-defined]
    cupy.get_array_module = (  # type: ignore[attr-defined]
        lambda a: cupy if isinstance(a, FakeDeviceArray) else np
    )
    cupy.asarray = lambda a: FakeDeviceArray(np.array(a))  # type: ignore[attr-defined]
    cupy.asnumpy = lambda d: d.data.copy()  # type: ignore[attr-defined]
    return cupy


def install_modules(monkeypatch: pytest.MonkeyPatch, modules: dict[str, types.ModuleType]) -> None:
    """Put fake modules (and their parent packages' attributes) into sys.modules."""
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)


Calls = list[tuple[str, Any, dict[str, Any]]]


def fake_httomolibgpu(
    monkeypatch: pytest.MonkeyPatch, *, old_normalize: bool = True, cupy_run: bool = True,
    bound_name: str = "upper_bound",
) -> Calls:
    """A fake httomolibgpu whose functions record their calls."""
    calls: Calls = []
    names = [
        "httomolibgpu", "httomolibgpu.cupywrapper", "httomolibgpu.prep",
        "httomolibgpu.prep.normalize", "httomolibgpu.prep.stripe", "httomolibgpu.misc",
        "httomolibgpu.misc.corr",
    ]
    mods = {name: types.ModuleType(name) for name in names}
    mods["httomolibgpu.cupywrapper"].cupy_run = cupy_run  # type: ignore[attr-defined]

    def flat_field(data: Any, flats: Any, darks: Any, bound: float) -> Any:
        dark = darks.mean(axis=0, dtype=np.float32)
        denom = np.maximum(flats.mean(axis=0, dtype=np.float32) - dark, np.float32(1e-7))
        return np.minimum((data.astype(np.float32) - dark) / denom, np.float32(bound))

    def recorder(name: str, result: Callable[..., Any]) -> Callable[..., Any]:
        def fn(data: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append((name, data, {"args": args, **kwargs}))
            return result(data, *args, **kwargs)
        return fn

    norm = mods["httomolibgpu.prep.normalize"]
    if old_normalize:
        norm.normalize = recorder(  # type: ignore[attr-defined]
            "normalize", lambda d, f, k, cutoff, **_: flat_field(d, f, k, cutoff)
        )
    elif bound_name == "upper_bound":
        def dffc(data: Any, flats: Any, darks: Any, upper_bound: float | None = None) -> Any:
            calls.append(("dark_flat_field_correction", data, {"upper_bound": upper_bound}))
            return flat_field(data, flats, darks, 1e12 if upper_bound is None else upper_bound)
        norm.dark_flat_field_correction = dffc  # type: ignore[attr-defined]
    else:
        def dffc_cutoff(data: Any, flats: Any, darks: Any, cutoff: float = 10.0) -> Any:
            calls.append(("dark_flat_field_correction", data, {"cutoff": cutoff}))
            return flat_field(data, flats, darks, cutoff)
        norm.dark_flat_field_correction = dffc_cutoff  # type: ignore[attr-defined]

    def in_place_plus_one(data: Any, **_: Any) -> Any:
        data += 1  # httomolibgpu's remove_all_stripe updates its input in place
        return data

    def remove_all_stripe(
        data: Any, *, snr: float = 3.0, la_size: int = 61, sm_size: int = 21, dim: int = 1,
        normalize: bool = False,
    ) -> Any:
        calls.append(("remove_all_stripe", data.copy(), dict(
            snr=snr, la_size=la_size, sm_size=sm_size, dim=dim, normalize=normalize)))
        return in_place_plus_one(data)

    stripe = mods["httomolibgpu.prep.stripe"]
    stripe.remove_all_stripe = remove_all_stripe  # type: ignore[attr-defined]
    stripe.remove_stripe_ti = recorder("remove_stripe_ti", lambda d, **_: d * 2)  # type: ignore[attr-defined]
    corr = mods["httomolibgpu.misc.corr"]
    corr.median_filter = recorder("median_filter", lambda d, **_: d * 3)  # type: ignore[attr-defined]
    corr.remove_outlier = recorder("remove_outlier", lambda d, **_: d * 4)  # type: ignore[attr-defined]
    install_modules(monkeypatch, mods)
    monkeypatch.setattr(hgpu, "gpu_available", lambda: True)
    return calls


def block(shape: tuple[int, int, int] = (3, 4, 5)) -> np.ndarray[Any, np.dtype[np.float32]]:
    return RNG.uniform(10, 100, size=shape).astype(np.float32)


# ---------------------------------------------------------------------------------- xp


def test_array_module_is_numpy_without_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert xp.array_module(block()) is np
    assert xp.gpu_available() is False


def test_array_module_follows_the_input(monkeypatch: pytest.MonkeyPatch) -> None:
    cupy = fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    assert xp.array_module(block()) is np
    assert xp.array_module(FakeDeviceArray(block())) is cupy


@pytest.mark.parametrize(
    ("available", "expected"),
    [(True, True), (False, False), (RuntimeError("cudaErrorNoDevice"), False)],
)
def test_gpu_available(
    monkeypatch: pytest.MonkeyPatch, available: bool | Exception, expected: bool
) -> None:
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(available))
    assert xp.gpu_available() is expected


def test_require_gpu_without_cupy_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(StageError) as info:
        xp.require_gpu()
    assert str(info.value) == (
        "backend 'cupy' needs the gpu extra: pip install 'tomo-streamer[gpu]'"
    )


def test_require_gpu_without_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(False))
    with pytest.raises(StageError) as info:
        xp.to_device(block(), xp.TransferStats())
    assert str(info.value) == (
        "backend 'cupy': no CUDA device is available (cupy.is_available() is False); "
        "use backend 'numpy'"
    )


def test_transfers_are_counted_once_per_crossing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    stats = xp.TransferStats()
    host = block()
    dev = xp.to_device(host, stats)
    assert isinstance(dev, FakeDeviceArray)
    assert xp.to_device(dev, stats) is dev  # already there: no copy, not counted
    back = xp.to_host(dev, stats)
    assert xp.to_host(back, stats) is back  # already on the host
    np.testing.assert_array_equal(back, host)
    assert (stats.to_device, stats.to_host, stats.transfers) == (1, 1, 2)
    assert stats.bytes_to_device == stats.bytes_to_host == host.nbytes
    assert stats.seconds_to_device >= 0 and stats.seconds_to_host >= 0


# ----------------------------------------------------------------- httomolibgpu guard

ADAPTERS: dict[str, Callable[[], Any]] = {
    "normalize": lambda: hgpu.normalize(
        block(), darks=np.zeros((1, 4, 5), np.float32), flats=np.ones((2, 4, 5), np.float32)
    ),
    "median_filter": lambda: hgpu.median_filter(block()),
    "remove_outlier": lambda: hgpu.remove_outlier(block(), dif=1.0),
    "remove_stripe_ti": lambda: hgpu.remove_stripe_ti(block()),
    "remove_all_stripe": lambda: hgpu.remove_all_stripe(block()),
}


@pytest.mark.parametrize("method", sorted(ADAPTERS))
def test_without_a_device_httomolibgpu_is_never_imported(
    monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """The CPU-mode guard: no device → a clear error, and httomolibgpu stays unimported."""
    for name in [n for n in sys.modules if n.split(".", maxsplit=1)[0] == "httomolibgpu"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(hgpu, "gpu_available", lambda: False)
    real_import = importlib.import_module

    def guarded_import(name: str, package: str | None = None) -> Any:
        if name.split(".", maxsplit=1)[0] == "httomolibgpu":
            pytest.fail(f"{name} imported without a device")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", guarded_import)
    with pytest.raises(StageError) as info:
        ADAPTERS[method]()
    message = str(info.value)
    assert f"method {method!r}" in message
    assert "needs a CUDA device" in message and "CPU mode" in message
    assert "httomolibgpu" not in sys.modules


def test_real_gpu_available_false_without_cupy_blocks_adapters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same guard through the real gpu_available (cupy absent), not a patched one."""
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(StageError, match="'median_filter' needs a CUDA device"):
        hgpu.median_filter(block())


def test_cpu_mode_reported_by_httomolibgpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_httomolibgpu(monkeypatch, cupy_run=False)
    with pytest.raises(StageError, match="'CPU mode'"):
        hgpu.remove_outlier(block(), dif=1.0)
    assert calls == []


def test_missing_httomolibgpu_names_the_install_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hgpu, "gpu_available", lambda: True)
    monkeypatch.setitem(sys.modules, "httomolibgpu", None)
    with pytest.raises(StageError, match="pip install --no-deps httomolibgpu tomobar"):
        hgpu.median_filter(block())


# ---------------------------------------------------------------- httomolibgpu calls


def test_median_filter_and_remove_outlier_parameter_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = fake_httomolibgpu(monkeypatch)
    data = block()
    np.testing.assert_array_equal(hgpu.median_filter(data, size=5), data * 3)
    np.testing.assert_array_equal(hgpu.remove_outlier(data, dif=2.5, size=7), data * 4)
    assert [(c[0], c[2]) for c in calls] == [
        ("median_filter", {"args": (), "kernel_size": 5, "dif": 0.0}),
        ("remove_outlier", {"args": (), "kernel_size": 7, "dif": 2.5}),
    ]
    assert calls[0][1] is data  # projection layout and float32: passed as is


def test_median_filter_refuses_what_httomolibgpu_cannot_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = fake_httomolibgpu(monkeypatch)
    with pytest.raises(StageError, match="axis"):
        hgpu.median_filter(block(), axis=0)
    with pytest.raises(StageError, match="size"):
        hgpu.median_filter(block(), size=4)
    assert calls == []


def test_remove_stripe_ti_passes_beta(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_httomolibgpu(monkeypatch)
    data = block()
    np.testing.assert_array_equal(hgpu.remove_stripe_ti(data, beta=0.3), data * 2)
    assert calls[0][0] == "remove_stripe_ti" and calls[0][2]["beta"] == 0.3


def test_remove_all_stripe_transposes_sinograms_once_each_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = fake_httomolibgpu(monkeypatch)
    sino = block((2, 6, 5))  # (rows, angles, cols)
    original = sino.copy()
    out = hgpu.remove_all_stripe(sino, snr=2.0, la_size=31, sm_size=11, dim=2)
    name, received, kwargs = calls[0]
    assert name == "remove_all_stripe"
    assert received.shape == (6, 2, 5)  # (angles, rows, cols) for httomolibgpu
    np.testing.assert_array_equal(received, original.transpose(1, 0, 2))
    assert kwargs == dict(snr=2.0, la_size=31, sm_size=11, dim=2, normalize=True)
    assert out.shape == sino.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, original + 1)
    np.testing.assert_array_equal(sino, original)  # in-place update hit a copy only


def test_remove_all_stripe_single_row_is_still_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_httomolibgpu(monkeypatch)
    sino = block((1, 6, 5))  # its transpose is contiguous: must still be a copy
    original = sino.copy()
    hgpu.remove_all_stripe(sino)
    np.testing.assert_array_equal(sino, original)


def test_remove_all_stripe_refuses_other_drop_ratios(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_httomolibgpu(monkeypatch)
    with pytest.raises(StageError, match="drop_ratio"):
        hgpu.remove_all_stripe(block(), drop_ratio=0.3)
    assert calls == []


@pytest.mark.parametrize(
    ("old", "bound_name"), [(True, "cutoff"), (False, "upper_bound"), (False, "cutoff")]
)
@pytest.mark.parametrize("minus_log", [False, True])
def test_normalize_matches_the_numpy_stage(
    monkeypatch: pytest.MonkeyPatch, old: bool, bound_name: str, minus_log: bool
) -> None:
    calls = fake_httomolibgpu(monkeypatch, old_normalize=old, bound_name=bound_name)
    data = RNG.integers(100, 1000, size=(4, 3, 5)).astype(np.uint16)
    darks = RNG.integers(0, 50, size=(2, 3, 5)).astype(np.uint16)
    flats = RNG.integers(1000, 1200, size=(3, 3, 5)).astype(np.uint16)
    out = hgpu.normalize(
        data, darks=darks, flats=flats, cutoff=0.5, minus_log=minus_log, nonnegative=True,
    )
    expected = np_normalize.normalize(
        data, darks=darks, flats=flats, cutoff=0.5, minus_log=minus_log, nonnegative=True,
    )
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    name, received, kwargs = calls[0]
    assert received is data  # uint16 is accepted by httomolibgpu: no conversion
    if old:
        assert name == "normalize"
        assert kwargs == {"args": (flats, darks), "cutoff": 0.5, "minus_log": False,
                          "nonnegativity": False, "remove_nans": False}
    else:
        assert name == "dark_flat_field_correction"
        assert kwargs == {bound_name: 0.5}


def test_normalize_repairs_and_counts_instead_of_clamping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A zero count before -log is repaired from its row neighbours and counted, as the
    numpy stage does (it used to be clamped to the smallest float32: -log ≈ 87)."""
    fake_httomolibgpu(monkeypatch)
    data = RNG.integers(100, 1000, size=(3, 4, 6)).astype(np.uint16)
    data[1, 2, 3] = 0
    darks = np.zeros((1, 4, 6), np.uint16)
    flats = np.full((2, 4, 6), 1100, np.uint16)
    flats[:, 0, 5] = 0  # dead pixel: flat not above dark
    counts, expected_counts = RepairCounts(), RepairCounts()
    out = hgpu.normalize(data, darks=darks, flats=flats, minus_log=True, repairs=counts)
    expected = np_normalize.normalize(data, darks=darks, flats=flats, minus_log=True,
                                      repairs=expected_counts)
    assert counts.counts == expected_counts.counts == {"no_signal": 1 + 3}
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert float(out.max()) < 5.0


def test_normalize_without_darks_and_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_httomolibgpu(monkeypatch)
    data = block()
    flats = np.full((2, 4, 5), 200, np.float32)
    out = hgpu.normalize(data, darks=np.empty((0, 4, 5), np.float32), flats=flats)
    np.testing.assert_allclose(out, data / 200, rtol=1e-6)
    assert calls[0][2]["args"][1].shape == (1, 4, 5)  # 0 darks → one frame of zeros
    assert calls[0][2]["cutoff"] == hgpu.NO_CUTOFF
    with pytest.raises(StageError, match="averaging"):
        hgpu.normalize(data, darks=flats[:0], flats=flats, averaging="median")
    with pytest.raises(StageError, match="flat"):
        hgpu.normalize(data, darks=flats[:0], flats=flats[:0])


@pytest.mark.gpu
def test_remove_outlier_on_a_real_device() -> None:
    if not xp.gpu_available():
        pytest.skip("needs cupy and a CUDA device")
    import cupy

    data = np.ones((5, 6, 7), np.float32)
    data[2, 3, 3] = 100.0
    stats = xp.TransferStats()
    dev = xp.to_device(data, stats)
    out = hgpu.remove_outlier(dev, dif=10.0, size=3)
    assert cupy.get_array_module(out) is cupy  # stayed on the device
    host = xp.to_host(out, stats)
    assert host[2, 3, 3] == 1.0  # a real filter, not CPU mode's pass-through
    assert stats.transfers == 2


# ------------------------------------------------------------------------------- tomopy


def test_tomopy_absent_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tomopy", None)
    message = (
        "backend 'tomopy' needs TomoPy, which is not on PyPI: "
        "conda install -c conda-forge tomopy"
    )
    with pytest.raises(StageError) as info:
        tp.require_tomopy()
    assert str(info.value) == message
    with pytest.raises(StageError) as info:
        tp.remove_outlier(block(), dif=1.0)
    assert str(info.value) == message


def fake_tomopy(monkeypatch: pytest.MonkeyPatch) -> Calls:
    calls: Calls = []
    names = ["tomopy", "tomopy.prep", "tomopy.prep.normalize", "tomopy.prep.phase",
             "tomopy.prep.stripe", "tomopy.misc", "tomopy.misc.corr"]
    mods = {name: types.ModuleType(name) for name in names}

    def record(module: str, name: str, result: Callable[..., Any]) -> None:
        def fn(data: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append((name, data, {"args": args, **kwargs}))
            return result(data, *args, **kwargs)
        setattr(mods[module], name, fn)

    def tomopy_normalize(arr: Any, flat: Any, dark: Any, cutoff: float | None = None) -> Any:
        dark0 = dark.mean(axis=0, dtype=np.float32)
        denom = np.maximum(flat.mean(axis=0, dtype=np.float32) - dark0, np.float32(1e-6))
        out = (arr.astype(np.float32) - dark0) / denom
        return out if cutoff is None else np.minimum(out, np.float32(cutoff))

    record("tomopy.prep.normalize", "normalize", tomopy_normalize)
    record("tomopy.misc.corr", "remove_outlier", lambda d, *a, **k: d + 1)
    record("tomopy.prep.phase", "retrieve_phase", lambda d, **k: d + 2)
    record("tomopy.prep.stripe", "remove_stripe_fw", lambda d, **k: (d + 3).astype(np.float64))
    install_modules(monkeypatch, mods)
    return calls


def test_tomopy_adapters_call_the_right_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_tomopy(monkeypatch)
    data = block()
    np.testing.assert_array_equal(tp.remove_outlier(data, dif=5.0, size=5, axis=1), data + 1)
    np.testing.assert_array_equal(
        tp.paganin(data, pixel_size=2e-4, dist=30.0, energy=25.0, alpha=1e-2, pad=False),
        data + 2,
    )
    fw = tp.remove_stripe_fw(data, level=3, wname="sym4", sigma=1.5, pad=False)
    assert fw.dtype == np.float32 and fw.flags.c_contiguous
    np.testing.assert_array_equal(fw, data + 3)
    assert [(c[0], c[2]) for c in calls] == [
        ("remove_outlier", {"args": (5.0,), "size": 5, "axis": 1}),
        ("retrieve_phase", {"args": (), "pixel_size": 2e-4, "dist": 30.0, "energy": 25.0,
                            "alpha": 1e-2, "pad": False}),
        ("remove_stripe_fw", {"args": (), "level": 3, "wname": "sym4", "sigma": 1.5,
                              "pad": False}),
    ]


def test_tomopy_fw_on_a_sinogram_block_goes_in_tomopys_layout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage remove_stripe_fw takes sinogram blocks (rows, angles, cols); TomoPy's
    function takes (angles, rows, cols): the adapter transposes in and out."""
    calls = fake_tomopy(monkeypatch)
    sinograms = block((2, 6, 5))  # 2 rows, 6 angles
    out = REGISTRY["remove_stripe_fw"].run(sinograms, REGISTRY["remove_stripe_fw"].params(),
                                           backend="tomopy")
    assert calls[0][1].shape == (6, 2, 5) and calls[0][1].flags.c_contiguous
    np.testing.assert_array_equal(calls[0][1], sinograms.transpose(1, 0, 2))
    assert out.shape == sinograms.shape and out.flags.c_contiguous
    np.testing.assert_array_equal(out, sinograms + 3)


def test_tomopy_normalize_matches_the_numpy_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_tomopy(monkeypatch)
    data = RNG.integers(100, 1000, size=(4, 3, 5)).astype(np.uint16)
    darks = RNG.integers(0, 50, size=(2, 3, 5)).astype(np.uint16)
    flats = RNG.integers(1000, 1200, size=(3, 3, 5)).astype(np.uint16)
    kwargs: dict[str, Any] = dict(cutoff=0.9, minus_log=True, remove_nans=True)
    out = tp.normalize(data, darks=darks, flats=flats, **kwargs)
    expected = np_normalize.normalize(data, darks=darks, flats=flats, **kwargs)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert calls[0][0] == "normalize" and calls[0][2]["cutoff"] == 0.9
    with pytest.raises(StageError, match="averaging"):
        tp.normalize(data, darks=darks, flats=flats, averaging="median")
