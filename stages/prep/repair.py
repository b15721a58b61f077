"""Repair of pixels that carry no usable value, from their neighbours along the detector row.

Real detectors have dead pixels (zero counts: the neutron 360° sinogram of sarepy has 214),
pixels whose flat is no brighter than their dark (I13's pixel ``[0, 0]``), and float
payloads can carry NaN or ±inf. Left in place, ``-log`` of a transmission ``<= 0`` is
meaningless (clamping it to the smallest float32 gives ≈ 87–103, which the ramp filter
spreads into streaks over the whole slice), and one NaN makes a whole Fourier-filtered
slice NaN.

The real-data tools replace such pixels before ``-log``: sarepy's example sets them to the
mean, algotom and httomolibgpu interpolate them from valid neighbours. Here each bad pixel
is replaced by the straight line between the nearest valid pixels on its left and right
**along the same detector row of the same frame** (a pixel at the end of a row takes the
nearest valid value; a row with no valid pixel at all takes ``fill``). Along the row keeps
the repair within one projection, so it works block by block as frames stream in, and
columns are where stripes and dead columns live in a sinogram: a neighbour along the row
is the best estimate the frame itself has.

Every repaired value is counted (:class:`RepairCounts`), per scan, so nothing is changed
silently; a large repaired fraction (:data:`WARN_FRACTION`) is reported as a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

#: Repaired share of the projection pixel values above which a scan gets a warning: more
#: than 1 % of the data replaced by interpolation is no longer "a few dead pixels" (a bad
#: flat, a closed shutter for part of the scan, saturation) and should be looked at.
WARN_FRACTION: Final = 0.01

#: Counter keys: what was repaired, and where.
NO_SIGNAL: Final = "no_signal"  # transmission <= 0 or not finite, or flat <= dark, before -log
NONFINITE_INPUT: Final = "nonfinite_input"  # NaN/inf pixels in received frames
NONFINITE_CORRECTED: Final = "nonfinite_corrected"  # NaN/inf left by the correction stages

#: Observation keys (values looked at, not changed): a ``data_checker`` step's checked
#: values and the zeros among them. At or above :data:`ZEROS_WARN_FRACTION` zeros the scan
#: gets a warning (httomolib's ``zeros_warning`` threshold, 50 %).
CHECKED: Final = "checked"
ZEROS: Final = "zeros"
ZEROS_WARN_FRACTION: Final = 0.5


@dataclass
class RepairCounts:
    """Pixel values repaired in one scan, by reason, and the pixel values seen.

    One per scan (the executor makes it); stages that repair (``StageSpec.counts_repairs``)
    add to it. ``pixels`` is the number of projection pixel values processed, the base of
    :attr:`fraction`. Not thread-safe: one scan's projections are processed on one thread.
    """

    counts: dict[str, int] = field(default_factory=dict)
    pixels: int = 0
    #: Values counted without being changed (``data_checker``: :data:`CHECKED`,
    #: :data:`ZEROS`, non-finite values left in place); not part of :attr:`total`.
    observed: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, count: int) -> None:
        """Count ``count`` more repaired values under ``key`` (zero counts are kept out)."""
        if count:
            self.counts[key] = self.counts.get(key, 0) + int(count)

    def observe(self, key: str, count: int) -> None:
        """Count ``count`` values seen under ``key`` (zero counts are kept: "checked, none")."""
        self.observed[key] = self.observed.get(key, 0) + int(count)

    def merge(self, counts: dict[str, int], pixels: int,
              observed: dict[str, int] | None = None) -> None:
        """Add another rank's counts and observations (several MPI ranks, one scan)."""
        for key, count in counts.items():
            self.add(key, count)
        self.pixels += int(pixels)
        for key, count in (observed or {}).items():
            self.observe(key, count)

    @property
    def total(self) -> int:
        """Repaired values, all reasons together (a value repaired twice counts twice)."""
        return sum(self.counts.values())

    @property
    def fraction(self) -> float:
        """Repaired values per projection pixel value processed (0 when none was)."""
        return self.total / self.pixels if self.pixels else 0.0

    def warning(self) -> str | None:
        """A one-line warning when more than :data:`WARN_FRACTION` of the data was repaired,
        or a ``data_checker`` step found :data:`ZEROS_WARN_FRACTION` or more zeros."""
        parts = []
        if self.fraction > WARN_FRACTION:
            parts.append(f"repaired {self.total} of {self.pixels} projection pixel values "
                         f"({100 * self.fraction:.2f} %, above the {100 * WARN_FRACTION:g} % "
                         f"warning threshold; {self.describe()}): check the flats, darks and "
                         "detector")
        checked, zeros = self.observed.get(CHECKED, 0), self.observed.get(ZEROS, 0)
        if checked and zeros / checked >= ZEROS_WARN_FRACTION:
            parts.append(f"data_checker: {zeros} of {checked} values checked are zero "
                         f"({100 * zeros / checked:.1f} %, at or above "
                         f"{100 * ZEROS_WARN_FRACTION:g} %)")
        return "; ".join(parts) or None

    def describe(self) -> str:
        """``"no_signal 214, nonfinite_input 3"``, or ``"none"``."""
        if not self.counts:
            return "none"
        return ", ".join(f"{key} {count}" for key, count in sorted(self.counts.items()))

    def as_dict(self) -> dict[str, Any]:
        """For reports: the counts by reason, the total, the base and the fraction."""
        return {"counts": dict(sorted(self.counts.items())), "total": self.total,
                "pixels": self.pixels, "fraction": self.fraction,
                "warn_fraction": WARN_FRACTION, "warning": self.warning(),
                **({"observed": dict(sorted(self.observed.items()))} if self.observed else {})}

    def as_metadata(self) -> dict[str, int | float]:
        """Flat attributes for an output file (``repaired_<reason>``, total, fraction)."""
        out: dict[str, int | float] = {f"repaired_{key}": count
                                       for key, count in sorted(self.counts.items())}
        out["repaired_total"] = self.total
        out["repaired_fraction"] = self.fraction
        out.update({f"observed_{key}": count for key, count in sorted(self.observed.items())})
        return out


