"""`run` on one rank reconstructs while the scan arrives (streaming FBP) when the pipeline
streams and its CoR is given: same volume as the batch path, latency in the report."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import h5py
import numpy as np
import numpy.typing as npt

from stages.registry import REGISTRY
from streamer.ingest.service import IngestSettings
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.executor import ProcessedBlock, process_reader
from streamer.run.ranks import RankedReconstruction
from streamer.run.streaming import plan_streaming
from streamer.sources.sender import SendOptions, send_scan, start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.protocol import AbortHeader, FramesHeader, encode_frames, encode_header
from tests.run.ranks import one_rank

GIVEN = ("pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n"
         "  - method: fourier_fbp\n    parameters: {center: 33.5}\n")
AUTO = ("pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n"
        "  - method: fourier_fbp\n")
JOIN_S = 60.0


def _serve(text: str, scan: SimulatedScan, tmp_path: Path, loopback_pair,
           **options: object) -> tuple[RankedReconstruction, list[str]]:
    steps = parse_pipeline(text, REGISTRY, source="live.yaml").steps
    lines: list[str] = []
    runner = one_rank(steps, text, tmp_path, block_frames=16, block_sinograms=2,
                      log=lines.append)
    live = runner.ranked
    push, pull = loopback_pair()
    service = runner.service(pull, IngestSettings(idle_timeout_s=5))
    thread = threading.Thread(target=service.run, kwargs={"max_scans": 1})
    thread.start()
    send_scan(push, scan, SendOptions(scan_id="s", block=5, **options))  # type: ignore[arg-type]
    thread.join(JOIN_S)
    assert not thread.is_alive()
    return live, lines


def _batch(text: str, scan: SimulatedScan) -> npt.NDArray[np.float32]:
    steps = parse_pipeline(text, REGISTRY, source="batch.yaml").steps
    slices: list[ProcessedBlock] = []
    process_reader(steps, scan, start_header(scan.layout, "s"), block_frames=16,
                   block_sinograms=2, on_sinograms=slices.append)
    return np.concatenate([b.data for b in sorted(slices, key=lambda b: int(b.indices[0]))])


def test_streaming_volume_equals_the_batch_volume(loopback_pair, tmp_path: Path) -> None:
    scan = SimulatedScan(SimulationConfig(rows=5, cols=64, projections=120, cor_px=33.5))
    live, lines = _serve(GIVEN, scan, tmp_path, loopback_pair, order="shuffle")
    (output,) = live.outputs
    assert output.complete, output.error
    assert any("reconstruction: streaming" in line for line in lines), lines
    assert not any("back to reconstruction at close" in line for line in lines), lines
    with h5py.File(output.path) as file:
        volume = file["/entry/reconstruction/data"][...]
        report = json.loads(file["/entry/process/report"][()])
    reference = _batch(GIVEN, scan)
    assert volume.shape == reference.shape
    error = np.linalg.norm(volume - reference) / np.linalg.norm(reference)
    assert 0 < error < 1e-5, error  # 0 would mean the batch path ran twice
    latency = report["latency"]
    assert latency["reconstruction"] == "streaming" and latency["last_frame_to_volume_s"] >= 0
    assert output.latency is not None and "(streaming)" in output.latency


def test_a_cor_found_at_close_reconstructs_at_close(loopback_pair, tmp_path: Path) -> None:
    scan = SimulatedScan(SimulationConfig(rows=3, cols=64, projections=120, cor_px=33.5))
    live, lines = _serve(AUTO, scan, tmp_path, loopback_pair)
    (output,) = live.outputs
    assert output.complete and output.latency is not None
    assert "(at close)" in output.latency
    assert any("CoR is found at close" in line for line in lines), lines
    with h5py.File(output.path) as file:
        report = json.loads(file["/entry/process/report"][()])
    assert report["latency"]["reconstruction"] == "at close"


def test_a_scan_missing_projections_falls_back_to_batch(loopback_pair, tmp_path: Path) -> None:
    steps = parse_pipeline(GIVEN, REGISTRY, source="live.yaml").steps
    lines: list[str] = []
    runner = one_rank(steps, GIVEN, tmp_path, block_frames=16, block_sinograms=2,
                      log=lines.append)
    live = runner.ranked
    push, pull = loopback_pair()
    service = runner.service(pull, IngestSettings(idle_timeout_s=5))
    thread = threading.Thread(target=service.run, kwargs={"max_scans": 1})
    thread.start()
    cut = SimulatedScan(SimulationConfig(rows=3, cols=64, projections=120, seed=4))
    layout = cut.layout
    push.send(encode_header(start_header(layout, "cut")))
    count = 30 + 90  # references and 90 of 120 projections, then the beam dies
    header = FramesHeader(scan="cut", first=0, count=count,
                          keys=layout.image_keys[:count].tolist(),
                          angles=layout.angles_deg[:count].tolist(), dtype="uint16",
                          shape=(3, 64))
    push.send_multipart(encode_frames(header, cut.read(0, count)))
    push.send(encode_header(AbortHeader(scan="cut", reason="beam lost")))
    thread.join(JOIN_S)
    assert not thread.is_alive()
    (output,) = live.outputs
    assert not output.complete and output.path is not None
    assert any("back to reconstruction at close" in line and "never arrived" in line
               for line in lines), lines
    with h5py.File(output.path) as file:
        volume = file["/entry/reconstruction/data"][...]
        assert file["/entry/process/angles_deg"].shape == (90,)  # batch on what came
    assert volume.shape == (3, 64, 64) and np.isfinite(volume).all()


def test_accumulators_that_do_not_fit_are_refused() -> None:
    steps = parse_pipeline(GIVEN, REGISTRY, source="live.yaml").steps
    fits = plan_streaming(steps, rows=8, cols=64, projections=120, block_sinograms=2,
                          memory_left=2**30)
    assert fits.section is not None
    refused = plan_streaming(steps, rows=8, cols=64, projections=120, block_sinograms=2,
                             memory_left=fits.section.memory_bytes - 1)
    assert refused.section is None and "MiB are left by the plan" in refused.reason
