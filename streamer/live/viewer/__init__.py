"""The live viewer: ``tomo-streamer view`` serves a page showing a live feed (see
:mod:`streamer.live.viewer.server`); the page itself is in ``static/``."""
