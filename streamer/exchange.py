"""MPI between ranks: the only module that imports mpi4py.

:class:`RankLink` moves small byte messages (msgpack maps, forwarded headers) between
ranks with non-blocking point-to-point calls on raw ``uint8`` buffers — never pickle —
so a rank that is serving its ZeroMQ socket never blocks in MPI (MPICH busy-polls a rank
blocked in a receive). The reslice (``Alltoallv`` of sinogram bands) will live here too.

Whether this process is one of several MPI ranks is read from the launcher's environment
(``PMI_SIZE`` for MPICH/hydra, ``OMPI_COMM_WORLD_SIZE`` for Open MPI), so a plain
``tomo-streamer …`` never initialises MPI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from streamer.errors import ExchangeError

_SIZE_VARIABLES: Final = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


def launched_with_ranks() -> int:
    """Number of ranks the MPI launcher started (1 when not launched by mpiexec)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


@dataclass(frozen=True)
class Received:
    source: int
    tag: int
    payload: bytes


@dataclass
class RankLink:
    """Non-blocking byte messages between the ranks of a communicator.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The communicator (passed in: nothing here reaches for ``COMM_WORLD`` by itself).
    """

    comm: Any
    _outgoing: list[tuple[Any, np.ndarray]] = field(default_factory=list)

    @classmethod
    def world(cls) -> RankLink:
        """A link over ``MPI.COMM_WORLD`` (initialises MPI)."""
        try:
            from mpi4py import MPI  # noqa: PLC0415  # MPI is initialised only on demand
        except ImportError as error:
            raise ExchangeError(
                "running under mpiexec needs mpi4py: pip install 'tomo-streamer[mpi]' "
                f"({error})"
            ) from None
        return cls(MPI.COMM_WORLD)

    @property
    def rank(self) -> int:
        return int(self.comm.Get_rank())

    @property
    def size(self) -> int:
        return int(self.comm.Get_size())

    def send(self, dest: int, tag: int, payload: bytes) -> None:
        """Start sending ``payload`` to ``dest``; completes in the background."""
        from mpi4py import MPI  # noqa: PLC0415

        buffer = np.frombuffer(payload, dtype=np.uint8).copy()  # owned until sent
        request = self.comm.Isend([buffer, MPI.BYTE], dest=dest, tag=tag)
        self._outgoing.append((request, buffer))
        self._reap()

    def send_to_others(self, tag: int, payload: bytes) -> None:
        for dest in range(self.size):
            if dest != self.rank:
                self.send(dest, tag, payload)

    def poll(self, limit: int = 1000) -> list[Received]:
        """Messages that have arrived, without waiting for any."""
        from mpi4py import MPI  # noqa: PLC0415

        received: list[Received] = []
        status = MPI.Status()
        while len(received) < limit and self.comm.Iprobe(
            source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status
        ):
            count = status.Get_count(MPI.BYTE)
            buffer = np.empty(count, dtype=np.uint8)
            source, tag = status.Get_source(), status.Get_tag()
            self.comm.Recv([buffer, MPI.BYTE], source=source, tag=tag)
            received.append(Received(source, tag, buffer.tobytes()))
        self._reap()
        return received

    def flush(self) -> None:
        """Wait until every message this rank started sending has been delivered."""
        from mpi4py import MPI  # noqa: PLC0415

        if self._outgoing:
            MPI.Request.Waitall([request for request, _ in self._outgoing])
            self._outgoing.clear()

    def _reap(self) -> None:
        self._outgoing = [item for item in self._outgoing if not item[0].Test()]
