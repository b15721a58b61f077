"""A PULL socket's receive side over queued messages, for ingest tests without sockets."""

from __future__ import annotations

from collections import deque

import zmq


class QueueSocket:
    """Queued multipart messages, ``zmq.Again`` when none (as a ``NOBLOCK`` receive or one
    past ``RCVTIMEO``); socket options read -1 and are accepted without effect."""

    closed = False

    def __init__(self, messages: list[list[object]]) -> None:
        self.messages = deque(messages)

    def recv_multipart(self, copy: bool = True) -> list[object]:
        if not self.messages:
            raise zmq.Again()
        return self.messages.popleft()

    def getsockopt(self, option: int) -> int:
        return -1

    def setsockopt(self, option: int, value: int) -> None:
        pass
