"""``run --feed``, ``demo --feed`` and ``view`` on the command line."""

from __future__ import annotations

import re
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from streamer.cli import main
from streamer.live.client import ScanEnd, ScanStart, Subscription
from tests.conftest import start_consumer_cli
from tests.feed.conftest import PIPELINE

TIMEOUT_S = 60


def test_run_publishes_a_feed(tmp_path: Path, python: str, cli_env: dict[str, str]) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    process, address = start_consumer_cli(
        python, cli_env, "run", str(pipeline), "--scans", "1", "--out", str(tmp_path / "v"),
        "--quiet", "--feed", "tcp://127.0.0.1:*", "--preview-rows", "1,2")
    try:
        assert process.stderr is not None
        line = process.stderr.readline()  # printed once the feed is bound
        match = re.search(r"feed: publishing on (tcp://\S+), control on (tcp://\S+);", line)
        assert match is not None, line
        with Subscription(match.group(1), timeout_s=TIMEOUT_S) as feed:
            feed.wait_connected()
            assert main(["simulate", "--connect", address, "--rows", "4", "--cols", "48",
                         "--projections", "60", "--scan-id", "cli-feed", "--quiet"]) == 0
            seen = []
            for message in feed:
                seen.append(message)
                if isinstance(message, ScanEnd):
                    break
        out, err = process.communicate(timeout=TIMEOUT_S)
    finally:
        process.kill()
    assert process.returncode == 0, err
    start = next(m for m in seen if isinstance(m, ScanStart)).header
    assert start.scan == "cli-feed" and start.preview_rows == [1, 2]
    end = seen[-1].header
    assert end.complete and end.output == str(tmp_path / "v" / "cli-feed.h5")
    assert "COMPLETE" in out


def test_demo_with_a_feed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--rows", "4", "--cols", "32", "--projections", "40",
                 "--out", str(tmp_path), "--feed", "tcp://127.0.0.1:*"]) == 0
    captured = capsys.readouterr()
    assert re.search(r"feed: publishing on tcp://127\.0\.0\.1:\d+, control on "
                     r"tcp://127\.0\.0\.1:\d+", captured.err)
    assert "reconstructed 4 slices" in captured.out


@pytest.mark.parametrize(("argv", "message"), [
    (["demo", "--control", "tcp://127.0.0.1:*"], "give --feed too"),
    (["demo", "--feed", "tcp://0.0.0.0:*"], "non-loopback"),
    (["demo", "--feed", "tcp://127.0.0.1:*", "--control", "tcp://0.0.0.0:*"], "need a token"),
    (["demo", "--feed", "tcp://127.0.0.1:*", "--feed-token", "short"], "8 to 256"),
    (["demo", "--feed", "udp://127.0.0.1:5"], "address"),
    (["view", "--feed", "tcp://127.0.0.1:5600", "--host", "0.0.0.0"], "non-loopback"),
])
def test_feed_option_errors_print_one_line_and_exit_2(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_preview_rows_are_checked_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--feed", "tcp://127.0.0.1:*", "--preview-rows", "1,x"])
    assert exit_info.value.code == 2
    assert "expected R,R,..." in capsys.readouterr().err


def test_view_serves_until_terminated(python: str, cli_env: dict[str, str]) -> None:
    process = subprocess.Popen(
        [python, "-m", "streamer.cli", "view", "--feed", "tcp://127.0.0.1:5999", "--port", "0",
         "--allowed-host", "viewer.example"],
        env=cli_env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = re.search(r"view: serving (http://127\.0\.0\.1:(\d+)/);", line)
        assert match is not None, line
        url, port = match.group(1), match.group(2)
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as page:
            assert page.status == 200 and b"tomo-streamer" in page.read()
        named = urllib.request.Request(url, headers={"Host": f"viewer.example:{port}"})
        with urllib.request.urlopen(named, timeout=TIMEOUT_S) as page:
            assert page.status == 200  # --allowed-host
        foreign = urllib.request.Request(url, headers={"Host": f"evil.example:{port}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(foreign, timeout=TIMEOUT_S)
        refused.value.close()
        assert refused.value.code == 403
        refusal = process.stderr.readline()
        assert refusal.startswith("view: refused GET / from 127.0.0.1: Host 'evil.example:"), \
            refusal
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=TIMEOUT_S)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "Traceback" not in err