def fill_from_row_neighbours(
    data: npt.NDArray[np.floating[Any]], bad: npt.NDArray[np.bool_], fill: float
) -> int:
    """Replace ``data[bad]`` in place by linear interpolation along the last axis.

    Parameters
    ----------
    data : ndarray of shape (..., cols), floating
        Frames or blocks; the last axis is the detector row.
    bad : ndarray of bool, same shape
        The values to replace.
    fill : float
        The value of a row with no valid pixel at all.

    Returns
    -------
    int
        The number of values replaced (``bad.sum()``).

    Notes
    -----
    Only the rows that hold a bad value are touched; for each bad pixel the nearest valid
    pixel on each side is found with a running maximum / minimum of valid indices (no
    Python loop over rows), so a dead column costs one interpolation per row.
    """
    if not data.flags.c_contiguous:  # reshape would copy: repair a copy, write it back
        work = np.ascontiguousarray(data)
        count = fill_from_row_neighbours(work, np.ascontiguousarray(bad), fill)
        data[...] = work
        return count
    cols = data.shape[-1]
    lines = data.reshape(-1, cols)
    marks = bad.reshape(-1, cols)
    which = np.flatnonzero(marks.any(axis=1))
    step = max(1, _CHUNK_ELEMENTS // cols)
    return sum(_fill_lines(lines, marks, which[first:first + step], fill)
               for first in range(0, which.size, step))


#: Values interpolated together: bounds the temporaries (about 80 bytes per value) to a
#: few tens of MiB whatever the block, so the stages' memory estimates stay valid.
_CHUNK_ELEMENTS: Final = 1 << 18


def _fill_lines(lines: npt.NDArray[np.floating[Any]], marks: npt.NDArray[np.bool_],
                which: npt.NDArray[np.intp], fill: float) -> int:
    """:func:`fill_from_row_neighbours` on the rows ``which`` of ``(n, cols)`` data."""
    cols = lines.shape[1]
    values = lines[which].astype(np.float64)
    broken = marks[which]
    values[broken] = 0.0  # never read where it matters; keeps NaN/inf out of the arithmetic
    index = np.arange(cols)
    before = np.maximum.accumulate(np.where(broken, -1, index), axis=1)
    after = np.minimum.accumulate(np.where(broken, cols, index)[:, ::-1], axis=1)[:, ::-1]
    has_before, has_after = before >= 0, after < cols
    left = np.take_along_axis(values, np.clip(before, 0, cols - 1), axis=1)
    right = np.take_along_axis(values, np.clip(after, 0, cols - 1), axis=1)
    span = np.maximum(after - before, 1)  # 0 at valid pixels (before = after = index)
    weight = np.where(has_before & has_after, (index - before) / span, 0.0)
    inner = left + weight * (right - left)
    repaired = np.where(has_before & has_after, inner,
                        np.where(has_before, left, np.where(has_after, right, fill)))
    values[broken] = repaired[broken]
    lines[which] = values.astype(lines.dtype)
    return int(broken.sum())


def repair_nonfinite(
    data: npt.NDArray[Any], fill: float = 0.0
) -> tuple[npt.NDArray[Any], int]:
    """``data`` with its NaN/±inf values repaired along rows, and how many there were.

    Integer data and data with no such value are returned as they are (no copy).
    """
    if not np.issubdtype(data.dtype, np.floating):
        return data, 0
    finite = np.isfinite(data)
    if finite.all():
        return data, 0
    out = np.array(data, copy=True)
    return out, fill_from_row_neighbours(out, ~finite, fill)


def repair_no_signal(
    transmission: npt.NDArray[np.float32],
    *,
    dead: npt.NDArray[np.bool_] | None = None,
    positive: bool = True,
) -> int:
    """Repair, in place, the transmissions that carry no signal; return how many.

    A value has no signal if it is not finite, if its detector pixel is ``dead``
    (flat ≤ dark: ``(rows, cols)``), or (``positive``, before ``-log``) if it is ``<= 0``.
    Rows without any valid value get 1 (full transmission: 0 attenuation).
    """
    if positive:
        bad = ~(transmission > 0)  # NaN compares False: caught here
        bad |= np.isinf(transmission)
    else:
        bad = ~np.isfinite(transmission)
    if dead is not None and dead.any():
        bad |= dead
    if not bad.any():
        return 0
    return fill_from_row_neighbours(transmission, bad, 1.0)
