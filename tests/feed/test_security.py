"""The feed and the viewer under attack or failure: tokens compared as bytes, a viewer
that only answers its own Host and Origin (DNS rebinding), threads and tasks that never
die silently, and a log with one line per problem."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgpack
import pytest

from streamer.errors import ConfigError
from streamer.live.client import Control, FeedRequestError, ScanStart, Subscription
from streamer.live.feed import MAX_FAILURES_IN_ROW, FeedSettings, LiveFeed
from streamer.live.viewer.guard import HostGuard
from streamer.live.viewer.server import ViewerSettings, ViewerThread
from streamer.sources.sender import start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.feed.test_control import TOKEN, Target, open_scan, raw_request

TIMEOUT_S = 20.0


class Lines:
    """A thread-safe log that tests read (the feed's and viewer's ``log``)."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, line: str) -> None:
        with self._changed:
            self._lines.append(line)
            self._changed.notify_all()

    def wait_for(self, text: str, timeout_s: float = TIMEOUT_S) -> str:
        """The first line containing ``text`` (waits for it, up to ``timeout_s``)."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: any(text in line for line in self._lines), timeout_s)
            assert found, f"no log line with {text!r}; got {self._lines}"
            return next(line for line in self._lines if text in line)

    @property
    def lines(self) -> list[str]:
        with self._changed:
            return list(self._lines)


# --- the feed ------------------------------------------------------------------------------


def test_a_non_ascii_token_is_refused_and_counted_and_the_feed_serves_on() -> None:
    log = Lines()
    with LiveFeed(FeedSettings(token=TOKEN), log=log) as feed:
        address = str(feed.control_address)
        for token in ("pässwörd-ünicode", "🔑" * 8, TOKEN + "é"):
            reply = raw_request(address, [msgpack.packb({"v": 1, "type": "state",
                                                         "token": token})])
            assert reply["reason"] == "unauthorised", reply
        assert feed.stats["refused_requests"] == 3
        assert log.wait_for("control request refused").count("\n") == 0
        with Control(address, token=TOKEN) as control:
            assert control.state()["type"] == "ok"  # the thread lives
        assert feed.alive


def test_a_non_ascii_feed_token_works_both_ways() -> None:
    token = "jeton-sécurité-✓"
    with LiveFeed(FeedSettings(token=token)) as feed, \
            Control(str(feed.control_address), token=token) as control:
        assert control.state()["type"] == "ok"


def test_a_failing_control_request_is_answered_logged_and_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    log = Lines()
    with LiveFeed(FeedSettings(), log=log) as feed:
        calls = {"n": 0}
        original = feed._state_reply

        def fails_once() -> bytes:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("injected failure")
            return original()

        monkeypatch.setattr(feed, "_state_reply", fails_once)
        with Control(str(feed.control_address)) as control:
            with pytest.raises(FeedRequestError) as failed:
                control.state()
            assert failed.value.reason == "internal" and "injected failure" in str(failed.value)
            assert control.state()["type"] == "ok"  # REP state intact: the next one works
        assert feed.stats["failed_requests"] == 1
        assert "RuntimeError: injected failure" in log.wait_for("control request failed")


def test_the_feed_thread_is_restarted_after_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    log = Lines()
    with LiveFeed(FeedSettings(counters_interval_s=0.05), log=log) as feed:
        original = feed._maybe_publish_counters
        failed = threading.Event()

        def fails_once() -> None:
            if not failed.is_set():
                failed.set()
                raise RuntimeError("injected failure")
            original()

        monkeypatch.setattr(feed, "_maybe_publish_counters", fails_once)
        line = log.wait_for("feed: thread failed")
        assert "RuntimeError: injected failure" in line and "restarted" in line
        assert feed.stats["restarts"] == 1 and feed.alive
        # Still serving: the control socket answers and a new scan is published.
        with Subscription(feed.address, timeout_s=TIMEOUT_S) as sub, \
                Control(str(feed.control_address)) as control:
            sub.wait_connected()
            open_scan(feed, Target())
            assert isinstance(sub.receive(), ScanStart)
            assert control.state()["scan"] == "control-scan"


def test_the_feed_stops_cleanly_after_failures_in_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    log = Lines()
    feed = LiveFeed(FeedSettings(counters_interval_s=0.05), log=log)
    try:
        def always_fails() -> None:
            raise RuntimeError("broken for good")

        monkeypatch.setattr(feed, "_maybe_publish_counters", always_fails)
        line = log.wait_for("feed: stopped after")
        assert f"{MAX_FAILURES_IN_ROW} failures in a row" in line
        assert "the scans go on without a live feed" in line
        assert len([x for x in log.lines if "thread failed" in x]) == MAX_FAILURES_IN_ROW - 1
        feed._thread.join(TIMEOUT_S)
        assert not feed.alive
        # The pipeline's side keeps working: nothing blocks, nothing raises.
        scan = SimulatedScan(SimulationConfig(rows=4, cols=32, projections=8))
        feed.scan_opened(start_header(scan.layout, "after-stop"), target=Target())
        feed.scan_closing()
    finally:
        feed.close()


# --- the viewer: Host and Origin -----------------------------------------------------------


@pytest.mark.parametrize(("host", "origin", "refused"), [
    ("127.0.0.1:8765", None, False),
    ("localhost:8765", "http://localhost:8765", False),
    ("LOCALHOST:8765", "http://127.0.0.1:8765", False),
    ("[::1]:8765", "http://[::1]:8765", False),
    (None, None, True),
    ("127.0.0.1", None, True),  # port 80 is not the viewer's
    ("127.0.0.1:8766", None, True),
    ("evil.example:8765", None, True),  # DNS rebinding: the attacker's name
    ("evil.example:8765", "http://evil.example:8765", True),
    ("127.0.0.1:8765", "http://evil.example:8765", True),
    ("127.0.0.1:8765", "http://127.0.0.1:9999", True),
    ("127.0.0.1:8765", "null", True),
    ("127.0.0.1:8765", "file://", True),
    ("127.0.0.1:8765", "http://127.0.0.1:8765.evil.example", True),
    ("127.0.0.1:port", None, True),
    ("user@127.0.0.1:8765", None, True),
    ("127.0.0.1:8765/path", None, True),
])
def test_host_guard(host: str | None, origin: str | None, refused: bool) -> None:
    guard = HostGuard.for_bound("127.0.0.1", 8765, remote=False)
    reason = guard.refusal(host, origin)
    assert (reason is not None) == refused, reason
    if reason is not None:
        assert "\n" not in reason


@pytest.mark.parametrize("name", ["", "evil.example/x", "a b", "user@host"])
def test_allowed_hosts_are_checked(name: str) -> None:
    with pytest.raises(ConfigError, match="--allowed-host"):
        ViewerSettings(feed="tcp://127.0.0.1:5600", allowed_hosts=(name,))


def test_host_guard_of_a_remote_viewer_takes_the_names_given() -> None:
    guard = HostGuard.for_bound("0.0.0.0", 8080, remote=True, extra=("beamline-ws",))
    assert guard.refusal("beamline-ws:8080", "http://beamline-ws:8080") is None
    assert guard.refusal("evil.example:8080", None) is not None
    assert "0.0.0.0" not in guard.names


async def next_reply(ws: aiohttp.ClientWebSocketResponse) -> str:
    """The next ``reply`` the viewer sends (other messages skipped); fails at once if the
    WebSocket closes, and after ``TIMEOUT_S`` without a reply."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        message = await ws.receive(timeout=TIMEOUT_S)
        assert message.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                    aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR), (
            f"the viewer closed the WebSocket: {message}")
        if message.type == aiohttp.WSMsgType.TEXT and '"kind": "reply"' in message.data:
            return str(message.data)
    raise AssertionError(f"no reply within {TIMEOUT_S} s")


