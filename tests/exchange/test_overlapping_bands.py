"""Overlapping bands (ADR 0019 addendum): with a ``halo`` every rank receives its own rows
and ``halo`` rows of each neighbour band, clipped to the detector, from every frame,
whatever rank corrected it; the reslice only moves float32 values, so the overlap is
exact."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.errors import ExchangeError
from streamer.exchange import transpose as transpose_module
from streamer.exchange.links import MemoryLink, MemoryNetwork
from streamer.exchange.reslice import BandExchange, overlapping_bands, row_bands
from streamer.exchange.transpose import Shape, transpose
from streamer.pipeline.plan import rank_band_rows
from tests.run.ranks import run_ranks
from tests.test_reslice import expect_band, make_exchanges, make_stack, scatter_round_robin, settle


def test_bands_widen_by_the_halo_within_the_detector() -> None:
    assert row_bands(10, 3) == ((0, 4), (4, 7), (7, 10))
    assert overlapping_bands(10, 3, 0) == row_bands(10, 3)
    assert overlapping_bands(10, 3, 2) == ((0, 6), (2, 9), (5, 10))
    assert overlapping_bands(10, 3, 20) == ((0, 10),) * 3
    # more ranks than rows: an empty band stays empty (it has no row to compute)
    assert overlapping_bands(2, 3, 1) == ((0, 2), (0, 2), (2, 2))


def test_a_negative_halo_is_refused_with_one_line() -> None:
    with pytest.raises(ExchangeError, match="halo must be an integer >= 0, got -1"):
        overlapping_bands(10, 2, -1)


@pytest.mark.parametrize(("ranks", "rows", "halo"), [(2, 9, 1), (3, 7, 3), (3, 4, 2)])
def test_each_rank_receives_its_rows_and_its_neighbours(ranks: int, rows: int,
                                                        halo: int) -> None:
    # (3, 4, 2): bands of 2, 1 and 1 rows, narrower than the halo: the middle rank gets
    # rows of both its neighbours' bands and beyond them
    stack = make_stack(23, rows, 5)
    _, exchanges = make_exchanges(ranks, rows, 5, len(stack), halo=halo)
    scatter_round_robin(exchanges, stack)
    settle(exchanges)
    for rank, exchange in enumerate(exchanges):
        own = row_bands(rows, ranks)[rank]
        assert exchange.own_rows == own
        assert exchange.band().rows == (max(0, own[0] - halo), min(rows, own[1] + halo))
        expect_band(exchange, stack)  # every row of the widened band, bit for bit
    widest = max(b - a for a, b in overlapping_bands(rows, ranks, halo))
    assert max(e.stats.band_bytes for e in exchanges) == widest * len(stack) * 5 * 4


def test_ranks_that_disagree_on_the_halo_are_refused() -> None:
    stack = make_stack(4, 6, 3)
    network = MemoryNetwork(2)
    pair = [BandExchange(network.link(0), scan_serial=1, rows=6, cols=3, projections=4,
                         halo=1),
            BandExchange(network.link(1), scan_serial=1, rows=6, cols=3, projections=4)]
    pair[0].scatter(np.arange(4), np.zeros(4), stack)
    with pytest.raises(ExchangeError, match="does not fit this band"):
        for _ in range(20):
            pair[1].poll()


@pytest.mark.parametrize(("ranks", "rows", "angles", "halo"), [(2, 5, 7, 2), (3, 4, 5, 3),
                                                               (3, 2, 7, 1)])
def test_later_reslices_overlap_too(monkeypatch: pytest.MonkeyPatch, ranks: int, rows: int,
                                    angles: int, halo: int) -> None:
    """``transpose(halo=h)``: each rank gets its range of axis 1 widened by ``h`` on each
    side (ranges of angles, then bands of rows again), exactly."""
    monkeypatch.setattr(transpose_module, "PIECE_BYTES", 6 * 4)  # one entry per piece
    cols = 6
    scan = np.random.default_rng(ranks).random((rows, angles, cols), dtype=np.float32)

    def rank(link: MemoryLink) -> tuple[int, ...]:
        first, stop = row_bands(rows, ranks)[link.rank]
        there = transpose(link, np.ascontiguousarray(scan[first:stop]),
                          Shape(rows, angles, cols), serial=4, number=2, timeout_s=30,
                          halo=halo)
        low, high = overlapping_bands(angles, ranks, halo)[link.rank]
        assert there.data is not None
        np.testing.assert_array_equal(there.data, scan[:, low:high].transpose(1, 0, 2))
        own_low, own_high = row_bands(angles, ranks)[link.rank]
        mine = np.ascontiguousarray(there.data[own_low - low:own_high - low])
        back = transpose(link, mine, Shape(angles, rows, cols), serial=4, number=3,
                         timeout_s=30, halo=halo)
        low, high = overlapping_bands(rows, ranks, halo)[link.rank]
        assert back.data is not None
        np.testing.assert_array_equal(back.data, scan[low:high])
        return there.failed_ranks + back.failed_ranks

    assert run_ranks(ranks, rank) == [()] * ranks


def test_the_memory_plan_holds_the_overlap() -> None:
    """A rank's band is planned with its overlap (``2H`` rows more, within the detector):
    the band every rank receives is never larger than the plan's."""
    assert rank_band_rows(2048, 4, 0) == 512 and rank_band_rows(2048, 4, 3) == 518
    assert rank_band_rows(2, 2, 3) == 2 and rank_band_rows(10, 3, 2) == 8
    for rows, ranks, halo in ((10, 3, 2), (7, 3, 3), (4, 3, 2), (2048, 4, 3)):
        widest = max(b - a for a, b in overlapping_bands(rows, ranks, halo))
        assert widest <= rank_band_rows(rows, ranks, halo)
