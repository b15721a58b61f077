"""The progress line: shown on a terminal, rate-limited, silent otherwise."""

from __future__ import annotations

import io

from streamer.cli import main
from streamer.run.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_shown_on_a_terminal_and_rate_limited() -> None:
    out, clock = Terminal(), Clock()
    progress = Progress(out, "receiving", clock=clock, interval_s=0.5)
    clock.now = 1.0
    progress.update(100, 400)
    clock.now = 1.2
    progress.update(150, 400)  # too soon: not shown
    clock.now = 2.0
    progress.update(400, 400, "scan s1")
    progress.close()
    lines = out.getvalue().split("\r")[1:]
    assert len(lines) == 2
    assert lines[0].startswith("receiving: 100/400 frames (25 %), 100 frames/s")
    assert lines[1].startswith("receiving: 400/400 frames (100 %), 200 frames/s, scan s1")
    assert out.getvalue().endswith("\n")


def test_progress_is_silent_when_quiet_or_not_a_terminal() -> None:
    for stream, quiet in ((Terminal(), True), (io.StringIO(), False)):
        progress = Progress(stream, "sending", quiet=quiet)
        progress.update(1, 2)
        progress.close()
        assert stream.getvalue() == ""


def test_commands_print_no_progress_when_not_on_a_terminal(tmp_path, capsys) -> None:
    assert main(["simulate", "--rows", "2", "--cols", "16", "--projections", "4",
                 "--save", str(tmp_path / "s.nxs")]) == 0
    assert main(["recon", str(tmp_path / "s.nxs"), "-o", str(tmp_path / "r.h5"),
                 "--center", "7.5"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "reading:" not in captured.err
