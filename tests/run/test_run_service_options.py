"""``run --interrupt-after S|off`` reaches the runner (ADR 0024), and ``--sweep-value``
chooses the variant of a swept pipeline (never the first one silently): the behaviour itself
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


SWEEP = Path(__file__).parents[1] / "pipeline/httomo_full/sweep_center_FBP3d_tomobar.yaml"
STANDARD = Path(__file__).parents[2] / "configs/standard.yaml"


def test_run_refuses_a_sweep_without_a_chosen_value(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The service runs one variant per scan: it never picks the first one silently."""
    assert main(["run", str(SWEEP), "--listen", "tcp://127.0.0.1:0", "--scans", "1",
                 "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert "expected --sweep-value, one of center=1100, center=1125" in err
    assert "8 variants" in err and "Traceback" not in err
    assert not (tmp_path / "v").exists()


def test_run_serves_the_chosen_sweep_value(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``tomo-streamer run sweep.yaml --sweep-value center=1150``: that variant's steps."""
    seen: dict[str, Any] = {}
    real = ranks.RankedReconstruction.__init__

    def spy(self: Any, steps: Any, *args: Any, **kwargs: Any) -> None:
        seen["steps"] = steps
        real(self, steps, *args, **kwargs)
        raise _BuiltError

    monkeypatch.setattr(ranks.RankedReconstruction, "__init__", spy)
    with pytest.raises(_BuiltError):
        main(["run", str(SWEEP), "--sweep-value", "center=1150", "--listen",
              "tcp://127.0.0.1:0", "--scans", "1", "--out", str(tmp_path / "v"), "--quiet"])
    recon = [step for step in seen["steps"] if step.spec.needs_angles][-1]
    assert dict(recon.params)["center"] == 1150


@pytest.mark.parametrize(("pipeline", "given"), [
    (STANDARD, []), (SWEEP, ["--sweep-value", "center=1150"])])
def test_run_parses_its_pipeline_file_once(pipeline: Path, given: list[str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep is checked before anything is written and the steps come from the same
    parse: the file is read and validated once, not twice."""
    from streamer.pipeline import config

    sources: list[str] = []
    real_parse = config.parse_pipeline

    def counting(text: str, *args: Any, source: str, **kwargs: Any) -> Any:
        sources.append(source)
        return real_parse(text, *args, source=source, **kwargs)

    def built(self: Any, *args: Any, **kwargs: Any) -> None:
        raise _BuiltError

    monkeypatch.setattr(config, "parse_pipeline", counting)
    monkeypatch.setattr(ranks.RankedReconstruction, "__init__", built)
    with pytest.raises(_BuiltError):
        main(["run", str(pipeline), *given, "--listen", "tcp://127.0.0.1:0", "--scans", "1",
              "--out", str(tmp_path / "v"), "--quiet"])
    assert sources.count(str(pipeline)) == 1


def test_run_refuses_a_sweep_value_the_pipeline_does_not_have(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(SWEEP), "--sweep-value", "center=1", "--listen",
                 "tcp://127.0.0.1:0", "--scans", "1", "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert f"{SWEEP}: sweep value: expected one of center=1100, center=1125" in err
    assert "got 'center=1'" in err and "Traceback" not in err
