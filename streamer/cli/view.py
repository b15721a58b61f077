"""``tomo-streamer view``: serve the browser viewer of a live feed."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from streamer.cli.options import add_command
from streamer.errors import TransportError

EXAMPLE = (
    "examples:\n"
    "  tomo-streamer demo --rate 60 --feed tcp://127.0.0.1:5600 --control "
    "tcp://127.0.0.1:5601 --hold 600\n"
    "  tomo-streamer view --feed tcp://127.0.0.1:5600 --control tcp://127.0.0.1:5601   "
    "# then open http://127.0.0.1:8765/"
)


def add_parser(commands: Any) -> None:
    """Register ``tomo-streamer view`` and its options."""
    parser = add_command(commands, EXAMPLE,
                         "view", "Serve a web page that shows a live feed: previews, final slices, "
                         "cuts, counters, rates and a CoR check.", run)
    parser.add_argument("--feed", required=True, metavar="ADDR",
                        help="the feed's address (run/demo --feed prints it)")
    parser.add_argument("--control", default=None, metavar="ADDR",
                        help="the feed's control address (CoR sweep, set the CoR, slices); "
                        "without it the page only watches")
    parser.add_argument("--host", default="127.0.0.1", help="serve on this address")
    parser.add_argument("--port", type=int, default=8765, help="HTTP port (0: any free one)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a non-loopback --host")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a name or address the page may be opened by besides the loopback "
                        "ones (and, with --allow-remote, this machine's); repeatable")
    parser.add_argument("--feed-token", default=None, metavar="TOKEN",
                        help="the feed's control token (default: $TOMO_STREAMER_FEED_TOKEN)")


def run(args: argparse.Namespace) -> int:
    """``tomo-streamer view`` with the parsed ``args``; returns the exit status."""
    from streamer.live.viewer.server import ViewerSettings, serve

    token = args.feed_token or os.environ.get("TOMO_STREAMER_FEED_TOKEN") or None
    settings = ViewerSettings(feed=args.feed, control=args.control, host=args.host,
                              port=args.port, allow_remote=args.allow_remote, token=token,
                              allowed_hosts=tuple(args.allowed_host))
    try:
        serve(settings, announce=lambda url: print(f"view: serving {url}; Ctrl-C to stop",
                                                   file=sys.stderr, flush=True))
    except OSError as error:  # the port is taken, the host is not this machine's, …
        from streamer.sinks.disk import os_reason

        raise TransportError(
            f"view: cannot serve on {args.host}:{args.port}: {os_reason(error)} (another "
            "server on that port? pick a free one with --port, or --port 0 for any)"
        ) from None
    return 0
