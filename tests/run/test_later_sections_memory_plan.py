"""The memory plan of later sections (after a second reslice) against what a run holds.

Two cases the plan used to count as the band's size (``band × angles × width`` per part):

- a halo step in a later sinogram section: on R ranks the reslice before it delivers
  each rank's rows widened by the section's halo on each side (``transpose(halo=h)``,
  ADR 0019's addendum), more than the band when the first sections have no halo;
- a step that upsamples the rows in a later projection section (``upsample`` along the
  rows): its output, and the parts after it, have more rows than the band.

What a run holds is measured, not derived: on one rank with ``tracemalloc`` (NumPy
reports its allocations to it) over the processor's later sections, less what was held
when they began; on 2 and 3 in-process ranks (threads of one process, so one
``tracemalloc`` figure would sum the ranks) as the bytes of the arrays each rank's later
sections hold at once (the part a reslice sends and the part it receives; a section's
input and output), read off the arrays the run makes. The plan must be at least that,
and not more than a quarter above it (the edge ranks of a halo get one side's overlap:
the plan counts the most rows a rank holds); the old figure was below it (the test can
fail).
"""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import streamer.run.later_sections as later_module
from stages.registry import REGISTRY
from streamer.cli import main
from streamer.exchange.sinobuffer import SinogramBand
from streamer.pipeline.config import PipelineStep, parse_pipeline
from streamer.pipeline.executor import ScanProcessor
from streamer.pipeline.frame_shape import corrected_frame
from streamer.pipeline.halo import ranks_halo
from streamer.pipeline.plan import ScanMemory, later_parts_bytes, plan_scan, rank_band_rows
from streamer.pipeline.sections import sections_of
from streamer.run.from_file import ReconSettings
from streamer.run.ranks import recon_on_ranks
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.run.ranks import run_ranks

CONFIG = SimulationConfig(rows=16, cols=64, projections=90, flats=4, darks=2, seed=3)
BUDGET = 1 << 30
BLOCK_FRAMES, BLOCK_SINOGRAMS = 8, 2
#: The plan may exceed the measured figure by this fraction at most.
OVER = 0.25
#: One rank's tracemalloc figure also counts the Python objects made while the sections
#: run (the block lists, the steps' small arrays): 3804-3816 KiB measured against 3885
#: KiB planned; the slack is stated, not tuned to pass (the parts missed before were
#: 2520 KiB).
SLACK = 128 * 2**10

#: remove_stripe_based_sorting opens the last sinogram section after a second reslice;
#: stripes_mask3d reaches 6 rows across its blocks there (stripes_detect3d 3): a band of
#: 8 or 6 rows gets 2 x 9 more.
HALO = """\
pipeline:
  - method: normalize
  - method: remove_all_stripe
  - method: paganin_filter
  - method: remove_stripe_based_sorting
    parameters: {size: 5}
  - method: stripes_detect3d
    parameters: {size: 5, radius: 2}
  - method: stripes_mask3d
    parameters: {threshold: 0.6, min_stripe_length: 5, min_stripe_depth: 6}
  - method: fbp
    parameters: {center: 31.5}
"""
#: upsample along the rows (8x) in the projection section after the second reslice.
UPSAMPLE = """\
pipeline:
  - method: normalize
  - method: remove_all_stripe
  - method: upsample
    parameters: {axis: 1, level: 3}
  - method: fbp
    parameters: {center: 31.5}
"""
PIPELINES = {"halo": HALO, "upsample": UPSAMPLE}


def _steps(text: str) -> tuple[PipelineStep, ...]:
    return parse_pipeline(text, REGISTRY, source="later.yaml").steps


def _plans(steps: tuple[PipelineStep, ...], ranks: int) -> tuple[ScanMemory, ScanMemory, int]:
    """The plan the runner makes on ``ranks`` ranks (as ``RankedReconstruction._admit``),
    the same without ``ranks`` (the figure before the later parts were counted as held),
    and the band's bytes."""
    found = sections_of(steps)
    halo = ranks_halo((found[0].steps, found[1].steps)) if ranks > 1 else 0
    rows = corrected_frame(steps, CONFIG.rows, CONFIG.cols)[0] if ranks > 1 else CONFIG.rows
    band_rows = rank_band_rows(rows, ranks, halo)

    def plan(given: int | None) -> ScanMemory:
        return plan_scan(steps, rows=CONFIG.rows, cols=CONFIG.cols,
                         angles=CONFIG.projections, references=CONFIG.flats + CONFIG.darks,
                         dtype=np.dtype("uint16"), budget_bytes=BUDGET, band_rows=band_rows,
                         on_ranks=ranks > 1, ranks=given)[3]

    return plan(ranks), plan(None), band_rows * CONFIG.projections * CONFIG.cols * 4


