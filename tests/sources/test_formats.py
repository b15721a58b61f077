"""Loaders for stored scans: every real dataset of shared/data, and the edge cases.

Expected values (shapes, counts, angles, checksums) are those of shared/data/README.md,
sections A1-A5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import pytest
import scipy.io
import tifffile

from streamer.errors import ConfigError, ScanFormatError
from streamer.sources.formats import (
    LoadOptions,
    detect_format,
    open_scan,
    parse_angle_range,
    parse_rows,
    write_nxtomo,
)
from streamer.sources.formats.sinogram import attenuation_signs
from streamer.sources.scan import FrameReader, ScanLayout, check_block
from streamer.wire.protocol import Geometry

#: The paths HTTomo's DIAD loader config uses (shared/data/README.md, A1).
DIAD_OPTIONS = LoadOptions(
    data_path="/entry/imaging/data",
    image_key_path="/entry/instrument/imaging/image_key",
    angles_path="/entry/imaging_sum/gts_theta_value",
)


def write_dxchange(path: Path, frames: np.ndarray, theta: np.ndarray | None,
                   units: str | None = "degrees") -> Path:
    """A minimal data-exchange file: 2 darks, 2 flats, ``frames`` as projections."""
    with h5py.File(path, "w") as file:
        file["/exchange/data"] = frames
        file["/exchange/data_dark"] = np.full((2, *frames.shape[1:]), 7, frames.dtype)
        file["/exchange/data_white"] = np.full((2, *frames.shape[1:]), 900, frames.dtype)
        if theta is not None:
            file["/exchange/theta"] = theta
            if units is not None:
                file["/exchange/theta"].attrs["units"] = units
    return path


def sums_by_key(reader: FrameReader, block: int) -> dict[int, int]:
    """int64 pixel sums per image_key, read in blocks of ``block`` frames."""
    layout = reader.layout
    totals = {0: 0, 1: 0, 2: 0}
    for start in range(0, layout.frames, block):
        stop = min(layout.frames, start + block)
        data = reader.read(start, stop)
        assert data.shape == (stop - start, layout.rows, layout.cols)
        assert data.dtype == layout.dtype and data.flags.c_contiguous
        assert data.dtype.byteorder in ("<", "|", "=")
        per_frame = data.astype(np.int64).sum(axis=(1, 2))
        for key in totals:
            totals[key] += int(per_frame[layout.image_keys[start:stop] == key].sum())
    return totals


# --- A1 DIAD k11-18014: NeXus with image_key, relative external links -------------------


@pytest.mark.parametrize("explicit", [True, False], ids=["explicit-paths", "auto-detect"])
def test_diad_loads_from_another_cwd(
    real: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, explicit: bool
) -> None:
    monkeypatch.chdir(tmp_path)  # external links must resolve relative to the file
    options = DIAD_OPTIONS if explicit else LoadOptions()
    with open_scan(real / "diad_k11-18014" / "k11-18014.nxs", options) as reader:
        layout = reader.layout
        assert (layout.frames, layout.rows, layout.cols) == (3201, 22, 26)
        assert layout.dtype == np.uint16
        assert (layout.projections, layout.flats, layout.darks) == (3001, 100, 100)
        keys = layout.image_keys
        assert (keys[:50] == 1).all() and (keys[50:100] == 2).all()
        assert (keys[100:3101] == 0).all()
        assert (keys[3101:3151] == 1).all() and (keys[3151:] == 2).all()
        projections = layout.angles_deg[keys == 0]
        assert projections[0] == pytest.approx(89.9951, abs=1e-4)
        assert projections[-1] == pytest.approx(269.9946, abs=1e-4)
        assert np.diff(projections).mean() == pytest.approx(0.06, abs=1e-4)
        assert layout.normalisation == "flat_dark"
        assert layout.source == "replay:k11-18014.nxs"
        assert layout.geometry.scan_range_deg == pytest.approx(179.9995, abs=1e-3)
        assert layout.metadata["format"] == "nexus"
        assert layout.metadata["skipped_invalid_frames"] == 0
        assert sums_by_key(reader, block=700) == {
            1: 2_592_149_423, 2: 5_675_253, 0: 65_768_562_345,
        }


def test_diad_auto_detection_picks_the_detector_paths(real: Path) -> None:
    with open_scan(real / "diad_k11-18014" / "k11-18014.nxs") as reader:
        meta = reader.layout.metadata
    assert meta["data_path"] in ("/entry/imaging/data", "/entry/instrument/imaging/data")
    assert meta["image_key_path"] == "/entry/instrument/imaging/image_key"
    assert "gts_theta_value" in str(meta["angles_path"])


def test_diad_row_crop_reads_the_same_pixels(real: Path) -> None:
    scan = real / "diad_k11-18014" / "k11-18014.nxs"
    with open_scan(scan) as full, open_scan(scan, LoadOptions(rows=(5, 9))) as crop:
        assert (crop.layout.rows, crop.layout.cols) == (4, 26)
        assert crop.layout.frame_bytes == 4 * 26 * 2
        np.testing.assert_array_equal(crop.read(45, 105), full.read(45, 105)[:, 5:9, :])
        assert crop.layout.metadata["rows_crop"] == "5:9"


def test_rows_out_of_range_names_file_and_valid_range(real: Path) -> None:
    with pytest.raises(ScanFormatError, match=r"k11-18014\.nxs: --rows 10:23: .*<= 22"):
        open_scan(real / "diad_k11-18014" / "k11-18014.nxs", LoadOptions(rows=(10, 23)))


def test_missing_dataset_names_file_and_path(real: Path) -> None:
    options = LoadOptions(data_path="/entry/imaging/nope")
    with pytest.raises(ScanFormatError, match=r"k11-18014\.nxs:/entry/imaging/nope: no such"):
        open_scan(real / "diad_k11-18014" / "k11-18014.nxs", options)


def test_forced_wrong_format_names_the_missing_dataset(real: Path) -> None:
    options = LoadOptions(format="dxchange")
    with pytest.raises(ScanFormatError, match=r"k11-18014\.nxs:/exchange/data: no such"):
        open_scan(real / "diad_k11-18014" / "k11-18014.nxs", options)


# --- A2 APS tooth: data-exchange -------------------------------------------------------


def test_tooth_streams_darks_flats_then_projections(real: Path) -> None:
    scan = real / "aps_tooth" / "tooth.h5"
    assert detect_format(scan) == "dxchange"
    with open_scan(scan) as reader, h5py.File(scan) as file:
        layout = reader.layout
        assert (layout.frames, layout.rows, layout.cols) == (201, 2, 640)
        assert layout.dtype == np.float32
        keys = layout.image_keys
        assert (keys[:10] == 2).all() and (keys[10:20] == 1).all() and (keys[20:] == 0).all()
        angles = layout.angles_deg[20:]
        assert angles[0] == 0.0
        assert angles[-1] == pytest.approx(179.0055, abs=1e-4)
        assert np.diff(angles).mean() == pytest.approx(180 / 181)
        assert layout.geometry.scan_range_deg == pytest.approx(179.0055, abs=1e-4)
        block = reader.read(5, 25)  # crosses darks -> flats -> projections
        np.testing.assert_array_equal(block[:5], file["/exchange/data_dark"][5:10])
        np.testing.assert_array_equal(block[5:15], file["/exchange/data_white"][:])
        np.testing.assert_array_equal(block[15:], file["/exchange/data"][:5])


def test_angle_count_mismatch_names_the_dataset(tmp_path: Path, frames: np.ndarray) -> None:
    scan = write_dxchange(tmp_path / "short.h5", frames, np.linspace(0, 180, 11))
    with pytest.raises(
        ScanFormatError,
        match=r"short\.h5:/exchange/theta: expected 12 angles \(one per projection\), got 11",
    ):
        open_scan(scan)


def test_angle_override_count_must_match_projections(real: Path) -> None:
    options = LoadOptions(angles=(0.0, 180.0, 180))
    with pytest.raises(ScanFormatError, match=r"tooth\.h5: --angles 0,180,180: .*COUNT = 181"):
        open_scan(real / "aps_tooth" / "tooth.h5", options)
    with open_scan(real / "aps_tooth" / "tooth.h5", LoadOptions(angles=(0, 180, 181))) as r:
        assert r.layout.angles_deg[-1] == 180.0 and r.layout.angles_deg[0] == 0.0


def test_radian_units_are_converted(tmp_path: Path, frames: np.ndarray) -> None:
    theta = np.linspace(0, np.pi, 12)
    scan = write_dxchange(tmp_path / "rad.h5", frames, theta, units="rad")
    with open_scan(scan) as reader:
        np.testing.assert_allclose(reader.layout.angles_deg[4:], np.linspace(0, 180, 12))
        assert reader.layout.geometry.scan_range_deg == 180.0


def test_unknown_angle_units_are_refused(tmp_path: Path, frames: np.ndarray) -> None:
    scan = write_dxchange(tmp_path / "mm.h5", frames, np.linspace(0, 1, 12), units="mm")
    with pytest.raises(ScanFormatError, match=r"mm\.h5:/exchange/theta: angle units"):
        open_scan(scan)


def test_nan_projection_angle_is_refused(tmp_path: Path, frames: np.ndarray) -> None:
    theta = np.linspace(0, 180, 12)
    theta[3] = np.nan
    scan = write_dxchange(tmp_path / "nan.h5", frames, theta)
    with pytest.raises(ScanFormatError, match=r"nan\.h5:/exchange/theta: expected finite"):
        open_scan(scan)


# --- A3 I13 24737: TIFF series with separate dark, flat and angles ----------------------


def i13_options(real: Path, **extra: Any) -> LoadOptions:
    base = real / "dls_i13_24737"
    return LoadOptions(
        darks=(str(base / "dark_00001.tiff"),),
        flats=(str(base / "flat_00001.tiff"),),
        angles_path=f"{base / '24737_processed.nxs'}:/entry/input_data/tomo/rotation_angle",
        **extra,
    )


def test_i13_tiff_series(real: Path) -> None:
    base = real / "dls_i13_24737"
    assert detect_format(base / "tiffs") == "tiff"
    with open_scan(base / "tiffs", i13_options(real)) as reader:
        layout = reader.layout
        assert (layout.frames, layout.rows, layout.cols) == (93, 135, 160)
        assert (layout.projections, layout.darks, layout.flats) == (91, 1, 1)
        assert list(layout.image_keys[:3]) == [2, 1, 0]
        assert layout.dtype == np.float32  # uint16 projections, float32 references
        angles = layout.angles_deg[2:]
        assert angles[0] == pytest.approx(-88.2) and angles[-1] == pytest.approx(91.8, abs=2e-4)
        assert np.diff(angles) == pytest.approx(2.0, abs=1e-3)
        assert layout.normalisation == "flat_dark"
        block = reader.read(0, 40)
        assert block[2, 0, 0] == 0
        raw = tifffile.imread(base / "tiffs" / "raw_00017.tiff")
        np.testing.assert_array_equal(block[2 + 17], raw.astype(np.float32))
        assert block[0].mean() == pytest.approx(97.7, abs=0.05)
        assert block[1].mean() == pytest.approx(37195, abs=1)


def test_i13_glob_pattern_takes_natural_order(real: Path) -> None:
    pattern = str(real / "dls_i13_24737" / "tiffs" / "raw_0000*.tiff")
    with open_scan(pattern, LoadOptions(angles=(0, 18, 10))) as reader:
        assert reader.layout.frames == 10 and reader.layout.dtype == np.uint16
        assert reader.layout.normalisation == "air"
        raw = tifffile.imread(real / "dls_i13_24737" / "tiffs" / "raw_00009.tiff")
        np.testing.assert_array_equal(reader.read(9, 10)[0], raw)


def test_tiff_without_angles_says_how_to_give_them(real: Path) -> None:
    with pytest.raises(ScanFormatError, match=r"tiffs: no rotation angles .*--angles START"):
        open_scan(real / "dls_i13_24737" / "tiffs")


def test_natural_order_and_multipage_references(tmp_path: Path) -> None:
    series = tmp_path / "series"
    series.mkdir()
    for index in (10, 2, 1):
        tifffile.imwrite(series / f"p_{index}.tif", np.full((5, 6), index, np.uint16))
    darks = tmp_path / "darks.tif"
    tifffile.imwrite(darks, np.zeros((2, 5, 6), np.uint16), photometric="minisblack")
    angles = tmp_path / "angles.txt"
    angles.write_text("0\n90\n180\n")
    options = LoadOptions(darks=(str(darks),), angles_path=str(angles))
    with open_scan(series, options) as reader:
        assert list(reader.layout.image_keys) == [2, 2, 0, 0, 0]
        assert list(reader.read(0, 5)[:, 0, 0]) == [0, 0, 1, 2, 10]
        assert list(reader.layout.angles_deg) == [0, 0, 0, 90, 180]
        assert reader.layout.normalisation == "air"  # darks but no flats


def test_reference_shape_mismatch_names_the_file(tmp_path: Path) -> None:
    series = tmp_path / "s"
    series.mkdir()
    tifffile.imwrite(series / "a.tif", np.ones((3, 4), np.uint16))
    tifffile.imwrite(tmp_path / "flat.tif", np.ones((3, 5), np.uint16))
    options = LoadOptions(flats=(str(tmp_path / "flat.tif"),), angles=(0, 0, 1))
    with pytest.raises(ScanFormatError, match=r"flat\.tif: expected 3x4 frames"):
        open_scan(series, options)


# --- A4 I12 dendrite: sinogram in a .mat file ---------------------------------------------


def test_dendrite_mat_sinogram(real: Path) -> None:
    scan = real / "dls_i12_dendrite" / "RealDataDend.mat"
    assert detect_format(scan) == "mat"
    stored = scipy.io.loadmat(scan)
    with open_scan(scan, LoadOptions(normalised=True, scale=0.001)) as reader:
        layout = reader.layout
        assert (layout.frames, layout.rows, layout.cols) == (360, 1, 1260)
        assert layout.dtype == np.float32 and layout.normalisation == "none"
        np.testing.assert_allclose(layout.angles_deg, np.rad2deg(stored["anglesRad"][:, 0]))
        assert layout.geometry.scan_range_deg == pytest.approx(179.5, abs=0.01)
        data = reader.read(0, 360)
        assert float(data.min()) == pytest.approx(0.289, abs=1e-3)
        assert float(data.max()) == pytest.approx(2.124, abs=1e-3)
        np.testing.assert_allclose(data[:, 0, :], stored["sinoRD"].T * 0.001, rtol=1e-6)
    # Attenuation read as counts would be inverted silently: refused, naming --normalised.
    with pytest.raises(ScanFormatError, match=r"looks like attenuation.*--normalised"):
        open_scan(scan)
    with open_scan(scan, LoadOptions(counts=True)) as raw:  # the user insists: as stored
        assert raw.layout.normalisation == "air"
        assert raw.read(7, 8)[0, 0, 3] == stored["sinoRD"][3, 7]


def test_count_sinograms_are_not_taken_for_attenuation(real: Path) -> None:
    neutron = real / "sarepy_neutron360" / "sinogram_360_neutron_image.tif"
    with open_scan(neutron, LoadOptions(angles=(0.0, 360.0, 459))) as reader:
        assert reader.layout.normalisation == "air"
    # The same counts turned into attenuation (-log of counts over the air) are caught.
    counts = tifffile.imread(neutron).astype(np.float64)
    attenuation = -np.log(np.maximum(counts, 1.0) / counts.max())
    assert attenuation_signs(counts) is None
    assert "darker than the middle" in str(attenuation_signs(attenuation))
    assert "negative" in str(attenuation_signs(attenuation - 0.5))


def test_sinogram_rows_only_zero_one(real: Path) -> None:
    scan = real / "dls_i12_dendrite" / "RealDataDend.mat"
    with open_scan(scan, LoadOptions(rows=(0, 1), normalised=True)) as reader:
        assert reader.layout.rows == 1
    with pytest.raises(ScanFormatError, match=r"RealDataDend\.mat: --rows 0:2: .*<= 1"):
        open_scan(scan, LoadOptions(rows=(0, 2), normalised=True))


# --- A5 sarepy neutron 360°: sinogram TIFF without angles -------------------------------------


def test_neutron_sinogram_tif(real: Path) -> None:
    scan = real / "sarepy_neutron360" / "sinogram_360_neutron_image.tif"
    assert detect_format(scan) == "sinogram-tif"
    with pytest.raises(ScanFormatError, match=r"sinogram_360_neutron_image\.tif: no rotation"):
        open_scan(scan)
    with open_scan(scan, LoadOptions(angles=(0, 360, 459))) as reader:
        layout = reader.layout
        assert (layout.frames, layout.rows, layout.cols) == (459, 1, 503)
        assert layout.dtype == np.uint16 and layout.normalisation == "air"
        assert layout.angles_deg[0] == 0 and layout.angles_deg[229] == 180
        assert layout.angles_deg[-1] == 360 and layout.geometry.scan_range_deg == 360
        stored = tifffile.imread(scan)  # big-endian in the file
        data = reader.read(100, 200)
        assert data.dtype.str == "<u2"
        np.testing.assert_array_equal(data[:, 0, :], stored[100:200])


# --- NeXus details: invalid frames, other entry names, dangling links ------------------------


def write_nxtomo_by_hand(path: Path, keys: list[int], entry: str = "scan") -> np.ndarray:
    data = np.arange(len(keys) * 2 * 3, dtype=np.float64).reshape(len(keys), 2, 3)
    with h5py.File(path, "w") as file:
        group = file.create_group(entry)
        group.attrs["NX_class"] = "NXentry"
        group["definition"] = "NXtomo"
        detector = group.create_group("instrument/detector")
        detector["data"] = data
        detector["image_key"] = np.asarray(keys, np.int32)
        detector["decoy"] = np.zeros((len(keys), 2, 3))
        group["sample/rotation_angle"] = np.linspace(0, np.pi, len(keys))
        group["sample/rotation_angle"].attrs["units"] = b"radians"
        group["instrument/missing"] = h5py.ExternalLink("nowhere.h5", "/x")
        group["instrument/loop"] = h5py.SoftLink(f"/{entry}")
    return data


def test_nxtomo_invalid_frames_are_skipped(tmp_path: Path) -> None:
    keys = [2, 1, 0, 3, 0, 0, 3, 1]
    data = write_nxtomo_by_hand(tmp_path / "odd.nxs", keys)
    with open_scan(tmp_path / "odd.nxs") as reader:
        layout = reader.layout
        assert layout.metadata["skipped_invalid_frames"] == 2
        assert layout.metadata["data_path"] == "/scan/instrument/detector/data"
        assert list(layout.image_keys) == [2, 1, 0, 0, 0, 1]
        assert layout.dtype == np.float32  # float64 is not a wire type
        kept = [0, 1, 2, 4, 5, 7]
        np.testing.assert_array_equal(reader.read(0, 6), data[kept].astype(np.float32))
        np.testing.assert_array_equal(reader.read(2, 5), data[[2, 4, 5]].astype(np.float32))
        np.testing.assert_allclose(layout.angles_deg, np.linspace(0, 180, 8)[kept])


def test_bad_image_key_value_is_refused(tmp_path: Path) -> None:
    write_nxtomo_by_hand(tmp_path / "bad.nxs", [0, 1, 7])
    options = LoadOptions(image_key_path="/scan/instrument/detector/image_key")
    with pytest.raises(ScanFormatError, match=r"bad\.nxs:/scan/.*image_key: .*got 7 at frame 2"):
        open_scan(tmp_path / "bad.nxs", options)


def test_image_key_length_mismatch(tmp_path: Path) -> None:
    write_nxtomo_by_hand(tmp_path / "k.nxs", [0, 0, 1])
    with h5py.File(tmp_path / "k.nxs", "a") as file:
        file["/scan/short_key"] = np.zeros(2, np.int32)
    options = LoadOptions(image_key_path="/scan/short_key")
    with pytest.raises(ScanFormatError, match=r"k\.nxs:/scan/short_key: expected 3 values"):
        open_scan(tmp_path / "k.nxs", options)


# --- write_nxtomo round trip -----------------------------------------------------------------


class TinyReader:
    """The smallest FrameReader: a fixed stack in memory."""

    def __init__(self, data: npt.NDArray[Any], keys: list[int], angles: list[float]) -> None:
        self.data = data
        self._layout = ScanLayout(
            rows=data.shape[1], cols=data.shape[2], dtype=data.dtype,
            image_keys=np.asarray(keys, np.int8), angles_deg=np.asarray(angles, np.float64),
            normalisation="none", geometry=Geometry(scan_range_deg=90.0), source="tiny",
            metadata={"note": "synthetic"},
        )
        self.closed = False

    @property
    def layout(self) -> ScanLayout:
        return self._layout

    def read(self, start: int, stop: int) -> npt.NDArray[Any]:
        check_block(self._layout, start, stop)
        return np.ascontiguousarray(self.data[start:stop])

    def close(self) -> None:
        self.closed = True


def test_write_nxtomo_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import streamer.sources.formats.nxtomo_writer as writer

    monkeypatch.setattr(writer, "BLOCK_BYTES", 2 * 3 * 4 * 4 * 2)  # force several blocks
    data = np.random.default_rng(5).random((7, 3, 4), dtype=np.float32)
    keys = [2, 1, 0, 0, 0, 0, 1]
    angles = [0.0, 0.0, 0.0, 30.0, 60.0, 90.0, 0.0]
    tiny = TinyReader(data, keys, angles)
    write_nxtomo(tmp_path / "out.nxs", tiny)
    assert not (tmp_path / "out.nxs.partial").exists()
    with h5py.File(tmp_path / "out.nxs") as file:
        assert file["/entry/instrument/detector/data"].chunks == (1, 3, 4)
        assert file["/entry/definition"][()] == b"NXtomo"
        assert file["/entry/sample/rotation_angle"].attrs["units"] == "degree"
        assert file["/entry/data/data"].shape == (7, 3, 4)
    with open_scan(tmp_path / "out.nxs") as back:
        layout = back.layout
        assert list(layout.image_keys) == keys
        assert list(layout.angles_deg) == angles
        assert layout.dtype == np.float32 and layout.normalisation == "none"
        assert back.read(0, 7).tobytes() == data.tobytes()
        assert layout.metadata["data_path"] == "/entry/instrument/detector/data"


def test_write_nxtomo_of_a_real_scan(real: Path, tmp_path: Path) -> None:
    options = LoadOptions(rows=(10, 12))
    with open_scan(real / "diad_k11-18014" / "k11-18014.nxs", options) as diad:
        write_nxtomo(tmp_path / "diad.nxs", diad)
        expected = diad.read(0, diad.layout.frames)
        layout = diad.layout
    with open_scan(tmp_path / "diad.nxs") as back:
        assert back.layout.dtype == np.uint16
        assert back.layout.normalisation == "flat_dark"
        np.testing.assert_array_equal(back.layout.image_keys, layout.image_keys)
        np.testing.assert_array_equal(back.layout.angles_deg, layout.angles_deg)
        assert back.read(0, layout.frames).tobytes() == expected.tobytes()


# --- detection, options, reader contract -------------------------------------------------------


def test_unknown_format_names_the_file(tmp_path: Path) -> None:
    odd = tmp_path / "notes.xyz"
    odd.write_bytes(b"hello, not a scan")
    with pytest.raises(ScanFormatError, match=r"notes\.xyz: unknown scan format"):
        open_scan(odd)
    with pytest.raises(ScanFormatError, match=r"missing\.h5: no such file"):
        open_scan(tmp_path / "missing.h5")


def test_option_values_are_checked() -> None:
    with pytest.raises(ConfigError, match="--rows"):
        LoadOptions(rows=(5, 3))
    with pytest.raises(ConfigError, match="--angles"):
        LoadOptions(angles=(0.0, 180.0, 0))
    with pytest.raises(ConfigError, match="--format"):
        LoadOptions(format="jpeg")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--scale"):
        LoadOptions(scale=float("nan"))
    assert parse_rows("3:7") == (3, 7)
    assert parse_angle_range("0,180,181") == (0.0, 180.0, 181)
    with pytest.raises(ConfigError, match="--rows"):
        parse_rows("7")


def test_read_checks_its_block_and_close_is_final(tmp_path: Path, frames: np.ndarray) -> None:
    scan = write_dxchange(tmp_path / "x.h5", frames, np.linspace(0, 180, 12))
    reader = open_scan(scan)
    assert reader.layout.frames == 16
    with pytest.raises(ScanFormatError, match="read: expected 0 <= start < stop <= 16"):
        reader.read(10, 17)
    reader.close()
    reader.close()
    with pytest.raises(ScanFormatError, match="closed"):
        reader.read(0, 1)


def test_scale_makes_float32(tmp_path: Path, frames: np.ndarray) -> None:
    scan = write_dxchange(tmp_path / "s.h5", frames, np.linspace(0, 180, 12))
    with open_scan(scan, LoadOptions(scale=0.5)) as reader:
        assert reader.layout.dtype == np.float32
        np.testing.assert_array_equal(reader.read(4, 16), frames.astype(np.float32) * 0.5)


def test_open_reads_no_frames(real: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamer.sources.formats import segments

    def refuse(*args: Any) -> None:
        raise AssertionError("frames were read while opening the scan")

    monkeypatch.setattr(segments.H5Segment, "read_into", refuse)
    monkeypatch.setattr(segments.TiffSegment, "read_into", refuse)
    with open_scan(real / "diad_k11-18014" / "k11-18014.nxs") as diad:
        assert diad.layout.frames == 3201
    with open_scan(real / "dls_i13_24737" / "tiffs", i13_options(real)) as i13:
        assert i13.layout.frames == 93


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd (Linux)")
def test_close_releases_externally_linked_files(real: Path) -> None:
    def open_files() -> set[str]:
        found = set()
        for fd in Path("/proc/self/fd").iterdir():
            try:
                found.add(str(fd.readlink()))
            except OSError:
                continue
        return found

    before = open_files()
    with open_scan(real / "diad_k11-18014" / "k11-18014.nxs") as reader:
        reader.read(0, 10)
        assert any("k11-18014-imaging.h5" in f for f in open_files() - before)
    assert not {f for f in open_files() - before if "k11-18014" in f}


def test_hdf5_references_and_npy_angles(tmp_path: Path, frames: np.ndarray) -> None:
    with h5py.File(tmp_path / "scan.h5", "w") as file:
        file["/entry/instrument/detector/data"] = frames
        file["/entry/refs/dark"] = np.full((2, 4, 5), 3, np.uint16)
    with h5py.File(tmp_path / "flat.h5", "w") as file:
        file["/flat"] = np.full((4, 5), 800, np.uint16)  # one 2-D frame
    np.save(tmp_path / "angles.npy", np.linspace(0, 180, 12))
    options = LoadOptions(
        darks=("/entry/refs/dark",),  # a dataset in the scan file itself
        flats=(f"{tmp_path / 'flat.h5'}:/flat",),
        angles_path=str(tmp_path / "angles.npy"),
    )
    with open_scan(tmp_path / "scan.h5", options) as reader:
        layout = reader.layout
        assert list(layout.image_keys[:4]) == [2, 2, 1, 0]
        assert layout.frames == 15 and layout.dtype == np.uint16
        assert layout.normalisation == "flat_dark"
        assert layout.metadata["image_key_path"] == "(none: all frames are projections)"
        block = reader.read(1, 5)
        assert list(block[:, 0, 0]) == [3, 800, 0, 20]
        assert layout.angles_deg[-1] == 180.0
