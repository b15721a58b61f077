"""``tomo-streamer recon``: a stored scan to a reconstructed volume, on one rank.

The batch path: the scan is read block by block (the same loaders as ``replay``), frames
go through the same :class:`~streamer.pipeline.executor.ScanProcessor` as a live stream
(correction as they come, sinogram stages and reconstruction once all projections are
in), and slices are written band by band to HDF5 (or a TIFF stack), flushed per band and
marked complete only at the end.

Without ``--pipeline`` the correction follows the scan's normalisation: flat/dark and
−log (``flat_dark``), air-column normalisation and −log (``air``), nothing (``none``:
already −log). A pipeline without a reconstruction stage gets ``fourier_fbp`` appended
(the default CPU reconstructor: Fourier-domain FBP, see
docs/explanation/fourier-reconstruction.md). The CoR is ``--center VALUE``, else the
pipeline's, else found once per scan with Vo's method on the middle detector row (over the
first 180° of a 360° scan); the value used and how it was found are stored in the output.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from stages.prep.repair import RepairCounts
from stages.recon.center_policy import CorEstimate, find_center
from stages.registry import REGISTRY
from streamer.errors import ConfigError, StreamerError
from streamer.pipeline.config import PipelineStep, load_pipeline, parse_pipeline
from streamer.pipeline.executor import ProcessedBlock, ScanProcessor, feed_reader
from streamer.pipeline.images import image_tail, write_images
from streamer.pipeline.intermediate import IntermediateResults
from streamer.pipeline.iterations import BandIteration
from streamer.pipeline.plan import default_budget_bytes, plan_scan, steps_on_device
from streamer.sinks.registry import DEFAULT_FORMAT, VolumeSink, open_sink
from streamer.sources.scan import FrameReader
from streamer.sources.sender import new_scan_id, start_header
from streamer.wire.protocol import MetadataValue, Normalisation

CORRECTIONS: dict[Normalisation, str] = {
    "flat_dark": "  - method: normalize\n    parameters: {minus_log: true}\n",
    "air": "  - method: normalize_bg\n  - method: minus_log\n",
    "none": "",
}
RECONSTRUCTION = "  - method: fourier_fbp\n"


@dataclass(frozen=True)
class ReconSettings:
    """What ``recon`` was asked to do.

    ``center`` is a 0-based detector column, ``"auto"`` (Vo's method, overriding a CoR in
    the pipeline), or ``None`` (the pipeline's, else automatic).
    ``first_row`` is the detector row of the scan's first row (after a ``--rows`` crop).
    """

    output: Path
    pipeline: Path | None = None
    center: float | Literal["auto"] | None = None
    first_row: int = 0
    block_frames: int | None = None  # None: from the memory plan
    block_sinograms: int | None = None
    memory_bytes: int | None = None  # None: half of this machine's memory
    #: A name in :data:`streamer.sinks.registry.SINKS`.
    output_format: str = DEFAULT_FORMAT
    overwrite: bool = False
    #: For a pipeline with a parameter sweep: which variant (``"center=80"``) to run.
    sweep_value: str | None = None
    #: ``gpu``: device-ready stages run with backend ``cupy`` (:func:`steps_on_device`),
    #: blocks also sized from ``device_bytes`` usable on the device.
    device: Literal["cpu", "gpu"] = "cpu"
    device_bytes: int | None = None


@dataclass(frozen=True)
class ReconResult:
    output: Path
    slices: int
    center: float
    center_method: str
    complete: bool
    seconds: float
    pipeline_text: str
    repairs: RepairCounts = field(default_factory=RepairCounts)
    center_warnings: tuple[str, ...] = ()
    center_confidence: float | None = None
    images: tuple[Path, int] | None = None  # save_to_images: folder and image count
    #: One line per iterative stage (iterations per band, final residual/change).
    iterations: tuple[str, ...] = ()


def pipeline_for(settings: ReconSettings, normalisation: Normalisation) -> tuple[
    tuple[PipelineStep, ...], str
]:
    """The steps to run and their YAML (stored in the output)."""
    if settings.pipeline is not None:
        text = settings.pipeline.read_text()
        pipeline = load_pipeline(settings.pipeline, REGISTRY)
        steps = pipeline.steps
        if pipeline.sweep is not None:
            variants = dict(pipeline.variants())
            label = settings.sweep_value or next(iter(variants))
            if label not in variants:
                raise ConfigError(f"{settings.pipeline}: sweep value: expected one of "
                                  f"{', '.join(variants)}, got {label!r}")
            steps = variants[label]
            text += f"\n# sweep variant run: {label}\n"
        correction = CORRECTIONS[normalisation]
        if not steps and correction:  # an HTTomo loader entry alone: correct as default
            steps = parse_pipeline("pipeline:\n" + correction, REGISTRY,
                                   source="recon default").steps
            text += "\n# appended by recon:\n#" + correction.rstrip().replace("\n", "\n#")
        if not any(step.spec.needs_angles for step in steps):
            steps += parse_pipeline("pipeline:\n" + RECONSTRUCTION, REGISTRY,
                                    source="recon default").steps
            text += "\n# appended by recon:\n#" + RECONSTRUCTION
    else:
        text = "pipeline:\n" + CORRECTIONS[normalisation] + RECONSTRUCTION
        steps = parse_pipeline(text, REGISTRY, source="recon default").steps
    if settings.device == "gpu":
        steps = steps_on_device(steps)
    if settings.first_row:  # a row crop: a distortion centre stays on its detector pixel
        steps = tuple(
            replace(step, params=step.params.model_copy(
                update={"shift_xy": (0, settings.first_row)}))
            if "shift_xy" in type(step.params).model_fields else step
            for step in steps
        )
    if settings.center is not None:
        value = None if settings.center == "auto" else settings.center
        steps = tuple(
            replace(step, params=step.params.model_copy(update={"center": value}))
            if "center" in type(step.params).model_fields else step
            for step in steps
        )
    return steps, text


def auto_center(
    projections: npt.NDArray[np.float32], angles_deg: npt.NDArray[np.float64]
) -> CorEstimate:
    """The CoR policy with its defaults: Vo's method on the middle detector row over the
    first 180° of the scan, searched over the detector's reliable range, cross-checked
    with the 0°/180° pair (see :mod:`stages.recon.center_policy`)."""
    try:
        return find_center(projections, angles_deg)
    except StreamerError as error:  # keep the class: a data problem stays a StageError
        raise type(error)(f"automatic {error}; give --center") from None


def center_source(center: float | Literal["auto"] | None) -> str:
    """How a fixed CoR came, as stored beside it: ``"given"`` when the command line gave
    a number (``--center 47.5``), else ``"pipeline"`` (the pipeline's own value). One rule
    for ``recon`` and ``run`` on any number of ranks."""
    return "given" if center is not None and center != "auto" else "pipeline"


def center_label(found: str | None, default: str, *,
                 warnings: tuple[str, ...] = ()) -> str:
    """How the CoR in an output was decided, as stored beside it: ``"vo"`` when found
    automatically (``found == "auto"``), the finder or viewer that set it, else
    ``default`` (``"pipeline"``, ``"given"`` …); then the finder's warnings, if it had
    any (``"vo; WARNING: low confidence 0.31 ..."``), so a doubtful CoR is never stored
    as if it were sure."""
    label = "vo" if found == "auto" else (found or default)
    return label + "".join(f"; WARNING: {warning}" for warning in warnings)


def center_in_use(found: float | None, steps: tuple[PipelineStep, ...], cols: int) -> float:
    """The CoR a reconstruction used: the one found for the scan, else the first
    reconstruction step's fixed ``center``, else the detector middle ``(cols-1)/2``."""
    if found is not None:
        return found
    fixed = [dict(s.params).get("center") for s in steps if s.spec.needs_angles]
    return float(fixed[0]) if fixed and fixed[0] is not None else (cols - 1) / 2


def run_recon(reader: FrameReader, settings: ReconSettings, scan_id: str | None = None,
              log: Callable[[str], None] = lambda line: None,
              on_read: Callable[[int, int], None] | None = None,
              *, on_iteration: Callable[[BandIteration], None] | None = None,
              ) -> ReconResult:
    """Reconstruct ``reader`` into ``settings.output``; ``log`` gets the block plan,
    ``on_read(frames_read, frames)`` the progress of reading, ``on_iteration`` each
    iteration of an iterative stage, per band."""
    began = time.perf_counter()
    layout = reader.layout
    if layout.projections == 0:
        raise ConfigError("recon: the scan has no projections")
    steps, text = pipeline_for(settings, layout.normalisation)
    start = start_header(layout, scan_id or new_scan_id())
    # What the scan holds while it runs (its sinogram buffer and references) is counted
    # first, as on R ranks and in ``run``: a scan that cannot fit is refused here.
    planned_frames, planned_sinograms, plans, memory = plan_scan(
        steps, rows=layout.rows, cols=layout.cols, angles=layout.projections,
        references=layout.darks + layout.flats, dtype=layout.dtype,
        budget_bytes=settings.memory_bytes or default_budget_bytes(),
        device_bytes=settings.device_bytes,
    )
    block_frames = settings.block_frames or planned_frames
    block_sinograms = settings.block_sinograms or planned_sinograms
    log(memory.describe())
    for plan in plans:
        log(f"plan: {plan.describe()}")
    fixed = [dict(s.params)["center"] for s in steps
             if "center" in type(s.params).model_fields and dict(s.params)["center"] is not None]
    given = settings.center is not None and settings.center != "auto"
    method = center_source(settings.center) if given or fixed else "vo"
    writer: VolumeSink | None = None
    slices = 0

    def write(block: ProcessedBlock) -> None:
        nonlocal writer, slices
        if writer is None:
            first = settings.first_row
            writer = open_volume(
                settings.output, block, output_format=settings.output_format,
                detector_rows=list(range(first, first + layout.rows)), center=center_used(),
                method=method_used(), pipeline_text=text, scan=start.scan,
                overwrite=settings.overwrite, metadata=processor.repairs.as_metadata(),
            )
        writer.write(int(block.indices[0]), block.data)
        slices += block.data.shape[0]

    processor = ScanProcessor(steps, start, block_frames=block_frames,
                              block_sinograms=block_sinograms, on_sinograms=write,
                              resolve_center=auto_center, on_iteration=on_iteration)
    results = IntermediateResults.for_scan(  # HTTomo's save_result: true
        steps, settings.output.parent, layout, overwrite=settings.overwrite)
    if results is not None:
        processor.on_result = results.add

    def center_used() -> float:
        if processor.center is not None:
            return processor.center
        return float(fixed[0]) if fixed else (layout.cols - 1) / 2

    def method_used() -> str:
        return center_label(processor.center_method, method,
                            warnings=processor.center_warnings)

    complete = False
    try:
        feed_reader(processor, reader, block_frames, on_read=on_read)
        complete = processor.complete
    finally:
        if writer is not None:
            writer.close(complete=complete)
        if results is not None:
            results.close(complete=complete)
            for path in results.written:
                log(f"save_result: {path}")
    if writer is None:
        raise StreamerError("recon: no slice was reconstructed")
    warning = processor.repairs.warning()
    if warning is not None:
        log(f"warning: {warning}")
    if processor.transfers.transfers:
        log(f"transfers: {processor.transfers.describe()}")
    tail = image_tail(steps)  # HTTomo's calculate_stats → rescale_to_int → save_to_images
    images = (write_images(settings.output, settings.output_format, tail)
              if tail is not None else None)
    return ReconResult(settings.output, slices, center_used(), method_used(), complete,
                       time.perf_counter() - began, text, processor.repairs,
                       processor.center_warnings, processor.center_confidence, images,
                       tuple(processor.iterations.summary()))


def open_volume(
    path: Path,
    first_block: ProcessedBlock,
    *,
    output_format: str,
    detector_rows: list[int],
    center: float,
    method: str,
    pipeline_text: str,
    scan: str,
    overwrite: bool = False,
    metadata: Mapping[str, MetadataValue] | None = None,
) -> VolumeSink:
    """A writer of ``output_format`` (a registered sink) shaped after the first block of slices;
    ``metadata`` (e.g. the repaired-pixel counts) goes to ``/entry/metadata``."""
    common: dict[str, Any] = {
        "detector_rows": detector_rows,
        "slice_shape": (int(first_block.data.shape[1]), int(first_block.data.shape[2])),
        "angles_deg": first_block.angles_deg, "center_of_rotation": center,
        "center_method": method, "pipeline_yaml": pipeline_text, "scan": scan,
        "overwrite": overwrite, "metadata": dict(metadata or {}),
    }
    return open_sink(output_format, path, **common)
