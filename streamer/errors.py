"""One tree of errors, so callers can catch a whole family or one kind.

Every message says what went wrong, where, what was expected and what came:
``frames.dtype: expected one of uint8|uint16|uint32|float32, got 'int8'``.
User errors (bad config, bad file, bad command line) are shown without a traceback
by the command line; anything else is a bug.
"""

from __future__ import annotations


class StreamerError(Exception):
    """Base of every error raised on purpose by tomo-streamer."""


class ConfigError(StreamerError):
    """A configuration value, command-line option or pipeline entry is invalid."""


class ProtocolError(StreamerError):
    """A wire message broke the protocol.

    ``reason`` is a short machine-readable code used as the key in accounting
    (``rejected[reason]``); the message text is for people.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ScanFormatError(StreamerError):
    """A stored scan cannot be read: unknown format, missing dataset, wrong shape."""


class TransportError(StreamerError):
    """A socket could not be bound or connected, or an address is not allowed."""


class ScanFailedError(StreamerError):
    """One scan cannot be processed (its data, or its size against the memory budget):
    that scan ends, marked failed with this reason, and the service serves the next."""


class StageError(StreamerError):
    """A processing stage got input it cannot handle."""


class ExchangeError(StreamerError):
    """The MPI reslice failed or ranks disagree."""


class SinkError(StreamerError):
    """An output could not be written."""
