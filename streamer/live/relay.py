"""The live feed on 1..R ranks: rank 0 serves it, the other ranks relay to it.

The ``run`` service's runner (:class:`~streamer.run.ranks.RankedReconstruction`) has a
:class:`FeedRelay` as its observer on every rank count, one rank included (rank 0 of a
one-rank link: it hands the :class:`~streamer.live.feed.LiveFeed` its own corrected
projections and final slices, and nothing is relayed). On R ranks each rank corrects only
the projections that reached it and reconstructs only its band of rows, so every rank owns
a :class:`FeedRelay` on a link of its own (``RankLink.duplicate()``):

* **rank 0** holds the feed (and the viewer's control socket) and hands it its own
  projections and slices, as on one rank, plus what the other ranks relay: the preview
  rows of their corrected projections (the only rows the preview needs,
  :func:`~streamer.live.feed.preview_rows_for`), their final slices already binned and
  strided as the feed keeps them (:func:`~streamer.live.feed.bin_slices`), and their
  counts (frames received, duplicates, rejected), which the counters sum;
* **the other ranks** send those to rank 0, **bounded**: at most ``max_in_flight_bytes``
  sent and not yet acknowledged by rank 0 (rank 0 acknowledges what it took each time it
  serves the link). When rank 0 lags, a message that would go beyond is skipped and
  counted (``dropped_rows`` / ``dropped_slices`` in the counters): the feed never makes a
  rank wait, and a rank never queues without bound.

**A CoR set from the viewer** arrives on rank 0's control socket while the scan is open.
When the scan closes (:meth:`FeedRelay.scan_closing`, the same point as
``scan_closing`` on one rank, after which the feed answers ``too_late``) rank 0 sends the
value (or none) to every rank; every rank waits (bounded) for it before its band is
reconstructed and uses it, labelled ``user (viewer)`` in its part and the master.

**Transfers** are counted per rank and scan: the reslice's (from its
:class:`~streamer.exchange.reslice.ExchangeStats`) and the relay's own messages and bytes,
sent to rank 0 with the rank's end-of-scan message and summed there (run report
``transfers``, terminal summary).

**Latency**: rank 0's :class:`~streamer.run.latency.LatencyRecorder` also gets the time
every relayed frame was received on its rank and the last frame each rank received, so
frame → preview and last frame → volume cover every rank (wall clock: see
:mod:`streamer.run.latency`).

Messages are msgpack maps with raw array bytes (never pickle), validated before use; a
malformed one is counted and logged, never trusted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

import msgpack
import numpy as np
import numpy.typing as npt

from stages.spec import Pattern
from streamer.errors import ExchangeError, ProtocolError, StreamerError
from streamer.exchange.links import Received
from streamer.exchange.reslice import ExchangeStats
from streamer.ingest.accounting import ScanReport
from streamer.ingest.state import FramesAccepted, IngestState
from streamer.live.feed import (
    BinnedSlices,
    FeedSettings,
    LiveFeed,
    RemoteCounts,
    bin_slices,
    preview_rows_for,
    slice_binning,
    slice_stride,
)
from streamer.live.preview_stage import preview_stage
from streamer.pipeline.config import PipelineStep
from streamer.pipeline.executor import ProcessedBlock
from streamer.pipeline.halo import WITHOUT_NEIGHBOURS
from streamer.run.latency import LatencyRecorder
from streamer.run.output import ScanOutput
from streamer.wire.protocol import StartHeader

TAG_ROWS: Final = 401
TAG_SLICES: Final = 402
TAG_COUNTS: Final = 403
TAG_DONE: Final = 404
TAG_ACK: Final = 405
TAG_CENTER: Final = 406
#: How long a rank waits for rank 0's CoR decision, and rank 0 for the ranks' ends.
DEFAULT_RELAY_TIMEOUT_S: Final = 120.0
#: The method label of a CoR set from the viewer (as the one-rank processor's).
VIEWER_METHOD: Final = "user (viewer)"
_POLL_PAUSE_S: Final = 0.0005
#: Scans whose ends rank 0 keeps while it has not finished them (older ones are dropped).
_KEPT_SCANS: Final = 4


class Link(Protocol):
    """The relay's link (``RankLink`` or ``MemoryLink``, a duplicate of its own)."""

    @property
    def rank(self) -> int: ...

    @property
    def size(self) -> int: ...

    def send(self, dest: int, tag: int, payload: bytes) -> None: ...

    def send_to_others(self, tag: int, payload: bytes) -> None: ...

    def poll(self, limit: int = 1000) -> list[Received]: ...


