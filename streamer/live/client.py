"""Watch a live scan from Python: typed feed messages with NumPy images.

::

    from streamer.live.client import Preview, ScanEnd, subscribe

    for message in subscribe("tcp://127.0.0.1:5600", timeout_s=30):
        if isinstance(message, Preview):
            print(message.header.projections, message.images[0].shape)
        elif isinstance(message, ScanEnd):
            break

Every message is validated before it is used (:mod:`streamer.live.messages`: bounded
header, strict fields, image sizes within :class:`~streamer.live.messages.FeedLimits`,
payload length equal to what the header announces); a bad one raises
:class:`~streamer.errors.ProtocolError`. Images are read-only views of the received
buffer (no copy).

A subscriber that reads slowly loses messages (the feed never waits for it): ``missed``
on each message counts those lost just before it (from gaps in ``seq``). With
``conflate=True`` the subscription also skips previews older than the newest one already
received, so a slow consumer always sees the latest preview; scan, counters, slice and
sweep messages are never skipped by the client.

:class:`Control` sends requests to the feed's control socket (CoR sweep, set the CoR,
fetch a final slice, state).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import zmq
from pydantic import ValidationError

from streamer.errors import ProtocolError, StreamerError, TransportError
from streamer.live.messages import (
    CorSweepHeader,
    CorSweepRequest,
    CountersHeader,
    CutsHeader,
    CutsRequest,
    FeedHeader,
    FeedLimits,
    HelloHeader,
    PreviewHeader,
    ScanEndHeader,
    ScanStartHeader,
    SetCenterRequest,
    SliceHeader,
    SliceRequest,
    StateRequest,
    as_bytes_view,
    decode_header,
    decode_images,
    pack_request,
    unpack_map,
)
from streamer.wire.transport import check_address

Images = tuple[npt.NDArray[Any], ...]
DEFAULT_LIMITS: Final = FeedLimits()


class FeedTimeoutError(TransportError):
    """Nothing came from the feed (or its control socket) within the timeout."""


class FeedRequestError(StreamerError):
    """The feed refused a control request; ``reason`` is its code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ScanStart:
    """A scan opened (``header``: rows, cols, counts, preview rows and binning, CoR)."""

    header: ScanStartHeader
    missed: int = 0


@dataclass(frozen=True)
class Counters:
    """Accounting and rates of the scan (about once a second)."""

    header: CountersHeader
    missed: int = 0


@dataclass(frozen=True)
class Preview:
    """Preview slices so far: ``images[i]`` is detector row ``header.rows[i]``."""

    header: PreviewHeader
    images: Images
    missed: int = 0

    def stack(self) -> npt.NDArray[Any]:
        """The images as one ``(rows, size, size)`` array (a copy)."""
        return np.stack(self.images)


@dataclass(frozen=True)
class Slice:
    """One final slice (``images[0]``), detector row ``header.index``."""

    header: SliceHeader
    images: Images
    missed: int = 0


@dataclass(frozen=True)
class Cuts:
    """The ``xy``, ``xz`` and ``yz`` cuts through the middle of the finished volume."""

    header: CutsHeader
    images: Images
    missed: int = 0

    def named(self) -> dict[str, npt.NDArray[Any]]:
        return {spec.name: image for spec, image in zip(self.header.images, self.images,
                                                         strict=True)}


@dataclass(frozen=True)
class ScanEnd:
    """The scan closed: final accounting, the CoR used, where the volume went."""

    header: ScanEndHeader
    missed: int = 0


@dataclass(frozen=True)
class CorSweep:
    """One preview row at several CoR values: ``images[i]`` at ``header.centers[i]``."""

    header: CorSweepHeader
    images: Images
    missed: int = 0


@dataclass(frozen=True)
class Hello:
    """The feed saw a subscriber join (its subscription is active from here on).
    :class:`Subscription` takes these itself and never hands them out."""

    header: HelloHeader
    missed: int = 0


FeedMessage = ScanStart | Counters | Preview | Slice | Cuts | ScanEnd | CorSweep | Hello


