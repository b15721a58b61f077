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

On R ranks (``mpiexec -n R tomo-streamer recon``) several processes cannot write one
HDF5 file without MPI-IO, so each rank writes the blocks it holds at that step to its own
part, ``{name}.part{r}of{R}.h5`` (:func:`streamer.sinks.master.part_path`), and rank 0
writes the file the user names, ``{name}.h5``, with ``/data`` an HDF5 virtual dataset over
the parts (:mod:`streamer.sinks.result_master`, ADR 0022): a reader sees one array, laid
out as on one rank. What a rank holds depends on the step's section: in the first
projection section the frames it was dealt (blocks, not contiguous in angle), in a
sinogram section its band of rows, in a later projection section its range of angles.
A part stores its blocks in the order they come, with ``/index`` their place along the
held axis (projection numbers or rows); the master maps each run of consecutive places.
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
from streamer.sinks.master import part_path
from streamer.sinks.result_master import PART_FORMAT, write_result_master
from streamer.sources.scan import ScanLayout

__all__ = ["IntermediateResults", "result_paths"]

#: ``/data``'s ``axes`` attribute: HTTomo's order whatever the section.
AXES = "angles:detector_y:detector_x (HTTomo's order)"


def result_paths(steps: tuple[PipelineStep, ...], folder: Path, prefix: str = "") -> list[Path]:
    """The intermediate files ``steps`` ask for, in ``folder`` (their names after
    ``prefix``: ``run`` names them per scan, ``{scan}-``)."""
    return [folder / f"{prefix}{step.result_name}.h5" for step in steps if step.save_result]


def _describe(dataset: h5py.Dataset, step: PipelineStep) -> None:
    dataset.attrs["step"] = step.name
    dataset.attrs["where"] = step.where
    dataset.attrs["axes"] = AXES


@dataclass
class _WholeFile:
    """One rank: the file itself, every block written to its place."""

    file: h5py.File
    data: h5py.Dataset
    pattern: Pattern
    angles: npt.NDArray[np.float64]  # degrees, per projection (NaN until written)

    @classmethod
    def create(cls, path: Path, step: PipelineStep, pattern: Pattern, *, total: int,
               data: npt.NDArray[Any], angles: npt.NDArray[np.float64]) -> _WholeFile:
        if pattern is Pattern.PROJECTION:  # angles filled block by block
            shape, known = (total, data.shape[1], data.shape[2]), np.full(total, np.nan)
        else:  # every block has the scan's angles (the input's, for a reconstruction)
            shape, known = (data.shape[1], total, data.shape[2]), np.array(angles, float)
        handle = h5py.File(path, "w")
        dataset = handle.create_dataset("data", shape=shape, dtype=np.float32)
        _describe(dataset, step)
        handle.attrs["complete"] = False
        return cls(handle, dataset, pattern, known)

    def add(self, indices: npt.NDArray[np.int64], angles: npt.NDArray[np.float64],
            data: npt.NDArray[Any]) -> None:
        if self.pattern is Pattern.PROJECTION:
            order = np.argsort(indices)
            self.data[indices[order]] = data[order]
            self.angles[indices] = angles
        else:
            first, last = int(indices[0]), int(indices[-1]) + 1
            self.data[:, first:last, :] = np.asarray(data).transpose(1, 0, 2)

    def close(self, *, complete: bool, detector_x_y: tuple[int, int]) -> None:
        self.file.create_dataset("angles", data=np.deg2rad(self.angles))
        self.file.create_dataset("data_dims/detector_x_y", data=list(detector_x_y))
        self.file.attrs["complete"] = complete
        self.file.close()


@dataclass
class _PartFile:
    """R ranks: this rank's blocks in the order they come, with their places
    (``/index`` along the held axis: projections, or rows of a sinogram block)."""

    file: h5py.File
    data: h5py.Dataset
    index: h5py.Dataset
    pattern: Pattern
    angles: h5py.Dataset  # degrees: per place (projection), or the scan's (sinogram)

    @classmethod
    def create(cls, path: Path, step: PipelineStep, pattern: Pattern, *, total: int,
               data: npt.NDArray[Any], angles: npt.NDArray[np.float64],
               rank: int, ranks: int) -> _PartFile:
        handle = h5py.File(path, "w")
        handle.attrs["format"] = PART_FORMAT
        handle.attrs["pattern"] = pattern.value
        handle.attrs["total"] = total
        handle.attrs["rank"] = rank
        handle.attrs["ranks"] = ranks
        handle.attrs["complete"] = False
        across, cols = int(data.shape[1]), int(data.shape[2])  # rows, or angles
        if pattern is Pattern.PROJECTION:  # (places, rows, cols), grown per block
            dataset = handle.create_dataset("data", shape=(0, across, cols),
                                            maxshape=(None, across, cols),
                                            chunks=(1, across, cols), dtype=np.float32)
            known = handle.create_dataset("angles", shape=(0,), maxshape=(None,),
                                          dtype=np.float64)
        else:  # a sinogram block (rows, angles, cols) goes in as (angles, rows, cols)
            dataset = handle.create_dataset("data", shape=(across, 0, cols),
                                            maxshape=(across, None, cols),
                                            chunks=(min(across, 256), 1, cols),
                                            dtype=np.float32)
            known = handle.create_dataset("angles", data=np.asarray(angles, np.float64))
        _describe(dataset, step)
        index = handle.create_dataset("index", shape=(0,), maxshape=(None,), dtype=np.int64)
        return cls(handle, dataset, index, pattern, known)

    def add(self, indices: npt.NDArray[np.int64], angles: npt.NDArray[np.float64],
            data: npt.NDArray[Any]) -> None:
        held, count = int(self.index.shape[0]), int(indices.size)
        self.index.resize((held + count,))
        self.index[held:] = indices
        if self.pattern is Pattern.PROJECTION:
            self.data.resize(held + count, axis=0)
            self.data[held:] = data
            self.angles.resize((held + count,))
            self.angles[held:] = angles
        else:
            self.data.resize(held + count, axis=1)
            self.data[:, held:, :] = np.asarray(data).transpose(1, 0, 2)

    def close(self, *, complete: bool, detector_x_y: tuple[int, int]) -> None:
        self.file.create_dataset("data_dims/detector_x_y", data=list(detector_x_y))
        self.file.attrs["complete"] = complete
        self.file.close()


