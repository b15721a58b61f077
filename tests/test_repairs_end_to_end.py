"""Bad pixel values through the whole service: repaired, counted and reported (issues 13, 14).

A scan whose float payload carries NaN and ±inf pixels (normalisation ``none``: the
payload is already attenuation, no correction stage runs) is sent with raw pyzmq to the
service's runner on one rank (:func:`tests.run.ranks.one_rank`); the volume must be
finite, complete and close to the clean scan's, with every repaired value counted in
the report, the output's metadata and the ``ScanOutput``; the next (clean) scan to the
same service comes back complete.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from stages.recon.fbp import fbp
from stages.registry import REGISTRY
from streamer.cli import main
from streamer.ingest.service import IngestSettings
from streamer.pipeline.config import parse_pipeline
from streamer.sources.formats import write_nxtomo
from streamer.sources.phantom import fit_radius_px, project, shepp_logan_3d
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.protocol import (
    EndHeader,
    FramesHeader,
    StartHeader,
    encode_frames,
    encode_header,
)
from tests.run.ranks import one_rank

PIPELINE = "pipeline:\n  - method: fbp\n    parameters: {filter_name: hann}\n"
JOIN_S = 60.0
ROWS, COLS, ANGLES = 3, 64, 90


def _send_attenuation_scan(push: Any, scan: str, frames: np.ndarray,
                           angles: np.ndarray) -> None:
    """``start`` (normalisation none, no references), all frames in blocks, ``end``."""
    push.send(encode_header(StartHeader(
        scan=scan, rows=ROWS, cols=COLS, dtype="float32", frames=ANGLES, projections=ANGLES,
        flats=0, darks=0, normalisation="none")))
    for first in range(0, ANGLES, 30):
        header = FramesHeader(scan=scan, first=first, count=30, keys=[0] * 30,
                              angles=angles[first:first + 30].tolist(), dtype="float32",
                              shape=(ROWS, COLS))
        push.send_multipart(encode_frames(header, frames[first:first + 30]))
    push.send(encode_header(EndHeader(scan=scan, sent=ANGLES)))


def test_nan_and_inf_pixels_are_repaired_counted_and_reported(loopback_pair,
                                                               tmp_path: Path) -> None:
    angles = np.arange(ANGLES) * 180.0 / ANGLES
    clean = project(shepp_logan_3d(), angles, ROWS, COLS,
                    radius_px=fit_radius_px(COLS)).astype(np.float32)
    dirty = clean.copy()
    rng = np.random.default_rng(7)
    spots = rng.choice(dirty.size, size=60, replace=False)
    flat = dirty.reshape(-1)
    flat[spots[:30]] = np.nan
    flat[spots[30:50]] = np.inf
    flat[spots[50:]] = -np.inf
    steps = parse_pipeline(PIPELINE, REGISTRY, source="live.yaml").steps
    runner = one_rank(steps, PIPELINE, tmp_path, block_frames=16, block_sinograms=2)
    live = runner.ranked
    push, pull = loopback_pair()
    service = runner.service(pull, IngestSettings(idle_timeout_s=5))
    thread = threading.Thread(target=service.run, kwargs={"max_scans": 2})
    thread.start()
    _send_attenuation_scan(push, "dirty", dirty, angles)
    _send_attenuation_scan(push, "clean", clean, angles)  # the service goes on as usual
    thread.join(JOIN_S)
    assert not thread.is_alive()
    output, after = live.outputs
    assert after.scan == "clean" and after.complete and after.repaired == 0
    assert output.complete and output.error is None
    assert output.repaired == 60
    assert output.path is not None
    with h5py.File(output.path) as file:
        volume = file["/entry/reconstruction/data"][...]
        assert file["/entry"].attrs["complete"]
        meta = dict(file["/entry/metadata"].attrs)
        report = json.loads(file["/entry/process/report"][()])
    assert np.isfinite(volume).all()
    assert meta["repaired_nonfinite_input"] == 60 and meta["repaired_total"] == 60
    assert report["repairs"]["counts"] == {"nonfinite_input": 60}
    assert report["repairs"]["pixels"] == clean.size and report["repairs"]["warning"] is None
    # The repaired scan reconstructs as the clean one would (60 of 17 280 values replaced
    # by their row neighbours' line).
    reference = fbp(np.ascontiguousarray(clean.transpose(1, 0, 2)), angles_deg=angles,
                    center=float(output.center or (COLS - 1) / 2), filter_name="hann")
    r = np.corrcoef(volume.ravel(), reference.ravel())[0, 1]
    assert r > 0.99, r


def test_a_large_repaired_fraction_is_warned_about(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Above 1 % of the projection values repaired, recon logs a warning and the volume
    says so; the volume is still finite and complete (the data were repairable)."""
    config = SimulationConfig.from_kwargs(rows=4, cols=40, projections=30, flats=3, darks=2,
                                          seed=3)
    stored = tmp_path / "dead.nxs"
    write_nxtomo(stored, SimulatedScan(config))
    first = config.darks + config.flats
    with h5py.File(stored, "r+") as file:
        file["/entry/instrument/detector/data"][first:, :, 10:12] = 0  # 2 dead columns: 5 %
    out = tmp_path / "dead.h5"
    assert main(["recon", str(stored), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    dead = config.projections * config.rows * 2
    total = config.projections * config.rows * config.cols
    assert (f"warning: repaired {dead} of {total} projection pixel values (5.00 %, above "
            f"the 1 % warning threshold; no_signal {dead})") in captured.err
    assert f"repaired {dead} pixel values (5.000 % of the projections: no_signal {dead})" \
        in captured.out
    with h5py.File(out) as file:
        assert file["/entry"].attrs["complete"]
        assert np.isfinite(file["/entry/reconstruction/data"][...]).all()
        assert file["/entry/metadata"].attrs["repaired_fraction"] == pytest.approx(0.05)