@dataclass
class Transfers:
    """Messages and bytes one rank sent and received, for one purpose."""

    messages_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    bytes_received: int = 0

    @classmethod
    def of_exchange(cls, stats: ExchangeStats) -> Transfers:
        """The reslice's array payloads to and from other ranks (its own rows excluded)."""
        return cls(stats.pieces_sent, stats.bytes_sent, stats.pieces_received,
                   stats.bytes_received)

    @classmethod
    def from_dict(cls, value: Any) -> Transfers:
        if not isinstance(value, dict):
            raise ExchangeError(f"relay: transfers: expected a map, got {type(value).__name__}")
        return cls(*(_count(value, name) for name in
                     ("messages_sent", "bytes_sent", "messages_received", "bytes_received")))

    def add(self, other: Transfers) -> Transfers:
        return Transfers(self.messages_sent + other.messages_sent,
                         self.bytes_sent + other.bytes_sent,
                         self.messages_received + other.messages_received,
                         self.bytes_received + other.bytes_received)

    def as_dict(self) -> dict[str, int]:
        return {"messages_sent": self.messages_sent, "bytes_sent": self.bytes_sent,
                "messages_received": self.messages_received,
                "bytes_received": self.bytes_received}


def transfers_document(per_rank: dict[int, dict[str, Transfers]]) -> dict[str, Any]:
    """The run report's ``transfers``: per rank and summed, for the reslice and the relay."""
    kinds = ("reslice", "relay")
    total = {kind: Transfers() for kind in kinds}
    for counts in per_rank.values():
        for kind in kinds:
            total[kind] = total[kind].add(counts.get(kind, Transfers()))
    return {"per_rank": {str(rank): {kind: counts.get(kind, Transfers()).as_dict()
                                     for kind in kinds}
                         for rank, counts in sorted(per_rank.items())},
            "total": {kind: total[kind].as_dict() for kind in kinds}}


def anything_moved(document: dict[str, Any]) -> bool:
    """Whether a ``transfers`` document counts anything (one rank without ``--feed``
    moves nothing between ranks: no terminal line for it, the report keeps its zeros)."""
    return any(any(counts.values()) for counts in document["total"].values())


def transfers_line(document: dict[str, Any]) -> str:
    """One terminal line: ``transfers: reslice 12.0 MB sent in 40 messages (rank 0 …),
    relay 1.2 MB in 30 messages``."""
    def megabytes(count: int) -> str:
        return f"{count / 1e6:.1f} MB"

    total = document["total"]
    per_rank = ", ".join(
        f"rank {rank} {megabytes(kinds['reslice']['bytes_sent'])} out/"
        f"{megabytes(kinds['reslice']['bytes_received'])} in"
        for rank, kinds in document["per_rank"].items())
    reslice, relay = total["reslice"], total["relay"]
    return (f"transfers: reslice {megabytes(reslice['bytes_sent'])} in "
            f"{reslice['messages_sent']} messages ({per_rank}); relay to rank 0 "
            f"{megabytes(relay['bytes_sent'])} in {relay['messages_sent']} messages")


def preview_geometry(steps: tuple[PipelineStep, ...]) -> tuple[float | None, int | None]:
    """The pipeline's fixed CoR and slice size, if its reconstruction sets them (what the
    feed opens a scan's preview with)."""
    params = [dict(s.params) for s in steps if s.spec.needs_angles]
    first = params[0] if params else {}
    center, size = first.get("center"), first.get("output_size")
    return (float(center) if center is not None else None,
            int(size) if size is not None else None)


