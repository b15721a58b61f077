"""The CoR of a streamed scan on 1..R ranks (in-memory link, ranks in threads): a pipeline
that leaves the CoR to be found streams with the opposite pair's estimate, the early
estimate of a 180° scan (or the CoR carried from the sample's previous scan), the final
estimate at close checks it, and the volume is redone when they differ by more than the
tolerance. Every volume is compared
with the batch reconstruction of the same scan at the CoR the report says was used."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from stages.registry import REGISTRY
from streamer.cli import main
from streamer.exchange.links import MemoryLink
from streamer.ingest.store import HeldFrame
from streamer.live.relay import FeedRelay
from streamer.pipeline.config import parse_pipeline
from streamer.run.from_file import ReconSettings
from streamer.run.output import ScanOutput
from streamer.run.ranks import RankedReconstruction, recon_on_ranks
from streamer.sources.scan import FrameReader
from streamer.sources.sender import start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.protocol import IMAGE_KEY_PROJECTION, Geometry
from tests.conftest import start_consumer_cli
from tests.run.ranks import run_ranks

TRUE_COR = 33.5
CONFIG = SimulationConfig.from_kwargs(rows=6, cols=64, projections=120, cor_px=TRUE_COR)
HALF_WAY = SimulationConfig.from_kwargs(rows=6, cols=64, projections=240, cor_px=TRUE_COR,
                                        scan_range_deg=360)
FOUND = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: fourier_fbp
    parameters: {}
"""
BLOCK = 16


def _volume(path: Path) -> np.ndarray:
    with h5py.File(path) as file:
        return np.asarray(file["/entry/reconstruction/data"][...])


def _feed(ranked: RankedReconstruction, reader: FrameReader, scan: str, sample: str | None,
          *, opened: Callable[[], None] | None = None, range_known: bool = True,
          ) -> ScanOutput | None:
    """The runner driven as ingest drives it: open, this rank's blocks, close, master
    (``opened``: called once the scan is open; ``range_known``: the start header says
    the scan's range, as the simulator's does)."""
    layout = reader.layout
    start = start_header(layout, scan)
    if sample is not None:
        start = start.model_copy(update={"metadata": {"sample": sample}})
    if not range_known:
        start = start.model_copy(update={"geometry": Geometry()})
    ranked.open_scan(start)
    if opened is not None:
        opened()
    rank, ranks = ranked.control.rank, ranked.control.size
    keys, angles = layout.image_keys, layout.angles_deg
    for number, first in enumerate(range(0, layout.frames, BLOCK)):
        last = min(first + BLOCK, layout.frames)
        mine = number % ranks == rank
        references = rank == 0 and bool(np.any(keys[first:last] != IMAGE_KEY_PROJECTION))
        if not (mine or references):
            continue
        data = reader.read(first, last)
        ranked.add([HeldFrame(i, int(keys[i]), float(angles[i]), data[i - first])
                    for i in range(first, last)
                    if (keys[i] == IMAGE_KEY_PROJECTION and mine)
                    or (keys[i] != IMAGE_KEY_PROJECTION and references)])
    ranked.close_scan()
    return ranked.write_master(scan, complete=True, document=None) if rank == 0 else None


def _runner(link: MemoryLink, out: Path, lines: list[str], **options: Any
            ) -> RankedReconstruction:
    steps = parse_pipeline(FOUND, REGISTRY, source="found.yaml").steps
    return RankedReconstruction(steps, FOUND, out, link.duplicate(), link.duplicate(),
                                block_frames=BLOCK, block_sinograms=2, memory_bytes=1 << 28,
                                estimate_center=True, log=lines.append, **options)


def _batch(tmp_path: Path, config: SimulationConfig, ranks: int, center: float) -> np.ndarray:
    """The same scan reconstructed at close at ``center`` on the same ranks."""
    pipeline = tmp_path / f"batch-{center}.yaml"
    pipeline.write_text(FOUND.replace("{}", f"{{center: {center!r}}}"))
    output = tmp_path / f"batch-{ranks}-{center}.h5"

    def rank(link: MemoryLink) -> object:
        settings = ReconSettings(output, pipeline=pipeline, block_frames=BLOCK,
                                 block_sinograms=2, overwrite=True)
        return recon_on_ranks(SimulatedScan(config), settings, link, stream=False)

    assert run_ranks(ranks, rank)[0].complete
    return _volume(output)


