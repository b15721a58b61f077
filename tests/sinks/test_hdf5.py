"""The HDF5 volume writer: layout, round trips, quantisation, crash safety, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from streamer.errors import SinkError
from streamer.sinks import VOLUME_PATH, Hdf5VolumeWriter
from streamer.sinks.hdf5 import written_ranges

REPO = Path(__file__).resolve().parents[2]
ROWS = [10, 11, 12, 13, 14, 15, 16, 17]
SHAPE = (6, 5)
PIPELINE = "stages:\n  - flat_dark: {}\n  - fbp: {filter: ramp}\n"


def volume(n: int = len(ROWS), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *SHAPE)).astype(np.float32)


def make(path: Path, **overrides: Any) -> Hdf5VolumeWriter:
    kwargs: dict[str, Any] = {
        "detector_rows": ROWS,
        "slice_shape": SHAPE,
        "angles_deg": np.linspace(0.0, 180.0, 9, endpoint=False),
        "center_of_rotation": 2.25,
        "center_method": "vo",
        "pipeline_yaml": PIPELINE,
        "scan": "scan-001",
        "metadata": {"beamline": "demo", "energy_kev": 25.0, "binning": 1, "dry": False},
    }
    kwargs.update(overrides)
    return Hdf5VolumeWriter(path, **kwargs)


def test_round_trip_shuffled_bands_and_layout(tmp_path: Path) -> None:
    path = tmp_path / "out" / "vol.h5"
    data = volume()
    bands = [(0, 3), (3, 4), (4, 8)]
    order = np.random.default_rng(1).permutation(len(bands))
    with make(path) as writer:
        for i in order:
            a, b = bands[i]
            writer.write(a, data[a:b])
        writer.close(complete=True, report={"scan": "scan-001", "status": "complete"})
    with h5py.File(path, "r") as f:
        assert f.attrs["default"] == "entry"
        entry = f["entry"]
        assert entry.attrs["NX_class"] == "NXentry"
        assert entry.attrs["scan"] == "scan-001"
        assert bool(entry.attrs["complete"]) is True
        assert int(entry.attrs["slices_written"]) == 8
        versions = json.loads(entry.attrs["software_versions"])
        assert {"tomo-streamer", "numpy", "h5py", "hdf5"} <= set(versions)
        assert entry.attrs["created"].endswith("+00:00")
        recon = f["entry/reconstruction"]
        assert recon.attrs["NX_class"] == "NXdata"
        assert recon.attrs["signal"] == "data"
        np.testing.assert_array_equal(f[VOLUME_PATH][...], data)
        assert f[VOLUME_PATH].dtype == np.float32
        assert f[VOLUME_PATH].chunks == (1, *SHAPE)
        np.testing.assert_array_equal(recon["detector_row"][...], ROWS)
        assert recon["detector_row"].dtype == np.int32
        assert recon["slice_written"][...].all()
        process = f["entry/process"]
        np.testing.assert_array_equal(
            process["angles_deg"][...], np.linspace(0.0, 180.0, 9, endpoint=False)
        )
        assert process["angles_deg"].dtype == np.float64
        assert process["center_of_rotation"][()] == 2.25
        assert process["center_of_rotation"].attrs["method"] == "vo"
        assert process["pipeline"].asstr()[()] == PIPELINE
        assert json.loads(process["report"].asstr()[()]) == {
            "scan": "scan-001",
            "status": "complete",
        }
        meta = dict(f["entry/metadata"].attrs)
        assert meta["beamline"] == "demo"
        assert meta["energy_kev"] == 25.0
        assert meta["binning"] == 1
        assert not meta["dry"]


def test_partial_volume_marks_written_slices(tmp_path: Path) -> None:
    path = tmp_path / "vol.h5"
    data = volume()
    writer = make(path)
    writer.write(5, data[5:7])
    writer.write(0, data[0:1])
    np.testing.assert_array_equal(
        writer.slices_written, [True, False, False, False, False, True, True, False]
    )
    with pytest.raises(SinkError, match=r"3 of 8 slices written \(\[0, 1\), \[5, 7\)\)"):
        writer.close(complete=True)
    with h5py.File(path, "r") as f:
        assert bool(f["entry"].attrs["complete"]) is False
        written = f["entry/reconstruction/slice_written"][...]
        assert written_ranges(written) == [(0, 1), (5, 7)]
        stored = f[VOLUME_PATH][...]
        np.testing.assert_array_equal(stored[written], data[written])
        assert np.isnan(stored[~written]).all()
        assert "report" not in f["entry/process"]


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_quantised_output_recovers_floats_within_one_quantum(tmp_path: Path, dtype: str) -> None:
    path = tmp_path / f"{dtype}.h5"
    lo, hi = -1.5, 2.0
    data = volume()
    data[0, 0, 0] = -10.0  # saturates low
    data[0, 0, 1] = 10.0  # saturates high
    data[0, 0, 2] = np.nan  # becomes 0
    with make(path, dtype=dtype, window=(lo, hi)) as writer:
        writer.write(0, data)
    with h5py.File(path, "r") as f:
        assert bool(f["entry"].attrs["complete"]) is True
        ds = f[VOLUME_PATH]
        assert ds.dtype == np.dtype(dtype)
        assert ds.fillvalue == 0
        levels = np.iinfo(dtype).max
        assert ds.attrs["window_min"] == lo
        assert ds.attrs["window_max"] == hi
        scale, offset = float(ds.attrs["scale"]), float(ds.attrs["offset"])
        assert scale == pytest.approx((hi - lo) / levels)
        assert offset == lo
        stored = ds[...]
    assert stored[0, 0, 0] == 0
    assert stored[0, 0, 1] == levels
    assert stored[0, 0, 2] == 0
    recovered = offset + scale * stored.astype(np.float64)
    inside = (data >= lo) & (data <= hi)
    assert inside.sum() > data.size // 2
    error = np.abs(recovered[inside] - data[inside])
    assert error.max() <= scale / 2 + 1e-6


def test_crash_mid_scan_leaves_readable_incomplete_file(tmp_path: Path) -> None:
    path = tmp_path / "crash.h5"
    script = textwrap.dedent(
        f"""
        import os
        import numpy as np
        from streamer.sinks import Hdf5VolumeWriter

        rng = np.random.default_rng(7)
        data = rng.standard_normal((8, 6, 5)).astype(np.float32)
        writer = Hdf5VolumeWriter(
            {str(path)!r}, detector_rows=range(100, 108), slice_shape=(6, 5),
            angles_deg=np.arange(4.0), center_of_rotation=2.0, center_method="given",
            pipeline_yaml="stages: []\\n", scan="crash",
        )
        writer.write(6, data[6:8])   # band 4 of 4
        writer.write(2, data[2:4])   # band 2 of 4
        os._exit(1)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 1, result.stderr.decode()
    expected = np.random.default_rng(7).standard_normal((8, 6, 5)).astype(np.float32)
    with h5py.File(path, "r") as f:
        assert bool(f["entry"].attrs["complete"]) is False
        assert f["entry"].attrs["scan"] == "crash"
        written = f["entry/reconstruction/slice_written"][...]
        np.testing.assert_array_equal(written, [False, False, True, True, False, False, True, True])
        np.testing.assert_array_equal(f["entry/reconstruction/detector_row"][...], range(100, 108))
        stored = f[VOLUME_PATH][...]
        np.testing.assert_array_equal(stored[written], expected[written])
        assert np.isnan(stored[~written]).all()
        assert "report" not in f["entry/process"]


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "vol.h5"
    path.write_bytes(b"precious")
    with pytest.raises(SinkError, match=r"vol\.h5: output file: expected a new file.*overwrite"):
        make(path)
    assert path.read_bytes() == b"precious"
    with make(path, overwrite=True) as writer:
        writer.write(0, volume())
    with h5py.File(path, "r") as f:
        assert bool(f["entry"].attrs["complete"]) is True