@dataclass
class _ViewerCenter:
    """Rank 0's :class:`~streamer.live.feed.CenterTarget`: the feed stores a CoR set from
    the viewer here; the relay sends it to every rank when the scan closes."""

    center_override: float | None = None
    on_center: Callable[[float, str], None] | None = None


@dataclass
class _Sending:
    """A non-zero rank's open scan."""

    serial: int
    start: StartHeader
    rows: tuple[int, ...]
    received: list[int] = field(default_factory=lambda: [0, 0, 0])
    received_at: dict[int, float] = field(default_factory=dict)
    last_received: float | None = None
    dropped_rows: int = 0
    dropped_slices: int = 0
    stride: int | None = None
    relay: Transfers = field(default_factory=Transfers)
    center: tuple[bool, float | None] | None = None  # rank 0's decision, once it came


@dataclass
class _Hub:
    """Rank 0's view of one scan: what the ranks said at their end."""

    serial: int
    scan: str
    ends: dict[int, dict[str, Any]] = field(default_factory=dict)
    relay: Transfers = field(default_factory=Transfers)  # rank 0's own (received)
    reslice: Transfers = field(default_factory=Transfers)  # rank 0's own
    recorder: LatencyRecorder | None = None
    report: ScanReport | None = None
    center: tuple[float, str] | None = None
    figures: dict[str, Any] = field(default_factory=dict)


