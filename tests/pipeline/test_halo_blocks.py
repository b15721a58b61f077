"""A block's result does not depend on block size: kernels across the block axis get their
real neighbours (``StageSpec.halo``, :mod:`streamer.pipeline.halo`, ADR 0019).

The inventory test runs every registered stage it can (with defaults, or with the
parameters below) on blocks of 1, 2 and 3 entries of axis 0, each widened by the stage's
declared halo and cut back, and compares with the whole block: a new stage whose kernel
reaches across the block axis without declaring it fails here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stages.prep.repair import RepairCounts
from stages.registry import REGISTRY
from stages.spec import StageSpec
from streamer.cli import main
from streamer.errors import ConfigError
from streamer.ingest.store import HeldFrame
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.device_bands import runs_on_device
from streamer.pipeline.executor import (
    ProcessedBlock,
    ScanProcessor,
    feed_reader,
    process_reader,
)
from streamer.pipeline.halo import keep_block, window
from streamer.pipeline.plan import plan_blocks
from streamer.pipeline.sections import rank_sections, refuse_on_ranks, sections_of
from streamer.sources.sender import start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.pipeline.test_executor_device_queue import FakeStreams, device_backend  # noqa: F401

#: Parameter sets per stage (required parameters, and the values that change its halo).
CASES: dict[str, tuple[dict[str, Any], ...]] = {
    "remove_outlier": ({"dif": 0.3}, {"dif": 0.3, "axis": 1}, {"dif": 0.3, "axis": 2}),
    "dezinger_temporal": ({"dif": 0.3}, {"dif": 0.3, "window": 5}),
    "median_filter": ({}, {"axis": 1}, {"axis": 2, "size": 5}, {"axis": None}),
    "gaussian_filter": ({}, {"axis": 1, "sigma": 0.7}),
    "remove_outlier3d": ({}, {"kernel_size": 5, "dif": 0.2}),
    "median_filter3d": ({}, {"kernel_size": 5}),
    "median_filter3d_tomopy": ({}, {"size": 5}),
    "remove_outlier3d_tomopy": ({"dif": 0.3}, {"dif": 0.3, "size": 5}),
    "remove_outlier1d": ({"dif": 0.3}, {"dif": 0.3, "axis": 2}),
    "normalize_nf": ({"flat_loc": (0,)},),
    "normalize_roi": ({"roi": (0, 0, 4, 4)},),
    "pad": ({"axis": 2},),
    "seam_blend_stitched_data": ({"overlap": 4, "seam_index": 12},),
    "shift_images": ({"sx": tuple([0.5] * 12), "sy": tuple([0.0] * 12)},),
    "stripes_detect3d": ({"size": 3, "radius": 2},),
    "stripes_mask3d": ({"min_stripe_length": 4, "min_stripe_depth": 4,
                        "min_stripe_width": 3},),
    "rescale": ({"window": (0.6, 1.4)}, {"window": (-1.0, 60.0), "dtype": "uint16"}),
}

#: Stages that need the *whole* block axis (a transform or a statistic over every angle
#: or row), which no finite halo makes right: known, and listed here so that the list is
#: a decision (ADR 0019), not an oversight. Each must differ when split (else: remove it).
WHOLE_AXIS: dict[str, str] = {}  # none left: ADR 0023 (stripe filters, rescale)

#: Not transforms of one block: finders, reconstructors (angles), geometry changes,
#: reference reducers, and stages whose parameters fix the block size.
NOT_BLOCKWISE = {"data_resampler", "distortion_correction_proj",
                 "distortion_correction_proj_discorpy", "distortion_correction_sino",
                 "trim_sinogram"}

SHAPE = (12, 10, 24)  # axis 0 is the block axis in both layouts


def _data() -> np.ndarray:
    rng = np.random.default_rng(7)
    data = (rng.random(SHAPE) + 0.5).astype(np.float32)
    data[3, 4, 5], data[7, 2, 9], data[0, 1, 1], data[11, 8, 20] = 50.0, -20.0, 9.0, 9.0
    data[:, :, 12] *= 0.5  # a stripe
    return data


def _run(spec: StageSpec, params: Any, data: np.ndarray, first: int, last: int) -> np.ndarray:
    rows, cols = SHAPE[1], SHAPE[2]
    return spec.run(
        np.ascontiguousarray(data[first:last]), params,
        darks=np.zeros((2, rows, cols), np.float32),
        flats=np.full((2, rows, cols), 2.0, np.float32),
        frame_indices=np.arange(first, last, dtype=np.int64) + 4,
        flat_indices=np.array([0, 1], dtype=np.int64),
        projection_indices=np.arange(first, last, dtype=np.int64),
        repairs=RepairCounts())


def _blockwise(spec: StageSpec, params: Any, data: np.ndarray, size: int) -> np.ndarray:
    """``spec`` on blocks of ``size`` entries, each with its halo of real neighbours."""
    halo = spec.reach(params)
    parts = []
    for first in range(0, data.shape[0], size):
        where = window(first, min(first + size, data.shape[0]), data.shape[0], halo)
        out = _run(spec, params, data, where.low, where.high)
        parts.append(keep_block(out, where, spec.name))
    return np.concatenate(parts)


def _cases() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, spec in sorted(REGISTRY.items()):
        if (spec.finds_center is not None or spec.needs_angles or spec.geometry is not None
                or spec.reduces_references is not None or name in NOT_BLOCKWISE):
            continue
        for values in CASES.get(name, ({},)):
            out.append((name, values))
    return out


@pytest.mark.parametrize(("name", "values"), _cases(),
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(_cases())])
def test_every_stage_gives_the_whole_block_result_on_blocks_of_1_2_3(
        name: str, values: dict[str, Any]) -> None:
    spec = REGISTRY[name]
    params = spec.params(**values)
    data = _data()
    whole = _run(spec, params, data, 0, SHAPE[0])
    scale = max(1.0, float(np.max(np.abs(whole))))
    for size in (1, 2, 3):
        if name in WHOLE_AXIS:
            with pytest.raises(AssertionError):  # still needs the whole axis: listed
                np.testing.assert_allclose(_blockwise(spec, params, data, size), whole,
                                           rtol=0, atol=1e-6 * scale)
            return
        np.testing.assert_allclose(_blockwise(spec, params, data, size), whole, rtol=0,
                                   atol=1e-6 * scale, err_msg=f"{name} {values} blocks of "
                                   f"{size}: declare its halo (StageSpec.halo)")


def test_a_stage_with_a_halo_is_not_angle_local() -> None:
    """Streaming reconstruction relies on angle-local stages; a halo across frames is not."""
    for name, values in _cases():
        spec = REGISTRY[name]
        params = spec.params(**values)
        if spec.reach(params) and spec.pattern.value == "projection":
            assert not spec.is_angle_local(params), name


def _volume(yaml: str, block_frames: int, block_sinograms: int) -> np.ndarray:
    scan = SimulatedScan(SimulationConfig(rows=9, cols=40, projections=30, flats=4, darks=2,
                                          zinger_rate=1.0, seed=3))
    steps = parse_pipeline(yaml, REGISTRY, source="halo.yaml").steps
    blocks: list[ProcessedBlock] = []
    process_reader(steps, scan, start_header(scan.layout, "halo"),
                   block_frames=block_frames, block_sinograms=block_sinograms,
                   on_sinograms=blocks.append)
    rows = np.concatenate([b.indices for b in blocks])
    assert rows.tolist() == list(range(len(rows)))
    return np.concatenate([b.data for b in blocks])


PIPELINES = {
    # a 3-D median in the streamed projection section (frames in dealt blocks)
    "projection": "pipeline:\n  - method: normalize\n  - method: remove_outlier3d\n"
                  "    parameters: {kernel_size: 5, dif: 0.05}\n"
                  "  - method: median_filter3d\n  - method: fbp\n    parameters: "
                  "{center: 19.5}\n",
    # a 3-D median in the sinogram section (rows in blocks)
    "sinogram": "pipeline:\n  - method: normalize\n  - method: remove_all_stripe\n"
                "  - method: median_filter3d\n    parameters: {kernel_size: 3, dif: 0.02}\n"
                "  - method: fbp\n    parameters: {center: 19.5}\n",
    # a projection section after the reslice (a second reslice)
    "later": "pipeline:\n  - method: normalize\n  - method: remove_all_stripe\n"
             "  - method: median_filter\n    parameters: {axis: 1, size: 5}\n"
             "  - method: remove_all_stripe\n  - method: fbp\n    parameters: {center: 19.5}\n",
}


@pytest.mark.parametrize("kind", sorted(PIPELINES))
def test_pipeline_result_does_not_depend_on_block_size(kind: str) -> None:
    whole = _volume(PIPELINES[kind], 1000, 1000)
    scale = float(np.max(np.abs(whole)))
    for size in (1, 2, 3):
        np.testing.assert_allclose(_volume(PIPELINES[kind], size, size), whole, rtol=0,
                                   atol=1e-6 * scale, err_msg=f"{kind}, blocks of {size}")


def test_ranks_take_kernels_across_the_block_axis() -> None:
    """R ranks give them their neighbours (overlapping bands and later reslices, ADR
    0019's addendum: tests/run/test_halo_on_real_scans.py,
    tests/run/test_halo_later_on_ranks.py); a whole-frame step after a halo step of the
    projection section runs after a later reslice (test_whole_frame_tail_on_ranks.py)."""
    for kind in ("projection", "sinogram", "later"):
        refuse_on_ranks(parse_pipeline(PIPELINES[kind], REGISTRY, source="h.yaml").steps)
    paganin = parse_pipeline(PIPELINES["projection"].replace(
        "  - method: median_filter3d\n", "  - method: paganin_filter\n"), REGISTRY,
        source="p.yaml").steps
    refuse_on_ranks(paganin)
    assert len(rank_sections(paganin)) == len(sections_of(paganin)) + 2
    finder = parse_pipeline(PIPELINES["projection"].replace(
        "  - method: median_filter3d\n", "  - method: paganin_filter\n  - method: "
        "find_center_vo\n"), REGISTRY, source="f.yaml").steps
    with pytest.raises(ConfigError, match=r"find_center_vo.*before 'paganin_filter'.*one "
                       "rank") as error:
        refuse_on_ranks(finder)  # the CoR would be found before the Paganin filter
    assert "\n" not in str(error.value)
    local = parse_pipeline("pipeline:\n  - method: normalize\n  - method: median_filter\n"
                           "  - method: fbp\n", REGISTRY, source="local.yaml").steps
    refuse_on_ranks(local)  # a 2-D median in each frame: no neighbours needed


def test_the_memory_plan_counts_the_halo() -> None:
    """A block of n frames runs as n + 2 halo: the plan's peak is at that width."""
    def plan(kernel: int) -> tuple[int, int, int]:
        steps = parse_pipeline(f"pipeline:\n  - method: median_filter3d\n    parameters: "
                               f"{{kernel_size: {kernel}}}\n", REGISTRY, source="m.yaml").steps
        # the budget is the stage's own estimate at 40 frames (halo included)
        budget = steps[0].spec.memory((40, 64, 128), np.dtype("float32"), steps[0].params)
        found = plan_blocks(steps, rows=64, cols=128, angles=1000, dtype=np.dtype("float32"),
                            budget_bytes=budget)[0]
        return found.block, found.peak_bytes, budget

    assert plan(3)[0] == 40 - 2 and plan(13)[0] == 40 - 12  # 2 x 1 and 2 x 6 neighbours
    assert plan(3)[1] <= plan(3)[2]


