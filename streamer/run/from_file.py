"""``tomo-streamer recon``: a stored scan to a reconstructed volume, on one rank.

The batch path: the scan is read block by block (the same loaders as ``replay``) and
given to the one runner (:func:`streamer.run.ranks.recon_on_ranks`, on a one-rank link
here: :func:`run_recon`), which runs the same
:class:`~streamer.pipeline.executor.ScanProcessor` as a live stream (correction as they
come, sinogram stages and reconstruction once all projections are in, or streamed while
they are read) and writes slices band by band to HDF5 (or a TIFF stack), flushed per band
and marked complete only at the end. This module keeps ``recon``'s rules: the default
pipeline, the CoR's source and label, the settings.

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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from stages.prep.repair import RepairCounts
from stages.recon.center_policy import CorEstimate, find_center
from stages.registry import REGISTRY
from streamer.errors import ConfigError, StreamerError
from streamer.pipeline.config import Pipeline, PipelineStep, load_pipeline, parse_pipeline
from streamer.pipeline.iterations import BandIteration
from streamer.pipeline.plan import steps_on_device
from streamer.sinks.registry import DEFAULT_FORMAT
from streamer.sources.scan import FrameReader
from streamer.sources.sender import new_scan_id
from streamer.wire.protocol import Normalisation

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
    #: More terminal lines (device transfers, projections corrected without neighbours).
    notes: tuple[str, ...] = ()


def pipeline_for(settings: ReconSettings, normalisation: Normalisation, *,
                 loaded: Pipeline | None = None) -> tuple[tuple[PipelineStep, ...], str]:
    """The steps to run and their YAML (stored in the output). ``loaded``: the file
    ``settings.pipeline`` as the caller already parsed it (``run`` checks its sweep
    before anything is written), so it is not parsed twice; None: parsed here."""
    if settings.pipeline is not None:
        text = settings.pipeline.read_text()
        pipeline = loaded if loaded is not None else load_pipeline(settings.pipeline, REGISTRY)
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
    """Reconstruct ``reader`` into ``settings.output`` on one rank: the one runner
    (:func:`streamer.run.ranks.recon_on_ranks`) on a one-rank in-memory link, so the
    output is the volume itself. ``log`` gets the block plan, ``on_read(frames_read,
    frames)`` the progress of reading, ``on_iteration`` each iteration of an iterative
    stage, per band. ``scan_id`` is stored as the scan's name (default: a new one, as
    ``simulate`` names scans). A stage that refuses the data raises its error once the
    volume is closed, marked incomplete."""
    # The runner imports this module's CoR and pipeline rules: imported here.
    from streamer.exchange.links import MemoryNetwork  # noqa: PLC0415
    from streamer.run.ranks import recon_on_ranks  # noqa: PLC0415

    began = time.perf_counter()
    _, text = pipeline_for(settings, reader.layout.normalisation)
    output = recon_on_ranks(reader, settings, MemoryNetwork(1).link(0), log,
                            on_read=on_read, scan_id=scan_id or new_scan_id(),
                            on_iteration=on_iteration)
    assert output is not None  # rank 0
    if output.path is None or output.center is None:
        raise StreamerError(f"recon: no slice was reconstructed: {output.error}")
    return ReconResult(settings.output, output.slices, output.center,
                       output.center_method or "", output.complete,
                       time.perf_counter() - began, text, output.repairs or RepairCounts(),
                       output.center_warnings, output.center_confidence, output.images,
                       output.iterations, output.notes)
