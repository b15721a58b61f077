"""Links between ranks: MPI (the only module that imports mpi4py), and in-process.

:class:`RankLink` moves small byte messages (msgpack maps, forwarded headers) between
ranks with non-blocking point-to-point calls on raw ``uint8`` buffers — never pickle —
so a rank that is serving its ZeroMQ socket never blocks in MPI (MPICH busy-polls a rank
blocked in a receive). It also moves arrays for the reslice (:mod:`streamer.exchange.reslice`):
:meth:`RankLink.send_parts` sends a small header and then an array straight from its
memory, whatever its strides (an MPI derived datatype describes the view: no packing
copy), and :meth:`RankLink.probe_array` receives one into a preallocated view. The
reslice runs on its own communicator (:meth:`RankLink.duplicate`), so the ingest's
``ANY_TAG`` polling never sees its messages.

:class:`MemoryNetwork` gives the same array path between "ranks" that are objects in one
process: the one-rank service and the tests use it instead of MPI.

Whether this process is one of several MPI ranks is read from the launcher's environment
(``PMI_SIZE`` for MPICH/hydra, ``OMPI_COMM_WORLD_SIZE`` for Open MPI), so a plain
``tomo-streamer …`` never initialises MPI.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from streamer.errors import ExchangeError

#: How often :meth:`RankLink.leave_together` looks whether every rank has arrived.
_LEAVE_POLL_S: Final = 0.01
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

    @staticmethod
    def threads_multiple() -> bool:
        """MPI was initialised with ``MPI_THREAD_MULTIPLE`` (mpi4py asks for it by
        default; MPICH and Open MPI builds usually grant it): MPI may then be called from
        several threads at once, as the ``run`` service does (ingest's link in one
        thread, the reconstruction's links in a worker)."""
        from mpi4py import MPI  # noqa: PLC0415

        return bool(MPI.Query_thread() == MPI.THREAD_MULTIPLE)

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

    def leave_together(self, timeout_s: float) -> bool:
        """Wait, at most ``timeout_s``, until every rank has called this (a non-blocking
        barrier, polled). Under ``mpiexec`` one rank's exit with a non-zero code makes the
        launcher kill the others: a rank that finishes first (one stopped by Ctrl-C, whose
        part is incomplete) must not exit while rank 0 still writes the master. False when
        the time ran out."""
        request = self.comm.Ibarrier()
        deadline = time.monotonic() + timeout_s
        while not request.Test():
            if time.monotonic() > deadline:
                return False
            time.sleep(_LEAVE_POLL_S)
        return True

    # --- arrays (the reslice) --------------------------------------------------------

    def duplicate(self) -> RankLink:
        """A link over a duplicate of this communicator (``Comm.Dup``): its messages never
        match a receive or probe on this one, whatever the tag. Collective: every rank
        calls it, in the same order."""
        return RankLink(self.comm.Dup())

    def free(self) -> None:
        """Free the communicator of a link made by :meth:`duplicate` (collective)."""
        self.comm.Free()

    def send_parts(
        self, dest: int, tag: int, header: bytes, array: npt.NDArray[Any] | None = None
    ) -> MpiPending:
        """Start sending ``header`` on ``tag`` and then, unless None or empty, the bytes
        of ``array`` in C order on ``tag + 1``, straight from the array's memory (any
        non-negative strides: a derived datatype describes the view, nothing is packed).

        The array must not be modified until the returned handle's ``test()`` is True;
        the handle keeps it alive until then."""
        from mpi4py import MPI  # noqa: PLC0415

        head = np.frombuffer(header, dtype=np.uint8).copy()  # small; owned until sent
        requests = [self.comm.Isend([head, MPI.BYTE], dest=dest, tag=tag)]
        keep: list[Any] = [head]
        if array is not None and array.nbytes:
            described = _describe(array)
            requests.append(self.comm.Isend(described.spec, dest=dest, tag=tag + 1))
            described.release()
            keep.append(described.keep)
        return MpiPending(requests, keep)

    def probe_header(self, tag: int) -> Received | None:
        """The next header sent with :meth:`send_parts` on ``tag`` by any rank, if one has
        arrived. Headers are small (eager), so receiving a matched one does not wait."""
        from mpi4py import MPI  # noqa: PLC0415

        status = MPI.Status()
        message = self.comm.Improbe(source=MPI.ANY_SOURCE, tag=tag, status=status)
        if message is None:
            return None
        buffer = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
        message.Recv([buffer, MPI.BYTE])
        return Received(int(status.Get_source()), tag, buffer.tobytes())

    def probe_array(self, source: int, tag: int) -> MpiIncoming | None:
        """The next array ``source`` sent with :meth:`send_parts` on ``tag``, once it has
        arrived (matched, not yet received: see :meth:`MpiIncoming.receive_into`)."""
        from mpi4py import MPI  # noqa: PLC0415

        status = MPI.Status()
        message = self.comm.Improbe(source=source, tag=tag + 1, status=status)
        if message is None:
            return None
        return MpiIncoming(message, source, int(status.Get_count(MPI.BYTE)))


@dataclass
class MpiPending:
    """Requests in progress; ``test()`` is True once all have completed."""

    requests: list[Any]
    keep: list[Any]  # buffers the requests read or write: alive until completion

    def test(self) -> bool:
        from mpi4py import MPI  # noqa: PLC0415

        if self.requests and MPI.Request.Testall(self.requests):
            self.requests, self.keep = [], []
        return not self.requests


@dataclass
class MpiIncoming:
    """A matched array message, ``nbytes`` long, waiting to be received."""

    message: Any
    source: int
    nbytes: int

    def receive_into(self, view: npt.NDArray[Any]) -> MpiPending:
        """Start receiving the message into ``view`` (C order, any non-negative strides:
        e.g. frames landing straight in the columns of a sinogram band)."""
        _check_destination(view, self.nbytes, self.source)
        described = _describe(view)
        request = self.message.Irecv(described.spec)
        described.release()
        return MpiPending([request], [described.keep])


def _check_destination(view: npt.NDArray[Any], nbytes: int, source: int) -> None:
    if view.nbytes != nbytes:
        raise ExchangeError(
            f"array from rank {source}: expected {view.nbytes} bytes for a {view.shape} "
            f"{view.dtype} view, got a message of {nbytes} bytes"
        )
    if not view.flags.writeable:
        raise ExchangeError(f"array from rank {source}: the destination view is read-only")
    if any(stride < 0 for stride in view.strides):
        raise ExchangeError(f"array from rank {source}: the destination view has negative "
                            f"strides {view.strides}; expected a view MPI can write in place")


@dataclass
class _Described:
    """An mpi4py buffer specification for an array's bytes in C order; ``keep`` must stay
    alive while MPI uses it, ``release()`` frees the datatype once the call is posted
    (MPI lets a datatype be freed while operations that use it are pending)."""

    spec: list[Any]
    keep: npt.NDArray[Any]
    datatype: Any = None

    def release(self) -> None:
        if self.datatype is not None:
            self.datatype.Free()
            self.datatype = None


def _describe(array: npt.NDArray[Any]) -> _Described:
    """Describe ``array``'s bytes for MPI without copying them.

    Contiguous arrays go as they are. A strided view (rows ``a:b`` of a block of frames,
    or frames landing in the columns of a sinogram band) is described by nested
    ``hvector`` datatypes over its own memory: MPI reads or writes it in place, with no
    packing copy.
    """
    from mpi4py import MPI  # noqa: PLC0415

    if array.flags.c_contiguous:
        return _Described([array, MPI.BYTE], array)
    if any(stride < 0 for stride in array.strides):
        array = np.ascontiguousarray(array)  # a copy, only for a reversed view
        return _Described([array, MPI.BYTE], array)
    dims = [(n, s) for n, s in zip(array.shape, array.strides, strict=True) if n != 1]
    run = array.itemsize
    while dims and dims[-1][1] == run:  # trailing axes that are contiguous: one run
        run *= dims.pop()[0]
    datatype = MPI.BYTE.Create_contiguous(run)
    for count, stride in reversed(dims):
        outer = datatype.Create_hvector(count, 1, stride)
        datatype.Free()  # a derived type keeps what it was built from
        datatype = outer
    datatype.Commit()
    span = sum((n - 1) * s for n, s in dims) + run
    address = array.__array_interface__["data"][0]
    buffer = MPI.buffer.fromaddress(address, span, readonly=not array.flags.writeable)
    return _Described([buffer, 1, datatype], array, datatype)


# --- in-process links ------------------------------------------------------------------


@dataclass
class _Parcel:
    """An array in flight between two in-process ranks (referenced, not copied, as MPI
    sends from the sender's memory); ``delivered`` once the receiver has copied it."""

    array: npt.NDArray[Any]
    delivered: bool = False


@dataclass
class MemoryPending:
    """Completes when the receiver has taken every parcel (like a rendezvous send)."""

    parcels: list[_Parcel]

    def test(self) -> bool:
        return all(parcel.delivered for parcel in self.parcels)


@dataclass
class _LazyReceive:
    """A receive that copies on its first ``test()`` and completes on the second, so
    tests see receives in progress across polls, as under MPI."""

    incoming: MemoryIncoming
    view: npt.NDArray[Any]
    copied: bool = False

    def test(self) -> bool:
        if not self.copied:
            self.incoming.copy_into(self.view)
            self.copied = True
            return False
        return True


@dataclass
class MemoryIncoming:
    """A matched in-process array message, ``nbytes`` long."""

    parcel: _Parcel
    source: int
    nbytes: int
    lazy: bool = False

    def receive_into(self, view: npt.NDArray[Any]) -> MemoryPending | _LazyReceive:
        _check_destination(view, self.nbytes, self.source)
        if self.lazy:
            return _LazyReceive(self, view)
        self.copy_into(view)
        return MemoryPending([self.parcel])

    def copy_into(self, view: npt.NDArray[Any]) -> None:
        flat = np.ascontiguousarray(self.parcel.array).reshape(-1).view(np.uint8)
        view[...] = flat.view(view.dtype).reshape(view.shape)  # the one copy, as MPI's
        self.parcel.delivered = True
        self.parcel.array = flat[:0]  # the sender's memory is no longer referenced


class MemoryNetwork:
    """``size`` ranks in one process, joined by queues (thread-safe): the byte messages of
    :class:`RankLink` (``send`` / ``send_to_others`` / ``poll``, FIFO per source and
    destination) and its array path (``send_parts`` / ``probe_header`` /
    ``probe_array``) with MPI's ordering (FIFO per source, destination and tag) and
    rendezvous completion (a send completes when the receiver has taken the array).
    :meth:`MemoryLink.duplicate` gives a separate context, as ``Comm.Dup``. For one rank
    without MPI, and for running rank logic with several ranks in one process (threads);
    ``lazy_receives`` makes every receive take two ``test()`` calls, as receives in
    progress do under MPI.
    """

    def __init__(self, size: int, *, lazy_receives: bool = False) -> None:
        if size < 1:
            raise ExchangeError(f"MemoryNetwork: size must be >= 1, got {size}")
        self.size = size
        self.lazy_receives = lazy_receives
        self._lock = threading.Lock()
        self._headers: dict[tuple[int, int, int], deque[Received]] = {}
        self._arrays: dict[tuple[int, int, int, int], deque[_Parcel]] = {}
        self._messages: dict[tuple[int, int], deque[Received]] = {}
        self._duplicates: dict[int, int] = {}  # rank -> contexts it made

    def link(self, rank: int) -> MemoryLink:
        if not 0 <= rank < self.size:
            raise ExchangeError(f"MemoryNetwork.link: rank must be in [0, {self.size}), "
                                f"got {rank}")
        return MemoryLink(self, rank)

    def new_context(self, rank: int) -> int:
        """The next context of ``rank``: the n-th duplicate on every rank is context n,
        so ranks that duplicate in the same order (as MPI requires) meet."""
        self._check(rank)
        with self._lock:
            self._duplicates[rank] = self._duplicates.get(rank, 0) + 1
            return self._duplicates[rank]

    def _check(self, dest: int) -> None:
        if not 0 <= dest < self.size:
            raise ExchangeError(f"send to rank {dest}: expected a rank in [0, {self.size})")

    def post(self, source: int, dest: int, tag: int, header: bytes,
             array: npt.NDArray[Any] | None, *, context: int = 0) -> MemoryPending:
        self._check(dest)
        parcels = []
        with self._lock:
            self._headers.setdefault((context, dest, tag), deque()).append(
                Received(source, tag, bytes(header)))
            if array is not None and array.nbytes:
                parcel = _Parcel(array)
                self._arrays.setdefault((context, dest, source, tag + 1), deque()).append(
                    parcel)
                parcels.append(parcel)
        return MemoryPending(parcels)

    def take_header(self, dest: int, tag: int, context: int = 0) -> Received | None:
        with self._lock:
            queue = self._headers.get((context, dest, tag))
            return queue.popleft() if queue else None

    def take_array(self, dest: int, source: int, tag: int,
                   context: int = 0) -> MemoryIncoming | None:
        with self._lock:
            queue = self._arrays.get((context, dest, source, tag + 1))
            if not queue:
                return None
            parcel = queue.popleft()
        return MemoryIncoming(parcel, source, parcel.array.nbytes, self.lazy_receives)

    def deliver(self, source: int, dest: int, tag: int, payload: bytes,
                context: int = 0) -> None:
        """A byte message (a copy of ``payload``) for ``dest``'s :meth:`receive`."""
        self._check(dest)
        with self._lock:
            self._messages.setdefault((context, dest), deque()).append(
                Received(source, tag, bytes(payload)))

    def receive(self, dest: int, limit: int, context: int = 0) -> list[Received]:
        """Up to ``limit`` byte messages for ``dest``, oldest first, without waiting."""
        with self._lock:
            queue = self._messages.get((context, dest))
            taken: list[Received] = []
            while queue and len(taken) < limit:
                taken.append(queue.popleft())
            return taken

    def pending(self) -> int:
        """Messages (headers, arrays and byte messages) sent and not yet taken."""
        with self._lock:
            return (sum(len(q) for q in self._headers.values())
                    + sum(len(q) for q in self._arrays.values())
                    + sum(len(q) for q in self._messages.values()))


@dataclass(frozen=True)
class MemoryLink:
    """One rank's end of a :class:`MemoryNetwork`: the same methods as :class:`RankLink`
    (byte messages, arrays, ``duplicate``), so rank logic runs unchanged on it."""

    network: MemoryNetwork
    rank: int
    context: int = 0

    @property
    def size(self) -> int:
        return self.network.size

    def send(self, dest: int, tag: int, payload: bytes) -> None:
        self.network.deliver(self.rank, dest, tag, payload, self.context)

    def send_to_others(self, tag: int, payload: bytes) -> None:
        for dest in range(self.size):
            if dest != self.rank:
                self.send(dest, tag, payload)

    def poll(self, limit: int = 1000) -> list[Received]:
        return self.network.receive(self.rank, limit, self.context)

    def flush(self) -> None:
        """Nothing to wait for: a byte message is delivered when it is sent."""

    def duplicate(self) -> MemoryLink:
        """A link on a new context (as ``Comm.Dup``): its messages never meet this one's."""
        return MemoryLink(self.network, self.rank, self.network.new_context(self.rank))

    def free(self) -> None:
        """Nothing to free (as :meth:`RankLink.free`)."""

    def send_parts(self, dest: int, tag: int, header: bytes,
                   array: npt.NDArray[Any] | None = None) -> MemoryPending:
        return self.network.post(self.rank, dest, tag, header, array, context=self.context)

    def probe_header(self, tag: int) -> Received | None:
        return self.network.take_header(self.rank, tag, self.context)

    def probe_array(self, source: int, tag: int) -> MemoryIncoming | None:
        return self.network.take_array(self.rank, source, tag, self.context)