@dataclass
class IntermediateResults:
    """Writes the outputs of the steps marked ``save_result`` (see the module notes).

    Parameters
    ----------
    folder : Path
        Where the files go (the output's folder).
    rows, cols : int
        The scan's detector size (``/data_dims/detector_x_y``).
    overwrite : bool
        Replace existing files (else an existing file is refused before the scan).
    rank, ranks : int
        This process's rank of ``ranks``: more than one, each rank writes its part and
        rank 0 the virtual file over them (:meth:`write_masters`).
    prefix : str
        Put before every file's name (``run``: ``{scan}-``, a set of files per scan).
    """

    folder: Path
    rows: int
    cols: int
    overwrite: bool = False
    rank: int = 0
    ranks: int = 1
    prefix: str = ""
    #: The files this process wrote (one rank: the results; R ranks: its parts).
    written: list[Path] = field(default_factory=list)
    _open: dict[str, _WholeFile | _PartFile] = field(default_factory=dict)

    @classmethod
    def for_scan(cls, steps: tuple[PipelineStep, ...], folder: Path, layout: ScanLayout, *,
                 overwrite: bool = False, rank: int = 0,
                 ranks: int = 1) -> IntermediateResults | None:
        """The writer for a stored scan (``recon``), or None when no step saves its
        result; files that exist are refused here, before the scan (on R ranks the
        file and the parts: :meth:`check`)."""
        if not any(step.save_result for step in steps):
            return None
        results = cls(folder, layout.rows, layout.cols, overwrite=overwrite, rank=rank,
                      ranks=ranks)
        results.check(steps)
        return results

    def check(self, steps: tuple[PipelineStep, ...]) -> None:
        """Refuse, before the scan, files that exist (unless ``overwrite``) or repeat."""
        paths = result_paths(steps, self.folder, self.prefix)
        if len(set(paths)) != len(paths):
            raise ConfigError(f"save_result: two steps would write the same file "
                              f"{sorted(str(p) for p in paths if paths.count(p) > 1)[0]}; "
                              "give them different ids")
        for path in paths:
            # R ranks: rank 0 every part, another rank its own (rank 0's may exist by now:
            # no part is written before rank 0 has checked, its darks and flats come first)
            mine = range(self.ranks) if self.rank == 0 else (self.rank,)
            parts = [part_path(path, r, self.ranks) for r in mine] if self.ranks > 1 else []
            for existing in (path, *parts):
                if existing.exists() and not self.overwrite:
                    raise ConfigError(f"save_result: {existing} exists; expected a new file "
                                      "(--overwrite replaces it)")

    def add(self, step: PipelineStep, pattern: Pattern, *, indices: npt.NDArray[np.int64],
            total: int, angles: npt.NDArray[np.float64], data: npt.NDArray[Any]) -> None:
        """One block of ``step``'s output: ``indices`` along the block's first axis
        (projection numbers or rows of the scan),
        ``total`` of them in the scan, ``angles`` those of the block (projection) or the
        scan's (sinogram)."""
        opened = self._open.get(step.result_name)
        if opened is None:
            path = self.folder / f"{self.prefix}{step.result_name}.h5"
            if self.ranks == 1:
                opened = _WholeFile.create(path, step, pattern, total=total, data=data,
                                           angles=angles)
            else:
                path = part_path(path, self.rank, self.ranks)
                opened = _PartFile.create(path, step, pattern, total=total, data=data,
                                          angles=angles, rank=self.rank, ranks=self.ranks)
            self._open[step.result_name] = opened
            self.written.append(path)
        opened.add(np.asarray(indices, dtype=np.int64), angles, data)

    def close(self, *, complete: bool) -> None:
        """Write the angles and detector size, mark each file (or part), close them."""
        for opened in self._open.values():
            opened.close(complete=complete, detector_x_y=(self.cols, self.rows))
        self._open.clear()

    def write_masters(self, steps: tuple[PipelineStep, ...], *,
                      complete: bool) -> list[tuple[Path, bool, str]]:
        """Rank 0 of R, once every rank has closed its parts: each step's file, a virtual
        dataset over the parts that exist (:func:`write_result_master`); (path,
        complete, why not) per step; a step no rank wrote a block of gets no file, and
        says so here (the run's errors say why)."""
        out: list[tuple[Path, bool, str]] = []
        for path in result_paths(steps, self.folder, self.prefix):
            parts = [part_path(path, r, self.ranks) for r in range(self.ranks)]
            if not any(part.exists() for part in parts):
                out.append((path, False, "not written: no rank wrote a block of it"))
                continue
            written = write_result_master(path, parts, complete=complete,
                                          detector_x_y=(self.cols, self.rows))
            out.append((path, written.complete, "; ".join(written.reasons)))
        return out