@pytest.mark.parametrize(
    ("first", "band", "message"),
    [
        (7, volume(2), r"band: expected slices within \[0, 8\), got '\[7, 9\)'"),
        (-1, volume(1), r"band: expected slices within \[0, 8\), got '\[-1, 0\)'"),
        (0, np.zeros((2, 5, 6), np.float32), r"slices\.shape: expected \(n >= 1, 6, 5\)"),
        (0, np.zeros((6, 5), np.float32), r"slices\.shape: expected"),
        (0, np.zeros((0, 6, 5), np.float32), r"slices\.shape: expected"),
        (0, np.zeros((1, 6, 5), np.float64), r"slices\.dtype: expected float32, got 'float64'"),
        (0.0, volume(1), r"first_slice: expected an integer"),
        (0, [[[0.0]]], r"slices: expected a numpy array"),
    ],
)
def test_bad_band(tmp_path: Path, first: Any, band: Any, message: str) -> None:
    path = tmp_path / "vol.h5"
    writer = make(path)
    with pytest.raises(SinkError, match=message) as info:
        writer.write(first, band)
    assert str(path) in str(info.value)
    assert not writer.slices_written.any()
    writer.close(complete=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"detector_rows": []}, r"detector_rows: expected a non-empty 1-D"),
        (
            {"detector_rows": [1, 2, 2]},
            r"detector_rows: expected distinct rows, got 'repeated \[2\]'",
        ),
        ({"detector_rows": [-1, 0]}, r"detector_rows: expected values in"),
        ({"detector_rows": [0.5, 1.5]}, r"detector_rows: expected integers"),
        ({"slice_shape": (6,)}, r"slice_shape: expected \(ny, nx\)"),
        ({"slice_shape": (0, 5)}, r"slice_shape: expected"),
        ({"angles_deg": np.array([0.0, np.nan])}, r"angles_deg: expected finite"),
        ({"angles_deg": np.zeros((2, 2))}, r"angles_deg: expected a non-empty 1-D"),
        ({"center_of_rotation": float("nan")}, r"center_of_rotation: expected a finite number"),
        ({"center_method": ""}, r"center_method: expected a non-empty string"),
        ({"dtype": "int8"}, r"dtype: expected one of float32\|uint8\|uint16, got 'int8'"),
        ({"dtype": "uint8"}, r"window: expected \(lo, hi\) for dtype uint8, got None"),
        ({"dtype": "uint16", "window": (2.0, 1.0)}, r"window: expected \(lo, hi\) finite"),
        ({"window": (0.0, 1.0)}, r"window: expected None for dtype float32"),
        ({"metadata": {"a/b": 1}}, r"metadata key: expected a non-empty name"),
        ({"metadata": {"x": [1]}}, r"metadata\['x'\]: expected str, int, float or bool"),
    ],
)
def test_bad_arguments(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    path = tmp_path / "vol.h5"
    with pytest.raises(SinkError, match=message):
        make(path, **overrides)
    assert not path.exists()


def test_exception_in_context_leaves_incomplete_file(tmp_path: Path) -> None:
    path = tmp_path / "vol.h5"
    data = volume()
    with pytest.raises(RuntimeError, match="reconstruction failed"), make(path) as writer:
        writer.write(0, data)  # every slice written, yet the run failed
        raise RuntimeError("reconstruction failed")
    with h5py.File(path, "r") as f:
        assert bool(f["entry"].attrs["complete"]) is False
        assert f["entry/reconstruction/slice_written"][...].all()
        assert "closed" in f["entry"].attrs


def test_normal_exit_without_close_marks_complete_only_when_all_written(tmp_path: Path) -> None:
    path = tmp_path / "vol.h5"
    with make(path) as writer:
        writer.write(0, volume(3))
    with h5py.File(path, "r") as f:
        assert bool(f["entry"].attrs["complete"]) is False


def test_write_after_close_and_double_close(tmp_path: Path) -> None:
    writer = make(tmp_path / "vol.h5")
    writer.write(0, volume())
    writer.close(complete=True)
    writer.close(complete=True)
    with pytest.raises(SinkError, match="write: expected an open writer"):
        writer.write(0, volume(1))


def test_disk_error_names_file_and_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "vol.h5"
    data = volume()
    writer = make(path)
    writer.write(0, data[0:2])

    def full_disk(self: Hdf5VolumeWriter, first: int, stored: Any) -> None:
        # the volume's chunk writes fail as HDF5 fails on a full disk (h5py's low-level
        # dataset id cannot be patched: the writer's one call into it is)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Hdf5VolumeWriter, "_write_chunks", full_disk)
    with pytest.raises(SinkError) as info:
        writer.write(2, data[2:4])
    text = str(info.value)
    assert str(path) in text
    assert "writing slices [2, 4) failed" in text
    assert "No space left on device" in text
    assert "2 of 8 slices written ([0, 2))" in text
    monkeypatch.undo()
    writer.close(complete=False)
    with h5py.File(path, "r") as f:
        written = f["entry/reconstruction/slice_written"][...]
        assert written_ranges(written) == [(0, 2)]
        np.testing.assert_array_equal(f[VOLUME_PATH][0:2], data[0:2])
        assert bool(f["entry"].attrs["complete"]) is False


def test_written_ranges() -> None:
    assert written_ranges(np.array([], bool)) == []
    assert written_ranges(np.array([True, True, False, True])) == [(0, 2), (3, 4)]
    assert written_ranges(np.array([False, False])) == []


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_bands_from_views_and_rewritten_bands_read_back_exactly(tmp_path: Path,
                                                                dtype: str) -> None:
    """Chunks are written from the slices' bytes: strided views, the quantised dtype and a
    band written twice (the last one wins) must all read back as through ``ds[a:b] = x``."""
    path = tmp_path / "vol.h5"
    data = volume()
    wide = np.repeat(data, 2, axis=2)  # every other column of it is ``data``
    window = (-2.0, 2.0) if dtype != "float32" else None
    writer = make(path, dtype=dtype, window=window)
    view = wide[0:4, :, ::2]
    assert not view.flags.c_contiguous
    writer.write(0, view)
    writer.write(4, -data[4:8])
    writer.write(4, data[4:8])  # redone: replaces the chunks in place
    writer.close(complete=True)
    with h5py.File(path, "r") as f:
        stored = f[VOLUME_PATH][...]
        assert stored.dtype == np.dtype(dtype)
        if window is None:
            np.testing.assert_array_equal(stored, data)
        else:
            expected = writer.geometry.quantisation
            assert expected is not None
            np.testing.assert_array_equal(stored, expected.apply(data))
        assert f[VOLUME_PATH].chunks == (1, *SHAPE)
