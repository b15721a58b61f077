"""Choosing a backend in YAML routes the stage to it, with the guards in place."""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import pytest

from stages.registry import REGISTRY
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError
from streamer.pipeline import executor
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.executor import DeviceReferences, apply_steps


def steps(text: str, registry: Any = REGISTRY) -> Any:
    return parse_pipeline(text, registry, source="b.yaml").steps


BLOCK = np.full((2, 4, 6), 5.0, np.float32)
DARKS = np.zeros((1, 4, 6), np.float32)
FLATS = np.full((1, 4, 6), 10.0, np.float32)


def test_tomopy_backend_without_tomopy_names_the_missing_package(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tomopy", None)  # import tomopy -> ImportError
    chosen = steps("pipeline:\n  - method: remove_outlier\n    backend: tomopy\n"
                   "    parameters: {dif: 1}\n")
    with pytest.raises(StageError, match=r"needs TomoPy.*conda install -c conda-forge tomopy"
                       r".*b\.yaml:2"):
        apply_steps(chosen, BLOCK, darks=None, flats=None)


def test_tomopy_backend_gets_our_parameters_mapped(monkeypatch) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    fake = types.ModuleType("tomopy")

    def remove_outlier(arr: Any, dif: float, size: int = 3, axis: int = 0, **kw: Any) -> Any:
        calls.append(("remove_outlier", {"dif": dif, "size": size, "axis": axis}))
        return np.asarray(arr) * 2

    fake.remove_outlier = remove_outlier  # type: ignore[attr-defined]
    fake.misc = types.SimpleNamespace(corr=types.SimpleNamespace(remove_outlier=remove_outlier))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tomopy", fake)
    out = apply_steps(steps("pipeline:\n  - method: remove_outlier\n    backend: tomopy\n"
                            "    parameters: {dif: 7, size: 5}\n"), BLOCK, darks=None,
                      flats=None)
    assert calls and calls[0][1]["dif"] == 7 and calls[0][1]["size"] == 5
    np.testing.assert_array_equal(out, BLOCK * 2)


def test_httomolibgpu_backend_is_refused_without_a_device(monkeypatch) -> None:
    from stages.backends import httomolibgpu

    monkeypatch.setattr(httomolibgpu, "gpu_available", lambda: False)
    monkeypatch.setattr(executor, "to_device", lambda block, stats, backend: block)
    chosen = steps("pipeline:\n  - method: median_filter\n    backend: httomolibgpu\n"
                   "    parameters: {axis: null}\n")
    with pytest.raises(StageError, match="median_filter"):
        apply_steps(chosen, BLOCK, darks=None, flats=None)
    assert "httomolibgpu" not in sys.modules


class OnDevice:
    """A stand-in for a device array: records where data live."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.ndim = data.ndim  # as a cupy array has


class FlagParams(StageParams):
    gain: float = 1.0


def _device_stage(block: Any, *, gain: float = 1.0, darks: Any = None, flats: Any = None) -> Any:
    assert isinstance(block, OnDevice), "device stages must get device data"
    if flats is not None:
        assert isinstance(flats, OnDevice)
    return OnDevice(block.data * gain)


def _host_stage(block: Any, **params: Any) -> Any:
    assert isinstance(block, np.ndarray), "host stages must get host data"
    return block + 1


FAKE = {
    "gpu_a": StageSpec("gpu_a", _host_stage, Pattern.PROJECTION, FlagParams, scaled_memory(2),
                       "a", needs_references=True, adapters={"httomolibgpu": _device_stage}),
    "gpu_b": StageSpec("gpu_b", _host_stage, Pattern.PROJECTION, FlagParams, scaled_memory(2),
                       "b", adapters={"httomolibgpu": _device_stage}),
    "host": StageSpec("host", _host_stage, Pattern.PROJECTION, FlagParams, scaled_memory(2),
                      "h"),
}


def test_consecutive_device_stages_move_data_once_each_way(monkeypatch) -> None:
    def up(block: Any, stats: Any, backend: str) -> Any:
        stats.to_device += 1
        return OnDevice(np.asarray(block))

    def down(block: Any, stats: Any) -> Any:
        stats.to_host += 1
        return block.data

    monkeypatch.setattr(executor, "to_device", up)
    monkeypatch.setattr(executor, "to_host", down)
    chosen = steps(
        "pipeline:\n"
        "  - {method: gpu_a, backend: httomolibgpu, parameters: {gain: 2}}\n"
        "  - {method: gpu_b, backend: httomolibgpu, parameters: {gain: 3}}\n"
        "  - {method: host}\n", FAKE)
    stats = executor.TransferStats()
    cache = DeviceReferences()
    for _ in range(3):  # three blocks of one scan
        out = apply_steps(chosen, BLOCK, darks=DARKS, flats=FLATS, transfers=stats,
                          device_references=cache)
        np.testing.assert_array_equal(out, BLOCK * 6 + 1)
    # per block: one upload of the data, one download; references: once per scan (2)
    assert stats.to_device == 3 + 2 and stats.to_host == 3


def test_unsupported_parameter_on_a_backend_is_refused_not_ignored(monkeypatch) -> None:
    from stages.backends import httomolibgpu

    monkeypatch.setattr(httomolibgpu, "gpu_available", lambda: True)
    spec = REGISTRY["remove_all_stripe"]
    params = spec.params.model_validate({"drop_ratio": 0.1})
    # median_filter's httomolibgpu adapter has no `mode`: a non-default one must fail
    median = REGISTRY["median_filter"]
    with pytest.raises(StageError, match="parameter mode='nearest' is not supported"):
        median.run(BLOCK, median.params.model_validate({"mode": "nearest", "axis": None}),
                   backend="httomolibgpu")
    assert params.drop_ratio == 0.1
