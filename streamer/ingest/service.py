"""The ingest service: pulls messages, validates them, accounts for every frame.

One service stays up across consecutive scans. Each loop iteration polls the socket with
a timeout (no receive ever blocks forever), drains up to a burst of messages without
blocking, decodes and validates each one (:func:`streamer.wire.protocol.decode`), feeds the
result to the sans-IO :class:`~streamer.ingest.state.IngestState`, and acts on the
events: accepted frames go to the :class:`~streamer.ingest.store.FrameStore`, closed
scans produce a :class:`~streamer.ingest.accounting.ScanReport` handed to ``on_report``.
When the store is full the service stops reading, so the high-water marks fill and the
source slows down (backpressure), and nothing is dropped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import zmq

from streamer.errors import ProtocolError, ScanFailedError
from streamer.ingest.accounting import ScanReport
from streamer.ingest.cluster import ClusterIngest, MergedReport, backoff_s
from streamer.ingest.heap import DEFAULT_KEEP_BYTES, check_keep_bytes, keep_freed_heap
from streamer.ingest.peers import PeerGate
from streamer.ingest.state import (
    FramesAccepted,
    IngestState,
    ScanClosed,
    ScanClosing,
    ScanOpened,
)
from streamer.ingest.store import FrameStore
from streamer.wire.protocol import (
    AbortHeader,
    EndHeader,
    Limits,
    StartHeader,
    decode,
    frames_claimed,
)

#: Reports kept in memory by a running service (the newest); every one is also handed to
#: ``on_report`` (written to disk by the commands).
MAX_KEPT_REPORTS: Final = 1000
#: Seconds between two log lines about refused connections from the same peer.
REFUSAL_LOG_PERIOD_S: Final = 60.0


@dataclass(frozen=True)
class IngestSettings:
    """Tunables of the ingest service.

    Parameters
    ----------
    limits : Limits
        Protocol size limits.
    idle_timeout_s : float
        A scan whose source is silent this long is closed as incomplete.
    poll_ms : int
        Longest wait for a message before timers are checked.
    burst : int
        Most messages handled per poll before timers and the store are checked.
    store_bytes : int
        Capacity of the frame store (bytes of held frames).
    heap_keep_bytes : int
        Freed memory each glibc heap keeps mapped for the next received messages instead
        of returning it to the kernel (:func:`streamer.ingest.heap.keep_freed_heap`, set
        when the service runs; process-wide). 0 leaves the allocator alone.
    """

    limits: Limits = field(default_factory=Limits)
    idle_timeout_s: float = 30.0
    poll_ms: int = 100
    burst: int = 64
    store_bytes: int = 2 * 1024**3
    heap_keep_bytes: int = DEFAULT_KEEP_BYTES

    def __post_init__(self) -> None:
        check_keep_bytes(self.heap_keep_bytes)


class IngestService:
    """Runs ingest on a connected PULL socket until told to stop.

    Parameters
    ----------
    socket : zmq.Socket
        A PULL socket (see :func:`streamer.wire.transport.open_socket`).
    settings : IngestSettings
    drain : callable, optional
        Called with the store each iteration: the downstream step that takes frames.
        The default takes everything (accounting-only ingest).
    on_report : callable, optional
        Called with each closed scan's report.
    on_event : callable, optional
        Called with every state event (scan opened, frames accepted, scan closed), for
        monitors and tests.
    clock : callable
        Wall clock (Unix seconds); injectable for tests.
    cluster : ClusterIngest, optional
        This rank's part in a multi-rank ingest (``mpiexec -n R``): scans are then opened
        and closed in agreement with the other ranks, and only rank 0 reports.
    gate : PeerGate, optional
        The listening socket's peer gate: the connections it refused are counted in
        :attr:`IngestState.between_scans` (``peer_refused``: one per attempt) and logged.
    log : callable, optional
        Where the service's log lines go (refused peers).
    await_downstream : callable, optional
        Called with a number of seconds when the store is full after a drain (downstream
        is behind): waits at most that long, returning as soon as the next drain will
        take frames (``RankedReconstruction.wait``: its worker is idle). The service then
        reads on at once instead of a poll period later. Without it, a full store is
        retried after a short back-off (:func:`~streamer.ingest.cluster.backoff_s`).
    sleep : callable
        How the service waits when nothing wakes it (no ``stop`` event): injectable
        for tests.
    """

    def __init__(
        self,
        socket: zmq.Socket[bytes],
        settings: IngestSettings = IngestSettings(),
        *,
        drain: Callable[[FrameStore], Any] | None = None,
        on_report: Callable[[ScanReport], None] | None = None,
        on_event: Callable[[Any], None] | None = None,
        clock: Callable[[], float] = time.time,
        cluster: ClusterIngest | None = None,
        gate: PeerGate | None = None,
        log: Callable[[str], None] | None = None,
        await_downstream: Callable[[float], object] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.socket = socket
        self.gate = gate
        self.log = log
        self._refusals_logged: dict[str, tuple[float, int]] = {}
        self.settings = settings
        self.cluster = cluster
        self.state = IngestState(settings.idle_timeout_s, coordinated=cluster is not None)
        self.store = FrameStore(settings.store_bytes)
        self.drain = drain if drain is not None else _take_all
        self.on_report = on_report
        self.on_event = on_event
        self.clock = clock
        self.await_downstream = await_downstream
        self.sleep = sleep
        #: Consecutive pauses so far (the back-off's round; 0 once the service reads).
        self._pauses = 0
        #: The most recent reports (at most ``MAX_KEPT_REPORTS``: a service that runs for
        #: months must not grow); ``scans_reported`` counts them all.
        self.reports: list[ScanReport] = []
        self.scans_reported = 0
        self.messages = 0
        self._stop: threading.Event | None = None

    def run(
        self,
        *,
        max_scans: int | None = None,
        stop: threading.Event | None = None,
        max_idle_s: float | None = None,
    ) -> list[ScanReport]:
        """Serve until ``max_scans`` scans closed, ``stop`` is set, or nothing at all
        arrived for ``max_idle_s`` while no scan is open. Returns the reports of the
        scans closed in this call."""
        # Received buffers freed back to a heap that trims faults them in again, page by
        # page, for the next messages: keep them mapped (ADR 0031).
        not_kept = keep_freed_heap(self.settings.heap_keep_bytes)
        if not_kept is not None and self.log is not None:
            self.log(f"ingest: {not_kept}")
        # Receives wait at most a poll period (RCVTIMEO) instead of a poll before each:
        # one call per message, as a bare PULL loop makes (restored when the run ends).
        timeout_before = self.socket.getsockopt(zmq.RCVTIMEO)
        self.socket.setsockopt(zmq.RCVTIMEO, self.settings.poll_ms)
        wait_ms = self.settings.poll_ms
        self._stop = stop
        closed_before = self.scans_reported
        idle_since = self.clock()
        heard_at: float | None = None  # the last message from the socket
        try:
            while stop is None or not stop.is_set():
                if self.cluster is not None:
                    self._cluster_step()
                    if self.cluster.stopped:
                        break
                    # While a close is in play on several ranks, wait for the socket only
                    # a few ms at a time, so the other ranks' messages are heard at once.
                    wanted = self._wait_ms(self.cluster, heard_at)
                    if wanted != wait_ms:
                        self.socket.setsockopt(zmq.RCVTIMEO, wanted)
                        wait_ms = wanted
                self._drain()
                if self.store.full or self.state.pending_full:
                    # Downstream is behind (or frames wait for their scan's start): do not
                    # read; the HWMs fill and the source waits. Wake when downstream can
                    # take frames again (or the start came), on stop, or after at most a
                    # poll period to try again.
                    self._pause(downstream=self.store.full)
                    self.state.paused(self.clock())
                    self._tick()
                    continue
                self._pauses = 0
                if self._receive_burst():
                    idle_since = heard_at = self.clock()
                self._tick()
                if max_scans is not None and self.scans_reported - closed_before >= max_scans:
                    break
                if (
                    max_idle_s is not None
                    and self.state.current is None
                    and self.clock() - idle_since > max_idle_s
                ):
                    break
        finally:
            if not self.socket.closed:
                self.socket.setsockopt(zmq.RCVTIMEO, timeout_before)
            if self.cluster is not None:
                self._cluster_finish()
            for event in self.state.shutdown():
                self._dispatch(event)
            if self.cluster is not None:
                self.cluster.stop_others()
        closed = self.scans_reported - closed_before
        return self.reports[len(self.reports) - min(closed, len(self.reports)):]

    def _cluster_step(self) -> None:
        assert self.cluster is not None
        for event in self.cluster.step(self.state, self.clock()):
            self._dispatch(event)
        # A scan closed in this step was handed this rank's account while its events were
        # dispatched: its report is due now when every account is in (one rank: always).
        for event in self.cluster.merge_ready(self.clock()):
            self._dispatch(event)

    def _wait_ms(self, cluster: ClusterIngest, heard_at: float | None) -> int:
        """The socket's receive timeout for the next burst (whole ms, at least 1)."""
        longest = self.settings.poll_ms / 1000
        wait = cluster.wait_s(self.state, self.clock(), longest, heard_at)
        return max(1, min(self.settings.poll_ms, round(wait * 1000)))

    def _cluster_finish(self) -> None:
        """Rank 0 closes what is open everywhere and waits (bounded) for every rank's
        account; other ranks just hand in theirs."""
        cluster = self.cluster
        assert cluster is not None
        if not cluster.is_coordinator:
            return
        for event in cluster.finish(self.state, self.clock()):
            self._dispatch(event)
        # The accounts come as MPI messages, which wake nobody: poll with a back-off
        # from 1 ms (the last account is usually in flight already), bounded as before.
        deadline = self.clock() + self.settings.idle_timeout_s
        rounds = 0
        while cluster.pending_merges() and self.clock() < deadline:
            self._cluster_step()
            if cluster.pending_merges():
                self._rest(backoff_s(rounds, self.settings.poll_ms / 1000))
                rounds += 1
        for event in cluster.force_merge(self.clock()):
            self._dispatch(event)

    def _receive_burst(self) -> int:
        """Receive, validate and hand over up to ``burst`` messages, each receive waiting
        at most a poll period; stop early when the store fills or a scan is reported
        (the caller may be done)."""
        handled = 0
        socket = self.socket
        reported = self.scans_reported
        for _ in range(self.settings.burst):
            try:
                parts = socket.recv_multipart(copy=False)
            except zmq.Again:  # a poll period without a message
                break
            control = self.handle_parts(parts)
            handled += 1
            # Hand frames downstream after every message: buffers are released while
            # still hot in cache instead of piling up for a whole burst.
            if len(self.store):
                self._drain()
            if self.store.full or self.state.pending_full or self.scans_reported != reported:
                break
            if control and self.cluster is not None:
                break  # a start, end or abort: the cluster decides now, not after the burst
        return handled

    def handle_parts(self, parts: list[Any]) -> bool:
        """Decode, validate and account for one multipart message. Returns True for a
        valid ``start``, ``end`` or ``abort`` (a message a scan's open or close waits on)."""
        self.messages += 1
        now = self.clock()
        try:
            message = decode(parts, self.settings.limits)
        except ProtocolError as error:
            frames = frames_claimed(parts, self.settings.limits)
            for event in self.state.handle_rejected(error, now, frames):
                self._dispatch(event)
            return False
        control = isinstance(message, StartHeader | EndHeader | AbortHeader)
        if self.cluster is not None and control:
            raw = bytes(getattr(parts[0], "buffer", parts[0]))
            if not self.cluster.on_wire(message, raw, now):
                return True
        for event in self.state.handle_message(message, now):
            self._dispatch(event)
        return control

    def _pause(self, *, downstream: bool) -> None:
        """Wait, at most a poll period, for what ends a pause: for ``downstream`` (the
        store is full, or holds frames a close waits for) downstream's own signal when it
        has one (:attr:`await_downstream`); otherwise (no signal, or frames wait for a
        start that rank 0 sends over MPI) a back-off from 1 ms."""
        longest = self.settings.poll_ms / 1000
        if downstream and self.await_downstream is not None:
            self.await_downstream(longest)
        else:
            self._rest(backoff_s(self._pauses, longest))
        self._pauses += 1

    def _rest(self, seconds: float) -> None:
        """Wait ``seconds``; a ``stop`` ends the wait at once."""
        if self._stop is not None:
            self._stop.wait(seconds)
        else:
            self.sleep(seconds)

    def _drain(self) -> None:
        """Hand held frames downstream; a scan downstream cannot process
        (:class:`~streamer.errors.ScanFailedError`) ends as failed, the service goes on."""
        try:
            self.drain(self.store)
        except ScanFailedError as failure:
            self._fail_open_scan(str(failure))

    def _fail_open_scan(self, reason: str) -> None:
        account = self.state.current
        if account is not None:
            self.state.fail_scan(account.start.scan, reason)
        self.store.take()  # received and counted; nothing more is done with them

    def _hand_over_held_frames(self) -> str | None:
        """Before a scan is forgotten, downstream must take every frame it still holds:
        wait for it (the socket is not read meanwhile, so sources wait too). Returns why
        downstream failed the scan, if it did while taking them."""
        while True:
            try:
                self.drain(self.store)
            except ScanFailedError as failure:
                self.store.take()
                return str(failure)
            if not len(self.store) or (self._stop is not None and self._stop.is_set()):
                return None
            self._pause(downstream=True)

    def _tick(self) -> None:
        for event in self.state.handle_tick(self.clock()):
            self._dispatch(event)
        if self.gate is not None:
            self._account_refusals(self.gate)

    def _account_refusals(self, gate: PeerGate) -> None:
        """Count the connections the gate refused; log each peer once a period."""
        now = self.clock()
        for peer, attempts in gate.take_refusals().items():
            self.state.between_scans.messages["peer_refused"] += attempts
            logged_at, unlogged = self._refusals_logged.get(peer, (-REFUSAL_LOG_PERIOD_S, 0))
            unlogged += attempts
            if now - logged_at >= REFUSAL_LOG_PERIOD_S:
                if self.log is not None:
                    self.log(f"ingest: refused {unlogged} connection attempt(s) from {peer}; "
                             f"{gate.connected} of --max-peers {gate.policy.max_peers} "
                             "connected")
                logged_at, unlogged = now, 0
            if len(self._refusals_logged) >= MAX_KEPT_REPORTS:  # many peers: start over
                self._refusals_logged.clear()
            self._refusals_logged[peer] = (logged_at, unlogged)

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, FramesAccepted):  # the common event first
            self.store.put(event)
        elif isinstance(event, ScanOpened):
            self.store.open(event.start)
        elif isinstance(event, ScanClosed):
            failure = self._hand_over_held_frames()
            if failure is None and self.on_event is not None:
                try:  # downstream finishes what it can before the report is final
                    self.on_event(ScanClosing(event.report.scan))
                except ScanFailedError as error:
                    failure = str(error)
            if failure is not None:
                event.account.fail(failure)
                event = ScanClosed(event.report.failed(failure), event.account)
            if self.cluster is not None:
                self.cluster.on_local_close(event)  # rank 0 reports the merged account
            else:
                self._report(event.report)
        elif isinstance(event, MergedReport):
            self._report(event.report)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except ScanFailedError as failure:
                # Downstream refused the scan (at its start: too big for the memory budget,
                # a normalisation the pipeline cannot do; or on its frames): that scan
                # ends failed, never the service.
                if isinstance(event, ScanOpened | FramesAccepted):
                    account = self.state.current
                    if account is not None and account.start.scan == event.start.scan:
                        self._fail_open_scan(str(failure))
                else:
                    raise
        if isinstance(event, ScanOpened):  # what came before its start, now that it is open
            for replayed in self.state.replay_pending():
                self._dispatch(replayed)

    def _report(self, report: ScanReport) -> None:
        self.reports.append(report)
        self.scans_reported += 1
        if len(self.reports) > MAX_KEPT_REPORTS:
            del self.reports[: len(self.reports) - MAX_KEPT_REPORTS]
        if self.on_report is not None:
            self.on_report(report)


def _take_all(store: FrameStore) -> None:
    store.take()

