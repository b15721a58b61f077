"""Malformed stored scans get one clear error naming the file, never a traceback or a
silently wrong volume: NaN pixels, flats without beam; a replay that hits one aborts the
scan on the wire at once (the consumer does not wait for its idle timeout)."""

from __future__ import annotations

import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from streamer.cli import main
from streamer.errors import ScanFormatError
from streamer.ingest.service import IngestService, IngestSettings
from streamer.sources.formats import LoadOptions, open_scan, write_nxtomo
from streamer.sources.sender import SendOptions, send_scan
from streamer.sources.simulate import SimulatedScan, SimulationConfig

DETECTOR = "entry/instrument/detector"


def stored(tmp_path: Path, name: str) -> Path:
    config = SimulationConfig.from_kwargs(rows=4, cols=32, projections=40, flats=3, darks=2,
                                          dtype="float32")
    path = tmp_path / f"{name}.nxs"
    write_nxtomo(path, SimulatedScan(config))
    return path


def spoil(path: Path, key: int, position: int, value: float | None) -> int:
    """Set pixel (1, 3) of the ``position``-th frame with ``key`` (or the whole frames of
    that key, when ``value`` is None, to 0); returns that frame's index."""
    with h5py.File(path, "r+") as handle:
        keys = handle[f"{DETECTOR}/image_key"][()]
        data = handle[f"{DETECTOR}/data"]
        chosen = np.flatnonzero(keys == key)
        if value is None:
            for index in chosen:
                data[index] = 0
            return int(chosen[0])
        frame = data[chosen[position]]
        frame[1, 3] = value
        data[chosen[position]] = frame
        return int(chosen[position])


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_pixels_are_refused_naming_file_and_frame(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: float
) -> None:
    path = stored(tmp_path, "nan")
    index = spoil(path, key=0, position=5, value=value)
    assert main(["recon", str(path), "-o", str(tmp_path / "rec.h5"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"nan.nxs: frame {index} (projection): expected finite pixel values, got 1 " \
           "NaN/Inf pixels" in err
    assert "Traceback" not in err


def test_flats_without_beam_are_refused_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = stored(tmp_path, "zero-flats")
    spoil(path, key=1, position=0, value=None)
    assert main(["recon", str(path), "-o", str(tmp_path / "rec.h5"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "zero-flats.nxs: stage 'normalize': flats: expected flat − dark > 0" in err
    assert "Traceback" not in err


def test_replay_of_a_bad_scan_aborts_it_on_the_wire(tmp_path: Path, loopback_pair) -> None:
    path = stored(tmp_path, "nan")
    spoil(path, key=0, position=30, value=np.nan)
    push, pull = loopback_pair()
    service = IngestService(pull, IngestSettings(idle_timeout_s=60))
    thread = threading.Thread(target=service.run, kwargs={"max_scans": 1})
    thread.start()
    with open_scan(path, LoadOptions()) as reader, pytest.raises(ScanFormatError):
        send_scan(push, reader, SendOptions(scan_id="spoilt", block=4))
    thread.join(30)
    assert not thread.is_alive()  # closed by the abort, long before the idle timeout
    report = service.reports[0]
    assert report.status == "aborted"
    assert "source failed: " in report.close_reason and "nan.nxs" in report.close_reason
