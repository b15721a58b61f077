"""The viewer in a real browser (headless Chromium) during a simulated scan.

A scan streams into the ``run`` service's components with a feed; ``view`` serves the
page; Chromium, driven by Playwright with the system's ``/usr/bin/chromium`` (never a
downloaded build), watches the preview change, runs the CoR check half way through the
scan and picks a value, and at the end the counters on the page are compared with the
run report; when a second scan starts, nothing of the first (final slice, cuts, volume
path) stays on the page. The screenshot is kept as a test artefact
(``test-artifacts/viewer.png``).

The sender is held at fixed points by handshakes (half way until the CoR is picked; the
second scan after its first block until the page is checked), never by timing.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import h5py
import pytest

from streamer.live.viewer.server import ViewerSettings, ViewerThread
from streamer.sources.sender import SendOptions
from streamer.sources.simulate import SimulatedScan, SimulationConfig

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
ARTEFACT = REPO / "test-artifacts" / "viewer.png"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 30_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=(
        "no headless Chromium at /usr/bin/chromium: install Debian's chromium and "
        "chromium-driver (apt-get install -y chromium chromium-driver; .ci/run does)")),
]
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="Playwright for Python is not installed (dev extra)")


def test_viewer_in_chromium_during_a_scan(live_run: Any, tmp_path: Path) -> None:
    run = live_run(scans=2, counters_interval_s=0.2)
    viewer = ViewerThread(ViewerSettings(feed=run.feed.address,
                                         control=run.feed.control_address, port=0))
    scan = SimulatedScan(SimulationConfig(rows=8, cols=96, projections=240, cor_px=49.0))
    paused, picked = threading.Event(), threading.Event()

    def halfway(sent: int, frames: int) -> None:
        # The sender (a detector) pauses half way until the CoR has been picked in the
        # page; the test's own deadline bounds the wait.
        if sent >= frames // 2 and not paused.is_set():
            paused.set()
            picked.wait(60)

    first_checked = threading.Event()
    second_started, second_checked = threading.Event(), threading.Event()

    def first_block(sent: int, frames: int) -> None:
        if not second_started.is_set():
            second_started.set()
            second_checked.wait(60)

    def send_both() -> None:
        run.send(scan, SendOptions(block=4, rate_fps=150, scan_id="browser-scan"), halfway)
        first_checked.wait(60)  # the page is checked at the end of the first scan
        run.send(SimulatedScan(SimulationConfig(rows=8, cols=96, projections=40)),
                 SendOptions(block=4, scan_id="second-scan"), first_block)

    sender = threading.Thread(target=send_both, name="sender")
    errors: list[str] = []
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                # The page's own Content-Security-Policy (no eval, no inline script) holds:
                # its script runs and connects.
                strict = browser.new_page()
                strict.on("console", lambda message: errors.append(message.text)
                          if message.type == "error" else None)
                strict.goto(viewer.url)
                sync_api.expect(strict.locator("#connection")).to_have_text(
                    "live", timeout=WAIT_MS)
                strict.close()
                # The checks below evaluate JavaScript in the page, which that policy
                # forbids: this page lets the test (only the test) do so.
                page = browser.new_page(viewport={"width": 1400, "height": 1200},
                                        bypass_csp=True)
                page.set_default_timeout(WAIT_MS)
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.on("console", lambda message: errors.append(message.text)
                        if message.type == "error" else None)
                page.goto(viewer.url)
                page.wait_for_function("document.getElementById('connection')"
                                       ".textContent === 'live'")
                sender.start()

                # The preview appears (and changes once the sender goes on, below).
                page.wait_for_function("Number(document.getElementById('preview-0')"
                                       "?.dataset.projections) > 0")
                first = page.evaluate("document.getElementById('preview-0').toDataURL()")
                shown = int(page.get_attribute("#preview-0", "data-projections") or 0)
                assert page.locator("#previews canvas").count() == 3

                # CoR check half way: sweep around the preview's CoR, pick 48.5, use it.
                assert paused.wait(WAIT_MS / 1000)
                page.click("#sweep-request")
                page.wait_for_function("document.querySelectorAll('.sweep-item').length === 21")
                centers = page.eval_on_selector_all(
                    ".sweep-item", "items => items.map(i => Number(i.dataset.center))")
                assert centers[0] == 44.0 and centers[-1] == 54.0  # 49 ± 5 in 0.5 px steps
                page.click(".sweep-item[data-center='48.5'] canvas")
                assert page.text_content("#sweep-chosen") == "48.50"
                page.click("#sweep-apply")
                page.wait_for_function("document.getElementById('sweep-status').textContent"
                                       ".includes('is used for the rest of scan')")
                picked.set()
                # The rest of the scan comes: the preview changes.
                page.wait_for_function(
                    f"Number(document.getElementById('preview-0').dataset.projections) > {shown}")
                assert page.evaluate("document.getElementById('preview-0').toDataURL()") != first

                # The end: status, final slice, cuts, counters.
                page.wait_for_function("document.getElementById('scan-state').textContent"
                                       " === 'complete'")
                page.wait_for_function("Number(document.getElementById('cut-xz')"
                                       ".dataset.version) > 0")
                page.fill("#slice-number", "2")
                page.click("#slice-get")
                page.wait_for_function("document.getElementById('slice-canvas')"
                                       ".dataset.index === '2'")
                shown_counts = {
                    key: page.text_content(f"#{key}") for key in (
                        "expected-projections", "received-projections", "received-flats",
                        "received-darks", "missing-projections", "count-missing",
                        "count-rejected", "count-duplicate", "center-value", "center-method")
                }
                page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
                assert page.get_attribute("#slice-canvas", "data-scan") == "browser-scan"
                assert page.get_attribute("#cut-xz", "data-scan") == "browser-scan"
                assert "volume: " in (page.text_content("#scan-result") or "")
                first_checked.set()

                # The next scan starts (held after its first block): the page keeps
                # nothing of the previous one.
                assert second_started.wait(WAIT_MS / 1000)
                page.wait_for_function("document.getElementById('scan-id').textContent"
                                       " === 'second-scan'")
                cleared = page.evaluate("""() => {
                    const ids = ["slice-canvas", "cut-xy", "cut-xz", "cut-yz"];
                    return {
                      versions: ids.map((id) => document.getElementById(id).dataset.version),
                      scans: ids.map((id) => document.getElementById(id).dataset.scan ?? null),
                      result: document.getElementById("scan-result").textContent,
                      cuts: document.getElementById("cuts-info").textContent,
                      slice: document.getElementById("slice-info").textContent,
                      chosen: document.getElementById("sweep-chosen").textContent,
                    };
                }""")
                second_checked.set()
            finally:
                browser.close()
        sender.join(WAIT_MS / 1000)
        run.join()
    finally:
        picked.set()
        first_checked.set()
        second_checked.set()
        viewer.close()
    ARTEFACT.parent.mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "viewer.png", ARTEFACT)

    assert cleared == {"versions": ["0"] * 4, "scans": [None] * 4, "result": "", "cuts": "",
                       "slice": "after the scan", "chosen": "–"}, cleared
    report = run.service.reports[0]
    assert report.complete and run.service.reports[1].complete
    assert shown_counts["expected-projections"] == "240"
    assert shown_counts["received-projections"] == str(report.received["projections"])
    assert shown_counts["received-flats"] == str(report.received["flats"])
    assert shown_counts["received-darks"] == str(report.received["darks"])
    assert shown_counts["missing-projections"] == str(report.missing["projections"])
    assert shown_counts["count-missing"] == str(report.total_missing)
    assert shown_counts["count-rejected"] == str(report.total_rejected_frames)
    assert shown_counts["count-duplicate"] == str(report.duplicate)
    assert (shown_counts["center-value"], shown_counts["center-method"]) == (
        "48.50", "(user (viewer))")
    output = run.live.outputs[0]
    assert output.center == 48.5
    with h5py.File(output.path) as file:
        assert file["/entry/process/center_of_rotation"].attrs["method"] == "user (viewer)"
    assert not errors, errors
    assert ARTEFACT.stat().st_size > 10_000
