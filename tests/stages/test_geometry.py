"""circular_mask, downsample/upsample (TomoPy references), binning and crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.misc.geometry import (
    SPECS,
    CropParams,
    SampleParams,
    binning,
    circle_inside,
    circular_mask,
    crop,
    downsample,
    upsample,
)
from streamer.errors import StageError


def _data(shared_data: Path, name: str) -> np.ndarray:
    loaded: np.ndarray = np.load(shared_data / "tomopy_test_data" / f"{name}.npy")
    return loaded


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_circ_mask_matches_tomopy(shared_data: Path, axis: int) -> None:
    out = circular_mask(_data(shared_data, "obj"), axis=axis)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_almost_equal(out, _data(shared_data, f"circ_mask_{axis}"), 6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_down_and_upsample_match_tomopy(shared_data: Path, axis: int) -> None:
    obj = _data(shared_data, "obj")
    down, up = downsample(obj, axis=axis), upsample(obj, axis=axis)
    assert down.dtype == up.dtype == np.float32
    np.testing.assert_array_almost_equal(down, _data(shared_data, f"downsample_{axis}"), 6)
    np.testing.assert_array_almost_equal(up, _data(shared_data, f"upsample_{axis}"), 6)


def test_circle_rule_is_strict_and_centred() -> None:
    inside = circle_inside(4, 4)  # centres at ±0.5, ±1.5; radius 2: corners (r²=4.5) out
    assert inside.sum() == 12 and not inside[0, 0] and inside[0, 1]
    assert np.array_equal(inside, inside[::-1]) and np.array_equal(inside, inside[:, ::-1])
    masked = circular_mask(np.ones((1, 4, 4)), value=-1.0)
    assert np.array_equal(masked[0] == -1.0, ~inside)


def test_downsample_averages_and_drops_remainder() -> None:
    block = np.arange(2 * 3 * 9, dtype=np.float64).reshape(2, 3, 9)
    out = downsample(block, level=2, axis=2)
    assert out.shape == (2, 3, 2)
    np.testing.assert_allclose(out, block[:, :, :8].reshape(2, 3, 2, 4).mean(axis=3))
    np.testing.assert_array_equal(upsample(out, level=1, axis=1)[:, ::2], out)
    assert upsample(block, level=0, axis=0).shape == block.shape


def test_binning_means_and_crops() -> None:
    block = np.arange(2 * 5 * 7, dtype=np.uint16).reshape(2, 5, 7)
    out = binning(block, factor_rows=2, factor_cols=3)
    assert out.shape == (2, 2, 2) and out.dtype == np.float32
    expected = block[:, :4, :6].astype(float).reshape(2, 2, 2, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(out, expected)


def test_crop_keeps_dtype_and_region() -> None:
    block = np.arange(2 * 6 * 8, dtype=np.uint16).reshape(2, 6, 8)
    out = crop(block, rows=(1, 4), cols=(2, 8))
    assert out.dtype == np.uint16 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, block[:, 1:4, 2:8])
    assert np.shares_memory(crop(block), block) is False


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda b: crop(b, rows=(0, 7)), r"rows: expected .* <= 6, got \(0, 7\)"),
        (lambda b: crop(b, cols=(3, 3)), r"cols: expected .*<= 8"),
        (lambda b: crop(b[0]), "3-D"),
        (lambda b: circular_mask(b, axis=3), "axis"),
        (lambda b: circular_mask(b, ratio=0.0), "ratio"),
        (lambda b: downsample(b, level=4, axis=1), r"2\*\*level <= block.shape\[1\] = 6"),
        (lambda b: upsample(b, level=-1), "level"),
        (lambda b: binning(b, factor_rows=7), r"factor_rows: expected 1..6, got 7"),
        (lambda b: binning(b.astype(bool)), "block.dtype"),
    ],
)
def test_errors(call: object, match: str) -> None:
    block = np.ones((2, 6, 8), dtype=np.float32)
    with pytest.raises(StageError, match=match):
        call(block)  # type: ignore[operator]


def test_params_and_memory() -> None:
    with pytest.raises(ValueError, match="start < stop"):
        CropParams(rows=(4, 2))
    specs = {spec.name: spec for spec in SPECS}
    shape, f32 = (2, 4, 4), np.dtype(np.float32)
    up = specs["upsample"].memory
    assert up(shape, f32, SampleParams(level=2)) > up(shape, f32, SampleParams(level=1))
    assert specs["crop"].memory(shape, f32, CropParams()) == 2 * 32 * 4
