"""Reslice again on R ranks: bands of rows ↔ ranges of angles, after the first reslice.

After the first reslice (:class:`~streamer.exchange.reslice.BandExchange`) rank ``r``
holds its band of detector rows × every angle. A pipeline that goes on with a projection
section (HTTomo's Paganin after ``sino_360_to_180``: ADR 0009) needs all rows of some
angles: a **reverse** reslice, each rank then owning a range of angles
(:func:`~streamer.exchange.reslice.row_bands` over the angles); the next sinogram section
needs the bands again: a **forward** reslice. Both are one operation, :func:`transpose`:
a rank holds ``(own0, total1, cols)`` (its range of axis 0, all of axis 1) and ends with
``(own1, total0, cols)`` (its range of axis 1, all of axis 0). Bands → angles: axis 0 is
rows, axis 1 angles; angles → bands: the other way round.

Rank ``s`` sends rank ``d`` its ``data[:, range1(d)]`` (a strided view: MPI derived
datatypes describe it, nothing is packed, :meth:`streamer.exchange.links.RankLink.send_parts`),
cut along axis 0 into pieces of about :data:`~streamer.exchange.reslice.PIECE_BYTES`; rank
``d`` receives each straight into ``out[:, range0(s)]`` seen transposed (again a strided
view). Then each rank sends every other an ``end`` header with how many entries it sent
and whether it took part: a rank whose own part failed (a stage refused its data, a
stop) still sends ``end`` (marked failed) and drains what comes, so every rank learns
the same set of failed ranks at the same reslice and no message is left behind.

Memory per rank: its input (``own0 × total1 × cols``) and its output (``own1 × total0 ×
cols``), about two ``1/R`` of the scan, nothing else but one scratch piece when a
piece must be drained. Messages carry the scan serial and the reslice's number, on tags
of their own (:func:`transpose_tag`), apart from the first reslice's.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from streamer.errors import ExchangeError
from streamer.exchange.reslice import (
    PIECE_BYTES,
    TAG_BASE,
    TAG_SERIALS,
    IncomingArray,
    PartsLink,
    Pending,
    overlapping_bands,
    row_bands,
)

#: Header: magic, kind, failed, scan serial, reslice number, first entry of axis 0,
#: entries, total0, total1, cols, payload bytes.
HEADER: Final = struct.Struct("<4sBB2xqIIIIIIQ")
MAGIC: Final = b"TRS1"
KIND_PIECE: Final = 1
KIND_END: Final = 2
#: Tags after the first reslice's (``TAG_BASE`` … ``TAG_BASE + 2 * TAG_SERIALS``), below
#: MPI's smallest allowed ``TAG_UB`` (32767).
TAG_TRANSPOSE: Final = TAG_BASE + 2 * TAG_SERIALS
RESLICE_NUMBERS: Final = 64


def transpose_tag(number: int) -> int:
    """The header tag of a scan's ``number``-th later reslice (its arrays: ``tag + 1``)."""
    return TAG_TRANSPOSE + 2 * (number % RESLICE_NUMBERS)


@dataclass(frozen=True)
class Shape:
    """The whole array being resliced: ``total0 × total1 × cols`` (axis 0 is split among
    the ranks before, axis 1 after)."""

    total0: int
    total1: int
    cols: int


@dataclass
class _Expected:
    """A piece whose payload is awaited from ``source``: where it lands (None: drained)."""

    source: int
    count: int
    payload_bytes: int
    view: npt.NDArray[Any] | None
    pending: Pending | None = None
    scratch: npt.NDArray[np.uint8] | None = None


@dataclass(frozen=True)
class TransposeResult:
    """This rank's output and the ranks that could not take part (empty: all did)."""

    data: npt.NDArray[np.float32] | None
    failed_ranks: tuple[int, ...]
    bytes_sent: int
    bytes_received: int
    pieces_sent: int = 0  # array messages (a part's end marker not counted)
    pieces_received: int = 0


def transpose(
    link: PartsLink, data: npt.NDArray[np.float32] | None, shape: Shape, *, serial: int,
    number: int, timeout_s: float, clock: Callable[[], float] = time.monotonic,
    on_idle: Callable[[], object] | None = None, halo: int = 0,
) -> TransposeResult:
    """Reslice ``data`` (``(own0, total1, cols)``, this rank's range of axis 0) into this
    rank's range of axis 1 (``(own1, total0, cols)``) on every rank of ``link``.

    ``data=None``: this rank could not compute its part; it still takes part (sends
    ``end`` marked failed, drains what comes) so no rank waits for it, and gets
    ``data=None`` back. Every rank returns the same ``failed_ranks``. ``number`` (the
    scan's 2nd, 3rd … reslice: the first is the band exchange's) and ``serial`` must be
    the same on every rank; a message of another scan is drained and dropped.
    ``on_idle`` is called between polls (the caller serves its control link there).
    ``halo``: each rank gets ``halo`` entries of axis 1 more on each side of its range
    (clipped; :func:`~streamer.exchange.reslice.overlapping_bands`), for a next section
    whose kernels reach across its block axis (ADR 0019's addendum): the output is then
    ``(widened own1, total0, cols)``; every rank must pass the same value.
    Raises :class:`ExchangeError` for a malformed or mismatched message, or when a rank
    has not finished after ``timeout_s``.
    """
    exchange = _Transpose(link, data, shape, serial=serial, number=number, clock=clock,
                          halo=halo)
    return exchange.run(timeout_s, on_idle)


