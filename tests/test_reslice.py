"""Reslice rank logic, without MPI: several ranks stepped in one process.

Each "rank" is a :class:`BandExchange` on a :class:`MemoryNetwork` link (MPI's ordering
and rendezvous completion, in process). The oracle is the full stack of frames, made on
every rank alike, transposed: rank r must end with ``stack[:, a_r:b_r, :]`` in sinogram
order, bit for bit (the reslice only moves float32 values, so equality is exact).
"""

from __future__ import annotations

import itertools
import math
import threading

import numpy as np
import numpy.typing as npt
import pytest

from streamer.errors import ExchangeError
from streamer.exchange.links import MemoryNetwork
from streamer.exchange.reslice import (
    HEADER,
    MAX_PIECE_FRAMES,
    TAG_SERIALS,
    BandExchange,
    encode_done,
    encode_piece,
    row_bands,
    tag_for,
)

Frames = npt.NDArray[np.float32]


def make_stack(projections: int, rows: int, cols: int, seed: int = 0) -> Frames:
    return np.random.default_rng(seed).random((projections, rows, cols), dtype=np.float32)


def make_exchanges(size: int, rows: int, cols: int, projections: int, serial: int = 7, *,
                   lazy: bool = False,
                   **kwargs: object) -> tuple[MemoryNetwork, list[BandExchange]]:
    network = MemoryNetwork(size, lazy_receives=lazy)
    exchanges = [BandExchange(network.link(rank), scan_serial=serial, rows=rows, cols=cols,
                              projections=projections, **kwargs)  # type: ignore[arg-type]
                 for rank in range(size)]
    return network, exchanges


def settle(exchanges: list[BandExchange], rounds: int = 50) -> None:
    """Poll every rank in turn until all are ready and delivered (bounded)."""
    for _ in range(rounds):
        for exchange in exchanges:
            exchange.poll()
        if all(e.ready and e.delivered for e in exchanges):
            return
    raise AssertionError("exchange did not settle")


def angles_of(indices: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    return indices.astype(np.float64) * 0.5


def scatter_round_robin(exchanges: list[BandExchange], stack: Frames, *, offset: int = 0,
                        holders: list[int] | None = None, seed: int = 1) -> None:
    """Frame i goes to holder i % len(holders) (as a PUSH deals them); each rank
    scatters its frames in shuffled blocks of 1-5, ranks interleaved."""
    rng = np.random.default_rng(seed)
    holders = list(range(len(exchanges))) if holders is None else holders
    mine = {rank: rng.permutation(np.arange(rank_position, len(stack), len(holders)))
            for rank_position, rank in enumerate(holders)}
    queues = {rank: np.array_split(frames, max(1, math.ceil(len(frames) / 3)))
              for rank, frames in mine.items()}
    while any(queues.values()):
        for rank in holders:
            if queues[rank]:
                positions = queues[rank].pop()
                indices = positions.astype(np.int64) + offset
                exchanges[rank].scatter(indices, angles_of(indices), stack[positions])
        for exchange in exchanges:
            exchange.poll()
    for exchange in exchanges:
        exchange.finish_sending()


def expect_band(exchange: BandExchange, stack: Frames, *, offset: int = 0) -> None:
    band = exchange.band()
    first, stop = band.rows
    np.testing.assert_array_equal(band.sinograms, stack[:, first:stop, :].transpose(1, 0, 2))
    assert band.sinograms.flags.c_contiguous and band.sinograms.dtype == np.float32
    expected = np.arange(len(stack), dtype=np.int64) + offset
    np.testing.assert_array_equal(band.indices, expected)
    np.testing.assert_array_equal(band.angles_deg, angles_of(expected))
    assert band.received == len(stack) and band.duplicates == 0
    assert sum(band.rejected.values()) == 0 and band.other_scan == 0


# --- bands ---------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 2, 3, 7, 64, 100, 1023, 2048])
@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 5, 8, 13])
def test_row_bands_are_balanced_contiguous_and_in_rank_order(rows: int, ranks: int) -> None:
    bands = row_bands(rows, ranks)
    # independent oracle: numpy's split of the row numbers into `ranks` near-equal parts
    parts = np.array_split(np.arange(rows), ranks)
    assert len(bands) == ranks
    for (first, stop), part in zip(bands, parts, strict=True):
        assert stop - first == len(part)
        if len(part):
            assert (first, stop) == (part[0], part[-1] + 1)
    assert bands[0][0] == 0 and bands[-1][1] == rows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bands))
    sizes = [stop - first for first, stop in bands]
    assert max(sizes) - min(sizes) <= 1


