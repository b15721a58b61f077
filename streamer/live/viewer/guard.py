"""Which ``Host`` and ``Origin`` the viewer answers: its own address, nothing else.

A web page on another site cannot read the viewer's replies (the browser's same-origin
rule), but with DNS rebinding it can make its own name resolve to 127.0.0.1 and then
talk to the viewer as if it were the viewer's page: its requests then carry
``Host: evil.example:8765`` and ``Origin: http://evil.example:8765``. So every HTTP
request and WebSocket upgrade must name the viewer itself in ``Host`` (a loopback
name or address, or the names given for a viewer served on purpose to the network,
with the bound port), and an ``Origin``, when a browser sends one, must name it too.

This module only decides (no I/O); :mod:`streamer.live.viewer.server` applies it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from streamer.wire.transport import LOOPBACK_NAMES

#: Names any viewer answers to: the loopback names and addresses (IPv6 without brackets).
LOOPBACK_HOSTS: Final = frozenset(LOOPBACK_NAMES)
#: Hosts that mean "every interface" when bound; never a name a request may use.
WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})  # noqa: S104  # names, not a bind
DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True)
class HostGuard:
    """The names and the port requests must use; :meth:`refusal` says why one is refused.

    Parameters
    ----------
    names : frozenset of str
        Host names and addresses (lower case, IPv6 without brackets) the viewer answers to.
    port : int
        The port it is bound to.
    """

    names: frozenset[str]
    port: int

    @classmethod
    def for_bound(cls, host: str, port: int, *, remote: bool,
                  extra: tuple[str, ...] = ()) -> HostGuard:
        """The guard of a viewer bound to ``host:port``: the loopback names, ``host``
        itself (unless a wildcard) and ``extra``; with ``remote`` also this machine's
        host name, fully qualified name and their addresses."""
        names = set(LOOPBACK_HOSTS) | {name.lower().strip("[]") for name in extra}
        if host not in WILDCARD_HOSTS:
            names.add(host.lower().strip("[]"))
        if remote:
            names |= _this_machine()
        return cls(frozenset(names), port)

    def refusal(self, host: str | None, origin: str | None) -> str | None:
        """``None`` if a request with these ``Host`` and ``Origin`` headers is the
        viewer's own; else a one-line reason."""
        if host is None:
            return "no Host header"
        name, port, problem = _split(f"//{host}", "http")
        if problem is not None or name is None:
            return f"Host {host[:80]!r}: {problem or 'no host name'}"
        if name not in self.names or port != self.port:
            return (f"Host {host[:80]!r} is not this viewer (expected a loopback name with "
                    f"port {self.port})")
        if origin is None:
            return None  # not a browser's cross-site request (or a same-origin GET)
        scheme = urlsplit(origin).scheme if origin != "null" else ""
        if scheme not in DEFAULT_PORTS:
            return f"Origin {origin[:80]!r} is not this viewer"
        name, port, problem = _split(origin, scheme)
        if problem is not None or name not in self.names or port != self.port:
            return f"Origin {origin[:80]!r} is not this viewer"
        return None


def _split(url: str, scheme: str) -> tuple[str | None, int | None, str | None]:
    """Host name (lower case, no brackets) and port of ``url``, or the problem."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return None, None, str(error)
    if parts.username is not None or parts.path not in ("", "/"):
        return None, None, "expected host[:port]"
    return parts.hostname, port if port is not None else DEFAULT_PORTS[scheme], None


def _this_machine() -> set[str]:
    """This machine's host name, fully qualified name and their IPv4 addresses."""
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    for name in list(names):
        try:
            names.update(socket.gethostbyname_ex(name)[2])
        except OSError:
            continue
    return names
