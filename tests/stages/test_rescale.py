"""rescale: exact integer outputs on synthetic data; the stage takes a fixed window only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from stages.misc.rescale import RescaleParams, rescale
from streamer.cli import main
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
    out = rescale(block, range_percent=(10, 90))  # lo = 11, hi = 19
    np.testing.assert_array_equal(out[0, 0], [0, 0, 32, 64, 96, 128, 159, 191, 223, 255, 255])


@pytest.mark.parametrize("key", ["percentiles", "range_percent", "perc_range_min",
                                 "perc_range_max"])
def test_the_stage_refuses_a_window_from_the_blocks_statistics(key: str) -> None:
    """In a pipeline the stage sees one block at a time: a window from its statistics
    would depend on the block size (ADR 0023), so only a fixed window is accepted."""
    value = (1.0, 99.0) if key in ("percentiles", "range_percent") else 10.0
    with pytest.raises(ValidationError, match=rf"{key}: a window from each block's "
                       r"statistics would depend on the block size.*calculate_stats"):
        RescaleParams.model_validate({key: value, "window": (0.0, 1.0)})


def test_the_stage_takes_a_fixed_window_and_httomolib_bits() -> None:
    params = RescaleParams.model_validate({"window": (-1.0, 3.0), "bits": 16})
    assert params.window == (-1.0, 3.0) and params.dtype == "uint16"
    assert dict(RescaleParams(window=(0.0, 1.0))) == {"dtype": "uint8", "window": (0.0, 1.0)}
    with pytest.raises(ValidationError, match="window: expected a fixed"):
        RescaleParams.model_validate({"dtype": "uint16"})


def test_constant_block_and_integer_input() -> None:
    assert not rescale(np.full((2, 2, 2), 3.0)).any()
    out = rescale(np.array([[[0, 1000]]], dtype=np.uint16), window=(0.0, 1000.0))
    np.testing.assert_array_equal(out, [[[0, 255]]])


@pytest.mark.parametrize(
    "params",
    [
        {"bits": 32, "window": (0.0, 1.0)},
        {"bits": 8, "dtype": "uint16", "window": (0.0, 1.0)},
        {"percentiles": (90, 10), "window": (0.0, 1.0)},
        {"window": (1.0, 1.0)},
        {"window": None},
        {"dtype": "int8", "window": (0.0, 1.0)},
        {"colour": 1, "window": (0.0, 1.0)},
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


def test_check_refuses_block_statistics_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``check`` (and ``recon``, which parses the same way) refuses the stage with a window
    from the block's statistics: one ``error:`` line, exit 2; a fixed window passes."""
    pipeline = tmp_path / "p.yaml"
    head = "pipeline:\n  - method: normalize\n  - method: fbp\n    parameters: {center: 7.5}\n"
    pipeline.write_text(head + "  - method: rescale\n    parameters: {percentiles: [1, 99]}\n")
    assert main(["check", str(pipeline)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "percentiles: a window from each block's statistics" in err
    pipeline.write_text(head + "  - method: rescale\n    parameters: {window: [0, 2]}\n")
    assert main(["check", str(pipeline), "--frame", "4x16", "--projections", "20"]) == 0