def test_more_ranks_than_rows_gives_empty_bands_to_the_last_ranks() -> None:
    assert row_bands(3, 5) == ((0, 1), (1, 2), (2, 3), (3, 3), (3, 3))


@pytest.mark.parametrize(("rows", "ranks", "name"), [(0, 2, "rows"), (4, 0, "ranks"),
                                                     (-3, 2, "rows"), (True, 2, "rows")])
def test_row_bands_refuses_impossible_counts(rows: int, ranks: int, name: str) -> None:
    with pytest.raises(ExchangeError, match=f"{name} must be an integer >= 1"):
        row_bands(rows, ranks)


# --- reassembly ------------------------------------------------------------------------


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize(("ranks", "rows", "cols", "projections"),
                         [(2, 6, 5, 17), (3, 7, 4, 30), (4, 10, 3, 41), (4, 3, 6, 9),
                          (1, 5, 4, 12)])
def test_round_robin_frames_are_reassembled_exactly(ranks: int, rows: int, cols: int,
                                                    projections: int, lazy: bool) -> None:
    stack = make_stack(projections, rows, cols, seed=ranks)
    _, exchanges = make_exchanges(ranks, rows, cols, projections, frames=projections + 5,
                                  lazy=lazy)
    scatter_round_robin(exchanges, stack, offset=5)  # darks and flats took indices 0-4
    settle(exchanges)
    for exchange in exchanges:
        expect_band(exchange, stack, offset=5)


@pytest.mark.parametrize(("first_index", "moved"), [(5, False), (2, True), (None, True)])
def test_frames_land_in_their_home_columns_when_the_first_index_is_known(
        first_index: int | None, moved: bool) -> None:
    stack = make_stack(24, 7, 4)
    _, exchanges = make_exchanges(3, 7, 4, 24, first_index=first_index)
    scatter_round_robin(exchanges, stack, offset=5)  # projections are frames 5-28
    settle(exchanges)
    for exchange in exchanges:
        expect_band(exchange, stack, offset=5)  # a wrong hint costs time, not data
        assert (exchange.stats.assembly_bytes > 0) == moved


@pytest.mark.parametrize("hint", ["first_index", "frames"])
@pytest.mark.parametrize("run", [1, 3])
def test_evenly_spaced_frames_travel_in_one_piece_to_their_columns(run: int,
                                                                   hint: str) -> None:
    """A PUSH dealing messages of ``run`` frames round-robin: rank r's sorted blocks
    are runs of evenly spaced indices; each run is one piece, received in place. The
    first index is given, or implied by a scan of projections only."""
    ranks, projections = 3, 36
    stack = make_stack(projections, 6, 5)
    given = {"first_index": 0} if hint == "first_index" else {"frames": projections}
    _, exchanges = make_exchanges(ranks, 6, 5, projections, lazy=True, **given)
    messages = np.arange(projections).reshape(-1, run)
    for rank, exchange in enumerate(exchanges):
        mine = messages[rank::ranks].reshape(-1)
        for block in np.array_split(mine, 2):
            exchange.scatter(block, angles_of(block), stack[block])
        exchange.finish_sending()
    settle(exchanges)
    runs_per_block = 1 if run == 1 else 2  # e.g. 0,1,2 | 9,10,11: two runs
    for exchange in exchanges:
        expect_band(exchange, stack)
        assert exchange.stats.assembly_bytes == 0
        assert exchange.stats.pieces_sent == 2 * runs_per_block * (ranks - 1)


def test_a_rank_without_frames_still_receives_its_band() -> None:
    stack = make_stack(20, 9, 4)
    _, exchanges = make_exchanges(3, 9, 4, 20)
    scatter_round_robin(exchanges, stack, holders=[0, 2])
    settle(exchanges)
    assert exchanges[1].stats.bytes_sent == 0
    for exchange in exchanges:
        expect_band(exchange, stack)


