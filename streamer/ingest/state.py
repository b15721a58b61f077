"""The ingest state machine across consecutive scans, without any I/O.

``handle_*`` methods take one stimulus (a decoded message, a rejected message, a clock
tick) and return the events the driver must act on: a scan opened, frames accepted, a
scan closed with its report. The driver (:mod:`streamer.ingest.service`) owns the
sockets; this class owns the rules:

* ``start`` opens a scan. A ``start`` for another scan while one is open closes the open
  one as incomplete (``superseded``). A repeated identical ``start`` (a source that
  restarted and resends) is counted as a restart; one that differs is rejected.
* ``frames`` for the open scan are accounted; for a scan that closed recently they are
  rejected as ``scan_closed``; for no known scan as ``unknown_scan``.
* ``end`` closes the scan: ``complete`` if nothing is missing, else ``incomplete``.
* ``abort`` closes it as ``aborted``.
* No message for ``idle_timeout_s`` while a scan is open closes it as incomplete
  (``source_timeout``): a source that died mid-scan never leaves the service stuck.
* Rejected messages while no scan is open are kept in :attr:`IngestState.between_scans`.

With ``coordinated=True`` (one rank of a multi-rank ingest, see
:mod:`streamer.ingest.cluster`) this rank does not decide alone when a scan ends: ``end``
and ``abort`` only raise :class:`EndSeen` / :class:`AbortSeen`, the idle timer is the
coordinator's, and the scan closes when :meth:`IngestState.close_scan` is called. Frames
for a scan whose ``start`` has not reached this rank yet (it went to another rank and is
being forwarded) are held, a bounded number of messages, until it does.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from streamer.errors import ConfigError, ProtocolError
from streamer.ingest.accounting import Rejections, ScanAccount, ScanReport
from streamer.wire.protocol import AbortHeader, EndHeader, FramesMessage, Message, StartHeader

RECENTLY_CLOSED: Final = 64


@dataclass(frozen=True)
class ScanOpened:
    start: StartHeader


@dataclass(frozen=True)
class FramesAccepted:
    """Frames of the open scan; ``accepted[i]`` is True for frames that are new."""

    start: StartHeader
    message: FramesMessage
    accepted: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ScanClosed:
    """A scan closed on this rank; ``account`` is its full bookkeeping (for merging)."""

    report: ScanReport
    account: ScanAccount


@dataclass(frozen=True)
class ScanClosing:
    """Sent by the service to downstream just before a closed scan is reported: the
    last moment to fail it (:class:`~streamer.errors.ScanFailedError`) in its report."""

    scan: str


@dataclass(frozen=True)
class EndSeen:
    """Coordinated mode: this rank received the scan's ``end`` from the wire."""

    scan: str
    sent: int


@dataclass(frozen=True)
class AbortSeen:
    """Coordinated mode: this rank received the scan's ``abort`` from the wire."""

    scan: str
    reason: str


Event = ScanOpened | FramesAccepted | ScanClosed | EndSeen | AbortSeen
PENDING_MESSAGES: Final = 256


