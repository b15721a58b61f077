"""The ``view`` server: its page, static files, state endpoint and WebSocket."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest

from streamer.errors import ConfigError
from streamer.live.feed import FeedSettings, LiveFeed
from streamer.live.viewer.server import ViewerSettings, ViewerThread
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.feed.test_feed import finish, process_scan

TIMEOUT_S = 20.0


@pytest.fixture
def served() -> Iterator[tuple[LiveFeed, ViewerThread]]:
    with LiveFeed(FeedSettings(counters_interval_s=0.1)) as feed:
        viewer = ViewerThread(ViewerSettings(feed=feed.address, control=feed.control_address,
                                             port=0))
        try:
            yield feed, viewer
        finally:
            viewer.close()


def parse(message: aiohttp.WSMessage) -> dict[str, Any]:
    """A text message as JSON; a binary one as its JSON header plus the images' bytes."""
    if message.type == aiohttp.WSMsgType.TEXT:
        return dict(json.loads(message.data))
    assert message.type == aiohttp.WSMsgType.BINARY, message
    data: bytes = message.data
    (length,) = struct.unpack_from("<I", data)
    assert (4 + length) % 4 == 0  # so that the browser can view float32 in place
    meta = dict(json.loads(data[4:4 + length]))
    itemsize = 1 if meta["dtype"] == "uint8" else 4
    sizes = [spec["shape"][0] * spec["shape"][1] * itemsize for spec in meta["images"]]
    assert len(data) == 4 + length + sum(sizes)
    first = np.frombuffer(data, dtype="<f4" if itemsize == 4 else "u1", offset=4 + length,
                          count=sizes[0] // itemsize)
    meta["first_image"] = first.reshape(meta["images"][0]["shape"])
    meta["binary"] = True
    return meta


async def until(ws: aiohttp.ClientWebSocketResponse, predicate: Callable[[dict[str, Any]], bool]
                ) -> list[dict[str, Any]]:
    seen = []
    while True:
        message = parse(await ws.receive(timeout=TIMEOUT_S))
        seen.append(message)
        if predicate(message):
            return seen


def test_page_static_files_and_state(served: tuple[LiveFeed, ViewerThread]) -> None:
    feed, viewer = served

    async def check() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.get(viewer.url) as page:
                assert page.status == 200 and page.content_type == "text/html"
                html = await page.text()
                assert page.headers["X-Content-Type-Options"] == "nosniff"
                assert "default-src 'self'" in page.headers["Content-Security-Policy"]
            for element in ('id="preview-panel"', 'id="received-projections"',
                            'id="count-missing"', 'id="count-rejected"', 'id="rate-plot"',
                            'id="slice-index"', 'id="cut-xz"', 'id="sweep-request"',
                            'id="sweep-apply"', 'id="pct-low"', 'id="win-max"'):
                assert element in html, element
            async with session.get(viewer.url + "static/viewer.js") as script:
                assert script.status == 200
                assert script.content_type == "application/javascript"
                assert "new WebSocket" in await script.text()
            async with session.get(viewer.url + "static/viewer.css") as style:
                assert style.status == 200 and style.content_type == "text/css"
            for missing in ("static/server.py", "static/..%2Fserver.py", "nothing"):
                async with session.get(viewer.url + missing) as response:
                    assert response.status == 404, missing
            async with session.get(viewer.url + "api/state") as state:
                body = await state.json()
                assert body["feed"] == feed.address and body["scan"] is None

    asyncio.run(check())


def test_websocket_forwards_the_feed_and_the_controls(
        served: tuple[LiveFeed, ViewerThread]) -> None:
    feed, viewer = served
    scan = SimulatedScan(SimulationConfig(rows=6, cols=64, projections=96, cor_px=32.0))

    async def check() -> None:
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(viewer.url + "ws") as ws:
            hello = await until(ws, lambda m: m.get("kind") == "hello")
            assert hello[-1]["control"] is True
            processor, start = await loop.run_in_executor(
                None, lambda: process_scan(feed, scan, "viewed", close=False))
            seen = await until(ws, lambda m: m.get("kind") == "preview"
                               and m["projections"] == 96)
            preview = seen[-1]
            assert preview["binary"] and preview["rows"] == [1, 3, 4]
            assert preview["first_image"].shape == (64, 64)
            assert np.isfinite(preview["first_image"]).all()
            counters = (await until(ws, lambda m: m.get("kind") == "counters"))[-1]
            assert counters["scan"] == "viewed" and counters["received"]["projections"] == 0
            assert counters["processed"] == 96  # (no ingest here: received is not counted)

            await ws.send_json({"op": "cor_sweep", "half_width": 1.0, "step": 0.5})
            reply = (await until(ws, lambda m: m.get("kind") == "reply"))[-1]
            assert reply["ok"] and reply["centers"] == [31.0, 31.5, 32.0, 32.5, 33.0]
            sweep = (await until(ws, lambda m: m.get("kind") == "cor_sweep"))[-1]
            assert sweep["centers"] == reply["centers"] and len(sweep["images"]) == 5

            await ws.send_json({"op": "set_center", "value": 31.5})
            reply = (await until(ws, lambda m: m.get("kind") == "reply"))[-1]
            assert reply["ok"] and reply["center"] == 31.5 and reply["scan"] == "viewed"
            assert processor.center_override == 31.5
            for bad in ({"op": "set_center", "value": "31"},  # strict: a number
                        {"op": "set_center", "value": 31.5, "extra": 1},
                        {"op": "reboot"}, [1, 2], {"op": "slice", "index": -1}):
                await ws.send_json(bad)
                reply = (await until(ws, lambda m: m.get("kind") == "reply"))[-1]
                assert not reply["ok"] and reply["reason"] == "invalid_field", bad
            await ws.send_str("not json")
            reply = (await until(ws, lambda m: m.get("kind") == "reply"))[-1]
            assert not reply["ok"]
            await ws.send_json({"op": "set_center", "value": 500.0})  # off the detector
            reply = (await until(ws, lambda m: m.get("kind") == "reply"))[-1]
            assert not reply["ok"] and "0..63" in reply["message"]

            await loop.run_in_executor(None, lambda: finish(feed, processor, start))
            end = (await until(ws, lambda m: m.get("kind") == "scan_end"))[-1]
            assert end["center"] == 31.5 and end["center_method"] == "user (viewer)"
            await ws.send_json({"op": "slice", "index": 4})
            got = await until(ws, lambda m: m.get("kind") == "slice" and m.get("requested"))
            assert got[-1]["index"] == 4 and got[-1]["first_image"].shape == (64, 64)
            await ws.send_json({"op": "set_center", "value": 31.0})
            reply = (await until(ws, lambda m: m.get("kind") == "reply"
                                 and m["op"] == "set_center"))[-1]
            assert not reply["ok"] and reply["reason"] == "too_late"
            async with session.get(viewer.url + "api/state") as state:
                body = await state.json()
            assert body["scan"] == "viewed" and body["scan_end"]["status"] == "complete"
            assert body["counters"]["state"] == "closed" and body["history"]

    asyncio.run(check())


def test_websocket_refuses_other_origins(served: tuple[LiveFeed, ViewerThread]) -> None:
    _, viewer = served

    async def check() -> None:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(viewer.url + "ws",
                                         headers={"Origin": "http://evil.example"})
            assert refused.value.status == 403
            own = viewer.url.rstrip("/")
            async with session.ws_connect(viewer.url + "ws", headers={"Origin": own}) as ws:
                assert parse(await ws.receive(timeout=TIMEOUT_S))["kind"] in ("history",
                                                                              "hello")

    asyncio.run(check())


def test_viewer_binds_loopback_unless_told() -> None:
    with pytest.raises(ConfigError, match="non-loopback"):
        ViewerSettings(feed="tcp://127.0.0.1:5600", host="0.0.0.0")
    with pytest.raises(ConfigError, match="port"):
        ViewerSettings(feed="tcp://127.0.0.1:5600", port=70000)
