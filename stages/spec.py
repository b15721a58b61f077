"""What a processing stage is: a pure function over a 3-D block plus the facts about it.

A stage function takes a C-contiguous 3-D block and returns one, with no I/O, MPI or
globals; its array module comes from its input. Its layout is its :class:`Pattern`:

* ``projection`` blocks are ``(angles, rows, cols)``: frames as they arrive;
* ``sinogram`` blocks are ``(rows, angles, cols)``: one sinogram per detector row.

A stage that needs the scan's reference frames takes them as keyword-only ``darks`` and
``flats`` (``ndarray of shape (n, rows, cols)``, possibly ``n = 0``); a stage that needs
the projection angles (reconstruction) takes ``angles_deg`` (``ndarray of shape
(angles,)``, degrees, in the order of the block's angle axis). Parameters are
keyword-only and described by a frozen pydantic model (``extra="forbid"``), so a YAML
pipeline is validated before any data arrive. :class:`StageSpec` keeps, next to the
function, the pattern, the backends it can run on, the parameter model, the aliases
HTTomo/TomoPy users know it by, and an estimate of the memory it needs.

An iterative stage (``reports_progress``) also takes ``on_iteration``, a callback that
gets an :class:`Iteration` after each of its iterations (``None``: nobody listens); the
executor passes one per band and carries the events to the run's progress output.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, SupportsFloat

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from stages.backends.xp import require_gpu
from stages.prep.repair import RepairCounts
from streamer.errors import StageError


class Pattern(StrEnum):
    """Layout of the blocks a stage works on."""

    PROJECTION = "projection"
    SINOGRAM = "sinogram"
    #: Either layout (element-wise maths, cubic 3-D kernels, output steps): the step runs
    #: in whichever section it falls (HTTomo's ``all``).
    ALL = "all"


#: Key of the pydantic validation context holding the folder of the pipeline file being
#: loaded (a ``Path``): a parameter naming a file resolves a relative path from there.
PIPELINE_FOLDER = "pipeline_folder"


def resolve_from_pipeline(path: str, context: Any) -> str:
    """``path`` as given when absolute or when no pipeline folder is known, else joined to
    the pipeline file's folder (a pipeline and the files it names sit together)."""
    folder = context.get(PIPELINE_FOLDER) if isinstance(context, Mapping) else None
    if folder is None or Path(path).is_absolute():
        return path
    return str(Path(folder) / path)