class FeedRelay:
    """One rank's end of the feed on R ranks; see the module docstring.

    Parameters
    ----------
    link : Link
        The relay's own link (``RankLink.duplicate()``, made on every rank in the same
        order).
    settings : FeedSettings
        The feed's settings (the same on every rank: preview rows, binning, budget).
    feed : LiveFeed, optional
        Rank 0's feed (None on the other ranks).
    steps : tuple of PipelineStep
        The pipeline (its fixed CoR and slice size open the preview).
    clock : callable
        Wall-clock seconds (``time.time``) for the latency figures; injected in tests.

    Every hook is called from one thread of the rank at a time (the runner's); only the
    feed's thread also reaches in, through the feed (``on_preview``, the CoR target).
    """

    def __init__(self, link: Link, settings: FeedSettings | None, *,
                 feed: LiveFeed | None = None,
                 steps: tuple[PipelineStep, ...] = (),
                 clock: Callable[[], float] = time.time,
                 max_in_flight_bytes: int | None = None,
                 timeout_s: float = DEFAULT_RELAY_TIMEOUT_S,
                 log: Callable[[str], None] | None = None) -> None:
        if (feed is not None and link.rank != 0) or (
                settings is not None and link.rank == 0 and feed is None):
            raise StreamerError(f"FeedRelay: rank {link.rank}: expected the feed on rank 0 "
                                "and on rank 0 only")
        #: Rank 0 gathers; the others send. Without ``settings`` (no ``--feed``) only the
        #: figures travel: transfers and the last frame's time.
        self.gathers = link.rank == 0
        self.link = link
        self.settings = settings
        self.feed = feed
        self.steps = steps
        self.clock = clock
        #: Default: half the feed's budget (what it keeps of a scan's slices at most).
        default_bytes = settings.memory_bytes // 2 if settings is not None else 1 << 20
        self.max_in_flight_bytes = (default_bytes if max_in_flight_bytes is None
                                    else max_in_flight_bytes)
        self.timeout_s = timeout_s
        self.log = log
        self._state: IngestState | None = None
        # Sending side (ranks 1…R-1).
        self._sent_bytes = 0  # every budgeted byte ever sent to rank 0
        self._acked_bytes = 0  # … of which rank 0 said it took
        self._scan: _Sending | None = None
        self._decisions: dict[int, float | None] = {}  # serial -> viewer CoR (early)
        # Rank 0.
        self._taken: dict[int, int] = {}  # source -> budgeted bytes taken (acknowledged)
        self._hubs: dict[int, _Hub] = {}
        self._open: int | None = None  # the serial the feed shows
        self._latest = 0  # the newest serial rank 0 opened
        self._decided = 0  # the newest serial whose CoR decision rank 0 sent
        self._target = _ViewerCenter()
        self._early: list[Received] = []  # relayed for a scan rank 0 has not opened yet
        self.rejected_messages = 0

    @property
    def rank(self) -> int:
        return self.link.rank

    @property
    def in_flight_bytes(self) -> int:
        """Bytes sent to rank 0 that it has not yet said it took."""
        return self._sent_bytes - self._acked_bytes

    def watch(self, state: IngestState) -> None:
        """Read duplicates, out-of-range and rejected counts from this rank's ingest."""
        self._state = state
        if self.feed is not None:
            self.feed.watch(state)

    # --- the runner's hooks (every rank, same order) -------------------------------------

    def scan_opened(self, serial: int, start: StartHeader) -> None:
        """A scan opened on this rank (``serial`` as every rank numbers it)."""
        self.serve()
        if not self.gathers:
            rows = preview_rows_for(self.settings, start.rows) if self.settings else ()
            self._scan = _Sending(serial, start, rows)
            return
        recorder = LatencyRecorder(clock=self.clock)
        self._hubs[serial] = _Hub(serial, start.scan, recorder=recorder)
        self._open = self._latest = serial
        for old in sorted(self._hubs)[:-_KEPT_SCANS]:
            del self._hubs[old]
        self._target = _ViewerCenter()
        if self.feed is not None:
            center, size = preview_geometry(self.steps)
            # what the frames every rank hands over have been through (the same rule on
            # every rank: R ranks correct their frames up to the first halo step)
            stage = preview_stage(self.steps, ranks=self.link.size)
            self.feed.scan_opened(start, target=self._target, center=center, slice_size=size,
                                  stage=stage)
            self.feed.on_preview = _previews_of(start.scan, recorder)
        early, self._early = self._early, []
        self._take_all(early)

    def frames_accepted(self, event: FramesAccepted) -> None:
        """Frames of the open scan accepted by this rank's ingest."""
        indices = [event.message.header.first + int(i)
                   for i in np.flatnonzero(event.accepted)]
        now = self.clock()
        if self.gathers:
            hub = self._hubs.get(self._open) if self._open is not None else None
            if hub is not None and hub.recorder is not None:
                hub.recorder.frames_received_at(indices, now)
            if self.feed is not None:
                self.feed.frames_accepted(event)
            self.serve()
            return
        scan = self._scan
        if scan is None or event.start.scan != scan.start.scan:
            return
        keys = np.asarray(event.message.header.keys, dtype=np.int8)[event.accepted]
        counts = np.bincount(keys, minlength=3)
        for key in range(3):
            scan.received[key] += int(counts[key])
        for index, key in zip(indices, keys, strict=True):
            if key == 0:  # projections: their time goes with their preview rows
                scan.received_at.setdefault(index, now)
        if indices:
            scan.last_received = now
        if self.settings is not None:
            self._send_budgeted(TAG_COUNTS, self._counts_message(scan))

    def projections(self, block: ProcessedBlock) -> None:
        """Corrected projections of this rank: their preview rows go to the feed."""
        if self.gathers:
            if self.feed is not None:
                self.feed.projections(block)
            self.serve()
            return
        scan = self._scan
        if scan is None or len(block.indices) == 0 or self.settings is None:
            return
        rows = np.ascontiguousarray(block.data[:, list(scan.rows), :], dtype="<f4")
        indices = [int(i) for i in block.indices]
        times = [scan.received_at.pop(i, scan.last_received or self.clock())
                 for i in indices]
        message = msgpack.packb({
            "serial": scan.serial, "indices": indices,
            "angles": [float(a) for a in block.angles_deg], "received_at": times,
            "shape": list(rows.shape), "data": rows.tobytes(),
        })
        if not self._send_budgeted(TAG_ROWS, message):
            scan.dropped_rows += len(indices)

    def scan_closing(self, serial: int) -> None:
        """Ingest closed the scan on this rank (before its last projections are
        corrected). Rank 0: no CoR can be set from the viewer any more; the value set,
        if any, goes to every rank. Once per scan (the runner calls it again when its
        close begins, so that a scan failed on rank 0 never leaves the others waiting)."""
        if not self.gathers:
            self.serve()
            return
        if serial <= self._decided:
            return
        self._decided = serial
        if self.feed is not None:
            self.feed.scan_closing()
        value = self._target.center_override
        self.link.send_to_others(TAG_CENTER, msgpack.packb(
            {"serial": serial, "set": value is not None, "center": value}))
        self._decisions[serial] = value
        self.serve()

    def viewer_center(self, serial: int, serve: Callable[[], None] | None = None
                      ) -> float | None:
        """The CoR set from the viewer for scan ``serial`` (None: none was set), the same
        on every rank. Other ranks wait for rank 0's decision (bounded), serving
        ``serve`` (the runner's other links) meanwhile.

        Raises
        ------
        ExchangeError
            If rank 0's decision does not come within ``timeout_s``.
        """
        if self.gathers:
            return self._decisions.pop(serial, None)
        deadline = time.monotonic() + self.timeout_s
        while serial not in self._decisions:
            self.serve()
            if serial in self._decisions:
                break
            if serve is not None:
                serve()
            if time.monotonic() > deadline:
                raise ExchangeError(f"relay: rank {self.rank}: no CoR decision from rank 0 "
                                    f"within {self.timeout_s:g} s")
            time.sleep(_POLL_PAUSE_S)
        return self._decisions.pop(serial)

    def center_settled(self, serial: int, center: float, method: str) -> None:
        """The CoR the scan is reconstructed at (rank 0: the preview moves to it)."""
        hub = self._hubs.get(serial)
        if hub is not None:
            hub.center = (center, method)
        if self.feed is not None and self._target.on_center is not None:
            self._target.on_center(center, method)

    def slices(self, serial: int, indices: npt.NDArray[np.int64],
               data: npt.NDArray[np.float32]) -> None:
        """Final slices ``(n, N, N)`` this rank wrote (``indices``: their scan rows)."""
        if self.gathers:
            if self.feed is not None:
                self.feed.slices(ProcessedBlock(Pattern.SINOGRAM, indices, np.zeros(0), data,
                                                True))
            self.serve()
            return
        scan = self._scan
        if scan is None or scan.serial != serial or len(indices) == 0 or self.settings is None:
            return
        binning = slice_binning(data.shape, self.settings)
        if scan.stride is None:
            scan.stride = slice_stride(scan.start.rows, data.shape[-1], binning, self.settings)
        item = bin_slices(data, [int(i) for i in indices], binning, scan.stride)
        message = msgpack.packb({
            "serial": serial, "first": item.first, "last": item.last,
            "binning": item.binning, "stride": item.stride,
            "kept": [_image(index, image) for index, image in item.kept],
            "shown": _image(*item.shown),
        })
        if not self._send_budgeted(TAG_SLICES, message):
            scan.dropped_slices += item.last - item.first

    def part_done(self, serial: int, exchange: ExchangeStats | None, *,
                  streamed: bool = False) -> None:
        """This rank wrote its part (or failed): its transfers and counts go to rank 0
        (rank 0: whether its band streamed labels the scan's latency)."""
        reslice = Transfers.of_exchange(exchange) if exchange is not None else Transfers()
        if self.gathers:
            hub = self._hubs.get(serial)
            if hub is not None:
                hub.reslice = reslice
                if hub.recorder is not None:
                    hub.recorder.streaming = streamed
            self.serve()
            return
        scan = self._scan
        if scan is None or scan.serial != serial:
            return
        self.serve()
        counts = msgpack.unpackb(self._counts_message(scan), raw=False)
        self.link.send(0, TAG_DONE, msgpack.packb({
            **counts, "reslice": reslice.as_dict(), "relay": scan.relay.as_dict(),
            "last_received": scan.last_received}))
        self._scan = None

    # --- rank 0: the scan's end ------------------------------------------------------------

    def report_merged(self, serial: int, report: ScanReport) -> None:
        """Rank 0: the scan's merged accounting (for the feed's ``scan_end``)."""
        hub = self._hubs.get(serial)
        if hub is not None:
            hub.report = report

    def finish_master(self, serial: int, document: dict[str, Any],
                      serve: Callable[[], None] | None = None,
                      silent: tuple[int, ...] = ()) -> None:
        """Rank 0, every part written, before the master: wait (bounded) for every rank's
        end message (but the ``silent`` ones, which wrote nothing in time), then add
        ``transfers`` and ``latency`` (the volume is complete once the master is written,
        which is next) to the report ``document``."""
        hub = self._hubs.get(serial)
        if not self.gathers or hub is None:
            return
        others = set(range(1, self.link.size)) - set(silent)
        deadline = time.monotonic() + self.timeout_s
        while not others <= set(hub.ends):
            self.serve()
            if others <= set(hub.ends):
                break
            if serve is not None:
                serve()
            if time.monotonic() > deadline:
                late = sorted(others - set(hub.ends))
                if self.log is not None:
                    self.log(f"relay: ranks {late} did not end scan {hub.scan} within "
                             f"{self.timeout_s:g} s: their transfers are not counted")
                break
            time.sleep(_POLL_PAUSE_S)
        per_rank: dict[int, dict[str, Transfers]] = {
            0: {"reslice": hub.reslice, "relay": hub.relay}}
        recorder = hub.recorder
        for rank, end in sorted(hub.ends.items()):
            per_rank[rank] = {"reslice": Transfers.from_dict(end["reslice"]),
                              "relay": Transfers.from_dict(end["relay"])}
            last = end.get("last_received")
            if recorder is not None and isinstance(last, int | float):
                recorder.frames_received_at((), float(last))
        hub.figures["transfers"] = document["transfers"] = transfers_document(per_rank)
        if recorder is not None:
            try:
                recorder.volume_complete()
            except StreamerError:
                return  # no frame at all: no figure
            hub.figures["latency"] = document["latency"] = recorder.summary().as_dict()

    def scan_closed(self, serial: int, output: ScanOutput) -> ScanOutput:
        """Rank 0: the master is written (or failed): the feed says so (``scan_end``, with
        the latency); the output gains the figures for the report and the terminal."""
        hub = self._hubs.pop(serial, None)
        if self._open == serial:
            self._open = None
        if not self.gathers or hub is None:
            return output
        figures = {**output.figures, **hub.figures}  # the runner's (iterations) and ours
        latency_line = None
        if hub.recorder is not None and "latency" in figures:
            latency_line = hub.recorder.summary().line()
        moved = figures.get("transfers")
        notes = (transfers_line(moved),) if moved is not None and anything_moved(moved) else ()
        method = hub.center[1] if hub.center is not None else None
        if hub.report is not None and self.feed is not None:
            self.feed.scan_closed(hub.report, center=output.center, center_method=method,
                                  output=str(output.path) if output.path else None,
                                  error=output.error, latency=figures.get("latency"),
                                  without_neighbours=figures.get(WITHOUT_NEIGHBOURS))
        return replace(output, latency=latency_line, figures=figures,
                       notes=output.notes + notes)

    # --- the link --------------------------------------------------------------------------

    def serve(self) -> None:
        """Take what arrived on the relay's link (never waits)."""
        received = self.link.poll()
        if not received:
            return
        if not self.gathers:
            for message in received:
                self._sender_take(message)
            return
        self._take_all(received)

    def _take_all(self, received: list[Received]) -> None:
        """Rank 0: hand relayed messages to the feed; acknowledge what was taken."""
        taken: dict[int, int] = {}
        for message in received:
            nbytes = self._hub_take(message)
            taken[message.source] = taken.get(message.source, 0) + nbytes
        for source, nbytes in taken.items():
            if nbytes:
                self._taken[source] = self._taken.get(source, 0) + nbytes
                self.link.send(source, TAG_ACK, msgpack.packb({"taken": self._taken[source]}))

    def _send_budgeted(self, tag: int, payload: bytes) -> bool:
        """Send ``payload`` to rank 0 unless that would put more than the budget in flight
        (then skip it: False)."""
        self.serve()  # acknowledgements first
        scan = self._scan
        if self.in_flight_bytes + len(payload) > self.max_in_flight_bytes:
            return False
        self.link.send(0, tag, payload)
        self._sent_bytes += len(payload)
        if scan is not None:
            scan.relay.messages_sent += 1
            scan.relay.bytes_sent += len(payload)
        return True

    def _counts_message(self, scan: _Sending) -> bytes:
        duplicate = out_of_range = rejected = 0
        account = self._state.current if self._state is not None else None
        if account is not None and account.start.scan == scan.start.scan:
            duplicate, out_of_range = account.duplicate, account.out_of_range
            rejected = sum(account.rejected.frames.values())
        return msgpack.packb({
            "serial": scan.serial, "received": list(scan.received), "duplicate": duplicate,
            "out_of_range": out_of_range, "rejected": rejected,
            "dropped_rows": scan.dropped_rows, "dropped_slices": scan.dropped_slices})

    def _sender_take(self, received: Received) -> None:
        try:
            message = _decode(received)
            if received.tag == TAG_ACK:
                self._acked_bytes = max(self._acked_bytes, _count(message, "taken"))
            elif received.tag == TAG_CENTER:
                value = message.get("center")
                chosen: float | None = None
                if message.get("set"):
                    if not isinstance(value, int | float) or not math.isfinite(value):
                        raise ExchangeError("relay: CoR decision: expected a number")
                    chosen = float(value)
                serial = _count(message, "serial")
                self._decisions[serial] = chosen
                for old in sorted(self._decisions)[:-_KEPT_SCANS]:
                    del self._decisions[old]
            else:
                raise ExchangeError(f"relay: unexpected tag {received.tag} from rank 0")
        except ExchangeError as error:
            self._reject(received, error)

    def _hub_take(self, received: Received) -> int:
        """One relayed message on rank 0; returns the budgeted bytes it took."""
        nbytes = len(received.payload)
        try:
            message = _decode(received)
            serial = _count(message, "serial")
            if serial > self._latest:
                # A scan rank 0 has not opened yet: kept (not acknowledged, so the
                # sender's budget bounds it) until it does.
                self._early.append(received)
                return 0
            hub = self._hubs.get(serial)
            if received.tag == TAG_DONE:
                if hub is not None:
                    hub.ends[received.source] = message
                    self._take_counts(received.source, message, serial)
                return 0  # not budgeted
            if hub is not None:  # the data messages (control ones are not counted)
                hub.relay.messages_received += 1
                hub.relay.bytes_received += nbytes
            if received.tag == TAG_COUNTS:
                self._take_counts(received.source, message, serial)
            elif received.tag == TAG_ROWS:
                self._take_rows(received.source, message, serial)
            elif received.tag == TAG_SLICES:
                self._take_slices(message, serial)
            else:
                raise ExchangeError(f"relay: unexpected tag {received.tag}")
        except (ExchangeError, ProtocolError) as error:
            self._reject(received, error)
        return nbytes

    def _showing(self, serial: int) -> bool:
        return self.feed is not None and self._open == serial

    def _take_counts(self, source: int, message: dict[str, Any], serial: int) -> None:
        received = message.get("received")
        if not (isinstance(received, list) and len(received) == 3):
            raise ExchangeError("relay: counts.received: expected 3 counts")
        counts = RemoteCounts(
            received=(_int(received[0]), _int(received[1]), _int(received[2])),
            duplicate=_count(message, "duplicate"), out_of_range=_count(message, "out_of_range"),
            rejected=_count(message, "rejected"), dropped_rows=_count(message, "dropped_rows"),
            dropped_slices=_count(message, "dropped_slices"))
        if self._showing(serial):
            assert self.feed is not None
            self.feed.remote_counts(source, counts)

    def _take_rows(self, source: int, message: dict[str, Any], serial: int) -> None:
        indices = _ints(message, "indices")
        angles = np.asarray(_floats(message, "angles", len(indices)), dtype=np.float64)
        times = _floats(message, "received_at", len(indices))
        rows = _array(message, "shape", "data", ndim=3)
        if not self._showing(serial):
            return
        hub = self._hubs[serial]
        if hub.recorder is not None:
            for index, at in zip(indices, times, strict=True):
                hub.recorder.frames_received_at((index,), at)
        assert self.feed is not None
        self.feed.preview_rows(np.asarray(indices, dtype=np.int64), angles, rows)
        del source

    def _take_slices(self, message: dict[str, Any], serial: int) -> None:
        kept = message.get("kept")
        if not isinstance(kept, list):
            raise ExchangeError("relay: slices.kept: expected a list")
        first, last = _count(message, "first"), _count(message, "last")
        shown = _slice_image(message.get("shown"))
        item = BinnedSlices(first, last, [_slice_image(entry) for entry in kept], shown,
                            max(1, _count(message, "binning")),
                            max(1, _count(message, "stride")))
        if not first <= shown[0] < last:
            raise ExchangeError(f"relay: slices: shown slice {shown[0]} outside "
                                f"[{first}, {last})")
        if not self._showing(serial):
            return
        assert self.feed is not None
        self.feed.binned_slices(item)

    def _reject(self, received: Received, error: StreamerError) -> None:
        self.rejected_messages += 1
        if self.log is not None:
            self.log(f"relay: rank {self.rank}: message from rank {received.source} "
                     f"(tag {received.tag}) refused: {error}")