def decode_message(parts: list[Any], limits: FeedLimits = DEFAULT_LIMITS, *,
                   missed: int = 0) -> FeedMessage:
    """Validate and decode one feed message (a list of ``bytes`` or ``zmq.Frame``).

    Raises
    ------
    ProtocolError
        With ``reason`` one of ``header_too_large``, ``malformed_header``,
        ``unsupported_version``, ``unknown_type``, ``invalid_field``,
        ``message_too_large``, ``wrong_part_count``, ``payload_size_mismatch``.
    """
    if not parts:
        raise ProtocolError("wrong_part_count", "message: expected 1 or 2 parts, got 0")
    header = decode_header(as_bytes_view(parts[0]), limits)
    images = decode_images(header, parts)
    return _wrap(header, images, missed)


def _wrap(header: FeedHeader, images: Images, missed: int) -> FeedMessage:
    if isinstance(header, ScanStartHeader):
        return ScanStart(header, missed)
    if isinstance(header, CountersHeader):
        return Counters(header, missed)
    if isinstance(header, PreviewHeader):
        return Preview(header, images, missed)
    if isinstance(header, SliceHeader):
        return Slice(header, images, missed)
    if isinstance(header, CutsHeader):
        return Cuts(header, images, missed)
    if isinstance(header, ScanEndHeader):
        return ScanEnd(header, missed)
    if isinstance(header, HelloHeader):
        return Hello(header, missed)
    return CorSweep(header, images, missed)


class MessageQueue:
    """What a subscriber has received and not yet handed out (sans-IO, no sockets).

    Counts the messages the publisher dropped for this subscriber (gaps in ``seq``: they
    go into each message's ``missed`` and the total :attr:`missed`) and, with
    ``conflate``, keeps only the newest preview waiting (:attr:`conflated` counts those
    skipped); every other message waits in order. ``hello`` messages are taken, not
    handed out (counted in :attr:`hellos`; what was lost before one is counted in the
    next message handed out). :attr:`received` counts every message.
    """

    def __init__(self, *, conflate: bool = False) -> None:
        self.conflate = conflate
        self.missed = 0
        self.conflated = 0
        self.received = 0
        self.hellos = 0
        self._last_seq: int | None = None
        self._carried = 0
        self._ready: deque[FeedMessage] = deque()

    def add(self, header: FeedHeader, images: Images) -> None:
        """One validated message, as it arrived."""
        missed = 0
        if self._last_seq is not None and header.seq > self._last_seq:
            missed = header.seq - self._last_seq - 1
        self._last_seq = header.seq
        self.missed += missed
        self.received += 1
        if isinstance(header, HelloHeader):
            self.hellos += 1
            self._carried += missed
            return
        missed, self._carried = missed + self._carried, 0
        message = _wrap(header, images, missed)
        if self.conflate and isinstance(message, Preview):
            older = sum(isinstance(m, Preview) for m in self._ready)
            if older:
                self.conflated += older
                self._ready = deque(m for m in self._ready if not isinstance(m, Preview))
        self._ready.append(message)

    def pop(self) -> FeedMessage | None:
        """The next message to hand out, or ``None``."""
        return self._ready.popleft() if self._ready else None

    def __len__(self) -> int:
        return len(self._ready)


