"""``run --interrupt-after S|off`` reaches the runner (ADR 0024): the behaviour itself
(a new scan's start cuts the previous reconstruction, the volume marked interrupted) is
tested in-process in ``tests/faults/test_new_scan_interrupts.py`` and on 2 ranks in
``tests/run/test_new_scan_interrupts_on_ranks.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamer.cli import main
from streamer.run import ranks


class _BuiltError(Exception):
    """Raised by the stand-in runner once ``run`` has built it (nothing is served)."""


@pytest.mark.parametrize(("given", "expected"), [([], None), (["--interrupt-after", "off"], None),
                                                 (["--interrupt-after", "2.5"], 2.5),
                                                 (["--interrupt-after", "0"], 0.0)])
def test_interrupt_after_reaches_the_runner(given: list[str], expected: float | None,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    real = ranks.RankedReconstruction.__init__

    def spy(self: Any, *args: Any, **kwargs: Any) -> None:
        seen.update(kwargs)
        real(self, *args, **kwargs)
        raise _BuiltError

    monkeypatch.setattr(ranks.RankedReconstruction, "__init__", spy)
    with pytest.raises(_BuiltError):
        main(["run", "standard", "--listen", "tcp://127.0.0.1:0", "--scans", "1",
              "--out", str(tmp_path / "v"), "--quiet", *given])
    assert seen["interrupt_after_s"] == expected