def _previews_of(scan: str, recorder: LatencyRecorder) -> Callable[[str, int], None]:
    def published(name: str, newest_frame: int) -> None:
        if name == scan:
            recorder.preview_published(newest_frame)

    return published


def _image(index: int, image: npt.NDArray[np.float32]) -> dict[str, Any]:
    data = np.ascontiguousarray(image, dtype="<f4")
    return {"index": int(index), "shape": list(data.shape), "data": data.tobytes()}


def _decode(received: Received) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(received.payload, raw=False)
    except (ValueError, msgpack.ExtraData) as error:
        raise ExchangeError(f"relay: expected msgpack, got undecodable bytes ({error})") from None
    if not isinstance(message, dict):
        raise ExchangeError(f"relay: expected a map, got {type(message).__name__}")
    return message


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ExchangeError(f"relay: expected a count, got {value!r}"[:200])
    return value


def _count(message: dict[str, Any], name: str) -> int:
    try:
        return _int(message.get(name))
    except ExchangeError:
        raise ExchangeError(f"relay: {name}: expected a count, got "
                            f"{message.get(name)!r}"[:200]) from None


def _ints(message: dict[str, Any], name: str) -> list[int]:
    value = message.get(name)
    if not isinstance(value, list) or not value:
        raise ExchangeError(f"relay: {name}: expected a non-empty list of counts")
    return [_int(item) for item in value]