def test_ranks_with_empty_bands_still_learn_every_index() -> None:
    stack = make_stack(11, 2, 5)
    _, exchanges = make_exchanges(4, 2, 5, 11)
    scatter_round_robin(exchanges, stack)
    settle(exchanges)
    for exchange in exchanges:
        expect_band(exchange, stack)
    assert exchanges[3].band().sinograms.shape == (0, 11, 5)
    assert exchanges[3].stats.band_bytes == 0


@pytest.mark.parametrize("first_index", [None, 0])
def test_missing_projections_leave_a_compact_sorted_band(first_index: int | None) -> None:
    stack = make_stack(16, 6, 4)
    keep = np.array([9, 2, 15, 0, 7, 4, 11])
    _, exchanges = make_exchanges(2, 6, 4, 16, first_index=first_index)  # 7 of 16 come
    for rank, part in enumerate(np.array_split(keep, 2)):
        exchanges[rank].scatter(part, angles_of(part), stack[part])
    for exchange in exchanges:
        exchange.finish_sending()
    settle(exchanges)
    for exchange in exchanges:
        band = exchange.band()
        first, stop = band.rows
        order = np.sort(keep)
        np.testing.assert_array_equal(band.indices, order)
        np.testing.assert_array_equal(band.sinograms,
                                      stack[order][:, first:stop].transpose(1, 0, 2))
        assert band.sinograms.flags.c_contiguous and band.received == 7


def test_large_blocks_are_split_into_pieces() -> None:
    stack = make_stack(MAX_PIECE_FRAMES * 2 + 3, 4, 2)
    _, exchanges = make_exchanges(2, 4, 2, len(stack))
    indices = np.arange(len(stack))
    exchanges[0].scatter(indices, angles_of(indices), stack)
    for exchange in exchanges:
        exchange.finish_sending()
    settle(exchanges)
    assert exchanges[0].stats.pieces_sent == 3
    for exchange in exchanges:
        expect_band(exchange, stack)


def test_a_strided_block_is_sent_as_it_is() -> None:
    stack = make_stack(8, 6, 10)
    view = stack[:, :, ::2]  # every other column: a view with non-unit strides
    _, exchanges = make_exchanges(3, 6, 5, 8)
    for rank, (first, stop) in enumerate([(0, 3), (3, 5), (5, 8)]):
        indices = np.arange(first, stop)
        exchanges[rank].scatter(indices, angles_of(indices), view[first:stop])
        exchanges[rank].finish_sending()
    settle(exchanges)
    for exchange in exchanges:
        expect_band(exchange, np.ascontiguousarray(view))


# --- accounting ------------------------------------------------------------------------


def test_duplicates_out_of_range_bad_angles_and_overflow_are_counted() -> None:
    stack = make_stack(6, 4, 3)
    _, exchanges = make_exchanges(3, 4, 3, 5, frames=8)  # room for 5 projections
    rank0, rank1, rank2 = exchanges

    def send(exchange: BandExchange, indices: list[int], angles: list[float],
             frames: list[int]) -> None:
        exchange.scatter(np.array(indices), np.array(angles), stack[frames])

    send(rank0, [0, 1, 1], [0.0, 1.0, 1.0], [0, 1, 1])  # 1 twice in one block
    send(rank1, [1, 2, 8], [1.0, 2.0, 9.0], [1, 2, 3])  # 1 again (other rank); 8 >= frames
    send(rank2, [-1, 3, 4], [0.0, math.nan, 4.0], [3, 3, 4])  # negative; NaN angle
    send(rank1, [5, 6], [5.0, 6.0], [5, 5])  # 5 distinct already: 6 is one too many
    for exchange in exchanges:
        exchange.finish_sending()
    settle(exchanges)
    for exchange in exchanges:
        band = exchange.band()
        first, stop = band.rows
        np.testing.assert_array_equal(band.indices, [0, 1, 2, 4, 5])
        expected = stack[[0, 1, 2, 4, 5]][:, first:stop]
        np.testing.assert_array_equal(band.sinograms, expected.transpose(1, 0, 2))
        assert band.received == 5 and band.duplicates == 2
        assert band.rejected == {"out_of_range": 2, "bad_angle": 1, "over_capacity": 1}


