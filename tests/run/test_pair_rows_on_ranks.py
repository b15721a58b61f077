"""The 0°/180° pair's rows that R ranks send to the CoR owner for ``find_center_pc``
(streamer.run.pair_rows and ``RankedReconstruction._gather_pair``): chosen as the finder
chooses the pair, carried through msgpack unchanged, refused when malformed (before the
bytes are viewed), put together only when every rank names the same frames and the bands
tile the rows; a failed rank's reason and a silent rank reach the error. The whole run on
2 and 3 ranks: tests/pipeline/test_httomo_full_on_ranks.py."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import msgpack
import numpy as np
import pytest

from stages.recon.center_policy import find_center_from_pair
from streamer.errors import ExchangeError, StreamerError
from streamer.exchange.reslice import Band
from streamer.run.pair_rows import (
    PairRows,
    assemble_pair,
    pair_rows_message,
    parse_pair_rows,
    rows_of_pair,
)
from streamer.run.ranks import RankedReconstruction

COLS = 24


def _band(rows: tuple[int, int], angles: np.ndarray, volume: np.ndarray) -> Band:
    """The band of rows ``rows`` of ``volume`` (angles, rows, cols), as a rank holds it."""
    sinograms = np.ascontiguousarray(volume[:, rows[0]:rows[1]].transpose(1, 0, 2))
    indices = np.arange(angles.size, dtype=np.int64) + 7
    return Band(rows, indices, angles, sinograms, angles.size, 0, {}, 0)


def _scan(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    angles = np.linspace(0.0, 180.0, 19)
    volume = np.random.default_rng(seed).random((angles.size, 5, COLS), dtype=np.float32)
    return angles, volume


def test_each_band_gives_its_rows_of_the_first_and_opposite_projection() -> None:
    angles, volume = _scan()
    found = rows_of_pair(_band((1, 4), angles, volume))
    assert found.error is None and found.rows == (1, 4) and found.frames == (7, 7 + 18)
    np.testing.assert_array_equal(found.first, volume[0, 1:4])
    np.testing.assert_array_equal(found.opposite, volume[18, 1:4])


def test_the_pair_survives_the_message_and_is_put_together_whole() -> None:
    angles, volume = _scan()
    bands = [(0, 2), (2, 3), (3, 5)]
    parts = {}
    for rank, rows in enumerate(bands):
        packed = msgpack.packb(pair_rows_message(4, rows_of_pair(_band(rows, angles, volume))))
        parts[rank] = parse_pair_rows(msgpack.unpackb(packed, raw=False), rank, COLS)
    first, opposite = assemble_pair(parts)
    np.testing.assert_array_equal(first, volume[0])
    np.testing.assert_array_equal(opposite, volume[18])
    # the finder given the whole pair and one band's rows finds what it finds on the scan
    band = _band((2, 3), angles, volume)
    stack = band.sinograms.transpose(1, 0, 2)
    alone = find_center_from_pair(volume, angles)
    gathered = find_center_from_pair(stack, angles, pair=(first, opposite))
    assert gathered.center == alone.center


def _message(**change: Any) -> dict[str, Any]:
    angles, volume = _scan()
    message = pair_rows_message(1, rows_of_pair(_band((0, 2), angles, volume)))
    message.update(change)
    return message


@pytest.mark.parametrize(("change", "says"), [
    ({"rows": [3, 1]}, "rows: expected [a, b] with 0 <= a <= b, got [3, 1]"),
    ({"frames": "x"}, "frames: expected two frame indices, got 'x'"),
    ({"cols": 5}, f"cols: expected {COLS}, got 5"),
    ({"first": b"abc"}, f"first: expected {2 * COLS * 4} bytes of float32 rows, got 3"),
    ({"opposite": None}, "opposite: expected 192 bytes of float32 rows, got NoneType"),
])
def test_a_malformed_message_is_refused_naming_the_rank(change: dict[str, Any],
                                                        says: str) -> None:
    with pytest.raises(ExchangeError) as error:
        parse_pair_rows(_message(**change), 2, COLS)
    assert str(error.value) == f"rank 2: pair-rows message: {says}"


def test_a_failed_rank_names_itself_and_its_reason() -> None:
    angles, volume = _scan()
    empty = Band((2, 5), np.zeros(0, np.int64), np.zeros(0),
                 np.zeros((3, 0, COLS), np.float32), 0, 0, {}, 0)
    failed = parse_pair_rows(msgpack.unpackb(msgpack.packb(
        pair_rows_message(1, rows_of_pair(empty))), raw=False), 1, COLS)
    assert failed.error == "no corrected projection reached its band"
    refused = rows_of_pair(_band((2, 5), angles, volume), "stage 'x' refused the data")
    assert refused.error == "its scan failed: stage 'x' refused the data"
    assert refused.first.size == 0  # a failed rank's rows are not used
    with pytest.raises(StreamerError, match=r"^find_center_pc: rank 1: no corrected "):
        assemble_pair({0: rows_of_pair(_band((0, 2), angles, volume)), 1: failed})


def test_bands_that_disagree_or_leave_a_gap_are_refused() -> None:
    angles, volume = _scan()
    own = rows_of_pair(_band((0, 2), angles, volume))
    later = rows_of_pair(_band((2, 5), angles, volume))
    other = PairRows(later.rows, (7, 24), later.first, later.opposite)
    with pytest.raises(StreamerError, match=r"same 0°/180° pair of frames, got rank 0: "
                                            r"\(7, 25\), rank 1: \(7, 24\)"):
        assemble_pair({0: own, 1: other})
    gap = rows_of_pair(_band((3, 5), angles, volume))
    with pytest.raises(StreamerError, match=r"rank 1's rows to begin at 2, got 3"):
        assemble_pair({0: own, 1: gap})
    unpaired = rows_of_pair(_band((0, 2), angles[:10], volume[:10]))
    assert unpaired.error == "no projection 180° from the first in its band"


def test_the_owner_names_a_silent_rank_after_its_timeout() -> None:
    """``_gather_pair`` with a peer that never sends: a bounded wait, then the rank named
    (the owner reports it as the CoR's error to every rank, as for other failures)."""
    angles, volume = _scan()
    served: list[object] = []

    def serve(scan: object) -> None:  # a turn of the link outlasts the 1 ms timeout
        served.append(scan)
        time.sleep(0.002)

    owner = SimpleNamespace(control=SimpleNamespace(rank=0, size=3),
                            exchange_timeout_s=0.001, _serve=serve)
    owner._await_peers = lambda scan, received: RankedReconstruction._await_peers(
        owner, scan, received)  # type: ignore[arg-type]
    owner._await_rows = lambda scan, received, finder, what: (
        RankedReconstruction._await_rows(owner, scan, received, finder, what))  # type: ignore[arg-type]
    scan = SimpleNamespace(start=SimpleNamespace(scan="s1"), pair_rows={
        1: rows_of_pair(_band((2, 3), angles, volume))})
    with pytest.raises(ExchangeError) as error:
        RankedReconstruction._gather_pair(owner, scan, _band((0, 2), angles, volume))  # type: ignore[arg-type]
    assert str(error.value) == ("scan 's1': find_center_pc: rank 0 waited 0.001 s for the "
                                "0°/180° pair's rows from ranks [2]: none came (a rank "
                                "died or is stuck)")
    assert served  # the link was served while waiting
