"""``tomo-streamer view``: a web page that shows a live feed (HTTP + WebSocket, aiohttp).

One asyncio loop does everything: a task subscribes to the feed (:mod:`streamer.live.feed`)
and validates every message (:func:`streamer.live.client.decode_message`); each browser holds a
WebSocket that gets the newest message of each kind — latest wins, per browser, so a
slow browser skips old previews and never holds the others back. Images go to the
browser as they came (float32 or uint8 with their window), and the page applies the
contrast. The browser may ask for three things, each validated here and forwarded to the
feed's control socket with the token: a CoR sweep, the CoR to use, a final slice.

Endpoints: ``GET /`` (the page), ``GET /static/{viewer.js,viewer.css}``, ``GET /api/state``
(JSON: what the viewer knows), ``GET /ws`` (the WebSocket). Every request and WebSocket
upgrade must name this viewer in ``Host`` and, when a browser sends one, ``Origin``
(:mod:`streamer.live.viewer.guard`): another web site cannot drive it, not even by DNS
rebinding; a refusal is a 403 and one log line. The server binds 127.0.0.1 unless told
otherwise (``allow_remote``).

The log gets one line per problem (:mod:`streamer.live.viewer.oneline`), never a traceback; a
task that follows the feed and fails is logged and restarted (after
:data:`MAX_FAILURES_IN_ROW` failures in a row it stops, saying so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final, Literal

import zmq
import zmq.asyncio
from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamer.errors import ConfigError, ProtocolError, StreamerError
from streamer.live.client import (
    CorSweep,
    Counters,
    Cuts,
    FeedMessage,
    FeedRequestError,
    Preview,
    ScanEnd,
    ScanStart,
    Slice,
    decode_message,
    parse_reply,
)
from streamer.live.messages import (
    CorSweepRequest,
    CutsRequest,
    FeedLimits,
    SetCenterRequest,
    SliceRequest,
    StateRequest,
    pack_request,
)
from streamer.live.viewer.guard import HostGuard
from streamer.live.viewer.oneline import OneLineLogger, describe, loop_exception_line
from streamer.wire.transport import LOOPBACK_NAMES, check_address

STATIC: Final = {"viewer.js": "application/javascript", "viewer.css": "text/css"}
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
MAX_OP_BYTES: Final = 4096
#: Failures in a row (no message taken between them) after which the task that follows
#: the feed stops, saying so, instead of restarting.
MAX_FAILURES_IN_ROW: Final = 3


def log_to_stderr(line: str) -> None:
    """The viewer's default log: one line on stderr."""
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ViewerSettings:
    """What ``tomo-streamer view`` serves and where.

    Parameters
    ----------
    feed : str
        The feed's PUB address.
    control : str, optional
        The feed's control address (CoR sweep, set CoR, slices); without it the page
        is read-only.
    host, port : str, int
        Where the page is served (port 0: a free one).
    allow_remote : bool
        Allow a non-loopback ``host``.
    token : str, optional
        The feed's control token (never sent to the browser).
    history : int
        Counters kept for the rate plot (one a second).
    allowed_hosts : tuple of str
        Names (or addresses) besides the loopback ones that requests may give in
        ``Host``/``Origin``; with ``allow_remote`` this machine's names are added.
    """

    feed: str
    control: str | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    allow_remote: bool = False
    token: str | None = None
    history: int = 900
    request_timeout_s: float = 10.0
    allowed_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_address(self.feed)
        if self.control is not None:
            check_address(self.control)
        if not self.allow_remote and self.host not in LOOPBACK_NAMES:
            raise ConfigError(f"--host: refusing to serve on non-loopback {self.host!r}; use "
                              "127.0.0.1 or pass --allow-remote on purpose")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port: expected 0..65535, got {self.port}")
        if not 1 <= self.history <= 100_000:
            raise ConfigError(f"history: expected 1..100000 points, got {self.history}")
        for name in self.allowed_hosts:
            if not 0 < len(name) <= 253 or any(c.isspace() or c in "/@?#" for c in name):
                raise ConfigError(f"--allowed-host: expected a host name or address, got "
                                  f"{name[:80]!r}")