@pytest.mark.parametrize("first_index", [None, 0, 3])
@pytest.mark.parametrize("seed", range(8))
def test_every_rank_keeps_the_same_frames_whatever_the_arrival_order(
        seed: int, first_index: int | None) -> None:
    """More distinct projections than announced, duplicates across ranks, random blocks
    and random polling: every rank must keep the same frames (the smallest indices), and
    count the same duplicates and overflow."""
    rng = np.random.default_rng(seed)
    capacity, distinct, ranks = 7, 12, 3
    stack = make_stack(distinct, 5, 3, seed=seed)
    _, exchanges = make_exchanges(ranks, 5, 3, capacity, lazy=True, first_index=first_index)
    copies = np.concatenate([np.arange(distinct), rng.choice(distinct, 4, replace=False)])
    holders = rng.integers(0, ranks, len(copies))
    plan = [list(rng.permutation(copies[holders == rank])) for rank in range(ranks)]
    while any(plan):
        rank = int(rng.integers(ranks))
        if plan[rank]:
            take = int(rng.integers(1, 4))
            block, plan[rank] = np.array(plan[rank][:take]), plan[rank][take:]
            exchanges[rank].scatter(block, angles_of(block), stack[block])
        exchanges[int(rng.integers(ranks))].poll()
    for exchange in exchanges:
        exchange.finish_sending()
    settle(exchanges, rounds=200)
    for exchange in exchanges:
        band = exchange.band()
        first, stop = band.rows
        np.testing.assert_array_equal(band.indices, np.arange(capacity))
        np.testing.assert_array_equal(band.sinograms,
                                      stack[:capacity, first:stop].transpose(1, 0, 2))
        assert band.received == capacity and band.duplicates == 4
        assert band.rejected["over_capacity"] == distinct - capacity


def test_pieces_of_another_scan_are_counted_and_never_mixed_in() -> None:
    stack = make_stack(10, 4, 3)
    other = make_stack(10, 4, 3, seed=99)
    network = MemoryNetwork(2)
    mine = [BandExchange(network.link(rank), scan_serial=3, rows=4, cols=3, projections=10)
            for rank in range(2)]
    # an old scan whose serial gives the same tag: its messages reach this exchange
    stale = BandExchange(network.link(1), scan_serial=3 + TAG_SERIALS, rows=4, cols=3,
                         projections=10)
    assert stale.tag == mine[0].tag
    stale_indices = np.arange(4)
    stale.scatter(stale_indices, angles_of(stale_indices), other[:4])  # one piece
    stale.finish_sending()
    scatter_round_robin(mine, stack)
    settle(mine)
    assert stale.delivered  # its payload was drained, not left in flight
    expect_band(mine[1], stack)
    band = mine[0].band()
    np.testing.assert_array_equal(band.sinograms, stack[:, 0:2].transpose(1, 0, 2))
    assert band.other_scan == 2  # the stale piece and the stale "done"
    assert network.pending() == 0


def test_two_scans_exchange_side_by_side_on_one_link() -> None:
    network = MemoryNetwork(2)
    first = [BandExchange(network.link(r), scan_serial=1, rows=5, cols=3, projections=8)
             for r in range(2)]
    second = [BandExchange(network.link(r), scan_serial=2, rows=5, cols=3, projections=6)
              for r in range(2)]
    stack1, stack2 = make_stack(8, 5, 3, seed=1), make_stack(6, 5, 3, seed=2)
    scatter_round_robin(second, stack2)
    scatter_round_robin(first, stack1)
    settle(first + second)
    for exchange in first:
        expect_band(exchange, stack1)
    for exchange in second:
        expect_band(exchange, stack2)


# --- waiting, timeouts and the in-flight cap -------------------------------------------


