"""Run one function per "rank" of a :class:`~streamer.exchange.links.MemoryNetwork` in threads.

The rank logic under test is the one ``mpiexec`` runs; only the link differs (queues in
one process instead of MPI). Every thread is joined with a timeout and its exception is
raised in the test, so a rank that hangs or fails cannot pass silently.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from streamer.exchange.links import MemoryLink, MemoryNetwork

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
