"""Stream a scan (any :class:`~streamer.sources.scan.FrameReader`) over a PUSH socket.

``start``, then blocks of ``block`` consecutive frames, then ``end`` with the number of
frames sent. Options pace the stream (``rate_fps``) and reorder the blocks for testing
(``shuffle``: a seeded random permutation; ``interleave``: even blocks, then odd ones).
Payloads are sent zero-copy from the reader's arrays.

A sender waiting for a consumer (no one connected, or the queues full) still answers
its ``stop`` event within :data:`STOP_POLL_S`: every send polls the socket with a short
timeout instead of blocking for the whole send timeout, so Ctrl-C or SIGTERM stops
``simulate``/``replay`` at once. A stopped scan says so (:attr:`SendSummary.stopped`);
its ``abort`` message is sent only if a consumer can take it at once.
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
from streamer.sources.sample_name import SAMPLE_ENTRY, check_sample_name
from streamer.sources.scan import FrameReader, ScanLayout
from streamer.wire.protocol import (
    MAX_TEXT,
    AbortHeader,
    EndHeader,
    FramesHeader,
    StartHeader,
    encode_frames,
    encode_header,
)

Order = Literal["sequential", "shuffle", "interleave"]

STOP_POLL_S = 0.05
"""How often a send waiting for a consumer looks at its stop event (seconds)."""


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
    sample : str, optional
        The sample's name, sent as ``start``'s ``metadata["sample"]`` (it replaces one
        the scan's own metadata gives): a consumer carries the CoR of the sample's
        previous scan to this one by it.
    """

    block: int = 16
    rate_fps: float | None = None
    order: Order = "sequential"
    seed: int = 0
    scan_id: str | None = None
    cannot_wait: bool = False
    sample: str | None = None

    def __post_init__(self) -> None:
        if self.sample is not None:
            check_sample_name(self.sample)
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
    """What a sender did. ``aborted``: the scan did not go out whole (``end`` was not
    sent); ``stopped``: because the stop event was set; ``abort_sent``: the consumer was
    told with an ``abort`` message (not when no consumer could take one at once)."""

    scan_id: str
    frames_sent: int
    messages_sent: int
    bytes_sent: int
    seconds: float
    aborted: bool
    frames_dropped: int = 0
    dropped_ranges: tuple[tuple[int, int], ...] = ()  # [first, stop) of each dropped block
    frames: int = 0  # frames in the scan
    stopped: bool = False
    abort_sent: bool = False


def new_scan_id() -> str:
    return f"scan-{uuid.uuid4().hex[:12]}"


def start_header(layout: ScanLayout, scan_id: str, sample: str | None = None) -> StartHeader:
    """The ``start`` message announcing ``layout`` (``sample``: its sample's name, in the
    metadata)."""
    metadata = (layout.metadata if sample is None
                else {**layout.metadata, SAMPLE_ENTRY: sample})
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
        metadata=metadata,
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

    A set ``stop`` is seen within :data:`STOP_POLL_S` even while no consumer takes the
    messages; the summary then says ``stopped`` and how many frames went out.

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

    def summary(*, aborted: bool, abort_sent: bool = False) -> SendSummary:
        return SendSummary(scan_id, sent, messages, sent_bytes, _since(began), aborted,
                           sum(b - a for a, b in dropped), tuple(sorted(dropped)),
                           frames=layout.frames,
                           stopped=aborted and stop is not None and stop.is_set(),
                           abort_sent=abort_sent)

    def stopped() -> SendSummary:
        abort = AbortHeader(scan=scan_id, reason="sender stopped", t=time.time())
        told = messages > 0 and _offer(socket, [encode_header(abort)])
        return summary(aborted=True, abort_sent=told)

    start = start_header(layout, scan_id, options.sample)
    if not send_message(socket, [encode_header(start)], stop):
        return stopped()
    messages += 1
    for first, stop_index in block_order(layout.frames, options):
        if stop is not None and stop.is_set():
            return stopped()
        if options.rate_fps is not None:
            _pace(began, sent, options.rate_fps, stop)
            if stop is not None and stop.is_set():
                return stopped()
        try:
            data = reader.read(first, stop_index)
        except StreamerError as error:  # tell the consumer now, not by its idle timeout
            reason = f"source failed: {error}"[:MAX_TEXT]
            send_message(socket, [encode_header(AbortHeader(scan=scan_id, reason=reason,
                                                            t=time.time()))], stop)
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
            if not _offer(socket, encode_frames(header, data)):
                dropped.append((first, stop_index))
                continue
        elif not send_message(socket, encode_frames(header, data), stop):
            return stopped()
        sent += header.count
        messages += 1
        sent_bytes += data.nbytes
        if on_progress is not None:
            on_progress(sent, layout.frames)
    if not send_message(socket, [encode_header(EndHeader(scan=scan_id, sent=sent,
                                                         t=time.time()))], stop):
        return stopped()
    messages += 1
    return summary(aborted=False)


def send_message(socket: zmq.Socket[bytes], parts: list[Any],
                 stop: threading.Event | None = None) -> bool:
    """Send one multi-part message, waiting for a consumer up to the socket's send
    timeout (``SNDTIMEO``; -1 waits for ever) but looking at ``stop`` every
    :data:`STOP_POLL_S`. Returns False, having sent nothing, if ``stop`` was set first.

    Raises
    ------
    TransportError
        If no consumer takes the message within the send timeout.
    """
    timeout_ms = socket.getsockopt(zmq.SNDTIMEO)
    assert isinstance(timeout_ms, int)
    deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000
    while True:
        if stop is not None and stop.is_set():
            return False
        if _offer(socket, parts):
            return True
        wait_s = STOP_POLL_S
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError(
                    f"send: no consumer took a message within {timeout_ms} ms; is ingest "
                    "running and connected to this address?"
                )
            wait_s = min(wait_s, left)
        socket.poll(max(1, int(wait_s * 1000)), zmq.POLLOUT)


def _offer(socket: zmq.Socket[bytes], parts: list[Any]) -> bool:
    """Send ``parts`` if a consumer can take them now; False (nothing sent) if not.

    libzmq checks the high-water mark on a message's first part only, so a message whose
    first part was taken goes out whole."""
    try:
        socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return False
    return True


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
