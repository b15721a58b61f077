"""Every rank's host↔device copies reach rank 0's report: the ``device`` entry (per rank
and summed) of the volume's or master's stored report, and one terminal line.

No GPU: the stream device is the fake of ``test_executor_device_queue`` (device-like
arrays, each copy "taking" 1 ms on its own clock), as in ``test_device_queue_on_ranks``;
two ranks run in threads over an in-memory link. The expected figures come from the scan's
shape and the band plan, not from the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import pytest

from streamer.cli import main
from streamer.exchange.links import MemoryLink
from streamer.exchange.reslice import row_bands
from streamer.pipeline import executor
from streamer.pipeline.device_bands import device_document, device_line
from streamer.run.from_file import ReconSettings
from streamer.run.output import ScanOutput
from streamer.run.ranks import recon_on_ranks
from streamer.sources.simulate import SimulatedScan
from tests.pipeline.test_executor_device_queue import DEVICE, HOST, FakeStreams
from tests.run.ranks import run_ranks
from tests.run.test_device_queue_on_ranks import (  # noqa: F401 (a fixture)
    BLOCK,
    COLS,
    CONFIG,
    PROJECTIONS,
    ROWS,
    device_backend,
)


def _recon(tmp_path: Path, text: str, ranks: int, monkeypatch: pytest.MonkeyPatch,
           ) -> tuple[ScanOutput, dict[str, Any]]:
    monkeypatch.setattr(executor, "CupyStreams", FakeStreams)  # one per rank's scan
    pipeline = tmp_path / f"{ranks}-{len(text)}.yaml"
    pipeline.write_text(text)
    output = tmp_path / f"{ranks}-{len(text)}.h5"

    def rank(link: MemoryLink) -> Any:
        settings = ReconSettings(output, pipeline=pipeline, block_frames=8,
                                 block_sinograms=BLOCK)
        return recon_on_ranks(SimulatedScan(CONFIG), settings, link)

    result = run_ranks(ranks, rank)[0]
    assert result is not None and result.complete, result
    with h5py.File(output) as file:
        return result, json.loads(file["/entry/process/report"][()])


@pytest.mark.usefixtures("device_backend")
@pytest.mark.parametrize("ranks", [1, 2])
def test_every_ranks_device_copies_are_summed_into_rank_0s_report(
        tmp_path: Path, ranks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    output, report = _recon(tmp_path, DEVICE, ranks, monkeypatch)
    device = report["device"]
    assert output.figures["device"] == device
    bands = row_bands(ROWS, ranks)
    assert sorted(device["per_rank"]) == [str(rank) for rank in range(ranks)]
    for rank, (first, stop) in enumerate(bands):
        mine = device["per_rank"][str(rank)]
        blocks = -(-(stop - first) // BLOCK)  # each band block up once and down once
        assert (mine["to_device"], mine["to_host"]) == (blocks, blocks)
        # its rows of every projection, float32 (the sinograms of its band)
        assert mine["bytes_to_device"] == (stop - first) * PROJECTIONS * COLS * 4
        assert mine["seconds_to_device"] == pytest.approx(0.001 * blocks)  # the fake's clock
    total = device["total"]
    for name in total:
        assert total[name] == pytest.approx(sum(r[name] for r in device["per_rank"].values()))
    assert total["bytes_to_device"] == ROWS * PROJECTIONS * COLS * 4  # every row, once
    (line,) = [note for note in output.notes if note.startswith("device transfers:")]
    assert line == device_line(device)
    assert f"host->device {total['to_device']} copies" in line
    assert (f"({ranks} ranks)" in line) == (ranks > 1)


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_host_run_has_no_device_entry(tmp_path: Path, ranks: int,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    output, report = _recon(tmp_path, HOST, ranks, monkeypatch)
    assert "device" not in report and "device" not in output.figures
    assert not any(note.startswith("device transfers:") for note in output.notes)


def test_the_document_sums_and_is_none_without_a_copy() -> None:
    assert device_document({0: {}, 1: {"to_device": 0}}) is None
    document = device_document({0: {"to_device": 2, "bytes_to_device": 10,
                                     "seconds_to_device": 0.5},
                                1: {"to_host": 3, "bytes_to_host": 7}})
    assert document is not None
    assert document["total"]["to_device"] == 2 and document["total"]["to_host"] == 3
    assert document["total"]["bytes_to_device"] == 10
    assert document["per_rank"]["1"]["to_device"] == 0


@pytest.mark.usefixtures("device_backend")
def test_recon_prints_the_device_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(executor, "CupyStreams", FakeStreams)
    pipeline = tmp_path / "device.yaml"
    pipeline.write_text(DEVICE)
    assert main(["simulate", "--rows", str(ROWS), "--cols", str(COLS), "--projections",
                 str(PROJECTIONS), "--save", str(tmp_path / "s.nxs")]) == 0
    assert main(["recon", str(tmp_path / "s.nxs"), "-o", str(tmp_path / "r.h5"),
                 "--pipeline", str(pipeline), "--sinogram-block", str(BLOCK),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    blocks = -(-ROWS // BLOCK)
    assert f"  device transfers: host->device {blocks} copies" in out
