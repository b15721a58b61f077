"""HTTomo's output tail (``calculate_stats → rescale_to_int(glob_stats) → save_to_images``)
on every rank count: each rank tells the others the statistics of the slices it wrote,
rescales its own slices with the merged ones and writes their images, named by their
index in the volume; the images equal the one-rank images file by file (``recon`` on 2
and 3 in-process ranks, HDF5/TIFF/Zarr outputs, a rank without rows, several reslices,
an older template without ``glob_stats``); the ``run`` service writes them per scan on
1 and 2 ranks; an axis across the bands is refused with one line before reading."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from stages.registry import REGISTRY
from streamer.errors import ConfigError, SinkError
from streamer.exchange.links import MemoryLink
from streamer.pipeline.config import parse_pipeline
from streamer.run.from_file import ReconSettings, run_recon
from streamer.run.output import ScanOutput
from streamer.run.ranks import RankedReconstruction
from streamer.sources.formats import LoadOptions, open_scan
from streamer.sources.scan import FrameReader
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.pipeline.test_httomo_full_pipelines import FULL, _offset_axis_scan
from tests.run.ranks import run_ranks, serve_scans
from tests.run.test_later_reslices_on_ranks import on_ranks
from tests.run.test_service_on_ranks import CONFIG as SERVICE_CONFIG
from tests.run.test_service_on_ranks import JOIN_S
from tests.run.test_service_on_ranks import _source as service_source

TAIL = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: fbp
    parameters: {center: CENTER}
  - method: calculate_stats
    module_path: httomo.methods
    parameters: {}
    id: statistics
    side_outputs:
      glob_stats: glob_stats
  - method: rescale_to_int
    module_path: httomolib.misc.rescale
    parameters:
      perc_range_min: 5.0
      perc_range_max: 95.0
      bits: BITS
      glob_stats: ${{statistics.side_outputs.glob_stats}}
  - method: save_to_images
    module_path: httomolib.misc.images
    parameters:
      subfolder_name: images
      axis: AXIS
      file_format: tif
"""

#: An older template: save_to_images with its own bits and window, no glob_stats.
OLDER = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: fbp
    parameters: {center: 23.5}
  - method: save_to_images
    module_path: httomolib.misc.images
    parameters:
      subfolder_name: older
      axis: 1
      bits: 16
      perc_range_min: 0.0
      perc_range_max: 100.0
