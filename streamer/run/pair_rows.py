"""R ranks: the whole 0°/180° projection pair for a pair CoR finder (``find_center_pc``).

On one rank ``find_center_pc`` correlates the first projection with the one 180° later,
every detector row of both. On R ranks each rank holds only its band of rows, so every
rank sends its rows of those two projections to the rank that finds the CoR (two frames
in all: small), which puts them together and runs the finder as one rank does (issue 16:
85.870 against 85.883 px on I13 before). The messages are plain maps (msgpack): the
rows, the frame indices of the pair (every rank must name the same two), and the bytes,
validated before anything is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stages.recon.center_policy import pair_index
from streamer.errors import ExchangeError, StreamerError
from streamer.exchange.reslice import Band

__all__ = ["PairRows", "assemble_pair", "float32_rows", "pair_rows_message",
           "parse_pair_rows", "rows_of_pair"]

_DTYPE = np.dtype("<f4")


@dataclass(frozen=True)
class PairRows:
    """One band's rows ``[a, b)`` of the first projection and the opposite one (frame
    indices ``frames``), each ``(b - a, cols)`` float32; ``error``: why the band has none
    (then the arrays are empty)."""

    rows: tuple[int, int]
    frames: tuple[int, int]
    first: npt.NDArray[np.float32]
    opposite: npt.NDArray[np.float32]
    error: str | None = None


def rows_of_pair(band: Band, failure: str | None = None) -> PairRows:
    """This band's rows of the pair, chosen as the finder chooses it (the first
    projection and the one 180° (± tolerance) later); an ``error`` when there is none,
    or when this rank's scan failed (``failure``: its rows cannot be trusted)."""
    empty = np.zeros((0, band.sinograms.shape[2]), np.float32)
    if failure is not None:
        return PairRows(band.rows, (-1, -1), empty, empty, f"its scan failed: {failure}")
    if band.sinograms.shape[1] == 0:
        return PairRows(band.rows, (-1, -1), empty, empty,
                        "no corrected projection reached its band")
    at = pair_index(np.asarray(band.angles_deg, dtype=np.float64))
    if at is None:
        return PairRows(band.rows, (-1, -1), empty, empty,
                        "no projection 180° from the first in its band")
    return PairRows(band.rows, (int(band.indices[0]), int(band.indices[at])),
                    np.ascontiguousarray(band.sinograms[:, 0, :], dtype=np.float32),
                    np.ascontiguousarray(band.sinograms[:, at, :], dtype=np.float32))


def pair_rows_message(serial: int, rows: PairRows) -> dict[str, Any]:
    """The control message (a msgpack map) carrying ``rows`` to the CoR owner."""
    return {"serial": serial, "rows": list(rows.rows), "frames": list(rows.frames),
            "cols": int(rows.first.shape[1]), "error": rows.error,
            "first": rows.first.astype(_DTYPE).tobytes(),
            "opposite": rows.opposite.astype(_DTYPE).tobytes()}


def parse_pair_rows(message: dict[str, Any], source: int, cols: int) -> PairRows:
    """A peer's pair message, checked against the scan's ``cols`` before its bytes are
    viewed; a malformed one is a one-line :class:`ExchangeError` naming the rank."""
    where = f"rank {source}: pair-rows message"
    rows, frames = message.get("rows"), message.get("frames")
    if not (isinstance(rows, list) and len(rows) == 2 and all(
            isinstance(v, int) for v in rows) and 0 <= rows[0] <= rows[1]):
        raise ExchangeError(f"{where}: rows: expected [a, b] with 0 <= a <= b, got {rows!r:.80}")
    if not (isinstance(frames, list) and len(frames) == 2
            and all(isinstance(v, int) for v in frames)):
        raise ExchangeError(f"{where}: frames: expected two frame indices, got {frames!r:.80}")
    error = message.get("error")
    if error is not None:
        empty = np.zeros((0, cols), np.float32)
        return PairRows((rows[0], rows[1]), (frames[0], frames[1]), empty, empty, str(error))
    if message.get("cols") != cols:
        raise ExchangeError(f"{where}: cols: expected {cols}, got {message.get('cols')!r:.40}")
    shape = (rows[1] - rows[0], cols)
    first, opposite = (float32_rows(message.get(name), shape, where, name)
                       for name in ("first", "opposite"))
    return PairRows((rows[0], rows[1]), (frames[0], frames[1]), first, opposite)


def float32_rows(data: Any, shape: tuple[int, ...], where: str, name: str,
                 ) -> npt.NDArray[np.float32]:
    """A control message's ``name`` field as float32 rows of ``shape`` (a copy), its byte
    count checked before it is viewed; else a one-line :class:`ExchangeError`."""
    size = int(np.prod(shape)) * _DTYPE.itemsize
    if not isinstance(data, bytes) or len(data) != size:
        got = len(data) if isinstance(data, bytes) else type(data).__name__
        raise ExchangeError(f"{where}: {name}: expected {size} bytes of float32 rows, "
                            f"got {got}")
    return np.frombuffer(data, _DTYPE).reshape(shape).astype(np.float32)


def assemble_pair(parts: dict[int, PairRows],
                  ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The whole pair from every rank's rows (rank -> its rows, every rank): the bands
    must name the same two frames and tile the rows from 0 without a gap; else a
    :class:`StreamerError` saying which rank and why (a failed rank says so itself)."""
    for rank, part in sorted(parts.items()):
        if part.error is not None:
            raise StreamerError(f"find_center_pc: rank {rank}: {part.error}")
    frames = {part.frames for part in parts.values()}
    if len(frames) != 1:
        named = ", ".join(f"rank {r}: {p.frames}" for r, p in sorted(parts.items()))
        raise StreamerError(f"find_center_pc: expected every rank to hold the same 0°/180° "
                            f"pair of frames, got {named}")
    ordered = sorted(parts.items(), key=lambda item: item[1].rows)
    edge = 0
    for rank, part in ordered:
        if part.rows[0] != edge:
            raise StreamerError(f"find_center_pc: expected rank {rank}'s rows to begin at "
                                f"{edge}, got {part.rows[0]} (rows {part.rows})")
        edge = part.rows[1]
    first = np.concatenate([part.first for _, part in ordered])
    opposite = np.concatenate([part.opposite for _, part in ordered])
    return first, opposite
