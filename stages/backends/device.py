"""Which CUDA device a process uses and how much memory it has.

One GPU per rank. ``CUDA_VISIBLE_DEVICES`` is honoured as CUDA honours it: it selects
and renumbers the devices a process sees, so inside the process they are ``0 … n-1``.
A rank takes device ``local_rank % n`` of those, where ``local_rank`` is its rank among
the ranks on the same node: from MPI itself where the run has a communicator (its
shared-memory split, ``Split_type(COMM_TYPE_SHARED)``: :func:`node_local_rank`), else from
the launcher's variables (``OMPI_COMM_WORLD_LOCAL_RANK`` (Open MPI),
``MPI_LOCALRANKID`` (MPICH/Hydra, Intel MPI), ``PMI_LOCAL_RANK`` (PMI),
``MV2_COMM_WORLD_LOCAL_RANK`` (MVAPICH2), ``SLURM_LOCALID`` (srun)), else the global
rank. With 4 ranks on a node of 4 GPUs each rank
gets its own; with more ranks than GPUs they share round-robin (and split its memory:
see :func:`device_budget_bytes`). Restricting a run to GPUs 2 and 3 is
``CUDA_VISIBLE_DEVICES=2,3 mpiexec -n 2 …``: rank 0 uses physical GPU 2, rank 1 GPU 3.

cupy is imported only inside :func:`detect_device`, so this module costs nothing where
the ``gpu`` extra is not installed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streamer.errors import ConfigError

#: Part of the free device memory left out of the plan: CuPy's memory pool rounds
#: allocations up and fragments, cuFFT/cufinufft plans and kernels take their own.
DEVICE_HEADROOM = 0.10

_LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK",
                         "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")


@dataclass(frozen=True)
class DeviceInfo:
    """A device as the memory plan sees it (``free_bytes`` when measured)."""

    name: str
    index: int
    total_bytes: int
    free_bytes: int

    def describe(self) -> str:
        return (f"device {self.index} ({self.name}): {self.total_bytes / 2**30:.1f} GiB, "
                f"{self.free_bytes / 2**30:.1f} GiB free")


def visible_device_count(environ: Mapping[str, str], detected: int | None) -> int:
    """Devices this process may use: those ``CUDA_VISIBLE_DEVICES`` lists when it is
    set (``""`` or ``-1``: none), else ``detected`` (cupy's count; ``None``: unknown)."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return detected or 0
    entries = [entry.strip() for entry in listed.split(",") if entry.strip()]
    if entries and entries[0] == "-1":
        return 0
    count = 0
    for entry in entries:  # CUDA stops at the first invalid entry; so do we
        if entry.startswith("-"):
            break
        count += 1
    return count if detected is None else min(count, detected)


def node_local_rank(comm: Any) -> tuple[int, int] | None:
    """``(local rank, ranks on this node)`` from MPI's shared-memory split of ``comm``
    (collective: every rank of ``comm`` calls it); ``None`` without a communicator or
    mpi4py."""
    if comm is None or not hasattr(comm, "Split_type"):
        return None
    try:
        from mpi4py import MPI  # noqa: PLC0415 - only where a communicator exists
    except ImportError:
        return None
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return int(node.Get_rank()), int(node.Get_size())
    finally:
        node.Free()


def local_rank(environ: Mapping[str, str], rank: int, node_rank: int | None = None) -> int:
    """This rank's index among the ranks of its node: ``node_rank`` (MPI's split) when
    known, else the launcher's variables, else ``rank``."""
    if node_rank is not None:
        return node_rank
    for variable in _LOCAL_RANK_VARIABLES:
        value = environ.get(variable)
        if value is not None and value.strip().isdigit():
            return int(value)
    return rank


def device_for_rank(rank: int, environ: Mapping[str, str], detected: int | None,
                    node_rank: int | None = None) -> int:
    """The device index (within the visible devices) rank ``rank`` uses (``node_rank``:
    its rank on the node from :func:`node_local_rank`, when known)."""
    count = visible_device_count(environ, detected)
    if count < 1:
        hint = environ.get("CUDA_VISIBLE_DEVICES")
        why = (f"CUDA_VISIBLE_DEVICES={hint!r} hides every device" if hint is not None
               else "no CUDA device was detected")
        raise ConfigError(f"rank {rank}: expected a visible CUDA device, got none ({why})")
    return local_rank(environ, rank, node_rank) % count


def ranks_per_device(ranks_on_node: int, environ: Mapping[str, str],
                     detected: int | None) -> int:
    """How many of a node's ranks share one device under :func:`device_for_rank`."""
    count = max(1, visible_device_count(environ, detected))
    return -(-max(1, ranks_on_node) // count)


def device_budget_bytes(free_bytes: int, *, sharing: int = 1,
                        headroom: float = DEVICE_HEADROOM) -> int:
    """Bytes the plan may use on a device with ``free_bytes`` free, shared by
    ``sharing`` ranks, keeping ``headroom`` of it back."""
    if free_bytes < 1:
        raise ConfigError(f"device memory: expected > 0 bytes free, got {free_bytes}")
    if sharing < 1:
        raise ConfigError(f"ranks per device: expected >= 1, got {sharing}")
    return int(free_bytes * (1.0 - headroom) / sharing)


def stated_device(size_gib: float) -> DeviceInfo:
    """A device of ``size_gib`` GiB, all free (``check --device 80``: plan for a card
    that is not here)."""
    if not size_gib > 0:
        raise ConfigError(f"--device: expected a size in GiB > 0 or 'auto', got {size_gib}")
    size = int(size_gib * 2**30)
    return DeviceInfo(name="stated", index=0, total_bytes=size, free_bytes=size)


def use_device_for_rank(rank: int, ranks: int,
                        node: tuple[int, int] | None = None) -> tuple[DeviceInfo, int]:
    """Make rank ``rank``'s device (:func:`device_for_rank`) cupy's current one; return
    it with the bytes this rank may plan for (its free memory less the headroom, split
    between the ranks that share it). ``node`` is ``(local rank, ranks on the node)``
    from :func:`node_local_rank`; without it the launcher's variables give the local
    rank and ``ranks`` (the launch's rank count, an upper bound of those on one node)
    the sharing. Raises :class:`ConfigError` without a device."""
    info = detect_device(rank, node_rank=None if node is None else node[0])
    if info is None:
        raise ConfigError(f"rank {rank}: --device gpu: expected a usable CUDA device, got none")
    import cupy  # noqa: PLC0415 - detect_device found it

    cupy.cuda.Device(info.index).use()
    detected = int(cupy.cuda.runtime.getDeviceCount())
    sharing = ranks_per_device(ranks if node is None else node[1], os.environ, detected)
    return info, device_budget_bytes(info.free_bytes, sharing=sharing)


def detect_device(rank: int = 0, environ: Mapping[str, str] | None = None,
                  node_rank: int | None = None) -> DeviceInfo | None:
    """The device this rank would use, measured by cupy; ``None`` without cupy or a
    usable device (never raises for that)."""
    try:
        import cupy  # noqa: PLC0415 - lazy on purpose: cupy is an optional extra

        if not cupy.is_available():
            return None
        detected = int(cupy.cuda.runtime.getDeviceCount())
        index = device_for_rank(rank, os.environ if environ is None else environ, detected,
                                node_rank)
        with cupy.cuda.Device(index):
            free, total = cupy.cuda.runtime.memGetInfo()
        name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
    except (ImportError, ConfigError):
        return None
    except Exception:  # CUDARuntimeError and friends: no usable device
        return None
    label = name.decode() if isinstance(name, bytes) else str(name)
    return DeviceInfo(name=label, index=index, total_bytes=int(total), free_bytes=int(free))
