"""The feature × rank-count matrix of the one runner: the same feature of ``run`` on 1, 2
and 3 ranks.

Features: the live feed (a subscriber gets previews of every projection and every final
slice, the counters sum every rank's), the CoR set from the viewer (applied on every rank:
the volume equals one reconstructed at that CoR within 1e-5), the output formats (HDF5,
TIFF and OME-Zarr equal to the one-rank HDF5 within 1e-5), transfers counted in the
report, latency in the output, the report and the feed's ``scan_end``, and the CoR method
in every output (the volume, its parts, the ScanOutput, ``scan_end``).

Each rank is the ``run`` service's components (ingest with cluster coordination →
:class:`~streamer.run.ranks.RankedReconstruction` with a
:class:`~streamer.live.relay.FeedRelay`), run in a thread over an in-memory link, one rank
included (the path ``tomo-streamer run`` takes on one rank); rank 0 serves a real
:class:`~streamer.live.feed.LiveFeed`. The source's messages are dealt to the ranks by the
test (each rank has its own PULL socket), so what each rank received is known exactly.
Progress is synchronised by handshakes (the message that proves a step happened), never
by sleeps; every receive has a timeout. (``recon`` on 1..3 ranks, the same runner fed by a
file: ``test_recon_on_ranks.py``, ``test_zarr_on_ranks.py``.)
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zmq

from stages.registry import REGISTRY
from streamer.exchange.links import MemoryLink, MemoryNetwork
from streamer.exchange.reslice import row_bands
from streamer.ingest.cluster import ClusterIngest
from streamer.ingest.service import IngestService, IngestSettings
from streamer.live.client import Control, Counters, Preview, ScanEnd, Slice, Subscription
from streamer.live.feed import FeedSettings, LiveFeed
from streamer.live.relay import FeedRelay
from streamer.pipeline.config import parse_pipeline
from streamer.run.from_file import ReconSettings, run_recon
from streamer.run.output import ScanOutput
from streamer.run.ranks import RankedReconstruction
from streamer.sources.sender import start_header
from streamer.sources.simulate import SimulatedScan, SimulationConfig
from streamer.wire.protocol import EndHeader, FramesHeader, encode_frames, encode_header
from streamer.wire.transport import Endpoint, bound_address, open_socket

TIMEOUT_S = 30.0
JOIN_S = 120.0
BLOCK = 6  # frames per source message
CONFIG = SimulationConfig.from_kwargs(rows=7, cols=48, projections=60, flats=4, darks=3,
                                      cor_px=24.5, seed=3)
PIPELINE = """\
pipeline:
  - method: normalize
    parameters: {minus_log: true}
  - method: fbp
    parameters: {filter_name: hann}
"""


@dataclass
class Dealt:
    """The source's messages, dealt to the ranks: ``messages[r]`` go to rank ``r``;
    ``end`` (to the last rank) closes the scan; ``projections[r]`` counts rank r's."""

    messages: list[list[list[Any]]]
    end: tuple[int, list[Any]]
    projections: list[int]


def deal(scan: SimulatedScan, scan_id: str, ranks: int) -> Dealt:
    """The start and the references to rank 0, then blocks of projections round-robin
    from rank 1 (rank 0 on one rank), the end to the last rank."""
    layout = scan.layout
    messages: list[list[list[Any]]] = [[] for _ in range(ranks)]
    messages[0].append([encode_header(start_header(layout, scan_id))])
    projections = [0] * ranks
    refs = int(np.count_nonzero(layout.image_keys != 0))
    firsts = [(0, refs)] + [(first, min(first + BLOCK, layout.frames))
                            for first in range(refs, layout.frames, BLOCK)]
    for number, (first, last) in enumerate(firsts):
        rank = 0 if number == 0 else number % ranks
        header = FramesHeader(scan=scan_id, first=first, count=last - first,
                              keys=layout.image_keys[first:last].tolist(),
                              angles=layout.angles_deg[first:last].tolist(),
                              dtype=layout.dtype_name, shape=(layout.rows, layout.cols))
        messages[rank].append(encode_frames(header, scan.read(first, last)))
        projections[rank] += int(np.count_nonzero(layout.image_keys[first:last] == 0))
    end = [encode_header(EndHeader(scan=scan_id, sent=layout.frames))]
    return Dealt(messages, (ranks - 1, end), projections)


