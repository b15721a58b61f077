"""What the runner hands back for each scan, and the checks a scan passes at its ``start``.

:class:`ScanOutput` is one scan's result as :class:`~streamer.run.ranks.RankedReconstruction`
publishes it (rank 0): the volume written (or why none), its CoR and how it was decided,
the repairs, and the figures known once the volume is complete. The ``run`` service keeps
the newest :data:`MAX_KEPT_OUTPUTS` of them (:func:`keep_newest`). :func:`check_servable` is
the rule, the same on every rank count, that refuses a scan from its ``start`` alone,
before any frame is held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from stages.prep.repair import RepairCounts
from streamer.errors import ScanFailedError
from streamer.pipeline.config import PipelineStep
from streamer.pipeline.sections import sections_of
from streamer.run.center_check import center_outside
from streamer.wire.protocol import StartHeader

#: Outputs kept in memory by a running service (the newest): months of scans must not grow it.
MAX_KEPT_OUTPUTS: Final = 1000


@dataclass(frozen=True)
class ScanOutput:
    """What the service wrote for one scan."""

    scan: str
    path: Path | None
    slices: int
    center: float | None
    complete: bool
    error: str | None = None
    repaired: int = 0  # pixel values repaired (stages.prep.repair), all reasons
    #: The CoR finder's doubts (:class:`~stages.recon.center_policy.CorEstimate`).
    center_warnings: tuple[str, ...] = ()
    #: The scan's latency line (:meth:`streamer.run.latency.LatencySummary.line`).
    latency: str | None = None
    #: Figures known only once the volume is complete (``latency``, ``transfers``), for
    #: the JSON run report, which ingest wrote when the scan closed.
    figures: dict[str, Any] = field(default_factory=dict)
    #: More terminal lines (the transfers between ranks).
    notes: tuple[str, ...] = ()
    #: How the CoR was decided (as stored beside it) and how sure its finder was.
    center_method: str | None = None
    center_confidence: float | None = None
    #: Pixel values repaired, by reason (all ranks).
    repairs: RepairCounts | None = None
    #: One line per iterative stage (iterations per band, final residual/change).
    iterations: tuple[str, ...] = ()
    #: HTTomo's ``save_to_images``: the folder and the number of images written.
    images: tuple[Path, int] | None = None


def keep_newest(outputs: list[ScanOutput], output: ScanOutput) -> None:
    """Append ``output``, dropping the oldest beyond ``MAX_KEPT_OUTPUTS``."""
    outputs.append(output)
    if len(outputs) > MAX_KEPT_OUTPUTS:
        del outputs[: len(outputs) - MAX_KEPT_OUTPUTS]


def check_servable(steps: tuple[PipelineStep, ...], start: StartHeader) -> None:
    """Refuse (:class:`~streamer.errors.ScanFailedError`) a scan the pipeline cannot serve,
    from its ``start`` alone: a fixed CoR off its detector, or a normalisation the pipeline
    cannot do. The same rule on one rank and on R ranks."""
    refusal = center_outside(steps, start.cols)
    if refusal is not None:
        raise ScanFailedError(refusal)
    check_normalisation(steps, start)


def check_normalisation(steps: tuple[PipelineStep, ...], start: StartHeader) -> None:
    """Refuse a scan whose ``start`` announces a normalisation the pipeline cannot do
    (flat/dark stages, but the scan brings no flats: ``air`` or ``none``)."""
    needs = [s for s in sections_of(steps)[0].steps if s.spec.needs_references]
    if needs and (start.normalisation != "flat_dark" or start.flats == 0):
        flats = ("flats: expected at least 1 flat frame, got 0" if start.flats == 0
                 else f"{start.flats} flats")
        raise ScanFailedError(
            f"start.normalisation: the pipeline's stage {needs[0].name!r} (pipeline entry "
            f"at {needs[0].where}) needs flat/dark references, got normalisation "
            f"{start.normalisation!r} with {flats} (serve such scans with a pipeline for "
            "them, e.g. normalize_bg)")


__all__ = ["MAX_KEPT_OUTPUTS", "ScanOutput", "check_normalisation", "check_servable",
           "keep_newest"]
