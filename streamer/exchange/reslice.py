"""Reslice: every rank ends a scan holding the sinograms of its band of detector rows.

Each rank corrects the projection frames it pulled (a round-robin share, possibly none)
and hands every rank the rows of its band as blocks are corrected, with non-blocking
point-to-point messages in rounds, not a collective at the end: ranks must keep serving
their ZeroMQ sockets (MPICH busy-polls a rank blocked in MPI), they hold different
numbers of frames, and the exchange then overlaps with ingest and correction. See
``docs/explanation/reslice.md``.

One :class:`BandExchange` per scan per rank, over a link (:class:`PartsLink`:
:class:`streamer.exchange.links.RankLink` duplicated for the reslice, or an in-process
:class:`streamer.exchange.links.MemoryLink`). Per piece (up to :data:`MAX_PIECE_FRAMES`
frames, about :data:`PIECE_BYTES` to each rank) the sender sends a fixed binary header
with the frame indices and angles, then the rows straight from the block's memory; the
receiver validates the header and the payload size, then receives the rows straight
into the columns of its band (:class:`streamer.exchange.sinobuffer.SinogramBand`, allocated once
in sinogram layout), so the band is never copied into sinogram order. Messages carry
the scan serial and use tags derived from it, so pieces of another scan are never mixed
in.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from streamer.errors import ExchangeError
from streamer.exchange.links import Received
from streamer.exchange.sinobuffer import SinogramBand, columns_of, progressions

#: Header: magic+version, kind, scan serial, frame count, band rows [first, stop), cols,
#: payload bytes; then ``count`` int64 frame indices and ``count`` float64 angles.
HEADER: Final = struct.Struct("<4sB3xqIIIIQ")
MAGIC: Final = b"RSL1"
KIND_PIECE: Final = 1
KIND_DONE: Final = 2
MAX_PIECE_FRAMES: Final = 128  # keeps headers small (<= 2 KiB of indices+angles): eager
PIECE_BYTES: Final = 8 << 20  # payload to one rank per piece (at least one frame's rows)
DEFAULT_MAX_IN_FLIGHT_BYTES: Final = 64 << 20
DEFAULT_SEND_TIMEOUT_S: Final = 60.0
TAG_BASE: Final = 1000
TAG_SERIALS: Final = 8192  # scans whose tags differ; tags stay under MPI's minimum TAG_UB
HEADERS_PER_POLL: Final = 256


def row_bands(rows: int, ranks: int) -> tuple[tuple[int, int], ...]:
    """Balanced bands of detector rows, one per rank.

    Parameters
    ----------
    rows : int
        Detector rows (>= 1).
    ranks : int
        Number of ranks (>= 1).

    Returns
    -------
    tuple of (int, int)
        Half-open ``[a, b)`` per rank, contiguous and in rank order; sizes differ by at
        most one (the first ``rows % ranks`` ranks get one more). With more ranks than
        rows, the last ranks get empty bands ``(rows, rows)``.
    """
    for name, value in (("rows", rows), ("ranks", ranks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ExchangeError(f"row_bands: {name} must be an integer >= 1, got {value!r}")
    base, extra = divmod(rows, ranks)
    bands = []
    first = 0
    for rank in range(ranks):
        stop = first + base + (1 if rank < extra else 0)
        bands.append((first, stop))
        first = stop
    return tuple(bands)


def overlapping_bands(rows: int, ranks: int, halo: int) -> tuple[tuple[int, int], ...]:
    """The bands of :func:`row_bands`, each widened by ``halo`` rows on each side within
    ``[0, rows)``: the rows a rank receives when the steps after the reslice reach
    ``halo`` rows across its band (ADR 0019). An empty band stays empty (no own row to
    compute)."""
    if isinstance(halo, bool) or not isinstance(halo, int) or halo < 0:
        raise ExchangeError(f"overlapping_bands: halo must be an integer >= 0, got {halo!r}")
    return tuple((a, b) if a == b else (max(0, a - halo), min(rows, b + halo))
                 for a, b in row_bands(rows, ranks))


def tag_for(scan_serial: int) -> int:
    """The header tag of a scan's messages (its arrays use ``tag + 1``)."""
    return TAG_BASE + 2 * (scan_serial % TAG_SERIALS)


class Pending(Protocol):
    """A send or receive in progress."""

    def test(self) -> bool: ...


class IncomingArray(Protocol):
    """A matched array message, not yet received."""

    @property
    def nbytes(self) -> int: ...

    def receive_into(self, view: npt.NDArray[Any]) -> Pending: ...


