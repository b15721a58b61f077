"""R ranks: a CoR finder's rows tapped where it stands, from every rank to the CoR owner.

Where a whole-frame step (a Paganin filter) follows the CoR finder in the steps R ranks
run on their dealt frames, each rank taps the rows the finder reads from its frames there
(:mod:`streamer.pipeline.finder_tap`) and sends them to the rank that finds the CoR, which
puts every rank's frames together in frame order and runs the finder as one rank does
(the pattern of :mod:`streamer.run.pair_rows`, ``find_center_pc``'s pair). A rank's share
is its dealt frames' rows (``(frames, b - a, cols)`` float32: a few MB for the scan).
The messages are plain maps (msgpack), validated before their bytes are viewed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.errors import ExchangeError, StreamerError
from streamer.pipeline.finder_tap import TappedRows
from streamer.run.pair_rows import float32_rows

__all__ = ["FinderRows", "finder_rows_message", "join_finder_rows", "parse_finder_rows",
           "rows_tapped"]

_DTYPE = np.dtype("<f4")


@dataclass(frozen=True)
class FinderRows:
    """One rank's tapped rows ``[a, b)`` of frames ``indices`` (angles ``angles``), each
    ``(b - a, cols)`` of a ``frame`` = (rows, cols) frame; ``error``: why it has none."""

    rows: tuple[int, int]
    frame: tuple[int, int]
    indices: npt.NDArray[np.int64]
    angles: npt.NDArray[np.float64]
    data: npt.NDArray[np.float32]
    error: str | None = None


def rows_tapped(tapped: TappedRows | None, failure: str | None = None) -> FinderRows:
    """This rank's share: what it tapped (none: it was dealt no projection), or why it
    cannot be trusted (``failure``: its scan failed)."""
    empty = FinderRows((0, 0), (0, 0), np.zeros(0, np.int64), np.zeros(0, np.float64),
                       np.zeros((0, 0, 0), np.float32))
    if failure is not None:
        return FinderRows(empty.rows, empty.frame, empty.indices, empty.angles, empty.data,
                          f"its scan failed: {failure}")
    if tapped is None:
        return empty
    indices, angles, data = tapped.parts()
    return FinderRows(tapped.rows, tapped.frame, indices, angles, data)


def finder_rows_message(serial: int, share: FinderRows) -> dict[str, Any]:
    """The control message (a msgpack map) carrying ``share`` to the CoR owner."""
    return {"serial": serial, "rows": list(share.rows), "frame": list(share.frame),
            "indices": [int(i) for i in share.indices],
            "angles": [float(a) for a in share.angles], "error": share.error,
            "data": np.ascontiguousarray(share.data, dtype=_DTYPE).tobytes()}


def _pair(value: Any, what: str, where: str) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and v >= 0 for v in value)):
        raise ExchangeError(f"{where}: {what}: expected two counts >= 0, got {value!r:.80}")
    return int(value[0]), int(value[1])


def parse_finder_rows(message: dict[str, Any], source: int, projections: int) -> FinderRows:
    """A peer's finder-rows message, checked (at most ``projections`` frames, the byte
    count their shape says) before its bytes are viewed; a malformed one is a one-line
    :class:`ExchangeError` naming the rank."""
    where = f"rank {source}: finder-rows message"
    rows, frame = _pair(message.get("rows"), "rows", where), _pair(message.get("frame"),
                                                                   "frame", where)
    indices, angles = message.get("indices"), message.get("angles")
    if not (isinstance(indices, list) and all(isinstance(i, int) for i in indices)
            and len(indices) <= projections):
        raise ExchangeError(f"{where}: indices: expected at most {projections} frame "
                            f"indices, got {indices!r:.80}")
    if not (isinstance(angles, list) and len(angles) == len(indices)
            and all(isinstance(a, float | int) for a in angles)):
        raise ExchangeError(f"{where}: angles: expected {len(indices)} angles, got "
                            f"{angles!r:.80}")
    error = message.get("error")
    if error is not None:
        return FinderRows(rows, frame, np.zeros(0, np.int64), np.zeros(0, np.float64),
                          np.zeros((0, 0, 0), np.float32), str(error))
    if not rows[0] <= rows[1] <= frame[0]:
        raise ExchangeError(f"{where}: rows: expected [a, b] within the frame's {frame[0]} "
                            f"rows, got {list(rows)}")
    stack = float32_rows(message.get("data"), (len(indices), rows[1] - rows[0], frame[1]),
                         where, "data")
    return FinderRows(rows, frame, np.array(indices, dtype=np.int64),
                      np.array(angles, dtype=np.float64), stack)


def join_finder_rows(name: str, parts: dict[int, FinderRows]) -> TappedRows:
    """Every rank's share (rank -> its rows) as one :class:`TappedRows` for the finder
    ``name``: the ranks that tapped frames must agree on the rows and the frame's shape;
    a failed rank, or none with a frame, is a :class:`StreamerError` saying which."""
    for rank, part in sorted(parts.items()):
        if part.error is not None:
            raise StreamerError(f"{name}: rank {rank}: {part.error}")
    shares = {rank: part for rank, part in parts.items() if part.indices.size}
    shapes = {(part.rows, part.frame) for part in shares.values()}
    if not shapes:
        raise StreamerError(f"{name}: no corrected projection reached the CoR finder on "
                            "any rank")
    if len(shapes) != 1:
        named = ", ".join(f"rank {r}: rows {p.rows} of {p.frame}" for r, p in
                          sorted(shares.items()))
        raise StreamerError(f"{name}: expected every rank to tap the same rows of the same "
                            f"frame shape, got {named}")
    rows, frame = shapes.pop()
    joined = TappedRows(rows, frame)
    for _, part in sorted(shares.items()):
        joined.add_parts(part.indices, part.angles, part.data)
    return joined
