"""What a processing stage is: a pure function over a 3-D block plus the facts about it.

A stage function takes a C-contiguous 3-D block and returns one, with no I/O, MPI or
globals; its array module comes from its input. Its layout is its :class:`Pattern`:

* ``projection`` blocks are ``(angles, rows, cols)``: frames as they arrive;
* ``sinogram`` blocks are ``(rows, angles, cols)``: one sinogram per detector row.

A stage that needs the scan's reference frames takes them as keyword-only ``darks`` and
``flats`` (``ndarray of shape (n, rows, cols)``, possibly ``n = 0``). Parameters are
keyword-only and described by a frozen pydantic model (``extra="forbid"``), so a YAML
pipeline is validated before any data arrive. :class:`StageSpec` keeps, next to the
function, the pattern, the backends it can run on, the parameter model, the aliases
HTTomo/TomoPy users know it by, and an estimate of the memory it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from streamer.errors import StageError


class Pattern(StrEnum):
    """Layout of the blocks a stage works on."""

    PROJECTION = "projection"
    SINOGRAM = "sinogram"


class StageParams(BaseModel):
    """Base of every stage's parameter model: unknown keys and mutation are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


MemoryEstimate = Callable[[tuple[int, int, int], np.dtype[Any], Any], int]


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
    backends : tuple of str
        Where it can run (``numpy`` first).
    needs_references : bool
        Whether ``fn`` takes ``darks`` and ``flats``.
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
    backends: tuple[str, ...] = ("numpy",)
    needs_references: bool = False
    aliases: tuple[str, ...] = ()

    def run(
        self,
        block: npt.NDArray[Any],
        params: StageParams,
        *,
        darks: npt.NDArray[Any] | None = None,
        flats: npt.NDArray[Any] | None = None,
    ) -> npt.NDArray[Any]:
        """Call the stage with validated parameters, checking the block's shape."""
        if block.ndim != 3:
            raise StageError(
                f"stage {self.name!r}: expected a 3-D {self.pattern.value} block, "
                f"got shape {block.shape}"
            )
        kwargs: dict[str, Any] = dict(params)
        if self.needs_references:
            kwargs["darks"] = darks
            kwargs["flats"] = flats
        return self.fn(block, **kwargs)