class Ranks:
    """``ranks`` run services in threads (started by :meth:`start`), each on its own PULL
    socket fed by the test; rank 0 has the feed."""

    def __init__(self, ranks: int, out: Path, feed: LiveFeed, context: zmq.Context[Any], *,
                 clock: Callable[[], float] | None = None,
                 output_format: str = "hdf5", pipeline: str = PIPELINE) -> None:
        self.size = ranks
        self.output_format = output_format
        self.pipeline = pipeline
        self.steps = parse_pipeline(pipeline, REGISTRY, source="ranks.yaml").steps
        self.out = out
        self.feed = feed
        self.clock = clock
        self.network = MemoryNetwork(ranks)
        self.pulls = [open_socket(context, "pull", Endpoint("tcp://127.0.0.1:*", bind=True),
                                  hwm=1000) for _ in range(ranks)]
        self.pushes = [open_socket(context, "push", Endpoint(bound_address(pull), bind=False),
                                   hwm=1000, send_timeout_ms=30_000) for pull in self.pulls]
        self.outputs: list[list[ScanOutput]] = [[] for _ in range(ranks)]
        self.relays: list[FeedRelay | None] = [None] * ranks
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._rank, args=(rank,), name=f"rank {rank}",
                                         daemon=True) for rank in range(ranks)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _rank(self, rank: int) -> None:
        try:
            link: MemoryLink = self.network.link(rank)
            cluster = ClusterIngest(link, idle_timeout_s=30.0)
            control, band, relay_link = link.duplicate(), link.duplicate(), link.duplicate()
            ranked = RankedReconstruction(self.steps, self.pipeline, self.out, control, band,
                                          block_frames=8, block_sinograms=2,
                                          memory_bytes=1 << 28, exchange_timeout_s=60.0,
                                          output_format=self.output_format)
            extra = {} if self.clock is None else {"clock": self.clock}
            relay = FeedRelay(relay_link, self.feed.settings,
                              feed=self.feed if rank == 0 else None, steps=self.steps,
                              timeout_s=60.0, **extra)
            ranked.observer = self.relays[rank] = relay
            service = IngestService(self.pulls[rank], IngestSettings(idle_timeout_s=30.0),
                                    drain=ranked.drain, on_event=ranked.on_event,
                                    cluster=cluster)
            relay.watch(service.state)
            service.run(max_scans=1, stop=self.stop)
            self.outputs[rank] = ranked.outputs
        except BaseException as error:  # raised in the test by join()
            self.errors.append(error)

    def send(self, dealt: Dealt) -> None:
        """Every message but the end."""
        for rank, messages in enumerate(dealt.messages):
            for parts in messages:
                self.pushes[rank].send_multipart(parts)

    def end(self, dealt: Dealt) -> None:
        rank, parts = dealt.end
        self.pushes[rank].send_multipart(parts)

    def join(self) -> ScanOutput:
        for thread in self.threads:
            thread.join(JOIN_S)
            assert not thread.is_alive(), f"{thread.name} still runs after {JOIN_S} s"
        if self.errors:
            raise self.errors[0]
        (output,) = self.outputs[0]
        return output

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(JOIN_S)
        for socket in self.pushes + self.pulls:
            socket.close(linger=0)


@pytest.fixture
def context() -> Any:
    with zmq.Context() as context:
        yield context


def read_until(subscription: Subscription, predicate: Callable[[Any], bool]) -> list[Any]:
    seen = []
    while True:
        message = subscription.receive(TIMEOUT_S)
        seen.append(message)
        if predicate(message):
            return seen


