"""The reslice over real MPI (any number of ranks: 2 in the suite, 4 in one launch).

Run by tests/mpi/test_launch.py as ``mpiexec -n R python -m pytest -m mpi …``; every
rank runs the same tests in the same order, builds the same full stack of frames from a
seed, scatters its round-robin share, and checks its band against the stack, bit for bit.
Sizes are chosen so pieces exceed MPICH's eager limit (rendezvous sends, which complete
only when the receiving rank polls) as well as staying under it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pytest

from streamer.errors import ExchangeError
from streamer.exchange.links import RankLink
from streamer.exchange.reslice import BandExchange, row_bands

pytestmark = pytest.mark.mpi
TIMEOUT_S = 60.0
T = TypeVar("T")


def until(probe: Callable[[], T | None], what: str) -> T:
    """Poll ``probe`` until it gives something, for at most TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while (result := probe()) is None:
        assert time.monotonic() < deadline, f"no {what} after {TIMEOUT_S} s"
    return result


@pytest.fixture(scope="module")
def world() -> RankLink:
    return RankLink.world()


@pytest.fixture(scope="module")
def link(world: RankLink) -> Iterator[RankLink]:
    duplicate = world.duplicate()
    yield duplicate
    duplicate.free()


def make_stack(projections: int, rows: int, cols: int, seed: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).random((projections, rows, cols), dtype=np.float32)


def holders(size: int) -> list[int]:
    """Ranks that receive frames: all but the last (it gets none), unless alone."""
    return list(range(max(1, size - 1)))


def scatter_share(exchange: BandExchange, stack: npt.NDArray[np.float32], seed: int,
                  block: int = 3) -> None:
    """This rank's round-robin share, in shuffled blocks, polling in between."""
    sharing = holders(exchange.size)
    if exchange.rank in sharing:
        position = sharing.index(exchange.rank)
        mine = np.random.default_rng(seed + exchange.rank).permutation(
            np.arange(position, len(stack), len(sharing)))
        for first in range(0, len(mine), block):
            indices = mine[first:first + block]
            exchange.scatter(indices, indices * 0.25, stack[indices])
            exchange.poll()
    exchange.finish_sending()


def check_band(exchange: BandExchange, stack: npt.NDArray[np.float32]) -> None:
    band = exchange.wait(TIMEOUT_S)
    first, stop = band.rows
    assert band.rows == row_bands(exchange.rows, exchange.size)[exchange.rank]
    np.testing.assert_array_equal(band.sinograms, stack[:, first:stop].transpose(1, 0, 2))
    np.testing.assert_array_equal(band.indices, np.arange(len(stack)))
    np.testing.assert_array_equal(band.angles_deg, np.arange(len(stack)) * 0.25)
    assert band.received == len(stack) and band.duplicates == 0 and band.other_scan == 0


@pytest.mark.parametrize(("rows", "cols", "projections"), [(7, 5, 23), (64, 256, 40)])
def test_round_robin_scan_is_resliced_exactly(link: RankLink, rows: int, cols: int,
                                              projections: int) -> None:
    stack = make_stack(projections, rows, cols, seed=rows)
    exchange = BandExchange(link, scan_serial=rows, rows=rows, cols=cols,
                            projections=projections)
    scatter_share(exchange, stack, seed=rows)
    check_band(exchange, stack)
    stats = exchange.stats
    assert stats.in_flight_bytes == 0 and stats.held_bytes == stats.band_bytes
    link.comm.Barrier()


def test_frames_with_a_known_first_index_land_in_place(link: RankLink) -> None:
    """Sorted round-robin blocks (indices r, r+R, …): each block is one strided piece
    received straight into its columns; the band needs no sorting pass."""
    rows, cols, projections = 40, 300, 36
    stack = make_stack(projections, rows, cols, seed=17)
    exchange = BandExchange(link, scan_serial=17, rows=rows, cols=cols,
                            projections=projections, first_index=0)
    mine = np.arange(link.rank, projections, link.size)
    for indices in np.array_split(mine, 3):
        exchange.scatter(indices, indices * 0.25, stack[indices])
        exchange.poll()
    exchange.finish_sending()
    check_band(exchange, stack)
    assert exchange.stats.assembly_bytes == 0
    assert exchange.stats.pieces_sent == 3 * (link.size - 1)
    link.comm.Barrier()


