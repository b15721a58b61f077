"""ZeroMQ sockets by address: loopback by default, bounded queues, no lingering.

Topology: a *source* (detector, replay, simulator) binds a PUSH socket; consumers
(ingest ranks, the recorder) connect PULL sockets. Either side may instead bind/connect
the other way (``--connect`` on a source, ``--listen`` on a consumer) for detectors that
dial out. PUSH never drops: when the high-water mark is reached, ``send`` blocks, and so a
slow consumer slows the source (backpressure).

Security: a TCP *bind* is refused on anything but a loopback address unless the caller
passes ``allow_remote=True`` (the ``--allow-remote`` option), so nothing listens on a
network interface by accident.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import zmq

from streamer.errors import TransportError

DEFAULT_SOURCE_ADDRESS: Final = "tcp://127.0.0.1:5555"
SCHEMES: Final = ("tcp", "ipc", "inproc")
LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Endpoint:
    """A ZeroMQ address and whether this side binds it or connects to it."""

    address: str
    bind: bool

    @classmethod
    def parse(cls, address: str, *, bind: bool) -> Endpoint:
        check_address(address)
        return cls(address=address, bind=bind)


def check_address(address: str) -> None:
    """Raise ``TransportError`` unless ``address`` is ``tcp://host:port``, ``ipc://path``
    or ``inproc://name``; an IPv6 host is written in brackets (``tcp://[::1]:5555``) and
    only an IPv6 address may be (``tcp://[127.0.0.1]:5555`` is refused)."""
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in SCHEMES or not rest:
        raise TransportError(
            f"address: expected tcp://HOST:PORT, ipc://PATH or inproc://NAME, got {address!r}"
        )
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host or not (port == "*" or port.isdigit()):
            raise TransportError(f"address: expected tcp://HOST:PORT, got {address!r}")
        if port != "*" and not 0 < int(port) < 65536:
            raise TransportError(f"address: port must be 1..65535, got {port} in {address!r}")
        _tcp_host(address)


def _tcp_host(address: str) -> str:
    """The host of a ``tcp://`` address, brackets removed; a bracketed host must be an
    IPv6 address (``TransportError`` otherwise, never a ``ValueError``)."""
    host = address.partition("://")[2].rpartition(":")[0]
    if not (host.startswith("[") or host.endswith("]")):
        if ":" in host or "[" in host or "]" in host:
            raise TransportError(
                f"address: expected an IPv6 host in brackets (tcp://[::1]:PORT), got {address!r}"
            )
        return host
    inner = host[1:-1] if host.startswith("[") and host.endswith("]") else ""
    try:
        ipaddress.IPv6Address(inner)
    except ValueError:
        raise TransportError(
            f"address: expected an IPv6 address in brackets such as tcp://[::1]:PORT, got "
            f"{address!r} (write an IPv4 address or a host name without brackets)"
        ) from None
    return inner


def is_ipv6(address: str) -> bool:
    """True for a ``tcp://`` address with a bracketed (IPv6) host; ZeroMQ needs its
    ``IPV6`` option for those."""
    return address.startswith("tcp://[")


def is_loopback(address: str) -> bool:
    """True for ipc/inproc addresses and TCP addresses on a loopback host."""
    if not address.startswith("tcp://"):
        return True
    host = _tcp_host(address)
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_socket(
    context: zmq.Context[zmq.Socket[bytes]],
    kind: Literal["push", "pull"],
    endpoint: Endpoint,
    *,
    hwm: int,
    allow_remote: bool = False,
    max_message_bytes: int | None = None,
    send_timeout_ms: int | None = None,
    linger_ms: int = 0,
    prepare: Callable[[zmq.Socket[bytes]], None] | None = None,
) -> zmq.Socket[bytes]:
    """Create, configure and bind or connect a PUSH or PULL socket.

    Parameters
    ----------
    hwm : int
        High-water mark in messages (both directions); bounds queued memory to about
        ``hwm × message size`` per peer.
    max_message_bytes : int, optional
        For receivers: libzmq's ``MAXMSGSIZE``; a peer sending a larger part is
        disconnected before the part is buffered, so a hostile peer cannot make us
        allocate more than this.
    send_timeout_ms : int, optional
        For senders: ``send`` raises ``zmq.Again`` after this long without a consumer.
    linger_ms : int
        How long ``close`` waits to deliver queued messages.
    prepare : callable, optional
        Called with the configured socket just before it binds or connects (e.g.
        :meth:`streamer.ingest.peers.PeerGate.attach`, which must see every connection).

    Returns
    -------
    zmq.Socket
        The socket; for a bind to port ``*`` read the chosen port from
        ``socket.getsockopt_string(zmq.LAST_ENDPOINT)``.
    """
    check_address(endpoint.address)
    if endpoint.bind and not allow_remote and not is_loopback(endpoint.address):
        raise TransportError(
            f"bind: refusing to listen on non-loopback address {endpoint.address!r}; "
            "use a 127.0.0.1 address or pass --allow-remote (allow_remote=True) on purpose"
        )
    if hwm < 1:
        raise TransportError(f"hwm: expected at least 1 message, got {hwm}")
    socket = context.socket(zmq.PUSH if kind == "push" else zmq.PULL)
    try:
        socket.setsockopt(zmq.LINGER, linger_ms)
        if is_ipv6(endpoint.address):
            socket.setsockopt(zmq.IPV6, 1)
        socket.setsockopt(zmq.SNDHWM, hwm)
        socket.setsockopt(zmq.RCVHWM, hwm)
        if max_message_bytes is not None:
            socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        if send_timeout_ms is not None:
            socket.setsockopt(zmq.SNDTIMEO, send_timeout_ms)
        if prepare is not None:
            prepare(socket)
        if endpoint.bind:
            socket.bind(endpoint.address)
        else:
            socket.connect(endpoint.address)
    except zmq.ZMQError as exc:
        socket.close(linger=0)
        verb = "bind" if endpoint.bind else "connect"
        raise TransportError(f"{verb} {endpoint.address!r}: {exc}") from None
    except BaseException:  # e.g. ``prepare`` refused: never leave the socket open
        socket.close(linger=0)
        raise
    return socket


def bound_address(socket: zmq.Socket[bytes]) -> str:
    """The address a socket is bound to (resolves a ``*`` port to the real one)."""
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


def hwm_for(message_bytes: int, budget_bytes: int, *, floor: int = 2, ceiling: int = 1000) -> int:
    """High-water mark (messages) that keeps about ``budget_bytes`` queued per peer."""
    if message_bytes <= 0:
        return ceiling
    return max(floor, min(ceiling, budget_bytes // message_bytes))
