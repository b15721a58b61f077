"""The OME-Zarr sink on its own: the pyramid equals a NumPy 2× mean of level 0, the NGFF
metadata is valid, a store read after one band gives that band and marks the rest
missing, a killed writer leaves a store that opens and says it is incomplete, and the
bands of several writers (ranks) make one store with the coarse slices across their
edges built at the finish."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from streamer.errors import SinkError
from streamer.sinks.omezarr import (
    ZarrVolumeWriter,
    finish_store,
    read_written,
    write_store_placeholder,
)
from streamer.sinks.pyramid import downsample, level_count, level_shape
from streamer.sinks.registry import check_output
from tests.sinks.ngff import validate_image


def geometry(slices: int, side: int = 40, **extra: Any) -> dict[str, Any]:
    return {"detector_rows": list(range(10, 10 + slices)), "slice_shape": (side, side + 3),
            "angles_deg": np.linspace(0.0, 180.0, 7, endpoint=False),
            "center_of_rotation": 20.5, "center_method": "vo (pipeline)",
            "pipeline_yaml": "pipeline: []", "scan": "z1", **extra}


def volume(slices: int, side: int = 40, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(slices, side, side + 3)).astype(np.float32)


def mean_of_blocks(level: np.ndarray) -> np.ndarray:
    """An independent 2× mean: every output voxel from an explicit slice of ``level``."""
    z, y, x = level_shape(level.shape, 1)
    out = np.empty((z, y, x), dtype=np.float64)
    for k in range(z):
        for j in range(y):
            for i in range(x):
                out[k, j, i] = level[2 * k:2 * k + 2, 2 * j:2 * j + 2, 2 * i:2 * i + 2].mean(
                    dtype=np.float64)
    return out


def read_levels(store: Path) -> list[np.ndarray]:
    group = zarr.open_group(store=str(store), mode="r")
    levels = group.attrs["tomo_streamer"]["levels"]
    return [np.asarray(group[str(level)][:]) for level in range(levels)]


def assert_pyramid(levels: list[np.ndarray]) -> None:
    """Each level is the NumPy 2× mean of the level above (float32 rounding only)."""
    for finer, coarser in itertools.pairwise(levels):
        np.testing.assert_allclose(coarser, mean_of_blocks(finer), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("shape", "levels"), [((16, 16), 2), ((40, 43), 2), ((64, 64), 3),
                                               ((128, 100), 3), ((2560, 2560), 4)])
def test_the_level_count_follows_the_slice_size(shape: tuple[int, int], levels: int) -> None:
    assert level_count(shape) == levels


def test_downsample_is_the_mean_of_each_block_odd_edges_included() -> None:
    block = volume(5, 9)  # odd on every axis
    np.testing.assert_allclose(downsample(block), mean_of_blocks(block), rtol=1e-6)
    quantised = np.arange(3 * 5 * 4, dtype=np.uint8).reshape(3, 5, 4)
    np.testing.assert_array_equal(downsample(quantised), np.rint(mean_of_blocks(quantised)))
    with pytest.raises(SinkError, match=r"expected a non-empty \(z, y, x\) block"):
        downsample(np.zeros((0, 4, 4), np.float32))


@pytest.mark.parametrize("order", ["in order", "any order"])
def test_the_store_holds_the_volume_and_a_pyramid_of_it(tmp_path: Path, order: str) -> None:
    data = volume(13, 64)
    store = tmp_path / "v.ome.zarr"
    bands = [(0, 5), (5, 8), (8, 13)] if order == "in order" else [(8, 13), (0, 3), (3, 8)]
    with ZarrVolumeWriter(store, **geometry(13, 64)) as writer:
        for a, b in bands:
            writer.write(a, data[a:b])
    levels = read_levels(store)
    assert len(levels) == 3 and [lv.shape for lv in levels] == [
        (13, 64, 67), (7, 32, 34), (4, 16, 17)]
    np.testing.assert_array_equal(levels[0], data)
    assert_pyramid(levels)
    assert all(read_written(store, level).all() for level in range(3))
    assert validate_image(store) == []
    attributes = zarr.open_group(store=str(store), mode="r").attrs["tomo_streamer"]
    assert attributes["complete"] is True and attributes["slices_written"] == 13
    assert attributes["center_of_rotation"] == 20.5
    assert attributes["center_method"] == "vo (pipeline)"
    assert attributes["detector_rows"] == list(range(10, 23))


def test_metadata_units_and_transforms(tmp_path: Path) -> None:
    store = tmp_path / "v.ome.zarr"
    ZarrVolumeWriter(store, **geometry(2, 64, metadata={"pixel_size_um": 0.65})).close(
        complete=False)
    ome = json.loads((store / "zarr.json").read_text())["attributes"]["ome"]
    (image,) = ome["multiscales"]
    assert [(a["name"], a["type"], a["unit"]) for a in image["axes"]] == [
        ("z", "space", "micrometer"), ("y", "space", "micrometer"),
        ("x", "space", "micrometer")]
    transforms = [d["coordinateTransformations"] for d in image["datasets"]]
    assert [t["type"] for t in transforms[2]] == ["scale", "translation"]
    np.testing.assert_allclose(transforms[2][0]["scale"], [2.6] * 3)
    np.testing.assert_allclose(transforms[2][1]["translation"], [0.975] * 3)  # (4-1)/2 px
    assert transforms[0] == [{"type": "scale", "scale": [0.65] * 3}]
    assert validate_image(store) == []
    # Without a pixel size the unit is left out (unknown) and the scale is in pixels.
    ZarrVolumeWriter(tmp_path / "p.ome.zarr", **geometry(2)).close(complete=False)
    image = json.loads((tmp_path / "p.ome.zarr" / "zarr.json").read_text())[
        "attributes"]["ome"]["multiscales"][0]
    assert all("unit" not in axis for axis in image["axes"])


def test_the_validator_catches_what_readers_rely_on(tmp_path: Path) -> None:
    store = tmp_path / "v.ome.zarr"
    ZarrVolumeWriter(store, **geometry(2)).close(complete=False)
    document = json.loads((store / "zarr.json").read_text())
    image = document["attributes"]["ome"]["multiscales"][0]
    image["datasets"].reverse()
    image["axes"][0]["unit"] = "pixel"
    (store / "zarr.json").write_text(json.dumps(document))
    problems = validate_image(store)
    assert any("fine to coarse" in p for p in problems)
    assert any("unit 'pixel'" in p for p in problems)


def test_a_store_read_after_one_band_gives_it_and_marks_the_rest_missing(
        tmp_path: Path) -> None:
    data = volume(9, 64)
    store = tmp_path / "v.ome.zarr"
    writer = ZarrVolumeWriter(store, **geometry(9, 64))
    writer.write(0, data[:5])
    reader = zarr.open_group(store=str(store), mode="r")  # another reader, mid-scan
    assert validate_image(store) == []
    assert reader.attrs["tomo_streamer"]["complete"] is False
    written = read_written(store)
    np.testing.assert_array_equal(written, np.arange(9) < 5)
    level0 = np.asarray(reader["0"][:])
    np.testing.assert_array_equal(level0[:5], data[:5])
    assert np.isnan(level0[5:]).all()
    # Level 1 slice 2 needs level-0 slices 4 and 5: not yet; 0 and 1 are there.
    np.testing.assert_array_equal(read_written(store, 1), [True, True, False, False, False])
    level1 = np.asarray(reader["1"][:])
    np.testing.assert_allclose(level1[:2], mean_of_blocks(data[:4]), rtol=1e-6, atol=1e-6)
    assert np.isnan(level1[2:]).all()
    writer.write(5, data[5:])
    writer.close(complete=True)
    assert_pyramid(read_levels(store))


def test_an_incomplete_store_says_so(tmp_path: Path) -> None:
    store = tmp_path / "v.ome.zarr"
    writer = ZarrVolumeWriter(store, **geometry(4))
    writer.write(1, volume(1)[:1])
    with pytest.raises(SinkError, match=r"expected every slice of \[0, 4\) written, got 1 "
                                        r"of 4 slices written \(\[1, 2\)\)"):
        writer.close(complete=True)
    attributes = zarr.open_group(store=str(store), mode="r").attrs["tomo_streamer"]
    assert attributes["complete"] is False and attributes["written_ranges"] == [[1, 2]]
    assert attributes["incomplete_reasons"] == ["1 of 4 slices written ([1, 2))"]


def test_an_existing_store_is_kept_unless_overwrite(tmp_path: Path) -> None:
    store = tmp_path / "v.ome.zarr"
    ZarrVolumeWriter(store, **geometry(2)).close(complete=False)
    with pytest.raises(SinkError, match="expected a new store, got an existing one"):
        ZarrVolumeWriter(store, **geometry(2))
    with pytest.raises(SinkError, match="expected a new store, got an existing one"):
        check_output(store, "zarr", overwrite=False)
    check_output(store, "zarr", overwrite=True)
    writer = ZarrVolumeWriter(store, **geometry(3), overwrite=True)
    writer.write(0, volume(3))
    writer.close(complete=True)
    assert read_written(store).shape == (3,)
    assert not (tmp_path / ".v.ome.zarr.old").exists()
    (tmp_path / "file.zarr").write_text("")
    with pytest.raises(SinkError, match=r"expected a folder \(an OME-Zarr store\), got "
                                        r"an existing file"):
        ZarrVolumeWriter(tmp_path / "file.zarr", **geometry(2))


def test_bad_bands_and_regions_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match=r"region: expected \(a, b\) with 0 <= a < b <= 4"):
        ZarrVolumeWriter(tmp_path / "r.ome.zarr", **geometry(4), region=(3, 9))
    write_store_placeholder(tmp_path / "r.ome.zarr", scan="z1", ranks=2)
    writer = ZarrVolumeWriter(tmp_path / "r.ome.zarr", **geometry(4), region=(0, 2))
    with pytest.raises(SinkError, match=r"expected slices within this writer's region "
                                        r"\[0, 2\), got \[1, 3\)"):
        writer.write(1, volume(2))
    with pytest.raises(SinkError, match=r"expected the store of scan 'other', got one of "
                                        r"'z1'"):
        ZarrVolumeWriter(tmp_path / "r.ome.zarr", **{**geometry(4), "scan": "other"},
                         region=(2, 4))


@pytest.mark.parametrize("bands", [[(0, 5), (5, 9), (9, 13)], [(0, 7), (7, 13)],
                                   [(0, 4), (4, 5), (5, 13)]])
def test_writers_of_bands_make_one_store_finished_by_rank_zero(
        tmp_path: Path, bands: list[tuple[int, int]]) -> None:
    """As R ranks do: a placeholder, one writer per band (any order), then the finish
    builds the coarse slices across band edges and says complete."""
    data = volume(13, 64)
    store = tmp_path / "r.ome.zarr"
    write_store_placeholder(store, scan="z1", ranks=len(bands))
    assert zarr.open_group(store=str(store), mode="r").attrs["tomo_streamer"][
        "status"] == "in progress"
    writers = [ZarrVolumeWriter(store, **geometry(13, 64), region=band) for band in bands]
    for writer, (a, b) in reversed(list(zip(writers, bands, strict=True))):
        writer.write(a, data[a:b])
        writer.close(complete=True)
    straddling = ~read_written(store, 1)
    assert straddling.any() == any(a % 2 for a, _ in bands)
    summary = finish_store(store, complete=True, report={"scan": "z1"})
    assert summary.complete and summary.slices_written == 13
    assert summary.center_of_rotation == 20.5
    levels = read_levels(store)
    np.testing.assert_array_equal(levels[0], data)
    assert_pyramid(levels)
    assert all(read_written(store, level).all() for level in range(len(levels)))
    attributes = zarr.open_group(store=str(store), mode="r").attrs["tomo_streamer"]
    assert attributes["report"] == {"scan": "z1"} and "status" not in attributes
    assert validate_image(store) == []


def test_a_store_a_rank_never_wrote_is_finished_incomplete(tmp_path: Path) -> None:
    store = tmp_path / "r.ome.zarr"
    write_store_placeholder(store, scan="z1", ranks=2)
    writer = ZarrVolumeWriter(store, **geometry(6), region=(0, 3))
    writer.write(0, volume(3))
    writer.close(complete=True)
    summary = finish_store(store, complete=True, report=None,
                           reasons=["rank 1: wrote nothing within 1 s"])
    assert not summary.complete and summary.slices_written == 3
    attributes = zarr.open_group(store=str(store), mode="r").attrs["tomo_streamer"]
    assert attributes["incomplete_reasons"] == ["rank 1: wrote nothing within 1 s"]
    assert np.isnan(np.asarray(zarr.open_array(store=str(store), path="0")[3:])).all()


WRITER = r"""
import sys, time
from pathlib import Path
import numpy as np
import streamer.sinks.omezarr as omezarr

