"""tomo-streamer: a streaming processor for parallel-beam X-ray tomography."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tomo-streamer")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
