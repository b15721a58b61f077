"""The kernel's own reference averaging (``correct_raw``, ``mean_of_frames``) against the
whole-frame NumPy code ``normalize`` ran before: the same bits, the same repair counts,
the same verdict on flats without beam, threaded or not, whatever the tile size."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from stages.prep import kernel
from stages.prep import normalize as nm
from stages.prep.kernel import Correction, RawReferences, correct, correct_raw, mean_of_frames
from stages.prep.repair import NO_SIGNAL, RepairCounts
from streamer.errors import StageError

# 4 frames of 320 x 820: above kernel.THREAD_MIN_ELEMENTS, so two threads really run.
SHAPE = (4, 320, 820)


def same_bits(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> bool:
    """Equal as stored (NaN payloads and the sign of zero included)."""
    return a.shape == b.shape and a.dtype == b.dtype and bool(
        np.array_equal(a.view(np.uint32), b.view(np.uint32)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16, np.int32])
@pytest.mark.parametrize("frames", [1, 2, 3, 8, 9, 13])
def test_mean_of_frames_is_numpys_float32_mean_bit_for_bit(dtype: Any, frames: int) -> None:
    rng = np.random.default_rng(frames)
    stack = (rng.random((frames, 31, 47)) * 6e3 - (0 if dtype == np.uint16 else 3e3))
    stack = stack.astype(dtype)
    if np.issubdtype(dtype, np.floating):
        stack[0, 0, 0] = -0.0             # 0 + (-0.0) is +0.0 in NumPy's reduction
        stack[:, 1, 1] = -0.0
        stack[-1, 2, 2] = np.nan
        stack[0, 3, 3] = np.inf
        stack[:, 4, 4] = 1e38             # overflows float32 when summed
        stack[:, 5, 5] = 1e-44            # subnormal float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the overflow is the point
        expected = np.mean(stack, axis=0, dtype=np.float32)
        got = mean_of_frames(stack)
        band = mean_of_frames(stack[:, 7:20])
    assert same_bits(got, expected)
    assert same_bits(band, expected[7:20])  # a band of the mean is the mean of the band


def test_mean_of_frames_refuses_an_empty_stack() -> None:
    with pytest.raises(ValueError, match="at least 1 frame"):
        mean_of_frames(np.zeros((0, 3, 3), dtype=np.float32))


def whole_frame_references(
    darks: npt.NDArray[Any], flats: npt.NDArray[Any], averaging: str, eps: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.bool_], int]:
    """What ``normalize`` computed before handing the kernel its references."""
    dark = (np.zeros(flats.shape[1:], dtype=np.float32) if darks.shape[0] == 0
            else nm._average(darks, averaging))
    flat = nm._average(flats, averaging)
    signal = flat - dark
    no_signal = int(np.count_nonzero(signal <= 0))
    dead = ~(signal > 0)
    return dark, np.maximum(signal, np.float32(eps)), dead, no_signal


def raw_references(seed: int, dtype: Any, darks: int = 3,
                   flats: int = 5) -> tuple[npt.NDArray[Any], ...]:
    """A block with dead pixels and references with a flat below its dark and a NaN."""
    rng = np.random.default_rng(seed)
    block = rng.integers(200, 4000, size=SHAPE).astype(dtype)
    block[0, 5, 7] = 0
    block[1, :, 100] = 0
    dark_frames = (rng.random((darks, *SHAPE[1:])) * 20).astype(dtype)
    flat_frames = (4000 + rng.random((flats, *SHAPE[1:])) * 100).astype(dtype)
    flat_frames[:, 40, 300] = 0                      # flat below dark
    if np.issubdtype(dtype, np.floating):
        flat_frames[0, 250, 3] = np.nan              # a NaN divisor
        block[2, 9, 11] = np.inf
    return block, dark_frames, flat_frames


STEPS = [Correction(minus_log=True), Correction(),
         Correction(cutoff=0.9, minus_log=True, nonnegative=True, remove_nans=True)]


@pytest.mark.parametrize("steps", STEPS, ids=str)
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
@pytest.mark.parametrize("averaging", ["mean", "median"])
@pytest.mark.parametrize("threads", [1, 2])
def test_correct_raw_equals_correct_with_whole_frame_references(
        steps: Correction, dtype: Any, averaging: str, threads: int) -> None:
    block, darks, flats = raw_references(0, dtype)

    def average(stack: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        return mean_of_frames(stack) if averaging == "mean" else nm._average(stack, "median")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # inf - inf in the reference path
        dark, denom, dead, no_signal = whole_frame_references(darks, flats, averaging, 1e-6)
        expected, expected_count = correct(block, dark, denom, dead, steps, threads=threads)
        got = correct_raw(block, RawReferences(darks, flats, average, 1e-6), steps,
                          threads=threads)
    assert same_bits(got.out, expected)
    assert got.repaired == expected_count > 0
    assert got.flat_not_above_dark == no_signal >= 1


@pytest.mark.parametrize("tile", [1, 820 * 3, 1 << 15, 1 << 22])
@pytest.mark.parametrize("shape", [SHAPE, (300, 7, 500), (2, 1000, 600)])
def test_any_tile_size_and_frame_shape_gives_the_same_result(
        tile: int, shape: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles of a few rows, of several small frames, of whole frames; bands that split
    a frame or not: the cuts change nothing."""
    rng = np.random.default_rng(1)
    block = rng.integers(0, 4000, size=shape).astype(np.uint16)
    darks = rng.integers(0, 30, size=(2, *shape[1:])).astype(np.uint16)
    flats = rng.integers(3000, 4100, size=(3, *shape[1:])).astype(np.uint16)
    flats[:, 3, 3] = 0
    steps = Correction(minus_log=True)
    dark, denom, dead, _ = whole_frame_references(darks, flats, "mean", 1e-6)
    expected, expected_count = correct(block, dark, denom, dead, steps, threads=1)
    monkeypatch.setattr(kernel, "TILE_ELEMENTS", tile)
    got = correct_raw(block, RawReferences(darks, flats, mean_of_frames, 1e-6), steps,
                      threads=2)
    assert same_bits(got.out, expected)
    assert got.repaired == expected_count