class PartsLink(Protocol):
    """Header + array messages between ranks (:class:`streamer.exchange.links.RankLink`,
    :class:`streamer.exchange.links.MemoryLink`): FIFO per source, destination and tag."""

    @property
    def rank(self) -> int: ...

    @property
    def size(self) -> int: ...

    def send_parts(self, dest: int, tag: int, header: bytes,
                   array: npt.NDArray[Any] | None = None) -> Pending: ...

    def probe_header(self, tag: int) -> Received | None: ...

    def probe_array(self, source: int, tag: int) -> IncomingArray | None: ...


@dataclass(frozen=True)
class Band:
    """One rank's sinograms at the end of a scan.

    Attributes
    ----------
    rows : (int, int)
        Detector rows ``[a, b)`` of the band (with a ``halo``, the rank's own rows and
        their neighbours: :attr:`BandExchange.own_rows` says which are its own).
    indices : ndarray of shape (n,), int64
        Frame indices of the projections held, sorted.
    angles_deg : ndarray of shape (n,), float64
        Their angles, same order.
    sinograms : ndarray of shape (b - a, n, cols), float32, C-contiguous
        Sinograms in frame-index order.
    received : int
        Projections held (``n``).
    duplicates : int
        Frames that arrived again (from this or another rank) and were dropped.
    rejected : dict of str to int
        Frames refused, by reason: ``out_of_range`` (index < 0 or >= ``frames``),
        ``bad_angle`` (not finite), ``over_capacity`` (more distinct projections than the
        scan's ``start`` announced).
    other_scan : int
        Messages of another scan that reached this exchange, counted and discarded.
    """

    rows: tuple[int, int]
    indices: npt.NDArray[np.int64]
    angles_deg: npt.NDArray[np.float64]
    sinograms: npt.NDArray[np.float32]
    received: int
    duplicates: int
    rejected: dict[str, int]
    other_scan: int


@dataclass(frozen=True)
class ExchangeStats:
    """What one rank's exchange moved and held.

    ``bytes_sent`` / ``bytes_received`` count array payloads to / from other ranks,
    ``bytes_local`` this rank's own rows (copied, not sent). ``in_flight_bytes`` are
    payloads sent but not yet received (what ``max_in_flight_bytes`` caps);
    ``held_bytes`` is the band buffer plus the blocks kept alive by pending sends plus
    receive scratch, and ``peak_held_bytes`` its maximum. ``seconds`` is the time spent
    in the exchange's calls (``on_idle`` excluded), ``send_wait_seconds`` the part spent
    waiting for sends under the cap, ``assembly_seconds`` the part :meth:`band` spent
    sorting columns and closing gaps (``assembly_bytes`` moved; 0 when every frame came
    to its home column, see ``first_index``).
    """

    bytes_sent: int
    bytes_received: int
    bytes_local: int
    pieces_sent: int
    pieces_received: int
    band_bytes: int
    in_flight_bytes: int
    peak_in_flight_bytes: int
    held_bytes: int
    peak_held_bytes: int
    seconds: float
    send_wait_seconds: float
    assembly_seconds: float
    assembly_bytes: int


@dataclass(frozen=True)
class _Header:
    kind: int
    scan_serial: int
    count: int
    row_first: int
    row_stop: int
    cols: int
    payload_bytes: int
    indices: npt.NDArray[np.int64]
    angles_deg: npt.NDArray[np.float64]


def encode_piece(scan_serial: int, *, rows: tuple[int, int], cols: int, payload_bytes: int,
                 indices: npt.NDArray[np.int64], angles_deg: npt.NDArray[np.float64]) -> bytes:
    """The header of a piece: rows ``[a, b)`` of ``len(indices)`` frames follow as the
    array message (``payload_bytes`` of float32)."""
    head = HEADER.pack(MAGIC, KIND_PIECE, scan_serial, len(indices), rows[0], rows[1], cols,
                       payload_bytes)
    return (head + np.ascontiguousarray(indices, dtype="<i8").tobytes()
            + np.ascontiguousarray(angles_deg, dtype="<f8").tobytes())


def encode_done(scan_serial: int, frames: int) -> bytes:
    """The end of a rank's sending to one rank: ``frames`` frames were sent to it."""
    return HEADER.pack(MAGIC, KIND_DONE, scan_serial, frames, 0, 0, 0, 0)


