"""End-to-end: how much of the work the streaming design overlaps, and the latency from
the last projection to the last slice written.

One run, same scan, same pipeline (the ``recon`` default: flat/dark, -log, the default
reconstructor), on this machine:

* **stage times**, each measured alone on the whole scan: reading the stored file,
  the projection section (correction), the sinogram section (reconstruction), writing
  the volume to HDF5;
* **recon wall**: ``run_recon`` on the stored file (read → correct → reconstruct →
  write, one process), compared with the sum and the max of the stage times;
* **live**: the scan streamed at full speed over loopback TCP into the ``run`` service
  (ingest + live correction + reconstruction at close + HDF5), and the latency from the
  moment the last frame was sent to the moment the volume was closed.

Medians of ``--repeats`` runs. Usage::

    python tools/bench_e2e.py --size 512 --projections 600 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from stages.registry import REGISTRY
from streamer.exchange.links import MemoryNetwork
from streamer.ingest.cluster import ClusterIngest
from streamer.ingest.service import IngestService, IngestSettings
from streamer.pipeline.config import parse_pipeline
from streamer.pipeline.executor import apply_steps
from streamer.pipeline.sections import split_sections
from streamer.run.from_file import CORRECTIONS, RECONSTRUCTION, ReconSettings, run_recon
from streamer.run.output import ScanOutput
from streamer.run.ranks import RankedReconstruction
from streamer.sinks.hdf5 import Hdf5VolumeWriter
from streamer.sources.formats import LoadOptions, open_scan, write_nxtomo
from streamer.sources.sender import SendOptions, send_scan
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.transport import Endpoint, bound_address, open_socket

BLOCK_FRAMES = 32
BLOCK_SINOGRAMS = 16


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    result = work()
    return time.perf_counter() - began, result


def correct(steps: tuple[Any, ...], projections: np.ndarray, *, darks: np.ndarray,
            flats: np.ndarray) -> np.ndarray:
    """The projection section over the whole scan, block by block."""
    blocks = [apply_steps(steps, projections[i:i + BLOCK_FRAMES], darks=darks, flats=flats)
              for i in range(0, len(projections), BLOCK_FRAMES)]
    return np.concatenate(blocks)


def stage_times(stored: Path, steps: tuple[Any, ...], out: Path) -> dict[str, float]:
    projection_steps, sinogram_steps = split_sections(steps)
    with open_scan(stored, LoadOptions()) as reader:
        layout = reader.layout
        read_s, frames = timed(lambda: reader.read(0, layout.frames))
    keys = np.asarray(layout.image_keys)
    darks = frames[keys == 2].astype(np.float32)
    flats = frames[keys == 1].astype(np.float32)
    projections = frames[keys == 0]
    angles = np.asarray(layout.angles_deg)[keys == 0]

    began = time.perf_counter()
    corrected = correct(projection_steps, projections, darks=darks, flats=flats)
    correct_s = time.perf_counter() - began
    del frames, projections  # the size (1024² x 1200) needs the memory back
    sinograms = np.ascontiguousarray(corrected.transpose(1, 0, 2))
    del corrected
    center = (layout.cols - 1) / 2  # the pipeline gives the recon this CoR

    def reconstruct() -> np.ndarray:
        blocks = [apply_steps(sinogram_steps, sinograms[i:i + BLOCK_SINOGRAMS], darks=None,
                              flats=None, angles_deg=angles)
                  for i in range(0, len(sinograms), BLOCK_SINOGRAMS)]
        return np.concatenate(blocks)

    reconstruct_s, volume = timed(reconstruct)
    path = out / "stage-write.h5"
    path.unlink(missing_ok=True)

    def write() -> None:
        with Hdf5VolumeWriter(path, detector_rows=list(range(volume.shape[0])),
                              slice_shape=volume.shape[1:], angles_deg=angles,
                              center_of_rotation=center, center_method="given",
                              pipeline_yaml="", scan="bench") as writer:
            for i in range(0, volume.shape[0], BLOCK_SINOGRAMS):
                writer.write(i, volume[i:i + BLOCK_SINOGRAMS])

    write_s, _ = timed(write)
    return {"read": read_s, "correct": correct_s, "reconstruct": reconstruct_s,
            "write": write_s}


def recon_wall(stored: Path, out: Path) -> float:
    target = out / "recon.h5"
    target.unlink(missing_ok=True)
    with open_scan(stored, LoadOptions()) as reader:
        center = (reader.layout.cols - 1) / 2
        seconds, _ = timed(lambda: run_recon(reader, ReconSettings(
            output=target, center=center, block_frames=BLOCK_FRAMES,
            block_sinograms=BLOCK_SINOGRAMS)))
    return seconds


def live_latency(scan: SimulatedScan, pipeline: str, out: Path, serial: int) -> dict[str, float]:
    steps = parse_pipeline(pipeline, REGISTRY, source="bench").steps
    finished: list[float] = []

    def on_output(output: ScanOutput) -> None:
        finished.append(time.perf_counter())

    link = MemoryNetwork(1).link(0)  # the `run` service's runner on one rank
    live = RankedReconstruction(steps, pipeline, out / f"live-{serial}", link.duplicate(),
                                link.duplicate(), block_frames=BLOCK_FRAMES,
                                block_sinograms=BLOCK_SINOGRAMS, on_output=on_output)
    with zmq.Context() as context:
        pull = open_socket(context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True), hwm=16,
                           max_message_bytes=1 << 30)
        push = open_socket(context, "push", Endpoint(bound_address(pull), bind=False),
                           hwm=16, send_timeout_ms=120_000)
        service = IngestService(pull, IngestSettings(idle_timeout_s=30), drain=live.drain,
                                on_event=live.on_event, cluster=ClusterIngest(link, 30))
        thread = threading.Thread(target=service.run, kwargs={"max_scans": 1})
        thread.start()
        began = time.perf_counter()
        send_scan(push, scan, SendOptions(scan_id=f"bench-{serial}", block=8))
        sent = time.perf_counter()
        thread.join(600)
        push.close(linger=0)
        pull.close(linger=0)
    if not finished:
        raise RuntimeError("the live run wrote no volume")
    return {"live_wall": finished[0] - began, "send": sent - began,
            "latency": finished[0] - sent}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="detector rows = cols")
    parser.add_argument("--projections", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    out.mkdir(parents=True, exist_ok=True)
    config = SimulationConfig.from_kwargs(rows=args.size, cols=args.size,
                                          projections=args.projections, flats=10, darks=5)
    scan = SimulatedScan(config)
    stored = out / "scan.nxs"
    stored.unlink(missing_ok=True)
    write_nxtomo(stored, scan)
    center = (args.size - 1) / 2
    pipeline = ("pipeline:\n" + CORRECTIONS["flat_dark"] + RECONSTRUCTION.rstrip("\n")
                + f"\n    parameters: {{center: {center}}}\n")
    steps = parse_pipeline(pipeline, REGISTRY, source="bench").steps
    rows: list[dict[str, float]] = []
    for repeat in range(args.repeats):
        row = stage_times(stored, steps, out)
        row["recon_wall"] = recon_wall(stored, out)
        row.update(live_latency(scan, pipeline, out, repeat))
        rows.append(row)
    median = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    stages = [median[k] for k in ("read", "correct", "reconstruct", "write")]
    print(f"scan: {args.size}x{args.size} detector, {args.projections} projections; "
          f"pipeline: {RECONSTRUCTION.strip()}; medians of {args.repeats}")
    print("| read | correct | reconstruct | write | sum | max | recon wall | wall/sum "
          "| live wall | send | latency (last frame sent -> volume closed) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {median['read']:.2f} s | {median['correct']:.2f} s | "
          f"{median['reconstruct']:.2f} s | {median['write']:.2f} s | {sum(stages):.2f} s | "
          f"{max(stages):.2f} s | {median['recon_wall']:.2f} s | "
          f"{median['recon_wall'] / sum(stages):.2f} | {median['live_wall']:.2f} s | "
          f"{median['send']:.2f} s | {median['latency']:.2f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