def test_reslice_messages_are_invisible_to_the_link_it_was_duplicated_from(
        world: RankLink) -> None:
    parent = world.duplicate()  # a clean stand-in for the ingest's link
    child = parent.duplicate()
    try:
        stack = make_stack(12, 8, 6, seed=5)
        exchange = BandExchange(child, scan_serial=1, rows=8, cols=6, projections=12)
        scatter_share(exchange, stack, seed=5)
        parent.comm.Barrier()  # every rank has sent its headers
        assert parent.poll() == []  # ANY_SOURCE, ANY_TAG, as the ingest polls
        check_band(exchange, stack)
        parent.comm.Barrier()
    finally:
        child.free()
        parent.free()


def test_ranks_scattering_to_each_other_under_a_small_cap_finish(link: RankLink) -> None:
    rows, cols, projections = 32, 512, 48
    stack = make_stack(projections, rows, cols, seed=9)
    band_frame = -(-rows // link.size) * cols * 4
    cap = 2 * band_frame  # two frames' rows in flight per rank at most
    exchange = BandExchange(link, scan_serial=9, rows=rows, cols=cols,
                            projections=projections, max_in_flight_bytes=cap)
    mine = np.arange(link.rank, projections, link.size)  # every rank sends
    for indices in np.array_split(mine, max(1, len(mine) // 2)):
        exchange.scatter(indices, indices * 0.25, stack[indices])
    exchange.finish_sending()
    check_band(exchange, stack)
    stats = exchange.stats
    if link.size > 1:
        assert 0 < stats.peak_in_flight_bytes <= cap, stats
    link.comm.Barrier()


def test_two_scans_exchange_side_by_side(link: RankLink) -> None:
    first_stack = make_stack(15, 9, 33, seed=21)
    second_stack = make_stack(10, 9, 33, seed=22)
    first = BandExchange(link, scan_serial=21, rows=9, cols=33, projections=15)
    second = BandExchange(link, scan_serial=22, rows=9, cols=33, projections=10)
    scatter_share(second, second_stack, seed=22)
    scatter_share(first, first_stack, seed=21)
    check_band(first, first_stack)
    check_band(second, second_stack)
    link.comm.Barrier()


def test_wait_names_the_rank_that_has_not_finished(link: RankLink) -> None:
    stack = make_stack(10, 6, 40, seed=31)
    exchange = BandExchange(link, scan_serial=31, rows=6, cols=40, projections=10)
    last = link.size - 1
    if link.rank != last:
        scatter_share(exchange, stack, seed=31)
        with pytest.raises(ExchangeError, match=f"rank {last} has not finished sending"):
            exchange.wait(0.3)
    link.comm.Barrier()  # the last rank finishes only now
    if link.rank == last:
        scatter_share(exchange, stack, seed=31)
    check_band(exchange, stack)
    link.comm.Barrier()


def test_strided_views_travel_without_packing(link: RankLink) -> None:
    """send_parts / receive_into with views of every kind of stride, checked bytewise."""
    source = np.random.default_rng(link.rank).random((6, 10, 12), dtype=np.float32)
    views = {"contiguous": source, "rows": source[:, 2:7, :], "columns": source[:, :, ::3],
             "reversed": source[::-1]}
    dest, origin = (link.rank + 1) % link.size, (link.rank - 1) % link.size
    expected = np.random.default_rng(origin).random((6, 10, 12), dtype=np.float32)
    expected_views = {"contiguous": expected, "rows": expected[:, 2:7, :],
                      "columns": expected[:, :, ::3], "reversed": expected[::-1]}
    for tag, (name, view) in enumerate(views.items(), start=500):
        sending = link.send_parts(dest, 2 * tag, name.encode(), view)
        header = until(lambda: link.probe_header(2 * tag), f"{name} header")  # noqa: B023
        assert header.payload == name.encode() and header.source == origin
        incoming = until(lambda: link.probe_array(origin, 2 * tag), f"{name} array")  # noqa: B023
        shape = expected_views[name].shape
        target = np.zeros((shape[1], shape[0], shape[2]), np.float32).transpose(1, 0, 2)
        receiving = incoming.receive_into(target)  # a transposed (non-contiguous) view
        until(lambda: (receiving.test() & sending.test()) or None, f"{name} completion")  # noqa: B023
        np.testing.assert_array_equal(target, expected_views[name])
    link.comm.Barrier()
