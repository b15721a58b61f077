"""Per-rank part files stitched by a master file (HDF5 Virtual Dataset)."""

from __future__ import annotations

import json
import os
import shutil
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
from streamer.sinks.master import part_path, read_layout, write_master

REPO = Path(__file__).resolve().parents[2]
SHAPE = (6, 5)
ROWS = 11  # does not divide by 3: bands of 4, 4, 3 rows
FIRST_ROW = 20
ANGLES = np.linspace(0.0, 180.0, 9, endpoint=False)


def volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((ROWS, *SHAPE)).astype(np.float32)


def bands(ranks: int) -> list[list[int]]:
    """Balanced bands of detector rows, as the reslice splits them."""
    return [b.tolist() for b in np.array_split(np.arange(FIRST_ROW, FIRST_ROW + ROWS), ranks)]


def write_part(path: Path, rows: list[int], data: np.ndarray, *, close: bool = True,
               **overrides: Any) -> Hdf5VolumeWriter:
    """One rank's file: its band's slices, written in two bands as the service does."""
    kwargs: dict[str, Any] = {
        "detector_rows": rows, "slice_shape": SHAPE, "angles_deg": ANGLES,
        "center_of_rotation": 2.5, "center_method": "vo", "pipeline_yaml": "pipeline: []\n",
        "scan": "scan-7", "metadata": {"beamline": "demo"},
    }
    kwargs.update(overrides)
    writer = Hdf5VolumeWriter(path, **kwargs)
    lo = rows[0] - FIRST_ROW
    half = len(rows) // 2
    writer.write(half, data[lo + half: lo + len(rows)])
    writer.write(0, data[lo: lo + half])
    if close:
        writer.close(complete=True, report={"rank_report": True})
    return writer


def write_parts(master: Path, ranks: int, data: np.ndarray) -> list[Path]:
    parts = [part_path(master, r, ranks) for r in range(ranks)]
    for part, rows in zip(parts, bands(ranks), strict=True):
        write_part(part, rows, data)
    return parts


def test_part_path_names() -> None:
    assert part_path(Path("out/scan.h5"), 2, 4) == Path("out/scan.part2of4.h5")
    with pytest.raises(SinkError, match=r"rank: expected an integer in \[0, 4\), got 4"):
        part_path(Path("scan.h5"), 4, 4)
    with pytest.raises(SinkError, match="ranks: expected an integer >= 1"):
        part_path(Path("scan.h5"), 0, 0)


@pytest.mark.parametrize("ranks", [1, 3])
def test_master_reads_as_the_concatenated_parts(tmp_path: Path, ranks: int) -> None:
    master = tmp_path / "scan.h5"
    data = volume()
    parts = write_parts(master, ranks, data)
    report = {"scan": "scan-7", "status": "complete", "ranks": ranks}
    # parts listed out of rank order on purpose: the master sorts by detector row
    assert write_master(master, parts[::-1], complete=True, report=report) == master
    with h5py.File(master, "r") as f:
        assert f[VOLUME_PATH].is_virtual
        np.testing.assert_array_equal(f[VOLUME_PATH][...], data)
        np.testing.assert_array_equal(f["entry/reconstruction/detector_row"][...],
                                      np.arange(FIRST_ROW, FIRST_ROW + ROWS))
        assert f["entry/reconstruction/slice_written"][...].all()
        entry = f["entry"]
        assert bool(entry.attrs["complete"]) is True
        assert json.loads(entry.attrs["incomplete_reasons"]) == []
        assert entry.attrs["scan"] == "scan-7" and int(entry.attrs["slices_written"]) == ROWS
        assert f.attrs["format"] == "tomo-streamer volume"
        np.testing.assert_array_equal(f["entry/process/angles_deg"][...], ANGLES)
        assert f["entry/process/center_of_rotation"][()] == 2.5
        assert f["entry/process/center_of_rotation"].attrs["method"] == "vo"
        assert json.loads(f["entry/process/report"][()]) == report
        assert dict(f["entry/metadata"].attrs)["beamline"] == "demo"
        assert [s.decode() for s in f["entry/parts/file"][...]] == [p.name for p in parts]
    # the master is itself a readable volume with the single-rank layout
    layout = read_layout(master)
    assert layout.shape == (ROWS, *SHAPE) and layout.complete


