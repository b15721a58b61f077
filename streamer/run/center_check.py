"""A fixed centre of rotation must lie on the detector.

A CoR of 900 or -3 on a 640-column detector reconstructs without error into a volume of
nonsense that would be marked complete. The detector width is known only once a scan is
open, so ``recon`` checks as soon as it has read the scan's layout (before any frame) and
``run`` when each scan starts (that scan is refused, the service goes on). Valid columns
are ``0 … cols - 1`` (0-based; pixel ``k`` is centred at ``x = k``, see
``docs/explanation/conventions.md``). ``auto`` (``center: null``) is always accepted.
"""

from __future__ import annotations

from collections.abc import Sequence

from streamer.errors import ConfigError
from streamer.pipeline.config import PipelineStep


def center_outside(steps: Sequence[PipelineStep], cols: int) -> str | None:
    """Why a reconstruction step's fixed ``center`` is off a ``cols``-column detector,
    or ``None`` when every fixed centre is on it."""
    for step in steps:
        if not step.spec.needs_angles or "center" not in type(step.params).model_fields:
            continue
        center = dict(step.params)["center"]
        if center is not None and not 0 <= float(center) <= cols - 1:
            return (f"{step.name}: center: expected a detector column in [0, {cols - 1}] "
                    f"(the detector has {cols} columns), got {float(center):g}")
    return None


def check_center(steps: Sequence[PipelineStep], cols: int, where: str) -> None:
    """Raise :class:`ConfigError` (prefixed with ``where``) if a fixed centre is off the
    detector (:func:`center_outside`)."""
    problem = center_outside(steps, cols)
    if problem is not None:
        raise ConfigError(f"{where}: {problem}; give a column on the detector or "
                          "--center auto")