@dataclass
class Served:
    feed: LiveFeed
    viewer: ViewerThread
    log: Lines
    target: Target
    port: int


@pytest.fixture(params=[None, TOKEN], ids=["no-token", "token"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    token = request.param
    log = Lines()
    with LiveFeed(FeedSettings(counters_interval_s=0.1, token=token), log=log) as feed:
        viewer = ViewerThread(ViewerSettings(feed=feed.address, control=feed.control_address,
                                             port=0, token=token), log=log)
        target = Target()
        open_scan(feed, target)
        port = int(viewer.url.rstrip("/").rsplit(":", 1)[1])
        try:
            yield Served(feed, viewer, log, target, port)
        finally:
            viewer.close()


def test_a_rebinding_page_cannot_set_the_center(served: Served) -> None:
    url, port = served.viewer.url, served.port

    async def check() -> None:
        async with aiohttp.ClientSession() as session:
            for headers in ({"Host": f"evil.example:{port}",
                             "Origin": f"http://evil.example:{port}"},
                            {"Host": f"evil.example:{port}"},
                            {"Origin": f"http://evil.example:{port}"}):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(url + "ws", headers=headers)
                assert refused.value.status == 403, headers
                for path in ("", "api/state", "static/viewer.js"):
                    async with session.get(url + path, headers=headers) as response:
                        assert response.status == 403, (path, headers)
                        assert "not this viewer" in await response.text()
            # The viewer's own page (as a browser sends it) still drives it.
            own = {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"}
            async with session.ws_connect(url + "ws", headers=own) as ws:
                await ws.send_json({"op": "set_center", "value": 30.5})
                reply = await next_reply(ws)
                assert '"ok": true' in reply, reply

    asyncio.run(check())
    assert served.target.center_override == 30.5  # only the viewer's own page set it
    refusals = [line for line in served.log.lines if line.startswith("view: refused")]
    assert len(refusals) == 3 * 4 and served.viewer.server.refused == 12
    assert all("\n" not in line for line in refusals)


# --- the viewer: one line per problem ------------------------------------------------------


def raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as conn:
        conn.sendall(request)
        return conn.recv(200)


def test_bad_requests_and_lost_clients_log_one_line_each(
        served: Served, capfd: pytest.CaptureFixture[str]) -> None:
    port = served.port
    host = f"Host: 127.0.0.1:{port}\r\n".encode()
    assert raw_http(port, b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n" + host + b"\r\n"
                    ).startswith(b"HTTP/1.0 400")
    assert raw_http(port, b"GET / HTTP/1.1\r\n" + host + b"X-Long: " + b"b" * 20_000
                    + b"\r\n\r\n").startswith(b"HTTP/1.0 400")
    # Clients that vanish: mid-request, and a WebSocket reset while messages flow.
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /static/viewer.js HTTP/1.1\r\n" + host)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /ws HTTP/1.1\r\n" + host + b"Upgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        assert conn.recv(12) == b"HTTP/1.1 101"
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")  # RST
    open_scan(served.feed, Target())  # messages for the lost client's pump
    # The viewer still serves (its own requests are answered after the lost clients).
    assert raw_http(port, b"GET /api/state HTTP/1.1\r\n" + host + b"\r\n").startswith(
        b"HTTP/1.1 200")
    too_long = [line for line in served.log.lines if "LineTooLong" in line]
    assert len(too_long) == 2, served.log.lines
    assert all(line.startswith("view: ") and "\n" not in line for line in served.log.lines)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


def test_validation_errors_reach_the_page_as_one_clean_line(served: Served) -> None:
    url, port = served.viewer.url, served.port

    async def check() -> list[str]:
        replies = []
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(url + "ws", headers={"Origin": f"http://127.0.0.1:{port}"}
                                   ) as ws:
            for bad in ({"op": "set_center", "value": "31"}, {"op": "slice", "index": -1},
                        {"op": "cor_sweep", "step": 0.01}, {"op": "set_center", "value": 31,
                                                             "extra": 1}):
                await ws.send_json(bad)
                replies.append(await next_reply(ws))
        return replies

    replies = asyncio.run(check())
    assert len(replies) == 4
    for reply in replies:
        assert "pydantic" not in reply and "http" not in reply and "\\n" not in reply, reply
        assert '"ok": false' in reply and '"invalid_field"' in reply
    assert "value: Input should be a valid number" in replies[0]


def test_the_viewer_restarts_its_feed_task_after_a_failure(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = served.viewer.server.hub
    original = hub.take
    failed = threading.Event()

    def fails_once(message: Any) -> None:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("injected failure")
        original(message)

    monkeypatch.setattr(hub, "take", fails_once)
    line = served.log.wait_for("view: following the feed failed")
    assert "RuntimeError: injected failure" in line and "restarted" in line
    assert served.viewer.server.restarts == 1
    received = hub.received
    deadline = time.monotonic() + TIMEOUT_S
    while hub.received <= received and time.monotonic() < deadline:
        time.sleep(0.05)  # polling a counter the viewer's thread raises, with a deadline
    assert hub.received > received  # the feed's counters keep coming in


def test_a_failing_page_request_is_answered_and_the_page_stays_connected(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    url, port = served.viewer.url, served.port

    async def broken(request: Any) -> Any:
        raise RuntimeError("injected failure")

    monkeypatch.setattr(served.viewer.server, "request", broken)

    async def check() -> tuple[str, str]:
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(url + "ws", headers={"Origin": f"http://127.0.0.1:{port}"}
                                   ) as ws:
            await ws.send_json({"op": "set_center", "value": 30.0})
            failed = await next_reply(ws)
            await ws.send_json({"op": "slice", "index": -1})  # still served
            return failed, await next_reply(ws)

    failed, after = asyncio.run(check())
    assert '"reason": "internal"' in failed and "RuntimeError: injected failure" in failed
    assert '"reason": "invalid_field"' in after
    assert "RuntimeError: injected failure" in served.log.wait_for(
        "view: a request from the page failed")