class IngestState:
    """Rules of ingest over any number of scans (sans-IO).

    Parameters
    ----------
    idle_timeout_s : float
        Close an open scan as incomplete after this long without any message.
    """

    def __init__(self, idle_timeout_s: float, *, coordinated: bool = False) -> None:
        if not idle_timeout_s > 0:
            raise ConfigError(f"idle_timeout_s: expected > 0, got {idle_timeout_s}")
        self.idle_timeout_s = idle_timeout_s
        self.coordinated = coordinated
        self.pending: list[tuple[FramesMessage | EndHeader | AbortHeader, float]] = []
        self.current: ScanAccount | None = None
        self.between_scans = Rejections()
        self.closed: deque[str] = deque(maxlen=RECENTLY_CLOSED)
        self.last_message_at: float | None = None

    def handle_message(self, message: Message, now: float) -> list[Event]:
        """Account for one valid decoded message arriving at time ``now``."""
        if isinstance(message, StartHeader):
            self.last_message_at = now
            return self._start(message, now)
        scan_id = message.header.scan if isinstance(message, FramesMessage) else message.scan
        account = self.current
        if account is None or account.start.scan != scan_id:
            if (
                self.coordinated
                and scan_id not in self.closed
                and len(self.pending) < PENDING_MESSAGES
            ):
                self.pending.append((message, now))  # its start is on its way
                return []
            reason = "scan_closed" if scan_id in self.closed else "unknown_scan"
            frames = message.header.count if isinstance(message, FramesMessage) else 0
            self._reject(reason, frames, now)
            return []
        # Only valid messages of the open scan keep its idle timer alive: garbage from
        # another peer must not keep a dead source's scan open.
        self.last_message_at = now
        account.timing.saw_message(now)
        if isinstance(message, FramesMessage):
            if account.failure is not None:  # the scan failed: nothing more is held
                account.rejected.add("scan_failed", message.header.count)
                return []
            mismatch = account.check_frames(message.header)
            if mismatch is not None:
                account.rejected.add(mismatch, message.header.count)
                return []
            accepted = account.add_frames(message.header, now)
            return [FramesAccepted(account.start, message, accepted)]
        if isinstance(message, EndHeader):
            account.sent_by_source = message.sent
            if self.coordinated:
                return [EndSeen(scan_id, message.sent)]
            return [self._close("end")]
        assert isinstance(message, AbortHeader)
        reason = f"abort: {message.reason}" if message.reason else "abort"
        if self.coordinated:
            return [AbortSeen(scan_id, reason)]
        return [self._close(reason, aborted=True)]

    def close_scan(self, scan_id: str, reason: str, *, aborted: bool = False) -> list[Event]:
        """Close ``scan_id`` if it is open here (coordinated mode: the coordinator says)."""
        if self.current is None or self.current.start.scan != scan_id:
            self.closed.append(scan_id)
            self._reject_pending(scan_id)
            return []
        return [self._close(reason, aborted=aborted)]

    def is_closed(self, scan_id: str) -> bool:
        return scan_id in self.closed

    @property
    def pending_full(self) -> bool:
        """Coordinated mode: so many messages wait for their ``start`` that the socket
        must not be read until it arrives (backpressure instead of rejection)."""
        return len(self.pending) >= PENDING_MESSAGES

    def handle_rejected(self, error: ProtocolError, now: float, frames: int = 0) -> list[Event]:
        """Count a message that failed decoding (``frames`` if the header said how many).
        It does not keep the open scan's idle timer alive (anyone can send garbage)."""
        self._reject(error.reason, frames, now)
        return []

    def paused(self, now: float) -> None:
        """The driver is not reading (downstream is behind: backpressure). The source's
        silence meanwhile is ours, so it does not count towards the idle timeout."""
        if self.current is not None:
            self.last_message_at = now

    def fail_scan(self, scan_id: str, reason: str) -> None:
        """Downstream cannot process ``scan_id`` (bad data, too big for the memory
        budget): its later frames are counted rejected (``scan_failed``), never held, and
        its report says ``failed`` with ``reason``. It closes as usual (end, timeout)."""
        if self.current is not None and self.current.start.scan == scan_id:
            self.current.fail(reason)

    def handle_tick(self, now: float) -> list[Event]:
        """Close the open scan if its source has been silent for too long."""
        account = self.current
        if self.coordinated or account is None or self.last_message_at is None:
            return []
        silent = now - self.last_message_at
        if silent < self.idle_timeout_s:
            return []
        return [self._close(f"source_timeout: no message for {silent:.1f} s")]

    def shutdown(self) -> list[Event]:
        """Close the open scan, if any, because the service stops."""
        if self.current is None:
            return []
        return [self._close("service_stopped")]

    def _start(self, start: StartHeader, now: float) -> list[Event]:
        events: list[Event] = []
        account = self.current
        if account is not None:
            if account.start.scan == start.scan:
                if _same_scan(account.start, start):
                    account.restarted()
                    account.timing.saw_message(now)
                else:
                    account.rejected.add("start_mismatch")
                return []
            events.append(self._close(f"superseded by scan {start.scan!r}"))
        self.current = ScanAccount(start)
        self.current.timing.saw_message(now)
        events.append(ScanOpened(start))
        return events  # its messages that came before it: replay_pending()

    def replay_pending(self) -> list[Event]:
        """Handle the open scan's messages that arrived before its start (coordinated
        ranks hold them). The driver calls this once downstream has seen ``ScanOpened``,
        so that a scan refused at its start counts them rejected, never received."""
        account = self.current
        if account is None:
            return []
        scan_id = account.start.scan
        waiting = [item for item in self.pending if _scan_of(item[0]) == scan_id]
        self.pending = [item for item in self.pending if _scan_of(item[0]) != scan_id]
        events: list[Event] = []
        for message, arrived in waiting:
            events.extend(self.handle_message(message, arrived))
        return events

    def _reject_pending(self, scan_id: str) -> None:
        for message, arrived in [m for m in self.pending if _scan_of(m[0]) == scan_id]:
            frames = message.header.count if isinstance(message, FramesMessage) else 0
            self._reject("scan_closed", frames, arrived)
        self.pending = [item for item in self.pending if _scan_of(item[0]) != scan_id]

    def _close(self, reason: str, *, aborted: bool = False) -> ScanClosed:
        account = self.current
        assert account is not None
        self.current = None
        self.closed.append(account.start.scan)
        return ScanClosed(account.report(reason, aborted=aborted), account)

    def _reject(self, reason: str, frames: int, now: float) -> None:
        if self.current is not None:
            self.current.rejected.add(reason, frames)
        else:
            self.between_scans.add(reason, frames)


def _scan_of(message: FramesMessage | EndHeader | AbortHeader) -> str:
    return message.header.scan if isinstance(message, FramesMessage) else message.scan


def _same_scan(first: StartHeader, again: StartHeader) -> bool:
    """Two ``start`` messages describe the same scan (the send time may differ)."""
    return first.model_copy(update={"t": None}) == again.model_copy(update={"t": None})
