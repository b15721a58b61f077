"""The CoR-finder pipeline steps, in HTTomo's names and parameters.

``find_center_vo`` (httomolibgpu, httomolib, tomopy) runs once per scan on the corrected
projections and sets the ``center`` of the reconstruction; the data pass through
unchanged. It goes through the one CoR policy, :func:`stages.recon.center_policy.find_center`
(window clamped to the detector, 0°/180° cross-check, confidence and warnings), so
HTTomo's template defaults (``smin: -50, smax: 50``) find the right centre on narrow
detectors too instead of a detector edge.

Parameters, as httomolibgpu 1.3 / tomopy: ``ind`` (row; ``null`` or ``mid`` = middle),
``average_radius`` (rows averaged around ``ind``), ``cor_initialisation_value`` (centre
of the window; default the detector middle), ``smin``/``smax`` (window relative to it,
px), ``srad`` (fine radius), ``step`` (fine step), ``ratio`` (sample/detector width, sets
Vo's mask), ``drop`` (mask rows dropped around the centre).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from stages.recon.center_360 import find_center_360
from stages.recon.center_policy import (
    LOW_CONFIDENCE,
    CorEstimate,
    find_center,
    find_center_from_pair,
)
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory, unchanged
from streamer.errors import StageError

__all__ = ["SPECS", "FindCenter360Params", "FindCenterPcParams", "FindCenterVoParams"]


class FindCenterVoParams(StageParams):
    """Parameters of the ``find_center_vo`` step (httomolibgpu's names and defaults)."""

    ind: int | Literal["mid"] | None = None
    average_radius: int = Field(default=0, ge=0)
    cor_initialisation_value: float | None = None
    smin: float = -50.0
    smax: float = 50.0
    srad: float = Field(default=6.0, gt=0)
    step: float = Field(default=0.25, gt=0)
    ratio: float = Field(default=0.5, gt=0, le=1)
    drop: int = Field(default=20, ge=0)


def center_of_scan(
    projections: npt.NDArray[np.float32], angles_deg: npt.NDArray[np.float64], params: Any
) -> CorEstimate:
    """Once per scan: the CoR policy with the step's parameters."""
    row = None if params.ind in (None, "mid") else int(params.ind)
    return find_center(
        projections, angles_deg, row=row, average_radius=params.average_radius,
        smin=min(params.smin, params.smax), smax=max(params.smin, params.smax),
        around=params.cor_initialisation_value, step=params.step, srad=params.srad,
        ratio=params.ratio, drop=params.drop,
    )


class FindCenterPcParams(StageParams):
    """httomolibgpu's ``find_center_pc``: ``proj1``/``proj2`` ``auto`` (the first
    projection and the one 180° later); ``tol`` accepted (our sub-pixel refinement is a
    parabola through the correlation peak); ``rotc_guess`` an expected centre."""

    proj1: Literal["auto"] = "auto"
    proj2: Literal["auto"] = "auto"
    tol: float = Field(default=0.5, gt=0)
    rotc_guess: float | None = None


def center_from_pair(
    projections: npt.NDArray[np.float32], angles_deg: npt.NDArray[np.float64], params: Any,
    *, pair: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None,
) -> CorEstimate:
    """Once per scan: the 0°/180° pair, cross-checked with Vo's method; ``pair``: the
    whole two projections when ``projections`` holds only some rows (R ranks)."""
    return find_center_from_pair(projections, angles_deg, around=params.rotc_guess,
                                 pair=pair)


class FindCenter360Params(StageParams):
    """httomolibgpu's ``find_center_360``: ``ind`` the row (``null``: row 0, as upstream;
    ``mid``: the middle), ``win_width``, ``side`` (``null``: automatic), ``denoise``,
    ``norm``; ``use_overlap`` only ``false`` (the blended metric is not implemented)."""

    ind: int | Literal["mid"] | None = None
    win_width: int = Field(default=10, ge=1)
    side: Literal["left", "right"] | None = None
    denoise: bool = True
    norm: bool = False
    use_overlap: Literal[False] = False


def center_360_of_scan(
    projections: npt.NDArray[np.float32], angles_deg: npt.NDArray[np.float64], params: Any
) -> CorEstimate:
    """Once per scan: :func:`stages.recon.center_360.find_center_360` on one row.

    The confidence is 1 unless the scan does not span 360° (± one step) or the metric's
    minimum lies at the end of the searched positions (then 0.3, with a warning)."""
    rows, cols = projections.shape[1:]
    row = rows // 2 if params.ind == "mid" else 0 if params.ind is None else int(params.ind)
    if not 0 <= row < rows:
        raise StageError(f"stage 'find_center_360': ind: expected a row in 0 … {rows - 1}, "
                         f"got {row}")
    found = find_center_360(projections[:, row, :], win_width=params.win_width,
                            side=params.side, denoise=params.denoise, norm=params.norm)
    warnings = []
    span = float(np.ptp(angles_deg)) if angles_deg.size else 0.0
    step = span / max(angles_deg.size - 1, 1)
    if abs(span - 360.0) > step + 1e-6 and abs(span + step - 360.0) > 1e-6:
        warnings.append(f"find_center_360 expects a 360° scan; the angles span {span:.1f}°")
    if found.at_edge:
        warnings.append("find_center_360: the best overlap lies at the end of the search")
    notes = (f"overlap {found.overlap:.2f} px on the {found.side}, window centre at column "
             f"{found.overlap_position:.2f}",)
    confidence = 1.0 if not warnings else min(0.3, LOW_CONFIDENCE)
    outputs = (("overlap", found.overlap), ("side", found.side),
               ("overlap_position", found.overlap_position))
    return CorEstimate(found.cor, confidence, "360-overlap", (0.0, float(cols - 1)), notes,
                       tuple(warnings), outputs)


SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="find_center_vo",
        angle_local=False,  # the whole sinogram
        fn=unchanged,
        pattern=Pattern.SINOGRAM,
        params=FindCenterVoParams,
        # runs once per scan on one sinogram: negligible against a block
        memory=scaled_memory(0.01),
        summary="Centre of rotation by Vo's method, once per scan, window clamped to the "
        "detector and cross-checked with the 0°/180° pair; sets the reconstruction's "
        "center (data pass through unchanged).",
        finds_center=center_of_scan,
        aliases=("httomolibgpu.recon.rotation.find_center_vo",
                 "httomolib.recon.rotation.find_center_vo",
                 "tomopy.recon.rotation.find_center_vo"),
    ),
    StageSpec(
        name="find_center_pc",
        angle_local=False,  # the opposite pair: the scan's end (see streamer.run.center_pair)
        fn=unchanged,
        pattern=Pattern.SINOGRAM,
        params=FindCenterPcParams,
        memory=scaled_memory(0.01),
        summary="Centre of rotation from the 0°/180° projection pair (mirrored "
        "correlation), cross-checked with Vo's method; sets the reconstruction's center.",
        finds_center=center_from_pair,
        aliases=("httomolibgpu.recon.rotation.find_center_pc",
                 "tomopy.recon.rotation.find_center_pc"),
    ),
    StageSpec(
        name="find_center_360",
        angle_local=False,  # the whole 360° sinogram
        fn=unchanged,
        pattern=Pattern.SINOGRAM,
        params=FindCenter360Params,
        memory=scaled_memory(0.01),
        summary="Centre of rotation of an offset-axis 360° scan from the overlap of its two "
        "halves (Vo 2021, algotom/httomolibgpu), once per scan; sets the reconstruction's "
        "center (data pass through unchanged); its overlap and side feed sino_360_to_180.",
        finds_center=center_360_of_scan,
        aliases=("httomolibgpu.recon.rotation.find_center_360",),
    ),
)
