"""``tomo-streamer run`` on several MPI ranks for real: ingest, reslice, band
reconstruction, part files and the master file.

Run by tests/mpi/test_launch.py under ``mpiexec -n R``; every rank runs the same test.
Rank 0 also plays the source (see test_mpi_ingest.py). The oracle is the one-rank batch
path (``run_recon``) on the same simulated scan and pipeline: the stitched volume must be
the same slices, the same CoR (found by the rank owning the middle row).
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zmq

from streamer.cli import main
from streamer.exchange.links import RankLink
from streamer.live.client import Preview, ScanEnd, Slice, Subscription
from streamer.run.from_file import ReconSettings, run_recon
from streamer.sources.formats import LoadOptions, open_scan, write_nxtomo
from streamer.sources.sender import SendOptions, send_scan
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from tests.mpi.test_mpi_ingest import JOIN_S, link, shared_dir, source

__all__ = ["link", "shared_dir"]  # fixtures used by the tests below
pytestmark = pytest.mark.mpi

PIPELINE = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: fbp
    parameters: {filter_name: hann}
"""


def test_run_on_ranks_writes_parts_and_a_master_equal_to_one_rank(
    link: RankLink, shared_dir: Path
) -> None:
    config = SimulationConfig.from_kwargs(rows=13, cols=40, projections=72, flats=4, darks=3,
                                          cor_px=20.5, seed=5)
    scan = SimulatedScan(config)
    pipeline = shared_dir / "pipeline.yaml"
    if link.rank == 0:
        pipeline.write_text(PIPELINE)
    ready = threading.Event()
    thread = None

    def play(push: zmq.Socket[Any]) -> None:
        send_scan(push, scan, SendOptions(scan_id="ranks", block=3, order="shuffle", seed=2))

    if link.rank == 0:
        thread = source(shared_dir, link.size, ready, play)
        assert ready.wait(JOIN_S)
    link.comm.Barrier()
    address = (shared_dir / "address.txt").read_text()
    out = shared_dir / "volumes"
    code = main(["run", str(pipeline), "--from", address, "--out", str(out), "--scans", "1",
                 "--idle-timeout", "10", "--quiet"])
    if thread is not None:
        thread.join(JOIN_S)
        assert not thread.is_alive()
    assert code == 0
    link.comm.Barrier()
    parts = sorted(out.glob("ranks.part*.h5"))
    rows_per_rank = [13 // link.size + (r < 13 % link.size) for r in range(link.size)]
    assert len(parts) == sum(1 for rows in rows_per_rank if rows)
    if link.rank != 0:
        return
    reference = run_recon(SimulatedScan(config), ReconSettings(
        output=shared_dir / "one-rank.h5", pipeline=pipeline))
    with h5py.File(out / "ranks.h5", "r") as master, \
            h5py.File(reference.output, "r") as single:
        data = master["/entry/reconstruction/data"]
        assert data.is_virtual
        assert bool(master["/entry"].attrs["complete"])
        np.testing.assert_array_equal(master["/entry/reconstruction/detector_row"][()],
                                      np.arange(13))
        assert master["/entry/reconstruction/slice_written"][()].all()
        center = float(master["/entry/process/center_of_rotation"][()])
        assert center == float(single["/entry/process/center_of_rotation"][()])
        expected = single["/entry/reconstruction/data"][()]
        np.testing.assert_allclose(data[()], expected, rtol=1e-5, atol=1e-5 * np.abs(
            expected).max())


def test_recon_tiff_on_ranks_is_one_shared_stack(link: RankLink, shared_dir: Path) -> None:
    """The documented ``mpiexec -n 2 tomo-streamer recon tooth.h5 -o tooth_stack --tiff``:
    one stack folder, each rank its slices, rank 0's ``volume.json`` complete."""
    import json

    import tifffile

    config = SimulationConfig.from_kwargs(rows=9, cols=32, projections=48, flats=3, darks=2,
                                          cor_px=15.5, seed=4)
    stored = shared_dir / "tooth.h5"
    pipeline = shared_dir / "pipeline.yaml"
    if link.rank == 0:
        write_nxtomo(stored, SimulatedScan(config))
        pipeline.write_text(PIPELINE)
    link.comm.Barrier()
    stack = shared_dir / "tooth_stack"
    code = main(["recon", str(stored), "-o", str(stack), "--tiff", "--pipeline",
                 str(pipeline), "--center", "15.5", "--quiet"])
    assert code == 0
    link.comm.Barrier()
    if link.rank != 0:
        return
    single = shared_dir / "single.h5"
    with open_scan(stored, LoadOptions()) as reader:
        run_recon(reader, ReconSettings(output=single, pipeline=pipeline, center=15.5))
    document = json.loads((stack / "volume.json").read_text())
    assert document["complete"] is True and document["slices_written"] == 9
    assert document["center_method"] == "given"
    data = np.stack([tifffile.imread(stack / f"slice_{row:05d}.tif") for row in range(9)])
    with h5py.File(single, "r") as one:
        expected = one["/entry/reconstruction/data"][()]
    np.testing.assert_allclose(data, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_recon_on_ranks_equals_one_rank(link: RankLink, shared_dir: Path) -> None:
    config = SimulationConfig.from_kwargs(rows=11, cols=36, projections=60, flats=3, darks=2,
                                          cor_px=17.0, seed=9)
    stored = shared_dir / "scan.nxs"
    pipeline = shared_dir / "pipeline.yaml"
    if link.rank == 0:
        write_nxtomo(stored, SimulatedScan(config))
        pipeline.write_text(PIPELINE)
    link.comm.Barrier()
    out = shared_dir / "ranks.h5"
    code = main(["recon", str(stored), "-o", str(out), "--pipeline", str(pipeline),
                 "--rows", "2:9", "--block", "7", "--quiet"])
    assert code == 0
    link.comm.Barrier()
    if link.rank != 0:
        return
    single = shared_dir / "single.h5"
    with open_scan(stored, LoadOptions(rows=(2, 9))) as reader:
        run_recon(reader, ReconSettings(output=single, pipeline=pipeline, first_row=2))
    with h5py.File(out, "r") as master, h5py.File(single, "r") as one:
        assert bool(master["/entry"].attrs["complete"])
        np.testing.assert_array_equal(master["/entry/reconstruction/detector_row"][()],
                                      np.arange(2, 9))
        assert (float(master["/entry/process/center_of_rotation"][()])
                == float(one["/entry/process/center_of_rotation"][()]))
        expected = one["/entry/reconstruction/data"][()]
        np.testing.assert_allclose(master["/entry/reconstruction/data"][()], expected,
                                   rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def free_port() -> int:
    """A loopback port free now (the feed binds it next; only rank 0 asks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


HOW_TO = Path(__file__).resolve().parents[2] / "docs" / "how-to" / "watch-live.md"


def documented_run_on_ranks(**values: str) -> list[str]:
    """The how-to's ``mpiexec -n 2 tomo-streamer run … --feed …`` line, as arguments of
    ``main``, with the option ``values`` replaced (the test's addresses and folder)."""
    line = next(line for line in HOW_TO.read_text().splitlines()
                if line.startswith("$ mpiexec -n 2 tomo-streamer run"))
    args = line.split("tomo-streamer ", 1)[1].split()
    for option, value in values.items():
        args[args.index(f"--{option}") + 1] = value
    return args


def test_run_on_ranks_with_feed_publishes_every_rank_to_one_feed(
    link: RankLink, shared_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``mpiexec -n R tomo-streamer run --feed`` as the how-to shows it: rank 0's feed
    shows every projection and every final slice, whichever rank corrected or
    reconstructed it; the terminal and the JSON report hold the transfers and latency."""
    config = SimulationConfig.from_kwargs(rows=9, cols=32, projections=48, flats=3, darks=2,
                                          cor_px=16.0, seed=4)
    scan = SimulatedScan(config)
    seen: list[Any] = []
    subscribed = threading.Event()
    threads: list[threading.Thread] = []
    if link.rank == 0:
        (shared_dir / "feed.txt").write_text(
            f"tcp://127.0.0.1:{free_port()} tcp://127.0.0.1:{free_port()}")
    link.comm.Barrier()
    feed, control = (shared_dir / "feed.txt").read_text().split()
    if link.rank == 0:
        def watch() -> None:  # the feed's subscriber; the source waits for it
            with Subscription(feed, timeout_s=JOIN_S, hwm=100_000) as sub:
                sub.wait_connected()
                subscribed.set()
                while not seen or not isinstance(seen[-1], ScanEnd):
                    seen.append(sub.receive(JOIN_S))

        def play(push: zmq.Socket[Any]) -> None:
            assert subscribed.wait(JOIN_S)
            send_scan(push, scan, SendOptions(scan_id="fed", block=4, order="shuffle", seed=1))

        ready = threading.Event()
        threads = [threading.Thread(target=watch, name="subscriber"),
                   source(shared_dir, link.size, ready, play)]
        threads[0].start()
        assert ready.wait(JOIN_S)
    link.comm.Barrier()
    address = (shared_dir / "address.txt").read_text()
    out = shared_dir / "volumes"
    code = main([*documented_run_on_ranks(**{"from": address, "out": str(out), "feed": feed,
                                              "control": control}),
                 "--scans", "1", "--idle-timeout", "10", "--quiet"])
    for thread in threads:
        thread.join(JOIN_S)
        assert not thread.is_alive()
    assert code == 0
    link.comm.Barrier()
    if link.rank != 0:
        return
    printed = capsys.readouterr().out
    assert "  latency: frame→preview p50 " in printed
    assert "  transfers: reslice " in printed and "relay to rank 0 " in printed
    previews = [m for m in seen if isinstance(m, Preview)]
    assert previews[-1].header.projections == config.projections
    bands = sorted({m.header.band for m in seen if isinstance(m, Slice)})
    assert [row for first, last in bands for row in range(first, last)] == list(range(9))
    end = seen[-1].header
    assert end.complete and end.latency is not None
    report = json.loads((out / "fed.json").read_text())
    assert report["latency"]["last_frame_to_volume_s"] is not None
    total = report["transfers"]["total"]
    assert total["reslice"]["bytes_sent"] == total["reslice"]["bytes_received"] > 0
    assert total["relay"]["bytes_sent"] == total["relay"]["bytes_received"] > 0
    assert set(report["transfers"]["per_rank"]) == {str(r) for r in range(link.size)}