class StepClock:
    """A clock that advances a fixed step each time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_wait_times_out_naming_the_rank_that_did_not_finish() -> None:
    _, exchanges = make_exchanges(3, 6, 4, 9, clock=StepClock(0.25))
    stack = make_stack(9, 6, 4)
    indices = np.arange(3)
    exchanges[0].scatter(indices, angles_of(indices), stack[:3])
    exchanges[0].finish_sending()
    exchanges[1].finish_sending()
    exchanges[1].poll()  # rank 1 takes its rows; rank 2 never finishes, never polls
    calls: list[int] = []
    with pytest.raises(ExchangeError, match=r"not complete after 5 s") as caught:
        exchanges[0].wait(5.0, on_idle=lambda: calls.append(1))
    text = str(caught.value)
    assert "scan 7" in text and "rank 2 has not finished sending" in text
    assert "rank(s) [2] have not received" in text and "rank 1" not in text
    assert calls  # the caller was given the idle time
    with pytest.raises(ExchangeError, match="before the exchange is ready"):
        exchanges[0].band()


def test_wait_returns_the_band_once_every_rank_finished() -> None:
    stack = make_stack(12, 5, 4)
    _, exchanges = make_exchanges(2, 5, 4, 12)
    scatter_round_robin(exchanges, stack)
    # rank 1 is served from rank 0's idle time, as a real rank would be by its own loop
    band = exchanges[0].wait(10.0, on_idle=exchanges[1].poll)
    assert band is exchanges[0].band()
    expect_band(exchanges[0], stack)


def test_scatter_under_the_cap_times_out_naming_a_rank_that_never_polls() -> None:
    stack = make_stack(8, 4, 16)
    piece = 2 * 2 * 16 * 4  # two frames of a 2-row band
    _, exchanges = make_exchanges(2, 4, 16, 8, max_in_flight_bytes=piece,
                                  clock=StepClock(1.0), send_timeout_s=10.0)
    exchanges[0].scatter(np.arange(2), angles_of(np.arange(2)), stack[:2])
    with pytest.raises(ExchangeError, match=r"sends to rank\(s\) \[1\] not received"):
        exchanges[0].scatter(np.arange(2, 4), angles_of(np.arange(2, 4)), stack[2:4])
    assert exchanges[0].stats.peak_in_flight_bytes == piece


def test_ranks_scattering_to_each_other_under_a_small_cap_do_not_deadlock() -> None:
    rows, cols, projections = 8, 32, 120
    stack = make_stack(projections, rows, cols)
    cap = 3 * (rows // 2) * cols * 4  # three frames' rows in flight per rank at most
    _, exchanges = make_exchanges(2, rows, cols, projections, max_in_flight_bytes=cap)
    failures: list[BaseException] = []

    def rank_main(exchange: BandExchange) -> None:
        try:
            mine = np.arange(exchange.rank, projections, 2)
            for block in np.array_split(mine, len(mine) // 2):
                exchange.scatter(block, angles_of(block), stack[block])
            exchange.finish_sending()
            exchange.wait(60.0)
        except BaseException as error:  # reported by the main thread
            failures.append(error)

    threads = [threading.Thread(target=rank_main, args=(e,)) for e in exchanges]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120.0)
    assert not any(thread.is_alive() for thread in threads)
    assert not failures, failures
    for exchange in exchanges:
        expect_band(exchange, stack)
        stats = exchange.stats
        assert 0 < stats.peak_in_flight_bytes <= cap
        assert stats.in_flight_bytes == 0
        assert stats.peak_held_bytes <= stats.band_bytes + 2 * cap


def test_stats_count_what_moved() -> None:
    rows, cols, projections = 7, 4, 10
    stack = make_stack(projections, rows, cols)
    _, exchanges = make_exchanges(2, rows, cols, projections)
    scatter_round_robin(exchanges, stack)
    settle(exchanges)
    bands = row_bands(rows, 2)
    for exchange in exchanges:
        stats = exchange.stats
        other = bands[1 - exchange.rank]
        mine = bands[exchange.rank]
        assert stats.bytes_sent == 5 * (other[1] - other[0]) * cols * 4
        assert stats.bytes_local == 5 * (mine[1] - mine[0]) * cols * 4
        assert stats.bytes_received == stats.bytes_local
        assert stats.band_bytes == projections * (mine[1] - mine[0]) * cols * 4
        assert stats.band_bytes <= stats.peak_held_bytes and stats.seconds > 0
        assert stats.in_flight_bytes == 0 and stats.held_bytes == stats.band_bytes


# --- bad input and protocol violations -------------------------------------------------


def test_scatter_refuses_blocks_that_do_not_fit() -> None:
    _, (exchange, _) = make_exchanges(2, 4, 3, 5)
    good = np.zeros((2, 4, 3), np.float32)
    with pytest.raises(ExchangeError, match=r"float32 array \(frames, 4, 3\), got float64"):
        exchange.scatter([0, 1], [0.0, 1.0], good.astype(np.float64))
    with pytest.raises(ExchangeError, match="frames of 4x3, got 4x2"):
        exchange.scatter([0, 1], [0.0, 1.0], good[:, :, :2])
    with pytest.raises(ExchangeError, match="indices must be 2 integers"):
        exchange.scatter([0], [0.0, 1.0], good)
    with pytest.raises(ExchangeError, match="angles_deg must have 2 values"):
        exchange.scatter([0, 1], [0.0], good)
    exchange.finish_sending()
    with pytest.raises(ExchangeError, match=r"scatter\(\) after finish_sending"):
        exchange.scatter([0, 1], [0.0, 1.0], good)


@pytest.mark.parametrize(("name", "value"), [("rows", 0), ("cols", -1), ("projections", -1),
                                             ("scan_serial", -2)])
def test_exchange_refuses_impossible_shapes(name: str, value: int) -> None:
    arguments = {"scan_serial": 1, "rows": 4, "cols": 3, "projections": 5} | {name: value}
    with pytest.raises(ExchangeError, match=f"{name} must be an integer"):
        BandExchange(MemoryNetwork(1).link(0), **arguments)  # type: ignore[arg-type]


def piece(serial: int, rows: tuple[int, int], cols: int, indices: list[int],
          payload_bytes: int | None = None) -> bytes:
    index_array = np.array(indices, dtype=np.int64)
    size = len(indices) * (rows[1] - rows[0]) * cols * 4
    return encode_piece(serial, rows=rows, cols=cols,
                        payload_bytes=size if payload_bytes is None else payload_bytes,
                        indices=index_array, angles_deg=index_array.astype(np.float64))


def rows_array(frames: int, rows: int) -> Frames:
    return np.zeros((frames, rows, 3), np.float32)


Message = tuple[bytes, Frames | None]
BAD_MESSAGES: dict[str, tuple[list[Message], str]] = {
    "truncated": ([(b"RSL1", None)], "expected at least 40 bytes"),
    "magic": ([(b"XXXX" + piece(7, (0, 2), 3, [0])[4:], None)], "expected magic"),
    "band": ([(piece(7, (0, 3), 3, [0]), rows_array(1, 3))],
             r"expected rows \[0, 2\), 3 cols, 24 bytes; got rows \[0, 3\)"),
    "length": ([(piece(7, (0, 2), 3, [0]) + b"x", None)], "bytes of indices and angles"),
    "payload": ([(piece(7, (0, 2), 3, [0]), rows_array(1, 1))],
                "header announced 24 bytes, got 12"),
    "done twice": ([(encode_done(7, 0), None)] * 2, "announced the end of its sending twice"),
    "too many": ([(piece(7, (0, 2), 3, [0]), rows_array(1, 2)), (encode_done(7, 0), None)],
                 "announced 0 frames but 1 arrived"),
    "after done": ([(encode_done(7, 0), None), (piece(7, (0, 2), 3, [0]), rows_array(1, 2))],
                   "after it announced the end"),
}


@pytest.mark.parametrize("case", sorted(BAD_MESSAGES))
def test_malformed_messages_are_refused_naming_the_sender(case: str) -> None:
    network, (exchange, _) = make_exchanges(2, 4, 3, 5)
    messages, message = BAD_MESSAGES[case]
    for header, array in messages:  # as rank 1 would send them
        network.post(1, 0, tag_for(7), header, array)
    with pytest.raises(ExchangeError, match=message) as caught:
        exchange.poll()
    assert "rank 1" in str(caught.value)


def test_header_layout_is_fixed() -> None:
    assert HEADER.size == 40
    assert len(piece(7, (0, 2), 3, [4, 5, 6])) == 40 + 3 * 16
    assert len(encode_done(7, 12)) == 40


def test_arrays_are_received_only_into_views_that_can_be_written_in_place() -> None:
    network = MemoryNetwork(2)
    sender, receiver = network.link(0), network.link(1)
    for target, message in [(np.zeros(6, np.float32)[::-1], "negative strides"),
                            (np.zeros(5, np.float32), "expected 20 bytes"),
                            (np.broadcast_to(np.zeros(1, np.float32), (6,)), "read-only")]:
        sender.send_parts(1, 4, b"h", np.arange(6, dtype=np.float32))
        assert receiver.probe_header(4) is not None
        incoming = receiver.probe_array(0, 4)
        assert incoming is not None
        with pytest.raises(ExchangeError, match=message):
            incoming.receive_into(target)
