"""Stream a scan (any :class:`~streamer.sources.scan.FrameReader`) over a PUSH socket.

``start``, then blocks of ``block`` consecutive frames, then ``end`` with the number of
frames sent. Options pace the stream (``rate_fps``) and reorder the blocks for testing
(``shuffle``: a seeded random permutation; ``interleave``: even blocks, then odd ones).
Payloads are sent zero-copy from the reader's arrays.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zmq

from streamer.errors import ConfigError, StreamerError, TransportError
from streamer.protocol import (
    MAX_TEXT,
    AbortHeader,
    EndHeader,
    FramesHeader,
    StartHeader,
    encode_frames,
    encode_header,
)
from streamer.sources.scan import FrameReader, ScanLayout

Order = Literal["sequential", "shuffle", "interleave"]


@dataclass(frozen=True)
class SendOptions:
    """How a scan is streamed.

    Parameters
    ----------
    block : int
        Frames per ``frames`` message.
    rate_fps : float, optional
        Frames per second; ``None`` sends as fast as the consumer takes them.
    order : {'sequential', 'shuffle', 'interleave'}
        Block order; the non-sequential ones exercise out-of-order handling.
    seed : int
        Seed of the ``shuffle`` permutation.
    scan_id : str, optional
        Scan id on the wire; a fresh unique id when not given.
    cannot_wait : bool
        Act as a detector that cannot be held back: a ``frames`` message the consumer
        cannot take at once (its queues are full) is dropped, not waited for. Drops are
        counted (:attr:`SendSummary.frames_dropped`, ranges in
        :attr:`SendSummary.dropped_ranges`); ``end.sent`` counts only what went out, so
        the consumer's report shows the dropped frames as missing. ``start`` and
        ``end`` are always waited for.
    """

    block: int = 16
    rate_fps: float | None = None
    order: Order = "sequential"
    seed: int = 0
    scan_id: str | None = None
    cannot_wait: bool = False

    def __post_init__(self) -> None:
        if self.block < 1:
            raise ConfigError(f"--block: expected at least 1 frame, got {self.block}")
        if self.rate_fps is not None and not self.rate_fps > 0:
            raise ConfigError(f"--rate: expected frames/s > 0, got {self.rate_fps}")
        if self.order not in ("sequential", "shuffle", "interleave"):
            raise ConfigError(
                f"--order: expected sequential|shuffle|interleave, got {self.order!r}"
            )


@dataclass(frozen=True)
class SendSummary:
    scan_id: str
    frames_sent: int
    messages_sent: int
    bytes_sent: int
    seconds: float
    aborted: bool
    frames_dropped: int = 0
    dropped_ranges: tuple[tuple[int, int], ...] = ()  # [first, stop) of each dropped block


def new_scan_id() -> str:
    return f"scan-{uuid.uuid4().hex[:12]}"


def start_header(layout: ScanLayout, scan_id: str) -> StartHeader:
    """The ``start`` message announcing ``layout``."""
    return StartHeader(
        scan=scan_id,
        rows=layout.rows,
        cols=layout.cols,
        dtype=layout.dtype_name,
        frames=layout.frames,
        projections=layout.projections,
        flats=layout.flats,
        darks=layout.darks,
        normalisation=layout.normalisation,
        geometry=layout.geometry,
        source=layout.source,
        metadata=layout.metadata,
        t=time.time(),
    )


def block_order(frames: int, options: SendOptions) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each block in sending order."""
    starts = np.arange(0, frames, options.block)
    if options.order == "shuffle":
        starts = np.random.default_rng(options.seed).permutation(starts)
    elif options.order == "interleave":
        starts = np.concatenate((starts[0::2], starts[1::2]))
    for first in starts.tolist():
        yield first, min(first + options.block, frames)


def send_scan(
    socket: zmq.Socket[bytes],
    reader: FrameReader,
    options: SendOptions = SendOptions(),
    *,
    stop: threading.Event | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SendSummary:
    """Stream ``reader`` as one scan; ``abort`` is sent if ``stop`` is set midway.

    Raises
    ------
    TransportError
        If no consumer takes a message within the socket's send timeout.
    """
    layout = reader.layout
    scan_id = options.scan_id or new_scan_id()
    keys = layout.image_keys.tolist()
    angles = layout.angles_deg.tolist()
    began = time.perf_counter()
    sent = messages = sent_bytes = 0
    dropped: list[tuple[int, int]] = []
    _send(socket, [encode_header(start_header(layout, scan_id))])
    for first, stop_index in block_order(layout.frames, options):
        if stop is not None and stop.is_set():
            abort = AbortHeader(scan=scan_id, reason="sender stopped", t=time.time())
            _send(socket, [encode_header(abort)])
            return SendSummary(scan_id, sent, messages, sent_bytes, _since(began), True,
                               sum(b - a for a, b in dropped), tuple(sorted(dropped)))
        if options.rate_fps is not None:
            _pace(began, sent, options.rate_fps, stop)
        try:
            data = reader.read(first, stop_index)
        except StreamerError as error:  # tell the consumer now, not by its idle timeout
            reason = f"source failed: {error}"[:MAX_TEXT]
            _send(socket, [encode_header(AbortHeader(scan=scan_id, reason=reason,
                                                     t=time.time()))])
            raise
        header = FramesHeader(
            scan=scan_id,
            first=first,
            count=stop_index - first,
            keys=keys[first:stop_index],
            angles=angles[first:stop_index],
            dtype=layout.dtype_name,
            shape=(layout.rows, layout.cols),
            t=time.time(),
        )
        if options.cannot_wait:
            try:
                socket.send_multipart(encode_frames(header, data), flags=zmq.NOBLOCK,
                                      copy=False)
            except zmq.Again:
                dropped.append((first, stop_index))
                continue
        else:
            _send(socket, encode_frames(header, data))
        sent += header.count
        messages += 1
        sent_bytes += data.nbytes
        if on_progress is not None:
            on_progress(sent, layout.frames)
    _send(socket, [encode_header(EndHeader(scan=scan_id, sent=sent, t=time.time()))])
    return SendSummary(scan_id, sent, messages + 2, sent_bytes, _since(began), False,
                       sum(b - a for a, b in dropped), tuple(sorted(dropped)))


def _send(socket: zmq.Socket[bytes], parts: list[Any]) -> None:
    try:
        socket.send_multipart(parts, copy=False)
    except zmq.Again:
        timeout = socket.getsockopt(zmq.SNDTIMEO)
        assert isinstance(timeout, int)
        raise TransportError(
            f"send: no consumer took a message within {timeout} ms; is ingest running and "
            "connected to this address?"
        ) from None


def _pace(began: float, sent: int, rate_fps: float, stop: threading.Event | None) -> None:
    """Wait until ``sent`` frames are due at ``rate_fps`` (pacing, not synchronisation)."""
    delay = began + sent / rate_fps - time.perf_counter()
    if delay > 0:
        if stop is not None:
            stop.wait(delay)
        else:
            time.sleep(delay)


def _since(began: float) -> float:
    return time.perf_counter() - began
