"""Who may connect to a listening consumer, and how many at once.

libzmq accepts any number of connections on a bound PULL socket, and each one gets its
own receive queue of up to RCVHWM messages of up to MAXMSGSIZE bytes per part, so the
memory a service may be made to hold grows with the number of peers. :class:`PeerGate`
bounds that number: it is the socket's ZAP handler (ZeroMQ's authentication hook,
``inproc://zeromq.zap.01``, asked once per connection during the handshake, before any
queue exists) and admits a connection only while fewer than ``max_peers`` are connected,
and, when an allow list is given, only from those addresses. It counts the connections
with a socket monitor. Refused connections are counted by address and handed to the
service (:meth:`PeerGate.take_refusals`), which reports them; nothing is refused silently.

The monitor's events do not say which connection a handshake event belongs to (libzmq
reports the file descriptor only for ``ACCEPTED`` and ``DISCONNECTED``), so the count of
admitted connections is an upper bound built from totals: ``succeeded + failed −
disconnected`` (every connection ends its handshake with exactly one ``SUCCEEDED`` or
``FAILED_*`` event and then disconnects), plus the admissions whose handshake has not
finished yet. Every term errs high, so at most ``max_peers`` connections ever hold a
queue; the estimate is exact again once pending handshakes have settled.

The ZAP domain is enforced (``ZAP_ENFORCE_DOMAIN``): if the handler is not there, libzmq
refuses connections instead of admitting them.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import zmq
from zmq.utils.monitor import recv_monitor_message

from streamer.errors import ConfigError, TransportError

ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
ZAP_DOMAIN: Final = "tomo-streamer"
DEFAULT_MAX_PEERS: Final = 4
POLL_MS: Final = 100
_FAILED: Final = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                  zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_EVENTS: Final = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
                  | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                  | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_MONITOR_STOPPED)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class PeerPolicy:
    """At most ``max_peers`` connections at once; only from ``allow`` when it is given."""

    max_peers: int = DEFAULT_MAX_PEERS
    allow: tuple[Network, ...] = ()

    def __post_init__(self) -> None:
        if self.max_peers < 1:
            raise ConfigError(f"--max-peers: expected at least 1, got {self.max_peers}")

    @classmethod
    def parse(cls, max_peers: int, allow: Iterable[str] = ()) -> PeerPolicy:
        """From the command line: ``allow`` holds IP addresses or CIDR networks."""
        networks = []
        for text in allow:
            try:
                networks.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise ConfigError(
                    f"--allow: expected an IP address or network such as 10.0.0.0/24, got "
                    f"{text!r}"
                ) from None
        return cls(max_peers=max_peers, allow=tuple(networks))

    def admits_address(self, address: str) -> bool:
        """True if a peer at ``address`` (the IP libzmq reports) may connect."""
        if not self.allow:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:  # not an IP (ipc://, inproc://): refused when a list is given
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.allow)


@dataclass
class _Counts:
    """Totals of the monitor's events, and the admissions made."""

    accepted: int = 0
    succeeded: int = 0
    failed: int = 0
    disconnected: int = 0
    granted: int = 0

    @property
    def connected(self) -> int:
        """Upper bound on connections past their handshake and still open."""
        return max(0, self.succeeded + self.failed - self.disconnected)

    @property
    def admitting(self) -> int:
        """Upper bound on admitted connections whose handshake has not finished."""
        handshaking = self.accepted - self.succeeded - self.failed
        return max(0, min(self.granted - self.succeeded, handshaking))


class PeerGate:
    """The ZAP handler and connection counter of one listening socket.

    Use :meth:`attach` on the socket after its options are set and before it binds (see
    ``prepare`` in :func:`streamer.wire.transport.open_socket`); :meth:`close` after the socket
    is closed. One gate per ZeroMQ context (the ZAP endpoint is per context).
    """

    def __init__(self, context: zmq.Context[Any], policy: PeerPolicy) -> None:
        self.context = context
        self.policy = policy
        self._lock = threading.Lock()
        self._counts = _Counts()
        self._refused: Counter[str] = Counter()
        self.refused_total = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._zap: zmq.Socket[Any] | None = None
        self._monitor: zmq.Socket[Any] | None = None

    def attach(self, socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` ask this gate about every connection; start serving."""
        if self._thread is not None:
            raise TransportError("peer gate: already attached to a socket")
        zap = self.context.socket(zmq.REP)
        zap.setsockopt(zmq.LINGER, 0)
        try:
            zap.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            zap.close(linger=0)
            raise TransportError(
                f"peer gate: cannot serve {ZAP_ENDPOINT} ({exc}); one listening consumer "
                "per ZeroMQ context"
            ) from None
        socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        self._zap = zap
        self._monitor = socket.get_monitor_socket(_EVENTS)
        self._thread = threading.Thread(target=self._serve, name="peer-gate", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> int:
        """Connections admitted and open now (an upper bound, see the module notes)."""
        with self._lock:
            return self._counts.connected

    def take_refusals(self) -> dict[str, int]:
        """Connection attempts refused since the last call, by peer address."""
        with self._lock:
            refused = dict(self._refused)
            self._refused.clear()
        return refused

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop serving (after the socket it guards is closed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        for sock in (self._zap, self._monitor):
            if sock is not None and not sock.closed:
                sock.close(linger=0)

    def _serve(self) -> None:
        assert self._zap is not None and self._monitor is not None
        poller = zmq.Poller()
        poller.register(self._zap, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(POLL_MS))
                # Events first: a connection's ACCEPTED is emitted before its ZAP request.
                if not self._drain_events():
                    return
                if self._zap in ready:
                    self._answer(self._zap.recv_multipart())
        except zmq.ZMQError:
            if not self._stop.is_set():
                raise
        finally:
            self._zap.close(linger=0)
            self._monitor.close(linger=0)

    def _drain_events(self) -> bool:
        """Apply every queued monitor event; False once the monitor has stopped."""
        assert self._monitor is not None
        while True:
            try:
                event = recv_monitor_message(self._monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                return True
            kind = event["event"]
            with self._lock:
                if kind == zmq.EVENT_ACCEPTED:
                    self._counts.accepted += 1
                elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self._counts.succeeded += 1
                elif kind in _FAILED:
                    self._counts.failed += 1
                elif kind == zmq.EVENT_DISCONNECTED:
                    self._counts.disconnected += 1
                elif kind == zmq.EVENT_MONITOR_STOPPED:
                    return False

    def _answer(self, request: list[bytes]) -> None:
        """Reply to one ZAP request: ``[version, id, domain, address, routing id,
        mechanism, credentials...]`` → ``[version, id, status, text, user id, metadata]``."""
        assert self._zap is not None
        if len(request) < 6:
            self._zap.send_multipart([b"1.0", b"", b"500", b"malformed ZAP request", b"", b""])
            return
        version, request_id, _domain, raw_address = request[:4]
        address = raw_address.decode("ascii", "replace")
        with self._lock:
            counts = self._counts
            if not self.policy.admits_address(address):
                status, text = b"400", b"address not allowed"
            elif counts.connected + counts.admitting >= self.policy.max_peers:
                status, text = b"400", b"too many peers"
            else:
                status, text = b"200", b"OK"
                counts.granted += 1
            if status != b"200":
                self._refused[f"{address or 'local'} ({text.decode()})"] += 1
                self.refused_total += 1
        self._zap.send_multipart([version, request_id, status, text, b"", b""])