def _close(volume: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(volume - reference) / np.linalg.norm(reference))


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_a_360_scan_streams_with_its_pair_from_half_way_and_keeps_it(
        tmp_path: Path, ranks: int) -> None:
    """No CoR given: the blocks are kept until the pair (0° and 180°) is in, half-way;
    then every rank streams with it, and the final estimate at close agrees."""
    lines: list[str] = []
    started: list[int | None] = []

    def work(link: MemoryLink) -> ScanOutput | None:
        ranked = _runner(link, tmp_path, lines)
        if link.rank == 0:
            def log(line: str) -> None:
                if "from the opposite pair" in line:  # how many frames had come by then
                    scan = ranked._scan  # (None: told during the close, on R ranks)
                    started.append(None if scan is None else scan.processor.projections_done)
                lines.append(line)
            ranked.log = log
        return _feed(ranked, SimulatedScan(HALF_WAY), "turn", None)

    output = run_ranks(ranks, work)[0]
    assert output is not None and output.complete, output
    center = output.figures["center"]
    assert center["source"] == "pair" and not center["redone"] and center["streamed"], center
    assert abs(center["center"] - TRUE_COR) < 0.3 and abs(center["final"] - TRUE_COR) < 0.3
    assert center["difference"] <= center["tolerance"] == 0.5
    assert center["streamed_with"] == center["center"] == output.center
    assert "pair (streaming)" in (output.center_method or "")
    assert not any("back to reconstruction at close" in line for line in lines), lines
    assert started, lines  # rank 0 was told (on R ranks by the CoR row's rank)
    if ranks == 1:  # the pair was in after about half the projections
        assert started[0] is not None and started[0] <= HALF_WAY.projections * 0.6, started
    error = _close(_volume(output.path), _batch(tmp_path, HALF_WAY, ranks, center["center"]))
    assert 0 < error < 1e-5, error  # 0 would mean the batch path ran twice


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_180_scan_without_a_cor_streams_with_its_early_estimate(
        tmp_path: Path, ranks: int) -> None:
    """Nothing carried, the pair comes last: the CoR row's rank estimates the CoR from
    the first half of the projections (centre-of-mass sinusoid), every rank streams
    with it, the final estimate at close agrees, and the volume is the batch's."""
    lines: list[str] = []
    started: list[int | None] = []

    def work(link: MemoryLink) -> ScanOutput | None:
        ranked = _runner(link, tmp_path, lines)
        if link.rank == 0:
            def log(line: str) -> None:
                if "early estimate: streaming starts" in line:
                    scan = ranked._scan
                    started.append(None if scan is None else scan.processor.projections_done)
                lines.append(line)
            ranked.log = log
        return _feed(ranked, SimulatedScan(CONFIG), "half", None)

    output = run_ranks(ranks, work)[0]
    assert output is not None and output.complete, output
    center = output.figures["center"]
    assert center["source"] == "early estimate" and center["streamed"], center
    assert not center["redone"] and center["streamed_with"] == center["center"]
    assert abs(center["center"] - TRUE_COR) < 0.2 and center["difference"] <= 0.5
    early = center["early"]
    assert early["center"] == center["center"] and early["reason"] is None, early
    assert early["error"] <= 0.1 and early["angles"] >= CONFIG.projections // (2 * ranks)
    assert center["final_search"].startswith("within 4 px of"), center  # a check, not a search
    assert "early estimate (streaming)" in (output.center_method or "")
    assert "CoR: early estimate" in " ".join(output.notes)
    assert not any("back to reconstruction at close" in line for line in lines), lines
    assert started, lines
    if ranks == 1:  # started half-way, not at the last frame
        assert started[0] is not None and started[0] <= CONFIG.projections * 0.6, started
    error = _close(_volume(output.path), _batch(tmp_path, CONFIG, ranks, center["center"]))
    assert 0 < error < 1e-5, error  # 0 would mean the batch path ran twice


