"""Frames of the open scan, held by index until a downstream step takes them.

Held frames are *views* of the received ZeroMQ payloads (zero-copy); the store bounds
how many bytes it holds so the service stops reading the socket when downstream falls
behind, which fills the high-water marks and so slows the source (backpressure).
Out-of-order arrival is fine: :meth:`FrameStore.take` hands frames out in index order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.errors import ConfigError
from streamer.ingest.state import FramesAccepted
from streamer.wire.protocol import StartHeader


@dataclass(frozen=True, slots=True)
class HeldFrame:
    """One received frame: its index, image_key, angle (degrees) and pixels."""

    index: int
    key: int
    angle_deg: float
    data: npt.NDArray[Any]


class FrameStore:
    """A bounded map ``frame index → frame`` for the open scan.

    Parameters
    ----------
    capacity_bytes : int
        Most payload bytes held at once; :attr:`full` turns True at this level.
    """

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 1:
            raise ConfigError(f"capacity_bytes: expected >= 1, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self.start: StartHeader | None = None
        self._held: dict[int, HeldFrame] = {}
        self.held_bytes = 0
        self.taken = 0

    def open(self, start: StartHeader) -> None:
        """Forget the previous scan's frames and hold frames of ``start``'s scan."""
        self.clear()
        self.start = start

    def clear(self) -> None:
        self._held.clear()
        self.held_bytes = 0
        self.taken = 0
        self.start = None

    def put(self, event: FramesAccepted) -> None:
        """Hold the accepted frames of a message (views, no copy)."""
        header = event.message.header
        if header.count == 1:  # the usual message: no index arrays
            if event.accepted[0]:
                frame = event.message.data[0]
                self._held[header.first] = HeldFrame(header.first, header.keys[0],
                                                     header.angles[0], frame)
                self.held_bytes += frame.nbytes
            return
        for offset in np.flatnonzero(event.accepted):
            index = header.first + int(offset)
            frame = event.message.data[offset]
            self._held[index] = HeldFrame(
                index, header.keys[offset], header.angles[offset], frame
            )
            self.held_bytes += frame.nbytes

    @property
    def full(self) -> bool:
        return self.held_bytes >= self.capacity_bytes

    def __len__(self) -> int:
        return len(self._held)

    def take(self, max_frames: int | None = None) -> list[HeldFrame]:
        """Remove and return up to ``max_frames`` held frames, lowest index first."""
        held = self._held
        if not held:
            return []
        if len(held) == 1 and (max_frames is None or max_frames >= 1):
            frames = list(held.values())  # the usual case when drained after each message
            held.clear()
        else:
            indices = sorted(held)
            if max_frames is not None:
                indices = indices[:max_frames]
            frames = [held.pop(index) for index in indices]
        self.held_bytes -= sum(frame.data.nbytes for frame in frames)
        self.taken += len(frames)
        return frames