target, point = Path(sys.argv[1]), sys.argv[2]
real_publish = omezarr._publish

def publish(built, path):
    if point == "before_rename":
        print("at before_rename", flush=True)
        time.sleep(120)
    real_publish(built, path)

omezarr._publish = publish
writer = omezarr.ZarrVolumeWriter(
    target, detector_rows=range(4), slice_shape=(8, 8), angles_deg=np.arange(5.0),
    center_of_rotation=3.5, center_method="given", pipeline_yaml="pipeline: []",
    scan="crash", overwrite=True)
writer.write(0, np.ones((2, 8, 8), np.float32))
print("at after_band", flush=True)
time.sleep(120)
"""


def kill_at(target: Path, point: str) -> None:
    """Run the writer until it reaches ``point``, then ``kill -9`` it (no timing: the
    writer waits there)."""
    with subprocess.Popen([sys.executable, "-c", WRITER, str(target), point],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline()
        if line.strip() != f"at {point}":
            process.kill()
            pytest.fail(f"the writer did not reach {point}: {process.stderr.read()}")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_killed_before_the_rename_leaves_no_visible_store(tmp_path: Path) -> None:
    kill_at(tmp_path / "v.ome.zarr", "before_rename")
    assert not (tmp_path / "v.ome.zarr").exists()
    assert (tmp_path / ".v.ome.zarr.tmp").is_dir()  # hidden; the next writer removes it
    writer = ZarrVolumeWriter(tmp_path / "v.ome.zarr", **geometry(2))
    writer.close(complete=False)
    assert not (tmp_path / ".v.ome.zarr.tmp").exists()


def test_killed_after_a_band_leaves_a_store_that_opens_and_says_incomplete(
        tmp_path: Path) -> None:
    store = tmp_path / "v.ome.zarr"
    kill_at(store, "after_band")
    group = zarr.open_group(store=str(store), mode="r")
    assert group.attrs["tomo_streamer"]["complete"] is False
    np.testing.assert_array_equal(read_written(store), [True, True, False, False])
    level0 = np.asarray(group["0"][:])
    assert (level0[:2] == 1).all() and np.isnan(level0[2:]).all()
    assert validate_image(store) == []


def test_the_image_tail_reads_a_store_as_it_reads_hdf5(tmp_path: Path) -> None:
    """HTTomo's ``save_to_images`` after ``recon -o x.ome.zarr``: the same TIFFs as from
    the HDF5 file of the same volume."""
    import tifffile

    from streamer.pipeline.images import ImageTail, write_images
    from streamer.sinks.hdf5 import Hdf5VolumeWriter

    data = volume(3, 16)
    for name, writer in (("v.h5", Hdf5VolumeWriter), ("v.ome.zarr", ZarrVolumeWriter)):
        (tmp_path / name.split(".")[-1]).mkdir()
        with writer(tmp_path / name.split(".")[-1] / name, **geometry(3, 16)) as sink:
            sink.write(0, data)
    tail = ImageTail("images", 0, 8, (0.0, 100.0), True)
    folder_h5, count_h5 = write_images(tmp_path / "h5" / "v.h5", "hdf5", tail)
    folder_zarr, count_zarr = write_images(tmp_path / "zarr" / "v.ome.zarr", "zarr", tail)
    assert count_h5 == count_zarr == 3 and folder_zarr == tmp_path / "zarr" / "images"
    for index in range(3):
        np.testing.assert_array_equal(tifffile.imread(folder_zarr / f"{index:05d}.tif"),
                                      tifffile.imread(folder_h5 / f"{index:05d}.tif"))


@pytest.mark.parametrize("seed", range(6))
def test_any_bands_in_any_order_give_the_same_pyramid(tmp_path: Path, seed: int) -> None:
    """Random band cuts written in random order, by one writer and by one writer per
    band (as ranks), give level 0 and every coarse level exactly."""
    rng = np.random.default_rng(seed)
    data = volume(13, 64, seed=seed)
    cuts = np.sort(rng.choice(np.arange(1, 13), size=rng.integers(1, 6), replace=False))
    bands = list(itertools.pairwise([0, *cuts.tolist(), 13]))
    one = tmp_path / "one.ome.zarr"
    shared = tmp_path / "shared.ome.zarr"
    write_store_placeholder(shared, scan="z1", ranks=len(bands))
    with ZarrVolumeWriter(one, **geometry(13, 64)) as writer:
        for index in rng.permutation(len(bands)).tolist():
            a, b = bands[index]
            writer.write(a, data[a:b])
            part = ZarrVolumeWriter(shared, **geometry(13, 64), region=(a, b))
            part.write(a, data[a:b])
            part.close(complete=True)
    finish_store(shared, complete=True, report=None)
    reference = read_levels(one)
    np.testing.assert_array_equal(reference[0], data)
    assert_pyramid(reference)
    for mine, expected in zip(read_levels(shared), reference, strict=True):
        np.testing.assert_array_equal(mine, expected)


def test_a_band_write_holds_about_the_band_not_the_volume(tmp_path: Path) -> None:
    """Python-side allocations (tracemalloc: NumPy and zarr buffers) while a band and its
    coarse slices are written stay below two bands: no whole-volume array."""
    import tracemalloc

    slices, side, band = 16, 256, 4
    data = np.random.default_rng(3).random((band, side, side), dtype=np.float32)
    writer = ZarrVolumeWriter(tmp_path / "m.ome.zarr", **{
        **geometry(slices), "slice_shape": (side, side)})
    writer.write(0, data)  # the first write opens zarr's machinery: not counted
    peaks = []
    tracemalloc.start()
    try:
        for first in range(band, slices, band):
            tracemalloc.reset_peak()
            writer.write(first, data)
            peaks.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()
    writer.close(complete=True)
    # measured 1.1 to 1.25 bands (zarr's chunk buffers, the level-1 mean, one slice)
    assert max(peaks) < 2 * data.nbytes, (max(peaks) / data.nbytes, "bands")
