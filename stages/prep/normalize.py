"""Flat/dark-field normalisation and the minus-log transform (projection blocks).

Every stage here works on ``projection`` blocks ``(angles, rows, cols)`` and returns a
C-contiguous float32 block. References (``darks``, ``flats``) are ``(n, rows, cols)``
stacks of raw detector frames in counts; ``n`` may be 0 for darks (dark taken as 0).

Reference behaviour (checked against tomopy's unit-test outputs, see the tests):

* :func:`normalize` is ``tomopy.prep.normalize.normalize`` bit for bit (float32 means,
  float32 arithmetic);
* :func:`normalize_nf` is ``tomopy.prep.normalize.normalize_nf`` computed in float64 and
  returned as float32 (tomopy's reference output is float64; the difference is the
  float32 rounding, below 6e-8 relative);
* :func:`normalize_bg` is ``tomopy.prep.normalize.normalize_bg`` (float32 arithmetic);
* :func:`minus_log` is ``tomopy.prep.normalize.minus_log`` for positive input.

Pixels without signal are repaired, not clamped (:mod:`stages.prep.repair`): before
``-log``, a transmission that is ``<= 0`` or not finite, or whose pixel's flat is no
brighter than its dark, is replaced by linear interpolation from the nearest valid pixels
along its detector row, and counted (``repairs``, per scan). Without ``-log`` only the
non-finite values and the dead-flat pixels are repaired: a small negative transmission
is noise, kept as tomopy keeps it. Where every input is valid, the results are tomopy's.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import AliasChoices, Field

from stages.backends.xp import array_module
from stages.prep import device_correct
from stages.prep.kernel import (
    Correction,
    RawReferences,
    correct,
    correct_raw,
    mean_of_frames,
)
from stages.prep.repair import NO_SIGNAL, RepairCounts
from stages.spec import Pattern, StageParams, StageSpec, scaled_memory
from streamer.errors import StageError

Averaging = Literal["mean", "median"]

#: The smallest normal float32 (``-log`` of it is about 87.3). Kept for callers that
#: clamp; our stages (and the httomolibgpu adapter) repair transmissions ``<= 0`` from
#: their neighbours instead (:mod:`stages.prep.repair`, on a device
#: :mod:`stages.prep.device_correct`) and count them.
LOG_FLOOR = np.float32(np.finfo(np.float32).tiny)


# --------------------------------------------------------------------------- helpers


def _check_block(stage: str, block: npt.NDArray[Any]) -> None:
    if getattr(block, "dtype", None) is None or getattr(block, "ndim", None) != 3:
        shape = getattr(block, "shape", type(block).__name__)
        raise StageError(f"stage {stage!r}: block: expected a 3-D projection block, got {shape}")


def _check_refs(
    stage: str, name: str, refs: npt.NDArray[Any] | None, block: npt.NDArray[Any]
) -> npt.NDArray[Any]:
    """Check a reference stack is ``(n, rows, cols)`` matching the block's frames; it is
    returned in the block's namespace (uploaded, explicitly, if the block is on a device
    and the references are not)."""
    rows, cols = block.shape[1:]
    if refs is None:
        raise StageError(
            f"stage {stage!r}: {name}: expected an array of shape (n, {rows}, {cols}), got None"
        )
    refs = array_module(block).asarray(refs)
    if refs.ndim != 3 or refs.shape[1:] != (rows, cols):
        raise StageError(
            f"stage {stage!r}: {name}: expected shape (n, {rows}, {cols}) matching the "
            f"block's frames, got {refs.shape}"
        )
    return refs


def _average(refs: npt.NDArray[Any], averaging: str) -> npt.NDArray[np.float32]:
    """Mean (float32 accumulation, as tomopy) or median over frames of ``refs``."""
    xp = array_module(refs)
    if averaging == "median":
        median: npt.NDArray[np.float32] = xp.median(
            refs.astype(np.float32, copy=False), axis=0).astype(np.float32)
        return median
    mean: npt.NDArray[np.float32] = xp.mean(refs, axis=0, dtype=np.float32)
    return mean


def _dark_reference(
    stage: str, darks: npt.NDArray[Any] | None, block: npt.NDArray[Any], averaging: str
) -> npt.NDArray[np.float32]:
    darks = _check_refs(stage, "darks", darks, block)
    if darks.shape[0] == 0:
        zeros: npt.NDArray[np.float32] = array_module(block).zeros(block.shape[1:],
                                                                   dtype=np.float32)
        return zeros
    return _average(darks, averaging)


def _flat_stack(
    stage: str, flats: npt.NDArray[Any] | None, block: npt.NDArray[Any]
) -> npt.NDArray[Any]:
    flats = _check_refs(stage, "flats", flats, block)
    if flats.shape[0] == 0:
        raise StageError(
            f"stage {stage!r}: flats: expected at least 1 flat frame, got 0 "
            "(use normalize_bg for scans without flats)"
        )
    return flats


#: Flats whose signal (flat − dark) is not positive in more than this share of pixels are
#: refused: empty flats, a closed shutter, or flats and darks swapped.
_MAX_DARK_FLAT_SHARE = 0.5


def _check_flat_signal(stage: str, flat: npt.NDArray[np.float32],
                       dark: npt.NDArray[np.float32]) -> None:
    """Refuse flats that carry no beam: the correction would divide by ``eps``."""
    share = float(array_module(flat).mean(flat - dark <= 0))
    if share > _MAX_DARK_FLAT_SHARE:
        raise StageError(
            f"stage {stage!r}: flats: expected flat − dark > 0 in most pixels, got <= 0 in "
            f"{100 * share:.0f} % of them (mean flat {float(flat.mean()):.4g}, mean dark "
            f"{float(dark.mean()):.4g}): empty flats, a closed shutter, or flats and darks "
            "swapped?"
        )


def _correct(
    block: npt.NDArray[Any],
    dark: npt.NDArray[np.float32],
    denom: npt.NDArray[np.float32],
    dead: npt.NDArray[np.bool_],
    *,
    cutoff: float | None,
    minus_log: bool,
    nonnegative: bool,
    remove_nans: bool,
    repairs: RepairCounts | None,
) -> npt.NDArray[np.float32]:
    """``(block - dark) / denom``, then in this order the repair of pixels without signal
    (``dead``: flat <= dark), cutoff, -log, nonnegativity and NaN removal; fused and
    threaded (:mod:`stages.prep.kernel`: the same float32 operations, the same results);
    a block on a device goes through :mod:`stages.prep.device_correct` (the same
    operations as whole-block expressions, repair included, on the device)."""
    steps = Correction(cutoff=cutoff, minus_log=minus_log, nonnegative=nonnegative,
                       remove_nans=remove_nans)
    out: npt.NDArray[np.float32]
    if array_module(block) is not np:
        out, repaired = device_correct.correct(block, dark, denom, dead, steps)
    else:
        out, repaired = correct(block, dark, denom, dead if dead.any() else None, steps)
    if repairs is not None:
        repairs.add(NO_SIGNAL, repaired)
    return out


def _normalize_host(
    block: npt.NDArray[Any],
    darks: npt.NDArray[Any],
    flats: npt.NDArray[Any],
    *,
    averaging: str,
    eps: float,
    repairs: RepairCounts | None,
    steps: Correction,
) -> npt.NDArray[np.float32]:
    """:func:`normalize` of a host block: the references are averaged in the kernel, band
    by band on its threads (:func:`stages.prep.kernel.correct_raw`), not in extra
    whole-frame passes first; the same values as :func:`_dark_reference` and
    :func:`_average` give. Flats without beam are refused once the shares are known."""

    def average(stack: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        return mean_of_frames(stack) if averaging == "mean" else _average(stack, averaging)

    result = correct_raw(block, RawReferences(darks, flats, average, eps), steps)
    rows, cols = block.shape[1:]
    if result.flat_not_above_dark > _MAX_DARK_FLAT_SHARE * rows * cols:
        # the message's means: whole frames, on this error path only
        _check_flat_signal("normalize", _average(flats, averaging),
                           _dark_reference("normalize", darks, block, averaging))
    if repairs is not None:
        repairs.add(NO_SIGNAL, result.repaired)
    return result.out


# ------------------------------------------------------------------------- normalize


class NormalizeParams(StageParams):
    """Parameters of :func:`normalize` (``nonnegativity`` is accepted for ``nonnegative``)."""

    averaging: Averaging = "mean"
    cutoff: float | None = Field(default=None, gt=0)
    minus_log: bool = False
    nonnegative: bool = Field(
        default=False, validation_alias=AliasChoices("nonnegative", "nonnegativity")
    )
    remove_nans: bool = False
    eps: float = Field(default=1e-6, gt=0)


def normalize(
    block: npt.NDArray[Any],
    *,
    darks: npt.NDArray[Any] | None,
    flats: npt.NDArray[Any] | None,
    averaging: Averaging = "mean",
    cutoff: float | None = None,
    minus_log: bool = False,
    nonnegative: bool = False,
    remove_nans: bool = False,
    eps: float = 1e-6,
    repairs: RepairCounts | None = None,
) -> npt.NDArray[np.float32]:
    """Flat/dark-field correction: ``(block - dark) / max(flat - dark, eps)``.

    Parameters
    ----------
    block : ndarray of shape (angles, rows, cols)
        Raw projections in detector counts (any real dtype).
    darks : ndarray of shape (n, rows, cols)
        Dark frames in counts; ``n = 0`` means a dark of 0.
    flats : ndarray of shape (m, rows, cols)
        Flat frames in counts, ``m >= 1``.
    averaging : {"mean", "median"}
        How the reference frames are combined over ``n`` (``m``). The mean accumulates
        in float32, as tomopy does.
    cutoff : float, optional
        Upper limit of the transmission (applied before ``minus_log``).
    minus_log : bool
        Return ``-log(T)``; transmissions ``<= 0`` or not finite are first repaired from
        their row neighbours (:mod:`stages.prep.repair`), so the result is finite.
    nonnegative : bool
        Set negative results (after ``minus_log``) to 0, as httomolibgpu's
        ``nonnegativity``.
    remove_nans : bool
        Replace NaN and ±inf in the result by 0.
    eps : float
        Lower bound of the denominator ``flat - dark`` (counts).
    repairs : RepairCounts, optional
        Counts the repaired values (key ``no_signal``); the executor passes the scan's.

    Returns
    -------
    ndarray of shape (angles, rows, cols), float32, C-contiguous
        Transmission (unitless), or ``-log`` of it.

    Notes
    -----
    With the defaults and valid input (every flat above its dark, finite data) this is
    ``tomopy.prep.normalize.normalize(block, flats, darks)`` exactly (same float32
    operations in the same order). Pixels whose flat is not above their dark are
    repaired from their row neighbours (tomopy divides by ``eps`` there).
    """
    _check_block("normalize", block)
    flat_frames = _flat_stack("normalize", flats, block)
    if array_module(block) is np:
        return _normalize_host(block, _check_refs("normalize", "darks", darks, block),
                               flat_frames, averaging=averaging, eps=eps, repairs=repairs,
                               steps=Correction(cutoff=cutoff, minus_log=minus_log,
                                                nonnegative=nonnegative,
                                                remove_nans=remove_nans))
    dark = _dark_reference("normalize", darks, block, averaging)
    flat = _average(flat_frames, averaging)
    _check_flat_signal("normalize", flat, dark)
    denom = flat - dark
    dead = ~(denom > 0)
    denom = array_module(denom).maximum(denom, np.float32(eps))
    return _correct(block, dark, denom, dead, cutoff=cutoff, minus_log=minus_log,
                    nonnegative=nonnegative, remove_nans=remove_nans, repairs=repairs)


# ------------------------------------------------------- flats interpolated in time


def flat_groups(
    flat_frames: npt.NDArray[Any],
    flat_indices: npt.ArrayLike,
    averaging: Averaging = "mean",
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32]]:
    """Split flats into runs of consecutive frame indices and average each run.

    Parameters
    ----------
    flat_frames : ndarray of shape (n, rows, cols)
        Flat frames in counts, in acquisition order.
    flat_indices : array_like of int, shape (n,)
        Frame index (position in the scan's acquisition sequence) of each flat; must be
        strictly increasing. A new group starts wherever the index jumps by more than 1.
    averaging : {"mean", "median"}
        How each group is combined.

    Returns
    -------
    positions : ndarray of shape (g,), float64
        Mean frame index of each group.
    references : ndarray of shape (g, rows, cols), float32
        One averaged flat per group.
    """
    stage = "interpolated_flats"
    xp = array_module(flat_frames)
    flat_frames = xp.asarray(flat_frames)
    indices = np.asarray(flat_indices)
    if flat_frames.ndim != 3 or flat_frames.shape[0] == 0:
        raise StageError(
            f"stage {stage!r}: flat_frames: expected shape (n>=1, rows, cols), "
            f"got {flat_frames.shape}"
        )
    if indices.shape != (flat_frames.shape[0],) or not np.issubdtype(indices.dtype, np.integer):
        raise StageError(
            f"stage {stage!r}: flat_indices: expected {flat_frames.shape[0]} integers, "
            f"got shape {indices.shape} dtype {indices.dtype}"
        )
    if np.any(np.diff(indices) <= 0):
        raise StageError(
            f"stage {stage!r}: flat_indices: expected strictly increasing, got {indices.tolist()}"
        )
    starts = np.flatnonzero(np.diff(indices) > 1) + 1
    bounds = [0, *starts.tolist(), len(indices)]
    positions = np.array(
        [indices[a:b].mean() for a, b in pairwise(bounds)],
        dtype=np.float64,
    )
    references = xp.stack(
        [_average(flat_frames[a:b], averaging) for a, b in pairwise(bounds)]
    )
    return positions, references


def interpolated_flats(
    flat_frames: npt.NDArray[Any],
    flat_indices: npt.ArrayLike,
    frame_indices: npt.ArrayLike,
    averaging: Averaging = "mean",
) -> npt.NDArray[np.float32]:
    """One flat per projection, linearly interpolated in time between flat groups.

    Scans such as DIAD's take flats before and after the projections, and the beam
    drifts in between (DIAD k11-18014: the first 50 flats average 44 975 counts, the
    last 50 average 45 660). The flats are grouped into runs of consecutive frame
    indices (:func:`flat_groups`); a projection between two groups gets
    ``(1 - w) * before + w * after`` with ``w`` its fractional position between the
    groups' mean indices; one before the first (after the last) group gets that group.

    Parameters
    ----------
    flat_frames : ndarray of shape (n, rows, cols)
        Flat frames in counts.
    flat_indices : array_like of int, shape (n,)
        Acquisition frame index of each flat (strictly increasing).
    frame_indices : array_like of int, shape (angles,)
        Acquisition frame index of each projection of the block.
    averaging : {"mean", "median"}
        How each group of flats is combined.

    Returns
    -------
    ndarray of shape (angles, rows, cols), float32, C-contiguous
        The flat to use for each projection (counts).
    """
    positions, references = flat_groups(flat_frames, flat_indices, averaging)
    frames = np.asarray(frame_indices, dtype=np.float64)
    if frames.ndim != 1:
        raise StageError(
            "stage 'interpolated_flats': frame_indices: expected a 1-D sequence, "
            f"got shape {frames.shape}"
        )
    xp = array_module(references)
    if len(positions) == 1:
        single: npt.NDArray[np.float32] = xp.ascontiguousarray(
            xp.broadcast_to(references[0], (len(frames), *references.shape[1:])))
        return single
    after = np.clip(np.searchsorted(positions, frames, side="right"), 1, len(positions) - 1)
    before = after - 1
    span = positions[after] - positions[before]
    weight = np.clip((frames - positions[before]) / span, 0.0, 1.0).astype(np.float32)
    w = xp.asarray(weight)[:, None, None]
    out = (1 - w) * references[xp.asarray(before)] + w * references[xp.asarray(after)]
    result: npt.NDArray[np.float32] = xp.ascontiguousarray(out, dtype=np.float32)
    return result


def normalize_per_frame(
    block: npt.NDArray[Any],
    *,
    darks: npt.NDArray[Any] | None,
    flat_per_frame: npt.NDArray[Any],
    averaging: Averaging = "mean",
    cutoff: float | None = None,
    minus_log: bool = False,
    nonnegative: bool = False,
    remove_nans: bool = False,
    eps: float = 1e-6,
    repairs: RepairCounts | None = None,
) -> npt.NDArray[np.float32]:
    """:func:`normalize` with one flat per projection (from :func:`interpolated_flats`).

    The registered stage is :func:`normalize_interpolated`, which builds
    ``flat_per_frame`` from the block's frame indices.

    Parameters
    ----------
    block : ndarray of shape (angles, rows, cols)
        Raw projections in counts.
    darks : ndarray of shape (n, rows, cols)
        Dark frames (``n = 0``: dark of 0), combined with ``averaging``.
    flat_per_frame : ndarray of shape (angles, rows, cols)
        The flat for each projection, in counts.
    averaging, cutoff, minus_log, nonnegative, remove_nans, eps, repairs
        As in :func:`normalize`.

    Returns
    -------
    ndarray of shape (angles, rows, cols), float32, C-contiguous
    """
    stage = "normalize_per_frame"
    _check_block(stage, block)
    flat_per_frame = array_module(block).asarray(flat_per_frame)
    if flat_per_frame.shape != block.shape:
        raise StageError(
            f"stage {stage!r}: flat_per_frame: expected shape {block.shape} (one flat per "
            f"projection), got {flat_per_frame.shape}"
        )
    dark = _dark_reference(stage, darks, block, averaging)
    denom = flat_per_frame.astype(np.float32) - dark
    dead = ~(denom > 0)
    denom = array_module(denom).maximum(denom, np.float32(eps))
    return _correct(block, dark, denom, dead, cutoff=cutoff, minus_log=minus_log,
                    nonnegative=nonnegative, remove_nans=remove_nans, repairs=repairs)


# ---------------------------------------------------------------------- normalize_nf


class NormalizeNfParams(StageParams):
    """Parameters of :func:`normalize_nf`."""

    flat_loc: tuple[int, ...] = Field(min_length=1)
    averaging: Averaging = "median"
    cutoff: float | None = Field(default=None, gt=0)


def normalize_nf(
    block: npt.NDArray[Any],
    *,
    darks: npt.NDArray[Any] | None,
    flats: npt.NDArray[Any] | None,
    flat_loc: tuple[int, ...] | list[int],
    averaging: Averaging = "median",
    cutoff: float | None = None,
    projection_indices: npt.ArrayLike | None = None,
) -> npt.NDArray[np.float32]:
    """Normalise each projection by the nearest group of flats (tomopy ``normalize_nf``).

    The ``m`` flats are split, in order, into ``len(flat_loc)`` equal groups; group ``k``
    was taken at projection index ``flat_loc[k]``. Projection ``i`` uses group ``k`` for
    ``b[k] <= i < b[k+1]``, with ``b[0] = -inf``, ``b[len] = +inf`` and
    ``b[k+1] = int(np.round((flat_loc[k+1] - flat_loc[k]) / 2)) + flat_loc[k]``
    (numpy's round-half-to-even, as tomopy).

    Parameters
    ----------
    block : ndarray of shape (angles, rows, cols)
        Raw projections in counts.
    darks : ndarray of shape (n, rows, cols)
        Dark frames, combined by their mean (``n = 0``: dark of 0).
    flats : ndarray of shape (m, rows, cols)
        All flat groups one after the other; ``m`` must be a multiple of
        ``len(flat_loc)`` (tomopy silently drops the remainder; we refuse it).
    flat_loc : sequence of int
        Projection index of each flat group, non-decreasing.
    averaging : {"mean", "median"}
        How each flat group is combined (tomopy: median).
    cutoff : float, optional
        Upper limit of the result.
    projection_indices : array_like of int, shape (angles,), optional
        Each frame's projection number in the scan (the runner passes them, so a block
        streamed mid-scan picks the same groups as the whole scan); ``None``: the block
        is the whole scan, ``0 .. angles - 1``.

    Returns
    -------
    ndarray of shape (angles, rows, cols), float32, C-contiguous
        Transmission. Computed in float64 and rounded once to float32; tomopy's
        reference output is float64 and agrees to float32 rounding (< 6e-8 relative).
    """
    stage = "normalize_nf"
    _check_block(stage, block)
    flat_frames = _flat_stack(stage, flats, block)
    loc = [int(x) for x in flat_loc]
    groups = len(loc)
    if groups == 0 or any(b < a for a, b in pairwise(loc)):
        raise StageError(
            f"stage {stage!r}: flat_loc: expected a non-empty non-decreasing list, got {loc}"
        )
    if flat_frames.shape[0] % groups != 0:
        raise StageError(
            f"stage {stage!r}: flats: expected a multiple of len(flat_loc)={groups} frames, "
            f"got {flat_frames.shape[0]}"
        )
    per_group = flat_frames.shape[0] // groups
    xp = array_module(block)
    darks_checked = _check_refs(stage, "darks", darks, block)
    dark = (
        xp.zeros(block.shape[1:], dtype=np.float64)
        if darks_checked.shape[0] == 0
        else xp.mean(darks_checked.astype(np.float64), axis=0)
    )
    # Boundaries in scan projection indices, then shifted into the block.
    bounds = [int(np.round((loc[m + 1] - loc[m]) / 2)) + loc[m] for m in range(groups - 1)]
    if projection_indices is None:
        frame = np.arange(block.shape[0], dtype=np.int64)
    else:
        frame = np.asarray(projection_indices, dtype=np.int64)
        if frame.shape != (block.shape[0],):
            raise StageError(
                f"stage {stage!r}: projection_indices: expected {block.shape[0]} integers "
                f"(one per frame), got shape {frame.shape}"
            )
    group_of_frame = np.searchsorted(np.asarray(bounds, dtype=np.int64), frame, side="right")
    out = xp.empty(block.shape, dtype=np.float32)
    for m in range(groups):
        selected = np.flatnonzero(group_of_frame == m)  # host indices, uploaded below
        if not selected.size:
            continue
        chosen = xp.asarray(selected)
        group = flat_frames[m * per_group:(m + 1) * per_group].astype(np.float64)
        flat = xp.median(group, axis=0) if averaging == "median" else xp.mean(group, axis=0)
        denom = xp.maximum(flat - dark, 1e-6)
        out[chosen] = (block[chosen].astype(np.float64) - dark) / denom
    if cutoff is not None:
        out = xp.minimum(out, np.float32(cutoff))
    result: npt.NDArray[np.float32] = out
    return result


# ---------------------------------------------------------------------- normalize_bg


class NormalizeBgParams(StageParams):
    """Parameters of :func:`normalize_bg`."""

    air: int = Field(default=1, ge=1)


def normalize_bg(block: npt.NDArray[Any], *, air: int = 1) -> npt.NDArray[np.float32]:
    """Scale each detector row so its left and right air regions become 1.

    For each projection and row, ``left`` (``right``) is the mean of the ``air``
    leftmost (rightmost) pixels, replaced by 1 where ``<= 0``; the row is divided by
    the straight line from ``left`` at column 0 to ``right`` at column ``cols - 1``.
    This is the "air" normalisation for scans without flats, and it is
    ``tomopy.prep.normalize.normalize_bg`` (float32 arithmetic).

    Parameters
    ----------
    block : ndarray of shape (angles, rows, cols)
        Projections (counts or transmission), ``cols >= 2``.
    air : int
        Width in pixels of each air region, ``1 <= air <= cols``.

    Returns
    -------
    ndarray of shape (angles, rows, cols), float32, C-contiguous
        Data relative to the air level (unitless).
    """
    stage = "normalize_bg"
    _check_block(stage, block)
    cols = block.shape[2]
    if cols < 2:
        raise StageError(f"stage {stage!r}: block: expected at least 2 columns, got {cols}")
    if not 1 <= air <= cols:
        raise StageError(f"stage {stage!r}: air: expected 1 <= air <= {cols}, got {air}")
    xp = array_module(block)
    out: npt.NDArray[np.float32] = xp.array(block, dtype=np.float32, order="C", copy=True)
    nair = np.float32(air)
    left = out[:, :, :air].sum(axis=2, dtype=np.float32) / nair
    right = out[:, :, cols - air:].sum(axis=2, dtype=np.float32) / nair
    left[left <= 0] = 1
    right[right <= 0] = 1
    slope = (right - left) / np.float32(cols - 1)
    j = xp.arange(cols, dtype=np.float32)
    level = left[:, :, None] + slope[:, :, None] * j
    out /= level
    return out


# ------------------------------------------------------------------------- minus_log


class MinusLogParams(StageParams):
    """:func:`minus_log` takes no parameters."""


def minus_log(
    block: npt.NDArray[Any], *, repairs: RepairCounts | None = None
) -> npt.NDArray[np.float32]:
    """``-log(block)``, values without signal repaired from their row neighbours first.

    Parameters
    ----------
    block : ndarray of shape (angles, rows, cols)
        Transmission (unitless), normally in (0, 1].
    repairs : RepairCounts, optional
        Counts the values ``<= 0`` or not finite that were repaired (key ``no_signal``)
        by linear interpolation along their detector row (:mod:`stages.prep.repair`).

    Returns
    -------
    ndarray of shape (angles, rows, cols), float32, C-contiguous
        Line integrals of the attenuation (unitless), always finite. Equals
        ``tomopy.prep.normalize.minus_log`` wherever the input is positive and finite.
    """
    _check_block("minus_log", block)
    out: npt.NDArray[np.float32]
    if array_module(block) is not np:
        out, repaired = device_correct.correct(block, None, None, None,
                                               Correction(minus_log=True))
    else:
        out, repaired = correct(block, None, None, None, Correction(minus_log=True))
    if repairs is not None:
        repairs.add(NO_SIGNAL, repaired)
    return out


def normalize_interpolated(
    block: npt.NDArray[Any],
    *,
    darks: npt.NDArray[Any] | None,
    flats: npt.NDArray[Any] | None,
    frame_indices: npt.ArrayLike,
    flat_indices: npt.ArrayLike,
    averaging: Averaging = "mean",
    cutoff: float | None = None,
    minus_log: bool = False,
    nonnegative: bool = False,
    remove_nans: bool = False,
    eps: float = 1e-6,
    repairs: RepairCounts | None = None,
) -> npt.NDArray[np.float32]:
    """:func:`normalize` with the flat of each projection interpolated in time.

    For scans with flats before *and* after the projections (DIAD, many fly scans): the
    flats are grouped by runs of consecutive frame indices, each group averaged, and each
    projection gets the linear interpolation between the groups around it
    (:func:`interpolated_flats`), which follows a beam that drifts during the scan.

    Parameters
    ----------
    block : ndarray of shape (angles, rows, cols)
        Raw projections in counts.
    darks, flats : ndarray of shape (n, rows, cols)
        Reference frames; ``flats`` must not be empty.
    frame_indices : array_like of shape (angles,)
        Frame index of each projection of ``block``.
    flat_indices : array_like of shape (n_flats,)
        Frame index of each flat.
    averaging, cutoff, minus_log, nonnegative, remove_nans, eps, repairs
        As in :func:`normalize`.

    Returns
    -------
    ndarray of shape (angles, rows, cols), float32
    """
    if flats is None or flats.shape[0] == 0:
        raise StageError(
            "stage 'normalize_interpolated': flats: expected at least 1 flat frame, got 0 "
            "(use normalize_bg for scans without flats)"
        )
    per_frame = interpolated_flats(flats, flat_indices, frame_indices, averaging)
    return normalize_per_frame(
        block, darks=darks, flat_per_frame=per_frame, averaging=averaging, cutoff=cutoff,
        minus_log=minus_log, nonnegative=nonnegative, remove_nans=remove_nans, eps=eps,
        repairs=repairs,
    )


# ---------------------------------------------------------------------------- specs

SPECS: tuple[StageSpec, ...] = (
    StageSpec(
        name="normalize_interpolated",
        angle_local=True,  # per projection, given the references
        fn=normalize_interpolated,
        pattern=Pattern.PROJECTION,
        params=NormalizeParams,
        # as normalize, plus one flat per projection (1 block)
        memory=scaled_memory(4),
        summary="flat/dark-field correction with each projection's flat interpolated "
        "in time between the flat groups around it (flats at start and end)",
        needs_references=True,
        needs_frame_indices=True,
        counts_repairs=True,
        device=True,
        # block, float32 output, per-frame flat and divisor (2), bool masks
        device_memory=scaled_memory(5),
    ),
    StageSpec(
        name="normalize",
        angle_local=True,  # per projection, given the references
        fn=normalize,
        pattern=Pattern.PROJECTION,
        params=NormalizeParams,
        # the float32 output (1) plus the caller's block when it is float32 (1);
        # references are frame-sized, not block-sized. The kernel's temporaries (a band
        # of the averaged references, a few MiB) and the repair's masks are per band or
        # tile (stages.prep.kernel), so the third block is headroom kept from the
        # whole-block implementation.
        memory=scaled_memory(3),
        summary="flat/dark-field correction (T = (P - dark) / (flat - dark)), optional -log; "
        "pixels without signal repaired from their row neighbours",
        needs_references=True,
        counts_repairs=True,
        device=True,
        # block, float32 output (corrected in place), the bad-value mask (1/4) and its
        # negation; the repair's temporaries are per bad value
        device_memory=scaled_memory(3),
        aliases=(
            "tomopy.prep.normalize.normalize",
            "httomolibgpu.prep.normalize.normalize",
            "httomolib.prep.normalize.normalize",
        ),
    ),
    StageSpec(
        name="normalize_nf",
        angle_local=True,  # per projection, given the references
        fn=normalize_nf,
        pattern=Pattern.PROJECTION,
        params=NormalizeNfParams,
        # input (1) + float32 output (1) + float64 copies of the selected frames and of
        # their difference (2 x 2 in float32 units at worst, for a block in one group).
        memory=scaled_memory(6),
        summary="flat/dark correction with the nearest of several flat groups (tomopy)",
        needs_references=True,
        needs_projection_indices=True,
        device=True,
        aliases=("tomopy.prep.normalize.normalize_nf",),
    ),
    StageSpec(
        name="normalize_bg",
        angle_local=True,  # each frame's own air columns
        fn=normalize_bg,
        pattern=Pattern.PROJECTION,
        params=NormalizeBgParams,
        # input (1) + output (1) + the per-pixel air level (1).
        memory=scaled_memory(3),
        summary="scale each row so its left/right air columns are 1 (no flats needed)",
        device=True,
        aliases=("tomopy.prep.normalize.normalize_bg",),
    ),
    StageSpec(
        name="minus_log",
        angle_local=True,  # element-wise, repairs from row neighbours
        fn=minus_log,
        pattern=Pattern.ALL,  # element-wise: either section (HTTomo's "all")
        params=MinusLogParams,
        # input (1) + output computed in place (1) + headroom (see normalize).
        memory=scaled_memory(3),
        summary="-log of the transmission (values <= 0 or not finite repaired from their "
        "row neighbours first)",
        counts_repairs=True,
        device=True,
        device_memory=scaled_memory(3),
        aliases=("tomopy.prep.normalize.minus_log", "httomolibgpu.prep.normalize.minus_log"),
    ),
)
