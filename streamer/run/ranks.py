"""The one runner: one scan at a time on the ranks of a link, for ``run`` and ``recon``.

The link is the only difference between one rank (``MemoryNetwork(1).link(0)``) and R
(:class:`~streamer.exchange.links.RankLink` under ``mpiexec``, or ``MemoryNetwork(R)``'s
links as threads in the tests); ADR 0005 records the design.

Every rank pulls a share of the frames (see ADR 0002) and corrects its projections as
they arrive; on R ranks the reslice (:class:`~streamer.exchange.reslice.BandExchange`)
sends each rank the rows of its band as blocks are corrected, so when the scan closes rank
``r`` holds the sinograms of detector rows ``[a_r, b_r)``; on one rank the processor keeps
the band itself. Each rank reconstructs its band (streamed into
:class:`~stages.recon.streaming.StreamingFbp` accumulators as pieces land, when the pipeline
allows: :mod:`streamer.run.streaming`) and writes it through the sink registry: on one
rank the volume itself, on R ranks as :mod:`streamer.sinks.ranked` says per format (HDF5
parts and a master file, one shared OME-Zarr store (ADR 0007), one shared TIFF stack).

Per scan, in the order every rank sees (rank 0 orders opens and closes):

1. **References.** Darks and flats reach arbitrary ranks; each rank forwards the ones it
   received to every other rank, so every rank can normalise its projections. At close,
   each rank announces how many it forwarded and waits (bounded) until it has the
   announced ones from everyone: no rank normalises with fewer references than arrived.
2. **Reslice.** Corrected projection blocks are scattered as they come; at close each
   rank finishes sending and waits for its band.
3. **Centre.** When the pipeline leaves the CoR to be found, the rank that owns the row
   the finder looks at (the middle row, or the finder's ``ind``) finds it once and sends
   it to everyone — the same value on every rank, the same row as on one rank. With
   ``estimate_center`` (``run``) a streamed scan's CoR is decided earlier, by the same
   rank (the opposite pair, or carried from the sample's previous scan), and this step
   checks it and may redo the band (ADR 0013, :mod:`streamer.run.center_streaming`).
4. **Band.** The sinogram section runs on the band, block by block, into this rank's writer.
5. **Output.** Each rank tells rank 0 what it wrote; rank 0 finishes the output (closes
   the volume with the report inside, or writes the master / the stack's sidecar) when
   the merged report is in. With HTTomo's image tail (``save_to_images``), before that
   the ranks exchange ``calculate_stats`` of what they wrote and each writes the images
   of its own slices (one rank: rank 0 from the closed volume; ADR 0020).

With ``background=True`` (the ``run`` service) steps 2–5 of a closed scan run in a worker
thread while the ingest thread goes on reading its socket; the next scan is admitted at
its ``start`` and begun on the links when the worker is done (see the field's comment).

All waits poll (MPICH busy-polls a rank blocked in a receive) and are bounded by
``exchange_timeout_s``; a rank that does not answer is named in the error, and the
scan's files are then marked incomplete rather than the job hanging.

``stop`` (SIGINT/SIGTERM) ends the band reconstruction between blocks: the output keeps
the slices written, marked incomplete, and the rank tells the others (``TAG_STOP``),
which stop at their next block and set their own ``stop``, so every rank ends the job;
rank 0's output says incomplete and why.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, SupportsFloat

import msgpack
import numpy as np
import numpy.typing as npt

from stages.prep.repair import RepairCounts
from stages.recon.center_policy import CorEstimate
from stages.recon.centering import center_from_pair
from stages.spec import Pattern
from streamer.errors import (
    ConfigError,
    ExchangeError,
    ScanFailedError,
    SinkError,
    StageError,
    StreamerError,
)
from streamer.exchange.links import Received
from streamer.exchange.reslice import Band, BandExchange, ExchangeStats, row_bands
from streamer.exchange.transpose import TransposeResult
from streamer.ingest.cluster import Link, MergedReport
from streamer.ingest.state import FramesAccepted, ScanClosed, ScanClosing, ScanOpened
from streamer.ingest.store import FrameStore, HeldFrame
from streamer.pipeline.config import PipelineStep
from streamer.pipeline.device_bands import (
    band_outputs,
    device_document,
    device_line,
    transfer_figures,
)
from streamer.pipeline.executor import (
    ProcessedBlock,
    ScanProcessor,
    apply_steps,
    bind_result,
    section_angles,
)
from streamer.pipeline.finder_tap import TappedRows, finder_row, run_finder_on_rows
from streamer.pipeline.frame_shape import corrected_frame
from streamer.pipeline.halo import (
    WITHOUT_NEIGHBOURS,
    Window,
    keep_block,
    keep_saved,
    local_window,
    ranks_halo,
    section_halo,
    without_neighbours_line,
)
from streamer.pipeline.images import (
    ImageTail,
    PartialStats,
    band_slices,
    image_folder,
    image_tail,
    image_window,
    make_image_folder,
    write_image,
)
from streamer.pipeline.intermediate import IntermediateResults, result_paths
from streamer.pipeline.iterations import BandIteration
from streamer.pipeline.plan import default_budget_bytes, plan_scan, rank_band_rows
from streamer.pipeline.sections import (
    beyond_one_band,
    refuse_on_ranks,
    refuse_row_change,
    refuse_save_result,
    sections_of,
    split_sections,
)
from streamer.run.center_final import CheckInThread, final_estimate_near, search_label
from streamer.run.center_streaming import (
    DEFAULT_TOLERANCE_PX,
    CenterMemory,
    CenterSource,
    Outcome,
    StreamingCenter,
    center_note,
    sample_key,
    streaming_center_method,
)
from streamer.run.close import CenterAgreed, CloseHandshake, Ready, Step, TimedOut, Waiting
from streamer.run.finder_rows import (
    FinderRows,
    finder_rows_message,
    join_finder_rows,
    parse_finder_rows,
    rows_tapped,
)
from streamer.run.from_file import (
    ReconSettings,
    auto_center,
    center_in_use,
    center_label,
    center_source,
    pipeline_for,
)
from streamer.run.image_output import images_written, no_images, with_images
from streamer.run.latency import LatencyRecorder
from streamer.run.later_sections import SectionTools, filled_later_sections, run_later_sections
from streamer.run.observer import RankObserver
from streamer.run.output import ScanOutput, check_servable, keep_newest
from streamer.run.pair_rows import (
    PairRows,
    assemble_pair,
    pair_rows_message,
    parse_pair_rows,
    rows_of_pair,
)
from streamer.run.rank_iterations import ScanIterations
from streamer.run.streaming import EARLY_FRACTION, StreamingSection, plan_streaming
from streamer.sinks.disk import os_reason
from streamer.sinks.ranked import ranked_output
from streamer.sinks.registry import (
    DEFAULT_FORMAT,
    VolumeSink,
    free_output_path,
    open_sink,
    output_stem,
)
from streamer.sources.scan import FrameReader
from streamer.sources.sender import start_header
from streamer.wire.protocol import IMAGE_KEY_DARK, IMAGE_KEY_FLAT, IMAGE_KEY_PROJECTION, StartHeader

TAG_REFERENCE: Final = 301
TAG_REFERENCES_DONE: Final = 302
TAG_CENTER: Final = 303
TAG_PART_DONE: Final = 304
TAG_PATH: Final = 305
TAG_STOP: Final = 306
TAG_STREAM_CENTER: Final = 307
TAG_ITERATION: Final = 308  # an iteration of an iterative stage, to rank 0
TAG_STATS: Final = 309  # calculate_stats of a rank's written slices (the image tail)
TAG_CENTER_PAIR: Final = 370  # a rank's rows of the 0°/180° pair, to the CoR owner
TAG_FINDER_ROWS: Final = 390  # a rank's CoR-finder rows tapped where it stands, to the owner
#: CoR sources that are estimates: the final estimate at close checks them near their value.
_ESTIMATED: Final = (CenterSource.EARLY, CenterSource.PAIR, CenterSource.CARRIED)
#: Rank 0: scans whose iterations are kept until their output (older ones are dropped).
_MAX_ITERATION_LOGS: Final = 8
#: The CoR method of a value set from the viewer (as on one rank).
VIEWER_METHOD: Final = "user (viewer)"
#: How long a rank waits for its peers at each step of a scan's close.
DEFAULT_EXCHANGE_TIMEOUT_S: Final = 120.0
_POLL_PAUSE_S: Final = 0.0005
#: How long the CoR owner waits on the check's thread between serving its links.
_CHECK_POLL_S: Final = 0.005
#: A grace for ``RankedReconstruction.interrupt_after_s`` (``run --interrupt-after``, off
#: by default: on, it breaks the guarantee that a faster source gets every scan complete;
#: ADR 0024).
DEFAULT_INTERRUPT_AFTER_S: Final = 2.0


@dataclass(frozen=True)
class PartWritten:
    """What one rank wrote for one scan (sent to rank 0 for the master)."""

    rank: int
    path: str | None
    rows: tuple[int, int]
    slices: int
    complete: bool
    error: str | None
    repaired: dict[str, int] = field(default_factory=dict)  # this rank's repair counts
    pixels: int = 0  # projection pixel values this rank corrected
    observed: dict[str, int] = field(default_factory=dict)  # data_checker's observations
    images: int = 0  # save_to_images: the images this rank wrote of its band
    #: Projections this rank corrected before all their halo neighbours had arrived.
    without_neighbours: int = 0
    #: This rank's host↔device copies (:func:`~streamer.pipeline.device_bands.transfer_figures`).
    device: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Admitted:
    """A scan that passed the checks at its ``start`` (its figures), not yet begun on the
    links (the worker may still be using them for the previous scan)."""

    serial: int
    start: StartHeader
    block_frames: int
    block_sinograms: int
    memory_left: int
    center_owner: int | None
    #: ``start`` with the corrected frame's rows and columns (R ranks: a first-section
    #: step may bin or crop them; ADR 0029): what the exchange, the bands and the writers
    #: are cut from. ``start`` itself on one rank (the processor shapes its band).
    shaped: StartHeader
    #: The scan's ``save_result`` writer (``recon``'s, or ``run``'s per scan), or None.
    results: IntermediateResults | None = None


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


@dataclass
class _HeldVolume:
    """One rank: the volume itself, written and left open until the scan's report is in
    (it goes inside the volume), then closed by :meth:`RankedReconstruction.write_master`."""

    writer: VolumeSink
    center: float
    complete: bool  # every slice written and every projection and reference in


@dataclass
class _ScanState:
    serial: int
    start: StartHeader
    processor: ScanProcessor
    exchange: BandExchange | None  # None on one rank: the processor keeps the band
    path: Path | None  # the master file; decided by rank 0 (others learn it by message)
    #: The close handshake (references settled, CoR agreed, parts written): no I/O.
    close: CloseHandshake[PartWritten]
    references_here: int = 0  # darks and flats that reached this rank from the source
    center: float | None = None
    center_method: str | None = None
    center_warnings: tuple[str, ...] = ()  # the finder's doubts (the owner of its row)
    center_confidence: float | None = None
    #: The finder's side outputs (``overlap``, ``side`` …), shared with the CoR.
    center_outputs: dict[str, Any] = field(default_factory=dict)
    #: The CoR owner, a pair finder on R ranks: each peer's rows of the 0°/180° pair.
    pair_rows: dict[int, PairRows] = field(default_factory=dict)
    #: The CoR owner, a finder tapped where it stands (finder_tap): each peer's rows.
    finder_rows: dict[int, FinderRows] = field(default_factory=dict)
    failure: str | None = None  # a stage refused this rank's data: no part is written
    prepared: bool = False  # references settled and projections corrected
    close_error: str | None = None  # settling failed (a rank did not answer)
    stopped_by: int | None = None  # the rank whose stop (SIGINT/SIGTERM) ended this scan
    #: The band's streaming reconstruction (fed as pieces land), None: at close.
    streaming: StreamingSection | None = None
    streamed: bool = False  # the band's slices came from the streaming accumulators
    #: ``estimate_center``: the streaming CoR decision (the same events on every rank).
    center_state: StreamingCenter | None = None
    #: Its report as the CoR owner decided it at close (``run``'s report ``center``).
    center_report: dict[str, Any] | None = None
    #: How the final estimate searched (near the estimate used, or the whole range).
    center_search: str | None = None
    #: The early estimate's report, kept when the accumulators are finished before the
    #: CoR check's verdict (ADR 0033).
    early_report: dict[str, Any] | None = None
    #: R ranks, HTTomo's image tail: calculate_stats of this rank's written slices, and
    #: the peers' (rank -> their stats, None: that rank's part failed).
    stats: PartialStats | None = None
    peer_stats: dict[int, PartialStats | None] = field(default_factory=dict)
    #: R ranks: what each later reslice (a transpose) moved, for the scan's transfers.
    later_moved: list[TransposeResult] = field(default_factory=list)
    #: R ranks: the volume's slices when a later projection section changed the rows
    #: (binning, cropping them); None: the scan's rows.
    volume_rows: int | None = None

    @property
    def rows(self) -> int:
        """The volume's slices: every rank's band is cut from them."""
        return self.volume_rows or self.start.rows
    #: The scan's ``save_result`` writer (``recon``'s, or ``run``'s per scan), or None.
    results: IntermediateResults | None = None
    #: R ranks with a halo (ADR 0019): the widened band the exchange delivered (own rows
    #: and their neighbours), after the projection section's tail; None: no halo.
    widened: Band | None = None


@dataclass
class RankedReconstruction:
    """Reconstructs every scan ingest closes, each rank its band of detector rows; use
    ``drain`` and ``on_event`` with a cluster :class:`~streamer.ingest.service.IngestService`
    (one rank too: a cluster of one), or ``open_scan``/``add``/``close_scan``/
    ``write_master`` directly (:func:`recon_on_ranks`).

    Parameters
    ----------
    steps : tuple of PipelineStep
        The pipeline, ending with a reconstruction stage.
    pipeline_text : str
        Its YAML, stored in every output.
    out_dir : Path
        One output per scan here (``<scan>.h5``, a ``<scan>/`` TIFF stack …), unless
        ``output`` fixes it.
    control : Link
        Small messages between ranks (references, CoR, parts written): a link of its own
        (``RankLink.duplicate()``), separate from ingest's and the reslice's.
    band_link :
        The reslice's own link (``RankLink.duplicate()``).
    """

    steps: tuple[PipelineStep, ...]
    pipeline_text: str
    out_dir: Path
    control: Link
    band_link: Any
    block_frames: int | None = None
    block_sinograms: int | None = None
    memory_bytes: int | None = None
    device_bytes: int | None = None  # --device gpu: usable device memory for the plan
    exchange_timeout_s: float = DEFAULT_EXCHANGE_TIMEOUT_S
    output: Path | None = None  # one fixed master path (``recon``); None: per scan
    first_row: int = 0  # detector row of the scan's row 0 (after a ``--rows`` crop)
    overwrite: bool = False
    #: A name in :data:`streamer.sinks.registry.SINKS`. One rank: the format's writer
    #: writes the volume itself; R ranks: :data:`streamer.sinks.ranked.RANKED` says how.
    output_format: str = DEFAULT_FORMAT
    #: How a fixed CoR came (``streamer.run.from_file.center_source``): "given" or "pipeline".
    center_source: str = "pipeline"
    on_output: Callable[[ScanOutput], None] | None = None
    log: Callable[[str], None] | None = None
    #: Set to stop a reconstruction between blocks (SIGINT/SIGTERM); a peer's stop sets it.
    stop: threading.Event | None = None
    #: Called after each block of slices this rank writes: (scan, slices written, band rows).
    on_block: Callable[[str, int, int], None] | None = None
    #: Reconstruct each band while the scan arrives when the pipeline streams and its CoR
    #: is fixed (:func:`streamer.run.streaming.plan_streaming`); False: always at close.
    stream: bool = True
    #: ``run``: a CoR left to be found streams too (:mod:`streamer.run.center_streaming`):
    #: carried from the previous scan of the same sample, else from the opposite pair as
    #: soon as it has arrived; checked at close against the final estimate, the volume
    #: redone beyond ``center_tolerance`` px. False (``recon``): such a CoR is found at close.
    estimate_center: bool = False
    center_tolerance: float = DEFAULT_TOLERANCE_PX
    #: A scan whose pair comes last (180°) with nothing carried: the early estimate from
    #: the projections in is tried once this fraction of them are (None: at close).
    early_center_fraction: float | None = EARLY_FRACTION
    #: The last CoR per sample (the same on every rank: every rank sees the same closes).
    center_memory: CenterMemory = field(default_factory=CenterMemory)
    #: A new scan's ``start`` interrupts the reconstruction of the previous one (between
    #: blocks of its band) once it has run this long after that start came (seconds;
    #: None: never, the default and ``run``'s, ADR 0024). A streaming finish (well under
    #: a second) completes; an at-close reconstruction of minutes gives way to the new scan
    #: within seconds, its output keeping the slices written, marked incomplete, and
    #: saying why; a band fully written is never cut. Every rank
    #: sees the start, so each stops by itself (no stop is sent: the job goes on).
    interrupt_after_s: float | None = None
    #: Reconstruct in a worker thread while ingest keeps reading its socket (the service):
    #: one scan reconstructed at a time, the next scan's frames wait in the ingest store,
    #: its start is taken up on the links once the worker is done. Under MPI the links
    #: are then used from two threads (ingest's link in one, ``control`` and ``band_link``
    #: handed between them), which needs ``MPI_THREAD_MULTIPLE``
    #: (:meth:`streamer.exchange.links.RankLink.threads_multiple`); False: in the caller's
    #: thread, done when ``on_event`` returns (``recon``, tests).
    background: bool = False
    #: Monotonic seconds for the latency figures (injected in tests).
    clock: Callable[[], float] = time.monotonic
    #: Called in the CoR check's thread before it searches, when the check runs beside
    #: the write (tests: hold it until the write has begun, to show the two overlap).
    center_check_hook: Callable[[], None] | None = None
    #: Told each iteration of an iterative stage, per block of this rank's band.
    on_iteration: Callable[[BandIteration], None] | None = None
    #: ``recon``: the writer of the steps marked ``save_result`` (HTTomo's intermediate
    #: files; on R ranks this rank's parts) for its one scan; without it such a pipeline
    #: is refused.
    results: IntermediateResults | None = None
    #: ``run``: write the steps marked ``save_result`` for every scan, as ``recon`` does
    #: (one file per step; on R ranks a part per rank and rank 0's file over them), named
    #: per scan: ``{scan}-{task}-{package}-{method}.h5`` in ``out_dir`` (``{scan}-2-…``
    #: when an earlier scan's file has that name). ADR 0029.
    save_results: bool = False
    #: Told each step of every scan (the live feed's relay: :mod:`streamer.live.relay`),
    #: from the thread that holds the links (the worker's steps from the worker). With
    #: an observer, the latency and transfers figures are the observer's.
    observer: RankObserver | None = None
    outputs: list[ScanOutput] = field(default_factory=list)
    #: Parts this rank wrote incomplete or could not write (stopped, failed): every rank's
    #: exit status says so, not only rank 0's (a launcher may report any rank's status).
    incomplete_parts: int = 0
    _scan: _ScanState | None = None
    _serial: int = 0
    _inbox: list[Received] = field(default_factory=list)
    #: Rank 0: the handshakes of scans whose parts are still awaited (serial -> close).
    _closing: dict[int, CloseHandshake[PartWritten]] = field(default_factory=dict)
    _closed: dict[str, tuple[int, Path, int]] = field(default_factory=dict)  # serial, path, rows
    _refused: dict[str, str] = field(default_factory=dict)  # scan -> why (refused at start)
    _whole_scan: bool = False  # set in __post_init__
    #: HTTomo's ``calculate_stats → rescale_to_int → save_to_images`` (set in __post_init__).
    _tail: ImageTail | None = None
    _later: bool = False  # R ranks, sections past the first band's (set in __post_init__)
    _held: dict[int, _HeldVolume] = field(default_factory=dict)  # one rank: serial -> volume
    _worker: threading.Thread | None = None
    _jobs: queue.SimpleQueue[Callable[[], None]] = field(default_factory=queue.SimpleQueue)
    _jobs_left: int = 0
    _jobs_lock: threading.Lock = field(default_factory=threading.Lock)
    _idle: threading.Event = field(default_factory=_set_event)
    _deferred: _Admitted | None = None  # admitted while the worker was busy
    #: The latest scan admitted while the worker was busy: (serial, scan, when, by
    #: ``clock``), for ``interrupt_after_s``.
    _started_while_busy: tuple[int, str, float] | None = None
    #: Rank 0: how the CoR of each closed scan was found (serial -> method, warnings,
    #: confidence), for its output.
    _center_found: dict[int, tuple[str, tuple[str, ...], float | None]] = field(
        default_factory=dict)
    #: Rank 0: the streaming CoR report of each closed scan (serial -> report ``center``).
    _center_streaming: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: Rank 0, ``save_results``: each open or closing scan's ``save_result`` writer
    #: (serial -> it), its files closed (R ranks: written over the parts) with the volume.
    _scan_results: dict[int, IntermediateResults] = field(default_factory=dict)
    #: ``save_results``: the name prefixes given to this run's scans (never given twice,
    #: so every rank names a scan alike whatever the disk shows at its start).
    _result_prefixes: set[str] = field(default_factory=set)
    #: Rank 0: every rank's iterations of each open or closing scan (serial -> them).
    _iteration_logs: dict[int, ScanIterations] = field(default_factory=dict)
    #: Rank 0: each open or closing scan's latencies (scan -> recorder), until its output.
    #: On R ranks the frames are rank 0's share (the last frame is rank 0's last).
    _latency: dict[str, LatencyRecorder] = field(default_factory=dict)
    #: The first error of the latest scan on this rank, as raised (drivers that run one
    #: scan re-raise it: :func:`streamer.run.from_file.run_recon`).
    last_error: StreamerError | None = None

    def __post_init__(self) -> None:
        if self.control.size > 1:
            ranked_output(self.output_format)  # a format R ranks cannot share: refused now
            refuse_on_ranks(self.steps)  # an image axis across the bands, a halo
        if self.results is None and not self.save_results:
            # intermediate files: `recon` (results) and `run` (save_results) write them
            refuse_save_result(self.steps, "RankedReconstruction without save_results")
        refuse_row_change(self.steps, ranks=self.control.size)
        #: One rank: the pipeline needs the processor's own later sections (several
        #: reslices, a geometry change, a side output, ``save_result``), which the band
        #: path below does not run; the processor then runs them at close
        #: (:meth:`_write_whole_scan`).
        self._whole_scan = self.control.size == 1 and not _runs_on_bands(self.steps)
        #: R ranks: the same pipelines run their later sections on the bands, resliced
        #: again between them (:mod:`streamer.run.later_sections`).
        self._later = self.control.size > 1 and beyond_one_band(self.steps, on_ranks=True)
        #: R ranks: rows of overlap between the bands, for steps whose kernels reach
        #: across the block axis after the reslice (ADR 0019's addendum); 0: none.
        self._halo = 0
        if self.control.size > 1:
            found = sections_of(self.steps)
            self._halo = ranks_halo((found[0].steps, found[1].steps if len(found) > 1
                                     else ()))
        self._tail = image_tail(self.steps)
        #: Projection blocks need halo neighbours: the report counts those without.
        self._frames_halo = section_halo(sections_of(self.steps)[0].steps) > 0

    # --- ingest hooks ----------------------------------------------------------------

    def drain(self, store: FrameStore) -> None:
        if self.busy:
            return  # the worker reconstructs (and holds the links): frames wait in the store
        self._catch_up()
        self.add(store.take())
        if self.observer is not None:
            self.observer.serve()

    def on_event(self, event: Any) -> None:
        if isinstance(event, ScanOpened):
            if self.control.rank == 0 and self.observer is None:
                self._latency[event.start.scan] = LatencyRecorder(clock=self.clock)
            self.open_scan(event.start)
        elif isinstance(event, FramesAccepted):
            if self.observer is not None and self._scan is not None:
                self.observer.frames_accepted(event)
            latency = self._latency.get(event.start.scan)
            if latency is not None:
                first = event.message.header.first
                latency.frames_received(first + int(i) for i in np.flatnonzero(event.accepted))
        elif isinstance(event, ScanClosing):
            self.wait()  # one scan reconstructed at a time; the links are this thread's
            self._catch_up()
            scan = self._scan
            if scan is None:
                return
            if self.observer is not None:
                self.observer.scan_closing(scan.serial)
            self._prepare_close(scan)
            if scan.failure is not None:  # in the report too, not only in the output
                raise ScanFailedError(scan.failure)
        elif isinstance(event, ScanClosed):
            if self.background:
                self.wait()  # a scan failed by ingest gets no ScanClosing: wait here
                self._catch_up()
                scan, self._scan = self._scan, None
                if scan is not None:
                    self._submit(lambda: self._close(scan))
            else:
                self.close_scan()
        elif isinstance(event, MergedReport) and self.control.rank == 0:
            report = event.report
            if self.background:
                self._submit(lambda: self._report_merged(report))
            else:
                self._report_merged(report)

    def _report_merged(self, report: Any) -> None:
        """Rank 0: the scan's accounting is merged: its output (or why there is none)."""
        closed = self._closed.get(report.scan)
        if self.observer is not None and closed is not None:
            self.observer.report_merged(closed[0], report)
        refused = self._refused.pop(report.scan, None)
        if refused is not None:
            self._latency.pop(report.scan, None)
            self._publish(ScanOutput(report.scan, None, 0, None, False, refused))
            return
        self.write_master(report.scan, complete=report.complete, document=report.as_dict())

    def _publish(self, output: ScanOutput) -> None:
        keep_newest(self.outputs, output)
        if self.on_output is not None:
            self.on_output(output)

    # --- the worker (``background``) ---------------------------------------------------

    @property
    def busy(self) -> bool:
        """The worker still has a scan to close or a master to write."""
        return not self._idle.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for the worker's jobs, if any; True when none is left."""
        return self._idle.wait(timeout_s)

    def _submit(self, job: Callable[[], None]) -> None:
        with self._jobs_lock:
            self._jobs_left += 1
            self._idle.clear()
        if self._worker is None:
            # A daemon: idle it holds nothing; the drivers wait() before they exit.
            self._worker = threading.Thread(target=self._work, name="reconstruction",
                                            daemon=True)
            self._worker.start()
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception as error:  # a bug must not kill the service silently
                if self.log is not None:
                    self.log(f"rank {self.control.rank}: internal error while "
                             f"reconstructing: {error!r}")
            finally:
                with self._jobs_lock:
                    self._jobs_left -= 1
                    if self._jobs_left == 0:
                        self._idle.set()

    def _catch_up(self) -> None:
        """Begin, on the links, the scan admitted while the worker was busy (the ingest
        thread, once the worker is idle)."""
        admitted, self._deferred = self._deferred, None
        if admitted is not None:
            self._begin(admitted)

    # --- the same, driven directly (``recon`` on several ranks) --------------------------

    def add(self, frames: list[HeldFrame]) -> None:
        """Frames of the open scan that reached this rank (any order)."""
        scan = self._scan
        if scan is None:
            return
        self._forward_references(scan, frames)
        if scan.failure is None:
            try:
                scan.processor.add(frames)
            except StreamerError as error:
                # Bad data (a closed shutter, all-zero frames…): this scan fails; the rank
                # still takes its part in the close, so no peer waits for it.
                self.fail_scan(error)
                raise ScanFailedError(str(error)) from None
        self._serve(scan)

    def fail_scan(self, error: StreamerError) -> None:
        """The open scan fails on this rank (bad data, a part of a file it cannot read):
        no part is written, but the rank still takes its part in the close, so no peer
        waits for it and rank 0's output says why."""
        scan = self._scan
        if scan is None or scan.failure is not None:
            return
        scan.failure = str(error)
        self.last_error = self.last_error or error
        if self.log is not None:
            self.log(f"scan {scan.start.scan}: rank {self.control.rank}: FAILED: {error}")

    def close_scan(self) -> None:
        """The open scan is over on every rank: reslice, reconstruct, write this rank's
        part and tell rank 0."""
        scan, self._scan = self._scan, None
        if scan is not None:
            self._close(scan)

    # --- per scan ----------------------------------------------------------------------

    def open_scan(self, start: StartHeader) -> None:
        """A scan opened (on every rank, in the same order): refused at once if it cannot
        be served (:class:`~streamer.errors.ScanFailedError`), begun on the links now or,
        while the worker is busy, once it is done."""
        admitted = self._admit(start)
        if self.busy:
            self._deferred = admitted
            self._started_while_busy = (admitted.serial, start.scan, self.clock())
        else:
            self._begin(admitted)

    def _admit(self, start: StartHeader) -> _Admitted:
        """The checks and figures of a scan's ``start`` (no link is used)."""
        self._serial += 1
        self._scan, self._deferred, self.last_error = None, None, None
        ranks = self.control.size
        try:
            # The same figures on every rank, so every rank refuses the same scans.
            check_servable(self.steps, start)
            shaped = start
            if ranks > 1:  # every rank agrees on the corrected frame before the exchange
                rows, cols = corrected_frame(self.steps, start.rows, start.cols)
                if (rows, cols) != (start.rows, start.cols):
                    shaped = start.model_copy(update={"rows": rows, "cols": cols})
            frames, sinograms, plans, memory = plan_scan(
                self.steps, rows=start.rows, cols=start.cols, angles=start.projections,
                references=start.darks + start.flats, dtype=start.wire_dtype,
                budget_bytes=self.memory_bytes or default_budget_bytes(),
                band_rows=rank_band_rows(shaped.rows, ranks, self._halo),
                device_bytes=self.device_bytes, on_ranks=ranks > 1, ranks=ranks,
            )
            owner = None if self._whole_scan else self._center_owner(shaped)
        except StreamerError as error:
            reason = f"refused at its start: {error}"
            if self.control.rank == 0:
                self._refused[start.scan] = reason
                if self.log is not None:
                    self.log(reason)
            raise ScanFailedError(reason) from error
        if self.log is not None and self.control.rank == 0:
            self.log(f"scan {start.scan}: per rank: {memory.describe()}")
            for plan in plans:
                self.log(f"scan {start.scan}: plan: {plan.describe()}")
        return _Admitted(self._serial, start, self.block_frames or frames,
                         self.block_sinograms or sinograms, memory.budget - memory.total,
                         owner, shaped, self.results or self._results_for(start))

    def _begin(self, admitted: _Admitted) -> None:
        """Set the admitted scan up on the links: its reslice, its processor, rank 0's
        output name (told to every rank), the messages that came early."""
        start, serial, ranks = admitted.start, admitted.serial, self.control.size
        # the corrected frame's shape (R ranks: a first-section binning or crop); the
        # processor alone takes the frames as they come
        shaped = admitted.shaped
        streaming = None if self._whole_scan or self._later else self._plan_streaming(
            shaped, admitted.block_sinograms, admitted.memory_left)
        if streaming is not None and self._halo:
            # the pieces landing are the widened band, and the steps before the
            # reconstructor reach across the bands: the band is reconstructed at close
            streaming = None
            if self.log is not None and self.control.rank == 0:
                self.log(f"scan {start.scan}: reconstruction at close: steps reach "
                         f"{self._halo} rows across the bands (ADR 0019)")
        exchange: BandExchange | None = None
        observer = self.observer
        iterations = ScanIterations(
            serial, self.control.rank, ranks, listener=self.on_iteration,
            send_to_root=lambda payload: self.control.send(0, TAG_ITERATION, payload))
        if self.control.rank == 0:
            self._iteration_logs[serial] = iterations
            while len(self._iteration_logs) > _MAX_ITERATION_LOGS:
                del self._iteration_logs[next(iter(self._iteration_logs))]
        if ranks == 1:
            # One rank: the processor keeps the band itself (shaped by the first corrected
            # block: a projection stage may crop or bin) and feeds the streaming section.
            processor = ScanProcessor(
                self.steps, start, block_frames=admitted.block_frames,
                block_sinograms=admitted.block_sinograms, keep_sinogram_section=True,
                on_iteration=iterations.own,
                on_projections=observer.projections if observer is not None else None)
            processor.streaming = streaming
            if admitted.results is not None:
                processor.on_result = admitted.results.add
        else:
            # Projections usually follow the darks and flats: with ``first_index`` a piece
            # lands straight in its sorted column (a wrong guess only costs a final sort).
            exchange = BandExchange(
                self.band_link, scan_serial=serial, rows=shaped.rows, cols=shaped.cols,
                projections=start.projections, frames=start.frames,
                first_index=start.darks + start.flats, halo=self._halo,
                on_landed=None if streaming is None else _feeding(streaming))
            sending = exchange

            def corrected(block: ProcessedBlock) -> None:
                sending.scatter(block.indices, block.angles_deg, block.data)
                if observer is not None:
                    observer.projections(block)

            processor = ScanProcessor(
                self.steps, start, block_frames=admitted.block_frames,
                block_sinograms=admitted.block_sinograms, on_projections=corrected,
                keep_sinogram_section=False, on_iteration=iterations.own, defer_halo=True,
            )
            if admitted.results is not None:  # this rank's frames into its parts
                processor.on_result = admitted.results.add
            if streaming is not None:
                # Taper by this rank's share of the frames; add a round of every rank's
                # pieces at once (one add's fixed passes per round, not per piece).
                processor.taper_share = True
                streaming.coalesce_frames = admitted.block_frames * ranks
        if streaming is not None:  # a device reconstructor's uploads: this rank's copies
            streaming.transfers = processor.transfers
        path = None
        if self.control.rank == 0:
            # Rank 0 alone names the output (a name taken by an earlier scan gets a
            # suffix) and marks it in progress: a job that dies leaves a file that says so.
            path = self._master_path(start.scan)
            try:
                if ranks > 1:  # one rank: the volume's own writer is crash-safe
                    ranked_output(self.output_format).mark_in_progress(
                        path, scan=start.scan, ranks=ranks)
            except StreamerError as error:  # the disk: reported again at close if it stays
                if self.log is not None:
                    self.log(f"scan {start.scan}: {error}")
            self.control.send_to_others(TAG_PATH, msgpack.packb(
                {"serial": serial, "path": str(path)}))
        close: CloseHandshake[PartWritten] = CloseHandshake(
            start.scan, self.control.rank, ranks, self.exchange_timeout_s,
            center_owner=admitted.center_owner)
        if self.control.rank == 0:
            self._closing[serial] = close
        self._scan = scan = _ScanState(serial, shaped, processor, exchange, path, close,
                                       streaming=streaming, results=admitted.results)
        if admitted.results is not None and admitted.results is not self.results \
                and self.control.rank == 0:
            self._scan_results[serial] = admitted.results
        if streaming is not None and self.estimate_center:
            self._open_center(scan, streaming, admitted.center_owner)
        if self.control.rank == 0 and ranks > 1:  # peers' iterations between rank 0's own
            iterations.serve = lambda: self._take_messages(scan)
        if observer is not None:
            observer.scan_opened(serial, start)
        early, self._inbox = self._inbox, []
        for received in early:  # sent by a rank that opened this scan before this one
            self._handle(received, scan)

    def _plan_streaming(self, start: StartHeader, block_sinograms: int,
                        memory_left: int) -> StreamingSection | None:
        """This rank's streaming reconstruction of its band, or None (at close: the
        reason is logged). Decided per rank from its band's height; a rank that does not
        stream reconstructs its band at close, to the same volume."""
        first, last = row_bands(start.rows, self.control.size)[self.control.rank]
        if not self.stream or last == first:
            return None
        key = sample_key(start) if self.estimate_center else None
        plan = plan_streaming(self.steps, rows=last - first, cols=start.cols,
                              projections=start.projections, block_sinograms=block_sinograms,
                              memory_left=memory_left, estimate_center=self.estimate_center,
                              center_known=key is not None
                              and self.center_memory.recall(key) is not None,
                              scan_range_deg=start.geometry.scan_range_deg,
                              early_fraction=self.early_center_fraction)
        if self.log is not None and self.control.rank == 0:
            self.log(f"scan {start.scan}: {plan.reason}")
        if plan.section is not None:
            plan.section.log = self.log
        return plan.section

    def _close(self, scan: _ScanState) -> None:
        start = scan.start
        if self.observer is not None:  # (a scan failed on rank 0 saw no ScanClosing)
            self.observer.scan_closing(scan.serial)
        if self.control.rank == 0:
            assert scan.path is not None
            self._closed[start.scan] = (scan.serial, scan.path, start.rows)
        try:
            self._wait(scan, Step.PATH)
            assert scan.path is not None
            path = scan.path
            self._prepare_close(scan)
            if scan.close_error is not None:
                raise StreamerError(scan.close_error)
            viewer = None
            if self.observer is not None:  # a CoR set from the viewer: the same everywhere
                viewer = self.observer.viewer_center(scan.serial,
                                                     serve=lambda: self._serve(scan))
            if self._whole_scan:
                part = self._write_whole_scan(scan, path, viewer)
            else:
                part = self._close_band(scan, path, viewer)
            latency = self._latency.get(start.scan) if self.control.rank == 0 else None
            if latency is not None:
                latency.streaming = scan.streamed
        except StreamerError as error:
            self.last_error = self.last_error or error
            rows = row_bands(scan.rows, self.control.size)[self.control.rank]
            part = PartWritten(self.control.rank, None, rows, 0, False, str(error))
            if self.log is not None:
                self.log(f"scan {start.scan}: rank {self.control.rank}: {error}")
        if self._tail is not None and self.control.size > 1:
            part = self._band_images(scan, part, self._tail)
        if scan.results is not None and self.control.size > 1:
            # closed before rank 0 hears of the part: it then reads them for its file
            scan.results.close(complete=part.complete)
        self._part_done(scan, part)

    def _band_images(self, scan: _ScanState, part: PartWritten, tail: ImageTail) -> PartWritten:
        """R ranks, HTTomo's image tail: every rank (failed or not, so no peer waits)
        tells the others ``calculate_stats`` of the slices it wrote; with every part
        written, each rank rescales its own slices with the merged statistics and writes
        their images, named by their index in the volume (as on one rank). A part that
        failed leaves the scan without images on every rank, said in the output."""
        written = part.error is None and part.slices == part.rows[1] - part.rows[0]
        mine = (scan.stats or PartialStats()) if written else None
        self.control.send_to_others(TAG_STATS, msgpack.packb(
            {"serial": scan.serial, "stats": None if mine is None else mine.as_dict()}))
        silent = self._await_peers(scan, scan.peer_stats)
        if silent:
            return self._without_images(part, f"save_to_images: rank {silent[0]} sent "
                                        f"no calculate_stats within "
                                        f"{self.exchange_timeout_s:g} s")
        failed = sorted(rank for rank, stats in scan.peer_stats.items() if stats is None)
        if mine is None or failed or part.path is None:
            return part  # a failed part says why (rank 0's output: no images); no rows
        others = [stats for stats in scan.peer_stats.values() if stats is not None]
        window = image_window(mine.merged(others), tail)
        assert scan.path is not None
        try:
            folder = make_image_folder(image_folder(scan.path, self.output_format, tail,
                                                    per_scan=self.output is None))
            count = 0
            for index, image in band_slices(self.output_format, Path(part.path), part.rows,
                                            self.first_row):
                write_image(folder, index, image, window, tail)
                count += 1
        except (StreamerError, OSError, KeyError) as error:
            return self._without_images(part, f"save_to_images: {error}")
        return replace(part, images=count)

    def _await_peers(self, scan: _ScanState, received: Mapping[int, object]) -> list[int]:
        """Serve the links until every other rank has an entry in ``received`` (filled by
        :meth:`_serve` as their messages come); the ranks still silent after
        ``exchange_timeout_s`` (empty: every rank answered)."""
        began = time.monotonic()
        while len(received) < self.control.size - 1:
            self._serve(scan)
            if time.monotonic() - began > self.exchange_timeout_s:
                return sorted(set(range(self.control.size)) - {self.control.rank}
                              - set(received))
            time.sleep(_POLL_PAUSE_S)
        return []

    def _without_images(self, part: PartWritten, why: str) -> PartWritten:
        if self.log is not None:
            self.log(f"rank {self.control.rank}: {why}")
        return replace(part, complete=False, error=part.error or why)

    def _close_band(self, scan: _ScanState, path: Path, viewer: float | None) -> PartWritten:
        """This rank's band: the CoR agreed (or the viewer's), the band reconstructed and
        written (the sinogram section of a pipeline that reslices once)."""
        band = self._band(scan)
        # A streaming CoR is checked at close even when the viewer set one (its difference
        # to the final estimate is reported).
        checked = scan.center_state is not None and scan.close.center_owner is not None
        beside = self._check_beside_write(scan, viewer)
        if viewer is not None and not checked:
            scan.center, scan.center_method = viewer, VIEWER_METHOD
        elif beside:
            return self._write_then_verdict(scan, band, path)
        else:
            try:  # every rank takes part, failed or not, so no peer waits for it
                self._agree_center(scan, band, viewer)
            except StreamerError:
                if scan.failure is None:
                    raise
        last = None
        if self._later:  # every rank, failed or not: each later reslice needs them all
            try:
                last_band, last_steps, scan.volume_rows = self._run_later(scan, band)
                last = (last_band, last_steps)
            except StreamerError:
                if scan.failure is None:
                    raise
            if self.control.rank == 0 and scan.path is not None:  # the master's bands
                self._closed[scan.start.scan] = (scan.serial, scan.path, scan.rows)
        if scan.failure is not None:
            raise StreamerError(scan.failure)
        if self.control.rank == 0:
            self._center_found[scan.serial] = (
                center_label(scan.center_method, self.center_source),
                scan.center_warnings, scan.center_confidence)
        part = self._write_part(scan, band, path, last)
        self._settle_streaming_center(scan)
        return part

    def _run_later(self, scan: _ScanState, band: Band,
                   ) -> tuple[Band, tuple[PipelineStep, ...], int]:
        """R ranks, a pipeline past one sinogram section: every section but the last on
        the bands, resliced between them; the CoR follows the geometry (as on one rank).
        The last section's band and steps, and the rows its bands are cut from."""
        sections, moved = filled_later_sections(
            self.steps, center=scan.center, outputs=scan.center_outputs,
            override=scan.center_method == VIEWER_METHOD, angles=band.angles_deg,
            cols=int(band.sinograms.shape[2]))
        if moved is not None and scan.center is not None:
            scan.center_method = (f"{scan.center_method or 'pipeline'}; axis at "
                                  f"{scan.center:.2f} before the 360° fold, {moved:.2f} after it")
            scan.center = moved
        processor = scan.processor
        tools = SectionTools(processor.block_frames, processor.block_sinograms,
                             processor.transfers, processor.repairs, processor.caches,
                             stopped=lambda: self._stopped(scan),
                             device=processor.queue_device,
                             on_result=None if scan.results is None else scan.results.add)
        scan.later_moved = tools.moved  # filled as the transposes run
        last = run_later_sections(
            self.band_link, None if scan.failure is not None else band, sections,
            rows=scan.start.rows, serial=scan.serial, tools=tools,
            timeout_s=self.exchange_timeout_s, on_idle=lambda: self._serve(scan),
            widened=scan.widened)
        # the last section's rows with their overlap, for its row windows (ADR 0019)
        scan.widened = tools.widened[-1] if tools.widened else None
        return last

    def _write_whole_scan(self, scan: _ScanState, master: Path,
                          viewer: float | None) -> PartWritten:
        """One rank, a pipeline the band path does not run (several reslices, a
        geometry change, a side output, ``save_result``): the processor runs its own
        later sections on the band it kept (finding the CoR as they need it, following
        the axis through a 360° fold) and hands the last one's slices to the volume."""
        if scan.failure is not None:
            raise StreamerError(scan.failure)
        processor = scan.processor
        if viewer is not None:
            processor.center_override = viewer
        processor.resolve_center = auto_center
        rows = processor.band.height if processor.band is not None else scan.start.rows
        writer: VolumeSink | None = None
        center = 0.0
        written = 0
        processor.should_stop = lambda: self._stopped(scan) is not None or (
            written < rows and self._interrupted(scan) is not None)  # all written: not cut

        def write(block: ProcessedBlock) -> None:
            nonlocal writer, center, written, rows
            begin, data = int(block.indices[0]), block.data
            if writer is None:
                rows = processor.volume_rows or rows  # a later section may bin the rows
                later = tuple(s for section in processor.later_sections for s in section.steps)
                center = center_in_use(processor.center, later, scan.start.cols)
                method = center_label(processor.center_method, self.center_source,
                                      warnings=processor.center_warnings)
                self._center_found[scan.serial] = (method, processor.center_warnings,
                                                   processor.center_confidence)
                if self.observer is not None:
                    self.observer.center_settled(scan.serial, center, method)
                geometry: dict[str, Any] = {
                    "slice_shape": (int(data.shape[1]), int(data.shape[2])),
                    "angles_deg": block.angles_deg, "center_of_rotation": center,
                    "center_method": method, "pipeline_yaml": self.pipeline_text,
                    "scan": scan.start.scan}
                _, writer = self._open_band(scan, (0, rows), master, geometry)
            writer.write(begin, data)
            written += int(data.shape[0])
            if self.observer is not None:
                self.observer.slices(scan.serial,
                                     np.arange(begin, begin + int(data.shape[0])), data)
            if self.on_block is not None:
                self.on_block(scan.start.scan, written, rows)

        processor.on_sinograms = write
        stopped: str | None = None
        try:
            processor.finish()  # the projections are corrected: only the later sections
        except StreamerError as error:  # a stage or the disk: what was written stays
            stopped = str(error)
            self.last_error = self.last_error or error
        if stopped is None and processor.stopped:
            stopped = (f"{self._stopped(scan) or self._interrupted(scan)} after {written} "
                       f"of {rows} slices")
        complete = processor.complete and stopped is None and written == rows
        if writer is not None:  # the volume itself: closed with the report (write_master)
            self._held[scan.serial] = _HeldVolume(writer, center, complete)
        if stopped is not None:
            if self.log is not None:
                self.log(f"scan {scan.start.scan}: rank 0: {stopped}")
            return PartWritten(0, str(master) if writer is not None else None, (0, rows),
                               written, False, stopped)
        if writer is None:
            return PartWritten(0, None, (0, rows), 0, False,
                               "no projection arrived: nothing to reconstruct")
        return PartWritten(0, str(master), (0, rows), written, complete, None)

    def _part_done(self, scan: _ScanState, part: PartWritten) -> None:
        """Tell the observer and rank 0 that this rank's part is written (or failed)."""
        if self.observer is not None:
            self.observer.part_done(scan.serial, None if scan.exchange is None
                                    else _every_reslice(scan.exchange.stats,
                                                        scan.later_moved),
                                    streamed=scan.streamed)
        repairs = scan.processor.repairs
        part = replace(part, repaired=dict(repairs.counts), pixels=repairs.pixels,
                       observed=dict(repairs.observed),
                       without_neighbours=scan.processor.corrected_without_neighbours,
                       device=transfer_figures(scan.processor.transfers))
        self.incomplete_parts += not part.complete
        message = msgpack.packb({"serial": scan.serial, "rank": part.rank, "path": part.path,
                                 "rows": list(part.rows), "slices": part.slices,
                                 "complete": part.complete, "error": part.error,
                                 "repaired": part.repaired, "pixels": part.pixels,
                                 "observed": part.observed, "images": part.images,
                                 "without_neighbours": part.without_neighbours,
                                 "device": part.device})
        if self.control.rank == 0:
            scan.close.part_written(0, part)
        else:
            self.control.send(0, TAG_PART_DONE, message)

    def _band(self, scan: _ScanState) -> Band:
        """This rank's sinograms once every rank has sent its share (one rank: the
        processor's own band)."""
        exchange = scan.exchange
        if exchange is not None:
            exchange.finish_sending()
            band = exchange.wait(self.exchange_timeout_s, on_idle=lambda: self._serve(scan))
            if not exchange.halo and not scan.processor.band_steps:
                return band
            return self._own_rows(scan, band, exchange.own_rows)
        kept = scan.processor.band
        if kept is None:
            cols = scan.start.cols
            return Band((0, scan.start.rows), np.zeros(0, np.int64), np.zeros(0),
                        np.zeros((scan.start.rows, 0, cols), np.float32), 0, 0, {}, 0)
        assembled = kept.assemble()
        return Band((0, kept.height), assembled.indices, assembled.angles_deg,
                    assembled.sinograms, kept.received, kept.duplicates, dict(kept.rejected),
                    0)

    def _own_rows(self, scan: _ScanState, band: Band, own: tuple[int, int]) -> Band:
        """R ranks with a halo: the projection section's tail run on the widened band
        (every angle of its rows; a failed scan skips it, its band is not used), kept as
        :attr:`_ScanState.widened` for the sinogram section's row windows; the band of
        this rank's own rows (a view) for everything else."""
        if scan.widened is None:
            if scan.failure is None:
                try:
                    scan.processor.run_band_steps(band.sinograms, band.rows, band.indices,
                                                    own)
                except StreamerError as error:
                    scan.failure = str(error)
                    self.last_error = self.last_error or error
            scan.widened = band
        inner = slice(own[0] - band.rows[0], own[1] - band.rows[0])
        return replace(band, rows=own, sinograms=band.sinograms[inner])

    def _prepare_close(self, scan: _ScanState) -> None:
        """Settle the references and correct the last projections (once): a stage that
        refuses the data sets ``scan.failure``; a peer that does not answer,
        ``scan.close_error``."""
        if scan.prepared:
            return
        scan.prepared = True
        try:
            self._settle_references(scan)
        except StreamerError as error:
            scan.close_error = str(error)
            return
        if scan.failure is None:
            try:
                scan.processor.finish_projections()  # the sinogram section is this one's
            except StreamerError as error:
                scan.failure = str(error)
                self.last_error = self.last_error or error

    # --- references --------------------------------------------------------------------

    def _forward_references(self, scan: _ScanState, frames: list[HeldFrame]) -> None:
        for frame in frames:
            if frame.key not in (IMAGE_KEY_DARK, IMAGE_KEY_FLAT):
                continue
            scan.references_here += 1
            if self.control.size == 1:
                continue
            data = np.ascontiguousarray(frame.data)
            payload = msgpack.packb({
                "serial": scan.serial, "index": frame.index, "key": frame.key,
                "angle": frame.angle_deg, "dtype": data.dtype.str,
                "shape": list(data.shape), "data": data.tobytes(),
            })
            self.control.send_to_others(TAG_REFERENCE, payload)
            scan.close.reference_forwarded()

    def _settle_references(self, scan: _ScanState) -> None:
        """Announce how many references this rank forwarded and wait for every rank's
        announced ones, so all ranks normalise with the same darks and flats."""
        self.control.send_to_others(TAG_REFERENCES_DONE, msgpack.packb(
            {"serial": scan.serial, "count": scan.close.forwarded}))
        self._wait(scan, Step.REFERENCES)

    # --- centre of rotation ------------------------------------------------------------

    def _center_owner(self, start: StartHeader) -> int | None:
        """The rank that finds the CoR: the owner of the finder's row (the middle row, or
        the finder's ``ind``); None when the pipeline's CoR is fixed. A row off the
        detector is refused."""
        later = [s for section in sections_of(self.steps)[1:] for s in section.steps
                 if s.spec.finds_center is None]
        unset = [s for s in later if "center" in type(s.params).model_fields
                 and dict(s.params)["center"] is None]
        # sino_360_to_180's overlap and side: the finder's side outputs, found with the CoR
        linked = [s for s in later for param, link in s.linked if param != "center"
                  and link.split(".", 1)[1] != "glob_stats"]
        if not unset and not linked:
            return None
        finder = self._finder()
        row = finder_row(finder, start.rows)
        bands = row_bands(start.rows, self.control.size)
        owner = next((r for r, (a, b) in enumerate(bands) if a <= row < b), None)
        if owner is None:
            where = f" (pipeline entry at {finder.where})" if finder is not None else ""
            raise StageError(
                f"scan {start.scan!r}: CoR finder row: ind: expected a row below "
                f"{start.rows}, got {row}{where}")
        return owner

    def _finder(self) -> PipelineStep | None:
        found = sections_of(self.steps)
        finders = [s for s in (found[1].steps if len(found) > 1 else ())
                   if s.spec.finds_center is not None]
        return finders[-1] if finders else None

    def _agree_center(self, scan: _ScanState, band: Band, viewer: float | None = None,
                      ) -> None:
        """Find the CoR once, on the rank that owns the finder's row, and share it (with a
        streaming CoR: the final estimate, and the decision it leads to)."""
        owner = scan.close.center_owner
        if owner is None:
            return
        if owner == self.control.rank:
            finder = self._finder()
            # One rank: the band's own height (a projection stage may crop or bin).
            rows = scan.start.rows if self.control.size > 1 else band.sinograms.shape[0]
            row = finder_row(finder, rows)
            center: float | None = None
            method: str | None = None
            error: str | None = None
            # A stop (SIGINT/SIGTERM) skips the search (seconds on a real scan); the
            # others are told (TAG_STOP, then the CoR message with the reason).
            stopped = self._stopped(scan)
            try:
                if stopped is not None:
                    raise StreamerError(f"{stopped} before the CoR search")
                state = scan.center_state
                near = (state.center if finder is None and state is not None
                        and state.source in _ESTIMATED else None)
                pair = (self._gather_pair(scan, band)
                        if self.control.size > 1 and _sees_pair(finder) else None)
                found = _find_center(finder, band, row, near=near, scan=scan, pair=pair,
                                     tapped=self._finder_input(scan))
                center, method = float(found), _found_label(finder, found)
                scan.center_warnings = tuple(getattr(found, "warnings", ()))
                scan.center_confidence = getattr(found, "confidence", None)
                scan.center_outputs = dict(getattr(found, "side_outputs", ()) or ())
            except StreamerError as failure:
                error = str(failure)
                if scan.center_state is None:
                    self.last_error = self.last_error or failure
            self._announce_center(scan, center, method, error, viewer)
        else:
            if self.control.size > 1 and _sees_pair(self._finder()):
                self.control.send(owner, TAG_CENTER_PAIR, msgpack.packb(
                    pair_rows_message(scan.serial, rows_of_pair(band, scan.failure))))
            if scan.processor.finder_tap is not None:
                self.control.send(owner, TAG_FINDER_ROWS, msgpack.packb(finder_rows_message(
                    scan.serial, rows_tapped(scan.processor.tapped, scan.failure))))
            self._wait(scan, Step.CENTER)
        self._adopt_center(scan)

    def _announce_center(self, scan: _ScanState, center: float | None, method: str | None,
                         error: str | None, viewer: float | None) -> None:
        """The CoR owner: the CoR found (with a streaming CoR: the decision it leads to)
        is the scan's, and every other rank is told."""
        if scan.center_state is not None:
            center, method, error = self._decide_center(scan, center, method, error, viewer)
        scan.close.center_agreed(CenterAgreed(center, method, error))
        self.control.send_to_others(TAG_CENTER, msgpack.packb({
            "serial": scan.serial, "center": center, "method": method,
            "error": error, "outputs": scan.center_outputs,
            "streaming": scan.center_report}))

    def _adopt_center(self, scan: _ScanState) -> None:
        agreed = scan.close.center
        assert agreed is not None
        if agreed.error is not None:
            raise StreamerError(agreed.error)
        scan.center, scan.center_method = agreed.center, agreed.method

    def _finder_input(self, scan: _ScanState) -> TappedRows | None:
        """The CoR owner: the finder's rows tapped where it stands (finder_tap: this
        rank's, and on R ranks every peer's, gathered in frame order), or None where the
        band is the data at its place; a peer silent past ``exchange_timeout_s`` is named
        in the error."""
        tap = scan.processor.finder_tap
        if tap is None:
            return None
        if self.control.size == 1:
            if scan.processor.tapped is None:
                raise StreamerError(f"{tap.finder.name}: no corrected projection reached "
                                    "the CoR finder")
            return scan.processor.tapped
        self._await_rows(scan, scan.finder_rows, tap.finder.name, "the finder's rows")
        return join_finder_rows(tap.finder.name, {
            **scan.finder_rows,
            self.control.rank: rows_tapped(scan.processor.tapped, scan.failure)})

    # --- the CoR check beside the write (ADR 0033) ------------------------------------

    def _check_beside_write(self, scan: _ScanState, viewer: float | None) -> bool:
        """Whether this rank writes its band with the estimated CoR in use and learns the
        check's verdict after (the order is each rank's own: the owner sends the verdict
        once, whenever the others wait for it). A viewer's CoR, a pipeline's finder, later
        sections, ``save_result`` or a failed band keep the check first; so do R ranks
        writing a shared store (Zarr, TIFF), whose CoR the first band's writer sets."""
        state = scan.center_state
        return (viewer is None and scan.close.center_owner is not None
                and scan.failure is None and scan.results is None and not self._later
                and state is not None and state.outcome is None and state.center is not None
                and state.source in _ESTIMATED and self._finder() is None
                and (self.control.size == 1 or self.output_format == "hdf5"))

    def _write_then_verdict(self, scan: _ScanState, band: Band, path: Path) -> PartWritten:
        """This rank's band written with the estimated CoR in use while the owner checks it
        in a thread; then the verdict: it agrees (the volume stands) or every rank
        rewrites its band with the final CoR. A band reconstructed at close (the
        accumulators fell back) waits for the verdict first, so it is computed once."""
        state = scan.center_state
        assert state is not None and state.center is not None and state.source is not None
        used = state.center
        scan.center = used
        scan.center_method = streaming_center_method(
            Outcome(used, state.source, False, False, None), None)  # as if it agrees
        if scan.streaming is not None and scan.streaming.early is not None:
            scan.early_report = scan.streaming.early.as_dict()  # the write takes the section
        check = self._start_check(scan, band, used)
        learned: list[bool] = []

        def verdict() -> None:
            if not learned:
                learned.append(True)
                self._learn_verdict(scan, check)

        try:
            part = self._write_part(scan, band, path, settle=verdict)
        except StreamerError:
            with contextlib.suppress(StreamerError):
                verdict()  # the others wait for it
            raise
        written_with_estimate = not learned  # else learned before a reconstruction at close
        verdict()
        if self.control.rank == 0:
            self._center_found[scan.serial] = (
                center_label(scan.center_method, self.center_source),
                scan.center_warnings, scan.center_confidence)
        if written_with_estimate and scan.center != used:
            part = self._rewrite(scan, band, path, part, used)
        self._settle_streaming_center(scan)
        return part

    def _start_check(self, scan: _ScanState, band: Band, used: float,
                     ) -> CheckInThread | None:
        """The CoR owner: the CoR policy's check near ``used`` on the CoR row, in a thread
        (it reads one row of the band, which the write does not change); None elsewhere."""
        if scan.close.center_owner != self.control.rank:
            return None
        # One rank: the band's own height (a projection stage may crop or bin).
        rows = scan.start.rows if self.control.size > 1 else band.sinograms.shape[0]
        row = finder_row(None, rows)

        def search() -> tuple[CorEstimate, bool]:
            return final_estimate_near(_row_stack(band, row), band.angles_deg, used,
                                       auto_center)

        return CheckInThread(search, used, before=self.center_check_hook)

    def _learn_verdict(self, scan: _ScanState, check: CheckInThread | None) -> None:
        """Every rank: the check's verdict (the owner waits for its thread, decides and
        tells the others; they wait for that, bounded by ``exchange_timeout_s``)."""
        if check is not None:
            center, method, error = self._await_check(scan, check)
            self._announce_center(scan, center, method, error, None)
        else:
            self._wait(scan, Step.CENTER)
        self._adopt_center(scan)

    def _await_check(self, scan: _ScanState, check: CheckInThread,
                     ) -> tuple[float | None, str | None, str | None]:
        """The owner: the check's (centre, how, error), serving the links meanwhile; a stop
        (SIGINT/SIGTERM) or a check past ``exchange_timeout_s`` gives up on it (the CoR in
        use is kept, the report says why)."""
        began = time.monotonic()
        while not check.wait(_CHECK_POLL_S):
            stopped = self._stopped(scan)
            if stopped is not None:
                return None, None, f"{stopped} before the CoR check ended"
            if time.monotonic() - began > self.exchange_timeout_s:
                return None, None, (f"the CoR check took more than "
                                    f"{self.exchange_timeout_s:g} s")
            self._serve(scan)
        try:
            found, whole = check.result()
        except StreamerError as failure:
            return None, None, str(failure)
        scan.center_warnings = found.warnings
        scan.center_confidence = found.confidence
        scan.center_outputs = dict(found.side_outputs)
        scan.center_search = search_label(check.used, whole)
        return float(found), _found_label(None, found), None

    def _rewrite(self, scan: _ScanState, band: Band, path: Path, part: PartWritten,
                 used: float) -> PartWritten:
        """The verdict redid the volume: this rank's band, written with ``used``, is
        reconstructed at close with the final CoR and written again over it (a part that
        stopped or failed is left as it is, saying so)."""
        assert scan.center is not None
        if part.error is not None:
            return replace(part, error=f"{part.error}; not redone with the final CoR "
                                       f"{scan.center:.2f}")
        if self.log is not None:
            self.log(f"scan {scan.start.scan}: rank {self.control.rank}: rewriting the band "
                     f"with the final CoR {scan.center:.2f} (streamed with {used:.2f})")
        held = self._held.pop(scan.serial, None)
        if held is not None:  # one rank: the volume written with ``used`` is replaced
            with contextlib.suppress(StreamerError):
                held.writer.close(complete=False)
        scan.streamed, scan.stats = False, None
        return self._write_part(scan, band, path, rewrite=True)

    def _await_rows(self, scan: _ScanState, received: Mapping[int, object], finder: str,
                    what: str) -> None:
        """The CoR owner: every peer's share of ``what`` for ``finder`` in ``received``; a
        peer silent past ``exchange_timeout_s`` is named in the error."""
        silent = self._await_peers(scan, received)
        if silent:
            raise ExchangeError(
                f"scan {scan.start.scan!r}: {finder}: rank {self.control.rank} waited "
                f"{self.exchange_timeout_s:g} s for {what} from ranks {silent}: none came "
                "(a rank died or is stuck)")

    def _gather_pair(self, scan: _ScanState, band: Band,
                     ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """The CoR owner, a pair finder on R ranks: the whole 0°/180° pair from every
        rank's rows (each sends them, failed or not, before it waits for the CoR); a peer
        silent past ``exchange_timeout_s`` is named in the error."""
        self._await_rows(scan, scan.pair_rows, "find_center_pc", "the 0°/180° pair's rows")
        return assemble_pair({**scan.pair_rows, self.control.rank: rows_of_pair(band)})

    # --- the streaming CoR (``estimate_center``) -----------------------------------------

    def _open_center(self, scan: _ScanState, section: StreamingSection,
                     owner: int | None) -> None:
        """The scan's streaming CoR at its open (every rank alike): a given or carried CoR
        starts the accumulators at once; else they wait (keeping the blocks) and the rank
        that owns the CoR row watches for the opposite pair."""
        key = sample_key(scan.start)
        carried = None
        if section.center is None and key is not None:
            carried = self.center_memory.recall(key)
        state = scan.center_state = StreamingCenter(tolerance=self.center_tolerance,
                                                    given=section.center, carried=carried)
        start = state.opened()
        if start is not None:
            section.start(start.center)
            if carried is not None and self.log is not None and self.control.rank == 0:
                self.log(f"scan {scan.start.scan}: streaming with the CoR {carried:.2f} "
                         f"carried from the previous scan of sample {key}")
        elif owner == self.control.rank:
            section.on_pair = lambda value: self._pair_found(scan, value)
            section.early_fraction = self.early_center_fraction
            section.on_early = lambda value: self._early_found(scan, value)

    def _pair_found(self, scan: _ScanState, value: float) -> None:
        """The CoR owner's band completed the opposite pair: every rank starts with it
        (this message reaches each peer before the CoR agreed at close)."""
        self.control.send_to_others(TAG_STREAM_CENTER, msgpack.packb(
            {"serial": scan.serial, "pair": value}))
        self._pair_agreed(scan, value)

    def _early_found(self, scan: _ScanState, value: float) -> None:
        """The CoR owner's early estimate is sure enough: every rank starts with it (sent
        on the pair's link, so it reaches each peer before the pair and the close)."""
        self.control.send_to_others(TAG_STREAM_CENTER, msgpack.packb(
            {"serial": scan.serial, "early": value}))
        self._early_agreed(scan, value)

    def _early_agreed(self, scan: _ScanState, value: float) -> None:
        self._estimate_agreed(scan, value, early=True)

    def _pair_agreed(self, scan: _ScanState, value: float) -> None:
        self._estimate_agreed(scan, value, early=False)

    def _estimate_agreed(self, scan: _ScanState, value: float, *, early: bool) -> None:
        """Every rank: a CoR estimated while the scan streams (the early estimate, or the
        opposite pair) starts the streaming section with it, the kept blocks added."""
        state, section = scan.center_state, scan.streaming
        if state is None or state.outcome is not None:
            return
        start = state.early_found(value) if early else state.pair_found(value)
        if start is None or section is None:
            return
        kept = section.kept_blocks
        section.start(start.center, early=early)
        if self.log is not None and self.control.rank == 0:
            source = "early estimate:" if early else "from the opposite pair:"
            self.log(f"scan {scan.start.scan}: CoR {value:.2f} {source} streaming starts "
                     f"({kept} kept block{'' if kept == 1 else 's'} added)")

    def _decide_center(self, scan: _ScanState, final: float | None, method: str | None,
                       error: str | None, viewer: float | None,
                       ) -> tuple[float | None, str | None, str | None]:
        """The CoR owner at close: the streaming CoR's outcome against the final estimate
        (``final``, found by ``method``; ``error``: why not), as (centre, how, error)."""
        state = scan.center_state
        assert state is not None
        streamed_with = state.center  # the accumulators' (None: none was known)
        if viewer is not None:
            state.viewer_set(viewer)
        before = state.center  # the one the final estimate is compared with
        try:
            outcome = state.closed(final if error is None else None)
        except StreamerError:
            failure = StreamerError(error or "streaming CoR: none was found")
            self.last_error = self.last_error or failure
            return None, None, str(failure)
        report = state.report()
        if scan.center_search is not None:
            report["final_search"] = scan.center_search
        if scan.streaming is not None and scan.streaming.early is not None:
            report["early"] = scan.streaming.early.as_dict()  # found, or why not
        elif scan.early_report is not None:
            report["early"] = scan.early_report
        report.update(streamed_with=streamed_with, final=final if error is None else None,
                      difference=None if before is None or final is None or error
                      else round(abs(final - before), 4))
        if error is not None:
            report["final_error"] = error
        scan.center_report = report
        return outcome.center, streaming_center_method(outcome, method), None

    def _settle_streaming_center(self, scan: _ScanState) -> None:
        """After the band is written: the CoR is remembered for the sample's next scan
        (every rank alike, streamed or not) and rank 0 keeps the report's ``center``."""
        state = scan.center_state
        if not self.estimate_center:
            return
        center = scan.center
        if center is None and state is not None:
            center = state.center  # a given CoR (not agreed at close)
        key = sample_key(scan.start)
        if key is not None and center is not None:
            self.center_memory.remember(key, center)
        if state is not None and self.control.rank == 0:
            if scan.center_report is None and state.outcome is None and state.center is not None:
                state.closed(None)  # a given CoR: not checked at close
            report = dict(scan.center_report or state.report())
            report.update(streamed=scan.streamed, sample=key)
            self._center_streaming[scan.serial] = report

    # --- writing -----------------------------------------------------------------------

    def _write_part(self, scan: _ScanState, band: Band, master: Path,
                    last_section: tuple[Band, tuple[PipelineStep, ...]] | None = None, *,
                    settle: Callable[[], None] | None = None, rewrite: bool = False,
                    ) -> PartWritten:
        """This rank's band through the sinogram section (or ``last_section``: the band
        and filled steps of a pipeline's last section) into its writer. ``settle``: the
        CoR check's verdict, learned first when the band is reconstructed at close (not
        from the accumulators); ``rewrite``: replace what this rank wrote before."""
        rank, ranks = self.control.rank, self.control.size
        held = band.sinograms.shape[1]  # projections this rank's band holds
        if last_section is not None:
            band = last_section[0]
        first, last = band.rows
        if last == first:
            return PartWritten(rank, None, band.rows, 0, True, None)
        if band.sinograms.shape[1] == 0:
            return PartWritten(rank, None, band.rows, 0, False,
                               "no projection arrived: nothing to reconstruct")
        references = scan.references_here + scan.close.references
        complete = (held == scan.start.projections
                    and references == scan.start.darks + scan.start.flats)
        blocks = self._streamed(scan, band, complete)
        if blocks is None and settle is not None:
            settle()  # at close: with the CoR the check decides (computed once)
        if last_section is not None:  # run-time values filled (later_sections)
            data_steps = last_section[1]
        else:
            _, sinogram_steps = split_sections(self.steps)
            viewer = scan.center_method == VIEWER_METHOD  # overrides a fixed CoR, as on 1 rank
            data_steps = tuple(
                replace(s, params=s.params.model_copy(update={"center": scan.center}))
                if scan.center is not None and "center" in type(s.params).model_fields
                and (viewer or dict(s.params)["center"] is None) else s
                for s in sinogram_steps if s.spec.finds_center is None
            )
        data_steps = _share_threads(data_steps, self.control.size)
        center = center_in_use(scan.center, data_steps, scan.start.cols)
        method = center_label(scan.center_method, self.center_source)
        if self.observer is not None:
            self.observer.center_settled(scan.serial, center, method)
        if blocks is None:
            blocks = self._band_blocks(scan, band, data_steps)
        path = master
        writer: VolumeSink | None = None
        written = 0
        stopped: str | None = None
        try:
            while True:
                stopped = None
                if written < last - first:  # a band fully written is never cut
                    stopped = self._stopped(scan) or self._interrupted(scan)
                if stopped is not None:
                    stopped += f" after {written} of {last - first} slices"
                    break
                item = next(blocks, None)
                if item is None:
                    break
                begin, data = item
                end = begin + int(data.shape[0])
                if writer is None:
                    geometry: dict[str, Any] = {
                        "slice_shape": (int(data.shape[1]), int(data.shape[2])),
                        "angles_deg": section_angles(data_steps, band.angles_deg,
                                                     int(band.sinograms.shape[2])),
                        "center_of_rotation": center,
                        "center_method": method, "pipeline_yaml": self.pipeline_text,
                        "scan": scan.start.scan}
                    path, writer = self._open_band(scan, band.rows, master, geometry,
                                                   rewrite=rewrite)
                writer.write(begin, data)
                if self._tail is not None and ranks > 1:  # calculate_stats, this band
                    scan.stats = scan.stats or PartialStats()
                    scan.stats.add(data)
                if written == 0 and end < last - first and self.log is not None:
                    # once per band: the reconstruction is under way (and a handshake for
                    # whoever waits for it, e.g. to test a stop)
                    self.log(f"scan {scan.start.scan}: rank {rank}: reconstructing "
                             f"{last - first} slices in blocks of {end - begin}: first block "
                             "written")
                written += end - begin
                if self.observer is not None:
                    self.observer.slices(scan.serial,
                                         np.arange(first + begin, first + end), data)
                if self.on_block is not None:
                    self.on_block(scan.start.scan, written, last - first)
        except StreamerError as error:  # a stage or the disk: what was written stays
            stopped = str(error)
            self.last_error = self.last_error or error
        moved = scan.processor.transfers  # a device's copies (queue, streaming uploads)
        if moved.transfers and self.log is not None:
            self.log(f"scan {scan.start.scan}: rank {rank}: device transfers: "
                     f"{moved.describe()}")
        done = complete and stopped is None and written == last - first
        if writer is not None and ranks == 1:
            # The volume itself: closed with the scan's report in it (write_master).
            self._held[scan.serial] = _HeldVolume(writer, center, done)
        elif writer is not None:
            try:
                writer.close(complete=done)
            except StreamerError as error:
                stopped = stopped or str(error)
        if stopped is not None:
            if self.log is not None:
                self.log(f"scan {scan.start.scan}: rank {rank}: {stopped}")
            return PartWritten(rank, str(path) if writer is not None else None, band.rows,
                               written, False, stopped)
        return PartWritten(rank, str(path), band.rows, written, complete, None)

    def _band_blocks(self, scan: _ScanState, band: Band, steps: tuple[PipelineStep, ...],
                     ) -> Iterator[tuple[int, npt.NDArray[np.float32]]]:
        """``steps`` on this rank's band in blocks: (first row in the band, output). A
        section wholly on the device streams through the processor's
        :class:`~stages.backends.device_queue.DeviceQueue`, as on one rank
        (:func:`~streamer.pipeline.device_bands.band_outputs`); the copies are counted and
        timed in the processor's transfers (logged per rank by :meth:`_write_part`)."""
        first, last = band.rows
        processor = scan.processor
        block = self.block_sinograms or processor.block_sinograms
        spans = [(begin, min(begin + block, last - first))
                 for begin in range(0, last - first, block)]
        # real neighbour rows for kernels across rows (ADR 0019; one rank: the band is
        # every row; R ranks: the widened band the exchange delivered holds them)
        halo = section_halo(steps)
        total_rows = scan.rows  # every band is cut from them
        # (after later sections: the last one's, set by _run_later)
        widened = scan.widened if scan.widened is not None and halo else band
        low, high = widened.rows  # rows of the band's array (own rows: first, last)

        def window_of(begin: int, end: int) -> Window:
            return local_window(first + begin, first + end, halo, low, high)

        def haloed(begin: int, end: int) -> npt.NDArray[np.float32]:
            where = window_of(begin, end)
            return widened.sinograms[where.low:where.high]

        def run(data: Any, begin: int, end: int, *, queued: bool) -> Any:
            where = window_of(begin, end)
            saved = bind_result(None if scan.results is None else scan.results.add,
                                Pattern.SINOGRAM,
                                np.arange(first + begin, first + end, dtype=np.int64),
                                total_rows, None)
            out = apply_steps(steps, data, darks=None, flats=None,
                              angles_deg=band.angles_deg, transfers=processor.transfers,
                              repairs=processor.repairs, caches=processor.caches,
                              keep_on_device=queued, own=where,
                              on_iteration=processor.iterations.listener(
                                  begin // block, len(spans), first + begin, first + end),
                              on_result=keep_saved(saved, where, angles_along=False))
            return keep_block(out, where, "sinogram section")

        outputs = band_outputs(steps, spans, haloed, run, device=processor.queue_device,
                               transfers=processor.transfers)
        for (begin, _), data in zip(spans, outputs, strict=False):
            yield begin, data

    def _streamed(self, scan: _ScanState, band: Band, complete: bool,
                  ) -> Iterator[tuple[int, npt.NDArray[np.float32]]] | None:
        """The band's slices from its streaming accumulators (band-relative first slice,
        slices), or None: reconstruct at close (not streaming, or it fell back)."""
        section, scan.streaming = scan.streaming, None  # the accumulators go with it
        if section is None:
            return None
        evicted = band.rejected.get("over_capacity", 0)
        if evicted and section.fallback is None:
            section.fallback = f"{evicted} projections beyond the announced ones"
        # The viewer's CoR, or the streaming CoR agreed at close: the accumulators' CoR
        # must be that one, else the band is reconstructed at close with it.
        agreed = scan.center_method == VIEWER_METHOD or scan.center_state is not None
        blocks = section.finish(band.angles_deg, complete,
                                center_override=scan.center if agreed else None,
                                should_stop=lambda: False)  # stop: between blocks, above
        if blocks is None:
            return None
        scan.streamed = True
        return ((int(block.indices[0]), block.data) for block in blocks)

    def _open_band(self, scan: _ScanState, rows: tuple[int, int], master: Path,
                   geometry: dict[str, Any], *, rewrite: bool = False,
                   ) -> tuple[Path, VolumeSink]:
        """This rank's writer: on one rank the format's own writer of the whole volume
        (from the registry), on R ranks the format's band writer (:mod:`streamer.sinks.ranked`).
        ``rewrite``: over what this rank wrote of the scan before (a redone volume)."""
        rank, ranks = self.control.rank, self.control.size
        overwrite = self.overwrite or rewrite
        if ranks == 1:
            try:
                return master, open_sink(
                    self.output_format, master, overwrite=overwrite,
                    detector_rows=list(range(self.first_row, self.first_row + rows[1])),
                    metadata=scan.processor.repairs.as_metadata(), **geometry)
            except OSError as error:
                raise SinkError(f"{master}: cannot write there: {os_reason(error)}") from None
        return ranked_output(self.output_format).open_band(
            master, rank=rank, ranks=ranks, band=rows, first_row=self.first_row,
            volume_slices=scan.rows, overwrite=overwrite, **geometry)

    def _stopped(self, scan: _ScanState) -> str | None:
        """Why this rank stops reconstructing ``scan`` now (None: go on). Its own stop
        is told to every other rank (once), so all of them stop at their next block."""
        self._take_messages(scan)  # a peer's TAG_STOP
        if scan.stopped_by is None and self.stop is not None and self.stop.is_set():
            scan.stopped_by = self.control.rank
            self.control.send_to_others(TAG_STOP, msgpack.packb(
                {"serial": scan.serial, "rank": self.control.rank}))
        if scan.stopped_by is None:
            return None
        if scan.stopped_by == self.control.rank:
            return "stopped by the service (SIGINT/SIGTERM)"
        return f"stopped: rank {scan.stopped_by} was stopped (SIGINT/SIGTERM)"

    def _interrupted(self, scan: _ScanState) -> str | None:
        """Why this rank stops reconstructing ``scan`` for a newer scan (None: go on):
        one started ``interrupt_after_s`` ago or more (the worker's reads of what the
        ingest thread set are of one reference: atomic)."""
        started = self._started_while_busy
        if self.interrupt_after_s is None or started is None or started[0] <= scan.serial:
            return None
        if self.clock() - started[2] < self.interrupt_after_s:
            return None
        return f"interrupted: scan {started[1]!r} started"

    def write_master(self, scan_id: str, *, complete: bool,
                     document: dict[str, Any] | None) -> ScanOutput | None:
        """Rank 0: the scan's accounting is final; wait (bounded) for every rank's part
        and write the master file. ``complete`` is the accounting's verdict; the master
        is complete only if every part is too."""
        closed = self._closed.pop(scan_id, None)
        if closed is None:
            return None
        serial, path, rows = closed
        close = self._closing.pop(serial, None) or CloseHandshake(
            scan_id, 0, self.control.size, self.exchange_timeout_s)
        close.begin(Step.PARTS, time.monotonic())
        while isinstance(close.check(time.monotonic()), Waiting):
            self._take_messages(None, close)
            if self.observer is not None:
                self.observer.serve()
            if close.missing(Step.PARTS):
                time.sleep(_POLL_PAUSE_S)
        parts = close.parts
        silent = list(close.missing(Step.PARTS))
        errors = [f"rank {p.rank}: {p.error}" for p in parts.values() if p.error]
        errors += [f"rank {r}: wrote nothing within {self.exchange_timeout_s:g} s"
                   for r in silent]
        ranks = self.control.size
        complete = (complete and not silent and not errors
                    and all(p.complete for p in parts.values()))
        document = dict(document or {})
        if self.observer is not None:  # transfers, latency (the volume is complete next)
            self.observer.finish_master(serial, document, silent=tuple(silent))
        if errors:
            document["reconstruction_errors"] = errors
        repairs = RepairCounts()
        for part in parts.values():
            repairs.merge(part.repaired, part.pixels, part.observed)
        document["repairs"] = repairs.as_dict()
        figures: dict[str, Any] = {}
        notes: tuple[str, ...] = ()
        if self._frames_halo:  # a projection section with a kernel across frames (ADR 0019)
            without = sum(part.without_neighbours for part in parts.values())
            document[WITHOUT_NEIGHBOURS] = figures[WITHOUT_NEIGHBOURS] = without
            if without:
                notes = (without_neighbours_line(without),)
        device = device_document({part.rank: part.device for part in parts.values()})
        if device is not None:  # host↔device copies, every rank's (a GPU run)
            document["device"] = figures["device"] = device
            notes = (*notes, device_line(device))
        iterations = self._iteration_logs.pop(serial, None)
        if iterations is not None and iterations.log.iterations:
            document["iterations"] = figures["iterations"] = iterations.log.as_dict()
        warning = repairs.warning()
        if warning is not None and self.log is not None:
            self.log(f"scan {scan_id}: warning: {warning}")
        slices = sum(p.slices for p in parts.values())
        error = "; ".join(errors) or None
        streaming_center = self._center_streaming.pop(serial, None)
        if streaming_center is not None:
            document["center"] = streaming_center
        held = self._held.pop(serial, None)
        latency = self._latency.pop(scan_id, None)
        line = None
        if latency is not None and (held is not None or ranks > 1):
            # Every slice is written, only the close is left (the report goes in it);
            # no frame at all (``recon``, or nothing came): no figure.
            with contextlib.suppress(StreamerError):
                latency.volume_complete()
                summary = latency.summary()
                document["latency"] = figures["latency"] = summary.as_dict()
                line = summary.line()
        try:
            if ranks == 1:  # the volume itself, with the report inside
                if held is None:
                    output = ScanOutput(scan_id, None, 0, None, False,
                                        error or "no slices were written")
                else:
                    complete = complete and held.complete
                    held.writer.close(complete=complete, report=document)
                    output = ScanOutput(scan_id, path, slices, held.center, complete,
                                        error, repairs.total)
            else:
                finished = ranked_output(self.output_format).finish(
                    path, ranks=ranks, bands=row_bands(rows, ranks), first_row=self.first_row,
                    complete=complete, report=document, errors=errors)
                if finished.path is None:
                    output = ScanOutput(scan_id, None, 0, None, False,
                                        error or "no slices were written")
                else:
                    output = ScanOutput(scan_id, finished.path, slices, finished.center,
                                        complete, error, repairs.total)
        except StreamerError as failure:
            output = ScanOutput(scan_id, path if held is not None else None,
                                slices if held is not None else 0,
                                held.center if held is not None else None, False,
                                "; ".join([*errors, str(failure)]))
        self._finish_results(serial, scan_id, output.complete)  # ``run``'s save_result
        method, warnings, confidence = self._center_found.pop(serial, (None, (), None))
        output = replace(output, repairs=repairs, center_method=method,
                         center_warnings=warnings, center_confidence=confidence,
                         iterations=tuple(iterations.log.summary())
                         if iterations is not None else (),
                         latency=line if output.path is not None else None,
                         figures=figures if output.path is not None else {},
                         notes=(*output.notes, *notes))
        if self.observer is not None:
            output = self.observer.scan_closed(serial, output)
        if streaming_center is not None:  # the report's ``center`` and a terminal line
            output = replace(output, figures={**output.figures, "center": streaming_center},
                             notes=(*output.notes, center_note(streaming_center)))
        if self._tail is not None and output.path is not None:  # (the observer's figures in)
            output = self._images_output(output, self._tail, list(parts.values()), slices)
        self._publish(output)
        return output

    def _images_output(self, output: ScanOutput, tail: ImageTail, parts: list[PartWritten],
                       slices: int) -> ScanOutput:
        """Rank 0, HTTomo's image tail: on one rank the images of the closed volume
        (:func:`~streamer.run.image_output.with_images`); on R ranks the count of the images
        every rank wrote of its band (:meth:`_band_images`). In the output, its terminal
        lines and its figures; none at all is said too, never silence."""
        path = output.path
        assert path is not None
        per_scan = self.output is None
        if self.control.size == 1:
            output = with_images(output, tail, self.output_format, per_scan=per_scan)
            if output.images is None and output.error is not None:
                self.last_error = self.last_error or SinkError(output.error)
            return output
        folder = image_folder(path, self.output_format, tail, per_scan=per_scan)
        if output.error is not None:
            return no_images(output, folder)
        count = sum(part.images for part in parts)
        if count != slices:
            note = f"save_to_images: {count} of {slices} images in {folder}"
            return replace(output, complete=False, error=note, notes=(*output.notes, note))
        return images_written(output, folder, count)

    # --- messages ----------------------------------------------------------------------

    def _serve(self, scan: _ScanState) -> None:
        self._take_messages(scan)
        if scan.exchange is not None:
            scan.exchange.poll()
        if self.observer is not None:
            self.observer.serve()

    def _take_messages(self, scan: _ScanState | None,
                       closing: CloseHandshake[PartWritten] | None = None) -> None:
        for received in self.control.poll():
            self._handle(received, scan, closing)

    def _handle(self, received: Received, scan: _ScanState | None,
                closing: CloseHandshake[PartWritten] | None = None) -> None:
        try:
            message = msgpack.unpackb(received.payload, raw=False)
        except (ValueError, msgpack.ExtraData) as error:
            raise ExchangeError(
                f"rank {received.source}: control message (tag {received.tag}): expected "
                f"msgpack, got undecodable bytes ({error})") from None
        if not isinstance(message, dict) or not isinstance(message.get("serial"), int):
            raise ExchangeError(
                f"rank {received.source}: control message (tag {received.tag}): expected a "
                f"map with an integer 'serial', got {type(message).__name__}")
        if received.tag == TAG_STOP:
            # A peer stopped (SIGINT/SIGTERM): this rank stops too, this scan and the job.
            if self.stop is not None:
                self.stop.set()
            if scan is not None and message["serial"] == scan.serial \
                    and scan.stopped_by is None:
                scan.stopped_by = received.source
            return
        if received.tag == TAG_ITERATION and message["serial"] in self._iteration_logs:
            self._iteration_logs[message["serial"]].peer(message, received.source)
            return
        if received.tag == TAG_PART_DONE:
            part = PartWritten(int(message["rank"]), message["path"],
                               (int(message["rows"][0]), int(message["rows"][1])),
                               int(message["slices"]), bool(message["complete"]),
                               message["error"],
                               {str(key): int(count) for key, count
                                in dict(message.get("repaired") or {}).items()},
                               int(message.get("pixels") or 0),
                               {str(key): int(count) for key, count
                                in dict(message.get("observed") or {}).items()},
                               int(message.get("images") or 0),
                               int(message.get("without_neighbours") or 0),
                               _device_figures(message.get("device"), received.source))
            close = self._closing.get(message["serial"])
            if close is None and closing is not None:
                close = closing  # the scan whose master rank 0 is writing now
            if close is not None:
                close.part_written(part.rank, part)
            return
        if scan is None or message["serial"] > scan.serial:
            self._inbox.append(received)  # a scan this rank has not opened yet
            return
        if message["serial"] < scan.serial:
            return  # a scan this rank already closed (cannot happen: same order everywhere)
        if received.tag == TAG_REFERENCE:
            data = np.frombuffer(message["data"], dtype=np.dtype(message["dtype"]))
            frame = HeldFrame(int(message["index"]), int(message["key"]),
                              float(message["angle"]),
                              data.reshape(tuple(int(n) for n in message["shape"])))
            scan.close.reference_received(received.source)
            scan.processor.add([frame])
        elif received.tag == TAG_STATS:
            stats = message.get("stats")
            scan.peer_stats[received.source] = (None if stats is None
                                                else PartialStats.from_dict(dict(stats)))
        elif received.tag == TAG_FINDER_ROWS:
            scan.finder_rows[received.source] = parse_finder_rows(
                message, received.source, scan.start.frames)
        elif received.tag == TAG_CENTER_PAIR:
            scan.pair_rows[received.source] = parse_pair_rows(message, received.source,
                                                              scan.start.cols)
        elif received.tag == TAG_REFERENCES_DONE:
            scan.close.references_announced(received.source, int(message["count"]))
        elif received.tag == TAG_PATH:
            scan.path = Path(str(message["path"]))
            scan.close.path_received()
        elif received.tag == TAG_STREAM_CENTER:
            if "early" in message:
                self._early_agreed(scan, float(message["early"]))
            else:
                self._pair_agreed(scan, float(message["pair"]))
        elif received.tag == TAG_CENTER:
            center = message["center"]
            scan.center_outputs = dict(message.get("outputs") or {})
            report = message.get("streaming")
            if isinstance(report, dict):
                scan.center_report = report
            scan.close.center_agreed(CenterAgreed(
                None if center is None else float(center), message["method"],
                message["error"]))

    def _wait(self, scan: _ScanState, step: Step) -> None:
        """Serve the link until the close handshake's ``step`` is complete; a peer
        that stays silent past ``exchange_timeout_s`` is named in the error."""
        scan.close.begin(step, time.monotonic())
        while True:
            self._serve(scan)
            outcome = scan.close.check(time.monotonic())
            if isinstance(outcome, Ready):
                return
            if isinstance(outcome, TimedOut):
                raise ExchangeError(outcome.message)
            time.sleep(_POLL_PAUSE_S)

    def _results_for(self, start: StartHeader) -> IntermediateResults | None:
        """``run``'s ``save_result`` writer for the scan ``start`` opens (None: not
        asked for): files named ``{scan}-…``, ``{scan}-2-…`` … where a file of that name
        exists or an earlier scan of this run took it (the same on every rank: the
        files over the parts are written after every rank has begun the scan)."""
        if not self.save_results or not any(step.save_result for step in self.steps):
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stem = output_stem(start.scan)
        prefix, number = f"{stem}-", 2
        while prefix in self._result_prefixes or any(
                path.exists() for path in result_paths(self.steps, self.out_dir, prefix)):
            prefix, number = f"{stem}-{number}-", number + 1
        self._result_prefixes.add(prefix)
        # a part left by a run that never wrote its file over them is replaced
        return IntermediateResults(self.out_dir, start.rows, start.cols, overwrite=True,
                                   rank=self.control.rank, ranks=self.control.size,
                                   prefix=prefix)

    def _finish_results(self, serial: int, scan_id: str, complete: bool) -> None:
        """Rank 0, ``run``: the scan's ``save_result`` files, with its volume: closed (one
        rank), or written over the parts every rank has closed (R ranks); each named in
        the log."""
        results = self._scan_results.pop(serial, None)
        if results is None:
            return
        said: list[str] = []
        try:
            results.close(complete=complete)
            if self.control.size == 1:
                said = [str(path) for path in results.written]
            else:
                for path, whole, why in results.write_masters(self.steps, complete=complete):
                    said.append(f"{path} {why}" if not path.exists() else
                                str(path) + ("" if whole else f" (INCOMPLETE: {why})"))
        except StreamerError as error:
            said.append(str(error))
        if self.log is not None:
            for line in said:
                self.log(f"scan {scan_id}: save_result: {line}")

    def _master_path(self, scan: str) -> Path:
        """``<scan>.h5`` in ``out_dir`` (or ``output``), ``<scan>-2.h5`` … when that name
        or its parts exist (rank 0 decides; the other ranks are told)."""
        if self.output is not None:
            return self.output
        return free_output_path(self.out_dir, scan, self.output_format)


def recon_on_ranks(reader: FrameReader, settings: ReconSettings, link: Any,
                   log: Callable[[str], None] = lambda line: None, *,
                   stop: threading.Event | None = None,
                   on_block: Callable[[str, int, int], None] | None = None,
                   stream: bool = True,
                   on_read: Callable[[int, int], None] | None = None,
                   scan_id: str | None = None,
                   on_iteration: Callable[[BandIteration], None] | None = None,
                   ) -> ScanOutput | None:
    """``mpiexec -n R tomo-streamer recon``: the batch path on ``link``'s ranks.

    Every rank opens the scan; rank 0 reads the darks and flats (and forwards them, as
    in a stream); the blocks of projections are dealt round-robin, so each rank reads
    and corrects ``1/R`` of them; then the reslice and the band reconstruction run as
    in ``run``. Rank 0 returns what it wrote; the others return None. ``stop`` and
    ``on_block`` are :class:`RankedReconstruction`'s; ``stream=False`` reconstructs
    every band after the last block even when the pipeline streams; ``on_read(frames
    read, frames)`` follows the reading.

    A scan the plan refuses raises its error on every rank before anything is read. A
    stage that refuses a rank's data fails that rank's band (the others finish theirs;
    the output says incomplete and why); on one rank the volume is closed (incomplete)
    and then that first error is raised, as ``recon`` on one rank always did.
    """
    layout = reader.layout
    if layout.projections == 0:
        raise ConfigError("recon: the scan has no projections")
    steps, text = pipeline_for(settings, layout.normalisation)
    if settings.device == "gpu":  # one GPU per rank (docs/how-to/gpu-and-backends.md)
        from stages.backends.device import node_local_rank, use_device_for_rank  # noqa: PLC0415

        node = node_local_rank(getattr(link, "comm", None))  # MPI's split; None: launcher's
        device, usable = use_device_for_rank(link.rank, link.size, node)
        log(f"rank {link.rank}: {device.describe()}, planning {usable / 2**30:.1f} GiB")
    scan_id = scan_id or output_stem(settings.output.stem)
    # HTTomo's save_result files beside the output (on R ranks each rank's parts and rank
    # 0's file over them): existing ones refused now, before anything is read.
    results = IntermediateResults.for_scan(steps, settings.output.parent, layout,
                                           overwrite=settings.overwrite, rank=link.rank,
                                           ranks=link.size)
    control, band_link = link.duplicate(), link.duplicate()
    if link.size > 1:
        refuse_on_ranks(steps)  # before any file is looked at
    ranked = RankedReconstruction(
        steps, text, settings.output.parent, control, band_link,
        block_frames=settings.block_frames, block_sinograms=settings.block_sinograms,
        memory_bytes=settings.memory_bytes, device_bytes=settings.device_bytes,
        output=settings.output, first_row=settings.first_row, overwrite=settings.overwrite,
        output_format=settings.output_format,
        center_source=center_source(settings.center), log=log, stop=stop,
        on_block=on_block, stream=stream, on_iteration=on_iteration, results=results)
    try:
        return _feed_ranks(ranked, reader, scan_id, on_read)
    finally:
        if results is not None:
            _finish_results(results, ranked, steps, log)


def _finish_results(results: IntermediateResults, ranked: RankedReconstruction,
                    steps: tuple[PipelineStep, ...], log: Callable[[str], None]) -> None:
    """Close the ``save_result`` files (R ranks: this rank's parts, if its close did not)
    and, on rank 0, say each file once: one rank's, or R ranks' virtual file over the
    parts (written now: every rank has told rank 0 its part is closed, or timed out)."""
    complete = ranked.outputs[-1].complete if ranked.outputs else False
    results.close(complete=complete)
    if ranked.control.size == 1:
        for path in results.written:
            log(f"save_result: {path}")
        return
    if ranked.control.rank != 0:
        return
    try:
        for path, whole, why in results.write_masters(steps, complete=complete):
            if not path.exists():
                log(f"save_result: {path} {why}")
            else:
                log(f"save_result: {path}" + ("" if whole else f" (INCOMPLETE: {why})"))
    except StreamerError as error:
        log(f"save_result: {error}")


def _feed_ranks(ranked: RankedReconstruction, reader: FrameReader, scan_id: str,
                on_read: Callable[[int, int], None] | None) -> ScanOutput | None:
    """:func:`recon_on_ranks`'s reading: open the scan, deal the blocks, close it."""
    layout = reader.layout
    try:
        ranked.open_scan(start_header(layout, scan_id))
    except ScanFailedError as refused:  # the plan's own error (every rank alike)
        cause = refused.__cause__
        raise (cause if isinstance(cause, StreamerError) else refused) from None
    assert ranked._scan is not None
    block = ranked._scan.processor.block_frames
    rank, ranks = ranked.control.rank, ranked.control.size
    keys, angles = layout.image_keys, layout.angles_deg
    for number, first in enumerate(range(0, layout.frames, block)):
        if ranked.stop is not None and ranked.stop.is_set():
            break  # stopped (Ctrl-C): the close says what is missing, every rank alike
        last = min(first + block, layout.frames)
        projections_here = number % ranks == rank
        references_here = rank == 0 and bool(np.any(keys[first:last] != IMAGE_KEY_PROJECTION))
        if (projections_here or references_here) and ranked.last_error is None:
            try:
                data = reader.read(first, last)
            except StreamerError as error:
                if ranks == 1:
                    raise
                # A part of the file this rank cannot read: its band fails, and it still
                # takes its part in the close (leaving at once would leave rank 0 waiting,
                # and the job without a master).
                ranked.fail_scan(error)
            else:
                # A failure is kept in last_error; this rank still takes its part in the
                # close.
                with contextlib.suppress(ScanFailedError):
                    ranked.add([
                        HeldFrame(index, int(keys[index]), float(angles[index]),
                                  data[index - first])
                        for index in range(first, last)
                        if (keys[index] == IMAGE_KEY_PROJECTION and projections_here)
                        or (keys[index] != IMAGE_KEY_PROJECTION and references_here)
                    ])
        if on_read is not None:
            on_read(last, layout.frames)
    ranked.close_scan()
    output = None if rank != 0 else ranked.write_master(scan_id, complete=True,
                                                        document=None)
    if ranks == 1 and ranked.last_error is not None:
        raise ranked.last_error
    return output


def _runs_on_bands(steps: tuple[PipelineStep, ...]) -> bool:
    """One rank: whether the band path (one reslice, the sinogram section on the band)
    runs ``steps``; else the processor runs its own later sections (and ``save_result``)."""
    return not beyond_one_band(steps) and not any(step.save_result for step in steps)


def _every_reslice(first: ExchangeStats, later: list[TransposeResult]) -> ExchangeStats:
    """The first reslice's figures with the later reslices' (transposes) payloads added,
    so a scan's transfers count every reslice it took."""
    return replace(first,
                   bytes_sent=first.bytes_sent + sum(moved.bytes_sent for moved in later),
                   bytes_received=first.bytes_received + sum(m.bytes_received for m in later),
                   pieces_sent=first.pieces_sent + sum(moved.pieces_sent for moved in later),
                   pieces_received=first.pieces_received
                   + sum(moved.pieces_received for moved in later))


def _device_figures(value: Any, source: int) -> dict[str, float]:
    """A peer's host↔device copies from its part message (none: an empty map)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(key, str) and isinstance(number, int | float)
            and not isinstance(number, bool) for key, number in value.items()):
        raise ExchangeError(f"rank {source}: part message: device: expected a map of names "
                            f"to numbers, got {value!r:.200}")
    return {key: float(number) for key, number in value.items()}


def _feeding(section: StreamingSection) -> Callable[
        [npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float32]], None]:
    """The exchange's ``on_landed``: each landed piece of the band into ``section``."""
    def add(indices: npt.NDArray[np.int64], angles: npt.NDArray[np.float64],
            frames: npt.NDArray[np.float32]) -> None:
        section.add(ProcessedBlock(Pattern.PROJECTION, indices, angles, frames, True))
    return add


def _share_threads(steps: tuple[PipelineStep, ...], ranks: int) -> tuple[PipelineStep, ...]:
    """Stages that run threads (``threads: None`` = every CPU) get this rank's share of
    the CPUs, so R ranks on one node do not run R × CPUs threads."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    share = max(1, cpus // max(1, ranks))
    return tuple(
        replace(s, params=s.params.model_copy(update={"threads": share}))
        if "threads" in type(s.params).model_fields and dict(s.params)["threads"] is None
        else s
        for s in steps
    )


def _sees_pair(finder: PipelineStep | None) -> bool:
    """Whether ``finder`` correlates the whole 0°/180° projections (``find_center_pc``)
    rather than one sinogram row: on R ranks it is given the whole pair."""
    return finder is not None and finder.spec.finds_center is center_from_pair


def _find_center(finder: PipelineStep | None, band: Band, row: int, *,
                 near: float | None = None, scan: _ScanState | None = None,
                 pair: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None,
                 tapped: TappedRows | None = None) -> SupportsFloat:
    """The CoR from detector row ``row`` of ``band`` (which owns it); ``near``: the
    estimate a streamed scan used, checked first near it (``final_estimate_near``; how
    is kept in ``scan.center_search``); ``pair``: the whole 0°/180° projections for a
    pair finder (R ranks gather them: :meth:`RankedReconstruction._gather_pair`);
    ``tapped``: the finder's rows where it stands (:mod:`~streamer.pipeline.finder_tap`),
    which it then gets instead of the band."""
    if finder is not None and tapped is not None:
        return run_finder_on_rows(finder, tapped)
    stack = _row_stack(band, row)
    if finder is None and near is not None:
        found, whole = final_estimate_near(stack, band.angles_deg, near, auto_center)
        if scan is not None:
            scan.center_search = search_label(near, whole)
        return found
    if finder is None:
        return auto_center(stack, band.angles_deg)
    assert finder.spec.finds_center is not None
    params = finder.params
    if "ind" in type(params).model_fields:
        params = params.model_copy(update={"ind": 0})
    try:
        if pair is not None:
            return center_from_pair(stack, band.angles_deg, params, pair=pair)
        return finder.spec.finds_center(stack, band.angles_deg, params)
    except StageError as error:
        raise StageError(f"{error} (pipeline entry at {finder.where})") from None


def _row_stack(band: Band, row: int) -> npt.NDArray[np.float32]:
    """The corrected projections of detector row ``row`` of ``band`` (which owns it),
    ``(angles, 1, cols)`` as the CoR finders take them."""
    if band.sinograms.shape[1] == 0:  # e.g. the scan failed: no projection was corrected
        raise StreamerError("CoR: no corrected projection reached this rank's band")
    local = row - band.rows[0]
    return np.ascontiguousarray(band.sinograms[local:local + 1].transpose(1, 0, 2))


def _found_label(finder: PipelineStep | None, found: SupportsFloat) -> str:
    """How the CoR was found, with the finder's doubts (stored beside the CoR)."""
    warnings = tuple(getattr(found, "warnings", ()))
    if finder is None:
        return center_label("auto", "auto", warnings=warnings)
    return center_label(f"{finder.name} (pipeline)", "", warnings=warnings)


__all__ = ["DEFAULT_EXCHANGE_TIMEOUT_S", "DEFAULT_INTERRUPT_AFTER_S", "TAG_STOP", "PartWritten",
           "RankedReconstruction", "recon_on_ranks"]
