"""Which pipelines can reconstruct while the scan arrives, and why not when they cannot.

A pipeline *streams* when every stage before its reconstructor is angle-local (its
output for one projection depends only on that projection and the scan's references:
:meth:`stages.spec.StageSpec.is_angle_local`) and its reconstructor has a streaming form
(:class:`stages.recon.streaming.StreamingFbp` for ``fourier_fbp``): corrected projection
blocks then go into the reconstruction as they arrive, and at the last frame only the last
block's share and the final transform remain. Otherwise (Vo's ring removal or CoR finder,
a temporal dezinger, an iterative reconstructor …) the sinograms are kept and
reconstructed when the scan closes, band by band. Stages after the reconstructor work on
finished slices and do not matter here.
See ``docs/explanation/streaming-reconstruction.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from streamer.pipeline.config import PipelineStep

__all__ = ["STREAMING_BACKENDS", "STREAMING_RECONSTRUCTORS", "StreamingKind", "streaming_kind"]

#: Reconstructors with a streaming form (the accumulator of stages.recon.streaming).
STREAMING_RECONSTRUCTORS = frozenset({"fourier_fbp"})
#: Backends whose array module holds the streaming accumulators (numpy on the host, CuPy
#: on a GPU: the host blocks are uploaded as they arrive, the band comes back at finish).
STREAMING_BACKENDS = frozenset({"numpy", "cupy"})


@dataclass(frozen=True)
class StreamingKind:
    """How a pipeline's reconstruction is scheduled.

    ``streaming``: whether it advances as projection blocks arrive; ``reconstructor``:
    the first stage that takes the angles (``None`` when the pipeline has none);
    ``blockers``: one reason per step that forces reconstruction at close.
    """

    streaming: bool
    reconstructor: str | None
    blockers: tuple[str, ...]

    def describe(self) -> str:
        """One line for ``tomo-streamer check``."""
        if self.reconstructor is None:
            return "reconstruction: none in the pipeline (nothing to stream)"
        if self.streaming:
            return (
                f"reconstruction: streaming ({self.reconstructor} advances as projection "
                "blocks arrive: every stage before it is angle-local)"
            )
        return "reconstruction: at close, band by band (" + "; ".join(self.blockers) + ")"


def streaming_kind(steps: Sequence[PipelineStep]) -> StreamingKind:
    """Classify ``steps`` (a validated pipeline, with its reconstructor appended if any)."""
    blockers: list[str] = []
    for number, step in enumerate(steps, 1):
        if step.spec.needs_angles:
            if step.name not in STREAMING_RECONSTRUCTORS:
                blockers.append(
                    f"step {number} {step.name} has no streaming form (streaming: "
                    f"{', '.join(sorted(STREAMING_RECONSTRUCTORS))})"
                )
            elif step.backend not in STREAMING_BACKENDS:
                blockers.append(
                    f"step {number} {step.name} runs on backend {step.backend!r} (its "
                    f"streaming form runs on {' or '.join(sorted(STREAMING_BACKENDS))})"
                )
            return StreamingKind(not blockers, step.name, tuple(blockers))
        if step.spec.finds_center is not None:
            blockers.append(
                f"step {number} {step.name} finds the CoR from whole sinograms (give the "
                "CoR to stream)"
            )
        elif not step.spec.is_angle_local(step.params):
            blockers.append(f"step {number} {step.name} needs whole sinograms")
    return StreamingKind(False, None, tuple(blockers))