def test_master_still_reads_after_the_folder_moves(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    master = folder / "scan.h5"
    data = volume(1)
    write_master(master, write_parts(master, 3, data), complete=True, report=None)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(folder, moved)
    # read from another working directory, in a fresh process: nothing may resolve
    # against the old folder or the cwd
    script = textwrap.dedent(f"""
        import h5py, numpy as np
        with h5py.File({str(moved / "scan.h5")!r}, "r") as f:
            np.save({str(tmp_path / "read.npy")!r}, f["{VOLUME_PATH}"][...])
    """)
    subprocess.run([sys.executable, "-c", script], cwd="/", check=True, timeout=60)
    np.testing.assert_array_equal(np.load(tmp_path / "read.npy"), data)


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_missing_part_reads_as_nan_band_and_marks_incomplete(
    tmp_path: Path, damage: str
) -> None:
    master = tmp_path / "scan.h5"
    data = volume(2)
    parts = write_parts(master, 3, data)
    if damage == "missing":
        parts[1].unlink()
    else:
        parts[1].write_bytes(b"not an HDF5 file")
    write_master(master, parts, complete=True, report={"status": "complete"}, bands=bands(3))
    lost = np.isin(np.arange(FIRST_ROW, FIRST_ROW + ROWS), bands(3)[1])
    with h5py.File(master, "r") as f:
        stored = f[VOLUME_PATH][...]
        assert np.isnan(stored[lost]).all()
        np.testing.assert_array_equal(stored[~lost], data[~lost])
        np.testing.assert_array_equal(f["entry/reconstruction/slice_written"][...], ~lost)
        assert bool(f["entry"].attrs["complete"]) is False
        reasons = json.loads(f["entry"].attrs["incomplete_reasons"])
        word = {"missing": "missing", "garbage": "unreadable"}[damage]
        assert len(reasons) == 1
        assert reasons[0].startswith(f"part 1 ({parts[1].name}): {word}: ")
        status = [s.decode() for s in f["entry/parts/status"][...]]
        assert status[0] == "complete" and status[1].startswith(f"{word}: ")


def test_missing_part_without_bands_is_left_out_and_said(tmp_path: Path) -> None:
    master = tmp_path / "scan.h5"
    data = volume(3)
    parts = write_parts(master, 3, data)
    parts[2].unlink()
    write_master(master, parts, complete=True, report=None)
    with h5py.File(master, "r") as f:
        kept = len(bands(3)[0]) + len(bands(3)[1])
        np.testing.assert_array_equal(f[VOLUME_PATH][...], data[:kept])
        assert bool(f["entry"].attrs["complete"]) is False
        reasons = " ".join(json.loads(f["entry"].attrs["incomplete_reasons"]))
        assert "missing" in reasons and "rows are unknown" in reasons


def test_run_reported_incomplete_makes_the_master_incomplete(tmp_path: Path) -> None:
    master = tmp_path / "scan.h5"
    write_master(master, write_parts(master, 2, volume()), complete=False, report=None)
    with h5py.File(master, "r") as f:
        assert bool(f["entry"].attrs["complete"]) is False
        assert "incomplete" in json.loads(f["entry"].attrs["incomplete_reasons"])[0]


@pytest.mark.parametrize(
    ("field", "overrides", "message"),
    [
        ("scan", {"scan": "other"}, r"scan: expected 'scan-7'.*got 'other'"),
        ("shape", {"slice_shape": (6, 6)}, r"slice shape: expected \(6, 5\).*got \(6, 6\)"),
        ("cor", {"center_of_rotation": 3.0}, r"center_of_rotation: expected 2\.5.*got 3\.0"),
        ("angles", {"angles_deg": ANGLES + 0.5}, r"angles_deg\[0\]: expected 0\.0.*got 0\.5"),
        ("dtype", {"dtype": "uint16", "window": (-3.0, 3.0)}, r"dtype: expected 'float32'"),
    ],
)
def test_disagreeing_parts_are_refused(
    tmp_path: Path, field: str, overrides: dict[str, Any], message: str
) -> None:
    master = tmp_path / "scan.h5"
    data = volume()
    parts = [part_path(master, r, 2) for r in range(2)]
    write_part(parts[0], bands(2)[0], data)
    if field == "shape":
        data = np.zeros((ROWS, 6, 6), np.float32)
    write_part(parts[1], bands(2)[1], data, **overrides)
    with pytest.raises(SinkError, match=message) as info:
        write_master(master, parts, complete=True, report=None)
    assert str(parts[1]) in str(info.value) and "do not describe one volume" in str(info.value)
    assert not master.exists()


def test_overlapping_rows_and_wrong_plan_are_refused(tmp_path: Path) -> None:
    master = tmp_path / "scan.h5"
    data = volume()
    parts = [part_path(master, r, 2) for r in range(2)]
    write_part(parts[0], list(range(FIRST_ROW, FIRST_ROW + 6)), data)
    write_part(parts[1], list(range(FIRST_ROW + 5, FIRST_ROW + 11)), data)
    with pytest.raises(SinkError, match=r"expected disjoint bands, got row 25 in part 0"):
        write_master(master, parts, complete=True, report=None)
    with pytest.raises(SinkError, match=r"detector_row: expected the planned band rows \[20, 26\)"):
        write_master(master, parts[::-1], complete=True, report=None, bands=bands(2))
    assert not master.exists()


def test_no_readable_part_and_existing_master_are_refused(tmp_path: Path) -> None:
    master = tmp_path / "scan.h5"
    with pytest.raises(SinkError, match="expected at least one readable part, got none"):
        write_master(master, [part_path(master, 0, 1)], complete=True, report=None)
    master.write_bytes(b"precious")
    with pytest.raises(SinkError, match="expected a new file"):
        write_master(master, [part_path(master, 0, 1)], complete=True, report=None)
    assert master.read_bytes() == b"precious"


def test_part_whose_writer_never_closed_reads_as_incomplete_through_the_master(
    tmp_path: Path,
) -> None:
    master = tmp_path / "scan.h5"
    data = volume(5)
    parts = [part_path(master, r, 2) for r in range(2)]
    write_part(parts[0], bands(2)[0], data)
    # rank 1 is killed after one of its two bands: a real process, ended by os._exit
    rows = bands(2)[1]
    lo = rows[0] - FIRST_ROW
    np.save(tmp_path / "band.npy", data[lo: lo + 2])
    script = textwrap.dedent(f"""
        import os
        import numpy as np
        from streamer.sinks import Hdf5VolumeWriter
        w = Hdf5VolumeWriter({str(parts[1])!r}, detector_rows={rows!r}, slice_shape={SHAPE!r},
            angles_deg=np.linspace(0.0, 180.0, 9, endpoint=False), center_of_rotation=2.5,
            center_method="vo", pipeline_yaml="pipeline: []\\n", scan="scan-7")
        w.write(0, np.load({str(tmp_path / "band.npy")!r}))
        os._exit(1)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", script], env=env, timeout=60, check=False)
    assert killed.returncode == 1
    write_master(master, parts, complete=True, report=None, bands=bands(2))
    with h5py.File(master, "r") as f:
        written = f["entry/reconstruction/slice_written"][...]
        expected = np.zeros(ROWS, bool)
        expected[: lo + 2] = True
        np.testing.assert_array_equal(written, expected)
        stored = f[VOLUME_PATH][...]
        np.testing.assert_array_equal(stored[written], data[written])
        assert np.isnan(stored[~written]).all()
        assert bool(f["entry"].attrs["complete"]) is False
        reasons = json.loads(f["entry"].attrs["incomplete_reasons"])
        assert reasons == [
            f"part 1 ({parts[1].name}): incomplete, never closed (writer stopped): "
            f"2 of {len(rows)} slices written ([0, 2))"
        ]


def test_quantised_parts_keep_their_scale(tmp_path: Path) -> None:
    master = tmp_path / "scan.h5"
    data = volume()
    parts = [part_path(master, r, 2) for r in range(2)]
    for part, rows in zip(parts, bands(2), strict=True):
        write_part(part, rows, data, dtype="uint16", window=(-3.0, 3.0))
    write_master(master, parts, complete=True, report=None)
    with h5py.File(master, "r") as f:
        ds = f[VOLUME_PATH]
        assert ds.dtype == np.uint16
        recovered = ds.attrs["offset"] + ds.attrs["scale"] * ds[...].astype(np.float64)
    inside = np.abs(data) < 3.0
    assert np.abs(recovered - data)[inside].max() <= 6.0 / 65535 / 2 + 1e-6