def test_without_darks_the_flat_is_the_divisor() -> None:
    block, _, flats = raw_references(2, np.float32)
    no_darks = np.zeros((0, *SHAPE[1:]), dtype=np.float32)
    steps = Correction(minus_log=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        dark, denom, dead, _ = whole_frame_references(no_darks, flats, "mean", 1e-6)
        expected, count = correct(block, dark, denom, dead, steps, threads=2)
        got = correct_raw(block, RawReferences(no_darks, flats, mean_of_frames, 1e-6), steps,
                          threads=2)
    assert same_bits(got.out, expected)
    assert got.repaired == count


def test_normalize_on_the_host_is_the_whole_frame_computation() -> None:
    """The stage through the registry path: references averaged by the kernel, repairs
    counted, flats without beam refused after the correction with the same message."""
    block, darks, flats = raw_references(3, np.uint16)
    counts = RepairCounts()
    out = nm.normalize(block, darks=darks, flats=flats, minus_log=True, repairs=counts)
    dark, denom, dead, _ = whole_frame_references(darks, flats, "mean", 1e-6)
    expected, expected_count = correct(block, dark, denom, dead, Correction(minus_log=True))
    assert same_bits(out, expected)
    assert counts.counts == {NO_SIGNAL: expected_count}
    half_dead = flats.copy()
    half_dead[:, : SHAPE[1] // 2 + 1] = 0
    with pytest.raises(StageError, match=r"got <= 0 in 50 % of them"):
        nm.normalize(block, darks=darks, flats=half_dead)


def test_every_unit_is_done_once_from_both_ends() -> None:
    """The calling thread takes units from the front, helpers from the back: each unit
    exactly once, and the repairs of all of them summed."""
    units = [(index, 0, 1) for index in range(37)]
    seen: list[int] = []

    def work(unit: tuple[int, int, int]) -> int:
        seen.append(unit[0])  # list.append is atomic under the GIL
        return unit[0]

    total = kernel._WorkQueue(units, work).run_with_helpers(3)
    assert sorted(seen) == list(range(37))
    assert total == sum(range(37))


def test_an_error_in_a_helper_reaches_the_caller() -> None:
    def work(unit: tuple[int, int, int]) -> int:
        if unit[0] == 5:
            raise MemoryError("unit 5")
        return 0

    with pytest.raises(MemoryError, match="unit 5"):
        kernel._WorkQueue([(index, 0, 1) for index in range(8)], work).run_with_helpers(1)


def test_reference_stacks_of_the_wrong_shape_are_refused() -> None:
    block = np.zeros((2, 4, 5), dtype=np.uint16)
    flats = np.ones((1, 4, 5), dtype=np.uint16)
    with pytest.raises(ValueError, match=r"darks: expected \(n, 4, 5\), got \(1, 4, 6\)"):
        correct_raw(block, RawReferences(np.zeros((1, 4, 6)), flats, mean_of_frames, 1e-6),
                    Correction())
    with pytest.raises(ValueError, match="flats: expected at least 1 frame"):
        correct_raw(block, RawReferences(flats, flats[:0], mean_of_frames, 1e-6),
                    Correction())


def test_helpers_write_only_units_whose_pages_were_touched() -> None:
    """The calling thread touches every unit from the back before a helper may take it;
    then takes its own from the front. Every unit is done once, after its touch."""
    units = [(index, 0, 1) for index in range(23)]
    touched: set[int] = set()
    done_before_touch: list[int] = []
    done: list[int] = []

    def touch(unit: tuple[int, int, int]) -> None:
        touched.add(unit[0])

    def work(unit: tuple[int, int, int]) -> int:
        if unit[0] not in touched:
            done_before_touch.append(unit[0])
        done.append(unit[0])
        return 1

    assert kernel._WorkQueue(units, work).run_with_helpers(1, touch=touch) == 23
    assert sorted(done) == list(range(23))
    assert touched == set(range(23)) and not done_before_touch


def test_an_error_while_touching_reaches_the_caller_and_stops_the_helpers() -> None:
    done: list[int] = []

    def touch(unit: tuple[int, int, int]) -> None:
        if unit[0] == 3:
            raise MemoryError("touching unit 3")

    def work(unit: tuple[int, int, int]) -> int:
        done.append(unit[0])
        return 0

    with pytest.raises(MemoryError, match="touching unit 3"):
        kernel._WorkQueue([(index, 0, 1) for index in range(6)], work).run_with_helpers(
            1, touch=touch)
    assert 3 not in done and 0 not in done  # never touched, never written
