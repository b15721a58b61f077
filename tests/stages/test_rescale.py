"""rescale: exact integer outputs on synthetic data, httomolib parameter mapping."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from stages.misc.rescale import RescaleParams, rescale
from streamer.errors import StageError


def test_window_maps_linearly_with_clipping_and_nan() -> None:
    block = np.array([[[-1.0, 0.0, 0.5, 1.0, 2.0, np.nan, np.inf, -np.inf]]], dtype=np.float32)
    out = rescale(block, window=(0.0, 1.0))
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out[0, 0], [0, 0, 128, 255, 255, 0, 255, 0])
    out16 = rescale(block, dtype="uint16", window=(0.0, 1.0))
    np.testing.assert_array_equal(out16[0, 0], [0, 0, 32768, 65535, 65535, 0, 65535, 0])


def test_percentiles_of_finite_values() -> None:
    block = np.arange(101, dtype=np.float32).reshape(1, 1, 101)
    block[0, 0, 50] = np.nan  # ignored by the percentiles
    out = rescale(block, percentiles=(10.0, 90.0))
    lo, hi = np.percentile(block[np.isfinite(block)], (10.0, 90.0))
    expected = np.rint(np.clip((block - lo) / (hi - lo), 0, 1) * 255)
    expected[0, 0, 50] = 0
    np.testing.assert_array_equal(out, expected.astype(np.uint8))


def test_range_percent_is_httomolib_rule() -> None:
    block = np.linspace(10.0, 20.0, 11, dtype=np.float32).reshape(1, 1, 11)
    params = RescaleParams.model_validate({"perc_range_min": 10, "perc_range_max": 90})
    assert params.range_percent == (10, 90) and params.dtype == "uint8"
    out = rescale(block, **dict(params))  # lo = 11, hi = 19
    np.testing.assert_array_equal(out[0, 0], [0, 0, 32, 64, 96, 128, 159, 191, 223, 255, 255])
    assert RescaleParams.model_validate({"bits": 16}).range_percent == (0.0, 100.0)


def test_constant_block_and_integer_input() -> None:
    assert not rescale(np.full((2, 2, 2), 3.0)).any()
    out = rescale(np.array([[[0, 1000]]], dtype=np.uint16), window=(0.0, 1000.0))
    np.testing.assert_array_equal(out, [[[0, 255]]])


@pytest.mark.parametrize(
    "params",
    [
        {"bits": 32},
        {"bits": 8, "dtype": "uint16"},
        {"percentiles": (90, 10)},
        {"window": (1.0, 1.0)},
        {"percentiles": None},
        {"dtype": "int8"},
        {"colour": 1},
    ],
)
def test_bad_params(params: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RescaleParams.model_validate(params)


def test_stage_errors() -> None:
    block = np.zeros((2, 2, 2), dtype=np.float32)
    with pytest.raises(StageError, match="3-D"):
        rescale(block[0])
    with pytest.raises(StageError, match="window"):
        rescale(block, window=(2.0, 1.0))
    with pytest.raises(StageError, match="dtype"):
        rescale(block, dtype="uint32")  # type: ignore[arg-type]
    with pytest.raises(StageError, match="window"):
        rescale(block, percentiles=None)
