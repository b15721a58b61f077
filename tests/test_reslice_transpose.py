"""The later reslices (:mod:`streamer.exchange.transpose`) on in-process ranks: bands of
rows → ranges of angles and back give the exact arrays, in pieces, with empty bands and
ranges; a failed rank is named to every rank; a mismatched shape or a silent rank is a
clear error; an earlier scan's leftovers are drained."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import numpy as np
import pytest

from streamer.errors import ExchangeError
from streamer.exchange import transpose as transpose_module
from streamer.exchange.links import MemoryLink, MemoryNetwork
from streamer.exchange.reslice import row_bands
from streamer.exchange.transpose import Shape, transpose
from tests.run.ranks import run_ranks


@pytest.mark.parametrize(("ranks", "rows", "angles"), [(1, 3, 5), (2, 5, 7), (3, 2, 7),
                                                       (4, 5, 3)])
def test_bands_to_angles_and_back_are_exact(monkeypatch: pytest.MonkeyPatch, ranks: int,
                                            rows: int, angles: int) -> None:
    monkeypatch.setattr(transpose_module, "PIECE_BYTES", 6 * 4)  # one entry per piece
    cols = 6
    scan = np.random.default_rng(ranks).random((rows, angles, cols), dtype=np.float32)

    def rank(link: MemoryLink) -> tuple[int, ...]:
        first, stop = row_bands(rows, ranks)[link.rank]
        there = transpose(link, np.ascontiguousarray(scan[first:stop]),
                          Shape(rows, angles, cols), serial=4, number=2, timeout_s=30)
        low, high = row_bands(angles, ranks)[link.rank]
        assert there.data is not None
        np.testing.assert_array_equal(there.data, scan[:, low:high].transpose(1, 0, 2))
        back = transpose(link, there.data, Shape(angles, rows, cols), serial=4, number=3,
                         timeout_s=30)
        assert back.data is not None
        np.testing.assert_array_equal(back.data, scan[first:stop])
        return there.failed_ranks + back.failed_ranks

    assert run_ranks(ranks, rank) == [()] * ranks


def test_a_failed_rank_is_named_to_every_rank() -> None:
    def rank(link: MemoryLink) -> tuple[tuple[int, ...], bool]:
        first, stop = row_bands(5, 3)[link.rank]
        data = None if link.rank == 1 else np.ones((stop - first, 7, 4), np.float32)
        result = transpose(link, data, Shape(5, 7, 4), serial=1, number=2, timeout_s=30)
        return result.failed_ranks, result.data is None

    assert run_ranks(3, rank) == [((1,), True)] * 3


def test_ranks_that_disagree_on_the_shape_get_an_error_naming_both() -> None:
    def rank(link: MemoryLink) -> str:
        cols = 4 if link.rank == 0 else 5  # e.g. a stage that gave the ranks other widths
        first, stop = row_bands(4, 2)[link.rank]
        with pytest.raises(ExchangeError) as error:
            transpose(link, np.zeros((stop - first, 6, cols), np.float32), Shape(4, 6, cols),
                      serial=1, number=2, timeout_s=5)
        return str(error.value)

    messages = run_ranks(2, rank)
    assert "expected a scan of 4 x 6 x 4 at this reslice, got 4 x 6 x 5" in messages[0]
    assert "expected a scan of 4 x 6 x 5 at this reslice, got 4 x 6 x 4" in messages[1]


def test_a_silent_rank_is_named_after_the_timeout() -> None:
    network = MemoryNetwork(2)
    ticks = itertools.count()
    with pytest.raises(ExchangeError, match="rank 1 has not finished sending"):
        transpose(network.link(0), np.zeros((1, 2, 3), np.float32), Shape(2, 2, 3), serial=1,
                  number=2, timeout_s=5, clock=lambda: float(next(ticks)))


def test_a_wrong_part_is_refused_before_anything_is_sent() -> None:
    network = MemoryNetwork(2)
    with pytest.raises(ExchangeError, match=r"expected this rank's float32 part of shape "
                                            r"\(2, 3, 4\), got float64 of shape \(2, 3, 4\)"):
        transpose(network.link(0), np.zeros((2, 3, 4)), Shape(4, 3, 4), serial=1, number=2,
                  timeout_s=5)
    assert network.pending() == 0


def test_an_earlier_scans_leftovers_are_drained() -> None:
    """A scan that failed mid-reslice may leave pieces on the link: the next scan's
    reslice with the same number drains them and still gets its own data."""
    network = MemoryNetwork(2)
    links = [network.link(0), network.link(1)]
    scan = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    # rank 1 of scan 7 sent its piece and 'end', then scan 7 was abandoned
    stale = transpose_module._Transpose(links[1], scan[1:2], Shape(2, 4, 3), serial=7,
                                        number=2, clock=lambda: 0.0)
    stale._send_all()

    def rank(link: MemoryLink) -> np.ndarray:
        data = np.ascontiguousarray(scan[link.rank:link.rank + 1]) + 100
        result = transpose(link, data, Shape(2, 4, 3), serial=8, number=2, timeout_s=30)
        assert result.data is not None
        return result.data

    got = run_ranks_on(links, rank)
    expected = (scan + 100).transpose(1, 0, 2)
    np.testing.assert_array_equal(got[0], expected[0:2])
    np.testing.assert_array_equal(got[1], expected[2:4])
    assert network.pending() == 0


def run_ranks_on(links: list[MemoryLink],
                 work: Callable[[MemoryLink], np.ndarray]) -> list[np.ndarray]:
    """:func:`tests.run.ranks.run_ranks` on given links (one network shared with a test)."""
    results: list[np.ndarray] = [np.empty(0)] * len(links)
    errors: list[BaseException] = []

    def target(index: int) -> None:
        try:
            results[index] = work(links[index])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=target, args=(i,), daemon=True)
               for i in range(len(links))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    if errors:
        raise errors[0]
    return results
