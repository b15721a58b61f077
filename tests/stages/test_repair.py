"""Repair of pixels without signal (stages.prep.repair) and its per-scan counts."""

from __future__ import annotations

import numpy as np
import pytest

from stages.prep import repair
from stages.prep.repair import (
    WARN_FRACTION,
    RepairCounts,
    fill_from_row_neighbours,
    repair_no_signal,
    repair_nonfinite,
)


def _reference(line: np.ndarray, bad: np.ndarray, fill: float) -> np.ndarray:
    """np.interp along the row: the straight line between the nearest valid pixels,
    the nearest valid value beyond the ends, ``fill`` for a row without any."""
    good = ~bad
    if not good.any():
        return np.full(line.shape, fill)
    return np.interp(np.arange(line.size), np.flatnonzero(good), line[good])


def test_interpolates_along_the_row_between_the_nearest_valid_pixels() -> None:
    data = np.array([[1.0, np.nan, np.nan, 4.0, 0.0, 8.0]], dtype=np.float32)
    bad = ~np.isfinite(data)
    bad[0, 4] = True
    assert fill_from_row_neighbours(data, bad, fill=-1.0) == 3
    np.testing.assert_allclose(data, [[1.0, 2.0, 3.0, 4.0, 6.0, 8.0]])


def test_row_ends_take_the_nearest_value_and_empty_rows_the_fill() -> None:
    data = np.array([[[0.0, 0.0, 5.0, 7.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]]], np.float32)
    assert fill_from_row_neighbours(data, data == 0, fill=1.0) == 8
    np.testing.assert_array_equal(data[0, 0], [5.0, 5.0, 5.0, 7.0, 7.0])
    np.testing.assert_array_equal(data[0, 1], np.ones(5))


def test_many_rows_in_chunks_match_np_interp(monkeypatch: pytest.MonkeyPatch) -> None:
    # A dead column and random dead pixels in a block of 40 x 7 rows; a small chunk
    # forces the rows with bad pixels through several chunks.
    monkeypatch.setattr(repair, "_CHUNK_ELEMENTS", 64)
    rng = np.random.default_rng(3)
    data = rng.uniform(0.1, 1.0, size=(40, 7, 33)).astype(np.float32)
    bad = rng.random(data.shape) < 0.05
    bad[:, :, 17] = True
    bad[3, 2, :] = True  # a row with nothing valid
    expected = np.stack([_reference(line, mark, 0.5) for line, mark
                         in zip(data.reshape(-1, 33), bad.reshape(-1, 33), strict=True)])
    untouched = data[~bad].copy()
    assert fill_from_row_neighbours(data, bad, fill=0.5) == int(bad.sum())
    np.testing.assert_allclose(data.reshape(-1, 33), expected, rtol=1e-6)
    np.testing.assert_array_equal(data[~bad], untouched)  # valid pixels unchanged


def test_a_non_contiguous_view_is_repaired_in_place() -> None:
    data = np.ones((4, 6), dtype=np.float32)
    view = data[:, ::2]
    view[1, 1] = np.nan
    assert fill_from_row_neighbours(view, ~np.isfinite(view), fill=0.0) == 1
    assert np.isfinite(data).all()


def test_repair_nonfinite_copies_only_when_needed() -> None:
    counts = np.arange(12, dtype=np.uint16).reshape(3, 4)
    same, none = repair_nonfinite(counts)
    assert same is counts and none == 0
    clean = np.ones((2, 3), dtype=np.float32)
    assert repair_nonfinite(clean)[0] is clean
    dirty = np.array([[1.0, np.inf, 3.0], [-np.inf, 2.0, np.nan]], dtype=np.float32)
    fixed, count = repair_nonfinite(dirty)
    assert count == 3 and not np.isfinite(dirty).all()  # the input is left alone
    np.testing.assert_array_equal(fixed, [[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]])


def test_no_signal_means_not_positive_before_log_and_dead_flats_always() -> None:
    t = np.array([[[0.5, -0.1, 0.7, np.nan]]], dtype=np.float32)
    dead = np.array([[False, False, True, False]])
    kept = t.copy()
    assert repair_no_signal(kept, dead=dead, positive=False) == 2  # NaN and the dead pixel
    np.testing.assert_allclose(kept, [[[0.5, -0.1, -0.1, -0.1]]])
    logged = t.copy()
    assert repair_no_signal(logged, dead=dead, positive=True) == 3
    np.testing.assert_allclose(logged, [[[0.5, 0.5, 0.5, 0.5]]])


def test_counts_fraction_warning_and_merge() -> None:
    counts = RepairCounts()
    counts.add("no_signal", 0)
    assert counts.counts == {} and counts.fraction == 0.0 and counts.warning() is None
    counts.pixels = 10_000
    counts.add("no_signal", 60)
    counts.add("nonfinite_input", 40)
    assert counts.total == 100 and counts.fraction == pytest.approx(WARN_FRACTION)
    assert counts.warning() is None  # at the threshold: no warning
    counts.merge({"no_signal": 1}, 0)
    warning = counts.warning()
    assert warning is not None
    assert "101 of 10000" in warning and "1.01 %" in warning and "1 % warning" in warning
    assert counts.as_dict()["counts"] == {"no_signal": 61, "nonfinite_input": 40}
    assert counts.as_metadata() == {"repaired_no_signal": 61, "repaired_nonfinite_input": 40,
                                    "repaired_total": 101, "repaired_fraction": 0.0101}
