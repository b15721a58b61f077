"""HTTomo's ``save_result: true``: a step's output written to an intermediate HDF5 file.

HTTomo inserts ``httomo.methods.save_intermediate_data`` after a method marked
``save_result: true`` (its ``SaveIntermediateFilesWrapper``); the file is
``{task_id}-{package}-{method}.h5`` in the run's folder (``task_id`` the entry's ``id``,
else ``task_N``, ``N`` counting the methods after the loader from 1), with the data in
``/data`` in HTTomo's axis order ``(angles, detector_y, detector_x)`` whatever the
section, the angles (radians) in ``/angles`` and the detector size in
``/data_dims/detector_x_y``. We write the same, beside the output of ``recon``, block by
block as the step produces them (nothing is held): a projection block goes to its
projections' places, a sinogram block ``(rows, angles, cols)`` to ``/data[:, rows, :]``
(a reconstructed block ``(rows, N, N)`` so becomes ``(N, rows, N)``, HTTomo's order for
a volume too). The files are closed, and marked ``complete``, when the scan is over.

One writer per run and process: on R ranks a step with ``save_result`` is refused before
the first scan (:func:`streamer.pipeline.sections.refuse_on_ranks`), as several
processes cannot write one HDF5 file without MPI-IO.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from stages.spec import Pattern
from streamer.errors import ConfigError
from streamer.pipeline.config import PipelineStep
from streamer.sources.scan import ScanLayout
from streamer.wire.protocol import IMAGE_KEY_PROJECTION

__all__ = ["IntermediateResults", "result_paths"]


def result_paths(steps: tuple[PipelineStep, ...], folder: Path) -> list[Path]:
    """The intermediate files ``steps`` ask for, in ``folder``."""
    return [folder / f"{step.result_name}.h5" for step in steps if step.save_result]


@dataclass
class _Open:
    file: h5py.File
    data: h5py.Dataset
    pattern: Pattern
    angles: npt.NDArray[np.float64]


@dataclass
class IntermediateResults:
    """Writes the outputs of the steps marked ``save_result`` (see the module notes).

    Parameters
    ----------
    folder : Path
        Where the files go (the output's folder).
    rows, cols : int
        The scan's detector size (``/data_dims/detector_x_y``).
    frame_slots : ndarray of int, optional
        Frame index → projection number (``-1`` for darks and flats), to place blocks of
        the first projection section, whose indices are frame indices.
    overwrite : bool
        Replace existing files (else an existing file is refused before the scan).
    """

    folder: Path
    rows: int
    cols: int
    frame_slots: npt.NDArray[np.int64] | None = None
    overwrite: bool = False
    written: list[Path] = field(default_factory=list)
    _open: dict[str, _Open] = field(default_factory=dict)

    @classmethod
    def for_scan(cls, steps: tuple[PipelineStep, ...], folder: Path, layout: ScanLayout, *,
                 overwrite: bool = False) -> IntermediateResults | None:
        """The writer for a stored scan (``recon``), or None when no step saves its
        result; files that exist are refused here, before the scan."""
        if not any(step.save_result for step in steps):
            return None
        projection = np.asarray(layout.image_keys) == IMAGE_KEY_PROJECTION
        slots = np.where(projection, np.cumsum(projection) - 1, -1).astype(np.int64)
        results = cls(folder, layout.rows, layout.cols, frame_slots=slots,
                      overwrite=overwrite)
        results.check(steps)
        return results

    def check(self, steps: tuple[PipelineStep, ...]) -> None:
        """Refuse, before the scan, files that exist (unless ``overwrite``) or repeat."""
        paths = result_paths(steps, self.folder)
        if len(set(paths)) != len(paths):
            raise ConfigError(f"save_result: two steps would write the same file "
                              f"{sorted(str(p) for p in paths if paths.count(p) > 1)[0]}; "
                              "give them different ids")
        for path in paths:
            if path.exists() and not self.overwrite:
                raise ConfigError(f"save_result: {path} exists; expected a new file "
                                  "(--overwrite replaces it)")

    def add(self, step: PipelineStep, pattern: Pattern, *, indices: npt.NDArray[np.int64],
            total: int, angles: npt.NDArray[np.float64], data: npt.NDArray[Any],
            by_frame: bool) -> None:
        """One block of ``step``'s output: ``indices`` along the block's first axis
        (frame indices when ``by_frame``, else projection numbers or rows), ``total``
        of them in the scan, ``angles`` those of the block (projection) or the scan's
        (sinogram)."""
        if by_frame:
            assert self.frame_slots is not None, "frame indices need the scan's layout"
            indices = self.frame_slots[indices]
        opened = self._open.get(step.result_name)
        if opened is None:
            opened = self._create(step, pattern, total, data, angles)
        if pattern is Pattern.PROJECTION:
            order = np.argsort(indices)
            opened.data[indices[order]] = data[order]
            opened.angles[indices] = angles
        else:
            first, last = int(indices[0]), int(indices[-1]) + 1
            opened.data[:, first:last, :] = np.asarray(data).transpose(1, 0, 2)

    def _create(self, step: PipelineStep, pattern: Pattern, total: int,
                data: npt.NDArray[Any], angles: npt.NDArray[np.float64]) -> _Open:
        path = self.folder / f"{step.result_name}.h5"
        if pattern is Pattern.PROJECTION:  # angles filled block by block
            shape, known = (total, data.shape[1], data.shape[2]), np.full(total, np.nan)
        else:  # every block has the scan's angles (the input's, for a reconstruction)
            shape, known = (data.shape[1], total, data.shape[2]), np.array(angles, float)
        handle = h5py.File(path, "w")
        dataset = handle.create_dataset("data", shape=shape, dtype=np.float32)
        dataset.attrs["step"] = step.name
        dataset.attrs["where"] = step.where
        dataset.attrs["axes"] = "angles:detector_y:detector_x (HTTomo's order)"
        handle.attrs["complete"] = False
        opened = _Open(handle, dataset, pattern, known)
        self._open[step.result_name] = opened
        self.written.append(path)
        return opened

    def close(self, *, complete: bool) -> None:
        """Write the angles and detector size, mark each file, close them."""
        for opened in self._open.values():
            opened.file.create_dataset("angles", data=np.deg2rad(opened.angles))
            opened.file.create_dataset("data_dims/detector_x_y", data=[self.cols, self.rows])
            opened.file.attrs["complete"] = complete
            opened.file.close()
        self._open.clear()
