"""Run one function per "rank" of a :class:`~streamer.exchange.links.MemoryNetwork` in threads;
wire the ``run`` service's runner on one rank (:func:`one_rank`).

The rank logic under test is the one ``mpiexec`` runs; only the link differs (queues in
one process instead of MPI). Every thread is joined with a timeout and its exception is
raised in the test, so a rank that hangs or fails cannot pass silently.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from streamer.exchange.links import MemoryLink, MemoryNetwork
from streamer.ingest.cluster import ClusterIngest
from streamer.ingest.service import IngestService, IngestSettings
from streamer.live.relay import FeedRelay
from streamer.pipeline.config import PipelineStep
from streamer.run.output import ScanOutput
from streamer.run.ranks import RankedReconstruction
from streamer.wire.transport import Endpoint, open_socket

JOIN_TIMEOUT_S = 120.0


def run_ranks(size: int, work: Callable[[MemoryLink], Any]) -> list[Any]:
    """``work(link)`` on ``size`` ranks at once; their results, by rank."""
    network = MemoryNetwork(size)
    results: list[Any] = [None] * size
    errors: list[BaseException | None] = [None] * size

    def target(rank: int) -> None:
        try:
            results[rank] = work(network.link(rank))
        except BaseException as error:  # re-raised in the test below
            errors[rank] = error

    threads = [threading.Thread(target=target, args=(rank,), name=f"rank {rank}",
                                daemon=True) for rank in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT_S)
        assert not thread.is_alive(), f"{thread.name} still runs after {JOIN_TIMEOUT_S} s"
    for error in errors:
        if error is not None:
            raise error
    return results


@dataclass
class OneRank:
    """The ``run`` service's runner on one rank, wired as ``tomo-streamer run`` wires it:
    :class:`~streamer.run.ranks.RankedReconstruction` on a one-rank in-memory link, its
    :class:`~streamer.live.relay.FeedRelay` observer (the feed, if any, the transfers and
    the latency), and an ingest cluster of one."""

    ranked: RankedReconstruction
    relay: FeedRelay
    link: MemoryLink

    def service(self, socket: zmq.Socket[Any], settings: IngestSettings, *,
                on_event: Callable[[Any], None] | None = None,
                **options: Any) -> IngestService:
        """The ingest service on ``socket`` that feeds the runner (``on_event``: instead
        of the runner's own, e.g. to watch the events; it must pass them on)."""
        service = IngestService(socket, settings, drain=self.ranked.drain,
                                await_downstream=self.ranked.wait,
                                on_event=on_event or self.ranked.on_event,
                                cluster=ClusterIngest(self.link, settings.idle_timeout_s),
                                **options)
        self.relay.watch(service.state)
        return service


def serve_scans(link: MemoryLink, ranked: RankedReconstruction, address: str, *,
                scans: int, wait_s: float) -> list[ScanOutput]:
    """One in-process rank of the ``run`` service: PULL from ``address``, ingest ``scans``
    scans into ``ranked`` (its worker thread reconstructs them) and wait at most
    ``wait_s`` for the worker; the rank's outputs."""
    with zmq.Context() as context:
        pull = open_socket(context, "pull", Endpoint(address, bind=False), hwm=8)
        try:
            service = IngestService(pull, IngestSettings(idle_timeout_s=10),
                                    drain=ranked.drain, on_event=ranked.on_event,
                                    await_downstream=ranked.wait,
                                    cluster=ClusterIngest(link, 10.0))
            service.run(max_scans=scans)
            assert ranked.wait(wait_s), "the worker never finished"
        finally:
            pull.close()
    return ranked.outputs


def one_rank(steps: tuple[PipelineStep, ...], text: str, out_dir: Path, *,
             feed: Any = None, **options: Any) -> OneRank:
    """:class:`OneRank` for ``steps``; ``feed`` (a :class:`~streamer.live.feed.LiveFeed` or
    a stand-in with its pipeline-side methods) is served by the relay; ``options`` go to
    :class:`~streamer.run.ranks.RankedReconstruction`."""
    link = MemoryNetwork(1).link(0)
    control, band, relay_link = link.duplicate(), link.duplicate(), link.duplicate()
    ranked = RankedReconstruction(steps, text, out_dir, control, band, **options)
    relay = FeedRelay(relay_link, getattr(feed, "settings", None), feed=feed, steps=steps,
                      log=ranked.log)
    ranked.observer = relay
    return OneRank(ranked, relay, link)