class Subscription:
    """An open subscription to a feed; iterate over it for messages.

    Parameters
    ----------
    address : str
        The feed's PUB address (``tomo-streamer run --feed ADDR`` prints it).
    timeout_s : float
        Longest wait for a message; :class:`FeedTimeoutError` after that.
    conflate : bool
        Skip previews older than the newest already received (see the module docstring).
    hwm : int
        Receive high-water mark, messages: what may wait unread.
    rcvbuf_bytes : int, optional
        The kernel receive buffer (``SO_RCVBUF``); the system's default when omitted.
    limits : FeedLimits
        Size bounds checked before anything is allocated (also the socket's
        ``MAXMSGSIZE``, so a larger message never reaches us).
    """

    def __init__(self, address: str, *, timeout_s: float = 10.0, conflate: bool = False,
                 hwm: int = 4, rcvbuf_bytes: int | None = None,
                 limits: FeedLimits = DEFAULT_LIMITS,
                 context: zmq.Context[Any] | None = None) -> None:
        check_address(address)
        if not timeout_s > 0:
            raise ValueError(f"timeout_s: expected > 0, got {timeout_s}")
        self.address = address
        self.timeout_s = timeout_s
        self.conflate = conflate
        self.limits = limits
        self.queue = MessageQueue(conflate=conflate)
        self._own_context = context is None
        self._context: zmq.Context[Any] = context if context is not None else zmq.Context()
        self._socket: zmq.Socket[Any] = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, hwm)
        if rcvbuf_bytes is not None:
            self._socket.setsockopt(zmq.RCVBUF, rcvbuf_bytes)
        self._socket.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        # Watched from before the connect, so that wait_connected cannot miss the event.
        self._monitor: zmq.Socket[Any] | None = self._socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self._connected = False
        self._socket.connect(address)

    def wait_connected(self, timeout_s: float | None = None) -> None:
        """Return once the feed has this subscription (so that a scan started next is
        seen from its ``scan_start``): the connection is up and a first message came
        (the feed says ``hello`` to every new subscriber; messages that come meanwhile
        are kept for :meth:`receive`). :class:`FeedTimeoutError` after ``timeout_s``
        (default: the subscription's ``timeout_s``, so a client started before the feed
        waits as long as it would for a message)."""
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        if not wait_s > 0:
            raise ValueError(f"timeout_s: expected > 0, got {wait_s}")
        deadline = time.monotonic() + wait_s
        monitor = self._monitor
        if not self._connected and monitor is not None:
            if not monitor.poll(math.ceil(wait_s * 1000), zmq.POLLIN):
                raise FeedTimeoutError(f"feed {self.address}: not connected within "
                                       f"{wait_s:g} s; is the feed running?")
            self._connected = True
            self._stop_monitor()
        while not (self.queue.hellos or len(self.queue)):
            left_ms = math.ceil(1000 * (deadline - time.monotonic()))
            if left_ms <= 0 or not self._socket.poll(left_ms, zmq.POLLIN):
                raise FeedTimeoutError(f"feed {self.address}: connected, but no message "
                                       f"within {wait_s:g} s; is it a tomo-streamer feed?")
            self._take(self._socket.recv_multipart(copy=False))

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None

    def __iter__(self) -> Iterator[FeedMessage]:
        return self

    def __next__(self) -> FeedMessage:
        return self.receive()

    @property
    def missed(self) -> int:
        """Messages the publisher dropped for this subscriber (gaps in ``seq``)."""
        return self.queue.missed

    @property
    def conflated(self) -> int:
        """Older previews skipped by this client (``conflate=True``)."""
        return self.queue.conflated

    def receive(self, timeout_s: float | None = None) -> FeedMessage:
        """The next message; :class:`FeedTimeoutError` after ``timeout_s`` (default: the
        subscription's) without one."""
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + wait_s
        while not len(self.queue):  # (a hello is taken, not handed out: wait on)
            wait_ms = max(0, math.ceil(1000 * (deadline - time.monotonic())))
            if not self._socket.poll(wait_ms, zmq.POLLIN):
                raise FeedTimeoutError(f"feed {self.address}: no message within "
                                       f"{wait_s:g} s; is the feed running?")
            self._take(self._socket.recv_multipart(copy=False))
            if self.conflate:  # everything already here, so that old previews are skipped
                while self._socket.poll(0, zmq.POLLIN):
                    self._take(self._socket.recv_multipart(copy=False))
        message = self.queue.pop()
        assert message is not None
        return message

    def _take(self, parts: list[Any]) -> None:
        if not parts:
            raise ProtocolError("wrong_part_count", "message: expected 1 or 2 parts, got 0")
        header = decode_header(as_bytes_view(parts[0]), self.limits)
        self.queue.add(header, decode_images(header, parts))

    def close(self) -> None:
        self._stop_monitor()
        self._socket.close(linger=0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def subscribe(address: str, *, timeout_s: float = 10.0, conflate: bool = False,
              hwm: int = 4, limits: FeedLimits = DEFAULT_LIMITS) -> Iterator[FeedMessage]:
    """Yield the feed's messages as they come (see :class:`Subscription`); the socket is
    closed when the loop ends."""
    with Subscription(address, timeout_s=timeout_s, conflate=conflate, hwm=hwm,
                      limits=limits) as subscription:
        yield from subscription


class Control:
    """Requests to a feed's control socket (``tomo-streamer run --control ADDR``).

    Parameters
    ----------
    address : str
        The control address.
    token : str, optional
        The feed's token, if it has one (required when control is bound off-host).
    timeout_s : float
        Longest wait for a reply (a CoR sweep is acknowledged at once; its images come on
        the feed as a ``cor_sweep`` message).
    """

    def __init__(self, address: str, *, token: str | None = None, timeout_s: float = 10.0,
                 limits: FeedLimits = DEFAULT_LIMITS,
                 context: zmq.Context[Any] | None = None) -> None:
        check_address(address)
        self.address = address
        self.token = token
        self.timeout_s = timeout_s
        self.limits = limits
        self._own_context = context is None
        self._context: zmq.Context[Any] = context if context is not None else zmq.Context()
        self._socket: zmq.Socket[Any] = self._context.socket(zmq.REQ)
        self._socket.setsockopt(zmq.LINGER, 0)
        # After a timeout the next request may still be sent; late replies are discarded.
        self._socket.setsockopt(zmq.REQ_RELAXED, 1)
        self._socket.setsockopt(zmq.REQ_CORRELATE, 1)
        self._socket.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)
        self._socket.connect(address)

    def cor_sweep(self, *, center: float | None = None, half_width: float = 5.0,
                  step: float = 0.5, row: int | None = None) -> dict[str, Any]:
        """Ask for a sweep; the reply says its number, row and centres."""
        reply = self._request(_build(CorSweepRequest, center=center, half_width=half_width,
                                     step=step, row=row, token=self.token))
        assert isinstance(reply, dict)
        return reply

    def set_center(self, value: float, *, scan: str | None = None) -> dict[str, Any]:
        """Make the running scan use CoR ``value`` (0-based detector column)."""
        reply = self._request(_build(SetCenterRequest, value=value, scan=scan,
                                     token=self.token))
        assert isinstance(reply, dict)
        return reply

    def slice(self, index: int) -> Slice:
        """The final slice nearest to ``index`` that the feed holds."""
        reply = self._request(_build(SliceRequest, index=index, token=self.token))
        assert isinstance(reply, Slice)
        return reply

    def cuts(self) -> Cuts:
        """The last scan's three orthogonal cuts (as far as its slices are kept)."""
        reply = self._request(CutsRequest(token=self.token))
        assert isinstance(reply, Cuts)
        return reply

    def state(self) -> dict[str, Any]:
        """The scan's shape, preview rows, CoR, slices held and latest counters."""
        reply = self._request(StateRequest(token=self.token))
        assert isinstance(reply, dict)
        return reply

    def _request(self, request: Any) -> dict[str, Any] | Slice | Cuts:
        self._socket.send(pack_request(request))
        if not self._socket.poll(int(self.timeout_s * 1000), zmq.POLLIN):
            raise FeedTimeoutError(f"control {self.address}: no reply within {self.timeout_s:g} s")
        return parse_reply(self._socket.recv_multipart(copy=False), self.limits)

    def close(self) -> None:
        self._socket.close(linger=0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _build(model: type[Any], **fields: Any) -> Any:
    """A request model, or :class:`FeedRequestError` (``invalid_field``) naming the field:
    the same refusal as the feed's, before anything is sent."""
    try:
        return model(**fields)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or model.__name__}: {e['msg']}"
            for e in error.errors(include_url=False))
        raise FeedRequestError("invalid_field", problems) from None


def parse_reply(parts: list[Any], limits: FeedLimits = DEFAULT_LIMITS
                ) -> dict[str, Any] | Slice | Cuts:
    """A control reply: a map (``type`` ``ok``), a :class:`Slice` or :class:`Cuts`, or
    :class:`FeedRequestError` for an ``error`` reply."""
    if len(parts) == 2:
        message = decode_message(parts, limits)
        if not isinstance(message, Slice | Cuts):
            raise ProtocolError("invalid_field", "reply: expected a slice or cuts, got "
                                f"{type(message).__name__}")
        return message
    if len(parts) != 1:
        raise ProtocolError("wrong_part_count", f"reply: expected 1 or 2 parts, got {len(parts)}")
    reply = unpack_map(as_bytes_view(parts[0]), limits.max_header_bytes, "reply")
    if reply.get("type") == "error":
        raise FeedRequestError(str(reply.get("reason", "error")),
                               str(reply.get("message", ""))[:1024])
    if reply.get("type") != "ok" or reply.get("v") != 1:
        raise ProtocolError("invalid_field", f"reply: expected type ok|error and v 1, got "
                            f"{reply.get('type')!r:.40}, {reply.get('v')!r:.20}")
    return reply