def decode_header(source: int, payload: bytes) -> _Header:
    """Parse and check a header's own consistency (its fit to this scan is checked by
    the exchange)."""
    where = f"reslice header from rank {source}"
    if len(payload) < HEADER.size:
        raise ExchangeError(f"{where}: expected at least {HEADER.size} bytes, "
                            f"got {len(payload)}")
    magic, kind, serial, count, first, stop, cols, payload_bytes = HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise ExchangeError(f"{where}: expected magic {MAGIC!r}, got {magic!r}")
    if kind not in (KIND_PIECE, KIND_DONE):
        raise ExchangeError(f"{where}: expected kind {KIND_PIECE} or {KIND_DONE}, got {kind}")
    tail = len(payload) - HEADER.size
    if kind == KIND_DONE:
        if tail:
            raise ExchangeError(f"{where}: 'done' has {tail} trailing bytes, expected 0")
        empty_i, empty_a = np.empty(0, np.int64), np.empty(0, np.float64)
        return _Header(kind, serial, count, 0, 0, 0, 0, empty_i, empty_a)
    if not 1 <= count <= MAX_PIECE_FRAMES:
        raise ExchangeError(f"{where}: frame count must be in [1, {MAX_PIECE_FRAMES}], "
                            f"got {count}")
    if tail != 16 * count:
        raise ExchangeError(f"{where}: expected {16 * count} bytes of indices and angles "
                            f"for {count} frames, got {tail}")
    if stop < first:
        raise ExchangeError(f"{where}: band rows [{first}, {stop}) are reversed")
    end = HEADER.size + 8 * count
    indices = np.frombuffer(payload, dtype="<i8", count=count, offset=HEADER.size)
    angles = np.frombuffer(payload, dtype="<f8", count=count, offset=end)
    return _Header(kind, serial, count, first, stop, cols, payload_bytes,
                   indices.astype(np.int64), angles.astype(np.float64))


@dataclass
class _Piece:
    """A piece whose payload is awaited: its frames' band slots (-1: refused), whether
    it lands straight in the band, or whether it belongs to another scan (discarded)."""

    source: int
    count: int
    payload_bytes: int
    slots: npt.NDArray[np.int64]
    other_scan: bool = False
    pending: Pending | None = None
    scratch: npt.NDArray[np.uint8] | None = None

    @property
    def direct(self) -> bool:
        """Every frame kept, in evenly spaced columns: the payload lands in the band."""
        return not self.other_scan and columns_of(self.slots) is not None


@dataclass
class _Send:
    pending: Pending
    dest: int
    payload_bytes: int
    block_id: int


@dataclass
class _Counters:
    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_local: int = 0
    pieces_sent: int = 0
    pieces_received: int = 0
    in_flight_bytes: int = 0
    peak_in_flight_bytes: int = 0
    kept_bytes: int = 0
    scratch_bytes: int = 0
    peak_held_bytes: int = 0
    seconds: float = 0.0
    send_wait_seconds: float = 0.0
    assembly_seconds: float = 0.0
    assembly_bytes: int = 0
    other_scan: int = 0


