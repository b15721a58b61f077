"""docs/how-to/write-ome-zarr.md works as written: its first command (``recon`` into
``volume.ome.zarr``) and its Python block, run in a folder holding a simulated
``scan.nxs``. (The napari block needs napari and a display: not run.)"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from streamer.cli import main
from streamer.sources.formats import write_nxtomo
from streamer.sources.simulate import SimulatedScan, SimulationConfig

HOWTO = Path(__file__).resolve().parents[2] / "docs" / "how-to" / "write-ome-zarr.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", HOWTO.read_text(), flags=re.S)


def test_the_howto_command_and_python_block_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    write_nxtomo(tmp_path / "scan.nxs", SimulatedScan(
        SimulationConfig.from_kwargs(rows=4, cols=64, projections=90)))
    command = shlex.split(blocks("bash")[0].strip())
    assert command[:2] == ["tomo-streamer", "recon"]
    assert main([*command[1:], "--quiet"]) == 0
    assert main([*command[1:], "--quiet"]) == 2  # the store exists: refused, as documented
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert " ".join(error.split()) in " ".join(HOWTO.read_text().split())
    (python,) = blocks("python")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(python, str(HOWTO), "exec"), {})  # our own doc
    lines = printed.getvalue().splitlines()
    assert re.fullmatch(r"scan-\w+ complete: True CoR: [\d.]+ vo", lines[0]), lines[0]
    assert lines[1] == "(64, 64) (1, 16, 16) False"