def test_check_says_which_step_needs_neighbours(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    pipeline = tmp_path / "halo.yaml"
    pipeline.write_text(PIPELINES["projection"])
    assert main(["check", str(pipeline), "--frame", "64x64", "--projections", "90"]) == 0
    out = capsys.readouterr().out
    assert ("note: step 2 remove_outlier3d reaches 2 entries across its blocks: each block "
            "gets its real neighbours (R ranks: overlapping bands of rows, the band "
            "reconstructed at close)") in out
    assert "R ranks refuse it" not in out
    pipeline.write_text(PIPELINES["projection"].replace("  - method: median_filter3d\n",
                                                        "  - method: paganin_filter\n"))
    assert main(["check", str(pipeline), "--frame", "64x64", "--projections", "90"]) == 0
    said = capsys.readouterr().out
    assert "R ranks refuse it" not in said
    assert "note: R ranks: 3 reslices (a step that needs whole frames after a halo step" in said
    assert "step 3 median_filter3d reaches 1" in out and "step 1 normalize reaches" not in out


def _frames(scan: SimulatedScan) -> list[HeldFrame]:
    layout = scan.layout
    data = scan.read(0, layout.frames)
    return [HeldFrame(i, int(layout.image_keys[i]), float(layout.angles_deg[i]), data[i])
            for i in range(layout.frames)]


@pytest.mark.parametrize("order", ["in-order", "shuffled", "one-late", "reversed-pairs"])
def test_frames_out_of_order_get_their_real_neighbours(order: str) -> None:
    """Live frames arrive out of order: a block waits for the neighbours it needs, so
    the volume equals the stored scan's (blocks of 3 frames, a 5³ median)."""
    scan = SimulatedScan(SimulationConfig(rows=9, cols=40, projections=30, flats=4, darks=2,
                                          zinger_rate=1.0, seed=3))
    steps = parse_pipeline(PIPELINES["projection"], REGISTRY, source="halo.yaml").steps
    frames = _frames(scan)
    if order == "shuffled":  # each frame at most a few places from its own
        rng = np.random.default_rng(11)
        keys = np.arange(len(frames)) + rng.uniform(0, 4, len(frames))
        frames = [frames[i] for i in np.argsort(keys)]
    elif order == "one-late":  # projection 10 comes 4 frames late
        late = frames.pop(6 + 10)
        frames.insert(6 + 14, late)
    elif order == "reversed-pairs":
        frames = [f for pair in zip(frames[1::2], frames[0::2], strict=False) for f in pair]
    blocks: list[ProcessedBlock] = []
    processor = ScanProcessor(steps, start_header(scan.layout, "halo"), block_frames=3,
                              block_sinograms=2, on_sinograms=blocks.append)
    for first in range(0, len(frames), 2):  # two frames per message batch
        processor.add(frames[first:first + 2])
    processor.finish()
    assert processor.corrected_without_neighbours == 0
    assert processor.projections_done == 30
    whole = _volume(PIPELINES["projection"], 1000, 1000)
    np.testing.assert_allclose(np.concatenate([b.data for b in blocks]), whole, rtol=0,
                               atol=1e-6 * float(np.abs(whole).max()))


def test_a_frame_later_than_two_blocks_is_counted() -> None:
    """A projection later than two blocks (or lost) does not hold the scan: the block is
    corrected with the frames at hand, and counted."""
    scan = SimulatedScan(SimulationConfig(rows=9, cols=40, projections=30, flats=4, darks=2,
                                          seed=3))
    steps = parse_pipeline(PIPELINES["projection"], REGISTRY, source="halo.yaml").steps
    frames = _frames(scan)
    late = frames.pop(6 + 10)
    processor = ScanProcessor(steps, start_header(scan.layout, "halo"), block_frames=3,
                              block_sinograms=2)
    processor.add(frames)
    assert processor.corrected_without_neighbours > 0
    processor.add([late])
    processor.finish()
    assert processor.projections_done == 30


QUEUED = """pipeline:
  - method: normalize
  - method: minus_log
  - method: remove_stripe_based_fitting
    backend: cupy
    parameters: {order: 2, sigma: 5}
  - method: median_filter3d
    backend: cupy
    parameters: {kernel_size: 5}
"""


@pytest.mark.usefixtures("device_backend")
def test_a_queued_device_section_gets_its_neighbour_rows() -> None:
    """A sinogram section wholly on the device goes through the DeviceQueue: its bands
    are uploaded with their halo rows and cut on the device (a fake device here)."""
    scan = SimulatedScan(SimulationConfig(rows=10, cols=32, projections=36, flats=4, darks=2,
                                          seed=3))
    steps = parse_pipeline(QUEUED, REGISTRY, source="q.yaml").steps
    host = parse_pipeline(QUEUED.replace("    backend: cupy\n", ""), REGISTRY,
                          source="h.yaml").steps
    assert runs_on_device(sections_of(steps)[1].steps)
    results = []
    for run, block, device in ((host, 1000, None), (steps, 3, FakeStreams())):
        blocks: list[ProcessedBlock] = []
        processor = ScanProcessor(run, start_header(scan.layout, "q"), block_frames=8,
                                  block_sinograms=block, on_sinograms=blocks.append)
        processor.stream_device = device
        feed_reader(processor, scan, 8)
        results.append(np.concatenate([b.data for b in blocks]))
        assert all(isinstance(b.data, np.ndarray) for b in blocks)
    np.testing.assert_allclose(results[1], results[0], rtol=0,
                               atol=1e-6 * float(np.abs(results[0]).max()))