class StageParams(BaseModel):
    """Base of every stage's parameter model: unknown keys and mutation are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


MemoryEstimate = Callable[[tuple[int, int, int], np.dtype[Any], Any], int]


def unchanged(block: npt.NDArray[Any], **params: Any) -> npt.NDArray[Any]:
    """The ``fn`` of a stage that does not transform its block: CoR finders (their work is
    ``finds_center``) and output steps that act on the finished volume."""
    return block


@dataclass(frozen=True)
class Geometry:
    """What the stages after a step see of the scan: its projection angles (degrees, in
    the order of the angle axis), the detector width and the CoR in that width (``None``
    while unknown). Stages that change them (averaging frames, folding a 360° scan)
    declare how (:attr:`StageSpec.geometry`), so the planner, the reconstructor and the
    CoR all follow."""

    angles_deg: npt.NDArray[np.float64]
    cols: int
    center: float | None = None


@dataclass(frozen=True)
class Iteration:
    """One finished iteration of an iterative stage, on one block.

    ``residual`` is the relative data misfit ``‖A x − b‖ / ‖b‖`` of the new iterate over
    the block, where the method has it without extra projections (SIRT, CGLS);
    ``change`` the relative update ``‖x_k − x_(k−1)‖ / ‖x_k‖`` (the ordered-subset
    methods, whose residual would cost a projection); ``None`` where not computed.
    ``iterate`` is the working slices (numpy or cupy), to read during the call, never to
    keep or modify.
    """

    done: int
    total: int
    residual: float | None = None
    change: float | None = None
    iterate: Any = field(default=None, repr=False, compare=False)


#: ``on_iteration(iteration)``: told after each iteration of an iterative stage.
IterationCallback = Callable[[Iteration], None]


def scaled_memory(multiplier: float) -> MemoryEstimate:
    """Estimate ``multiplier × block bytes in float32`` (input, output, temporaries).

    HTTomo's "direct" estimators have the same form; the multiplier says how many
    block-sized float32 buffers the stage holds at its peak.
    """

    def estimate(shape: tuple[int, int, int], dtype: np.dtype[Any], params: Any) -> int:
        elements = int(np.prod(shape))
        return int(multiplier * elements * max(4, np.dtype(dtype).itemsize))

    return estimate


@dataclass(frozen=True)
class StageSpec:
    """A stage and the facts the planner and the YAML loader need about it.

    Parameters
    ----------
    name : str
        The name used in pipelines (``method:``).
    fn : callable
        ``fn(block, *, [darks, flats,] **params) -> block``.
    pattern : Pattern
        Block layout ``fn`` expects.
    params : type[StageParams]
        Parameter model (defaults, types, ranges).
    memory : callable
        ``memory(shape, dtype, params) -> bytes`` at the stage's peak for one block.
    summary : str
        One line for ``tomo-streamer check`` and the docs.
    adapters : mapping of str to callable
        Other backends (``tomopy``, ``httomolibgpu``): functions with our parameter names
        that call the library; they take the subset of parameters they support.
    needs_references : bool
        Whether ``fn`` takes ``darks`` and ``flats``.
    needs_angles : bool
        Whether ``fn`` takes ``angles_deg`` (reconstruction stages).
    needs_frame_indices : bool
        Whether ``fn`` takes ``frame_indices`` (the block's frames) and ``flat_indices``
        (those of ``flats``): for corrections that interpolate in time.
    needs_projection_indices : bool
        Whether ``fn`` takes ``projection_indices``: each frame's position among the
        scan's projections in acquisition order (its frame index less the darks and
        flats taken before it), for corrections keyed by projection number (TomoPy's
        ``flat_loc``), so a block streamed mid-scan is corrected as in the whole scan.
    counts_repairs : bool
        Whether ``fn`` takes ``repairs`` (a :class:`stages.prep.repair.RepairCounts`):
        stages that replace bad pixel values count them there, per scan.
    finds_center : callable, optional
        A CoR finder, not a transform: ``finds_center(projections, angles_deg, params)``
        on the corrected ``(angles, rows, cols)`` projections (or, where a whole-frame
        step follows it, the rows it reads as they are before that step, its ``ind``
        moved into them: :mod:`streamer.pipeline.finder_tap`), run once per scan; its
        result (a float, or a :class:`~stages.recon.center_policy.CorEstimate` with a
        confidence and warnings) becomes the ``center`` of the reconstruction (HTTomo's
        ``find_center_vo`` entries map here).
    angle_local : bool or callable
        Whether the output for one projection depends only on that projection (and the
        scan's references and parameters): the stage can run on projection blocks as
        they arrive, and a pipeline whose stages before the reconstructor are all
        angle-local can reconstruct while the scan arrives
        (``docs/explanation/streaming-reconstruction.md``). A callable
        ``angle_local(params) -> bool`` where it depends on a parameter (the axis of a
        slice-wise filter); see :meth:`is_angle_local`. ``False`` unless declared.
    device : bool
        Whether ``fn`` is written against the array namespace of its input (``xp =
        array_module(block)``, ``cupyx.scipy`` twins), so the same code runs on a CuPy
        block: the stage then offers the ``cupy`` backend (checked on CPU by
        ``tests/stages/test_device_namespace.py``, on a GPU by its ``gpu`` tests).
    geometry : callable, optional
        ``geometry(before, params) -> after`` (:class:`Geometry`) for a stage that changes
        the number or angles of the projections, the detector width or where the axis
        lies in it (``average_projection_frames``, ``sino_360_to_180``): the run passes
        the new angles and CoR to the stages after it, the planner the new shape.
    reduces_references : callable, optional
        ``reduces_references(stack, params) -> stack`` for a step that acts on the scan's
        darks and flats, not on its blocks (httomolib's ``data_reducer``): the run applies
        it once per scan to each reference stack, when they are complete, and the steps
        after it get the result; ``fn`` passes the blocks unchanged. Such a step must
        come before every step that uses the references (checked when the pipeline is
        validated).
    reports_progress : bool
        Whether ``fn`` takes ``on_iteration`` (an :data:`IterationCallback` or ``None``)
        and calls it after each iteration (the iterative reconstructors).
    device_memory : callable, optional
        The estimate on the device where the device code holds other buffers than the
        host code (the planner's device plan uses it; ``None``: ``memory``).
    cache : callable, optional
        ``cache() -> object``: a per-scan cache the caller makes once per scan and step
        and passes to every call of ``fn`` (``numpy``; ``cupy`` where device-ready) as
        ``cache=``, so that work fixed by the scan's geometry is done once per scan, not
        once per block (the reconstructor's plan). The state lives in the caller's
        object, never in the module; the result must not depend on it.
    halo : int or callable
        How far the stage's output for one entry of the block axis (axis 0: a frame of a
        projection block, a row of a sinogram block) reaches along that axis into its
        input: ``halo = h`` means output ``i`` depends on inputs ``i - h … i + h`` (a 3-D
        median of edge ``k`` has ``k // 2``). The runner then gives every block ``h`` real
        neighbours on each side and keeps only the block's own outputs, so the result does
        not depend on block size (HTTomo's ``padding``; ADR 0019,
        :mod:`streamer.pipeline.halo`); the scan's true ends keep the stage's own edge
        mode. A callable ``halo(params) -> int`` where it depends on a parameter; see
        :meth:`reach`. ``0`` (each entry on its own) unless declared.
    changes_rows : callable, optional
        ``changes_rows(params) -> bool`` for a stage that can change the number of
        detector rows (the volume's slices: binning, cropping or resampling them). The
        runners refuse it where they do not follow it (a sinogram section), before the
        scan is read (:func:`streamer.pipeline.sections.refuse_row_change`); in the first
        projection section R ranks work out the corrected frame's shape from it
        (:func:`streamer.pipeline.frame_shape.corrected_frame`, ADR 0029).
    aliases : tuple of str
        Dotted names of equivalent methods in other packages (``tomopy.misc.corr.remove_outlier``,
        ``httomolibgpu.prep.normalize.normalize``) accepted from HTTomo-style YAML.
    """

    name: str
    fn: Callable[..., npt.NDArray[Any]]
    pattern: Pattern
    params: type[StageParams]
    memory: MemoryEstimate
    summary: str
    needs_references: bool = False
    needs_angles: bool = False
    needs_frame_indices: bool = False
    needs_projection_indices: bool = False
    counts_repairs: bool = False
    finds_center: (
        Callable[[npt.NDArray[np.float32], npt.NDArray[np.float64], Any], SupportsFloat]
        | None
    ) = None
    angle_local: bool | Callable[[Any], bool] = False
    halo: int | Callable[[Any], int] = 0
    aliases: tuple[str, ...] = ()
    device: bool = False
    reports_progress: bool = False
    device_memory: MemoryEstimate | None = None
    geometry: Callable[[Geometry, Any], Geometry] | None = None
    reduces_references: (
        Callable[[npt.NDArray[np.float32], Any], npt.NDArray[np.float32]] | None
    ) = None
    cache: Callable[[], Any] | None = None
    changes_rows: Callable[[Any], bool] | None = None
    adapters: Mapping[str, Callable[..., Any]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    @property
    def backends(self) -> tuple[str, ...]:
        """Where the stage can run: ``numpy`` (our own code) first, ``cupy`` (the same
        code on a CUDA device) where the stage is device-ready, then the adapters."""
        return ("numpy", *(("cupy",) if self.device else ()), *self.adapters)

    def after(self, before: Geometry, params: StageParams) -> Geometry:
        """The geometry the stages after this one see (unchanged unless declared)."""
        return before if self.geometry is None else self.geometry(before, params)

    def is_angle_local(self, params: StageParams) -> bool:
        """Whether this stage, with ``params``, acts on each projection on its own."""
        if callable(self.angle_local):
            return bool(self.angle_local(params))
        return self.angle_local

    def reach(self, params: StageParams) -> int:
        """This stage's halo along the block axis with ``params`` (see ``halo``)."""
        value = self.halo(params) if callable(self.halo) else self.halo
        return max(0, int(value))

    def run(
        self,
        block: npt.NDArray[Any],
        params: StageParams,
        *,
        darks: npt.NDArray[Any] | None = None,
        flats: npt.NDArray[Any] | None = None,
        angles_deg: npt.NDArray[np.float64] | None = None,
        frame_indices: npt.NDArray[np.int64] | None = None,
        flat_indices: npt.NDArray[np.int64] | None = None,
        projection_indices: npt.NDArray[np.int64] | None = None,
        backend: str = "numpy",
        repairs: RepairCounts | None = None,
        on_iteration: IterationCallback | None = None,
        cache: Any = None,
    ) -> npt.NDArray[Any]:
        """Call the stage on ``backend`` with validated parameters (``cache``: the
        step's per-scan cache, see ``StageSpec.cache``; ignored by stages without one).

        ``on_iteration`` reaches a stage that ``reports_progress`` (on its own backends;
        an adapter's library reports nothing) and is ignored by the others.

        An adapter gets only the parameters it supports; a parameter it does not support
        must keep its default, or the call is refused by name (never silently ignored).
        """
        if block.ndim != 3:
            raise StageError(
                f"stage {self.name!r}: expected a 3-D {self.pattern.value} block, "
                f"got shape {block.shape}"
            )
        kwargs: dict[str, Any] = dict(params)
        if self.needs_references:
            kwargs["darks"] = darks
            kwargs["flats"] = flats
        if self.needs_angles:
            if angles_deg is None:
                raise StageError(f"stage {self.name!r}: needs the projection angles, got none")
            kwargs["angles_deg"] = angles_deg
        if self.needs_frame_indices:
            if frame_indices is None or flat_indices is None:
                raise StageError(
                    f"stage {self.name!r}: needs the frame indices of the block and flats"
                )
            kwargs["frame_indices"] = frame_indices
            kwargs["flat_indices"] = flat_indices
        if self.needs_projection_indices:
            if projection_indices is None:
                raise StageError(
                    f"stage {self.name!r}: needs the projection numbers of the block's frames"
                )
            kwargs["projection_indices"] = projection_indices
        if self.counts_repairs:
            kwargs["repairs"] = repairs
        if self.reports_progress:
            kwargs["on_iteration"] = on_iteration
        if self.cache is not None and cache is not None and (
                backend == "numpy" or (backend == "cupy" and self.device)):
            kwargs["cache"] = cache  # a device run keeps its device plans there
        if backend == "numpy":
            return self.fn(block, **kwargs)
        if backend == "cupy" and self.device:
            require_gpu(backend)  # a clear refusal without a device, before any work
            return self.fn(block, **kwargs)
        adapter = self.adapters.get(backend)
        if adapter is None:
            raise StageError(
                f"stage {self.name!r}: expected backend {'|'.join(self.backends)}, "
                f"got {backend!r}"
            )
        accepted = inspect.signature(adapter).parameters
        fields = type(params).model_fields
        for name in list(kwargs):
            if name in accepted:
                continue
            value = kwargs.pop(name)
            if name in ("darks", "flats", "angles_deg", "frame_indices", "flat_indices",
                        "projection_indices", "repairs", "on_iteration"):
                continue
            default = fields[name].default if not fields[name].is_required() else None
            if value != default:
                raise StageError(
                    f"stage {self.name!r} on backend {backend!r}: parameter {name}={value!r} "
                    f"is not supported there (only its default {default!r}); use backend "
                    "'numpy'"
                )
        result: npt.NDArray[Any] = adapter(block, **kwargs)
        return result