class _Transpose:
    def __init__(self, link: PartsLink, data: npt.NDArray[np.float32] | None, shape: Shape,
                 *, serial: int, number: int, clock: Callable[[], float],
                 halo: int = 0) -> None:
        self.link, self.shape, self.serial, self.number = link, shape, serial, number
        self.rank, self.size = link.rank, link.size
        self.clock = clock
        self.tag = transpose_tag(number)
        self.parts0 = row_bands(shape.total0, self.size) if shape.total0 else \
            ((0, 0),) * self.size
        self.parts1 = overlapping_bands(shape.total1, self.size, halo) if shape.total1 \
            else ((0, 0),) * self.size
        first0, stop0 = self.parts0[self.rank]
        first1, stop1 = self.parts1[self.rank]
        self.data = data
        self.out: npt.NDArray[np.float32] | None = None
        if data is not None:
            expected = (stop0 - first0, shape.total1, shape.cols)
            if data.dtype != np.float32 or data.shape != expected:
                raise ExchangeError(
                    f"{self._where()}: expected this rank's float32 part of shape "
                    f"{expected}, got {data.dtype} of shape {data.shape}")
            self.out = np.empty((stop1 - first1, shape.total0, shape.cols), np.float32)
            self.out[:, first0:stop0] = data[:, first1:stop1].transpose(1, 0, 2)
        self.sends: deque[Pending] = deque()
        self.announced: dict[int, tuple[int, bool]] = {}  # source -> (entries sent, failed)
        self.arrived = dict.fromkeys(self._peers(), 0)
        self.expected: dict[int, deque[_Expected]] = {s: deque() for s in self._peers()}
        self.receiving: list[_Expected] = []
        self.bytes_sent = 0
        self.bytes_received = 0
        self.pieces_sent = 0
        self.pieces_received = 0

    def run(self, timeout_s: float, on_idle: Callable[[], object] | None) -> TransposeResult:
        self._send_all()
        deadline = self.clock() + timeout_s
        idle = 0
        while not self._done():
            before = self._marker()
            self._progress()
            if self._done():
                break
            if self.clock() >= deadline:
                raise ExchangeError(f"{self._where()}: not complete after {timeout_s:g} s: "
                                    f"{self._missing()}")
            idle = 0 if self._marker() != before else idle + 1
            if on_idle is not None:
                on_idle()
            if idle > 2:
                time.sleep(min(1e-3, 1e-6 * 2 ** min(idle, 20)))
        failed = sorted({s for s, (_, bad) in self.announced.items() if bad}
                        | ({self.rank} if self.data is None else set()))
        return TransposeResult(None if failed else self.out, tuple(failed),
                               self.bytes_sent, self.bytes_received, self.pieces_sent,
                               self.pieces_received)

    # --- sending -----------------------------------------------------------------------

    def _peers(self) -> list[int]:
        return [(self.rank + offset) % self.size for offset in range(1, self.size)]

    def _send_all(self) -> None:
        data, cols = self.data, self.shape.cols
        first0, stop0 = self.parts0[self.rank]
        for dest in self._peers():
            sent = 0
            first1, stop1 = self.parts1[dest]
            width = stop1 - first1
            if data is not None and width and stop0 > first0:
                step = max(1, PIECE_BYTES // max(1, width * cols * 4))
                for begin in range(0, stop0 - first0, step):
                    end = min(begin + step, stop0 - first0)
                    piece = data[begin:end, first1:stop1]
                    header = self._header(KIND_PIECE, first0 + begin, end - begin,
                                          piece.nbytes, failed=False)
                    self.sends.append(self.link.send_parts(dest, self.tag, header, piece))
                    self.bytes_sent += piece.nbytes
                    self.pieces_sent += 1
                    sent += end - begin
            header = self._header(KIND_END, 0, sent, 0, failed=data is None)
            self.sends.append(self.link.send_parts(dest, self.tag, header))

    def _header(self, kind: int, first: int, count: int, payload: int, *,
                failed: bool) -> bytes:
        shape = self.shape
        return HEADER.pack(MAGIC, kind, int(failed), self.serial, self.number, first, count,
                           shape.total0, shape.total1, shape.cols, payload)

    # --- receiving ---------------------------------------------------------------------

    def _progress(self) -> None:
        self.sends = deque(send for send in self.sends if not send.test())
        while (received := self.link.probe_header(self.tag)) is not None:
            self._on_header(received.source, received.payload)
        for source, queue in self.expected.items():
            while queue:
                incoming: IncomingArray | None = self.link.probe_array(source, self.tag)
                if incoming is None:
                    break
                piece = queue.popleft()
                if incoming.nbytes != piece.payload_bytes:
                    raise ExchangeError(f"{self._where()}: payload from rank {source}: its "
                                        f"header announced {piece.payload_bytes} bytes, got "
                                        f"{incoming.nbytes}")
                target: npt.NDArray[Any]
                if piece.view is None:
                    target = piece.scratch = np.empty(piece.payload_bytes, np.uint8)
                else:
                    target = piece.view
                piece.pending = incoming.receive_into(target)
                self.receiving.append(piece)
        still = []
        for piece in self.receiving:
            assert piece.pending is not None
            if not piece.pending.test():
                still.append(piece)
                continue
            if piece.view is not None:
                self.bytes_received += piece.payload_bytes
                self.pieces_received += 1
                self.arrived[piece.source] += piece.count
            piece.scratch = None
        self.receiving = still

    def _on_header(self, source: int, payload: bytes) -> None:
        where = f"{self._where()}: header from rank {source}"
        if source == self.rank or not 0 <= source < self.size:
            raise ExchangeError(f"{where}: not a peer of this rank")
        if len(payload) != HEADER.size:
            raise ExchangeError(f"{where}: expected {HEADER.size} bytes, got {len(payload)}")
        (magic, kind, failed, serial, number, first, count, total0, total1, cols,
         payload_bytes) = HEADER.unpack(payload)
        if magic != MAGIC or kind not in (KIND_PIECE, KIND_END):
            raise ExchangeError(f"{where}: expected magic {MAGIC!r} and kind {KIND_PIECE} or "
                                f"{KIND_END}, got {magic!r} and {kind}")
        if serial != self.serial or number != self.number:  # an earlier scan's leftovers
            if payload_bytes:
                self.expected[source].append(_Expected(source, count, payload_bytes, None))
            return
        if kind == KIND_END:
            if source in self.announced:
                raise ExchangeError(f"{where}: a second 'end'")
            self.announced[source] = (count, bool(failed))
            return
        if self.out is None:  # this rank failed: drained, whatever its shape
            self.expected[source].append(_Expected(source, count, payload_bytes, None))
            return
        shape = self.shape
        if (total0, total1, cols) != (shape.total0, shape.total1, shape.cols):
            raise ExchangeError(
                f"{where}: expected a scan of {shape.total0} x {shape.total1} x {shape.cols} "
                f"at this reslice, got {total0} x {total1} x {cols} (a stage gave the ranks "
                "different shapes?)")
        low, high = self.parts0[source]
        first1, stop1 = self.parts1[self.rank]
        expected_bytes = count * (stop1 - first1) * shape.cols * 4
        if not (low <= first and first + count <= high) or payload_bytes != expected_bytes:
            raise ExchangeError(
                f"{where}: expected entries within [{low}, {high}) and {expected_bytes} "
                f"bytes, got [{first}, {first + count}) and {payload_bytes} bytes")
        view = self.out[:, first:first + count].transpose(1, 0, 2)
        self.expected[source].append(_Expected(source, count, payload_bytes, view))

    # --- bookkeeping -------------------------------------------------------------------

    def _done(self) -> bool:
        if self.sends or self.receiving or len(self.announced) < self.size - 1:
            return False
        if any(self.expected[s] for s in self.expected):
            return False
        first1, stop1 = self.parts1[self.rank]
        for source, (count, failed) in self.announced.items():
            low, high = self.parts0[source]
            whole = (high - low) if stop1 > first1 else 0
            if self.out is not None and not failed and count != whole:
                raise ExchangeError(f"{self._where()}: rank {source} sent {count} entries, "
                                    f"expected {whole}")
            if self.out is not None and self.arrived[source] < count:
                return False
            if self.arrived[source] > count:
                raise ExchangeError(f"{self._where()}: rank {source} announced {count} "
                                    f"entries, {self.arrived[source]} arrived")
        return True

    def _marker(self) -> tuple[int, int, int, int]:
        return (sum(self.arrived.values()), len(self.receiving), len(self.sends),
                len(self.announced))

    def _where(self) -> str:
        return (f"reslice {self.number} of scan {self.serial} (rank {self.rank} of "
                f"{self.size})")

    def _missing(self) -> str:
        parts = [f"rank {s} has not finished sending" for s in self._peers()
                 if s not in self.announced]
        parts += [f"rank {s}: {self.arrived[s]} of {count} entries arrived"
                  for s, (count, _) in self.announced.items()
                  if self.out is not None and self.arrived[s] < count]
        if self.sends:
            parts.append("this rank's sends are not all received")
        return "; ".join(parts) or "receives in progress"


__all__ = ["RESLICE_NUMBERS", "TAG_TRANSPOSE", "Shape", "TransposeResult", "transpose",
           "transpose_tag"]