def _floats(message: dict[str, Any], name: str, length: int) -> list[float]:
    value = message.get(name)
    if (not isinstance(value, list) or len(value) != length
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in value)):
        raise ExchangeError(f"relay: {name}: expected {length} finite numbers")
    return [float(v) for v in value]


def _array(message: dict[str, Any], shape_name: str, data_name: str, *, ndim: int
           ) -> npt.NDArray[np.float32]:
    shape = message.get(shape_name)
    data = message.get(data_name)
    if (not isinstance(shape, list) or len(shape) != ndim
            or not all(isinstance(n, int) and 0 < n <= 1 << 20 for n in shape)):
        raise ExchangeError(f"relay: {shape_name}: expected {ndim} sizes in 1..2**20, "
                            f"got {shape!r}"[:200])
    if not isinstance(data, bytes) or len(data) != math.prod(shape) * 4:
        raise ExchangeError(f"relay: {data_name}: expected {math.prod(shape) * 4} bytes of "
                            f"float32 for shape {shape}")
    array: npt.NDArray[np.float32] = np.frombuffer(data, dtype="<f4").reshape(shape).astype(
        np.float32)
    return array


def _slice_image(value: Any) -> tuple[int, npt.NDArray[np.float32]]:
    if not isinstance(value, dict):
        raise ExchangeError("relay: slice image: expected a map")
    return _count(value, "index"), _array(value, "shape", "data", ndim=2)


__all__ = ["FeedRelay", "Transfers", "anything_moved", "preview_geometry",
           "transfers_document", "transfers_line"]
