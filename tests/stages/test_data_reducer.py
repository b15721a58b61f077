"""httomolib's ``data_reducer``: against a port of its body, and through pipeline runs on
the real DIAD scan (100 darks, 100 flats), where HTTomo applies it: to the darks and
flats, once, before the flat/dark correction.

The port follows httomolib ``httomolib/misc/morph.py`` (commit c221949, its NumPy
branch); HTTomo's use of it: ``httomo/method_wrappers/datareducer.py`` and
``httomo/transform_layer.py`` (``insert_data_reducer``), httomo commit f766bda7.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import pytest

from stages.prep import reference_reducer
from stages.prep.reference_reducer import reduce_references
from stages.recon.fbp import fbp
from stages.registry import REGISTRY
from streamer.cli import main
from streamer.errors import ConfigError
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.executor import (
    ProcessedBlock,
    ScanProcessor,
    feed_reader,
    process_reader,
)
from streamer.sources.formats import LoadOptions, open_scan
from streamer.sources.sender import start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig

LOADER = "- method: standard_tomo\n  module_path: httomo.data.hdf.loaders\n  parameters: {}\n"
REDUCER = ("- method: data_reducer\n  module_path: httomolib.misc.morph\n  parameters:\n"
           "    axis: {axis}\n    method: {method}\n")
CORRECTION = ("- method: dark_flat_field_correction\n  module_path: httomolibgpu.prep.normalize\n"
              "  parameters: {}\n")


# ------------------------------------------------------------------ upstream port
def upstream_data_reducer(data: npt.NDArray[Any], axis: int = 0,
                          method: str = "mean") -> npt.NDArray[np.float32]:
    n, m, z = data.shape
    shape = {0: (1, m, z), 1: (n, 1, z), 2: (n, m, 1)}[axis]
    reduced = np.empty(shape, dtype=np.float32)
    target = np.squeeze(reduced, axis=axis)  # a view, as upstream's reduced_data[0, :, :]
    if method == "mean":
        np.mean(data, axis=axis, dtype=np.float32, out=target)
    else:
        np.median(data, axis=axis, out=target)
    return reduced


def steps(text: str):  # type: ignore[no-untyped-def]
    return parse_pipeline(text, REGISTRY, source="test.yaml").steps


# ------------------------------------------------------------------ the reduction
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("method", ["mean", "median"])
def test_reduction_matches_httomolib(axis: int, method: str) -> None:
    stack = np.random.default_rng(axis).random((7, 12, 15), dtype=np.float32) * 4e4
    expected = upstream_data_reducer(stack, axis, method)  # type: ignore[arg-type]
    ours = reduce_references(stack, axis, method)  # type: ignore[arg-type]
    if axis == 0:
        assert ours.shape == (1, 12, 15)
        np.testing.assert_array_equal(ours, expected)
    else:  # spread back over the frame: what HTTomo's correction broadcasts
        assert ours.shape == stack.shape and ours.flags.c_contiguous
        np.testing.assert_array_equal(ours, np.broadcast_to(expected, stack.shape))
    assert ours.dtype == np.float32


def test_auto_is_the_frame_axis_and_an_empty_stack_stays_empty() -> None:
    stack = np.random.default_rng(3).random((4, 5, 6), dtype=np.float32)
    np.testing.assert_array_equal(reduce_references(stack, "auto", "median"),
                                  upstream_data_reducer(stack, 0, "median"))
    assert reduce_references(np.empty((0, 5, 6), np.float32)).shape == (0, 5, 6)


def test_the_template_is_accepted_and_blocks_pass_unchanged() -> None:
    pipeline = steps(LOADER + REDUCER.format(axis="auto", method="mean") + CORRECTION)
    reducer = pipeline[0]
    assert reducer.name == "data_reducer" and reducer.params.axis == "auto"  # type: ignore[attr-defined]
    block = np.random.default_rng(0).random((3, 4, 5), dtype=np.float32)
    np.testing.assert_array_equal(reducer.spec.run(block, reducer.params), block)
    with pytest.raises(ConfigError, match=r"parameters.method"):
        steps(LOADER + REDUCER.format(axis=0, method="max"))
    with pytest.raises(ConfigError, match=r"parameters.axis"):
        steps(LOADER + REDUCER.format(axis=3, method="mean"))


def test_placed_where_it_cannot_act_it_is_refused() -> None:
    reducer = REDUCER.format(axis="auto", method="median")
    with pytest.raises(ConfigError, match=r"data_reducer .*expected it before "
                                          r"'dark_flat_field_correction'.*got after"):
        steps(LOADER + CORRECTION + reducer)
    stripe = ("- method: remove_stripe_based_sorting\n  module_path: tomopy.prep.stripe\n"
              "  parameters: {}\n")
    with pytest.raises(ConfigError, match=r"expected it before the sinogram stage"):
        steps(LOADER + stripe + reducer)
    finder = ("- method: find_center_vo\n  module_path: httomolibgpu.recon.rotation\n"
              "  parameters: {}\n")
    steps(LOADER + finder + reducer + CORRECTION)  # a CoR finder runs after correction


# ------------------------------------------------------------------ in a run
def _corrected(pipeline: str, rows: tuple[int, int], path: Path,
               ) -> tuple[dict[int, npt.NDArray[np.float32]], npt.NDArray[Any],
                          npt.NDArray[Any]]:
    corrected: dict[int, npt.NDArray[np.float32]] = {}

    def keep(block: ProcessedBlock) -> None:
        corrected.update(zip(block.indices.tolist(), block.data, strict=True))

    with open_scan(path, LoadOptions(rows=rows)) as reader:
        layout = reader.layout
        process_reader(steps(pipeline), reader, start_header(layout, "diad"),
                       block_frames=257, on_projections=keep)
        frames = reader.read(0, layout.frames).astype(np.float64)
    return corrected, frames, np.asarray(layout.image_keys)


def test_median_references_on_the_real_diad_scan(shared_data: Path) -> None:
    """The pipeline's median reducer: every streamed block is corrected with the
    per-pixel median of the 100 darks and of the 100 flats (computed here from the raw
    frames), not with their means."""
    path = shared_data / "real/diad_k11-18014/k11-18014.nxs"
    text = LOADER + REDUCER.format(axis="auto", method="median") + CORRECTION
    corrected, frames, keys = _corrected(text, (6, 10), path)
    dark = np.median(frames[keys == 2], axis=0)
    flat = np.median(frames[keys == 1], axis=0)
    projections = np.flatnonzero(keys == 0)
    assert sorted(corrected) == projections.tolist()
    for index in (100, 1700, 3100):
        expected = (frames[index] - dark) / (flat - dark)
        np.testing.assert_allclose(corrected[index], expected, rtol=2e-6)
    # and the method matters: the means give other numbers (the beam drifts between the
    # flat groups, so the mean and median flats differ)
    mean_dark, mean_flat = frames[keys == 2].mean(axis=0), frames[keys == 1].mean(axis=0)
    by_mean = (frames[100] - mean_dark) / (mean_flat - mean_dark)
    assert np.abs(corrected[100] / by_mean - 1).max() > 1e-3


def test_the_template_defaults_give_the_plain_correction(shared_data: Path) -> None:
    """HTTomo's own insertion (axis auto = 0, mean) changes nothing in the result: the
    correction averages the references anyway."""
    path = shared_data / "real/diad_k11-18014/k11-18014.nxs"
    reduced, _, _ = _corrected(
        LOADER + REDUCER.format(axis="auto", method="mean") + CORRECTION, (8, 10), path)
    plain, _, _ = _corrected(LOADER + CORRECTION, (8, 10), path)
    assert sorted(reduced) == sorted(plain)
    for index in (100, 3100):
        np.testing.assert_allclose(reduced[index], plain[index], rtol=1e-6)


def test_reduced_flats_reach_a_time_interpolating_correction_as_one_group(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``normalize_interpolated`` after the reducer sees one flat (at the first flat's
    frame index) and corrects every projection with it, as plain ``normalize`` with the
    median flat; the reduction happens once per scan, not per block."""
    scan = SimulatedScan(SimulationConfig(rows=4, cols=24, projections=30, flats=6, darks=3,
                                          seed=2))
    frames = scan.read(0, scan.layout.frames).astype(np.float32)
    keys = np.asarray(scan.layout.image_keys)
    pipeline = steps("pipeline:\n  - method: data_reducer\n    parameters: {method: median}\n"
                     "  - method: normalize_interpolated\n")
    calls: list[tuple[int, ...]] = []

    def counting(stack: npt.NDArray[Any], axis: Any, method: Any) -> npt.NDArray[np.float32]:
        calls.append(stack.shape)
        return reduce_references(stack, axis, method)

    monkeypatch.setattr(reference_reducer, "reduce_references", counting)
    out: dict[int, npt.NDArray[np.float32]] = {}
    processor = ScanProcessor(pipeline, start_header(scan.layout, "sim"), block_frames=7,
                              keep_sinogram_section=False,
                              on_projections=lambda b: out.update(
                                  zip(b.indices.tolist(), b.data, strict=True)))
    feed_reader(processor, scan, 7)
    assert calls == [(3, 4, 24), (6, 4, 24)]  # darks and flats, once for the scan
    expected = REGISTRY["normalize"].fn(
        frames[keys == 0], darks=np.median(frames[keys == 2], axis=0)[None],
        flats=np.median(frames[keys == 1], axis=0)[None])
    ours = np.stack([out[i] for i in sorted(out)])
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)


