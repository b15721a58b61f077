"""Memory you can state, for the service: the peak RSS of ``run`` on one rank and on each
of two MPI ranks, while a simulated scan is sent into it over TCP, stays within the plan.

The plan is :func:`~streamer.pipeline.plan.plan_scan` (the rank's sinogram band +
references + the largest block) plus what the service holds on top of it while the scan
streams, each bounded by a setting (:func:`planned` lists them):

* the receive queue: ``--hwm`` messages of at most the sender's message size (libzmq
  holds them before ingest reads them), and the frames ingest holds for the runner (the
  store hands them over at every drain: at most the messages read in one poll, counted
  as one more queue);
* the projection block being filled: up to ``block`` raw frames copied out of their
  messages before they are corrected (the corrected block is the plan's);
* the output slab: one block of reconstructed slices (``block_sinograms × cols²``
  float32) handed to the writer;
* the streaming accumulators, when the scan streams (:func:`~streamer.run.streaming.
  plan_streaming` decides within what the plan leaves; here the tiny scan streams, the
  big one is reconstructed at close).

The base is measured, not tuned: the same command on a two-row scan (interpreter,
libraries, sockets, threads), less its own plan. The child runs with glibc's mmap
threshold fixed at 1 MiB (:data:`ALLOCATOR`), so that its RSS follows what the code holds:
with glibc's default (a dynamic threshold, one arena per thread) the same one-rank run
measured anywhere from 113 to 198 MiB over the base in four runs, the difference being
freed blocks that the ingest (main) thread's arena keeps while the reconstruction
worker's arena grows at close (``MALLOC_ARENA_MAX=1`` gives 144 MiB too). That is the
allocator's, not the plan's: ``docs/explanation/memory.md`` says how to pin it in
production.

Measured with the threshold fixed (64 rows × 256 × 720, budget 0.12 GiB, 2-core machine
at load average 9-12): one rank 128-143 MiB over the base against a plan of 151 MiB; two
ranks 104-107 MiB per rank against 155 MiB (each rank receives about half of the frames;
the plan counts a projection block as if one rank got them all). The headroom is 24 MiB
(32 MiB above the highest one-rank figure). A path that held the corrected scan a second
time (+45 MiB on one rank: 173-188 MiB against the bound of 175 MiB) would fail in most
runs; one that kept the volume (16 MiB) until the scan closed, or the raw scan (22.5 MiB),
would not be caught by this bound alone: the stages' block estimates are conservative by
more than that. The figures are printed (``-s``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq

from streamer.pipeline.plan import plan_scan
from streamer.run.from_file import ReconSettings, pipeline_for
from streamer.run.streaming import plan_streaming
from streamer.sources.sender import SendOptions, send_scan
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.transport import Endpoint, bound_address, open_socket
from tests.mpi.test_mpi_ingest import wait_for_peers

MIB = 2**20
BUDGET_GIB = 0.12
HEADROOM = 24 * MIB
#: glibc: arrays of 1 MiB and more are mapped and unmapped on their own (no dynamic mmap
#: threshold), so RSS follows what the code holds, not what the arenas retain.
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(MIB)}
ROWS, COLS, ANGLES, FLATS, DARKS = 64, 256, 720, 20, 10
SEND_BLOCK = 8  # frames per message the source sends
HWM = 16  # --hwm of the service, and the source's
TIMEOUT_S = 300
CHILD = ("import resource, sys\nfrom streamer.cli import main\ncode = main(sys.argv[1:])\n"
         "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
         "flush=True)\nsys.exit(code)\n")
PIPELINE = "pipeline:\n  - method: normalize\n    parameters: {minus_log: true}\n" \
           "  - method: fourier_fbp\n    parameters: {center: 127.5}\n"


def simulated(rows: int) -> SimulatedScan:
    scan = SimulatedScan(SimulationConfig.from_kwargs(
        rows=rows, cols=COLS, projections=ANGLES, flats=FLATS, darks=DARKS))
    scan.read(0, scan.layout.frames)  # simulated before it is sent (the sender's time)
    return scan


def peaks(scan: SimulatedScan, pipeline: Path, out: Path, ranks: int) -> list[int]:
    """Peak RSS in bytes of each rank of ``run`` while ``scan`` is sent into it."""
    with zmq.Context() as context:
        push = open_socket(context, "push", Endpoint("tcp://127.0.0.1:*", bind=True),
                           hwm=HWM, send_timeout_ms=TIMEOUT_S * 1000, linger_ms=30_000)
        monitor = push.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        command = [sys.executable, "-c", CHILD, "run", str(pipeline), "--from",
                   bound_address(push), "--scans", "1", "--out", str(out), "--memory",
                   str(BUDGET_GIB), "--hwm", str(HWM), "--idle-timeout", "60", "--quiet"]
        if ranks > 1:
            launcher = Path(sys.executable).with_name("mpiexec")
            if not launcher.exists():
                pytest.skip("mpiexec not found: pip install 'tomo-streamer[mpi]'")
            command = [str(launcher), "-n", str(ranks), *command]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env={**os.environ, **ALLOCATOR})
        sent: list[BaseException] = []

        def source() -> None:
            try:
                wait_for_peers(push, monitor, ranks)  # every rank connected: a fair deal
                send_scan(push, scan, SendOptions(scan_id=f"memory-{ranks}",
                                                  block=SEND_BLOCK))
            except BaseException as error:  # re-raised below
                sent.append(error)

        thread = threading.Thread(target=source, name="source", daemon=True)
        thread.start()
        try:
            stdout, stderr = process.communicate(timeout=TIMEOUT_S)
        finally:
            process.kill()
            thread.join(TIMEOUT_S)
            push.disable_monitor()
            monitor.close(linger=0)
            push.close(linger=0)
    assert not sent, sent
    assert process.returncode == 0, stderr[-2000:]
    found = [int(line.split()[1]) * 1024 for line in stdout.splitlines()
             if line.startswith("PEAK_RSS_KIB")]
    assert len(found) == ranks, stdout
    return found


def planned(rows: int, ranks: int) -> tuple[int, dict[str, int]]:
    """One rank's bytes for a scan of ``rows``: the plan and the service's bounded
    buffers on top of it (see the module docstring), by part."""
    steps, _ = pipeline_for(ReconSettings(Path("x.h5"), center=127.5), "flat_dark")
    frames, sinograms, _, memory = plan_scan(
        steps, rows=rows, cols=COLS, angles=ANGLES, references=FLATS + DARKS,
        dtype=np.dtype(np.uint16), budget_bytes=int(BUDGET_GIB * 2**30),
        band_rows=-(-rows // ranks))
    message = SEND_BLOCK * rows * COLS * 2
    band = -(-rows // ranks)
    streaming = plan_streaming(steps, rows=band, cols=COLS, projections=ANGLES,
                               block_sinograms=sinograms,
                               memory_left=memory.budget - memory.total).section
    parts = {"streaming": streaming.memory_bytes if streaming is not None else 0,
             "band": memory.sinogram_buffer, "references": memory.references,
             "block": memory.blocks, "queues": 2 * HWM * message,
             "raw block": frames * rows * COLS * 2,
             "output slab": min(sinograms, -(-rows // ranks)) * COLS * COLS * 4}
    return sum(parts.values()), parts


@pytest.mark.parametrize("ranks", [1, 2])
def test_run_peak_rss_per_rank_is_within_the_plan(tmp_path: Path, ranks: int) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    # The two-row run: interpreter, libraries, sockets, threads, plus its own small plan.
    base = max(peaks(simulated(2), pipeline, tmp_path / "base", ranks)) - planned(2, ranks)[0]
    plan, parts = planned(ROWS, ranks)
    measured = peaks(simulated(ROWS), pipeline, tmp_path / "big", ranks)
    print(f"\nrun, {ranks} rank(s): plan {plan / MIB:.1f} MiB per rank ("
          + ", ".join(f"{name} {value / MIB:.1f}" for name, value in parts.items())
          + f"); peak over the base {', '.join(f'{(m - base) / MIB:.1f}' for m in measured)}"
          f" MiB (base {base / MIB:.1f} MiB)")
    for peak in measured:
        assert peak - base <= plan + HEADROOM, (peak - base) / MIB