class _Op(BaseModel):
    """A browser's request (JSON over the WebSocket), validated strictly."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SweepOp(_Op):
    op: Literal["cor_sweep"]
    center: float | None = None
    half_width: float = 5.0
    step: float = 0.5
    row: int | None = None


class CenterOp(_Op):
    op: Literal["set_center"]
    value: float
    scan: str | None = None


class SliceOp(_Op):
    op: Literal["slice"]
    index: int = Field(ge=0, le=65535)


Op = SweepOp | CenterOp | SliceOp
_OPS: Final[dict[str, type[SweepOp] | type[CenterOp] | type[SliceOp]]] = {
    "cor_sweep": SweepOp, "set_center": CenterOp, "slice": SliceOp,
}


def browser_frame(kind: str, header: Any, images: tuple[Any, ...], extra: dict[str, Any]
                  ) -> bytes:
    """One binary WebSocket message: ``uint32 n``, ``n`` bytes of JSON (padded with spaces
    to a multiple of 4 so the images can be viewed as a ``Float32Array``), the images."""
    meta = {"kind": kind, **header.model_dump(mode="json"), **extra}
    head = json.dumps(meta, separators=(",", ":")).encode()
    head += b" " * (-(4 + len(head)) % 4)
    return struct.pack("<I", len(head)) + head + b"".join(image.tobytes() for image in images)


def _text(kind: str, header: Any) -> str:
    return json.dumps({"kind": kind, **header.model_dump(mode="json")})


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Client:
    """One browser: the newest message of each kind waits here until sent."""

    ws: web.WebSocketResponse
    pending: dict[str, str | bytes] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    skipped: int = 0

    def offer(self, kind: str, payload: str | bytes) -> None:
        if self.pending.pop(kind, None) is not None:
            self.skipped += 1  # latest wins, and goes out in the order it came
        self.pending[kind] = payload
        self.wake.set()

    async def pump(self) -> None:
        while not self.ws.closed:
            await self.wake.wait()
            self.wake.clear()
            batch, self.pending = self.pending, {}
            for payload in batch.values():
                if isinstance(payload, bytes):
                    await self.ws.send_bytes(payload)
                else:
                    await self.ws.send_str(payload)


@dataclass
class _Hub:
    """What the viewer knows, and the browsers to tell (one event loop: no locks)."""

    settings: ViewerSettings
    latest: dict[str, str | bytes] = field(default_factory=dict)
    history: deque[dict[str, float]] = field(default_factory=deque)
    clients: set[_Client] = field(default_factory=set)
    received: int = 0
    rejected: int = 0
    missed: int = 0
    last_seq: int | None = None
    scan: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    cuts_of: set[str] = field(default_factory=set)  # scans whose cuts we have or asked for

    def take(self, message: FeedMessage) -> None:
        self.received += 1
        seq = message.header.seq
        if self.last_seq is not None and seq > self.last_seq:
            self.missed += seq - self.last_seq - 1
        self.last_seq = seq
        if isinstance(message, ScanStart):
            self.scan = message.header.scan
            self.latest.clear()
            self.history.clear()
            for client in self.clients:
                client.pending.clear()
            self._post("scan_start", _text("scan_start", message.header))
            self.summary = {"scan_start": message.header.model_dump(mode="json")}
        elif isinstance(message, Counters):
            header = message.header
            self.scan = header.scan
            point = {"t": header.t, "elapsed_s": header.elapsed_s,
                     "received_fps": header.rates.received_fps,
                     "processed_fps": header.rates.processed_fps,
                     "previewed_fps": header.rates.previewed_fps}
            self.history.append(point)
            while len(self.history) > self.settings.history:
                self.history.popleft()
            self._post("counters", _text("counters", header))
            self._post("point", json.dumps({"kind": "point", **point}))
            self.summary["counters"] = header.model_dump(mode="json")
        elif isinstance(message, ScanEnd):
            self._post("scan_end", _text("scan_end", message.header))
            self.summary["scan_end"] = message.header.model_dump(mode="json")
        elif isinstance(message, Preview | Slice | Cuts | CorSweep):
            kind = message.header.type
            if isinstance(message, Cuts) and message.header.scan is not None:
                self.cuts_of.add(message.header.scan)
            self._post(kind, browser_frame(kind, message.header, message.images, {}))
            self.summary[kind] = {k: v for k, v in message.header.model_dump(mode="json").items()
                                  if k != "images"}

    def _post(self, kind: str, payload: str | bytes) -> None:
        self.latest[kind] = payload
        for client in self.clients:
            client.offer(kind, payload)

    def welcome(self, client: _Client) -> None:
        client.offer("history", json.dumps({"kind": "history", "points": list(self.history)}))
        for kind, payload in self.latest.items():
            if kind != "point":
                client.offer(kind, payload)
        client.offer("hello", json.dumps({"kind": "hello",
                                          "control": self.settings.control is not None}))


class ViewerServer:
    """The viewer's HTTP/WebSocket server and its feed subscription, on one event loop."""

    def __init__(self, settings: ViewerSettings, limits: FeedLimits | None = None, *,
                 log: Callable[[str], None] = log_to_stderr) -> None:
        self.settings = settings
        self.limits = limits if limits is not None else FeedLimits()
        self.hub = _Hub(settings)
        self.url: str | None = None
        self.log = log
        #: Requests refused for their Host/Origin, and restarts of the feed task.
        self.refused = 0
        self.restarts = 0
        self._failures_in_row = 0
        self._guard: HostGuard | None = None
        self._context: zmq.asyncio.Context | None = None
        self._control: zmq.asyncio.Socket | None = None
        self._control_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> str:
        """Subscribe to the feed and start serving; returns the page's URL."""
        self._context = zmq.asyncio.Context()
        sub = self._context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 8)
        sub.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.settings.feed)
        if self.settings.control is not None:
            self._control = self._new_control()
        asyncio.get_running_loop().set_exception_handler(loop_exception_line(self.log))
        self._tasks.append(asyncio.create_task(self._follow_supervised(sub)))
        self._tasks.append(asyncio.create_task(self._logged(self._catch_up(), "catching up")))
        app = web.Application(client_max_size=MAX_OP_BYTES, middlewares=[self._check_host])
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/favicon.ico", self._no_icon)
        app.router.add_get("/ws", self._ws)
        # aiohttp's request handler logs through this: one line per bad request.
        self._runner = web.AppRunner(app, access_log=None, logger=OneLineLogger(self.log))
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        server = site._server  # the bound port, also when port 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else self.settings.port
        host = self.settings.host
        self._guard = HostGuard.for_bound(host, port, remote=self.settings.allow_remote,
                                          extra=self.settings.allowed_hosts)
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
        return self.url

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for client in list(self.hub.clients):
            await client.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._context is not None:
            self._context.destroy(linger=0)

    def _new_control(self) -> zmq.asyncio.Socket:
        assert self._context is not None and self.settings.control is not None
        control = self._context.socket(zmq.REQ)
        control.setsockopt(zmq.LINGER, 0)
        control.setsockopt(zmq.REQ_RELAXED, 1)
        control.setsockopt(zmq.REQ_CORRELATE, 1)
        control.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        control.connect(self.settings.control)
        return control

    async def _follow_supervised(self, sub: zmq.asyncio.Socket) -> None:
        """Follow the feed; an unexpected error is logged and the task restarted, and
        after :data:`MAX_FAILURES_IN_ROW` in a row it stops, saying so."""
        self._failures_in_row = 0
        while True:
            try:
                await self._follow(sub)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the log must hear of any failure
                self._failures_in_row += 1
                if self._failures_in_row >= MAX_FAILURES_IN_ROW:
                    self.log(f"view: following the feed stopped after {self._failures_in_row} "
                             f"failures in a row ({describe(error)}); the page is no longer "
                             "updated: restart tomo-streamer view")
                    return
                self.restarts += 1
                self.log(f"view: following the feed failed ({describe(error)}); restarted "
                         f"(restart {self.restarts})")

    async def _follow(self, sub: zmq.asyncio.Socket) -> None:
        while True:
            parts = await sub.recv_multipart(copy=False)
            try:
                message = decode_message(list(parts), self.limits)
            except ProtocolError:
                self.hub.rejected += 1
                continue
            self.hub.take(message)
            self._failures_in_row = 0
            scan = message.header.scan
            if isinstance(message, ScanEnd) and scan and scan not in self.hub.cuts_of:
                self.hub.cuts_of.add(scan)  # asked once
                self._tasks.append(asyncio.create_task(
                    self._logged(self._fetch_cuts(), "fetching the cuts")))

    async def _logged(self, work: Any, what: str) -> None:
        """Await ``work``; an unexpected error is one log line, not a lost task."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the log must hear of any failure
            self.log(f"view: {what} failed ({describe(error)})")

    async def _fetch_cuts(self) -> None:
        """The cuts of a scan whose ``cuts`` message was lost, from the control socket."""
        with contextlib.suppress(StreamerError):
            reply = await self.request(CutsRequest(token=self.settings.token))
            if isinstance(reply, Cuts):
                self.hub.take(reply)

    async def _catch_up(self) -> None:
        """A viewer started mid-scan asks the feed what is going on (no wait if none)."""
        if self._control is None:
            return
        with contextlib.suppress(StreamerError):
            state = await self.request(StateRequest(token=self.settings.token))
            if isinstance(state, dict) and state.get("scan") and self.hub.scan is None:
                self.hub.summary.setdefault("state", state)
                self.hub.latest["state"] = json.dumps({"kind": "state", **state})

    async def request(self, request: Any) -> dict[str, Any] | Slice | Cuts:
        """Send one control request; the reply, or ``FeedRequestError``/``StreamerError``."""
        if self._control is None:
            raise FeedRequestError("no_control", "this viewer has no --control address")
        async with self._control_lock:
            await self._control.send(pack_request(request))
            if not await self._control.poll(int(self.settings.request_timeout_s * 1000)):
                raise StreamerError(f"control {self.settings.control}: no reply within "
                                    f"{self.settings.request_timeout_s:g} s")
            parts = await self._control.recv_multipart(copy=False)
        return parse_reply(list(parts), self.limits)

    # --- HTTP ------------------------------------------------------------------------------

    @web.middleware
    async def _check_host(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Every request and WebSocket upgrade: ``Host`` and ``Origin`` must be this
        viewer's (see :mod:`streamer.live.viewer.guard`); else 403 and one log line."""
        guard = self._guard
        reason = "not serving yet" if guard is None else guard.refusal(
            request.headers.get("Host"), request.headers.get("Origin"))
        if reason is not None:
            self.refused += 1
            self.log(f"view: refused {request.method} {request.path[:80]} from "
                     f"{request.remote}: {reason}")
            raise web.HTTPForbidden(text=f"refused: {reason}\n", headers=SECURITY_HEADERS)
        response: web.StreamResponse = await handler(request)
        return response

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text=_asset("index.html"), content_type="text/html",
                            headers=SECURITY_HEADERS)

    async def _no_icon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(text=_asset(name), content_type=STATIC[name],
                            headers=SECURITY_HEADERS)

    async def _state(self, request: web.Request) -> web.Response:
        hub = self.hub
        body = {"feed": self.settings.feed, "control": self.settings.control,
                "scan": hub.scan, "received": hub.received, "rejected": hub.rejected,
                "missed": hub.missed, "browsers": len(hub.clients),
                "history": list(hub.history), **hub.summary}
        return web.json_response(_finite(body), headers=SECURITY_HEADERS)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_OP_BYTES, heartbeat=30.0)
        await ws.prepare(request)
        client = _Client(ws)
        self.hub.clients.add(client)
        self.hub.welcome(client)
        pump = asyncio.create_task(self._pump(client))
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    try:
                        await self._operate(client, message.data)
                    except Exception as error:  # answered and logged; the page stays on
                        self.log(f"view: a request from the page failed ({describe(error)})")
                        client.offer("reply", json.dumps({
                            "kind": "reply", "op": None, "ok": False, "reason": "internal",
                            "message": f"the viewer failed: {describe(error)}"}))
                elif message.type == WSMsgType.ERROR:
                    break
        finally:
            self.hub.clients.discard(client)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await pump
        return ws

    async def _pump(self, client: _Client) -> None:
        """Send a browser its messages; a browser that went away ends it quietly, any
        other failure is one log line and closes the WebSocket (the page reconnects)."""
        try:
            await client.pump()
        except ConnectionError:
            return
        except Exception as error:  # the log must hear of it; the page reconnects
            self.log(f"view: sending to a browser failed ({describe(error)}); closed")
            with contextlib.suppress(Exception):
                await client.ws.close()

    async def _operate(self, client: _Client, text: str) -> None:
        """One request from a browser: validated, forwarded, answered to that browser."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("op") not in _OPS:
                raise ValueError("expected {\"op\": \"cor_sweep\"|\"set_center\"|\"slice\", …}")
            op: Op = _OPS[data["op"]].model_validate(data)
        except ValidationError as error:
            client.offer("reply", json.dumps({"kind": "reply", "op": data["op"], "ok": False,
                                              "reason": "invalid_field",
                                              "message": _one_line(error)}))
            return
        except ValueError as error:
            client.offer("reply", json.dumps({"kind": "reply", "op": None, "ok": False,
                                              "reason": "invalid_field",
                                              "message": str(error).splitlines()[0][:500]}))
            return
        token = self.settings.token
        try:
            if isinstance(op, SweepOp):
                forward: Any = CorSweepRequest(center=op.center, half_width=op.half_width,
                                               step=op.step, row=op.row, token=token)
            elif isinstance(op, CenterOp):
                forward = SetCenterRequest(value=op.value, scan=op.scan, token=token)
            else:
                forward = SliceRequest(index=op.index, token=token)
        except ValidationError as error:
            message = _one_line(error)
            client.offer("reply", json.dumps({"kind": "reply", "op": op.op, "ok": False,
                                              "reason": "invalid_field", "message": message}))
            return
        try:
            reply = await self.request(forward)
        except FeedRequestError as error:
            client.offer("reply", json.dumps({"kind": "reply", "op": op.op, "ok": False,
                                              "reason": error.reason, "message": str(error)}))
            return
        except StreamerError as error:
            client.offer("reply", json.dumps({"kind": "reply", "op": op.op, "ok": False,
                                              "reason": "control", "message": str(error)}))
            return
        if isinstance(reply, Slice):
            client.offer("slice", browser_frame("slice", reply.header, reply.images,
                                                {"requested": True}))
            client.offer("reply", json.dumps({"kind": "reply", "op": op.op, "ok": True,
                                              "index": reply.header.index}))
        elif isinstance(reply, dict):
            client.offer("reply", json.dumps(_finite({"kind": "reply", "op": op.op, "ok": True,
                                                      **reply})))


def _one_line(error: ValidationError) -> str:
    """A validation error as one line, ``field: problem; …`` (no documentation URLs)."""
    problems = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"])
        problems.append(f"{where}: {item['msg']}" if where else str(item["msg"]))
    return "; ".join(problems)[:500]


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _asset(name: str) -> str:
    return resources.files("streamer.live.viewer").joinpath("static", name).read_text("utf-8")


def serve(settings: ViewerSettings, *, announce: Callable[[str], None],
          log: Callable[[str], None] = log_to_stderr) -> None:
    """Serve until SIGINT/SIGTERM; ``announce`` gets the page's URL once it is up, ``log``
    one line per problem."""

    async def main() -> None:
        server = ViewerServer(settings, log=log)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            announce(await server.start())
            await stop.wait()
        finally:
            await server.stop()

    asyncio.run(main())


class ViewerThread:
    """The viewer on its own event loop in a background thread (tests, notebooks).

    ``url`` is set once it serves; :meth:`close` stops it.
    """

    def __init__(self, settings: ViewerSettings, *, timeout_s: float = 10.0,
                 log: Callable[[str], None] = log_to_stderr) -> None:
        self.settings = settings
        self.server = ViewerServer(settings, log=log)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="viewer", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise StreamerError(f"viewer: not serving within {timeout_s:g} s")
        if self._error is not None:
            raise self._error
        assert self.server.url is not None
        self.url: str = self.server.url

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as error:  # reported to the constructor's caller
            self._error = error
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.server.stop())
        self._loop.close()

    def close(self, timeout_s: float = 10.0) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)

    def __enter__(self) -> ViewerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
