"""Per-scan frame accounting: what arrived, what was a duplicate, what is missing.

:class:`ScanAccount` is pure bookkeeping (no sockets, no clocks of its own): it is told
about each ``frames`` header and answers which frames are new. Every frame of a scan ends
in exactly one bucket — received (unique), duplicate, out of range, rejected (by
reason), or missing at the end — and :meth:`ScanAccount.report` turns that into the
JSON-ready :class:`ScanReport`.

Per-key ``missing`` agrees with ``missing_ranges``: a frame that never arrived has no key
of its own, so it is counted under the key ``start``'s layout implies for its index
(darks, flats, then projections, in index order — the layout ``start``'s counts
describe). Held frames whose key differs from that layout (a mislabelled ``image_key``)
are counted in ``mislabelled``, by the layout's key and by their own, so that per key
``expected = received - mislabelled.by_label + mislabelled.by_layout + missing``. When
nothing is missing, the labels alone decide and nothing is reported as mislabelled (a
source may order its frames otherwise, e.g. flats after the projections).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from streamer.wire.protocol import IMAGE_KEY_NAMES, FramesHeader, StartHeader

Status = Literal["complete", "incomplete", "aborted", "failed"]
MAX_LISTED_GAPS: Final = 1000
MAX_TRANSIT_SAMPLES: Final = 100_000
PARTIAL_TRANSIT_SAMPLES: Final = 2_000
_KEY_ORDER: Final = (0, 1, 2)


def _frozen(values: list[bool]) -> npt.NDArray[np.bool_]:
    array = np.array(values, dtype=bool)
    array.flags.writeable = False
    return array


#: The answers of :meth:`ScanAccount.add_frames` for one frame (read-only, shared).
_HELD: Final = _frozen([True])
_NOT_HELD: Final = _frozen([False])


@dataclass
class Rejections:
    """Rejected messages and frames, keyed by reason code."""

    messages: Counter[str] = field(default_factory=Counter)
    frames: Counter[str] = field(default_factory=Counter)

    def add(self, reason: str, frames: int = 0) -> None:
        self.messages[reason] += 1
        if frames:
            self.frames[reason] += frames

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {
            reason: {"messages": self.messages[reason], "frames": self.frames.get(reason, 0)}
            for reason in sorted(self.messages)
        }

    def __bool__(self) -> bool:
        return bool(self.messages)


@dataclass
class Timing:
    """Arrival-time and transit statistics (seconds)."""

    first_message: float | None = None
    last_message: float | None = None
    first_frame: float | None = None
    last_frame: float | None = None
    transit_s: list[float] = field(default_factory=list)

    def saw_message(self, now: float) -> None:
        if self.first_message is None:
            self.first_message = now
        self.last_message = now

    def saw_frames(self, now: float, sent_at: float | None) -> None:
        if self.first_frame is None:
            self.first_frame = now
        self.last_frame = now
        if sent_at is not None and len(self.transit_s) < MAX_TRANSIT_SAMPLES:
            self.transit_s.append(now - sent_at)


@dataclass(frozen=True)
class ScanReport:
    """The accounting of one scan, as written to the JSON run report."""

    scan: str
    status: Status
    close_reason: str
    expected: dict[str, int]
    received: dict[str, int]
    missing: dict[str, int]
    duplicate: int
    out_of_range: int
    rejected: dict[str, dict[str, int]]
    missing_ranges: list[list[int]]
    missing_ranges_truncated: bool
    sent_by_source: int | None
    restarts: int
    bytes_received: int
    timing: dict[str, float | None]
    start: dict[str, Any]
    #: Why the scan could not be processed (``status == "failed"``), else None.
    failure: str | None = None
    #: Disagreements that keep a scan from reading complete (e.g. ``end.sent``).
    flags: tuple[str, ...] = ()
    #: Held frames whose key differs from the key ``start``'s layout implies for their
    #: index (only while frames are missing): ``{"by_layout": {...}, "by_label": {...}}``.
    mislabelled: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def total_missing(self) -> int:
        return sum(self.missing.values())

    @property
    def total_rejected_frames(self) -> int:
        return sum(entry["frames"] for entry in self.rejected.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "scan": self.scan,
            "status": self.status,
            "complete": self.complete,
            "close_reason": self.close_reason,
            "expected": self.expected,
            "received": self.received,
            "missing": self.missing,
            "duplicate": self.duplicate,
            "out_of_range": self.out_of_range,
            "rejected": self.rejected,
            "missing_ranges": self.missing_ranges,
            "missing_ranges_truncated": self.missing_ranges_truncated,
            "sent_by_source": self.sent_by_source,
            "restarts": self.restarts,
            "bytes_received": self.bytes_received,
            "timing": self.timing,
            "start": self.start,
            "failure": self.failure,
            "flags": list(self.flags),
            "mislabelled": self.mislabelled,
        }

    def failed(self, reason: str) -> ScanReport:
        """This report with the scan marked failed for ``reason`` (the first one stays)."""
        if self.failure is not None:
            return self
        return replace(self, status="failed", failure=reason)


class ScanAccount:
    """Bookkeeping of one open scan.

    Parameters
    ----------
    start : StartHeader
        The scan's ``start`` message; fixes the frame range, shape, dtype and the
        expected count per image key.
    """

    def __init__(self, start: StartHeader) -> None:
        self.start = start
        self.seen: npt.NDArray[np.bool_] = np.zeros(start.frames, dtype=bool)
        self.key_of: npt.NDArray[np.int8] = np.full(start.frames, -1, dtype=np.int8)
        self.received = dict.fromkeys(_KEY_ORDER, 0)
        self.expected = {0: start.projections, 1: start.flats, 2: start.darks}
        self.duplicate = 0
        self.out_of_range = 0
        self.rejected = Rejections()
        self.sent_by_source: int | None = None
        self.restarts = 0
        self.bytes_received = 0
        self.timing = Timing()
        #: Frames handled before the source's latest restart (a resend starts ``sent``
        #: from zero again).
        self.handled_before_restart = 0
        self.rejected_before_restart = 0
        self.failure: str | None = None

    @property
    def unique_received(self) -> int:
        return sum(self.received.values())

    @property
    def handled(self) -> int:
        """Frames of this scan's messages, whatever became of them (held, duplicate, out
        of range, rejected): ``received + duplicate + out_of_range + rejected``."""
        return (self.unique_received + self.duplicate + self.out_of_range
                + sum(self.rejected.frames.values()))

    @property
    def arrived_since_start(self) -> int:
        """Frames handled since the latest ``start``: what ``end.sent`` should say."""
        return self.handled - self.handled_before_restart

    @property
    def rejected_since_start(self) -> int:
        return sum(self.rejected.frames.values()) - self.rejected_before_restart

    def restarted(self) -> None:
        """The source sent the same ``start`` again (it restarted and resends)."""
        self.restarts += 1
        self.handled_before_restart = self.handled
        self.rejected_before_restart = sum(self.rejected.frames.values())

    def fail(self, reason: str) -> None:
        """The scan cannot be processed: it will be reported failed (first reason kept)."""
        if self.failure is None:
            self.failure = reason

    @property
    def all_received(self) -> bool:
        return self.unique_received == self.start.frames

    def check_frames(self, header: FramesHeader) -> str | None:
        """Reason code if a frames message does not fit this scan, else ``None``."""
        if header.dtype != self.start.dtype:
            return "dtype_mismatch"
        if tuple(header.shape) != (self.start.rows, self.start.cols):
            return "shape_mismatch"
        return None

    def add_frames(self, header: FramesHeader, now: float) -> npt.NDArray[np.bool_]:
        """Account for a ``frames`` message that passed :meth:`check_frames`.

        Returns
        -------
        ndarray of shape (count,), bool
            True for the frames that are new and now held; duplicates, out-of-range
            frames and frames beyond their key's expected count are False (and counted).
        """
        count = header.count
        first = header.first
        if count == 1:
            return self._add_one(header, now)
        accepted = np.zeros(count, dtype=bool)
        in_range = max(0, min(count, self.start.frames - first))
        self.out_of_range += count - in_range
        if in_range:
            window = slice(first, first + in_range)
            keys = np.asarray(header.keys[:in_range], dtype=np.int8)
            fresh = ~self.seen[window]
            self.duplicate += int(in_range - np.count_nonzero(fresh))
            wanted = np.bincount(keys[fresh], minlength=3)
            for key in _KEY_ORDER:
                room = self.expected[key] - self.received[key]
                if wanted[key] > room:
                    # More distinct frames of this key than `start` announced: keep the
                    # first `room` of them and reject the excess, by reason.
                    excess = np.flatnonzero(fresh & (keys == key))[max(room, 0):]
                    fresh[excess] = False
                    self.rejected.add("key_count_exceeded", len(excess))
                    wanted[key] = max(room, 0)
                self.received[key] += int(wanted[key])
            self.seen[window] |= fresh
            self.key_of[window][fresh] = keys[fresh]
            accepted[:in_range] = fresh
        self.bytes_received += header.payload_bytes
        self.timing.saw_frames(now, header.t)
        return accepted

    def _add_one(self, header: FramesHeader, now: float) -> npt.NDArray[np.bool_]:
        """:meth:`add_frames` for a message of one frame (the usual detector message), in
        plain Python: the same buckets, without building small arrays (a third of the
        per-message cost of ingest at 512² frames)."""
        index = header.first
        held = False
        if index >= self.start.frames:
            self.out_of_range += 1
        elif self.seen[index]:
            self.duplicate += 1
        else:
            key = header.keys[0]
            if self.received[key] >= self.expected[key]:
                self.rejected.add("key_count_exceeded", 1)
            else:
                self.received[key] += 1
                self.seen[index] = True
                self.key_of[index] = key
                held = True
        self.bytes_received += header.payload_bytes
        self.timing.saw_frames(now, header.t)
        return _HELD if held else _NOT_HELD

    def layout_keys(self) -> npt.NDArray[np.int8]:
        """The key ``start``'s layout implies for each index: darks, flats, projections."""
        start = self.start
        return np.repeat(np.asarray([2, 1, 0], dtype=np.int8),
                         [start.darks, start.flats, start.projections])

    def missing(self) -> dict[int, int]:
        """Frames never received, per key: the key ``start``'s layout implies for each
        missing index, so the counts agree with :meth:`missing_ranges`."""
        absent = ~self.seen
        if not absent.any():
            return dict.fromkeys(_KEY_ORDER, 0)
        counts = np.bincount(self.layout_keys()[absent], minlength=3)
        return {key: int(counts[key]) for key in _KEY_ORDER}

    def mislabelled(self) -> tuple[dict[int, int], dict[int, int]]:
        """Held frames whose key differs from the layout's, counted by the layout's key
        and by their own; none while every frame is held (the labels then decide)."""
        if self.seen.all():
            return dict.fromkeys(_KEY_ORDER, 0), dict.fromkeys(_KEY_ORDER, 0)
        layout = self.layout_keys()[self.seen]
        label = self.key_of[self.seen]
        odd = layout != label
        by_layout = np.bincount(layout[odd], minlength=3)
        by_label = np.bincount(label[odd], minlength=3)
        return ({key: int(by_layout[key]) for key in _KEY_ORDER},
                {key: int(by_label[key]) for key in _KEY_ORDER})

    def missing_ranges(self) -> tuple[list[list[int]], bool]:
        """Half-open ``[start, stop)`` index runs never received (at most 1000 listed)."""
        absent = ~self.seen
        if not absent.any():
            return [], False
        edges = np.diff(np.concatenate(([0], absent.view(np.int8), [0])))
        starts = np.flatnonzero(edges == 1)
        stops = np.flatnonzero(edges == -1)
        runs = [[int(a), int(b)] for a, b in zip(starts, stops, strict=True)]
        return runs[:MAX_LISTED_GAPS], len(runs) > MAX_LISTED_GAPS

    def report(self, close_reason: str, *, aborted: bool = False) -> ScanReport:
        missing = self.missing()
        flags: list[str] = []
        arrived = self.arrived_since_start
        valid = arrived - self.rejected_since_start
        if self.sent_by_source is not None and self.sent_by_source not in (valid, arrived):
            # A source may count its refused messages in ``sent`` or not; any other
            # figure means frames were lost or came from elsewhere.
            flags.append(f"end.sent: the source says it sent {self.sent_by_source} frames, "
                         f"{valid} valid ones arrived ({arrived} with the rejected)")
        by_layout, by_label = self.mislabelled()
        odd = sum(by_layout.values())
        if odd:
            flags.append(
                f"image_key: {odd} held frames carry a key other than the one start's "
                "layout (darks, flats, projections) implies for their index (mislabelled?): "
                "per-key missing follows that layout, as missing_ranges does; see "
                "mislabelled")
        if self.failure is not None:
            status: Status = "failed"
        elif aborted:
            status = "aborted"
        elif any(missing.values()) or flags:
            status = "incomplete"
        else:
            status = "complete"
        ranges, truncated = self.missing_ranges()
        timing = self.timing
        duration = (
            timing.last_frame - timing.first_frame
            if timing.first_frame is not None and timing.last_frame is not None
            else None
        )
        transit = np.asarray(timing.transit_s) if timing.transit_s else None
        rate_window = duration if duration and duration > 0 else None
        return ScanReport(
            scan=self.start.scan,
            status=status,
            close_reason=close_reason,
            expected=_named(self.expected),
            received=_named(self.received),
            missing=_named(missing),
            duplicate=self.duplicate,
            out_of_range=self.out_of_range,
            rejected=self.rejected.as_dict(),
            missing_ranges=ranges,
            missing_ranges_truncated=truncated,
            sent_by_source=self.sent_by_source,
            restarts=self.restarts,
            bytes_received=self.bytes_received,
            timing={
                "first_message_unix": timing.first_message,
                "last_message_unix": timing.last_message,
                "frames_duration_s": duration,
                "frames_per_s": self.unique_received / rate_window if rate_window else None,
                "bytes_per_s": self.bytes_received / rate_window if rate_window else None,
                "transit_median_ms": (
                    float(np.median(transit) * 1e3) if transit is not None else None
                ),
                "transit_p95_ms": (
                    float(np.percentile(transit, 95) * 1e3) if transit is not None else None
                ),
            },
            start=self.start.model_dump(mode="json", exclude_none=True),
            failure=self.failure,
            flags=tuple(flags),
            mislabelled=({"by_layout": _named(by_layout), "by_label": _named(by_label)}
                         if odd else {}),
        )


    def to_partial(self) -> dict[str, Any]:
        """This rank's bookkeeping as a msgpack-ready map (no pickle), for merging."""
        timing = self.timing
        transit = timing.transit_s
        if len(transit) > PARTIAL_TRANSIT_SAMPLES:
            step = len(transit) / PARTIAL_TRANSIT_SAMPLES
            transit = [transit[int(i * step)] for i in range(PARTIAL_TRANSIT_SAMPLES)]
        return {
            "scan": self.start.scan,
            "start": self.start.model_dump(mode="json"),
            "seen": np.packbits(self.seen).tobytes(),
            "key_of": self.key_of.tobytes(),
            "duplicate": self.duplicate,
            "out_of_range": self.out_of_range,
            "rejected_messages": dict(self.rejected.messages),
            "rejected_frames": dict(self.rejected.frames),
            "sent_by_source": self.sent_by_source,
            "restarts": self.restarts,
            "handled_before_restart": self.handled_before_restart,
            "rejected_before_restart": self.rejected_before_restart,
            "failure": self.failure,
            "bytes_received": self.bytes_received,
            "times": [timing.first_message, timing.last_message, timing.first_frame,
                      timing.last_frame],
            "transit": transit,
        }

    @classmethod
    def merge(cls, start: StartHeader, partials: list[dict[str, Any]]) -> ScanAccount:
        """Combine the partial accounts of several ranks into one scan account.

        A frame held by two ranks (a resend that the round-robin dealt to another rank)
        counts once as received and once as a duplicate, as on a single rank.
        """
        merged = cls(start)
        frames = start.frames
        seen_total = np.zeros(frames, dtype=np.int32)
        for partial in partials:
            seen = np.unpackbits(
                np.frombuffer(partial["seen"], dtype=np.uint8), count=frames
            ).astype(bool)
            key_of = np.frombuffer(partial["key_of"], dtype=np.int8)
            if key_of.shape != (frames,):
                raise ValueError(
                    f"partial account of scan {start.scan!r}: key_of has {key_of.size} "
                    f"entries, expected {frames}"
                )
            seen_total += seen
            merged.key_of = np.maximum(merged.key_of, key_of)
            merged.duplicate += int(partial["duplicate"])
            merged.out_of_range += int(partial["out_of_range"])
            merged.rejected.messages.update(partial["rejected_messages"])
            merged.rejected.frames.update(partial["rejected_frames"])
            if partial["sent_by_source"] is not None:
                merged.sent_by_source = int(partial["sent_by_source"])
            merged.restarts = max(merged.restarts, int(partial["restarts"]))
            merged.handled_before_restart += int(partial.get("handled_before_restart", 0))
            merged.rejected_before_restart += int(partial.get("rejected_before_restart", 0))
            if partial.get("failure") is not None and merged.failure is None:
                merged.failure = str(partial["failure"])
            merged.bytes_received += int(partial["bytes_received"])
            merged.timing.transit_s.extend(partial["transit"])
            first_message, last_message, first_frame, last_frame = partial["times"]
            merged.timing.first_message = _earliest(merged.timing.first_message, first_message)
            merged.timing.last_message = _latest(merged.timing.last_message, last_message)
            merged.timing.first_frame = _earliest(merged.timing.first_frame, first_frame)
            merged.timing.last_frame = _latest(merged.timing.last_frame, last_frame)
        merged.seen = seen_total > 0
        merged.duplicate += int(np.sum(np.maximum(seen_total - 1, 0)))
        held_keys = merged.key_of[merged.seen]
        counts = np.bincount(held_keys[held_keys >= 0], minlength=3)
        merged.received = {key: int(counts[key]) for key in _KEY_ORDER}
        return merged


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _named(by_key: dict[int, int]) -> dict[str, int]:
    return {IMAGE_KEY_NAMES[key]: value for key, value in by_key.items()}