def _run(tmp_path: Path, text: str, ranks: int, name: str) -> list[str]:
    pipeline = tmp_path / f"{name}.yaml"
    pipeline.write_text(text)
    logged: list[str] = []
    settings = ReconSettings(tmp_path / f"{name}{ranks}.h5", pipeline=pipeline,
                             block_frames=BLOCK_FRAMES, block_sinograms=BLOCK_SINOGRAMS,
                             memory_bytes=BUDGET)
    run_ranks(ranks, lambda link: recon_on_ranks(
        SimulatedScan(CONFIG), settings, link,
        log=logged.append if link.rank == 0 else lambda line: None))
    return logged


def _held_on_ranks(monkeypatch: pytest.MonkeyPatch) -> dict[int, int]:
    """Spies on the later sections of R ranks: the most bytes each rank's arrays there
    hold at once (a reslice: the part sent and the part received; a section: its input
    and its output), by rank."""
    held: dict[int, int] = {}
    lock = threading.Lock()

    def note(rank: int, nbytes: int) -> None:
        with lock:
            held[rank] = max(held.get(rank, 0), nbytes)

    transpose = later_module.transpose

    def spied_transpose(link: Any, data: Any, shape: Any, **options: Any) -> Any:
        result = transpose(link, data, shape, **options)
        sent = 0 if data is None else int(data.nbytes)
        note(link.rank, sent + (0 if result.data is None else int(result.data.nbytes)))
        return result

    monkeypatch.setattr(later_module, "transpose", spied_transpose)
    for name in ("_projection_section", "_sinogram_section"):
        section: Callable[..., Any] = getattr(later_module, name)

        def spied(steps: Any, data: Any, *rest: Any,
                  section: Callable[..., Any] = section) -> Any:
            out = section(steps, data, *rest)
            made = out[0] if isinstance(out, tuple) else out
            rank = int(threading.current_thread().name.split()[-1])  # run_ranks names it
            note(rank, int(data.nbytes) + int(made.nbytes))
            return out

        monkeypatch.setattr(later_module, name, spied)
    return held


@pytest.mark.parametrize("case", sorted(PIPELINES))
@pytest.mark.parametrize("ranks", [2, 3])
def test_the_plan_holds_the_later_parts_of_each_rank(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, ranks: int) -> None:
    steps = _steps(PIPELINES[case])
    new, old, band = _plans(steps, ranks)
    held = _held_on_ranks(monkeypatch)
    logged = _run(tmp_path, PIPELINES[case], ranks, case)
    assert sorted(held) == list(range(ranks)), held
    measured = max(held.values())
    planned = new.sinogram_buffer - band
    print(f"\n{case}, {ranks} ranks: later parts held {measured / 2**10:.0f} KiB "
          f"(by rank {[round(held[r] / 2**10) for r in sorted(held)]}), planned "
          f"{planned / 2**10:.0f} KiB, before {(old.sinogram_buffer - band) / 2**10:.0f} KiB")
    assert measured <= planned <= (1 + OVER) * measured
    assert old.sinogram_buffer - band < measured  # what the plan missed
    # the runner planned this figure (rank 0 logs it)
    assert any(new.describe() in line for line in logged), logged


def test_one_rank_holds_the_upsampled_parts_within_the_plan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One rank: ``tracemalloc`` over the processor's later sections (after the band),
    against the later parts the plan counts plus the largest block estimate of those
    sections at the run's block sizes."""
    steps = _steps(UPSAMPLE)
    new, old, band = _plans(steps, 1)
    growth: list[int] = []
    run_sections = ScanProcessor._run_sinogram_section

    def measured(processor: ScanProcessor) -> None:
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            run_sections(processor)
            growth.append(tracemalloc.get_traced_memory()[1] - before)
        finally:
            tracemalloc.stop()

    monkeypatch.setattr(ScanProcessor, "_run_sinogram_section", measured)
    _run(tmp_path, UPSAMPLE, 1, "upsample")
    assert len(growth) == 1
    parts = later_parts_bytes(steps, rows=CONFIG.rows, cols=CONFIG.cols,
                              angles=CONFIG.projections, ranks=1, on_ranks=False)
    assert new.sinogram_buffer - band == parts
    blocks = _later_block_estimate(steps)
    print(f"\none rank: later sections grew {growth[0] / 2**10:.0f} KiB; planned parts "
          f"{parts / 2**10:.0f} + blocks {blocks / 2**10:.0f} KiB, parts before "
          f"{(old.sinogram_buffer - band) / 2**10:.0f} KiB")
    assert growth[0] <= parts + blocks + SLACK
    assert parts + blocks <= (1 + OVER) * growth[0]
    assert old.sinogram_buffer - band + blocks < growth[0]  # what the plan missed


