"""The ``run`` service on 2 in-process ranks with steps whose kernels reach across the
block axis (a 3-D median in the projection section and one in the sinogram section):
the frames are dealt to the ranks in blocks, the bands overlap (ADR 0019's addendum), and
the volume equals the one-rank ``recon`` of the same scan; the band is reconstructed at
close (said in the log) instead of streamed."""

from __future__ import annotations

import threading
from pathlib import Path

import h5py
import numpy as np
import zmq

from stages.registry import REGISTRY
from streamer.exchange.links import MemoryLink
from streamer.pipeline.config import parse_pipeline
from streamer.run.from_file import ReconSettings
from streamer.run.output import ScanOutput
from streamer.run.ranks import RankedReconstruction, recon_on_ranks
from streamer.sources.sender import SendOptions, send_scan
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.transport import Endpoint, bound_address, open_socket
from tests.mpi.test_mpi_ingest import wait_for_peers
from tests.run.ranks import run_ranks, serve_scans

JOIN_S = 60.0
CONFIG = SimulationConfig(rows=9, cols=32, projections=40, flats=4, darks=2,
                          zinger_rate=1.0, seed=5, cor_px=16.0)
PIPELINE = """\
pipeline:
  - method: normalize
  - method: remove_outlier3d
    parameters: {kernel_size: 3, dif: 0.05}
  - method: minus_log
  - method: remove_stripe_based_sorting
    parameters: {size: 5}
  - method: median_filter3d
    parameters: {kernel_size: 3}
  - method: fbp
    parameters: {center: 16.0}
"""


def _source(ready: threading.Event, address: list[str]) -> threading.Thread:
    def run() -> None:
        with zmq.Context() as context:
            push = open_socket(context, "push", Endpoint("tcp://127.0.0.1:*", bind=True),
                               hwm=8, send_timeout_ms=int(JOIN_S * 1000), linger_ms=10_000)
            address.append(bound_address(push))
            monitor = push.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            ready.set()
            try:
                wait_for_peers(push, monitor, 2)
                send_scan(push, SimulatedScan(CONFIG), SendOptions(scan_id="a", block=3))
            finally:
                push.disable_monitor()
                monitor.close(linger=0)
                push.close()

    thread = threading.Thread(target=run, name="source", daemon=True)
    thread.start()
    return thread


def _served_and_one_rank(tmp_path: Path, text: str,
                         ) -> tuple[ScanOutput, np.ndarray, np.ndarray, list[str]]:
    """``text`` served on 2 ranks (the output, its volume) and recon on one rank (its
    volume), and rank 0's log."""
    steps = parse_pipeline(text, REGISTRY, source="service.yaml").steps
    ready, address = threading.Event(), []
    source = _source(ready, address)
    assert ready.wait(JOIN_S)
    out = tmp_path / "volumes"
    said: list[str] = []

    def rank(link: MemoryLink) -> list[ScanOutput]:
        control, band_link = link.duplicate(), link.duplicate()
        ranked = RankedReconstruction(steps, text, out, control, band_link,
                                      block_frames=4, block_sinograms=2,
                                      memory_bytes=1 << 28, background=True,
                                      log=said.append if link.rank == 0 else None)
        return serve_scans(link, ranked, address[0], scans=1, wait_s=JOIN_S)

    results = run_ranks(2, rank)
    source.join(JOIN_S)
    (output,) = results[0]
    assert output.complete, output
    reference = tmp_path / "one.h5"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(text)
    run_ranks(1, lambda link: recon_on_ranks(
        SimulatedScan(CONFIG), ReconSettings(reference, pipeline=pipeline), link))
    with h5py.File(reference) as file:
        expected = file["/entry/reconstruction/data"][...]
    with h5py.File(output.path) as file:
        assert bool(file["/entry"].attrs["complete"])
        data = file["/entry/reconstruction/data"][...]
    return output, data, expected, said


def test_run_service_on_two_ranks_with_halo_steps_equals_one_rank(tmp_path: Path) -> None:
    _output, data, expected, said = _served_and_one_rank(tmp_path, PIPELINE)
    np.testing.assert_allclose(data, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    assert any("at close" in line and "remove_outlier3d needs whole sinograms" in line
               for line in said), said


#: HTTomo's order with a Paganin filter after the 3-D median: R ranks run the filter after
#: a reslice to ranges of whole frames and back (tests/run/test_whole_frame_tail_on_ranks.py).
PAGANIN = """\
pipeline:
  - method: remove_outlier3d
    parameters: {kernel_size: 3, dif: 0.05}
  - method: normalize
  - method: minus_log
  - method: paganin
    parameters: {pixel_size: 0.0001, dist: 50.0, energy: 20.0, alpha: 0.001}
  - method: fbp
    parameters: {center: 16.0}
"""


def test_run_service_on_two_ranks_with_paganin_after_a_halo_step(tmp_path: Path) -> None:
    """A later-sections pipeline: served, every section run and reconstructed at close."""
    _output, data, expected, _said = _served_and_one_rank(tmp_path, PAGANIN)
    np.testing.assert_allclose(data, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
