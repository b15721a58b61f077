"""The live feed: previews, final slices, cuts and counters for viewers (ZeroMQ PUB).

A :class:`LiveFeed` owns a background thread and two sockets: a PUB socket that publishes
the messages of :mod:`streamer.live.messages` and, optionally, a control socket (REP) that
answers CoR-sweep, set-centre, slice and state requests.

The pipeline never waits for the feed. Its thread calls :meth:`LiveFeed.scan_opened`,
:meth:`~LiveFeed.frames_accepted`, :meth:`~LiveFeed.projections`, :meth:`~LiveFeed.slices`,
:meth:`~LiveFeed.scan_closing` and :meth:`~LiveFeed.scan_closed`, which only copy a few
detector rows (or bin a finished slice) and append them to a bounded inbox; the feed's
own thread does the rest:

* **preview**: each projection's preview rows are binned, ramp-filtered and back-projected
  into the preview images (:mod:`streamer.live.preview`); the newest preview is published at
  most every ``preview_interval_s`` (older versions are replaced — latest wins — and
  counted as dropped) and re-sent with every counters message, so a subscriber that lost
  messages catches up;
* **counters** about once a second (and on every scan state change), with rates;
* **final slices**: the middle slice of every band as it is reconstructed; every slice is
  kept (binned, within the memory budget) for ``slice`` requests and for the three
  orthogonal **cuts** published when the scan closes, before ``scan_end``;
* **CoR sweep** on request: one preview row re-reconstructed from its kept filtered rows
  at up to 41 CoR values, one value per loop turn, then published as ``cor_sweep``;
* **set_center** on request: the running :class:`~streamer.pipeline.executor.ScanProcessor`
  takes the value as its ``center_override`` (used for the reconstruction of this scan),
  and the preview is recomputed at that CoR.

On several MPI ranks rank 0's feed also takes what the other ranks relay (their preview
rows, binned final slices and counts: :mod:`streamer.live.relay`) through
:meth:`LiveFeed.preview_rows`, :meth:`~LiveFeed.binned_slices` and
:meth:`~LiveFeed.remote_counts`; the counters show the sums over the ranks.

What is bounded: the inbox and everything the feed keeps for a scan share
``memory_bytes`` (beyond it new rows or slices are dropped and counted, never queued);
the PUB socket's send high-water mark is small and sends never block (libzmq drops
messages for a subscriber that does not read; subscribers see the gaps in ``seq``).
"""

from __future__ import annotations

import contextlib
import hmac
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgpack
import numpy as np
import numpy.typing as npt
import zmq

from stages.recon.fbp import filter_response
from streamer.errors import ConfigError, ProtocolError, StreamerError, TransportError
from streamer.ingest.accounting import ScanReport
from streamer.ingest.state import FramesAccepted, IngestState
from streamer.live.messages import (
    FEED_VERSION,
    MAX_REQUEST_BYTES,
    CorSweepHeader,
    CorSweepRequest,
    CountersHeader,
    Counts,
    CutsHeader,
    CutsRequest,
    Dropped,
    HelloHeader,
    ImageDtype,
    ImageSpec,
    PreviewHeader,
    Rates,
    ScanEndHeader,
    ScanLatency,
    ScanStartHeader,
    SetCenterRequest,
    SliceHeader,
    SliceRequest,
    StateRequest,
    as_bytes_view,
    decode_request,
    encode,
)
from streamer.live.preview import (
    PreviewGeometry,
    backproject,
    bin_columns,
    bin_image,
    display_window,
    filter_rows,
    scale,
    sweep_image,
    to_uint8,
)
from streamer.live.preview_stage import PreviewStage
from streamer.pipeline.executor import ProcessedBlock
from streamer.run.from_file import center_label
from streamer.wire.protocol import StartHeader
from streamer.wire.transport import check_address, is_loopback

DEFAULT_FEED_ADDRESS: Final = "tcp://127.0.0.1:*"
#: Longest the feed thread spends back-projecting before it looks at its sockets again.
BACKPROJECT_SLICE_S: Final = 0.05
#: How long closing the feed waits for queued messages to reach subscribers.
CLOSE_LINGER_MS: Final = 1000
#: Most projections filtered and back-projected as one batch.
CHUNK_PROJECTIONS: Final = 32
#: Failures of the feed thread in a row (no loop turn completed between them) after which
#: it stops for good, saying so, instead of restarting once more.
MAX_FAILURES_IN_ROW: Final = 3


def log_to_stderr(line: str) -> None:
    """The feed's default log: one line on stderr (the service's log)."""
    print(line, file=sys.stderr, flush=True)


class CenterTarget(Protocol):
    """The scan's processor (a ``ScanProcessor``): takes a CoR chosen in a viewer as its
    ``center_override``, and calls ``on_center(center, method)`` when it settles the CoR
    the scan is reconstructed at (the feed sets it to :meth:`LiveFeed.center_resolved`)."""

    center_override: float | None
    on_center: Callable[[float, str], None] | None


