"""One line per problem in the viewer's log, never a traceback.

aiohttp logs a full traceback for a request it cannot parse (an over-long request line
or header: ``LineTooLong``) and asyncio for a task that failed; a service log fills with
them and hides what matters. :class:`OneLineLogger` is handed to aiohttp's request
handler in place of its ``aiohttp.server`` logger, and :func:`loop_exception_line` is the
event loop's exception handler: each turns a record and its exception into one line
``view: <message>: <ExceptionType>: <first line of the exception>`` for ``log``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any


def describe(error: BaseException | None) -> str:
    """``Type: message`` on one line (whitespace collapsed, at most 200 characters)."""
    if error is None:
        return ""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:200] if text else type(error).__name__


class OneLineLogger(logging.Logger):
    """A logger not registered with :mod:`logging` (no global state) that writes every
    record of level ``INFO`` or above as one line to ``log``; debug records are dropped."""

    def __init__(self, log: Callable[[str], None], name: str = "streamer.live.viewer") -> None:
        super().__init__(name, logging.INFO)
        self._write = log

    def handle(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.INFO:
            return
        message = record.getMessage().strip().splitlines()
        line = message[0] if message else ""
        error = record.exc_info[1] if record.exc_info else None
        detail = describe(error)
        self._write(f"view: {line}: {detail}" if detail else f"view: {line}")


def loop_exception_line(log: Callable[[str], None]) -> Callable[[Any, dict[str, Any]], None]:
    """An asyncio exception handler that logs one line per unhandled error."""

    def handler(loop: Any, context: dict[str, Any]) -> None:
        error = context.get("exception")
        message = str(context.get("message", "unhandled error")).splitlines()[0]
        detail = describe(error if isinstance(error, BaseException) else None)
        log(f"view: {message}: {detail}" if detail else f"view: {message}")

    return handler