def _later_block_estimate(steps: tuple[PipelineStep, ...]) -> int:
    """The largest estimate of a step of the later sections at the run's block sizes
    (the upsampled rows from the second projection section on)."""
    rows, up = CONFIG.rows, 8
    angles, cols, dtype = CONFIG.projections, CONFIG.cols, np.dtype("float32")
    shapes = {"remove_all_stripe": (BLOCK_SINOGRAMS, angles, cols),
              "upsample": (BLOCK_FRAMES, rows, cols),
              "fbp": (BLOCK_SINOGRAMS, angles, cols)}
    assert up * rows == 128
    return max(step.spec.memory(shapes[step.name], dtype, step.params)
               for step in steps if step.name in shapes)


def test_check_plans_the_sections_after_an_upsampling_at_its_rows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``check``'s memory plan: a step after the upsampling (here a 1x1 binning, which
    keeps the frame) is estimated at the 8x rows, and the last sinogram section has that
    many sinograms (it had the scan's 16: blocks of 16 sinograms, 4.6 MiB)."""
    pipeline = tmp_path / "up.yaml"
    pipeline.write_text(UPSAMPLE.replace(
        "  - method: fbp\n",
        "  - method: binning\n    parameters: {factor_rows: 1, factor_cols: 1}\n"
        "  - method: fbp\n"))
    assert main(["check", str(pipeline), "--frame", "16x64", "--projections", "90",
                 "--memory", "0.01"]) == 0
    out = capsys.readouterr().out
    binning = np.dtype("float32").itemsize * 90 * 128 * 64 * 3.5  # 90 frames, 8x rows
    assert (f"projection section [upsample, binning]: blocks of 90 frames (of 90), peak "
            f"{binning / 2**20:,.1f} MiB set by 'binning'") in out, out
    assert "sinogram section [fbp]: blocks of 35 sinograms (of 128)" in out, out
    # the device plan follows the rows too, and needs no device (the frame's shape is
    # worked out on numpy)
    assert main(["check", str(pipeline), "--frame", "16x64", "--projections", "90",
                 "--memory", "0.01", "--device", "1"]) == 0
    out = capsys.readouterr().out
    assert "device: sinogram section [fbp]: blocks of 128 sinograms (of 128)" in out, out


def test_the_rows_follow_every_reshaping_step_also_after_a_step_across_frames() -> None:
    """Only the steps that may change the frame run on a block of no frames (a 3-D
    median refuses one): binning halves the rows, upsample doubles them back, and the
    later parts on 2 ranks are those of 8 rows before the upsampling and 16 after."""
    steps = _steps("""\
pipeline:
  - method: normalize
  - method: binning
    parameters: {factor_rows: 2, factor_cols: 1}
  - method: remove_outlier3d
    parameters: {kernel_size: 3, dif: 0.05}
  - method: paganin_filter
  - method: upsample
    parameters: {axis: 1, level: 1}
  - method: fbp
    parameters: {center: 31.5}
""")
    angles, cols, frame = CONFIG.projections, CONFIG.cols, 4 * CONFIG.cols
    parts = later_parts_bytes(steps, rows=16, cols=cols, angles=angles, ranks=2,
                              on_ranks=True)
    # the reslice back to bands: 45 frames of 16 rows sent, 8 rows x 90 angles received
    assert parts == 45 * 16 * frame + 8 * angles * frame
    assert later_parts_bytes(steps, rows=16, cols=cols, angles=angles, ranks=1,
                             on_ranks=False) == 0  # one rank: one reslice


def test_one_rank_plans_the_band_of_a_first_section_that_upsamples(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One rank shapes its band from the first corrected block: a first-section upsample
    (4x the rows) makes it 4x the scan's rows, and the plan's sinogram buffer holds it."""
    text = UPSAMPLE.replace("  - method: remove_all_stripe\n", "").replace(
        "level: 3", "level: 2")
    steps = _steps(text)
    buffers: list[int] = []
    post_init = SinogramBand.__post_init__

    def noted(band: SinogramBand) -> None:
        post_init(band)
        buffers.append(int(band.buffer.nbytes))

    monkeypatch.setattr(SinogramBand, "__post_init__", noted)
    _run(tmp_path, text, 1, "first")
    new, old, _ = _plans(steps, 1)
    assert buffers == [4 * CONFIG.rows * CONFIG.projections * CONFIG.cols * 4]
    assert new.sinogram_buffer == buffers[0]
    assert old.sinogram_buffer < buffers[0]  # the scan's rows: a quarter of it
