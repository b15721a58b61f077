"""The finder-rows messages (R ranks, a CoR finder tapped where it stands): a rank's
share round-trips, a malformed one is a one-line error naming the rank before its bytes
are viewed, and the owner joins every rank's frames in frame order."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest

from streamer.errors import ExchangeError, StreamerError
from streamer.pipeline.finder_tap import TappedRows
from streamer.run.finder_rows import (
    finder_rows_message,
    join_finder_rows,
    parse_finder_rows,
    rows_tapped,
)


def _tapped(indices: list[int], seed: int) -> TappedRows:
    tapped = TappedRows((3, 5), (8, 6))
    frames = np.random.default_rng(seed).random((len(indices), 8, 6)).astype(np.float32)
    tapped.add(np.array(indices), np.array(indices, dtype=np.float64) * 2.0, frames)
    return tapped


def _round_trip(tapped: TappedRows | None, source: int = 1) -> Any:
    message = msgpack.unpackb(msgpack.packb(finder_rows_message(4, rows_tapped(tapped))))
    return parse_finder_rows(message, source, projections=10)


def test_shares_round_trip_and_join_in_frame_order() -> None:
    one, two = _tapped([5, 1, 3], 1), _tapped([4, 0, 2], 2)
    joined = join_finder_rows("find_center_vo", {0: rows_tapped(one), 1: _round_trip(two),
                                                 2: _round_trip(None)})
    indices, angles, rows = joined.parts()
    assert indices.tolist() == [0, 1, 2, 3, 4, 5] and angles.tolist() == [0, 2, 4, 6, 8, 10]
    expected = np.concatenate([one.parts()[2], two.parts()[2]])
    order = np.argsort(np.concatenate([one.parts()[0], two.parts()[0]]))
    np.testing.assert_array_equal(rows, expected[order])
    assert rows.shape == (6, 2, 6) and joined.rows == (3, 5) and joined.frame == (8, 6)


@pytest.mark.parametrize(("field", "value", "said"), [
    ("rows", [3], "rows: expected two counts"),
    ("indices", list(range(11)), "indices: expected at most 10"),
    ("angles", [1.0], "angles: expected 3 angles"),
    ("data", b"\0" * 7, "data: expected 144 bytes"),
    ("rows", [3, 9], "rows: expected [a, b] within the frame's 8 rows"),
])
def test_a_malformed_share_is_one_line_naming_the_rank(field: str, value: Any,
                                                       said: str) -> None:
    message = msgpack.unpackb(msgpack.packb(finder_rows_message(
        4, rows_tapped(_tapped([0, 1, 2], 3)))))
    message[field] = value
    with pytest.raises(ExchangeError, match="rank 2: finder-rows message") as error:
        parse_finder_rows(message, 2, projections=10)
    assert said in str(error.value) and "\n" not in str(error.value)


def test_a_failed_rank_or_no_frame_anywhere_is_said() -> None:
    failed = msgpack.unpackb(msgpack.packb(finder_rows_message(
        4, rows_tapped(_tapped([0], 3), "normalize: no flat"))))
    with pytest.raises(StreamerError, match=r"find_center_vo: rank 1: its scan failed: "
                       "normalize: no flat"):
        join_finder_rows("find_center_vo", {0: rows_tapped(_tapped([1], 4)),
                                            1: parse_finder_rows(failed, 1, 10)})
    with pytest.raises(StreamerError, match="no corrected projection reached the CoR"):
        join_finder_rows("find_center_vo", {0: rows_tapped(None), 1: _round_trip(None)})
    other = TappedRows((2, 4), (8, 6))
    other.add(np.array([7]), np.array([1.0]), np.zeros((1, 8, 6), np.float32))
    with pytest.raises(StreamerError, match="expected every rank to tap the same rows"):
        join_finder_rows("find_center_vo", {0: rows_tapped(_tapped([1], 4)),
                                            1: rows_tapped(other)})