@pytest.mark.parametrize("ranks", [1, 2])
def test_an_early_estimate_that_is_off_is_redone_at_close(
        tmp_path: Path, ranks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The early estimate (made 2 px off here, as a truncation that starts late or a
    biased background would) streams, the final estimate at close disagrees, and the
    volume is redone with it: the report says so, and the volume is the batch's."""
    from streamer.run import center_early
    honest = center_early.early_center

    def off(*args: Any, **kwargs: Any) -> center_early.EarlyCenter:
        found = honest(*args, **kwargs)
        return found if found.center is None else replace(found, center=found.center + 2)

    monkeypatch.setattr(center_early, "early_center", off)
    lines: list[str] = []

    def work(link: MemoryLink) -> ScanOutput | None:
        return _feed(_runner(link, tmp_path, lines), SimulatedScan(CONFIG), "off", None)

    output = run_ranks(ranks, work)[0]
    assert output is not None and output.complete, output
    center = output.figures["center"]
    assert center["redone"] and center["source"] == "final", center
    assert abs(center["streamed_with"] - (TRUE_COR + 2)) < 0.2
    assert abs(center["center"] - TRUE_COR) < 0.3 and center["difference"] > 1.5
    assert center["estimates"]["early"] == center["streamed_with"]
    assert "REDONE" in " ".join(output.notes)
    assert "differs from the early estimate CoR" in (output.center_method or "")
    # every rank wrote its band with the estimate beside the check, then again (ADR 0033)
    rewrites = [line for line in lines if "rewriting the band with the final CoR" in line]
    assert len(rewrites) == ranks, lines
    error = _close(_volume(output.path), _batch(tmp_path, CONFIG, ranks, center["center"]))
    assert error < 1e-5, error


@pytest.mark.parametrize("ranks", [1, 2])
def test_the_cor_check_runs_beside_the_write(tmp_path: Path, ranks: int) -> None:
    """The early estimate agrees: the owner's check is held (in its own thread) until
    its rank has written a block of the band with the estimate, so it cannot have run
    before the write; the verdict comes after, nothing is rewritten, and the volume is
    the batch's at the CoR used."""
    import threading

    lines: list[str] = []
    seen: list[bool] = []

    def work(link: MemoryLink) -> ScanOutput | None:
        ranked = _runner(link, tmp_path, lines)
        written = threading.Event()
        ranked.on_block = lambda scan, slices, rows: written.set()
        ranked.center_check_hook = lambda: seen.append(written.wait(60))
        return _feed(ranked, SimulatedScan(CONFIG), "beside", None)

    output = run_ranks(ranks, work)[0]
    assert output is not None and output.complete, output
    assert seen == [True], seen  # one check (the owner's), after its first block written
    center = output.figures["center"]
    assert center["source"] == "early estimate" and center["streamed"], center
    assert not center["redone"] and center["final"] is not None
    assert center["final_search"].startswith("within 4 px of"), center
    assert not any("rewriting the band" in line for line in lines), lines
    assert "early estimate (streaming)" in (output.center_method or "")
    error = _close(_volume(output.path), _batch(tmp_path, CONFIG, ranks, center["center"]))
    assert 0 < error < 1e-5, error


def test_a_180_scan_without_a_cor_is_reconstructed_at_close_without_early_estimates(
        tmp_path: Path) -> None:
    """``early_center_fraction=None``: its pair comes with its last projections, so
    streaming would only add work after the last frame: the plan says at close (the CoR
    policy's, as before the early estimate)."""
    lines: list[str] = []

    def work(link: MemoryLink) -> ScanOutput | None:
        return _feed(_runner(link, tmp_path, lines, early_center_fraction=None),
                     SimulatedScan(CONFIG), "half", None)

    output = run_ranks(1, work)[0]
    assert output is not None and output.complete and "center" not in output.figures
    assert any("a 180° scan's opposite pair comes with its last projections" in line
               for line in lines), lines
    assert output.center is not None and abs(output.center - TRUE_COR) < 0.3


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_pair_that_comes_last_is_used_at_close_not_added_late(tmp_path: Path,
                                                                ranks: int) -> None:
    """A 180° scan whose start does not say its range: its blocks are kept, the pair
    comes with the last projections, and the band is reconstructed at close with it
    (adding every kept block then would cost more than the batch)."""
    lines: list[str] = []

    def work(link: MemoryLink) -> ScanOutput | None:
        return _feed(_runner(link, tmp_path, lines, early_center_fraction=None),
                     SimulatedScan(CONFIG), "late", None, range_known=False)

    output = run_ranks(ranks, work)[0]
    assert output is not None and output.complete, output
    center = output.figures["center"]
    assert center["source"] == "pair" and not center["redone"] and not center["streamed"]
    assert abs(center["center"] - TRUE_COR) < 0.3, center
    assert any("the opposite pair comes with the scan's last projections" in line
               for line in lines), lines
    error = _close(_volume(output.path), _batch(tmp_path, CONFIG, ranks, center["center"]))
    assert error < 1e-5, error


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_wrong_carried_cor_streams_then_the_volume_is_redone_at_the_final_cor(
        tmp_path: Path, ranks: int) -> None:
    """The first scan of the sample had its axis 4 px off: the second scan starts with
    that carried CoR at once, the final estimate disagrees, the volume is redone."""
    lines: list[str] = []
    before = CONFIG.model_copy(update={"cor_px": TRUE_COR - 4})

    def work(link: MemoryLink) -> tuple[ScanOutput | None, ScanOutput | None]:
        ranked = _runner(link, tmp_path, lines)
        first = _feed(ranked, SimulatedScan(before), "first", "s1")
        second = _feed(ranked, SimulatedScan(CONFIG), "second", "s1")
        return first, second

    first, second = run_ranks(ranks, work)[0]
    assert first is not None and second is not None and second.complete, second
    carried = first.center  # the early estimate, checked at close
    assert carried is not None and abs(carried - (TRUE_COR - 4)) < 0.3, first
    center = second.figures["center"]
    assert any(f"CoR {carried:.2f} carried from the previous scan of sample s1" in line
               for line in lines), lines
    assert center["streamed_with"] == carried and center["redone"], center
    assert center["source"] == "final" and center["center"] == center["final"]
    assert abs(center["final"] - TRUE_COR) < 0.3 and center["difference"] > 3.5
    assert center["final_search"].startswith("whole range"), center  # 4 px: off the window
    assert not center["streamed"]
    assert "REDONE" in " ".join(second.notes)
    assert "redone: the final CoR estimate" in (second.center_method or "")
    error = _close(_volume(second.path), _batch(tmp_path, CONFIG, ranks, center["center"]))
    assert error < 1e-5, error


def test_a_carried_cor_that_agrees_streams_from_the_first_block(tmp_path: Path) -> None:
    lines: list[str] = []

    def work(link: MemoryLink) -> tuple[ScanOutput | None, ScanOutput | None]:
        ranked = _runner(link, tmp_path, lines)
        return (_feed(ranked, SimulatedScan(CONFIG), "first", "s1"),
                _feed(ranked, SimulatedScan(CONFIG), "second", "s1"))

    first, second = run_ranks(2, work)[0]
    assert second is not None and first is not None
    center = second.figures["center"]
    assert center["source"] == "carried" and center["streamed"] and not center["redone"]
    assert center["center"] == first.center
    assert "pair" not in center["estimates"]  # started at once: no pair was waited for


def test_another_sample_carries_nothing(tmp_path: Path) -> None:
    lines: list[str] = []

    def work(link: MemoryLink) -> ScanOutput | None:
        ranked = _runner(link, tmp_path, lines)
        _feed(ranked, SimulatedScan(HALF_WAY), "first", "s1")
        return _feed(ranked, SimulatedScan(HALF_WAY), "second", "s2")

    output = run_ranks(1, work)[0]
    assert output is not None and output.figures["center"]["source"] == "pair"
    assert not any("carried" in line for line in lines), lines


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_viewer_cor_wins_and_the_final_estimate_is_reported(tmp_path: Path,
                                                              ranks: int) -> None:
    """The viewer's CoR (as the feed's ``set_center`` stores it on rank 0, decided for
    every rank through the relay) is the volume's, though the pair streamed another."""
    viewer = TRUE_COR + 1.25
    lines: list[str] = []

    def work(link: MemoryLink) -> ScanOutput | None:
        ranked = _runner(link, tmp_path, lines)
        relay = FeedRelay(link.duplicate(), None)
        ranked.observer = relay

        def set_in_the_viewer() -> None:  # as the feed's set_center stores it (rank 0)
            if link.rank == 0:
                relay._target.center_override = viewer
        return _feed(ranked, SimulatedScan(HALF_WAY), "viewer", None,
                     opened=set_in_the_viewer)

    output = run_ranks(ranks, work)[0]
    assert output is not None and output.complete, output
    center = output.figures["center"]
    assert center["source"] == "viewer" and center["center"] == viewer, center
    assert not center["redone"] and not center["streamed"]
    assert abs(center["streamed_with"] - TRUE_COR) < 0.3  # the pair streamed first
    assert abs(center["difference"] - 1.25) < 0.3
    assert output.center == viewer and (output.center_method or "").startswith("user (viewer)")
    assert "kept the viewer CoR" in (output.center_method or "")
    error = _close(_volume(output.path), _batch(tmp_path, HALF_WAY, ranks, viewer))
    assert error < 1e-5, error


def test_run_streams_with_the_pair_and_reports_the_cor(tmp_path: Path, python: str,
                                                       cli_env: Any) -> None:
    """The documented example: ``run`` with a pipeline that leaves the CoR to be found
    and ``--center-tolerance``; the terminal and the JSON report say what was used."""
    pipeline = tmp_path / "found.yaml"
    pipeline.write_text(FOUND)
    out = tmp_path / "volumes"
    process, address = start_consumer_cli(
        python, cli_env, "run", str(pipeline), "--scans", "1", "--out", str(out),
        "--center-tolerance", "0.25")
    try:
        assert main(["simulate", "--connect", address, "--rows", "4", "--cols", "48",
                     "--projections", "120", "--range", "360", "--cor", "22.5",
                     "--scan-id", "turn", "--quiet"]) == 0
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "from the opposite pair: streaming starts" in stderr + stdout
    assert "CoR: pair 22.5" in stdout and "tolerance 0.25" in stdout, stdout
    report = json.loads((out / "turn.json").read_text())
    center = report["center"]
    assert center["source"] == "pair" and center["streamed"] and not center["redone"]
    assert abs(center["center"] - 22.5) < 0.2 and center["tolerance"] == 0.25
    assert report["latency"]["reconstruction"] == "streaming"


@pytest.mark.parametrize("early", ["0.5", "off"])
def test_run_streams_a_180_scan_with_its_early_estimate(tmp_path: Path, python: str,
                                                        cli_env: Any, early: str) -> None:
    """The documented example: ``run --early-center 0.5`` (the default) streams a 180°
    scan with nothing carried from half-way; ``off`` reconstructs it at close."""
    pipeline = tmp_path / "found.yaml"
    pipeline.write_text(FOUND)
    out = tmp_path / "volumes"
    process, address = start_consumer_cli(
        python, cli_env, "run", str(pipeline), "--scans", "1", "--out", str(out),
        "--early-center", early)
    try:
        assert main(["simulate", "--connect", address, "--rows", "4", "--cols", "48",
                     "--projections", "120", "--cor", "22.5", "--scan-id", "half",
                     "--quiet"]) == 0
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    report = json.loads((out / "half.json").read_text())
    if early == "off":
        assert "center" not in report and "early estimate" not in stdout + stderr
        assert report["latency"]["reconstruction"] == "at close"
        return
    assert "early estimate: streaming starts" in stderr + stdout
    assert "CoR: early estimate 22." in stdout, stdout
    center = report["center"]
    assert center["source"] == "early estimate" and center["streamed"], center
    assert not center["redone"] and abs(center["center"] - 22.5) < 0.2
    assert center["early"]["error"] <= 0.1
    assert report["latency"]["reconstruction"] == "streaming"