@dataclass(frozen=True)
class FeedSettings:
    """Where the feed listens and how much it does.

    Parameters
    ----------
    address : str
        PUB socket to bind (``tcp://127.0.0.1:*``: a free loopback port).
    control : str or None
        Control socket (REP) to bind; ``None``: no control (no CoR sweep, no set_center).
    allow_remote : bool
        Allow binding a non-loopback address.
    token : str, optional
        Required in every control request when set; mandatory when ``control`` is not a
        loopback address.
    preview_rows : tuple of int, optional
        Detector rows of the preview; default three spread over the frame.
    preview_size : int
        Largest preview edge, pixels (wider detectors are binned).
    sweep_size : int
        Largest edge of a CoR-sweep image.
    sweep_work : int
        Most pixel × projection interpolations per sweep image (more projections are
        subsampled).
    image_dtype : {"float32", "uint8"}
        How images travel; ``uint8`` is mapped from the 0.5–99.5 % window (in the header).
    sndhwm : int
        PUB send high-water mark, messages per subscriber.
    sndbuf_bytes : int
        The PUB socket's kernel send buffer (``SO_SNDBUF``), per subscriber: with the
        high-water mark, what may wait for a subscriber that does not read.
    counters_interval_s, preview_interval_s : float
        Counters period; shortest time between two previews.
    memory_bytes : int
        What the feed may hold for a scan (rows, filtered rows, binned slices, inbox).
    filter_name : str
        Ramp filter window of the preview (as the ``fbp`` stage's ``filter_name``).
    """

    address: str = DEFAULT_FEED_ADDRESS
    control: str | None = DEFAULT_FEED_ADDRESS
    allow_remote: bool = False
    token: str | None = None
    preview_rows: tuple[int, ...] | None = None
    preview_size: int = 512
    sweep_size: int = 256
    sweep_work: int = 1 << 24
    image_dtype: ImageDtype = "float32"
    sndhwm: int = 16
    sndbuf_bytes: int = 1024**2
    counters_interval_s: float = 1.0
    preview_interval_s: float = 0.1
    memory_bytes: int = 256 * 1024**2
    filter_name: str = "ramlak"

    def __post_init__(self) -> None:
        check_address(self.address)
        if self.control is not None:
            check_address(self.control)
            if not is_loopback(self.control) and not self.token:
                raise ConfigError(
                    f"--control: {self.control!r} is not a loopback address, so control "
                    "requests need a token: give --feed-token (or $TOMO_STREAMER_FEED_TOKEN)"
                )
        if self.token is not None and not 8 <= len(self.token) <= 256:
            raise ConfigError(f"--feed-token: expected 8 to 256 characters, got {len(self.token)}")
        if self.preview_rows is not None and (
            not 1 <= len(self.preview_rows) <= 16 or min(self.preview_rows) < 0
        ):
            raise ConfigError(
                f"--preview-rows: expected 1 to 16 detector rows >= 0, got {self.preview_rows}"
            )
        for name, low in (("preview_size", 8), ("sweep_size", 8), ("sweep_work", 1 << 16),
                          ("sndhwm", 1), ("memory_bytes", 1 << 20), ("sndbuf_bytes", 4096)):
            value = getattr(self, name)
            if value < low:
                raise ConfigError(f"feed.{name}: expected >= {low}, got {value}")
        if self.preview_size > 4096 or self.sweep_size > 4096:
            raise ConfigError(f"feed.preview_size, sweep_size: expected <= 4096, got "
                              f"{self.preview_size}, {self.sweep_size}")
        for name in ("counters_interval_s", "preview_interval_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 60):
                raise ConfigError(f"feed.{name}: expected 0 to 60 s, got {value}")
        if self.image_dtype not in ("float32", "uint8"):
            raise ConfigError(f"feed.image_dtype: expected float32|uint8, got "
                              f"{self.image_dtype!r}")
        filter_response(8, self.filter_name)  # raises on an unknown name


def default_preview_rows(rows: int) -> tuple[int, ...]:
    """Three detector rows spread over the frame (a quarter, half and three quarters)."""
    return tuple(sorted({rows // 4, rows // 2, (3 * rows) // 4}))


def preview_rows_for(settings: FeedSettings, rows: int) -> tuple[int, ...]:
    """The detector rows a scan of ``rows`` rows is previewed at: the settings' rows that
    lie on the detector, else :func:`default_preview_rows` (the same rule on every rank)."""
    wanted = settings.preview_rows
    return tuple(r for r in (wanted or ()) if r < rows) or default_preview_rows(rows)


def slice_binning(shape: tuple[int, ...], settings: FeedSettings) -> int:
    """How much final slices of ``shape`` (…, height, width) are binned for the feed."""
    return max(1, math.ceil(max(shape[-2:]) / settings.preview_size))


def slice_stride(rows: int, size: int, binning: int, settings: FeedSettings) -> int:
    """Every ``stride``-th final slice is kept for ``slice``/``cuts`` requests, so that a
    scan of ``rows`` slices of ``size²`` pixels (binned) fits half the feed's budget."""
    binned_bytes = math.ceil(size / binning) ** 2 * 4
    return max(1, math.ceil(rows * binned_bytes / (settings.memory_bytes // 2)))


def bin_slices(data: npt.NDArray[np.float32], indices: list[int], binning: int,
               stride: int) -> BinnedSlices:
    """A band of final slices ``(n, N, N)`` (``indices`` their detector rows) as the feed
    keeps and shows them: the rows on the ``stride`` grid binned for requests, and the
    band's middle slice (binned) to publish. Pure: ranks other than 0 call it before
    sending their slices to the feed (:mod:`streamer.live.relay`)."""
    middle = len(indices) // 2
    kept = [(index, bin_image(data[n], binning))
            for n, index in enumerate(indices) if index % stride == 0]
    shown_image = next((image for index, image in kept if index == indices[middle]), None)
    if shown_image is None:
        shown_image = bin_image(data[middle], binning)
    return BinnedSlices(indices[0], indices[-1] + 1, kept, (indices[middle], shown_image),
                        binning, stride)


# --- what the pipeline thread hands over ---------------------------------------------------


@dataclass(frozen=True)
class _Opened:
    start: StartHeader
    rows: tuple[int, ...]
    geometry: PreviewGeometry
    center: float
    center_method: str
    at: float
    stage: PreviewStage | None = None


@dataclass(frozen=True)
class _Rows:
    indices: npt.NDArray[np.int64]
    angles_deg: npt.NDArray[np.float64]
    data: npt.NDArray[np.float32]  # (n, preview rows, cols): a copy
    at: float


@dataclass(frozen=True)
class BinnedSlices:
    """A band of final slices as the feed takes them (see :func:`bin_slices`)."""

    first: int
    last: int
    kept: list[tuple[int, npt.NDArray[np.float32]]]  # binned slices kept for requests
    shown: tuple[int, npt.NDArray[np.float32]]  # the band's middle slice, binned
    binning: int
    stride: int


@dataclass(frozen=True)
class _Closing:
    at: float


@dataclass(frozen=True)
class _Center:
    """The CoR the scan is reconstructed at, once the processor has settled it."""

    center: float
    method: str


@dataclass(frozen=True)
class _Closed:
    report: ScanReport
    center: float | None
    center_method: str | None
    output: str | None
    error: str | None
    latency: dict[str, Any] | None = None
    without_neighbours: int | None = None


_Item = _Opened | _Rows | BinnedSlices | _Closing | _Center | _Closed


@dataclass(frozen=True)
class _Snapshot:
    """The pipeline side's counts at one moment (read by the feed thread: latest wins)."""

    scan: str
    state: str
    expected: tuple[int, int, int]  # projections, flats, darks
    received: tuple[int, int, int]
    duplicate: int
    out_of_range: int
    rejected: int
    processed: int
    dropped_rows: int
    dropped_slices: int
    missing: tuple[int, int, int] | None = None
    complete: bool | None = None


@dataclass(frozen=True)
class RemoteCounts:
    """One other rank's counts of the open scan (its totals so far: the latest wins)."""

    received: tuple[int, int, int] = (0, 0, 0)  # projections, flats, darks
    duplicate: int = 0
    out_of_range: int = 0
    rejected: int = 0
    dropped_rows: int = 0  # preview rows it could not send (rank 0 lagged)
    dropped_slices: int = 0


@dataclass
class _PipelineScan:
    """Pipeline-thread bookkeeping of the open scan (never touched by the feed thread)."""

    start: StartHeader
    rows: tuple[int, ...]
    geometry: PreviewGeometry
    opened_at: float
    received: list[int] = field(default_factory=lambda: [0, 0, 0])
    processed: int = 0
    dropped_rows: int = 0
    dropped_slices: int = 0
    slice_stride: int | None = None
    state: str = "open"
    #: Other ranks' counts (several MPI ranks: :mod:`streamer.live.relay`), by rank.
    remote: dict[int, RemoteCounts] = field(default_factory=dict)


# --- the feed thread's view of a scan ------------------------------------------------------


@dataclass
class _Sweep:
    number: int
    row: int
    centers: list[float]
    filtered: npt.NDArray[np.float32]  # (angles, length + 2)
    angles_rad: npt.NDArray[np.float64]
    size: int
    images: list[npt.NDArray[np.float32]] = field(default_factory=list)


@dataclass
class _ScanView:
    opened: _Opened
    response: npt.NDArray[np.float64]
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.float32]
    acc: npt.NDArray[np.float32]
    center: float
    center_method: str
    chunks: list[tuple[npt.NDArray[np.float64], npt.NDArray[np.float32], int, float]] = field(
        default_factory=list)  # (angles_rad, filtered (n, rows, length+2), newest index, at)
    done_chunks: int = 0
    previewed: int = 0
    version: int = 0
    published_version: int = 0
    newest: tuple[int, float] | None = None
    volume: dict[int, npt.NDArray[np.float32]] = field(default_factory=dict)
    slice_binning: int = 1
    slice_stride: int = 1
    bands_done: int = 0
    closed: _Closed | None = None
    closed_at: float | None = None
    end: ScanEndHeader | None = None
    state: str = "open"
    stored_bytes: int = 0
    #: Re-rendering at a new CoR: the preview is not published until it holds every kept
    #: projection again (it never goes back to a few projections on screen).
    rerendering: bool = False
    #: Projections in the last preview published.
    shown: int = 0

    @property
    def scan(self) -> str:
        return self.opened.start.scan


class LiveFeed:
    """Publishes a running scan for viewers; see the module docstring.

    Parameters
    ----------
    settings : FeedSettings
    context : zmq.Context, optional
        Shared context; a private one (terminated by :meth:`close`) when omitted.
    log : callable, optional
        Gets one line per event worth a log entry (a refused control request, the feed
        thread failing and being restarted or stopping); stderr when omitted.
    clock : callable, optional
        Wall clock, Unix seconds (``time.time``): message times, the counters and
        preview periods, rates. Tests inject one to make the periods deterministic.

    The feed's thread never dies silently: an unexpected error is logged and the thread
    restarted; after :data:`MAX_FAILURES_IN_ROW` failures in a row it stops, saying so
    (:attr:`alive` turns false; the pipeline's calls keep working and drop what they
    hand over, counted). Control requests that fail are answered with an ``internal``
    error, never left without a reply.

    Raises
    ------
    TransportError
        If an address cannot be bound (or is off-host without ``allow_remote``).
    """

    def __init__(self, settings: FeedSettings = FeedSettings(),
                 context: zmq.Context[Any] | None = None, *,
                 log: Callable[[str], None] = log_to_stderr,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._log = log
        self._clock = clock
        self._own_context = context is None
        self._context: zmq.Context[Any] = context if context is not None else zmq.Context()
        self._pub: zmq.Socket[Any] | None = None
        self._control: zmq.Socket[Any] | None = None
        try:
            # XPUB: a PUB socket that also reads subscriptions (each one, XPUB_VERBOSE),
            # so that a new subscriber gets a ``hello`` once it is subscribed.
            self._pub = self._bind(zmq.XPUB, settings.address)
            self.address = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self.control_address: str | None = None
            if settings.control is not None:
                self._control = self._bind(zmq.REP, settings.control)
                self.control_address = self._control.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException:
            self._close_sockets()
            raise
        # Pipeline → feed: a bounded inbox (bytes of its data counted), the latest counts.
        self._lock = threading.Lock()
        self._inbox: deque[_Item] = deque()
        self._pending_bytes = 0
        self._stored_bytes = 0  # written by the feed thread only
        self._snapshot: _Snapshot | None = None
        self._watched: IngestState | None = None
        self._pipe: _PipelineScan | None = None
        # set_center: the open scan's processor, guarded so a value set after the
        # reconstruction began is refused, never silently ignored.
        self._center_lock = threading.Lock()
        self._center_target: CenterTarget | None = None
        self._center_scan: str | None = None
        # Feed-thread state.
        self._seq = 0
        self._view: _ScanView | None = None
        self._sweep: _Sweep | None = None
        self._sweeps = 0
        self._dropped_previews = 0
        self._dropped_messages = 0
        self._last_counters_at = 0.0
        self._last_preview_at = 0.0
        self._rate_base: tuple[float, int, int, int] | None = None
        self._last_counters: CountersHeader | None = None
        self.published: dict[str, int] = {}
        #: Told ``(scan, newest frame)`` after each preview is published, in the feed's
        #: thread (the runner's latency recorder: frame received → preview published).
        self.on_preview: Callable[[str, int], None] | None = None
        # Health: control requests refused (bad token) or failed, thread restarts.
        self._refused_requests = 0
        self._failed_requests = 0
        self._restarts = 0
        self._subscriptions = 0
        self._failures_in_row = 0
        self._stopped_by_failure: str | None = None
        # Wake-up pipe: the pipeline thread writes a byte, the feed thread polls it.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-feed", daemon=True)
        self._thread.start()

    # --- pipeline side: never blocks, never grows beyond memory_bytes ---------------------

    def watch(self, state: IngestState) -> None:
        """Read duplicates, out-of-range and rejected counts from the ingest state (call
        from the ingest thread, like every method below)."""
        self._watched = state

    def scan_opened(self, start: StartHeader, *, target: CenterTarget | None = None,
                    center: float | None = None, slice_size: int | None = None,
                    stage: PreviewStage | None = None) -> None:
        """A scan opened. ``target`` takes a CoR set from a viewer (the scan's processor);
        ``center`` is the pipeline's CoR if fixed (else the start's geometry, else the
        middle); ``slice_size`` the reconstruction's output edge if not ``cols``;
        ``stage`` how far the projections handed to :meth:`projections` are corrected
        (:func:`~streamer.live.preview_stage.preview_stage`), said with every preview."""
        rows = preview_rows_for(self.settings, start.rows)
        geometry = PreviewGeometry.for_detector(start.cols, self.settings.preview_size,
                                                slice_size)
        method = "pipeline"
        if center is None:
            center, method = start.geometry.cor_px, "scan start"
        if center is None:  # until the processor settles it (center_resolved)
            center, method = (start.cols - 1) / 2, "detector middle"
        now = self._clock()
        self._pipe = _PipelineScan(start, rows, geometry, now)
        with self._center_lock:
            self._center_target = target
            self._center_scan = start.scan
        if target is not None:
            target.on_center = self.center_resolved
        self._refresh(force=True)  # before the scan's first message: counters are ready
        self._put(_Opened(start, rows, geometry, float(center), method, now, stage), 0,
                  force=True)

    def center_resolved(self, center: float, method: str) -> None:
        """The processor settled the CoR the scan is reconstructed at (found by a finder
        or Vo's method, or set from a viewer): the preview is re-rendered at it and every
        later label (slices, counters, state, ``scan_end``) says it, with ``method``
        (``"auto"`` is labelled ``"vo"``)."""
        if self._pipe is None:
            return
        self._put(_Center(float(center), center_label(method, "pipeline")), 0, force=True)

    def frames_accepted(self, event: FramesAccepted) -> None:
        """Count the frames of one accepted message."""
        pipe = self._pipe
        if pipe is None or pipe.start.scan != event.start.scan:
            return
        keys = np.asarray(event.message.header.keys, dtype=np.int8)[event.accepted]
        counts = np.bincount(keys, minlength=3)
        for key in range(3):
            pipe.received[key] += int(counts[key])
        self._refresh()

    def projections(self, block: ProcessedBlock) -> None:
        """Corrected projections: their preview rows go to the feed (a small copy)."""
        pipe = self._pipe
        if pipe is None:  # (the scan's last projections come while it closes: kept)
            return
        rows = np.ascontiguousarray(block.data[:, list(pipe.rows), :], dtype=np.float32)
        self.preview_rows(block.indices.copy(), block.angles_deg.copy(), rows)

    def preview_rows(self, indices: npt.NDArray[np.int64], angles_deg: npt.NDArray[np.float64],
                     rows: npt.NDArray[np.float32]) -> None:
        """The preview rows ``(n, preview rows, cols)`` of corrected projections (taken,
        not copied): :meth:`projections` on this rank, or another rank's, relayed."""
        pipe = self._pipe
        if pipe is None:
            return
        if rows.shape[1:] != (len(pipe.rows), pipe.start.cols) or len(rows) != len(indices):
            raise ProtocolError("invalid_field",
                                f"preview rows: expected ({len(indices)}, {len(pipe.rows)}, "
                                f"{pipe.start.cols}), got {rows.shape}")
        pipe.processed += len(indices)
        item = _Rows(indices, angles_deg, rows, self._clock())
        # The counts first: a preview of these rows is never followed by older counters.
        self._refresh()
        if not self._put(item, _item_bytes(item)):
            pipe.dropped_rows += len(indices)
            self._refresh()

    def slices(self, block: ProcessedBlock) -> None:
        """A band of final slices ``(n, N, N)``, ``block.indices`` their detector rows."""
        pipe = self._pipe
        if pipe is None or block.data.ndim != 3 or len(block.indices) == 0:
            return
        binning = slice_binning(block.data.shape, self.settings)
        if pipe.slice_stride is None:
            pipe.slice_stride = slice_stride(pipe.start.rows, block.data.shape[-1], binning,
                                             self.settings)
        self.binned_slices(bin_slices(block.data, [int(i) for i in block.indices], binning,
                                      pipe.slice_stride))

    def binned_slices(self, item: BinnedSlices) -> None:
        """A band of final slices already binned (:func:`bin_slices`): :meth:`slices` on
        this rank, or another rank's, relayed."""
        pipe = self._pipe
        if pipe is None:
            return
        if not self._put(item, _item_bytes(item)):
            pipe.dropped_slices += item.last - item.first

    def remote_counts(self, rank: int, counts: RemoteCounts) -> None:
        """Another rank's counts of the open scan (their totals so far): the counters
        show the sums over every rank."""
        pipe = self._pipe
        if pipe is None:
            return
        pipe.remote[rank] = counts
        self._refresh()

    def scan_closing(self) -> None:
        """Ingest closed the scan; its reconstruction starts now: no CoR can be set after
        this returns (a set_center request gets ``too_late``)."""
        with self._center_lock:
            self._center_target = None
        if self._pipe is not None:
            self._pipe.state = "reconstructing"
        self._refresh(force=True)
        self._put(_Closing(self._clock()), 0, force=True)

    def scan_closed(self, report: ScanReport, *, center: float | None = None,
                    center_method: str | None = None, output: str | None = None,
                    error: str | None = None, latency: dict[str, Any] | None = None,
                    without_neighbours: int | None = None) -> None:
        """The scan is reconstructed (``output`` written) or failed (``error``);
        ``latency`` is its :meth:`~streamer.run.latency.LatencySummary.as_dict`;
        ``without_neighbours`` the projections corrected without all their halo
        neighbours (a pipeline with a kernel across frames; None: it has none)."""
        with self._center_lock:
            self._center_target = None
            self._center_scan = None
        pipe = self._pipe
        if pipe is not None:
            pipe.state = "closed"
            self._refresh(force=True, missing=_triple(report.missing),
                          complete=report.complete, received=_triple(report.received))
        self._put(_Closed(report, center, center_method, output, error, latency,
                          without_neighbours), 0, force=True)
        self._pipe = None

    def close(self, timeout_s: float = 10.0) -> None:
        """Publish what the pipeline handed over, stop the thread, close the sockets.

        Messages already queued get up to :data:`CLOSE_LINGER_MS` to reach subscribers
        (a subscriber that does not read holds at most a high-water mark's worth)."""
        self._stop.set()
        self._wake()
        self._thread.join(timeout_s)
        self._close_sockets()
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> LiveFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> dict[str, int]:
        """Messages published by type, what the feed dropped, control requests refused
        (bad token) or failed, and restarts of its thread (for tests and benches)."""
        return {**self.published, "dropped_previews": self._dropped_previews,
                "dropped_messages": self._dropped_messages,
                "refused_requests": self._refused_requests,
                "failed_requests": self._failed_requests, "restarts": self._restarts}

    @property
    def alive(self) -> bool:
        """Whether the feed's thread is serving (false once closed or stopped by failures)."""
        return self._thread.is_alive() and self._stopped_by_failure is None

    def _put(self, item: _Item, nbytes: int, *, force: bool = False) -> bool:
        with self._lock:
            if self._stopped_by_failure is not None:
                return False  # nobody would take it
            if not force and (self._pending_bytes + self._stored_bytes + nbytes
                              > self.settings.memory_bytes):
                return False
            self._inbox.append(item)
            self._pending_bytes += nbytes
        self._wake()
        return True

    def _refresh(self, *, force: bool = False, missing: tuple[int, int, int] | None = None,
                 complete: bool | None = None, received: tuple[int, int, int] | None = None
                 ) -> None:
        """Replace the counts snapshot (plain ints: a few µs per ingest message); ``force``
        also wakes the feed thread (a state change is published at once)."""
        pipe = self._pipe
        if pipe is None:
            return
        duplicate = out_of_range = rejected = 0
        watched = self._watched
        account = watched.current if watched is not None else None
        if account is not None and account.start.scan == pipe.start.scan:
            duplicate, out_of_range = account.duplicate, account.out_of_range
            rejected = sum(account.rejected.frames.values())
        start = pipe.start
        here = (pipe.received[0], pipe.received[1], pipe.received[2])
        dropped_rows, dropped_slices = pipe.dropped_rows, pipe.dropped_slices
        for other in pipe.remote.values():  # several ranks: the sums
            here = (here[0] + other.received[0], here[1] + other.received[1],
                    here[2] + other.received[2])
            duplicate += other.duplicate
            out_of_range += other.out_of_range
            rejected += other.rejected
            dropped_rows += other.dropped_rows
            dropped_slices += other.dropped_slices
        self._snapshot = _Snapshot(
            scan=start.scan, state=pipe.state,
            expected=(start.projections, start.flats, start.darks),
            received=received or here,
            duplicate=duplicate, out_of_range=out_of_range, rejected=rejected,
            processed=pipe.processed, dropped_rows=dropped_rows,
            dropped_slices=dropped_slices, missing=missing, complete=complete,
        )
        if force:
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_write, b"\0")

    # --- sockets ---------------------------------------------------------------------------

    def _bind(self, kind: int, address: str) -> zmq.Socket[Any]:
        check_address(address)
        if not self.settings.allow_remote and not is_loopback(address):
            raise TransportError(
                f"bind: refusing to listen on non-loopback address {address!r}; use a "
                "127.0.0.1 address or pass --feed-allow-remote on purpose"
            )
        socket: zmq.Socket[Any] = self._context.socket(kind)
        try:
            socket.setsockopt(zmq.LINGER, 0)
            # Before the bind: a listener hands its options to each connection it accepts.
            if kind == zmq.REP:
                socket.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
            else:
                socket.setsockopt(zmq.SNDHWM, self.settings.sndhwm)
                socket.setsockopt(zmq.SNDBUF, self.settings.sndbuf_bytes)
                socket.setsockopt(zmq.XPUB_VERBOSE, 1)
                socket.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)  # subscriptions only
            socket.bind(address)
        except zmq.ZMQError as exc:
            socket.close(linger=0)
            raise TransportError(f"bind {address!r}: {exc}") from None
        return socket

    def _close_sockets(self) -> None:
        if self._pub is not None and not self._pub.closed:
            self._pub.close(linger=CLOSE_LINGER_MS)
        if self._control is not None and not self._control.closed:
            self._control.close(linger=0)
        if self._own_context and not self._context.closed:
            self._context.term()

    def _publish(self, header: Any, images: list[npt.NDArray[Any]] | None = None) -> None:
        assert self._pub is not None
        header = header.model_copy(update={"seq": self._seq, "t": self._clock()})
        self._seq += 1
        parts = encode(header, images)
        # Counted before the send, so that a subscriber holding the message never reads a
        # count without it (``stats`` is read from other threads; replaced, not mutated).
        before = self.published
        self.published = {**before, header.type: before.get(header.type, 0) + 1}
        try:
            self._pub.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.published = before
            self._dropped_messages += 1

    # --- the feed thread -------------------------------------------------------------------

    def _run(self) -> None:
        """The thread: the loop, restarted after an unexpected error (logged); stopped,
        saying so, after :data:`MAX_FAILURES_IN_ROW` failures with no turn completed."""
        while True:
            try:
                self._loop()
                return
            except Exception as error:  # the service must hear of any failure
                self._failures_in_row += 1
                reason = f"{type(error).__name__}: {error}"[:300]
                if self._failures_in_row >= MAX_FAILURES_IN_ROW:
                    self._stopped_by_failure = reason
                    with self._lock:
                        self._inbox.clear()
                        self._pending_bytes = 0
                    self._log(f"feed: stopped after {self._failures_in_row} failures in a row "
                              f"({reason}); the scans go on without a live feed")
                    return
                self._restarts += 1
                self._sweep = None  # the step that failed may have been the sweep's
                self._log(f"feed: thread failed ({reason}); restarted "
                          f"(restart {self._restarts})")

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._wake_read, zmq.POLLIN)
        if self._control is not None:
            poller.register(self._control, zmq.POLLIN)
        assert self._pub is not None
        poller.register(self._pub, zmq.POLLIN)  # subscriptions
        while not self._stop.is_set():
            ready = dict(poller.poll(self._poll_ms()))
            if self._wake_read in ready:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.read(self._wake_read, 4096)
            if self._stop.is_set():
                break
            self._take_inbox()
            if self._control is not None and self._control in ready:
                self._serve_control()
            if self._pub in ready:
                self._welcome()
            self._backproject(BACKPROJECT_SLICE_S)
            self._maybe_publish_preview()
            self._sweep_step()
            self._maybe_publish_counters()
            self._failures_in_row = 0
        # What the pipeline handed over before close() (a scan's end, typically) still
        # goes out: bounded work, the inbox is bounded.
        self._take_inbox()

    def _welcome(self) -> None:
        """Read the subscriptions that came; if one is new, say ``hello`` (every
        subscriber gets it: the new one then knows the feed has its subscription)."""
        assert self._pub is not None
        joined = 0
        for _ in range(64):
            try:
                event = self._pub.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            if event[:1] == b"\x01":
                joined += 1
        self._subscriptions += joined
        if joined:
            self._publish(HelloHeader(scan=self._view.scan if self._view else None))

    def _poll_ms(self) -> int:
        view = self._view
        if self._inbox or self._sweep is not None or (
            view is not None and view.done_chunks < len(view.chunks)
        ):
            return 0
        now = self._clock()
        due = self._last_counters_at + self.settings.counters_interval_s - now
        if view is not None and view.version > view.published_version:
            due = min(due, self._last_preview_at + self.settings.preview_interval_s - now)
        return max(0, min(1000, math.ceil(due * 1000)))

    def _take_inbox(self) -> None:
        while True:
            with self._lock:
                if not self._inbox:
                    return
                item = self._inbox.popleft()
            try:
                self._take(item)
            finally:  # also when it fails: the budget must not shrink for good
                with self._lock:
                    self._pending_bytes -= _item_bytes(item)

    def _take(self, item: _Item) -> None:
        """One item of the inbox, in the feed's thread."""
        if isinstance(item, _Opened):
            self._open(item)
        elif isinstance(item, _Rows):
            self._add_rows(item)
        elif isinstance(item, BinnedSlices):
            self._add_slices(item)
        elif isinstance(item, _Closing):
            if self._view is not None:
                self._view.state = "reconstructing"
            self._publish_counters()
        elif isinstance(item, _Center):
            view = self._view
            if view is not None and view.center != item.center:
                self._recenter(view, item.center, item.method)  # re-rendered at it
            if view is not None:
                view.center_method = item.method
                self._publish_counters()
        else:
            self._close_scan(item)

    def _open(self, item: _Opened) -> None:
        geometry = item.geometry
        x, y = geometry.grid()
        self._view = _ScanView(
            opened=item, response=filter_response(geometry.length, self.settings.filter_name),
            x=x, y=y, acc=np.zeros((len(item.rows), geometry.size ** 2), dtype=np.float32),
            center=item.center, center_method=item.center_method,
        )
        self._sweep = None
        self._stored_bytes = 0
        self._rate_base = None
        start = item.start
        self._publish(ScanStartHeader(
            scan=start.scan, rows=start.rows, cols=start.cols, projections=start.projections,
            flats=start.flats, darks=start.darks, preview_rows=list(item.rows),
            binning=geometry.binning, preview_size=geometry.size, center=item.center,
            center_method=item.center_method, source=start.source,
            **_stage_fields(item.stage, "preview_stage", "preview_not_applied"),
        ))
        self._publish_counters()

    def _add_rows(self, item: _Rows) -> None:
        view = self._view
        if view is None:
            return
        geometry = view.opened.geometry
        angles = np.deg2rad(item.angles_deg)
        for first in range(0, len(item.indices), CHUNK_PROJECTIONS):
            part = slice(first, first + CHUNK_PROJECTIONS)
            binned = bin_columns(item.data[part], geometry.binning)
            filtered = filter_rows(binned, geometry, view.response)
            view.chunks.append((angles[part], filtered, int(item.indices[part].max()), item.at))
            view.stored_bytes += filtered.nbytes
        self._stored_bytes = view.stored_bytes

    def _add_slices(self, item: BinnedSlices) -> None:
        view = self._view
        if view is None:
            return
        view.slice_binning, view.slice_stride = item.binning, item.stride
        for index, image in item.kept:
            view.volume[index] = image
            view.stored_bytes += image.nbytes
        self._stored_bytes = view.stored_bytes
        view.bands_done += 1
        index, image = item.shown
        images, specs, dtype = self._images([(f"slice {index}", image)])
        self._publish(SliceHeader(scan=view.scan, dtype=dtype, images=specs, index=index,
                                  band=(item.first, item.last), binning=item.binning,
                                  center=view.center, center_method=view.center_method),
                      images)

    def _close_scan(self, item: _Closed) -> None:
        view = self._view
        if view is None:
            return
        while view.done_chunks < len(view.chunks):
            self._backproject(math.inf)
        if view.version > view.published_version or view.previewed:
            self._publish_preview(view)
        view.closed = item
        view.closed_at = self._clock()
        view.state = "closed"
        if view.volume:
            self._publish(*self._cuts(view))
        self._publish_counters()
        report = item.report
        view.end = ScanEndHeader(
            scan=view.scan, status=report.status, complete=report.complete,
            close_reason=report.close_reason[:1024],
            expected=Counts.model_validate(report.expected),
            received=Counts.model_validate(report.received),
            missing=Counts.model_validate(report.missing), duplicate=report.duplicate,
            rejected=report.total_rejected_frames, center=item.center,
            center_method=item.center_method,
            output=item.output[:1024] if item.output else None,
            error=item.error[:1024] if item.error else None,
            latency=ScanLatency.model_validate(item.latency) if item.latency else None,
            corrected_without_neighbours=item.without_neighbours,
        )
        self._publish(view.end)

    # --- preview -----------------------------------------------------------------------------

    def _backproject(self, budget_s: float) -> None:
        view = self._view
        if view is None:
            return
        began = time.perf_counter()
        geometry = view.opened.geometry
        while view.done_chunks < len(view.chunks):
            angles, filtered, newest, at = view.chunks[view.done_chunks]
            backproject(view.acc, filtered, angles, center=view.center, geometry=geometry,
                        x=view.x, y=view.y)
            view.done_chunks += 1
            view.previewed += len(angles)
            if view.newest is None or at >= view.newest[1]:
                view.newest = (newest, at)
            if view.version > view.published_version and not view.rerendering:
                self._dropped_previews += 1  # the unsent version is superseded
            view.version += 1
            if time.perf_counter() - began > budget_s:
                break
        if view.done_chunks == len(view.chunks):
            view.rerendering = False

    def _maybe_publish_preview(self) -> None:
        view = self._view
        if view is None or view.version <= view.published_version or view.rerendering:
            return
        if self._clock() - self._last_preview_at < self.settings.preview_interval_s:
            return
        self._publish_preview(view)

    def _publish_preview(self, view: _ScanView) -> None:
        opened = view.opened
        geometry = opened.geometry
        size = geometry.size
        images = scale(view.acc, view.previewed, geometry.binning).reshape(-1, size, size)
        named = [(f"row {row}", images[n]) for n, row in enumerate(opened.rows)]
        arrays, specs, dtype = self._images(named)
        newest_frame, newest_at = view.newest if view.newest is not None else (None, None)
        self._publish(PreviewHeader(
            scan=view.scan, dtype=dtype, images=specs, rows=list(opened.rows),
            projections=view.previewed, expected=opened.start.projections,
            center=view.center, center_method=view.center_method, binning=geometry.binning,
            newest_frame=newest_frame, newest_at=newest_at,
            **_stage_fields(opened.stage, "stage", "not_applied"),
        ), arrays)
        view.published_version = view.version
        view.shown = view.previewed
        self._last_preview_at = self._clock()
        listener = self.on_preview
        if listener is not None and newest_frame is not None:
            with contextlib.suppress(StreamerError):  # a frame the recorder never saw
                listener(view.scan, newest_frame)

    def _recenter(self, view: _ScanView, center: float, method: str) -> None:
        """Recompute the preview at another CoR from the kept filtered rows (published
        once it holds all of them again)."""
        view.center, view.center_method = center, method
        view.acc[...] = 0.0
        view.done_chunks = 0
        view.previewed = 0
        view.newest = None
        view.rerendering = bool(view.chunks)

    def _images(self, named: list[tuple[str, npt.NDArray[np.float32]]]
                ) -> tuple[list[npt.NDArray[Any]], list[ImageSpec], ImageDtype]:
        arrays: list[npt.NDArray[Any]] = []
        specs = []
        for name, image in named:
            window = display_window(image)
            specs.append(ImageSpec(name=name, shape=(image.shape[0], image.shape[1]),
                                   window=window))
            if self.settings.image_dtype == "uint8":
                arrays.append(to_uint8(image, window))
            else:
                arrays.append(np.ascontiguousarray(image, dtype="<f4"))
        return arrays, specs, self.settings.image_dtype

    def _cuts(self, view: _ScanView) -> tuple[CutsHeader, list[npt.NDArray[Any]]]:
        """The three cuts of the volume kept so far (binned), and their header."""
        indices = sorted(view.volume)
        volume = np.stack([view.volume[i] for i in indices])  # (slices, y, x)
        middle = len(indices) // 2
        _, height, width = volume.shape
        cuts = [("xy", volume[middle]), ("xz", np.ascontiguousarray(volume[:, height // 2, :])),
                ("yz", np.ascontiguousarray(volume[:, :, width // 2]))]
        arrays, specs, dtype = self._images(cuts)
        return CutsHeader(scan=view.scan, dtype=dtype, images=specs, index=indices[middle],
                          slice_stride=view.slice_stride, binning=view.slice_binning), arrays

    # --- counters ----------------------------------------------------------------------------

    def _maybe_publish_counters(self) -> None:
        if self._clock() - self._last_counters_at >= self.settings.counters_interval_s:
            self._publish_counters()
            view = self._view
            # The scan's latest state again, every counters period until the next scan: a
            # subscriber that lost it (slow, or joined late) has it within a period.
            if view is not None and view.end is not None:
                self._publish(view.end)  # (small messages before the large preview)
            if (view is not None and view.previewed and view.state != "reconstructing"
                    and not view.rerendering):
                self._publish_preview(view)

    def _publish_counters(self) -> None:
        self._last_counters_at = self._clock()
        snapshot = self._snapshot
        view = self._view
        if snapshot is None or view is None or snapshot.scan != view.scan:
            return
        now = self._clock()
        total = sum(snapshot.received)
        # While re-rendering at a new CoR the images shown still hold ``shown`` projections.
        previewed = view.shown if view.rerendering else view.previewed
        rates = Rates()
        base = self._rate_base
        if base is not None and now - base[0] > 0.2:
            span = now - base[0]
            rates = Rates(received_fps=max(0.0, (total - base[1]) / span),
                          processed_fps=max(0.0, (snapshot.processed - base[2]) / span),
                          previewed_fps=max(0.0, (previewed - base[3]) / span))
        if base is None or now - base[0] > 0.2:
            self._rate_base = (now, total, snapshot.processed, previewed)
        state = "closed" if view.state == "closed" else snapshot.state
        header = CountersHeader(
            scan=view.scan, state=state, expected=_counts(snapshot.expected),
            received=_counts(snapshot.received), duplicate=snapshot.duplicate,
            out_of_range=snapshot.out_of_range, rejected=snapshot.rejected,
            missing=_counts(snapshot.missing) if snapshot.missing is not None else None,
            processed=snapshot.processed, previewed=previewed,
            elapsed_s=max(0.0, (view.closed_at or now) - view.opened.at), rates=rates,
            dropped=Dropped(preview_rows=snapshot.dropped_rows, slices=snapshot.dropped_slices,
                            previews=self._dropped_previews, messages=self._dropped_messages),
            center=view.center, center_method=view.center_method, complete=snapshot.complete,
        )
        if view.closed is not None:
            report = view.closed.report
            header = header.model_copy(update={
                "rejected": report.total_rejected_frames, "duplicate": report.duplicate,
                "out_of_range": report.out_of_range,
                "missing": Counts.model_validate(report.missing),
                "received": Counts.model_validate(report.received),
                "complete": report.complete,
                # The reconstruction's CoR (the preview's stays in the preview messages).
                "center": view.closed.center if view.closed.center is not None
                else view.center,
                "center_method": view.closed.center_method or view.center_method,
            })
        self._last_counters = header
        self._publish(header)

    # --- control -----------------------------------------------------------------------------

    def _serve_control(self) -> None:
        control = self._control
        assert control is not None
        for _ in range(16):
            try:
                parts = control.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                reply = self._handle_request(parts)
            except ProtocolError as error:
                reply = [_error(error.reason, str(error))]
                if error.reason == "unauthorised":
                    self._refused_requests += 1
                    self._log(f"feed: control request refused ({error})")
            except Exception as error:  # answered, logged, counted
                self._failed_requests += 1
                reason = f"{type(error).__name__}: {error}"[:300]
                self._log(f"feed: control request failed ({reason})")
                reply = [_error("internal", f"request failed in the feed: {reason}")]
            control.send_multipart(reply, copy=False)

    def _handle_request(self, parts: list[Any]) -> list[Any]:
        if len(parts) != 1:
            raise ProtocolError("wrong_part_count",
                                f"request: expected 1 part (a msgpack map), got {len(parts)}")
        request = decode_request(as_bytes_view(parts[0]))
        token = self.settings.token
        # Bytes, not str: compare_digest refuses str with non-ASCII characters (TypeError).
        if token is not None and not (
            request.token is not None
            and hmac.compare_digest(request.token.encode("utf-8", "surrogatepass"),
                                    token.encode("utf-8", "surrogatepass"))
        ):
            raise ProtocolError("unauthorised",
                                "request.token: expected the feed's token, got "
                                + ("none" if request.token is None else "a wrong one"))
        if isinstance(request, CorSweepRequest):
            return [self._start_sweep(request)]
        if isinstance(request, SetCenterRequest):
            return [self._set_center(request)]
        if isinstance(request, SliceRequest):
            return self._slice_reply(request)
        if isinstance(request, CutsRequest):
            view = self._view
            if view is None or not view.volume:
                raise ProtocolError("no_slices", "cuts: no final slice yet")
            header, arrays = self._cuts(view)
            return encode(header.model_copy(update={"t": self._clock()}), arrays)
        assert isinstance(request, StateRequest)
        return [self._state_reply()]

    def _start_sweep(self, request: CorSweepRequest) -> bytes:
        view = self._view
        if view is None or not view.chunks:
            raise ProtocolError("no_data", "cor_sweep: no preview rows yet (no scan, or no "
                                "projection corrected so far)")
        rows = view.opened.rows
        row = rows[len(rows) // 2] if request.row is None else request.row
        if row not in rows:
            raise ProtocolError("invalid_field",
                                f"cor_sweep.row: expected one of the preview rows {list(rows)}, "
                                f"got {row}")
        cols = view.opened.start.cols
        centers = request.centers(view.center if request.center is None else request.center)
        if min(centers) < 0 or max(centers) > cols - 1:
            raise ProtocolError(
                "invalid_field",
                f"cor_sweep: centres {centers[0]:g}..{centers[-1]:g} must lie on the detector, "
                f"0..{cols - 1}",
            )
        position = rows.index(row)
        filtered = np.concatenate([chunk[1][:, position, :] for chunk in view.chunks])
        angles = np.concatenate([chunk[0] for chunk in view.chunks])
        size = min(view.opened.geometry.size, self.settings.sweep_size)
        stride = max(1, math.ceil(len(angles) * size * size / self.settings.sweep_work))
        self._sweeps += 1  # a sweep still running is replaced: the latest request wins
        self._sweep = _Sweep(self._sweeps, row, centers, np.ascontiguousarray(filtered[::stride]),
                             angles[::stride], size)
        return _ok("cor_sweep", sweep=self._sweeps, row=row, centers=centers,
                   angles_used=len(angles[::stride]))

    def _sweep_step(self) -> None:
        sweep, view = self._sweep, self._view
        if sweep is None or view is None:
            return
        center = sweep.centers[len(sweep.images)]
        sweep.images.append(sweep_image(sweep.filtered, sweep.angles_rad, center,
                                        view.opened.geometry, sweep.size))
        if len(sweep.images) < len(sweep.centers):
            return
        self._sweep = None
        named = [(f"center {c:g}", image) for c, image in zip(sweep.centers, sweep.images,
                                                              strict=True)]
        arrays, specs, dtype = self._images(named)
        self._publish(CorSweepHeader(scan=view.scan, dtype=dtype, images=specs,
                                     sweep=sweep.number, row=sweep.row, centers=sweep.centers,
                                     angles_used=len(sweep.angles_rad),
                                     binning=view.opened.geometry.binning), arrays)

    def _set_center(self, request: SetCenterRequest) -> bytes:
        view = self._view
        with self._center_lock:
            target, scan = self._center_target, self._center_scan
            if view is None:
                raise ProtocolError("no_scan", "set_center: no scan is open")
            if scan is None or view.scan != scan:
                raise ProtocolError("too_late", f"set_center: scan {view.scan!r} has closed")
            if request.scan is not None and request.scan != scan:
                raise ProtocolError("invalid_field",
                                    f"set_center.scan: the open scan is {scan!r}, got "
                                    f"{request.scan!r}")
            cols = view.opened.start.cols
            if not 0 <= request.value <= cols - 1:
                raise ProtocolError("invalid_field",
                                    f"set_center.value: expected a column in 0..{cols - 1}, "
                                    f"got {request.value:g}")
            if target is None:
                raise ProtocolError("too_late", f"set_center: scan {scan!r} is already being "
                                    "reconstructed (or takes no CoR from the feed)")
            target.center_override = float(request.value)
        self._recenter(view, float(request.value), "user (viewer)")
        self._publish_counters()
        return _ok("set_center", scan=scan, center=float(request.value))

    def _slice_reply(self, request: SliceRequest) -> list[Any]:
        view = self._view
        if view is None or not view.volume:
            raise ProtocolError("no_slices", "slice: no final slice yet")
        indices = sorted(view.volume)
        index = min(indices, key=lambda i: (abs(i - request.index), i))
        arrays, specs, dtype = self._images([(f"slice {index}", view.volume[index])])
        header = SliceHeader(v=FEED_VERSION, seq=0, t=self._clock(), scan=view.scan, dtype=dtype,
                             images=specs, index=index, band=(indices[0], indices[-1] + 1),
                             binning=view.slice_binning, center=view.center,
                             center_method=view.center_method)
        return encode(header, arrays)

    def _state_reply(self) -> bytes:
        view = self._view
        if view is None:
            return _ok("state", scan=None)
        start, geometry = view.opened.start, view.opened.geometry
        indices = sorted(view.volume)
        counters = self._last_counters
        return _ok(
            "state", scan=view.scan, state=view.state, rows=start.rows, cols=start.cols,
            projections=start.projections, preview_rows=list(view.opened.rows),
            binning=geometry.binning, center=view.center, center_method=view.center_method,
            slices=len(indices), first_slice=indices[0] if indices else None,
            last_slice=indices[-1] if indices else None, slice_stride=view.slice_stride,
            counters=counters.model_dump(mode="python", exclude_none=True)
            if counters is not None else None,
        )


def _stage_fields(stage: PreviewStage | None, label: str, missing: str) -> dict[str, Any]:
    """A header's fields that say how far the previewed frames are corrected (none when
    the runner did not say)."""
    if stage is None:
        return {}
    return {label: stage.label, missing: list(stage.not_applied)}


def _item_bytes(item: _Item) -> int:
    """What an inbox item counts against the feed's memory budget."""
    if isinstance(item, _Rows):
        return item.data.nbytes
    if isinstance(item, BinnedSlices):
        return sum(image.nbytes for _, image in item.kept) + item.shown[1].nbytes
    return 0


def _triple(counts: dict[str, int]) -> tuple[int, int, int]:
    return counts["projections"], counts["flats"], counts["darks"]


def _counts(triple: tuple[int, int, int]) -> Counts:
    return Counts(projections=triple[0], flats=triple[1], darks=triple[2])


def _ok(request: str, **fields: Any) -> bytes:
    return msgpack.packb({"v": FEED_VERSION, "type": "ok", "request": request, **fields})


def _error(reason: str, message: str) -> bytes:
    return msgpack.packb({"v": FEED_VERSION, "type": "error", "reason": reason,
                          "message": message[:1024]})
