"""The band bookkeeping of the reslice, without any messaging."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.exchange.sinobuffer import SinogramBand, columns_of, progressions


@pytest.mark.parametrize(("indices", "cuts"), [
    ([], [0]), ([4], [0, 1]), ([0, 1, 2, 3, 8, 9, 10, 11], [0, 4, 8]),
    ([1, 5, 9, 13], [0, 4]), ([3, 2, 1], [0, 1, 2, 3]), ([0, 2, 3, 4], [0, 2, 4]),
])
def test_progressions_cut_runs_of_even_steps(indices: list[int], cuts: list[int]) -> None:
    assert progressions(np.array(indices, dtype=np.int64)) == cuts


@pytest.mark.parametrize(("slots", "columns"), [
    ([], None), ([-1], None), ([3], slice(3, 4)), ([2, 3, 4], slice(2, 5, 1)),
    ([1, 4, 7], slice(1, 8, 3)), ([1, 2, 4], None), ([4, 3], None), ([0, -1], None),
])
def test_columns_of_evenly_spaced_slots(slots: list[int], columns: slice | None) -> None:
    assert columns_of(np.array(slots, dtype=np.int64)) == columns


def test_frames_stored_out_of_order_come_out_sorted_and_compact() -> None:
    rng = np.random.default_rng(3)
    frames = rng.random((10, 4, 5), dtype=np.float32)  # (index, band rows, cols)
    band = SinogramBand((2, 6), 5, projections=12)  # room for 12, 10 come
    for part in np.array_split(rng.permutation(10), 4):
        slots = band.claim(part, (part * 1.5).astype(np.float64))
        band.store(slots, frames[part])
    assembled = band.assemble()
    np.testing.assert_array_equal(assembled.indices, np.arange(10))
    np.testing.assert_array_equal(assembled.angles_deg, np.arange(10) * 1.5)
    np.testing.assert_array_equal(assembled.sinograms, frames.transpose(1, 0, 2))
    assert assembled.sinograms.flags.c_contiguous and assembled.moved_bytes > 0
    assert np.shares_memory(assembled.sinograms, band.buffer)  # sorted in place
    assert band.assemble() is assembled and band.received == 10


def test_frames_with_a_known_first_index_need_no_sorting() -> None:
    frames = np.random.default_rng(4).random((6, 3, 2), dtype=np.float32)
    band = SinogramBand((0, 3), 2, projections=6, frames=9, first_index=3)
    for part in ([8, 4], [5, 6, 3, 7]):
        indices = np.array(part)
        slots = band.claim(indices, indices * 1.0)
        np.testing.assert_array_equal(slots, indices - 3)  # each in its home column
        band.store(slots, frames[indices - 3])
    assembled = band.assemble()
    assert assembled.moved_bytes == 0
    np.testing.assert_array_equal(assembled.sinograms, frames.transpose(1, 0, 2))


def test_a_full_band_keeps_the_smallest_indices() -> None:
    band = SinogramBand((0, 1), 1, projections=3)
    first = np.array([5, 7, 6])
    band.store(band.claim(first, first * 1.0), first.reshape(3, 1, 1).astype(np.float32))
    newcomer = np.array([2, 9, 7])
    assert band.would_evict(newcomer, newcomer * 1.0)
    slots = band.claim(newcomer, newcomer * 1.0)
    assert slots[1] == slots[2] == -1  # 9 is too large, 7 a duplicate
    band.store(slots, newcomer.reshape(3, 1, 1).astype(np.float32))
    assembled = band.assemble()
    np.testing.assert_array_equal(assembled.indices, [2, 5, 6])
    np.testing.assert_array_equal(assembled.sinograms.ravel(), [2, 5, 6])
    assert band.rejected["over_capacity"] == 2 and band.duplicates == 1
    assert band.received == 3
