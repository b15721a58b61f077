"""``tools/rank_timeline.py``'s report: the adds before the last frame are summed, and
only the steps that ended after it are listed, timed from it (no timers installed here:
they would wrap the classes for every later test)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "rank_timeline.py"


def test_the_report_lists_what_ended_after_the_last_frame(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("rank_timeline", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "rank_timeline", module)
    spec.loader.exec_module(module)
    monkeypatch.setenv("PMI_RANK", "1")
    events = [("add", 1.0, 1.5, "16 frames"), ("add", 2.0, 2.25, "8 frames"),
              ("correct", 9.0, 10.5, "up to 50 frames"), ("add", 10.6, 10.8, "4 frames"),
              ("close", 11.0, 11.1, "")]
    module._report(events, [10.0])
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "rank 1: 2 adds before the last frame (0.75 s)"
    assert lines[1:] == ["rank 1: correct (up to 50 frames) from -1.000 s for 1.500 s",
                         "rank 1: add (4 frames) from +0.600 s for 0.200 s",
                         "rank 1: close () from +1.000 s for 0.100 s",
                         "rank 1: its last frame at 10.000 s (wall clock mod 1000)"]
    module._report(events, [])  # no projection frame: nothing to say
    assert capsys.readouterr().err == ""
