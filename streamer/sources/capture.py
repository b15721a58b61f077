"""Record a live stream byte-exactly, and replay the recording.

``record`` keeps every part of every message exactly as it arrived, valid or not, with
its arrival time, so a problem seen at the beamline can be replayed here bit for bit:
``tomo-streamer replay capture.h5`` sends the same messages in the same order (and with
the same gaps, with ``realtime=True``).

File layout (HDF5, group ``/capture``, attribute ``format = "tomo-streamer-capture"``):

==========================  ===============  ==========================================
dataset                     shape, dtype     meaning
==========================  ===============  ==========================================
``data``                    (bytes,) uint8   all parts, concatenated
``part_offset``             (parts,) int64   where each part starts in ``data``
``part_length``             (parts,) int64   its length in bytes
``message_first_part``      (msgs,) int64    index of a message's first part
``message_parts``           (msgs,) int32    number of parts of the message
``arrival_s``               (msgs,) float64  arrival time since the first message
==========================  ===============  ==========================================
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import h5py
import numpy as np
import zmq

from streamer.errors import ProtocolError, ScanFormatError
from streamer.sources.sender import send_message
from streamer.wire.protocol import AbortHeader, EndHeader, Limits, decode_header

CAPTURE_FORMAT: Final = "tomo-streamer-capture"
CAPTURE_VERSION: Final = 1
_FLUSH_BYTES: Final = 64 * 1024**2


@dataclass(frozen=True)
class RecordSummary:
    messages: int
    bytes: int
    scans_closed: int
    path: Path


def is_capture(path: Path) -> bool:
    """True if ``path`` is an HDF5 capture written by :func:`record`."""
    if not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as file:
        group = file.get("capture")
        return group is not None and group.attrs.get("format") == CAPTURE_FORMAT


class _CaptureWriter:
    """Appends messages to a capture file, buffering to write in large pieces."""

    def __init__(self, path: Path, source: str) -> None:
        self.file = h5py.File(path, "w")
        group = self.file.create_group("capture")
        group.attrs["format"] = CAPTURE_FORMAT
        group.attrs["version"] = CAPTURE_VERSION
        group.attrs["source"] = source
        group.attrs["complete"] = False
        self.group = group
        self.data = group.create_dataset(
            "data", (0,), dtype=np.uint8, maxshape=(None,), chunks=(1024**2,)
        )
        self.columns = {
            name: group.create_dataset(name, (0,), dtype=dtype, maxshape=(None,), chunks=(4096,))
            for name, dtype in (
                ("part_offset", np.int64),
                ("part_length", np.int64),
                ("message_first_part", np.int64),
                ("message_parts", np.int32),
                ("arrival_s", np.float64),
            )
        }
        self.pending_bytes: list[bytes] = []
        self.pending: dict[str, list[float]] = {name: [] for name in self.columns}
        self.pending_size = 0
        self.offset = 0
        self.parts = 0
        self.first_arrival: float | None = None

    def add(self, parts: list[bytes], arrival: float) -> None:
        if self.first_arrival is None:
            self.first_arrival = arrival
            self.group.attrs["first_arrival_unix"] = arrival
        self.pending["message_first_part"].append(self.parts)
        self.pending["message_parts"].append(len(parts))
        self.pending["arrival_s"].append(arrival - self.first_arrival)
        for part in parts:
            self.pending["part_offset"].append(self.offset)
            self.pending["part_length"].append(len(part))
            self.pending_bytes.append(part)
            self.offset += len(part)
            self.pending_size += len(part)
            self.parts += 1
        if self.pending_size >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.pending_bytes:
            blob = np.frombuffer(b"".join(self.pending_bytes), dtype=np.uint8)
            start = self.data.shape[0]
            self.data.resize((start + blob.size,))
            self.data[start:] = blob
        for name, values in self.pending.items():
            if values:
                column = self.columns[name]
                start = column.shape[0]
                column.resize((start + len(values),))
                column[start:] = np.asarray(values, dtype=column.dtype)
                values.clear()
        self.pending_bytes.clear()
        self.pending_size = 0
        self.file.flush()

    def close(self) -> None:
        self.flush()
        self.group.attrs["complete"] = True
        self.file.close()


def record(
    socket: zmq.Socket[bytes],
    path: Path,
    *,
    source: str,
    scans: int | None = 1,
    idle_timeout_s: float | None = None,
    stop: threading.Event | None = None,
    poll_ms: int = 100,
    limits: Limits | None = None,
) -> RecordSummary:
    """Write every message from ``socket`` to ``path`` until ``scans`` scans ended
    (``end`` or ``abort`` seen), ``stop`` is set, or nothing arrived for
    ``idle_timeout_s``. ``scans=None`` records until stopped or idle."""
    writer = _CaptureWriter(path, source)
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    messages = size = closed = 0
    last = time.monotonic()
    try:
        while stop is None or not stop.is_set():
            if not poller.poll(poll_ms):
                if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                    break
                continue
            parts = socket.recv_multipart()
            last = time.monotonic()
            writer.add(parts, time.time())
            messages += 1
            size += sum(len(part) for part in parts)
            if _ends_scan(parts[0], limits or Limits()):
                closed += 1
                if scans is not None and closed >= scans:
                    break
    finally:
        writer.close()
    return RecordSummary(messages, size, closed, path)


def _ends_scan(header: bytes, limits: Limits) -> bool:
    try:
        decoded = decode_header(header, limits)
    except ProtocolError:
        return False
    return isinstance(decoded, EndHeader | AbortHeader)


@dataclass(frozen=True)
class CapturedMessage:
    parts: list[bytes]
    arrival_s: float


def read_capture(path: Path) -> Iterator[CapturedMessage]:
    """Yield the recorded messages in order, one at a time (memory stays bounded)."""
    with h5py.File(path, "r") as file:
        group = file.get("capture")
        if group is None or group.attrs.get("format") != CAPTURE_FORMAT:
            raise ScanFormatError(f"{path}: not a tomo-streamer capture (no /capture group)")
        version = int(group.attrs.get("version", -1))
        if version != CAPTURE_VERSION:
            raise ScanFormatError(
                f"{path}:/capture.version: expected {CAPTURE_VERSION}, got {version}"
            )
        offsets = group["part_offset"][:]
        lengths = group["part_length"][:]
        firsts = group["message_first_part"][:]
        counts = group["message_parts"][:]
        arrivals = group["arrival_s"][:]
        data = group["data"]
        if not (len(firsts) == len(counts) == len(arrivals)) or len(offsets) != len(lengths):
            raise ScanFormatError(f"{path}:/capture: index datasets have inconsistent lengths")
        for first, count, arrival in zip(firsts, counts, arrivals, strict=True):
            parts = []
            for part in range(int(first), int(first) + int(count)):
                start, length = int(offsets[part]), int(lengths[part])
                if start < 0 or length < 0 or start + length > data.shape[0]:
                    raise ScanFormatError(f"{path}:/capture: part {part} lies outside data")
                parts.append(data[start : start + length].tobytes())
            yield CapturedMessage(parts, float(arrival))


def replay_capture(
    socket: zmq.Socket[bytes],
    path: Path,
    *,
    realtime: bool = False,
    stop: threading.Event | None = None,
    on_message: Callable[[int], Any] | None = None,
) -> int:
    """Send a capture's messages byte-exactly; returns the number of messages sent.

    A set ``stop`` ends the replay within
    :data:`~streamer.sources.sender.STOP_POLL_S`, even while no consumer takes messages
    (the caller tells a stopped replay by ``stop.is_set()``)."""
    began = time.perf_counter()
    sent = 0
    for message in read_capture(path):
        if stop is not None and stop.is_set():
            break
        if realtime:
            delay = began + message.arrival_s - time.perf_counter()
            if delay > 0:
                if stop is not None:
                    stop.wait(delay)
                else:
                    time.sleep(delay)
        if not send_message(socket, list(message.parts), stop):
            break
        sent += 1
        if on_message is not None:
            on_message(sent)
    return sent