class BandExchange:
    """One rank's reslice of one scan.

    Parameters
    ----------
    link : PartsLink
        Messages to and from the other ranks (a duplicated :class:`RankLink` under MPI,
        so the ingest's polling never sees these messages).
    scan_serial : int
        This scan's number, the same on every rank (>= 0); messages carry it, and their
        tags derive from it (:func:`tag_for`), so two scans' exchanges may coexist.
    rows, cols : int
        Detector shape of the corrected frames.
    projections : int
        Projections the scan's ``start`` announced: the band buffer holds at most this
        many (``projections x band_rows x cols`` float32, allocated once).
    max_in_flight_bytes : int
        :meth:`scatter` waits (receiving meanwhile) while this rank's payloads not yet
        received by their ranks would exceed this.
    frames : int, optional
        Frames in the scan: indices must lie in ``[0, frames)`` (else any index >= 0).
    first_index : int, optional
        Frame index of the first projection, when the projections are consecutive frames
        (``darks + flats`` when the references come first): each frame then lands in its
        final column, evenly spaced frames travel as one piece, and :meth:`band` moves
        nothing unless frames are missing. Without it (or for frames off that range),
        frames land in arrival order and :meth:`band` sorts the columns in one pass.
        Taken as 0 when ``frames == projections``.
    send_timeout_s : float
        How long :meth:`scatter` waits under the cap before :class:`ExchangeError`.
    clock : callable
        Seconds, monotonic (injectable for tests).
    on_landed : callable, optional
        ``on_landed(indices, angles_deg, frames)``: each piece of this rank's band as its
        data lands (its own rows and the other ranks'), frames ``(n, band_rows, cols)``
        (see :attr:`~streamer.exchange.sinobuffer.SinogramBand.on_landed`).
    halo : int
        Rows of the neighbouring bands each rank also receives on each side (clipped to
        the detector): overlapping bands for steps that reach across rows after the
        reslice (ADR 0019). ``0``: the bands of :func:`row_bands`. Every rank must pass
        the same value (a piece whose rows differ is refused).
    """

    def __init__(
        self,
        link: PartsLink,
        *,
        scan_serial: int,
        rows: int,
        cols: int,
        projections: int,
        max_in_flight_bytes: int = DEFAULT_MAX_IN_FLIGHT_BYTES,
        frames: int | None = None,
        first_index: int | None = None,
        send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        on_landed: Callable[[npt.NDArray[np.int64], npt.NDArray[np.float64],
                             npt.NDArray[np.float32]], None] | None = None,
        halo: int = 0,
    ) -> None:
        checks = {"scan_serial": (scan_serial, 0), "rows": (rows, 1), "cols": (cols, 1),
                  "projections": (projections, 0), "max_in_flight_bytes":
                  (max_in_flight_bytes, 0), "halo": (halo, 0)}
        if frames is not None:
            checks["frames"] = (frames, 0)
        if first_index is not None:
            checks["first_index"] = (first_index, 0)
        for name, (value, least) in checks.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ExchangeError(f"BandExchange: {name} must be an integer >= {least}, "
                                    f"got {value!r}")
        self.link = link
        self.rank, self.size = link.rank, link.size
        self.scan_serial, self.rows, self.cols = scan_serial, rows, cols
        if first_index is None and frames is not None and frames == projections:
            first_index = 0  # no references in the stream: projections are frames 0 …
        self.projections, self.frames, self.first_index = projections, frames, first_index
        self.max_in_flight_bytes = max_in_flight_bytes
        self.send_timeout_s = send_timeout_s
        self.clock = clock
        self.tag = tag_for(scan_serial)
        #: This rank's own rows (what it reconstructs and writes).
        self.own_rows = row_bands(rows, self.size)[self.rank]
        self.halo = halo
        #: The rows each rank receives: its own, widened by ``halo`` (sent from every
        #: frame, so a band narrower than the halo still gets every neighbour row).
        self.bands = overlapping_bands(rows, self.size, halo)
        self.band_rows = self.bands[self.rank]
        self._sinograms = SinogramBand(self.band_rows, cols, projections, frames, first_index,
                                       on_landed=on_landed)
        self._band_bytes = self._sinograms.nbytes
        self._stalled: deque[tuple[int, bytes]] = deque()  # headers waiting to be claimed
        self._sent_to = [0] * self.size
        self._announced: list[int | None] = [None] * self.size
        self._arrived = [0] * self.size
        self._expected: dict[int, deque[_Piece]] = {}
        self._receiving: list[_Piece] = []
        self._sends: deque[_Send] = deque()
        self._kept: dict[int, list[Any]] = {}  # id(block) -> [block, pending sends]
        self._finished = False
        self._band: Band | None = None
        self._count = _Counters()
        self._note_held()

    # --- sending -----------------------------------------------------------------------

    def scatter(self, indices: npt.ArrayLike, angles_deg: npt.ArrayLike,
                block: npt.NDArray[np.float32]) -> None:
        """Send every rank its rows of ``block`` (own rows copied locally), without
        waiting for delivery, except to keep this rank's payloads in flight under
        ``max_in_flight_bytes``: then it receives while it waits for sends to complete,
        so ranks scattering to each other cannot deadlock (:class:`ExchangeError` naming
        the ranks after ``send_timeout_s``).

        Parameters
        ----------
        indices : array_like of shape (k,), int
            Frame indices in the scan.
        angles_deg : array_like of shape (k,), float
        block : ndarray of shape (k, rows, cols), float32
            Corrected projections. It is sent from its own memory: do not modify it
            until the exchange has delivered it (:attr:`delivered`, or :meth:`wait`).
        """
        started = self.clock()
        try:
            self._scatter(indices, angles_deg, block)
        finally:
            self._count.seconds += self.clock() - started

    def finish_sending(self) -> None:
        """This rank has scattered everything it will for this scan: tell every rank how
        many frames it sent it (idempotent)."""
        if self._finished:
            return
        started = self.clock()
        self._finished = True
        self._announced[self.rank] = self._sent_to[self.rank]
        for dest in self._peers():
            header = encode_done(self.scan_serial, self._sent_to[dest])
            self._track_send(self.link.send_parts(dest, self.tag, header), dest, 0, None)
        self._count.seconds += self.clock() - started

    # --- receiving ---------------------------------------------------------------------

    def poll(self) -> int:
        """Take whatever band pieces have arrived; returns projections received so far."""
        started = self.clock()
        try:
            self._progress()
        finally:
            self._count.seconds += self.clock() - started
        return self._sinograms.received

    @property
    def ready(self) -> bool:
        """Every rank has finished sending to this rank and all it announced is here."""
        return not self._receiving and all(
            announced is not None and self._arrived[rank] == announced
            for rank, announced in enumerate(self._announced)
        )

    @property
    def delivered(self) -> bool:
        """Every piece this rank sent has been received by its rank (nothing it sent
        from is still in use)."""
        self._reap_sends()
        return not self._sends

    def band(self) -> Band:
        """This rank's sinograms, sorted by frame index (only when :attr:`ready`).

        The sinograms are the exchange's band buffer, sorted and compacted in place (no
        second band-sized array; one sinogram of scratch). Keep the exchange (and poll
        it) until :attr:`delivered` too: other ranks may still be receiving from blocks
        this rank sent; :meth:`wait` waits for both."""
        if self._band is not None:
            return self._band
        if not self.ready:
            raise ExchangeError(f"{self._where()}: band() before the exchange is ready: "
                                f"{self._missing()}")
        started = self.clock()
        assembled = self._sinograms.assemble()
        sinograms = self._sinograms
        self._band = Band(
            rows=self.band_rows, indices=assembled.indices, angles_deg=assembled.angles_deg,
            sinograms=assembled.sinograms, received=sinograms.received,
            duplicates=sinograms.duplicates, rejected=dict(sinograms.rejected),
            other_scan=self._count.other_scan,
        )
        elapsed = self.clock() - started
        self._count.seconds += elapsed
        self._count.assembly_seconds += elapsed
        self._count.assembly_bytes = assembled.moved_bytes
        return self._band

    def wait(self, timeout_s: float, on_idle: Callable[[], object] | None = None) -> Band:
        """Poll until :attr:`ready` and :attr:`delivered`, then return :meth:`band`.

        ``on_idle`` is called between polls, so the caller can serve its socket (it
        should wait briefly there, e.g. a ZeroMQ poll with a timeout); without it this
        backs off up to 1 ms between polls that brought nothing. After ``timeout_s``,
        :class:`ExchangeError` names the ranks still missing."""
        deadline = self.clock() + timeout_s
        idle_rounds = 0
        while True:
            started = self.clock()
            before = self._progress_marker()
            self._progress()
            done = self.ready and self.delivered
            now = self.clock()
            self._count.seconds += now - started
            if done:
                return self.band()
            if now >= deadline:
                raise ExchangeError(f"{self._where()}: not complete after {timeout_s:g} s: "
                                    f"{self._missing()}")
            if on_idle is not None:
                on_idle()
            else:
                idle_rounds = 0 if self._progress_marker() != before else idle_rounds + 1
                _back_off(idle_rounds)

    @property
    def stats(self) -> ExchangeStats:
        c = self._count
        return ExchangeStats(
            bytes_sent=c.bytes_sent, bytes_received=c.bytes_received,
            bytes_local=c.bytes_local, pieces_sent=c.pieces_sent,
            pieces_received=c.pieces_received, band_bytes=self._band_bytes,
            in_flight_bytes=c.in_flight_bytes, peak_in_flight_bytes=c.peak_in_flight_bytes,
            held_bytes=self._held(), peak_held_bytes=c.peak_held_bytes, seconds=c.seconds,
            send_wait_seconds=c.send_wait_seconds, assembly_seconds=c.assembly_seconds,
            assembly_bytes=c.assembly_bytes,
        )

    # --- internals: sending ------------------------------------------------------------

    def _scatter(self, indices: npt.ArrayLike, angles_deg: npt.ArrayLike,
                 block: npt.NDArray[np.float32]) -> None:
        if self._finished:
            raise ExchangeError(f"{self._where()}: scatter() after finish_sending()")
        index_array = np.asarray(indices)
        angle_array = np.asarray(angles_deg, dtype=np.float64)
        if not isinstance(block, np.ndarray) or block.dtype != np.float32 or block.ndim != 3:
            got = (f"{block.dtype} array of shape {block.shape}"
                   if isinstance(block, np.ndarray) else type(block).__name__)
            raise ExchangeError(f"{self._where()}: block must be a float32 array "
                                f"(frames, {self.rows}, {self.cols}), got {got}")
        count = block.shape[0]
        if block.shape[1:] != (self.rows, self.cols):
            raise ExchangeError(f"{self._where()}: block must have frames of "
                                f"{self.rows}x{self.cols}, got {block.shape[1]}x{block.shape[2]}")
        if index_array.shape != (count,) or not np.issubdtype(index_array.dtype, np.integer):
            raise ExchangeError(f"{self._where()}: indices must be {count} integers (one per "
                                f"frame), got {index_array.dtype} of shape {index_array.shape}")
        if angle_array.shape != (count,):
            raise ExchangeError(f"{self._where()}: angles_deg must have {count} values (one "
                                f"per frame), got shape {angle_array.shape}")
        index_array = index_array.astype(np.int64)
        step = self._frames_per_piece()
        runs = [0, count]
        if self.first_index is not None:  # evenly spaced frames land in evenly spaced columns
            runs = progressions(index_array)
        for run_start, run_stop in itertools.pairwise(runs):
            for first in range(run_start, run_stop, step):
                part = slice(first, min(first + step, run_stop))
                self._send_piece(index_array[part], angle_array[part], block, part)
                self._progress()

    def _frames_per_piece(self) -> int:
        tallest = max(b - a for a, b in self.bands)
        frame_bytes = max(1, tallest * self.cols * 4)
        return max(1, min(MAX_PIECE_FRAMES, PIECE_BYTES // frame_bytes))

    def _send_piece(self, indices: npt.NDArray[np.int64], angles: npt.NDArray[np.float64],
                    block: npt.NDArray[np.float32], part: slice) -> None:
        count = len(indices)
        for dest in self._peers():
            first, stop = self.bands[dest]
            payload_bytes = count * (stop - first) * self.cols * 4
            self._wait_for_room(payload_bytes)
            header = encode_piece(self.scan_serial, rows=(first, stop), cols=self.cols,
                                  payload_bytes=payload_bytes, indices=indices,
                                  angles_deg=angles)
            rows = block[part, first:stop, :] if payload_bytes else None
            pending = self.link.send_parts(dest, self.tag, header, rows)
            self._track_send(pending, dest, payload_bytes, block)
            self._sent_to[dest] += count
            self._count.pieces_sent += 1
            self._count.bytes_sent += payload_bytes
        self._sent_to[self.rank] += count
        self._arrived[self.rank] += count
        first, stop = self.band_rows
        if self._sinograms.would_evict(indices, angles):
            self._settle_band()
        slots = self._sinograms.claim(indices, angles)
        self._sinograms.store(slots, block[part, first:stop, :])
        self._count.bytes_local += int((slots >= 0).sum()) * (stop - first) * self.cols * 4

    def _peers(self) -> list[int]:
        """Other ranks, starting after this one (ranks do not all send to rank 0 first)."""
        return [(self.rank + offset) % self.size for offset in range(1, self.size)]

    def _track_send(self, pending: Pending, dest: int, payload_bytes: int,
                    block: npt.NDArray[np.float32] | None) -> None:
        block_id = 0
        if block is not None and payload_bytes:
            block_id = id(block)
            kept = self._kept.setdefault(block_id, [block, 0])
            if kept[1] == 0:
                self._count.kept_bytes += block.nbytes
            kept[1] += 1
        self._sends.append(_Send(pending, dest, payload_bytes, block_id))
        self._count.in_flight_bytes += payload_bytes
        self._count.peak_in_flight_bytes = max(self._count.peak_in_flight_bytes,
                                               self._count.in_flight_bytes)
        self._note_held()

    def _reap_sends(self) -> None:
        if not self._sends:
            return
        still: deque[_Send] = deque()
        for send in self._sends:
            if not send.pending.test():
                still.append(send)
                continue
            self._count.in_flight_bytes -= send.payload_bytes
            if send.block_id:
                kept = self._kept[send.block_id]
                kept[1] -= 1
                if kept[1] == 0:
                    self._count.kept_bytes -= kept[0].nbytes
                    del self._kept[send.block_id]
        self._sends = still

    def _wait_for_room(self, payload_bytes: int) -> None:
        """Receive and reap until ``payload_bytes`` more fit under the cap (or nothing is
        in flight: a single piece larger than the cap still goes)."""
        self._reap_sends()
        if self._fits(payload_bytes):
            return
        started = self.clock()
        deadline = started + self.send_timeout_s
        idle_rounds = 0
        while True:
            before = self._progress_marker()
            self._progress()
            if self._fits(payload_bytes):
                break
            now = self.clock()
            if now >= deadline:
                waiting = sorted({send.dest for send in self._sends})
                self._count.send_wait_seconds += now - started
                raise ExchangeError(
                    f"{self._where()}: sends to rank(s) {waiting} not received after "
                    f"{self.send_timeout_s:g} s ({self._count.in_flight_bytes} bytes in "
                    f"flight, cap {self.max_in_flight_bytes}): are those ranks polling?"
                )
            idle_rounds = 0 if self._progress_marker() != before else idle_rounds + 1
            _back_off(idle_rounds)
        self._count.send_wait_seconds += self.clock() - started

    def _fits(self, payload_bytes: int) -> bool:
        in_flight = self._count.in_flight_bytes
        return in_flight == 0 or in_flight + payload_bytes <= self.max_in_flight_bytes

    # --- internals: receiving ----------------------------------------------------------

    def _progress(self) -> None:
        self._reap_sends()
        self._take_headers()
        self._match_payloads()
        self._complete_receives()
        if self._stalled and not self._unsettled():
            self._take_headers()
            self._match_payloads()
            self._complete_receives()

    def _take_headers(self) -> None:
        """Handle stalled headers, then new ones, in arrival order. A piece that would
        evict a kept frame waits (stalls, with every header after it) until every frame
        already given a slot has its data in (:meth:`_would_evict`)."""
        for _ in range(HEADERS_PER_POLL):
            if self._stalled:
                source, payload = self._stalled[0]
            else:
                received = self.link.probe_header(self.tag)
                if received is None:
                    return
                source, payload = received.source, received.payload
                self._stalled.append((source, payload))
            if not self._on_header(source, payload):
                return
            self._stalled.popleft()

    def _unsettled(self) -> bool:
        """Some frame given a slot still has its data on the way."""
        return bool(self._receiving) or any(
            not piece.other_scan for queue in self._expected.values() for piece in queue)

    def _settle_band(self) -> None:
        """Receive until every frame given a slot has its data in (before this rank's
        own frames evict one), or ExchangeError after ``send_timeout_s``."""
        deadline = self.clock() + self.send_timeout_s
        idle_rounds = 0
        while self._unsettled():
            before = self._progress_marker()
            self._match_payloads()
            self._complete_receives()
            self._reap_sends()
            if self.clock() >= deadline:
                waiting = sorted({piece.source for piece in self._receiving}
                                 | {s for s, queue in self._expected.items() if queue})
                raise ExchangeError(f"{self._where()}: pieces from rank(s) {waiting} not "
                                    f"received after {self.send_timeout_s:g} s")
            idle_rounds = 0 if self._progress_marker() != before else idle_rounds + 1
            _back_off(idle_rounds)

    def _progress_marker(self) -> tuple[int, int, int, int, int]:
        return (sum(self._arrived), len(self._receiving), len(self._sends),
                self._count.other_scan, len(self._stalled))

    def _on_header(self, source: int, payload: bytes) -> bool:
        """Handle one header; False when it must wait (stall) for the band to settle."""
        if not 0 <= source < self.size or source == self.rank:
            raise ExchangeError(f"{self._where()}: header from unexpected rank {source}")
        header = decode_header(source, payload)
        if header.scan_serial != self.scan_serial:
            self._count.other_scan += 1
            if header.payload_bytes:  # drain it, unused
                self._expect(_Piece(source, header.count, header.payload_bytes,
                                    np.empty(0, np.int64), other_scan=True))
            return True
        if header.kind == KIND_DONE:
            self._on_done(source, header.count)
            return True
        first, stop = self.band_rows
        expected_bytes = header.count * (stop - first) * self.cols * 4
        if ((header.row_first, header.row_stop) != self.band_rows or header.cols != self.cols
                or header.payload_bytes != expected_bytes):
            raise ExchangeError(
                f"{self._where()}: piece from rank {source} does not fit this band: "
                f"expected rows [{first}, {stop}), {self.cols} cols, {expected_bytes} bytes; "
                f"got rows [{header.row_first}, {header.row_stop}), {header.cols} cols, "
                f"{header.payload_bytes} bytes (do the ranks agree on the scan's shape?)"
            )
        if self._announced[source] is not None:
            raise ExchangeError(f"{self._where()}: piece from rank {source} after it "
                                "announced the end of its sending")
        if self._sinograms.would_evict(header.indices, header.angles_deg) and self._unsettled():
            return False
        slots = self._sinograms.claim(header.indices, header.angles_deg)
        piece = _Piece(source, header.count, header.payload_bytes, slots)
        if header.payload_bytes:
            self._expect(piece)
        else:  # empty band: the header is the whole piece
            self._sinograms.landed(slots)
            self._arrive(piece)
        return True

    def _on_done(self, source: int, count: int) -> None:
        if self._announced[source] is not None:
            raise ExchangeError(f"{self._where()}: rank {source} announced the end of its "
                                "sending twice")
        self._announced[source] = count
        self._check_arrivals(source)

    def _expect(self, piece: _Piece) -> None:
        self._expected.setdefault(piece.source, deque()).append(piece)

    def _match_payloads(self) -> None:
        """Start receiving the payloads whose headers came, in each source's order. At
        most one piece at a time goes through scratch (other-scan or partly refused
        pieces); the others land straight in the band."""
        for source, queue in self._expected.items():
            while queue:
                piece = queue[0]
                if not piece.direct and self._count.scratch_bytes:
                    break
                incoming = self.link.probe_array(source, self.tag)
                if incoming is None:
                    break
                queue.popleft()
                view: npt.NDArray[Any]
                if incoming.nbytes != piece.payload_bytes:
                    raise ExchangeError(
                        f"{self._where()}: payload from rank {source}: its header announced "
                        f"{piece.payload_bytes} bytes, got {incoming.nbytes}"
                    )
                in_place = None if piece.other_scan else self._sinograms.view(piece.slots)
                if in_place is not None:
                    view = in_place
                else:
                    piece.scratch = np.empty(piece.payload_bytes, dtype=np.uint8)
                    self._count.scratch_bytes += piece.payload_bytes
                    self._note_held()
                    view = piece.scratch
                piece.pending = incoming.receive_into(view)
                self._receiving.append(piece)

    def _complete_receives(self) -> None:
        still = []
        for piece in self._receiving:
            assert piece.pending is not None
            if not piece.pending.test():
                still.append(piece)
                continue
            if piece.scratch is not None:
                if not piece.other_scan:
                    first, stop = self.band_rows
                    frames = piece.scratch.view(np.float32).reshape(
                        piece.count, stop - first, self.cols)
                    self._sinograms.store(piece.slots, frames)  # the kept frames
                self._count.scratch_bytes -= piece.payload_bytes
                piece.scratch = None
            elif not piece.other_scan:
                self._sinograms.landed(piece.slots)  # received in place
            if not piece.other_scan:
                self._count.bytes_received += piece.payload_bytes
                self._arrive(piece)
        self._receiving = still

    def _arrive(self, piece: _Piece) -> None:
        self._count.pieces_received += 1
        self._arrived[piece.source] += piece.count
        self._check_arrivals(piece.source)

    def _check_arrivals(self, source: int) -> None:
        announced = self._announced[source]
        if announced is not None and self._arrived[source] > announced:
            raise ExchangeError(f"{self._where()}: rank {source} announced {announced} "
                                f"frames but {self._arrived[source]} arrived")

    # --- internals: bookkeeping --------------------------------------------------------

    def _held(self) -> int:
        return self._band_bytes + self._count.kept_bytes + self._count.scratch_bytes

    def _note_held(self) -> None:
        self._count.peak_held_bytes = max(self._count.peak_held_bytes, self._held())

    def _where(self) -> str:
        return f"reslice of scan {self.scan_serial} (rank {self.rank} of {self.size})"

    def _missing(self) -> str:
        parts = []
        for rank, announced in enumerate(self._announced):
            arrived = self._arrived[rank]
            if announced is None:
                parts.append(f"rank {rank} has not finished sending ({arrived} frames "
                             "arrived so far)")
            elif arrived < announced:
                parts.append(f"rank {rank}: {arrived} of {announced} frames arrived")
        undelivered = sorted({send.dest for send in self._sends})
        if undelivered:
            parts.append(f"rank(s) {undelivered} have not received all this rank sent")
        return "; ".join(parts) or "receives in progress"


def _back_off(idle_rounds: int) -> None:
    """Sleep a little after polls that brought nothing (up to 1 ms), so ranks sharing
    cores let each other run; a busy exchange never sleeps."""
    if idle_rounds > 2:
        time.sleep(min(1e-3, 1e-6 * 2 ** min(idle_rounds, 20)))
