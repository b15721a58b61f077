"""httomolib(gpu)'s ``misc.utils.data_checker``: NaN/±inf to zero and a zeros check, with
every finding in the scan's counts.

Upstream sets NaN and ±inf to 0 (``infsnans_correct``) and, with ``zeros_warning``,
counts the zeros and prints a warning when they are half the data or more; both print
only a line (``verbosity``) and report nothing else. Here the step:

* sets each NaN/±inf to 0 and counts it in the scan's repair counts
  (``nonfinite_zeroed``), so the run's report, its warning threshold and the output file's
  ``repaired_*`` attributes show it; with ``infsnans_correct: false`` they are left in
  place and counted as observed (``nonfinite_kept``: the executor's own repair after the
  projection section still catches them, counted there);
* with ``zeros_warning``, counts the values checked and the zeros among them (observed
  ``checked`` / ``zeros``); 50 % zeros or more is a warning of the run (terminal and
  report), per scan rather than per block.

``verbosity`` and ``data_to_method_name`` are accepted (the counts are kept whatever
they say; the name labels nothing here, the step's position in the pipeline does).
The step runs in whichever section it is placed (HTTomo's ``all``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from stages.backends.xp import array_module
from stages.checks import float_block
from stages.prep.repair import CHECKED, ZEROS, RepairCounts
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory

__all__ = ["NONFINITE_KEPT", "NONFINITE_ZEROED", "SPECS", "data_checker"]

#: Repair-count key: NaN/±inf values set to 0.
NONFINITE_ZEROED = "nonfinite_zeroed"
#: Observation key: NaN/±inf values seen and left (``infsnans_correct: false``).
NONFINITE_KEPT = "nonfinite_kept"


class DataCheckerParams(StageParams):
    """httomolib(gpu)'s ``data_checker`` (template defaults)."""

    infsnans_correct: bool = True
    zeros_warning: bool = False
    data_to_method_name: str | None = None
    verbosity: bool = True


def data_checker(
    block: npt.NDArray[Any], *, infsnans_correct: bool = True, zeros_warning: bool = False,
    data_to_method_name: str | None = None, verbosity: bool = True,
    repairs: RepairCounts | None = None,
) -> npt.NDArray[np.float32]:
    """NaN/±inf to 0 and the counts of the module notes.

    Parameters
    ----------
    block : ndarray, 3-D
        Any block (projection, sinogram or slices); any unit.
    repairs : RepairCounts, optional
        The scan's counts. Without them (a caller that keeps none) the values are still
        corrected; the pipeline executor always passes them.

    Returns
    -------
    ndarray, float32, same shape
        A copy with the non-finite values zeroed (or unchanged with
        ``infsnans_correct: false``).
    """
    data = float_block(block, "data_checker")
    xp = array_module(data)
    bad = ~xp.isfinite(data)
    found = int(bad.sum())
    out: npt.NDArray[np.float32] = data
    if found and infsnans_correct:
        out = xp.where(bad, xp.zeros_like(data), data)
    if repairs is not None:
        if infsnans_correct:
            repairs.add(NONFINITE_ZEROED, found)
        else:
            repairs.observe(NONFINITE_KEPT, found)
        if zeros_warning:
            repairs.observe(CHECKED, int(data.size))
            repairs.observe(ZEROS, int((out == 0).sum()))
    return out if out is not block else xp.array(out, copy=True)


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="data_checker", fn=data_checker, pattern=Pattern.ALL,
        angle_local=True,  # value by value
        params=DataCheckerParams, counts_repairs=True, device=True,
        memory=scaled_memory(3.5),  # input, float32 copy, mask, result
        summary="NaN/inf to 0 and a zeros check, counted in the run's repairs and warnings "
        "(httomolib/httomolibgpu data_checker)",
        aliases=("httomolib.misc.utils.data_checker", "httomolibgpu.misc.utils.data_checker"),
    ),
)
