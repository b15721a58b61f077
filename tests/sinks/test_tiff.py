"""The TIFF stack writer: one file per slice, sidecar, quantisation, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from streamer.errors import SinkError
from streamer.sinks import TiffStackWriter

ROWS = [3, 4, 5, 6, 7, 8]
SHAPE = (4, 7)
PIPELINE = "stages:\n  - fbp: {}\n"


def volume(n: int = len(ROWS), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


def make(folder: Path, **overrides: Any) -> TiffStackWriter:
    kwargs: dict[str, Any] = {
        "detector_rows": ROWS,
        "slice_shape": SHAPE,
        "angles_deg": np.linspace(0.0, 180.0, 12, endpoint=False),
        "center_of_rotation": 3.5,
        "center_method": "given",
        "pipeline_yaml": PIPELINE,
        "scan": "s1",
        "metadata": {"sample": "phantom"},
    }
    kwargs.update(overrides)
    return TiffStackWriter(folder, **kwargs)


def sidecar(folder: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((folder / "volume.json").read_text())
    return document


def test_round_trip_and_sidecar(tmp_path: Path) -> None:
    folder = tmp_path / "stack"
    data = volume()
    with make(folder) as writer:
        assert sidecar(folder)["complete"] is False
        writer.write(4, data[4:6])
        writer.write(0, data[0:4])
        writer.close(complete=True, report={"status": "complete"})
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"slice_{row:05d}.tif" for row in ROWS] + ["volume.json"]
    for index, row in enumerate(ROWS):
        stored = tifffile.imread(folder / f"slice_{row:05d}.tif")
        assert stored.dtype == np.float32
        np.testing.assert_array_equal(stored, data[index])
    doc = sidecar(folder)
    assert doc["complete"] is True
    assert doc["scan"] == "s1"
    assert doc["angles_count"] == 12
    assert doc["center_of_rotation"] == 3.5
    assert doc["center_method"] == "given"
    assert doc["pipeline"] == PIPELINE
    assert doc["detector_rows"] == ROWS
    assert doc["slice_shape"] == list(SHAPE)
    assert doc["slices_written"] == 6
    assert doc["written_ranges"] == [[0, 6]]
    assert doc["metadata"] == {"sample": "phantom"}
    assert doc["report"] == {"status": "complete"}
    assert {"tomo-streamer", "numpy", "h5py"} <= set(doc["software_versions"])
    assert doc["dtype"] == "float32"
    assert doc["window"] is None


def test_partial_stack_and_exception(tmp_path: Path) -> None:
    folder = tmp_path / "stack"
    data = volume()
    with pytest.raises(RuntimeError, match="boom"), make(folder) as writer:
        writer.write(1, data[1:3])
        raise RuntimeError("boom")
    doc = sidecar(folder)
    assert doc["complete"] is False
    assert doc["written_ranges"] == [[1, 3]]
    assert sorted(p.name for p in folder.glob("slice_*.tif")) == [
        "slice_00004.tif",
        "slice_00005.tif",
    ]
    assert not list(folder.glob(".*.tmp"))


def test_complete_with_missing_slices_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "stack"
    writer = make(folder)
    writer.write(0, volume(1))
    with pytest.raises(SinkError, match=r"1 of 6 slices written \(\[0, 1\)\)"):
        writer.close(complete=True)
    assert sidecar(folder)["complete"] is False


def test_uint16_window(tmp_path: Path) -> None:
    folder = tmp_path / "stack"
    data = volume()
    with make(folder, dtype="uint16", window=(-2.0, 2.0)) as writer:
        writer.write(0, data)
    doc = sidecar(folder)
    assert doc["window"] == [-2.0, 2.0]
    stored = tifffile.imread(folder / "slice_00003.tif")
    assert stored.dtype == np.uint16
    recovered = doc["offset"] + doc["scale"] * stored.astype(np.float64)
    inside = np.abs(data[0]) <= 2.0
    assert np.abs(recovered[inside] - data[0][inside]).max() <= doc["scale"] / 2 + 1e-6


def test_refuses_to_overwrite_previous_stack(tmp_path: Path) -> None:
    folder = tmp_path / "stack"
    with make(folder) as writer:
        writer.write(0, volume())
    with pytest.raises(SinkError, match=r"expected no previous stack.*overwrite=True"):
        make(folder)
    (folder / "notes.txt").write_text("keep me")
    with make(folder, overwrite=True, detector_rows=[100], scan="s2") as writer:
        writer.write(0, volume(1))
    assert sorted(p.name for p in folder.iterdir()) == [
        "notes.txt",
        "slice_00100.tif",
        "volume.json",
    ]
    assert sidecar(folder)["scan"] == "s2"


def test_bad_band(tmp_path: Path) -> None:
    writer = make(tmp_path / "stack")
    with pytest.raises(SinkError, match=r"band: expected slices within \[0, 6\), got '\[5, 7\)'"):
        writer.write(5, volume(2))
    with pytest.raises(SinkError, match=r"slices\.shape: expected \(n >= 1, 4, 7\)"):
        writer.write(0, np.zeros((1, 7, 4), np.float32))
    writer.close(complete=False)
    assert not list((tmp_path / "stack").glob("slice_*.tif"))


def test_folder_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "stack"
    target.write_text("")
    with pytest.raises(SinkError, match="expected a folder, got an existing file"):
        make(target)