def test_recon_with_the_reducer_reconstructs_from_median_references(
        shared_data: Path, tmp_path: Path) -> None:
    """`recon` (the one-rank runner) with a pipeline holding ``data_reducer`` (median):
    the slices equal our FBP of the sinograms corrected with the median dark
    and flat computed here."""
    path = shared_data / "real/diad_k11-18014/k11-18014.nxs"
    pipeline = tmp_path / "reduced.yaml"
    pipeline.write_text("pipeline:\n  - method: data_reducer\n    parameters: {method: median}\n"
                        "  - method: dark_flat_field_correction\n  - method: minus_log\n"
                        "  - method: fbp\n    parameters: {center: 12.5}\n")
    out = tmp_path / "rec.h5"
    assert main(["recon", str(path), "-o", str(out), "--pipeline", str(pipeline),
                 "--rows", "8:10", "--quiet"]) == 0
    with h5py.File(out, "r") as handle:
        ours = handle["/entry/reconstruction/data"][()]
    with open_scan(path, LoadOptions(rows=(8, 10))) as reader:
        layout = reader.layout
        frames = reader.read(0, layout.frames).astype(np.float64)
    keys = np.asarray(layout.image_keys)
    dark = np.median(frames[keys == 2], axis=0)
    flat = np.median(frames[keys == 1], axis=0)
    line_integrals = -np.log((frames[keys == 0] - dark) / (flat - dark))
    reference = fbp(np.ascontiguousarray(line_integrals.transpose(1, 0, 2), np.float32),
                    angles_deg=np.asarray(layout.angles_deg)[keys == 0], center=12.5,
                    output_size=ours.shape[-1])
    assert ours.shape == reference.shape == (2, 26, 26)
    scale = np.abs(reference).max()
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-4 * scale)
