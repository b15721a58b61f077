"""Ingest on several MPI ranks: every rank pulls, rank 0 keeps the books for all.

Every rank connects a PULL socket to the source; the source's PUSH deals messages
round-robin, so one rank gets a scan's ``start``, another its ``end``, and each rank a
share of the frames. This module makes them agree, with small non-blocking messages over
a :class:`Link` (MPI in production, :class:`streamer.exchange.links.RankLink`):

1. a rank that receives ``start`` from the wire forwards it to rank 0, which opens the
   scan and tells every rank to open it (``START``). Only rank 0 orders opens and
   closes, and MPI keeps messages from one sender in order, so every rank sees the same
   sequence of scans even when a stale ``start`` is still in flight (frames that beat
   their ``start`` to a rank wait in a bounded queue);
2. ``end`` and ``abort`` go to rank 0, the coordinator; every rank reports its progress
   (frames handled, last activity) to rank 0;
3. rank 0 closes the scan for everybody (``CLOSE``) when the source's ``end`` has been
   seen and the ranks together handled the ``sent`` frames, on ``abort``, when all ranks
   have been silent for the idle timeout, or an idle timeout after ``end`` if frames
   never came. A new scan's ``start`` waits while the open scan is ending (its last
   frames may still be queued on another rank) and for a short grace otherwise (its
   ``end`` may be on its way from another rank); only then does it supersede;
4. each rank then sends its partial account (bitmap of frames held, keys, counters) to
   rank 0, which merges them (:meth:`ScanAccount.merge`) into the one scan report.

Only rank 0 produces reports. When rank 0 stops serving it tells the others (``STOP``).

MPI messages wake nobody: a rank hears them when its ingest loop steps the cluster, which
it does between receives from its socket. So that a scan's close is heard within
milliseconds, not poll periods, the loop waits for its socket only :meth:`ClusterIngest.
wait_s` at a time: while a close is in play (a scan open, a close awaiting accounts, a
start awaiting its turn) a few milliseconds just after anything was heard, growing with
the quiet (an eighth of it) up to the poll period. The close's messages come right after
the last frames (each rank's count, ``end``, ``CLOSE``, the accounts), so each is heard
within milliseconds, and a long quiet costs a few wake-ups per second, not a core (MPICH
busy-polls in its own blocking calls; nothing here blocks in MPI).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgpack
import numpy as np

from streamer.exchange.links import Received
from streamer.ingest.accounting import ScanAccount, ScanReport
from streamer.ingest.state import Event, IngestState, ScanClosed
from streamer.wire.protocol import (
    AbortHeader,
    EndHeader,
    Limits,
    Message,
    StartHeader,
    decode_header,
)

TAG_START: Final = 101
TAG_END: Final = 102
TAG_PROGRESS: Final = 103
TAG_CLOSE: Final = 104
TAG_PARTIAL: Final = 105
TAG_STOP: Final = 106
TAG_START_REQUEST: Final = 107
COORDINATOR: Final = 0
PROGRESS_INTERVAL_S: Final = 0.25
MAX_EARLY: Final = 64  # scans whose notes arrived before their start (bounded)
SUPERSEDE_GRACE_S: Final = 2.0
#: While a close is in play, the shortest wait for the socket before the other ranks'
#: messages are read (seconds) ...
CONTROL_POLL_S: Final = 0.002
#: ... and the wait as a fraction of the time since anything was last heard.
QUIET_FRACTION: Final = 0.125
#: A wait for the other ranks' MPI messages (which wake nobody) begins this short and
#: doubles each round it is still unanswered (:func:`backoff_s`).
FIRST_BACKOFF_S: Final = 0.001


def control_wait_s(quiet_s: float, longest_s: float) -> float:
    """How long to wait for the socket while a close is in play, ``quiet_s`` after
    anything was last heard: ``CONTROL_POLL_S`` at first, ``QUIET_FRACTION`` of the
    quiet later, never more than ``longest_s`` (the poll period). A message that arrives
    after a quiet ``q`` is heard within ``max(CONTROL_POLL_S, q / 8)``; a quiet of ``T``
    costs about ``8 ln(T / 16 ms)`` wake-ups beyond the first few, not a busy loop."""
    return min(longest_s, max(CONTROL_POLL_S, QUIET_FRACTION * max(0.0, quiet_s)))


def backoff_s(rounds: int, longest_s: float) -> float:
    """How long to wait in the ``rounds``-th consecutive round (from 0) of a loop that
    polls for messages nothing wakes on (a peer's account, a start from rank 0):
    ``FIRST_BACKOFF_S`` doubling each round, never more than ``longest_s`` (the poll
    period). A message that comes after ``t`` of waiting is seen within about ``t`` more
    (at most ``longest_s``), and a long wait costs ``log2(longest_s / 1 ms)`` extra
    wake-ups, not a busy loop."""
    return min(longest_s, FIRST_BACKOFF_S * 2.0 ** min(rounds, 30))


class Link(Protocol):
    """Point-to-point byte messages between ranks (see
    :class:`streamer.exchange.links.RankLink`)."""

    @property
    def rank(self) -> int: ...

    @property
    def size(self) -> int: ...

    def send(self, dest: int, tag: int, payload: bytes) -> None: ...

    def send_to_others(self, tag: int, payload: bytes) -> None: ...

    def poll(self, limit: int = 1000) -> list[Received]: ...

    def flush(self) -> None: ...


@dataclass(frozen=True)
class MergedReport:
    """Rank 0: a scan's report merged from every rank's partial account."""

    report: ScanReport


@dataclass
class _Tracked:
    """Rank 0's view of one scan across all ranks."""

    start: StartHeader
    handled: dict[int, int] = field(default_factory=dict)
    last_activity: dict[int, float] = field(default_factory=dict)
    end_sent: int | None = None
    ended_at: float | None = None
    abort_reason: str | None = None
    close_reason: str | None = None
    aborted: bool = False
    closed_at: float | None = None
    partials: dict[int, dict[str, Any]] = field(default_factory=dict)


class ClusterIngest:
    """One rank's part in a multi-rank ingest (use with ``IngestState(coordinated=True)``).

    Parameters
    ----------
    link : Link
        Messages to and from the other ranks.
    idle_timeout_s : float
        Rank 0 closes a scan when every rank has been silent this long.
    limits : Limits
        Limits for decoding forwarded headers.
    """

    def __init__(self, link: Link, idle_timeout_s: float, limits: Limits | None = None) -> None:
        self.link = link
        self.idle_timeout_s = idle_timeout_s
        self.limits = limits or Limits()
        self.stopped = False
        self._tracked: dict[str, _Tracked] = {}
        self._early_progress: dict[str, dict[int, tuple[int, float | None]]] = {}
        self._early_end: dict[str, EndHeader | AbortHeader] = {}
        self._starts: list[tuple[StartHeader, bytes, float]] = []  # rank 0: not yet opened
        self._partial_sent: set[str] = set()
        self._last_progress: tuple[str, int] | None = None
        self._last_progress_at = 0.0
        self._heard_at: float | None = None  # the last time another rank's message came

    @property
    def is_coordinator(self) -> bool:
        return self.link.rank == COORDINATOR

    # --- from this rank's socket -----------------------------------------------------

    def on_wire(self, message: Message, raw_header: bytes, now: float) -> bool:
        """Share a control message this rank received from the source.

        Returns False when this rank must not apply the message itself (a ``start`` on a
        rank other than 0: it is applied when rank 0 orders it)."""
        if isinstance(message, StartHeader):
            if self.is_coordinator:
                self._starts.append((message, raw_header, now))  # opened by step()
            else:
                self.link.send(COORDINATOR, TAG_START_REQUEST, raw_header)
            return False
        if isinstance(message, EndHeader | AbortHeader):
            if self.is_coordinator:
                self._note_end(message, now)
            else:
                self.link.send(COORDINATOR, TAG_END, raw_header)
        return True

    def on_local_close(self, event: ScanClosed) -> None:
        """A scan closed on this rank: hand its partial account to rank 0."""
        partial = event.account.to_partial()
        partial["close_reason"] = event.report.close_reason
        partial["aborted"] = event.report.status == "aborted"
        self._send_partial(event.account.start.scan, partial)

    # --- every loop iteration --------------------------------------------------------

    def wait_s(self, state: IngestState, now: float, longest_s: float,
               wire_heard_at: float | None) -> float:
        """How long the ingest loop may wait for its socket before it steps the cluster
        again: ``longest_s`` (the poll period) on one rank or with nothing in play; while
        a close is in play, :func:`control_wait_s` of the quiet since this rank last heard
        anything (``wire_heard_at``: its socket; or a peer)."""
        if self.link.size == 1 or not self._in_play(state):
            return longest_s
        heard = [t for t in (wire_heard_at, self._heard_at) if t is not None]
        quiet = now - max(heard) if heard else longest_s / QUIET_FRACTION
        return control_wait_s(quiet, longest_s)

    def _in_play(self, state: IngestState) -> bool:
        """A close may need this rank's ear: a scan is open here, or (rank 0) a closed
        scan awaits accounts or a start awaits its turn."""
        return state.current is not None or bool(self._starts) or self.pending_merges()

    def step(self, state: IngestState, now: float) -> list[Event | MergedReport]:
        """Handle messages from other ranks, report progress, and (rank 0) decide."""
        events: list[Event | MergedReport] = []
        for received in self.link.poll():
            self._heard_at = now
            events.extend(self._handle(received, state, now))
        self._report_progress(state, now)
        if self.is_coordinator:
            events.extend(self._decide(state, now))
            events.extend(self._open_due(state, now))
            events.extend(self._merge_ready(now))
        return events

    def _open_due(self, state: IngestState, now: float) -> list[Any]:
        """Rank 0: open the waiting starts whose turn has come, in arrival order."""
        events: list[Any] = []
        while self._starts:
            start, raw, since = self._starts[0]
            current = state.current
            if current is not None and current.start.scan != start.scan:
                tracked = self._tracked.get(current.start.scan)
                if tracked is not None and tracked.close_reason is None and (
                    tracked.end_sent is not None or now - since < self._grace
                ):
                    break  # the open scan is ending, or its end may still be on its way
            self._starts.pop(0)
            self.link.send_to_others(TAG_START, raw)
            self._track(start, now)
            events.extend(state.handle_message(start, now))
        return events

    @property
    def _grace(self) -> float:
        return min(SUPERSEDE_GRACE_S, self.idle_timeout_s)

    def finish(self, state: IngestState, now: float) -> list[Event | MergedReport]:
        """Rank 0 is stopping: close every open scan everywhere; others: deliver."""
        events: list[Event | MergedReport] = []
        if self.is_coordinator:
            for scan_id, tracked in self._tracked.items():
                if tracked.close_reason is None:
                    events.extend(self._close_everywhere(scan_id, "service_stopped", now,
                                                         state))
        return events

    def pending_merges(self) -> bool:
        return any(t.close_reason is not None for t in self._tracked.values())

    def merge_ready(self, now: float) -> list[Event | MergedReport]:
        """Rank 0: the reports of closed scans whose every account is in, at once (a close
        decided in a step is handed its own account while the step's events are
        dispatched: on one rank that completes it, no poll period later)."""
        return list(self._merge_ready(now)) if self.is_coordinator else []

    def force_merge(self, now: float) -> list[Event | MergedReport]:
        """Rank 0: merge whatever partials arrived, naming the ranks that sent none."""
        events: list[Event | MergedReport] = []
        for scan_id in list(self._tracked):
            tracked = self._tracked[scan_id]
            if tracked.close_reason is not None:
                events.append(self._merge(scan_id, tracked))
        return events

    def stop_others(self) -> None:
        if self.is_coordinator:
            self.link.send_to_others(TAG_STOP, b"")
        self.link.flush()

    # --- internals -------------------------------------------------------------------

    def _handle(self, received: Received, state: IngestState, now: float) -> list[Any]:
        tag, payload = received.tag, received.payload
        if tag == TAG_START_REQUEST and self.is_coordinator:
            start = decode_header(payload, self.limits)
            assert isinstance(start, StartHeader)
            self._starts.append((start, payload, now))
            return []
        if tag == TAG_START and not self.is_coordinator:
            start = decode_header(payload, self.limits)
            assert isinstance(start, StartHeader)
            return list(state.handle_message(start, now))
        if tag == TAG_END and self.is_coordinator:
            header = decode_header(payload, self.limits)
            assert isinstance(header, EndHeader | AbortHeader)
            self._note_end(header, now)
            return []
        if tag == TAG_PROGRESS and self.is_coordinator:
            progress = msgpack.unpackb(payload)
            self._note_progress(received.source, progress["scan"], progress["handled"],
                                progress["last"])
            return []
        if tag == TAG_CLOSE:
            close = msgpack.unpackb(payload)
            events = state.close_scan(close["scan"], close["reason"], aborted=close["aborted"])
            if not events:
                self._send_partial(close["scan"], {"scan": close["scan"], "empty": True})
            return list(events)
        if tag == TAG_PARTIAL and self.is_coordinator:
            partial = msgpack.unpackb(payload)
            tracked = self._tracked.get(partial["scan"])
            if tracked is not None:
                self._note_partial(tracked, received.source, partial)
            return []
        if tag == TAG_STOP:
            self.stopped = True
        return []

    def _send_partial(self, scan_id: str, partial: dict[str, Any]) -> None:
        if scan_id in self._partial_sent:
            return
        self._partial_sent.add(scan_id)
        if self.is_coordinator:
            tracked = self._tracked.get(scan_id)
            if tracked is not None:
                self._note_partial(tracked, COORDINATOR, partial)
        else:
            self.link.send(COORDINATOR, TAG_PARTIAL, msgpack.packb(partial))

    @staticmethod
    def _note_partial(tracked: _Tracked, rank: int, partial: dict[str, Any]) -> None:
        """Keep a rank's account; its counts are final, so they replace its progress."""
        tracked.partials[rank] = partial
        if not partial.get("empty"):
            seen = np.unpackbits(np.frombuffer(partial["seen"], dtype=np.uint8))
            tracked.handled[rank] = (
                int(seen.sum()) + int(partial["duplicate"]) + int(partial["out_of_range"])
                + sum(int(v) for v in partial["rejected_frames"].values())
            )

    def _report_progress(self, state: IngestState, now: float) -> None:
        account = state.current
        if account is None:
            return
        handled = _handled(account)
        key = (account.start.scan, handled)
        if key == self._last_progress and now - self._last_progress_at < PROGRESS_INTERVAL_S:
            return
        self._last_progress, self._last_progress_at = key, now
        if self.is_coordinator:
            self._note_progress(COORDINATOR, account.start.scan, handled, state.last_message_at)
        else:
            payload = {"scan": account.start.scan, "handled": handled,
                       "last": state.last_message_at}
            self.link.send(COORDINATOR, TAG_PROGRESS, msgpack.packb(payload))

    def _track(self, start: StartHeader, now: float) -> None:
        if start.scan in self._tracked:
            return
        tracked = _Tracked(start)
        for rank, (handled, last) in self._early_progress.pop(start.scan, {}).items():
            tracked.handled[rank] = handled
            if last is not None:
                tracked.last_activity[rank] = last
        self._tracked[start.scan] = tracked
        early_end = self._early_end.pop(start.scan, None)
        if early_end is not None:
            self._note_end(early_end, now)

    def _note_end(self, header: EndHeader | AbortHeader, now: float | None) -> None:
        tracked = self._tracked.get(header.scan)
        if tracked is None:  # the scan's start has not reached rank 0 yet
            if len(self._early_end) < MAX_EARLY:
                self._early_end[header.scan] = header
            return
        if isinstance(header, EndHeader):
            tracked.end_sent = header.sent
            tracked.ended_at = now
        else:
            tracked.abort_reason = f"abort: {header.reason}" if header.reason else "abort"

    def _note_progress(self, rank: int, scan_id: str, handled: int, last: float | None) -> None:
        tracked = self._tracked.get(scan_id)
        if tracked is None:
            if scan_id in self._early_progress or len(self._early_progress) < MAX_EARLY:
                self._early_progress.setdefault(scan_id, {})[rank] = (handled, last)
            return
        tracked.handled[rank] = handled
        if last is not None:
            tracked.last_activity[rank] = last

    def _decide(self, state: IngestState, now: float) -> list[Any]:
        events: list[Any] = []
        for scan_id, tracked in self._tracked.items():
            if tracked.close_reason is not None:
                continue
            if tracked.abort_reason is not None:
                events.extend(self._close_everywhere(scan_id, tracked.abort_reason, now, state,
                                                     aborted=True))
            elif tracked.end_sent is not None and sum(tracked.handled.values()) >= tracked.end_sent:
                events.extend(self._close_everywhere(scan_id, "end", now, state))
            elif tracked.end_sent is not None and now - (tracked.ended_at or now) >= (
                self.idle_timeout_s
            ):
                reason = f"end (frames still missing {self.idle_timeout_s:.1f} s after it)"
                events.extend(self._close_everywhere(scan_id, reason, now, state))
            elif state.is_closed(scan_id) and COORDINATOR in tracked.partials:
                # closed here already (superseded by a newer scan): make it final
                reason = str(tracked.partials[COORDINATOR].get("close_reason", "superseded"))
                events.extend(self._close_everywhere(scan_id, reason, now, state))
            else:
                activity = [*tracked.last_activity.values()]
                if state.last_message_at is not None:
                    activity.append(state.last_message_at)
                last = max(activity) if activity else None
                if last is not None and now - last >= self.idle_timeout_s:
                    reason = f"source_timeout: no message for {now - last:.1f} s on any rank"
                    events.extend(self._close_everywhere(scan_id, reason, now, state))
        return events

    def _close_everywhere(
        self, scan_id: str, reason: str, now: float, state: IngestState, *,
        aborted: bool = False,
    ) -> list[Any]:
        tracked = self._tracked[scan_id]
        tracked.close_reason, tracked.aborted, tracked.closed_at = reason, aborted, now
        message = msgpack.packb({"scan": scan_id, "reason": reason, "aborted": aborted})
        self.link.send_to_others(TAG_CLOSE, message)
        events = state.close_scan(scan_id, reason, aborted=aborted)
        if not events:
            self._send_partial(scan_id, {"scan": scan_id, "empty": True})
        return list(events)

    def _merge_ready(self, now: float) -> list[MergedReport]:
        """Merge closed scans whose every rank has reported, in the order rank 0 opened
        them (a later scan waits for an earlier one, at most the idle timeout)."""
        ready = []
        for scan_id in list(self._tracked):
            tracked = self._tracked[scan_id]
            if tracked.close_reason is None:
                break
            waited = now - (tracked.closed_at or now)
            if len(tracked.partials) < self.link.size and waited <= self.idle_timeout_s:
                break
            ready.append(self._merge(scan_id, tracked))
        return ready

    def _merge(self, scan_id: str, tracked: _Tracked) -> MergedReport:
        del self._tracked[scan_id]
        partials = [p for p in tracked.partials.values() if not p.get("empty")]
        account = ScanAccount.merge(tracked.start, partials)
        if account.sent_by_source is None:
            account.sent_by_source = tracked.end_sent
        reason = tracked.close_reason or "end"
        silent = sorted(set(range(self.link.size)) - set(tracked.partials))
        if silent:
            reason += f" (no account from ranks {silent}: their frames count as missing)"
        return MergedReport(account.report(reason, aborted=tracked.aborted))


def _handled(account: ScanAccount) -> int:
    """Frames of ``frames`` messages this rank attributed to the scan, whatever became
    of them (held, duplicate, out of range or rejected)."""
    return (account.unique_received + account.duplicate + account.out_of_range
            + sum(account.rejected.frames.values()))