def run_scan(ranks: int, tmp_path: Path, context: zmq.Context[Any], *,
             between: Callable[[Subscription, Control], None] | None = None,
             clock: Callable[[], float] | None = None, output_format: str = "hdf5",
             pipeline: str = PIPELINE,
             ) -> tuple[ScanOutput, list[Any], dict[str, Any], Dealt, Ranks]:
    """One scan on ``ranks`` ranks with a subscriber and a control client; ``between``
    runs once every frame is in (and a preview came), before the scan's end is sent."""
    scan = SimulatedScan(CONFIG)
    dealt = deal(scan, "feedranks", ranks)
    feed = LiveFeed(FeedSettings(sndhwm=100_000, sndbuf_bytes=1 << 24,
                                 counters_interval_s=0.2))
    run = Ranks(ranks, tmp_path / "volumes", feed, context, clock=clock,
                output_format=output_format, pipeline=pipeline)
    try:
        with Subscription(feed.address, timeout_s=TIMEOUT_S, hwm=100_000) as sub, \
                Control(str(feed.control_address), timeout_s=TIMEOUT_S) as control:
            sub.wait_connected()
            run.start()
            run.send(dealt)
            seen = read_until(sub, lambda m: isinstance(m, Preview))
            if between is not None:
                between(sub, control)
            run.end(dealt)
            seen += read_until(sub, lambda m: isinstance(m, ScanEnd))
            output = run.join()
            state = control.state()
    finally:
        run.close()
        feed.close()
    return output, seen, state, dealt, run


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_a_subscriber_gets_previews_of_every_projection_and_every_final_slice(
        tmp_path: Path, context: zmq.Context[Any], ranks: int) -> None:
    open_counts: list[Any] = []

    def all_received(sub: Subscription, control: Control) -> None:
        # While the scan is open (its end not sent), the counters come to the sums of
        # what every rank received: the handshake is that message.
        def summed(message: Any) -> bool:
            return (isinstance(message, Counters) and message.header.state == "open"
                    and message.header.received.projections == CONFIG.projections)

        open_counts.append(read_until(sub, summed)[-1].header)

    output, seen, state, _, _ = run_scan(ranks, tmp_path, context, between=all_received)
    assert output.complete, output
    (counts,) = open_counts
    assert (counts.received.flats, counts.received.darks) == (CONFIG.flats, CONFIG.darks)
    previews = [m for m in seen if isinstance(m, Preview)]
    # The newest preview holds every projection, whichever rank corrected it.
    assert previews[-1].header.projections == CONFIG.projections
    bands = sorted({m.header.band for m in seen if isinstance(m, Slice)})
    covered = [row for first, last in bands for row in range(first, last)]
    assert covered == list(range(CONFIG.rows))  # every slice, from every rank, once
    assert state["slices"] == CONFIG.rows  # all kept for slice requests
    end = seen[-1].header
    assert end.complete and end.output == str(output.path)
    counters = state["counters"]
    assert counters["processed"] == CONFIG.projections  # summed over the ranks
    assert counters["received"] == {"projections": CONFIG.projections,
                                    "flats": CONFIG.flats, "darks": CONFIG.darks}
    assert counters["dropped"]["preview_rows"] == 0 and counters["dropped"]["slices"] == 0


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_a_cor_set_from_the_viewer_is_used_on_every_rank(
        tmp_path: Path, context: zmq.Context[Any], ranks: int) -> None:
    chosen = 23.5
    answers: dict[str, Any] = {}

    def set_center(sub: Subscription, control: Control) -> None:
        answers["set"] = control.set_center(chosen, scan="feedranks")

    output, seen, _, _, _ = run_scan(ranks, tmp_path, context, between=set_center)
    assert answers["set"]["center"] == chosen
    assert output.complete and output.center == chosen, output
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    reference = run_recon(SimulatedScan(CONFIG), ReconSettings(
        tmp_path / "one.h5", pipeline=pipeline, center=chosen, block_frames=16))
    assert output.path is not None
    with h5py.File(output.path) as master, h5py.File(reference.output) as single:
        expected = single["/entry/reconstruction/data"][...]
        data = master["/entry/reconstruction/data"][...]
        cor = master["/entry/process/center_of_rotation"]
        assert float(cor[()]) == chosen and cor.attrs["method"] == "user (viewer)"
    np.testing.assert_allclose(data, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    for part in sorted(output.path.parent.glob("feedranks.part*.h5")):
        with h5py.File(part) as file:
            cor = file["/entry/process/center_of_rotation"]
            assert float(cor[()]) == chosen and cor.attrs["method"] == "user (viewer)"
    end = seen[-1].header
    assert (end.center, end.center_method) == (chosen, "user (viewer)")
    last_preview = [m for m in seen if isinstance(m, Preview)][-1]
    assert last_preview.header.center == chosen  # re-rendered at it


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_transfers_count_the_bytes_the_reslice_and_the_relay_moved(
        tmp_path: Path, context: zmq.Context[Any], ranks: int) -> None:
    output, _, _, dealt, run = run_scan(ranks, tmp_path, context)
    transfers = output.figures["transfers"]
    bands = row_bands(CONFIG.rows, ranks)
    for rank in range(ranks):
        reslice = transfers["per_rank"][str(rank)]["reslice"]
        # Each of its projections goes to every other rank: their rows, float32.
        others = CONFIG.rows - (bands[rank][1] - bands[rank][0])
        assert reslice["bytes_sent"] == dealt.projections[rank] * others * CONFIG.cols * 4
        # It receives its rows of every projection the others corrected.
        band = bands[rank][1] - bands[rank][0]
        received = (CONFIG.projections - dealt.projections[rank]) * band * CONFIG.cols * 4
        assert reslice["bytes_received"] == received
    total = transfers["total"]
    assert total["reslice"]["bytes_sent"] == total["reslice"]["bytes_received"]
    assert total["reslice"]["messages_sent"] == total["reslice"]["messages_received"]
    relay = total["relay"]
    assert relay["bytes_sent"] == relay["bytes_received"]
    assert relay["messages_sent"] == relay["messages_received"]
    assert (relay["messages_sent"] > 0) == (ranks > 1)
    lines = [note for note in output.notes if note.startswith("transfers: ")]
    assert len(lines) == (ranks > 1)  # one rank moves nothing: the report's zeros, no line
    assert all(line.startswith("transfers: reslice ") for line in lines)
    assert all(relay is not None and relay.rejected_messages == 0 for relay in run.relays)


class StepClock:
    """An injected clock: one second later at every reading (deterministic order within
    a thread; the figures are then counts of readings, checked for their shape)."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            self.now += 1.0
            return self.now


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_latency_is_in_the_output_and_the_feed(tmp_path: Path, context: zmq.Context[Any],
                                               ranks: int) -> None:
    output, seen, _, _, _ = run_scan(ranks, tmp_path, context, clock=StepClock())
    latency = output.figures["latency"]
    spread = latency["frame_to_preview"]
    previews = [m for m in seen if isinstance(m, Preview) and m.header.newest_frame is not None]
    assert 1 <= spread["count"] <= len(previews)
    assert 0 < spread["p50_s"] <= spread["p95_s"] <= spread["max_s"]
    # The last frame was received before the master was written (later readings).
    assert latency["last_frame_to_volume_s"] > 0
    assert output.latency is not None and output.latency.startswith("latency: frame→preview")
    end = seen[-1].header
    assert end.latency is not None
    assert end.latency.model_dump() == latency  # the feed's scan_end says the same
    assert output.path is not None
    with h5py.File(output.path) as file:  # … as the report stored in the volume
        assert json.loads(file["/entry/process/report"][()])["latency"] == latency


def read_volume(path: Path, output_format: str) -> tuple[np.ndarray, float, str, dict[str, Any]]:
    """The volume, its CoR, the CoR's method and the stored report, as ``output_format``
    stores them (an HDF5 file or master, a TIFF stack's folder, an OME-Zarr store)."""
    if output_format == "hdf5":
        with h5py.File(path) as file:
            center = file["/entry/process/center_of_rotation"]
            return (file["/entry/reconstruction/data"][...], float(center[()]),
                    str(center.attrs["method"]),
                    json.loads(file["/entry/process/report"][()]))
    if output_format == "tiff":
        import tifffile

        document = json.loads((path / "volume.json").read_text())
        data = np.stack([tifffile.imread(path / f"slice_{row:05d}.tif")
                         for row in document["detector_rows"]])
        return (data, float(document["center_of_rotation"]), str(document["center_method"]),
                document["report"])
    import zarr

    group = zarr.open_group(store=str(path), mode="r")
    attributes = group.attrs["tomo_streamer"]
    return (np.asarray(group["0"][:]), float(attributes["center_of_rotation"]),
            str(attributes["center_method"]), attributes["report"])


@pytest.mark.parametrize("output_format", ["hdf5", "tiff", "zarr"])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_every_output_format_equals_the_one_rank_hdf5(
        tmp_path: Path, context: zmq.Context[Any], ranks: int, output_format: str) -> None:
    """The scan served on R ranks into each format: complete, equal to the one-rank
    ``recon`` HDF5 within 1e-5 at the same CoR (found at close by Vo's method on the rank
    that owns the middle row), the CoR method in the volume (and every HDF5 part), the
    ScanOutput and the feed's ``scan_end``, the transfers in the stored report."""
    output, seen, _, _, _ = run_scan(ranks, tmp_path, context, output_format=output_format)
    assert output.complete and output.path is not None, output
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    reference = run_recon(SimulatedScan(CONFIG), ReconSettings(
        tmp_path / "one.h5", pipeline=pipeline, block_frames=16))
    expected, expected_center, expected_method, _ = read_volume(reference.output, "hdf5")
    assert expected_method.startswith("vo")  # with the finder's doubts, if any
    data, center, method, report = read_volume(output.path, output_format)
    np.testing.assert_allclose(data, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert center == output.center == expected_center
    assert method == output.center_method == expected_method
    end = seen[-1].header
    assert (end.center, end.center_method) == (expected_center, expected_method)
    assert end.output == str(output.path)
    if output_format == "hdf5":
        parts = sorted(output.path.parent.glob(f"{output.path.stem}.part*of*.h5"))
        assert len(parts) == (ranks if ranks > 1 else 0)  # one rank: the volume itself
        for part in parts:
            with h5py.File(part) as file:
                assert file["/entry/process/center_of_rotation"].attrs["method"] == method
    if output_format == "tiff":  # rank 0's sidecar: every slice of every rank is in
        document = json.loads((output.path / "volume.json").read_text())
        assert document["complete"] is True and document["slices_written"] == CONFIG.rows
        assert document["written_ranges"] == [[0, CONFIG.rows]]
        assert not list(output.path.glob(".*tmp"))
    # Transfers: counted in the stored report, as in the output's figures.
    assert report["transfers"] == output.figures["transfers"]
    assert sorted(report["transfers"]["per_rank"]) == [str(r) for r in range(ranks)]
    assert "repairs" in report


@pytest.mark.parametrize("viewer", [False, True])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_a_streaming_pipeline_streams_unless_the_viewer_moves_the_cor(
        tmp_path: Path, context: zmq.Context[Any], ranks: int, viewer: bool) -> None:
    """A fixed CoR and an angle-local pipeline: each rank reconstructs its band while the
    scan arrives (the latency says ``streaming``); a CoR set from the viewer sends every
    band back to the reconstruction at close at that CoR (``at close``). Either way the
    volume equals the one-rank ``recon`` at the CoR used within 1e-5."""
    fixed, chosen = 24.0, 23.5
    streams = PIPELINE.replace("method: fbp", "method: fourier_fbp")  # the one that streams
    text = streams.replace("{filter_name: hann}", f"{{filter_name: hann, center: {fixed}}}")
    answers: dict[str, Any] = {}

    def set_center(sub: Subscription, control: Control) -> None:
        answers["set"] = control.set_center(chosen, scan="feedranks")

    output, seen, _, _, _ = run_scan(ranks, tmp_path, context, pipeline=text,
                                     between=set_center if viewer else None)
    used = chosen if viewer else fixed
    assert output.complete and output.center == used, output
    assert output.figures["latency"]["reconstruction"] == (
        "at close" if viewer else "streaming")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(streams)
    reference = run_recon(SimulatedScan(CONFIG), ReconSettings(
        tmp_path / "one.h5", pipeline=pipeline, center=used, block_frames=16))
    expected, *_ = read_volume(reference.output, "hdf5")
    assert output.path is not None
    data, center, method, _ = read_volume(output.path, "hdf5")
    np.testing.assert_allclose(data, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert center == used and method == output.center_method
    assert method == ("user (viewer)" if viewer else "pipeline")
    end = seen[-1].header
    assert (end.center, end.center_method) == (used, method)