"""


def tail(center: float = 23.5, bits: int = 8, axis: str = "auto") -> str:
    return (TAIL.replace("CENTER", str(center)).replace("BITS", str(bits))
            .replace("AXIS", axis))


def images(folder: Path) -> dict[str, np.ndarray]:
    return {path.name: tifffile.imread(path) for path in sorted(folder.glob("*.tif"))}


def assert_same_images(one: Path, ranks: Path, count: int) -> None:
    expected, found = images(one), images(ranks)
    assert len(expected) == count and sorted(found) == sorted(expected)
    for name, image in expected.items():
        assert found[name].dtype == image.dtype
        np.testing.assert_array_equal(found[name], image, err_msg=name)
    stacked = np.stack(list(expected.values()))
    assert stacked.min() == 0 and stacked.max() > 0  # not all one value: the window matters


@pytest.mark.parametrize(("ranks", "rows", "output_format", "bits"), [
    (2, 5, "hdf5", 8), (3, 5, "tiff", 16), (3, 2, "zarr", 8), (3, 2, "hdf5", 16)],
    ids=["2-ranks-hdf5", "3-ranks-tiff", "3-ranks-zarr-one-empty-band",
         "3-ranks-hdf5-one-empty-band"])
def test_recon_images_on_ranks_equal_one_rank(tmp_path: Path, ranks: int, rows: int,
                                              output_format: str, bits: int) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(tail(bits=bits))
    config = SimulationConfig(rows=rows, cols=48, projections=40, flats=4, darks=2)
    suffix = {"hdf5": ".h5", "tiff": "", "zarr": ".zarr"}[output_format]
    (tmp_path / "one").mkdir()
    (tmp_path / "ranks").mkdir()
    one = run_recon(SimulatedScan(config), ReconSettings(
        tmp_path / "one" / f"v{suffix}", pipeline=pipeline, block_frames=7,
        output_format=output_format))
    assert one.images is not None and one.images[1] == rows
    results = on_ranks(ranks, lambda: SimulatedScan(config), ReconSettings(
        tmp_path / "ranks" / f"v{suffix}", pipeline=pipeline, block_frames=7,
        block_sinograms=1, output_format=output_format))
    output = results[0]
    assert isinstance(output, ScanOutput) and output.complete, output
    assert output.images is not None and output.images[1] == rows
    assert output.figures["images"]["count"] == rows
    assert f"save_to_images: {rows} TIFFs in {output.images[0]}" in output.notes
    assert_same_images(one.images[0], output.images[0], rows)
    assert output.images[0].relative_to(tmp_path / "ranks") == one.images[0].relative_to(
        tmp_path / "one")


def test_older_template_without_glob_stats_writes_images_on_ranks(tmp_path: Path) -> None:
    """``save_to_images`` with its own bits and window (no ``calculate_stats``): images
    too, not silence (before, R ranks wrote none and said nothing)."""
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(OLDER)
    config = SimulationConfig(rows=4, cols=48, projections=40, flats=4, darks=2)
    one = run_recon(SimulatedScan(config), ReconSettings(tmp_path / "one.h5",
                                                         pipeline=pipeline, block_frames=7))
    (tmp_path / "r").mkdir()
    output = on_ranks(2, lambda: SimulatedScan(config), ReconSettings(
        tmp_path / "r" / "v.h5", pipeline=pipeline, block_frames=7))[0]
    assert isinstance(output, ScanOutput) and output.images is not None and one.images
    assert output.images[0] == tmp_path / "r" / "older"
    assert_same_images(one.images[0], output.images[0], 4)
    assert next(iter(images(output.images[0]).values())).dtype == np.uint16


@pytest.mark.parametrize("ranks", [2, 3])
def test_deg360_paganin_with_its_image_tail_on_ranks_equals_one_rank(
        tmp_path: Path, ranks: int) -> None:
    """HTTomo's full pipeline as it ships (three reslices, then the image tail by
    reference): the same images as one rank."""
    _offset_axis_scan(tmp_path / "offset360.h5")
    pipeline = FULL / "deg360_paganin_FBP3d_tomobar.yaml"

    def reader() -> FrameReader:
        return open_scan(tmp_path / "offset360.h5", LoadOptions())

    (tmp_path / "one").mkdir()
    (tmp_path / "ranks").mkdir()
    with reader() as scan:
        one = run_recon(scan, ReconSettings(tmp_path / "one" / "v.h5", pipeline=pipeline,
                                            block_frames=16))
    assert one.images is not None
    output = on_ranks(ranks, reader, ReconSettings(tmp_path / "ranks" / "v.h5",
                                                   pipeline=pipeline, block_frames=16,
                                                   block_sinograms=3))[0]
    assert isinstance(output, ScanOutput) and output.complete, output
    assert output.images is not None
    assert_same_images(one.images[0], output.images[0], one.images[1])


def test_an_axis_across_the_bands_is_refused_on_ranks_before_reading(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(tail(axis="2"))
    opened: list[int] = []

    def reader() -> SimulatedScan:
        opened.append(1)
        return SimulatedScan(SimulationConfig(rows=2, cols=16, projections=8))

    with pytest.raises(ConfigError) as refused:
        on_ranks(2, reader, ReconSettings(tmp_path / "x.h5", pipeline=pipeline))
    message = str(refused.value)
    assert "\n" not in message and "save_to_images" in message and "axis 2" in message
    assert "expected axis: auto or 1" in message
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("ranks", [1, 2])
def test_run_service_writes_each_scans_images_in_its_own_folder(tmp_path: Path,
                                                                ranks: int) -> None:
    """``run`` (the reconstruction in the worker thread), two scans: each scan's images
    under ``<out>/<scan>/images``, equal to ``recon``'s of the same scan on one rank."""
    text = tail(center=16.0)
    steps = parse_pipeline(text, REGISTRY, source="service.yaml").steps
    ready, address = threading.Event(), []
    source = service_source(ranks, ready, address)
    assert ready.wait(JOIN_S)
    out = tmp_path / "volumes"

    def rank(link: MemoryLink) -> list[ScanOutput]:
        ranked = RankedReconstruction(steps, text, out, link.duplicate(), link.duplicate(),
                                      block_frames=8, block_sinograms=3,
                                      memory_bytes=1 << 28, background=True)
        return serve_scans(link, ranked, address[0], scans=2, wait_s=JOIN_S)

    results = run_ranks(ranks, rank)
    source.join(JOIN_S)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(text)
    one = run_recon(SimulatedScan(SERVICE_CONFIG), ReconSettings(tmp_path / "one.h5",
                                                                 pipeline=pipeline))
    assert one.images is not None
    outputs = {output.scan: output for output in results[0]}
    assert sorted(outputs) == ["a", "b"]
    for scan, output in outputs.items():
        assert output.complete and output.images is not None, output
        assert output.images[0] == out / scan / "images"
        assert output.figures["images"] == {"folder": str(output.images[0]),
                                            "count": SERVICE_CONFIG.rows}
        assert_same_images(one.images[0], output.images[0], SERVICE_CONFIG.rows)


def test_a_failed_part_leaves_no_images_on_any_rank_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 1's part fails (its disk, say): it still takes part in the exchange (sends no
    statistics), so rank 0 does not wait; no rank writes images with a window that lacks a
    band, and the output says so."""
    original = RankedReconstruction._write_part

    def failing(self: RankedReconstruction, *args: Any, **kwargs: Any) -> Any:
        if self.control.rank == 1:
            raise SinkError("part.h5: cannot write there: disk full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RankedReconstruction, "_write_part", failing)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(tail())
    config = SimulationConfig(rows=4, cols=48, projections=40, flats=4, darks=2)
    output = on_ranks(2, lambda: SimulatedScan(config), ReconSettings(
        tmp_path / "v.h5", pipeline=pipeline, block_frames=7))[0]
    assert isinstance(output, ScanOutput) and not output.complete and output.images is None
    assert output.error is not None and "rank 1: part.h5: cannot write there" in output.error
    folder = tmp_path / "images"
    assert f"save_to_images: no images: the volume has errors ({folder} not written)" \
        in output.notes
    assert not list(folder.glob("*.tif"))
