"""The fused, threaded correction kernel against the whole-block NumPy passes it replaced.

The reference below is the code ``normalize`` ran before the kernel (one float32 pass per
step over the whole block, :func:`stages.prep.repair.repair_no_signal` on the whole block):
the kernel must give the same bits and the same repair counts, threaded or not, whatever
the tile size.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from stages.prep import kernel
from stages.prep import normalize as nm
from stages.prep.kernel import Correction, correct
from stages.prep.repair import NO_SIGNAL, RepairCounts, repair_no_signal

# 4 frames of 320 x 820: above kernel.THREAD_MIN_ELEMENTS, so two threads really run.
SHAPE = (4, 320, 820)


def whole_block_reference(
    block: npt.NDArray[Any], dark: npt.NDArray[np.float32] | None,
    denom: npt.NDArray[np.float32] | None, dead: npt.NDArray[np.bool_] | None,
    steps: Correction,
) -> tuple[npt.NDArray[np.float32], int]:
    """The pre-kernel implementation: each step a NumPy pass over the whole block."""
    out = np.array(block, dtype=np.float32, order="C", copy=True)
    if dark is not None and denom is not None:
        out -= dark
        out /= denom
    repaired = repair_no_signal(out, dead=dead, positive=steps.minus_log)
    if steps.cutoff is not None:
        np.minimum(out, np.float32(steps.cutoff), out=out)
    if steps.minus_log:
        np.log(out, out=out)
        np.negative(out, out=out)
    if steps.nonnegative:
        np.maximum(out, np.float32(0), out=out)
    if steps.remove_nans:
        np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return out, repaired


def raw_scan(seed: int = 0) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.float32],
                                     npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """uint16 frames with dead pixels (0 counts), a dead column and flats below darks."""
    rng = np.random.default_rng(seed)
    block = rng.integers(200, 4000, size=SHAPE).astype(np.uint16)
    block[0, 5, 7] = 0            # below the dark: transmission < 0
    block[1, :, 100] = 0          # a dead column in one frame
    block[2, 17, :] = 0           # a whole row without signal: filled with 1
    dark = (rng.random(SHAPE[1:], dtype=np.float32) * 20).astype(np.float32)
    flat = 4000 + rng.random(SHAPE[1:], dtype=np.float32) * 100
    flat[40, 300] = dark[40, 300]  # flat not above dark: a dead pixel in every frame
    flat[250, 3] = 0
    denom = flat - dark
    dead = ~(denom > 0)
    np.maximum(denom, np.float32(1e-6), out=denom)
    return block, dark, denom, dead


STEPS = [
    Correction(minus_log=True),
    Correction(),
    Correction(cutoff=0.9, minus_log=True, nonnegative=True, remove_nans=True),
    Correction(minus_log=False, nonnegative=True),
]


@pytest.mark.parametrize("steps", STEPS, ids=str)
@pytest.mark.parametrize("threads", [1, 2])
def test_same_bits_and_counts_as_the_whole_block_passes(steps: Correction, threads: int) -> None:
    block, dark, denom, dead = raw_scan()
    expected, expected_count = whole_block_reference(block, dark, denom, dead, steps)
    out, count = correct(block, dark, denom, dead, steps, threads=threads)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == SHAPE
    np.testing.assert_array_equal(out, expected)
    assert count == expected_count
    # the two dead-flat pixels of every frame; before -log also the column, row and pixel
    least = 2 * SHAPE[0] + (SHAPE[1] + SHAPE[2] + 1 if steps.minus_log else 0)
    assert count >= least


def test_one_divisor_per_frame_and_float_input_with_nan_and_inf() -> None:
    block, dark, denom, dead = raw_scan(1)
    values = block.astype(np.float64)
    values[3, 9, 11] = np.nan
    values[0, 200, 400] = np.inf
    values[2, 100, 0] = -np.inf
    per_frame = np.ascontiguousarray(np.broadcast_to(denom, SHAPE)) * np.float32(1.5)
    per_frame_dead = np.broadcast_to(dead, SHAPE).copy()
    per_frame_dead[1, 60, 61] = True
    steps = Correction(minus_log=True)
    expected, expected_count = whole_block_reference(values, dark, per_frame, per_frame_dead,
                                                     steps)
    out, count = correct(values, dark, per_frame, per_frame_dead, steps, threads=2)
    np.testing.assert_array_equal(out, expected)
    assert count == expected_count
    assert np.isfinite(out).all()


@pytest.mark.parametrize("tile", [1, 820 * 3, 1 << 20])
def test_any_tile_size_gives_the_same_result(tile: int, monkeypatch: pytest.MonkeyPatch) -> None:
    block, dark, denom, dead = raw_scan(2)
    steps = Correction(minus_log=True)
    expected, expected_count = whole_block_reference(block, dark, denom, dead, steps)
    monkeypatch.setattr(kernel, "TILE_ELEMENTS", tile)
    out, count = correct(block, dark, denom, dead, steps, threads=2)
    np.testing.assert_array_equal(out, expected)
    assert count == expected_count


def test_normalize_and_minus_log_stages_count_their_repairs() -> None:
    block, dark, _, _ = raw_scan(3)
    darks = np.stack([dark, dark])
    flats = np.full((2, *SHAPE[1:]), 4000, dtype=np.uint16)
    counts = RepairCounts()
    out = nm.normalize(block, darks=darks, flats=flats, minus_log=True, repairs=counts)
    denom = np.float32(4000) - dark
    expected, expected_count = whole_block_reference(block, dark, denom, None,
                                                     Correction(minus_log=True))
    np.testing.assert_array_equal(out, expected)
    assert counts.counts == {NO_SIGNAL: expected_count}

    transmission = np.exp(-out)
    transmission[0, 0, :10] = 0
    counts = RepairCounts()
    logged = nm.minus_log(transmission, repairs=counts)
    expected, _ = whole_block_reference(transmission, None, None, None,
                                        Correction(minus_log=True))
    np.testing.assert_array_equal(logged, expected)
    assert counts.counts == {NO_SIGNAL: 10}  # the first pass left every value finite


@pytest.mark.parametrize("case", ["inf_dark", "nan_denom", "tiny_denom", "huge_dark"])
def test_integer_counts_with_references_that_overflow_are_still_repaired(case: str) -> None:
    """Integer input lets the kernel check only each tile's minimum; references that make
    the quotient ±inf or NaN must turn that shortcut off (or be caught by it)."""
    block, dark, denom, _ = raw_scan(4)
    if case == "inf_dark":
        dark[10, 20] = -np.inf  # T = +inf there
    elif case == "nan_denom":
        denom[30, 40] = np.nan
    elif case == "tiny_denom":
        denom[50, 60] = np.float32(1e-38)  # 4000 / 1e-38 overflows float32
    else:
        dark[70, 80] = np.float32(-3e38)  # 4000 + 3e38 / 1 overflows after the division
        denom[70, 80] = np.float32(0.5)
    for steps in (Correction(minus_log=True), Correction()):
        with warnings.catch_warnings():  # the overflow is the point (all threads)
            warnings.simplefilter("ignore", RuntimeWarning)
            expected, expected_count = whole_block_reference(block, dark, denom, None, steps)
            out, count = correct(block, dark, denom, None, steps, threads=2)
        np.testing.assert_array_equal(out, expected)
        assert count == expected_count
        assert count >= SHAPE[0]  # the bad pixel of every frame at least
